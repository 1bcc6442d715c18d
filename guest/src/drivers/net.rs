//! A virtio-net driver (virtio 1.x over PCI, one queue pair, completions by MSI-X).
//!
//! [`NetDev::init`] runs at CPL0: negotiation (VERSION_1 required; MAC, MRG_RXBUF, EVENT_IDX
//! and STATUS taken when offered), MSI-X entry 0 = configuration changes ([`CONFIG_VECTOR`]),
//! 1 = receive queue 0 ([`RX_VECTOR`]), 2 = transmit queue 1 ([`TX_VECTOR`]) (with fewer than
//! three table entries, everything on entry 0 → [`RX_VECTOR`]), both queues as large as the
//! device allows up to 256, and every receive buffer posted. Everything after that (receive,
//! transmit, kicks, interrupt requests) is plain memory access plus the MMIO write of a kick,
//! so it runs at CPL3, where the workloads of `net` run.
//!
//! Buffers are fixed: descriptor id `i` of a queue always carries buffer `i` of that queue
//! (2 KiB each, the 12-byte `virtio_net_hdr_v1` first, then the frame), and every chain is one
//! descriptor. A received frame spread over several buffers (MRG_RXBUF, `num_buffers` > 1:
//! never with 2 KiB buffers and a 1500-byte MTU) is dropped, its buffers reposted.
use crate::msix::Msix;
use crate::paging;
use crate::pci::{self, Bdf, Function};
use crate::sync::Global;
use crate::virtio::queue::{Buffer, QueueMemory, SplitQueue};
use crate::virtio::{self, Transport};

/// PCI device ID of a modern virtio-net.
pub const DEVICE_ID: u16 = virtio::MODERN_DEVICE_BASE + 1;

pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_MQ: u64 = 1 << 22;
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
/// What the driver accepts when offered.
const SUPPORTED: u64 = virtio::F_VERSION_1 | F_MAC | F_MRG_RXBUF | F_EVENT_IDX | F_STATUS;

/// Names of the feature bits `net.info` prints.
pub const FEATURE_NAMES: [(u64, &str); 14] = [
    (F_CSUM, "CSUM"),
    (F_GUEST_CSUM, "GUEST_CSUM"),
    (F_MTU, "MTU"),
    (F_MAC, "MAC"),
    (F_GUEST_TSO4, "GUEST_TSO4"),
    (F_HOST_TSO4, "HOST_TSO4"),
    (F_MRG_RXBUF, "MRG_RXBUF"),
    (F_STATUS, "STATUS"),
    (F_CTRL_VQ, "CTRL_VQ"),
    (F_MQ, "MQ"),
    (F_INDIRECT_DESC, "INDIRECT_DESC"),
    (F_EVENT_IDX, "EVENT_IDX"),
    (virtio::F_VERSION_1, "VERSION_1"),
    (1 << 33, "ACCESS_PLATFORM"),
];

pub const CONFIG_VECTOR: u8 = 0x41;
pub const RX_VECTOR: u8 = 0x42;
pub const TX_VECTOR: u8 = 0x43;

/// Bytes of `struct virtio_net_hdr_v1` in front of every frame.
pub const HDR_LEN: usize = 12;
/// Bytes of each buffer (header + frame).
pub const BUF_LEN: usize = 2048;
/// Largest frame a buffer holds.
pub const MAX_FRAME: usize = BUF_LEN - HDR_LEN;
const MAX_QUEUE: u16 = 256;
const RXQ: u16 = 0;
const TXQ: u16 = 1;
/// A locally administered MAC for a device that offers none.
const FALLBACK_MAC: [u8; 6] = [0x02, 0x74, 0x76, 0x00, 0x00, 0x01];

type Buffers = [[u8; BUF_LEN]; MAX_QUEUE as usize];

#[link_section = ".noinit.net"]
static RX_QUEUE: Global<QueueMemory> = Global::new(QueueMemory::new());
#[link_section = ".noinit.net"]
static TX_QUEUE: Global<QueueMemory> = Global::new(QueueMemory::new());
#[link_section = ".noinit.net"]
static RX_BUFS: Global<Buffers> = Global::new([[0; BUF_LEN]; MAX_QUEUE as usize]);
#[link_section = ".noinit.net"]
static TX_BUFS: Global<Buffers> = Global::new([[0; BUF_LEN]; MAX_QUEUE as usize]);

/// Counters of one device.
#[derive(Clone, Copy, Default)]
pub struct Stats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames dropped by the driver (spread over several buffers, or too short).
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Times a frame found no free transmit descriptor at first.
    pub tx_full: u64,
    pub rx_kicks: u64,
    pub tx_kicks: u64,
}

/// The device, set up. Lives in `net`'s state; used at CPL3 by the workloads.
pub struct NetDev {
    pub t: Transport,
    pub bdf: Bdf,
    pub mac: [u8; 6],
    pub offered: u64,
    pub accepted: u64,
    pub rx: SplitQueue,
    pub tx: SplitQueue,
    pub rx_notify: u64,
    pub tx_notify: u64,
    pub rx_max: u16,
    pub tx_max: u16,
    pub msix_table: u16,
    /// MSI-X entries in use (3, or 1 when the table is smaller).
    pub msix_used: u16,
    pub event_idx: bool,
    pub stats: Stats,
}

fn buf_addr(bufs: &Global<Buffers>, id: u16) -> u64 {
    (bufs.get() as *mut u8 as u64) + u64::from(id) * BUF_LEN as u64
}

/// The largest power of two up to `n` (and up to 256).
fn pow2_floor(n: u16) -> u16 {
    let n = n.min(MAX_QUEUE);
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

impl NetDev {
    /// Sets `f` up from scratch (also after a NEEDS_RESET): see the module comment. CPL0.
    pub fn init(f: &Function) -> Result<NetDev, &'static str> {
        let t = Transport::new(f)?;
        f.enable(pci::CMD_MEMORY | pci::CMD_BUS_MASTER);
        let msix = Msix::find(f.bdf).ok_or("no MSI-X capability")?;
        let table_bar = f
            .bar(msix.table_bar)
            .ok_or("MSI-X table in a BAR the device lacks")?;
        paging::map_uncached(
            table_bar.addr + u64::from(msix.table_offset),
            u64::from(msix.table_size) * 16,
        )?;
        let (offered, accepted) = t.negotiate(SUPPORTED)?;
        let event_idx = accepted & F_EVENT_IDX != 0;

        let apic_id = crate::apic::id();
        msix.enable(f.bdf, true);
        let (msix_used, rx_entry, tx_entry) = if msix.table_size >= 3 {
            msix.route(f, 0, apic_id, CONFIG_VECTOR)?;
            msix.route(f, 1, apic_id, RX_VECTOR)?;
            msix.route(f, 2, apic_id, TX_VECTOR)?;
            t.set_config_vector(0)?;
            (3, 1, 2)
        } else {
            msix.route(f, 0, apic_id, RX_VECTOR)?;
            t.set_config_vector(virtio::NO_VECTOR)?;
            (1, 0, 0)
        };
        msix.enable(f.bdf, false);

        let rx_max = t.queue_max_size(RXQ);
        let tx_max = t.queue_max_size(TXQ);
        let (rx_size, tx_size) = (pow2_floor(rx_max), pow2_floor(tx_max));
        if rx_size < 2 || tx_size < 2 {
            return Err("device lacks receive queue 0 or transmit queue 1");
        }
        // SAFETY: the queue memory is this driver's alone, and the device gets it only through
        // setup_queue; a device being set up again was reset by `negotiate` first.
        let (mut rx, tx) = unsafe {
            (
                SplitQueue::new(RX_QUEUE.get(), rx_size)?,
                SplitQueue::new(TX_QUEUE.get(), tx_size)?,
            )
        };
        let rx_notify = t.setup_queue(RXQ, &rx, rx_entry)?;
        let tx_notify = t.setup_queue(TXQ, &tx, tx_entry)?;
        for id in 0..rx_size {
            // SAFETY: receive buffer `id` is the driver's; it goes to the device until it comes
            // back in the used ring. The free list hands out 0, 1, 2, ... at first.
            let head = unsafe {
                rx.add(&[Buffer {
                    addr: buf_addr(&RX_BUFS, id),
                    len: BUF_LEN as u32,
                    device_writes: true,
                }])
            };
            if head != Some(id) {
                return Err("receive queue handed out descriptors out of order");
            }
        }
        rx.publish();
        t.driver_ok()?;

        let mut mac = FALLBACK_MAC;
        if accepted & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = t
                    .device_read8(i as u32)
                    .ok_or("device configuration shorter than the MAC")?;
            }
        }
        let mut dev = NetDev {
            t,
            bdf: f.bdf,
            mac,
            offered,
            accepted,
            rx,
            tx,
            rx_notify,
            tx_notify,
            rx_max,
            tx_max,
            msix_table: msix.table_size,
            msix_used,
            event_idx,
            stats: Stats::default(),
        };
        dev.interrupts(false);
        dev.kick_rx();
        Ok(dev)
    }

    /// Device status (`STATUS` feature: bit 0 link up), when negotiated.
    pub fn link_status(&self) -> Option<u16> {
        (self.accepted & F_STATUS != 0)
            .then(|| self.t.device_read16(6))
            .flatten()
    }

    /// `max_virtqueue_pairs`, when the device offers MQ.
    pub fn max_queue_pairs(&self) -> Option<u16> {
        (self.offered & F_MQ != 0)
            .then(|| self.t.device_read16(8))
            .flatten()
    }

    /// Whether the device status says NEEDS_RESET (an MMIO read: fine at CPL3).
    pub fn needs_reset(&self) -> bool {
        self.t.status() & virtio::STATUS_NEEDS_RESET != 0
    }

    /// Asks for interrupts on the next completion of either queue, or for none.
    pub fn interrupts(&mut self, on: bool) {
        self.rx.want_interrupts(on, self.event_idx);
        self.tx.want_interrupts(on, self.event_idx);
    }

    /// Whether either queue has completions not yet consumed.
    pub fn pending(&self) -> bool {
        self.rx.used_pending() != 0 || self.tx.used_pending() != 0
    }

    /// Publishes reposted receive buffers and kicks when the device wants it.
    pub fn kick_rx(&mut self) {
        if self.rx.publish_need_kick(self.event_idx) {
            self.stats.rx_kicks += 1;
            self.t.notify(self.rx_notify, RXQ);
        }
    }

    /// Publishes queued frames and kicks when the device wants it.
    pub fn kick_tx(&mut self) {
        if self.tx.publish_need_kick(self.event_idx) {
            self.stats.tx_kicks += 1;
            self.t.notify(self.tx_notify, TXQ);
        }
    }

    /// Publishes and kicks the transmit queue whatever the device asked (for malformed chains
    /// on purpose).
    pub fn kick_tx_always(&mut self) {
        self.tx.publish();
        self.notify_tx();
    }

    /// Kicks the transmit queue without publishing anything (the available index stays as the
    /// caller left it).
    pub fn notify_tx(&mut self) {
        self.stats.tx_kicks += 1;
        self.t.notify(self.tx_notify, TXQ);
    }

    /// The next received frame (without the virtio-net header) and its buffer id, or None.
    /// Give the id back with [`NetDev::rx_done`] when finished with the frame.
    pub fn rx_next(&mut self) -> Result<Option<(u16, &'static [u8])>, &'static str> {
        loop {
            let Some((id, len)) = self.rx.pop_used()? else {
                return Ok(None);
            };
            let len = len as usize;
            let base = buf_addr(&RX_BUFS, id) as *const u8;
            if len > BUF_LEN {
                return Err("device wrote more than a receive buffer holds");
            }
            // SAFETY: the device finished writing buffer `id` (it is in the used ring, read
            // after the index); it stays the driver's until rx_done reposts it.
            let whole = unsafe { core::slice::from_raw_parts(base, len) };
            let buffers = if whole.len() >= HDR_LEN {
                u16::from_le_bytes([whole[10], whole[11]])
            } else {
                0
            };
            let merged = self.accepted & F_MRG_RXBUF != 0;
            if len < HDR_LEN || (merged && buffers != 1) {
                // Too short, or spread over several buffers: drop it and what belongs to it.
                self.stats.rx_dropped += 1;
                self.rx_done(id);
                for _ in 1..buffers.min(self.rx.size()) {
                    match self.rx.pop_used()? {
                        Some((more, _)) => self.rx_done(more),
                        None => break,
                    }
                }
                continue;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += (len - HDR_LEN) as u64;
            return Ok(Some((id, &whole[HDR_LEN..])));
        }
    }

    /// Reposts receive buffer `id` (published by [`NetDev::kick_rx`]). Popping `id` put its
    /// descriptor first on the free list, so descriptor and buffer stay paired; any free
    /// descriptor gets its own buffer in any case.
    pub fn rx_done(&mut self, id: u16) {
        let Some(d) = self.rx.next_free() else {
            return;
        };
        debug_assert_eq!(d, id);
        // SAFETY: descriptor `d` is free, so receive buffer `d` is not with the device; it goes
        // back to the device until it returns in the used ring.
        unsafe {
            self.rx.add(&[Buffer {
                addr: buf_addr(&RX_BUFS, d),
                len: BUF_LEN as u32,
                device_writes: true,
            }]);
        }
    }

    /// Takes back every frame the device has sent; returns how many.
    pub fn tx_reclaim(&mut self) -> Result<u32, &'static str> {
        let mut n = 0;
        while self.tx.pop_used()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// A free transmit buffer: its id and the frame space after the (zeroed) header. None
    /// when every descriptor is with the device.
    pub fn tx_buffer(&mut self) -> Result<Option<(u16, &'static mut [u8])>, &'static str> {
        if self.tx.num_free() == 0 {
            self.tx_reclaim()?;
        }
        let Some(id) = self.tx.next_free() else {
            return Ok(None);
        };
        // SAFETY: descriptor `id` is free, so buffer `id` is not with the device.
        let whole =
            unsafe { core::slice::from_raw_parts_mut(buf_addr(&TX_BUFS, id) as *mut u8, BUF_LEN) };
        whole[..HDR_LEN].fill(0);
        Ok(Some((id, &mut whole[HDR_LEN..])))
    }

    /// Queues the frame of `len` bytes written into buffer `id` (from [`NetDev::tx_buffer`]);
    /// it goes out at the next [`NetDev::kick_tx`].
    pub fn tx_queue(&mut self, id: u16, len: usize) {
        // SAFETY: buffer `id` holds the header and frame and is the driver's until the device
        // returns descriptor `id`.
        let head = unsafe {
            self.tx.add(&[Buffer {
                addr: buf_addr(&TX_BUFS, id),
                len: (HDR_LEN + len.min(MAX_FRAME)) as u32,
                device_writes: false,
            }])
        };
        debug_assert_eq!(head, Some(id));
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
    }

    /// The address of transmit buffer `id` (for malformed chains built by hand).
    pub fn tx_buf_addr(id: u16) -> u64 {
        buf_addr(&TX_BUFS, id)
    }

    /// Interrupts taken on this device's vectors so far.
    pub fn irqs() -> (u64, u64, u64) {
        (
            crate::idt::count(RX_VECTOR),
            crate::idt::count(TX_VECTOR),
            crate::idt::count(CONFIG_VECTOR),
        )
    }
}
