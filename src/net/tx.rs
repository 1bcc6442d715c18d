//! Transmit: the bottom half of a TX kick.
//!
//! Pop each chain, check it (only device-readable buffers, inside RAM, no loops, at most the
//! queue size of descriptors, 14 to `MAX_FRAME_LEN` bytes after the header) and its vnet header,
//! and `writev` it to the TAP straight from guest memory. A bad frame's chain goes back with
//! length 0, counted by cause. If the TAP says `EAGAIN`, the chain is put back, kicks stay off,
//! and the pair waits for `EPOLLOUT` on the TAP.
//!
//! **Completion rule: per chain, against `used_event`.** Each chain's used entry is published
//! (one release store of the used index) as soon as its `writev` returned, and the interrupt is
//! decided right then against the driver's `used_event` (EVENT_IDX) or
//! `VRING_AVAIL_F_NO_INTERRUPT`, before the next chain is even read. Coalescing is the
//! driver's to ask for, not the device's to impose: Linux's `virtio_net` asks for an interrupt
//! at the first completion when it has few buffers out (TCP Small Queues holds a socket to
//! about two TSO skbs in flight and sends the next only once one is *freed*), and pushes
//! `used_event` ahead (¾ of what is outstanding) when it has many; a polling driver (the
//! built-in guest's `wait=halt`) keeps it behind and takes no interrupt at all. Deciding once
//! per drain run instead (as the device did before, every 8/16 entries and at the end) held
//! the first skb's completion until the second one's `writev` was done, so guest and device
//! took turns instead of overlapping. What it costs per chain: a store, a fence and a load
//! against a `writev` of 1–2 µs or more.
//!
//! **On the worker, the last completion of a pass may be held** behind a receive interrupt
//! (`txhold`, module `hold`): published at once like every other, its interrupt waits for
//! one more look at the worker's events, and if that brings received frames with their own
//! interrupt, the driver's receive handler takes the completion along and the transmit
//! interrupt is usually not wanted any more. A completion that another chain follows still
//! gets its interrupt before that chain's `writev`.
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::backend::NetBackend;
use super::chain::{read_host, walk, ChainError, Direction, IoVecs, RamMap, Seg};
use super::counters::TxCounters;
use super::header::{validate_tx, VnetHeader, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN};
use super::hold::TxHold;
use super::pair::{publish, signal, IrqCounters, PairState};
use super::trace::{self, Tracer};
use super::used::UsedRing;
use crate::virtio::queue::DrainPasses;
use crate::virtio::VirtioInterrupt;

/// What became of one chain.
enum Sent {
    /// Frame bytes (after the header) the TAP took.
    Frame(usize),
    Drop(Cause),
    /// The TAP is full.
    Again,
}

#[derive(Debug, Clone, Copy)]
enum Cause {
    BadChain,
    BadHeader,
    Oversize,
    Runt,
    TapDown,
    TapGone,
    TapError,
}

impl Cause {
    fn count(self, c: &mut TxCounters) {
        let d = &mut c.drops;
        match self {
            Cause::BadChain => d.bad_chain += 1,
            Cause::BadHeader => d.bad_header += 1,
            Cause::Oversize => d.oversize += 1,
            Cause::Runt => d.runt += 1,
            Cause::TapDown => d.tap_down += 1,
            Cause::TapGone => d.tap_gone += 1,
            Cause::TapError => d.tap_error += 1,
        }
    }
}

impl PairState {
    /// Sends what the driver queued, until the queue is empty or the TAP is full. `hold`: the
    /// interrupt the last completion wants may be left to the worker (module `hold`).
    pub(crate) fn process_tx(
        &mut self,
        backend: &dyn NetBackend,
        hold: bool,
    ) -> Result<(), virtio_queue::Error> {
        if self.active.as_ref().is_some_and(|a| a.hold.held()) {
            // A new pass decides the held interrupt first: the driver has run since.
            self.decide_tx(false);
        }
        let PairState {
            active,
            counters,
            iov,
            segs,
            timeline,
            flow,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        let tr = trace::tracer(timeline, *flow);
        if !a.txq.ready() || a.tx_blocked || a.vhost {
            return Ok(());
        }
        let c = &mut counters.tx;
        let mem = &a.mem;
        let max_desc = usize::from(a.txq.size());
        let mut blocked = false;
        let mut passes = DrainPasses::default();
        loop {
            a.txq.disable_notification(mem)?;
            // One read of the available index per pass (it is the driver's hottest line).
            let mut chains = a.txq.iter(mem)?;
            let mut popped = trace::now(&tr);
            let mut found = false;
            while let Some(chain) = chains.next() {
                found = true;
                if a.hold.uncovered() {
                    // The previous completion's interrupt goes before this chain's writev.
                    a.hold.decided();
                    let (irq, intr) = (IrqCounters::tx(c), a.interrupt.as_ref());
                    signal(&mut a.tx_used, mem, intr, a.tx_index, irq, &tr)?;
                }
                let head = chain.head_index();
                if usize::from(head) >= max_desc {
                    // Not a chain we can even give back.
                    c.drops.bad_head += 1;
                    continue;
                }
                let checked = prepare(chain, &a.ram, a.acked, max_desc, segs, iov);
                let sent = match checked {
                    Ok(total) => {
                        note(&tr, popped, head, total);
                        let start = trace::now(&tr);
                        let sent = write(backend, iov, total);
                        if let Some(t) = &tr {
                            let what = format!("tap writev {} B", total - HDR_LEN);
                            t.span(start, what, "tap write", serde_json::json!({"head": head}));
                        }
                        sent
                    }
                    Err(cause) => Sent::Drop(cause),
                };
                match sent {
                    Sent::Frame(n) => {
                        c.frames += 1;
                        c.bytes += n as u64;
                        c.copied_bytes += HDR_LEN as u64;
                    }
                    Sent::Drop(cause) => {
                        log::debug!("{}: tx frame dropped: {cause:?}", backend.describe());
                        cause.count(c);
                    }
                    Sent::Again => {
                        // Give the chain back to the ring and wait for EPOLLOUT; kicks stay off.
                        chains.go_to_previous_position();
                        c.tap_eagain += 1;
                        blocked = true;
                        break;
                    }
                }
                // Completed now: published, and the interrupt decided against the driver's
                // used_event (or, `hold`, left to the worker if no chain follows), before the
                // next chain's writev (see the module doc). Every used entry is published and
                // decided here: nothing is left for after the loop.
                a.tx_used.add(mem, head, 0)?;
                c.publications += 1;
                let (intr, index) = (a.interrupt.as_ref(), a.tx_index);
                complete(
                    &mut a.tx_used,
                    &mut a.hold,
                    mem,
                    (intr, index),
                    c,
                    hold,
                    &tr,
                )?;
                if tr.is_some() && a.hold.uncovered() {
                    a.hold_trace.flow = *flow;
                }
                popped = trace::now(&tr);
            }
            c.passes += 1;
            // Kicks back on, then look once more: a chain added in between would wait.
            if blocked || !passes.again(a.txq.enable_notification(mem)?, found) {
                break;
            }
        }
        iov.clear();
        a.tx_blocked = blocked;
        a.txq.set_next_used(a.tx_used.next_used());
        Ok(())
    }

    /// Decides the transmit interrupt not sent yet (held or uncovered), against `used_event`
    /// now. `expired`: the hold's timer ran out.
    pub(crate) fn decide_tx(&mut self, expired: bool) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let held = a.hold.held();
        a.hold.decided();
        let c = &mut self.counters.tx;
        let sent = c.interrupts;
        let (tr, since) = a.hold_trace.take(&self.timeline);
        let start = trace::now(&tr);
        let (irq, intr) = (IrqCounters::tx(c), a.interrupt.as_ref());
        // Everything was published already: an error here is a ring the driver moved out of
        // RAM since, read for its used_event.
        let ok = signal(&mut a.tx_used, &a.mem, intr, a.tx_index, irq, &tr).is_ok();
        if let (Some(t), Some(since), Some(start)) = (&tr, since, start) {
            let how = if expired {
                "hold expired"
            } else {
                "next transmit pass"
            };
            t.held(since, start, a.tx_index, c.interrupts != sent, how);
        }
        if held && c.interrupts == sent {
            c.irq_held_avoided += 1;
        } else if held && expired {
            c.irq_held_expired += 1;
        }
        if !ok {
            self.counters.queue_errors += 1;
        }
    }
}

/// Publishes what was completed and decides the interrupt now, or (`hold`) marks it wanted for
/// the worker to decide (module `hold`).
fn complete(
    used: &mut UsedRing,
    h: &mut TxHold,
    mem: &GuestMemoryMmap,
    (intr, index): (&dyn VirtioInterrupt, u16),
    c: &mut TxCounters,
    hold: bool,
    tr: &Option<Tracer<'_>>,
) -> Result<(), virtio_queue::Error> {
    if !hold {
        h.decided();
        return signal(used, mem, intr, index, IrqCounters::tx(c), tr);
    }
    if publish(used, mem, index, tr)? > 0 && !h.uncovered() {
        if used.wants_notification(mem)? {
            h.want();
        } else {
            c.interrupts_suppressed += 1;
        }
    }
    Ok(())
}

/// The trace span of popping and checking one chain.
fn note(tr: &Option<Tracer<'_>>, popped: Option<std::time::Instant>, head: u16, total: usize) {
    if let Some(t) = tr {
        let what = format!("pop tx chain {head}");
        let args = serde_json::json!({"head": head, "bytes": total});
        t.span(popped, what, "queue pop", args);
    }
}

/// Checks one chain and its vnet header, and gathers it into `iov`; its length, header
/// included.
fn prepare(
    chain: DescriptorChain<&GuestMemoryMmap>,
    ram: &RamMap,
    acked: u64,
    max_desc: usize,
    segs: &mut Vec<Seg>,
    iov: &mut IoVecs,
) -> Result<usize, Cause> {
    let limit = (HDR_LEN + MAX_FRAME_LEN) as u64;
    let total = match walk(chain, ram, Direction::Read, max_desc, limit, segs) {
        Ok(w) => w.readable as usize,
        Err(ChainError::TooLong(_)) => return Err(Cause::Oversize),
        Err(_) => return Err(Cause::BadChain),
    };
    if total < HDR_LEN + ETH_HLEN {
        return Err(Cause::Runt);
    }
    let mut raw = [0u8; HDR_LEN];
    if !read_host(segs, 0, &mut raw) {
        return Err(Cause::BadChain);
    }
    if validate_tx(&VnetHeader::from_bytes(&raw), total - HDR_LEN, acked).is_err() {
        return Err(Cause::BadHeader);
    }
    iov.clear();
    iov.push_segs(segs);
    Ok(total)
}

/// Writes a checked chain (`iov`, `total` bytes) to the TAP.
fn write(backend: &dyn NetBackend, iov: &IoVecs, total: usize) -> Sent {
    // SAFETY: each iovec is a segment `walk` found inside guest RAM (`prepare`); the active
    // pair's `mem` keeps that mapping alive for the whole call, and the kernel only reads
    // through them.
    match unsafe { backend.writev_raw(iov.as_slice()) } {
        Ok(Some(_)) => Sent::Frame(total - HDR_LEN),
        Ok(None) => Sent::Again,
        Err(e) => match e.raw_os_error() {
            Some(libc::EIO) => Sent::Drop(Cause::TapDown),
            Some(libc::EBADFD) => Sent::Drop(Cause::TapGone),
            _ => Sent::Drop(Cause::TapError),
        },
    }
}

#[cfg(test)]
mod tests {
    //! The completion rule against a mock driver that frees its buffers ("skbs") only when a
    //! completion interrupt tells it to, as Linux's `virtio_net` with `napi_tx` and TCP Small
    //! Queues does.
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use crate::net::backend::NetBackend;
    use crate::net::ctrl::tests::{queues, rings, SIZE};
    use crate::net::{Net, NetConfig};
    use crate::virtio::{
        feature, InterruptError, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
        VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    };

    const TXQ: u64 = 1;
    const FRAME: u32 = 12 + 60;

    /// The driver's side of the transmit queue.
    struct Driver {
        mem: GuestMemoryMmap,
        /// Frames still to send, and how many may be in flight (sent, not yet completed).
        to_send: u32,
        in_flight_max: u32,
        /// Chains made available, and completions the driver has seen (its last_used).
        avail: u16,
        seen: u16,
        /// used_event after each reclaim: `None` keeps it far behind (a polling driver that
        /// wants no interrupt), `Some(0)`: the next completion.
        rearm: Option<u16>,
        interrupts: u32,
        /// At each writev: (frames written before it, completions the driver had seen).
        at_writev: Vec<(u16, u16)>,
    }

    impl Driver {
        fn used_event_addr() -> u64 {
            rings(TXQ).1 + 4 + 2 * u64::from(SIZE)
        }

        /// Makes chains available while fewer than `in_flight_max` are out.
        fn submit(&mut self) {
            let (desc, avail, _) = rings(TXQ);
            while self.to_send > 0 && u32::from(self.avail - self.seen) < self.in_flight_max {
                let head = self.avail % SIZE;
                let d = desc + 16 * u64::from(head);
                let buf = 0x4_0000 + 0x100 * u64::from(head);
                self.mem.write_obj(buf, GuestAddress(d)).unwrap();
                self.mem.write_obj(FRAME, GuestAddress(d + 8)).unwrap();
                self.mem.write_obj(0u16, GuestAddress(d + 12)).unwrap();
                let slot = avail + 4 + 2 * u64::from(head);
                self.mem.write_obj(head, GuestAddress(slot)).unwrap();
                self.avail = self.avail.wrapping_add(1);
                self.mem
                    .write_obj(self.avail, GuestAddress(avail + 2))
                    .unwrap();
                self.to_send -= 1;
            }
        }

        /// The completion interrupt: free what completed, re-arm, send more.
        fn on_interrupt(&mut self) {
            self.interrupts += 1;
            let used = rings(TXQ).2;
            self.seen = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
            let event = match self.rearm {
                Some(ahead) => self.seen.wrapping_add(ahead),
                None => self.seen.wrapping_add(0x8000),
            };
            let addr = GuestAddress(Self::used_event_addr());
            self.mem.write_obj(event, addr).unwrap();
            self.submit();
        }
    }

    struct Irq(Arc<Mutex<Driver>>);

    impl VirtioInterrupt for Irq {
        fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError> {
            if kind == VirtioInterruptType::Queue(TXQ as u16) {
                self.0.lock().unwrap().on_interrupt();
            }
            Ok(())
        }
    }

    /// The TAP: records, for each frame, what the driver had seen of the completions.
    struct Tap {
        evt: EventFd,
        driver: Arc<Mutex<Driver>>,
    }

    impl NetBackend for Tap {
        fn fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        unsafe fn readv_raw(&self, _: &[libc::iovec]) -> io::Result<Option<usize>> {
            Ok(None)
        }
        unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
            let mut d = self.driver.lock().unwrap();
            let written = d.at_writev.len() as u16;
            let seen = d.seen;
            d.at_writev.push((written, seen));
            Ok(Some(iovs.iter().map(|v| v.iov_len).sum()))
        }
        fn set_offload(&self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn set_queue_enabled(&self, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "mock tap".into()
        }
    }

    /// Sends `frames` with at most `in_flight` out, the driver re-arming as `rearm` says and
    /// one kick. Returns the driver and the device.
    fn run(frames: u32, in_flight: u32, rearm: Option<u16>) -> (Driver, Net) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let driver = Arc::new(Mutex::new(Driver {
            mem: mem.clone(),
            to_send: frames,
            in_flight_max: in_flight,
            avail: 0,
            seen: 0,
            rearm,
            interrupts: 0,
            at_writev: Vec::new(),
        }));
        let tap = Tap {
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            driver: driver.clone(),
        };
        let mut net = Net::with_backends(&NetConfig::new("mock0"), vec![Box::new(tap)]).unwrap();
        net.ack_features(feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX));
        let queues = queues(true);
        {
            let mut d = driver.lock().unwrap();
            let event = rearm.map_or(0x8000, |a| a);
            let addr = GuestAddress(Driver::used_event_addr());
            d.mem.write_obj(event, addr).unwrap();
            d.submit();
        }
        net.activate(mem, queues, Arc::new(Irq(driver.clone())))
            .unwrap();
        net.handle().ioeventfd_kick(TXQ as usize);
        // The worker's end of the batch: an interrupt the last completion wants is sent after
        // one more look (which finds nothing: this TAP never has a frame to read).
        if net.handle().worker_idle(0) {
            assert!(!net.handle().worker_idle(0), "one look only");
        }
        assert!(!net.handle().tx_interrupt_pending(0));
        let d = std::mem::replace(
            &mut *driver.lock().unwrap(),
            Driver {
                mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
                to_send: 0,
                in_flight_max: 0,
                avail: 0,
                seen: 0,
                rearm: None,
                interrupts: 0,
                at_writev: Vec::new(),
            },
        );
        (d, net)
    }

    /// A TCP sender with two skbs in flight: each completion (used index and interrupt) must
    /// reach it before the device's next writev, so the one kick carries the whole stream.
    /// With completions decided once per run, the second writev came before the first
    /// completion, and the run ended after two frames (the driver had nothing more to send
    /// until it was interrupted).
    #[test]
    fn each_completion_reaches_the_driver_before_the_next_writev() {
        let (d, net) = run(20, 2, Some(0));
        assert_eq!(d.at_writev.len(), 20, "one kick sends everything");
        for &(written, seen) in &d.at_writev {
            assert_eq!(seen, written, "completions seen at writev {written}");
        }
        assert_eq!(d.interrupts, 20);
        let c = net.counters().pairs[0].tx;
        assert_eq!((c.frames, c.publications, c.interrupts), (20, 20, 20));
        assert_eq!((c.wakeups, c.interrupts_suppressed), (1, 0));
    }

    /// A driver that holds `used_event` far behind (the built-in guest polling with
    /// `wait=halt`) takes no interrupt, however many chains complete; each is still published
    /// at once.
    #[test]
    fn a_polling_driver_takes_no_interrupt() {
        let (d, net) = run(8, 8, None);
        assert_eq!(d.interrupts, 0);
        let c = net.counters().pairs[0].tx;
        assert_eq!((c.frames, c.publications, c.interrupts), (8, 8, 0));
        assert_eq!(c.interrupts_suppressed, 8);
    }

    /// A driver with many chains out asks for one interrupt, after the 6th of 8 completions
    /// (`used_event` 5, as `virtqueue_enable_cb_delayed` sets ¾ ahead): exactly one comes,
    /// before the 7th writev.
    #[test]
    fn coalescing_is_the_drivers_choice() {
        let (d, net) = run(8, 8, Some(5));
        assert_eq!(d.interrupts, 1);
        assert_eq!(
            d.at_writev[6],
            (6, 6),
            "interrupted after the 6th completion"
        );
        let c = net.counters().pairs[0].tx;
        assert_eq!((c.frames, c.interrupts, c.interrupts_suppressed), (8, 1, 7));
    }
}
