//! `--net tap=NAME,vhost=on`: Linux's vhost-net as the bottom half of a queue pair.
//!
//! One `/dev/vhost-net` fd per queue pair, opened (and `VHOST_SET_OWNER`) when the VM is built,
//! so a machine without the module fails at start with one line. At DRIVER_OK, for each pair
//! the driver uses: the features (what the guest acked, within what vhost-net offers), the
//! memory table (every RAM region), then for the receive (vhost index 0) and transmit (1)
//! rings their size, base (the next available index), addresses, **kick** = the queue's
//! ioeventfd (KVM signals it, vhost-net's worker wakes; trapvisor's workers no longer wait on
//! it), **call** = the irqfd of the queue's MSI-X vector (vhost-net signals it, KVM injects the
//! interrupt; trapvisor is not involved), and last the **backend**: the pair's TAP queue fd.
//! The control queue stays in trapvisor, and with it MQ pair changes and offloads
//! (TUNSETOFFLOAD on the TAP, from the acked features).
//!
//! MSI-X masking keeps working because the call fd is the vector's irqfd eventfd: a masked
//! vector's irqfd is taken out of KVM, vhost-net's signals stay counted in the eventfd, and KVM
//! delivers them when the vector is armed again at unmask (the pending bit's job). A changed
//! message changes the vector's GSI route, which the irqfd follows.
//!
//! Device reset and VM stop: each ring's backend is detached (`VHOST_NET_SET_BACKEND` -1),
//! its base read back (`VHOST_GET_VRING_BASE`, kept for reports), then `VHOST_RESET_OWNER`
//! drops the memory table, the eventfds and the kernel worker; the next DRIVER_OK sets the
//! owner again. At VM stop the fd is closed.
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;

use vhost::net::VhostNet;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::VIRTIO_RING_F_INDIRECT_DESC;
use crate::virtio::{feature, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

/// vhost-net's ring indexes within a pair.
pub const RX: usize = 0;
pub const TX: usize = 1;

/// The features vhost-net itself handles (ring layout, header size); the others (offloads,
/// MQ, control queue, config) are the TAP's or trapvisor's.
pub const VHOST_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_NET_F_MRG_RXBUF);

#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("vhost=on: cannot use /dev/vhost-net ({0}); load the module: modprobe vhost_net")]
    Open(String),
    #[error("vhost=on: /dev/vhost-net offers no VIRTIO_F_VERSION_1")]
    NoVersion1,
    #[error("vhost-net {op}: {err}")]
    Ioctl { op: &'static str, err: String },
    #[error("vhost-net: queue {0} has no MSI-X vector with an irqfd")]
    NoIrqfd(u16),
}

fn ioctl<T>(op: &'static str, r: vhost::Result<T>) -> Result<T, VhostError> {
    r.map_err(|e| VhostError::Ioctl {
        op,
        err: e.to_string(),
    })
}

/// One ring as vhost-net needs it at start.
pub struct Ring<'a> {
    pub queue: &'a Queue,
    /// The queue's ioeventfd.
    pub kick: &'a EventFd,
    /// The irqfd eventfd of the queue's vector (borrowed: the transport owns it).
    pub call: RawFd,
}

/// A pair's vhost-net instance.
pub struct VhostPair {
    dev: KernNet<Arc<GuestMemoryMmap>>,
    /// What the kernel offers (VHOST_GET_FEATURES).
    offered: u64,
    owner: bool,
    running: bool,
    /// Starts and stops so far, and the ring bases read back at the last stop.
    pub starts: u64,
    pub stops: u64,
    pub last_base: [u64; 2],
}

impl VhostPair {
    /// Opens `/dev/vhost-net` and becomes its owner (the kernel starts its worker).
    pub fn open(mem: &GuestMemoryMmap) -> Result<Self, VhostError> {
        let dev =
            KernNet::new(Arc::new(mem.clone())).map_err(|e| VhostError::Open(e.to_string()))?;
        ioctl("VHOST_SET_OWNER", dev.set_owner())?;
        let offered = ioctl("VHOST_GET_FEATURES", dev.get_features())?;
        if offered & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(VhostError::NoVersion1);
        }
        Ok(VhostPair {
            dev,
            offered,
            owner: true,
            running: false,
            starts: 0,
            stops: 0,
            last_base: [0; 2],
        })
    }

    /// Of `features`, those vhost-net cannot serve (to withhold from the guest).
    pub fn missing(&self, features: u64) -> u64 {
        features & VHOST_FEATURES & !self.offered
    }

    pub fn running(&self) -> bool {
        self.running
    }

    /// Hands the pair's rings to vhost-net (DRIVER_OK). On failure the pair is left stopped.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        rings: [Ring<'_>; 2],
        tap: RawFd,
    ) -> Result<(), VhostError> {
        if self.running {
            self.stop();
        }
        let r = self.configure(acked, mem, &rings, tap);
        if r.is_err() {
            self.running = true;
            self.stop();
        }
        r
    }

    fn configure(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        rings: &[Ring<'_>; 2],
        tap: RawFd,
    ) -> Result<(), VhostError> {
        if !self.owner {
            ioctl("VHOST_SET_OWNER", self.dev.set_owner())?;
            self.owner = true;
        }
        let features = acked & VHOST_FEATURES & self.offered;
        ioctl("VHOST_SET_FEATURES", self.dev.set_features(features))?;
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        ioctl("VHOST_SET_MEM_TABLE", self.dev.set_mem_table(&regions))?;
        self.running = true;
        self.starts += 1;
        for (i, ring) in rings.iter().enumerate() {
            let q = ring.queue;
            ioctl("VHOST_SET_VRING_NUM", self.dev.set_vring_num(i, q.size()))?;
            ioctl(
                "VHOST_SET_VRING_BASE",
                self.dev.set_vring_base(i, q.next_avail()),
            )?;
            let addrs = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: q.desc_table(),
                used_ring_addr: q.used_ring(),
                avail_ring_addr: q.avail_ring(),
                log_addr: None,
            };
            ioctl("VHOST_SET_VRING_ADDR", self.dev.set_vring_addr(i, &addrs))?;
            ioctl(
                "VHOST_SET_VRING_KICK",
                self.dev.set_vring_kick(i, ring.kick),
            )?;
            // SAFETY: `ring.call` is the transport's irqfd eventfd, open for the whole call;
            // ManuallyDrop leaves it open (the kernel takes its own reference).
            let call = ManuallyDrop::new(unsafe { EventFd::from_raw_fd(ring.call) });
            ioctl("VHOST_SET_VRING_CALL", self.dev.set_vring_call(i, &call))?;
        }
        // SAFETY: `tap` is the pair's TAP queue fd, open for the whole call; ManuallyDrop
        // leaves it open (the kernel takes its own reference to the socket).
        let tap = ManuallyDrop::new(unsafe { File::from_raw_fd(tap) });
        for i in [RX, TX] {
            ioctl("VHOST_NET_SET_BACKEND", self.dev.set_backend(i, Some(&tap)))?;
        }
        Ok(())
    }

    /// Takes the rings back (device reset, VM stop): backends detached, bases read back,
    /// the owner reset (memory table, eventfds and the kernel worker dropped).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        for i in [RX, TX] {
            if let Err(e) = self.dev.set_backend(i, None) {
                log::warn!("vhost-net: detaching ring {i}: {e}");
            }
            match self.dev.get_vring_base(i) {
                Ok(b) => self.last_base[i] = u64::from(b),
                Err(e) => log::warn!("vhost-net: reading ring {i}'s base: {e}"),
            }
        }
        if let Err(e) = self.dev.reset_owner() {
            log::warn!("vhost-net: VHOST_RESET_OWNER: {e}");
        }
        self.owner = false;
        self.running = false;
        self.stops += 1;
    }
}

impl Drop for VhostPair {
    fn drop(&mut self) {
        self.stop();
    }
}
