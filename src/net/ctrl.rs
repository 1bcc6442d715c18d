//! The control queue (virtio 1.2 §5.1.6.5): `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (how many queue
//! pairs the driver uses: the others' TAP queues are detached, so the kernel steers no frames
//! to them) and `VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET` (TUNSETOFFLOAD again). Everything else
//! is answered `VIRTIO_NET_ERR`. Runs on whichever thread got the kick, under its own lock.
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MQ, VIRTIO_NET_OK,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::{read_at, walk, write_at, Direction, RamMap, Seg};
use super::counters::CtrlCounters;
use super::device::Shared;
use super::pair::{signal, IrqCounters};
use super::used::UsedRing;
use crate::virtio::queue::DrainPasses;
use crate::virtio::VirtioInterrupt;

/// Guest offloads `GUEST_OFFLOADS_SET` may turn on or off.
pub const GUEST_OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN)
    | (1 << VIRTIO_NET_F_GUEST_UFO);

/// Longest command we read (class, command, then at most a u64).
const MAX_COMMAND: usize = 4096;

#[derive(Default)]
pub(crate) struct CtrlState {
    pub active: Option<CtrlActive>,
    pub counters: CtrlCounters,
    segs: Vec<Seg>,
}

pub(crate) struct CtrlActive {
    pub mem: GuestMemoryMmap,
    pub ram: RamMap,
    pub queue: Queue,
    pub used: UsedRing,
    pub index: u16,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub acked: u64,
    /// Queue pairs the driver may ask for.
    pub max_pairs: u16,
}

impl CtrlState {
    /// Answers every command queued.
    pub(crate) fn process(&mut self, shared: &Shared) -> Result<(), virtio_queue::Error> {
        let CtrlState {
            active,
            counters: c,
            segs,
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        if !a.queue.ready() {
            return Ok(());
        }
        let max_desc = usize::from(a.queue.size());
        let mut passes = DrainPasses::default();
        loop {
            a.queue.disable_notification(&a.mem)?;
            let mut found = false;
            loop {
                // `iter` refuses an available index more than the queue size ahead: an error
                // for the caller. (`pop_descriptor_chain` answers None to it, while
                // `enable_notification` below keeps saying there is more: a spin forever.)
                let next = a.queue.iter(&a.mem)?.next();
                let Some(chain) = next else { break };
                found = true;
                let head = chain.head_index();
                if head >= a.queue.size() {
                    c.bad_chain += 1;
                    continue;
                }
                let walked = walk(
                    chain,
                    &a.ram,
                    Direction::ReadThenWrite,
                    max_desc,
                    MAX_COMMAND as u64,
                    segs,
                );
                let len = match walked {
                    Ok(w) if w.readable >= 2 && w.writable >= 1 => {
                        let ack = command(a, shared, segs, w.readable as usize);
                        if ack == VIRTIO_NET_OK as u8 {
                            c.ok += 1;
                        } else {
                            c.err += 1;
                        }
                        let first_writable =
                            segs.iter().position(|s| s.write).unwrap_or(segs.len());
                        if write_at(&a.mem, &segs[first_writable..], 0, &[ack]) {
                            1
                        } else {
                            0
                        }
                    }
                    _ => {
                        c.bad_chain += 1;
                        0
                    }
                };
                a.used.add(&a.mem, head, len)?;
            }
            if !passes.again(a.queue.enable_notification(&a.mem)?, found) {
                break;
            }
        }
        let mut errors = 0;
        let irq = IrqCounters {
            sent: &mut c.interrupts,
            suppressed: &mut c.interrupts_suppressed,
            errors: &mut errors,
        };
        a.queue.set_next_used(a.used.next_used());
        signal(
            &mut a.used,
            &a.mem,
            a.interrupt.as_ref(),
            a.index,
            irq,
            &None,
        )
    }
}

/// Carries out one command; returns the ack byte.
fn command(a: &CtrlActive, shared: &Shared, segs: &[Seg], readable: usize) -> u8 {
    let ok = VIRTIO_NET_OK as u8;
    let err = VIRTIO_NET_ERR as u8;
    let has = |bit: u32| a.acked & (1u64 << bit) != 0;
    let mut hdr = [0u8; 2];
    if !read_at(&a.mem, segs, 0, &mut hdr) {
        return err;
    }
    let data_len = readable - 2;
    let (class, cmd) = (u32::from(hdr[0]), u32::from(hdr[1]));
    match (class, cmd) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if has(VIRTIO_NET_F_MQ) => {
            let mut b = [0u8; 2];
            if data_len != 2 || !read_at(&a.mem, segs, 2, &mut b) {
                return err;
            }
            let pairs = u16::from_le_bytes(b);
            if pairs == 0 || pairs > a.max_pairs {
                return err;
            }
            if shared.set_active_pairs(usize::from(pairs)) {
                ok
            } else {
                err
            }
        }
        (VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET)
            if has(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) =>
        {
            let mut b = [0u8; 8];
            if data_len != 8 || !read_at(&a.mem, segs, 2, &mut b) {
                return err;
            }
            let offloads = u64::from_le_bytes(b);
            // Only offloads the driver negotiated may be turned on.
            if offloads & !(a.acked & GUEST_OFFLOAD_FEATURES) != 0 {
                return err;
            }
            if shared.set_offload(offloads) {
                ok
            } else {
                err
            }
        }
        _ => err,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::mpsc;
    use std::time::Duration;

    use virtio_bindings::virtio_net::VIRTIO_NET_F_CTRL_VQ;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::net::{Net, NetBackend, NetConfig};
    use crate::virtio::{feature, InterruptError, VirtioDevice, VirtioInterruptType};

    /// A TAP queue with nothing to read that takes every frame.
    struct Sink(EventFd);

    impl NetBackend for Sink {
        fn fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
        unsafe fn readv_raw(&self, _: &[libc::iovec]) -> io::Result<Option<usize>> {
            Ok(None)
        }
        unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
            Ok(Some(iovs.iter().map(|v| v.iov_len).sum()))
        }
        fn set_offload(&self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn set_queue_enabled(&self, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "sink".into()
        }
    }

    pub(crate) struct NoIrq;

    impl VirtioInterrupt for NoIrq {
        fn trigger(&self, _: VirtioInterruptType) -> Result<(), InterruptError> {
            Ok(())
        }
    }

    pub(crate) const SIZE: u16 = 8;

    /// Queue `q`'s rings: descriptors, available ring, used ring.
    pub(crate) fn rings(q: u64) -> (u64, u64, u64) {
        let base = 0x1000 + q * 0x3000;
        (base, base + 0x1000, base + 0x2000)
    }

    pub(crate) fn queue(q: u64) -> Queue {
        let (desc, avail, used) = rings(q);
        let mut queue = Queue::new(SIZE).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(desc))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(used)).unwrap();
        queue.set_ready(true);
        queue
    }

    /// Every queue of a one-pair device (RX, TX, control), EVENT_IDX as `event_idx` says.
    pub(crate) fn queues(event_idx: bool) -> Vec<Queue> {
        (0..3u64)
            .map(|q| {
                let mut queue = queue(q);
                queue.set_event_idx(event_idx);
                queue
            })
            .collect()
    }

    /// Found by the net_device fuzz target (fuzz/regressions/net_device/): a control queue
    /// whose available index is more than the queue size ahead made the kick spin forever
    /// (no chain to pop, yet "more to do" after re-enabling notifications). It is an error for
    /// that kick now, and the queue answers again once the index is sane.
    #[test]
    fn bogus_available_index_is_refused_not_spun_on() {
        let sink = Sink(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut net = Net::with_backends(&NetConfig::new("ctrl0"), vec![Box::new(sink)]).unwrap();
        net.ack_features(feature(VIRTIO_NET_F_CTRL_VQ));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        net.activate(mem.clone(), (0..3).map(queue).collect(), Arc::new(NoIrq))
            .unwrap();
        let (desc, avail, used) = rings(2);
        mem.write_obj(0x8000u16, GuestAddress(avail + 2)).unwrap();
        let (done, wait) = mpsc::channel();
        let kick = std::thread::spawn(move || {
            net.process_queue(2).unwrap();
            done.send(()).unwrap();
            net
        });
        assert!(
            wait.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the control queue spins on a bogus available index"
        );
        let mut net = kick.join().unwrap();
        let c = net.counters().ctrl;
        assert_eq!((c.ok, c.err, c.bad_chain), (0, 0, 0));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 0);

        // VQ_PAIRS_SET without MQ negotiated: answered VIRTIO_NET_ERR.
        let (cmd, ack) = (0x8_0000u64, 0x8_1000u64);
        mem.write_slice(&[4, 0, 1, 0], GuestAddress(cmd)).unwrap();
        mem.write_obj(0xeeu8, GuestAddress(ack)).unwrap();
        for (i, (addr, len, flags, next)) in [(cmd, 4u32, 1u16, 1u16), (ack, 1, 2, 0)]
            .into_iter()
            .enumerate()
        {
            let at = desc + 16 * i as u64;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
        net.process_queue(2).unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 1);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(used + 8)).unwrap(), 1);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(ack)).unwrap(),
            VIRTIO_NET_ERR as u8
        );
        assert_eq!(net.counters().ctrl.err, 1);
    }

    /// Each queue's used-ring flags laid on its available index (the flags move the index at
    /// every notification toggle, as the virtio_transport fuzz target found for virtio-rng):
    /// the control, transmit and receive kicks end.
    #[test]
    fn rings_laid_over_each_other_do_not_hold_a_kick_forever() {
        let sink = Sink(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut net = Net::with_backends(&NetConfig::new("ovl0"), vec![Box::new(sink)]).unwrap();
        net.ack_features(feature(VIRTIO_NET_F_CTRL_VQ));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let queues = (0..3)
            .map(|q| {
                let (desc, avail, _) = rings(q);
                let mut queue = Queue::new(SIZE).unwrap();
                queue
                    .try_set_desc_table_address(GuestAddress(desc))
                    .unwrap();
                queue
                    .try_set_avail_ring_address(GuestAddress(avail + 2))
                    .unwrap();
                queue
                    .try_set_used_ring_address(GuestAddress(avail + 4))
                    .unwrap();
                queue.set_ready(true);
                queue
            })
            .collect();
        net.activate(mem, queues, Arc::new(NoIrq)).unwrap();
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            net.process_queue(2).unwrap();
            net.process_queue(1).unwrap();
            net.process_queue(0).unwrap();
            done.send(()).unwrap();
        });
        assert!(
            wait.recv_timeout(Duration::from_secs(10)).is_ok(),
            "a kick never ends"
        );
    }
}
