//! One queue pair: its TAP queue, the epoll set its worker waits on, and the state that the
//! worker (or, with notify=exit, the vCPU thread) works on under one lock.
//!
//! The TAP fd is in the epoll set only while the pair is active and its TAP queue attached,
//! for `EPOLLIN` while the receive queue has buffers (and is not stalled waiting for the
//! driver), and for `EPOLLOUT` while a transmit waits for room after `EAGAIN`.
use std::num::Wrapping;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::NetBackend;
use super::chain::{IoVecs, RamMap, Seg};
use super::counters::PairCounters;
use super::hold::{HoldStep, TxHold};
use super::rx::RxBuffers;
use super::trace::{HoldTrace, Tracer};
use super::used::UsedRing;
use super::vhost::VhostPair;
use crate::trace::timeline::Timeline;
use crate::virtio::{VirtioInterrupt, VirtioInterruptType};

/// epoll tokens besides the queue kicks (whose token is the queue index).
pub(crate) const TOKEN_STOP: u64 = u64::MAX;
pub(crate) const TOKEN_WAKE: u64 = u64::MAX - 1;
pub(crate) const TOKEN_TAP: u64 = u64::MAX - 2;
/// The worker's `txhold` timer.
pub(crate) const TOKEN_HOLD: u64 = u64::MAX - 3;

/// A transmit kick on the vCPU thread sends a chain there only up to this size (a request,
/// an ACK); a larger one (a TSO segment) goes to the worker.
const INLINE_MAX: u64 = 2048;

/// Extra room after the buffers offered for a frame: bytes landing there mean the frame was
/// longer than the buffers (the kernel truncates silently otherwise).
pub(crate) const OVERFLOW_LEN: usize = 64;

pub(crate) struct Pair {
    pub index: usize,
    pub backend: Box<dyn NetBackend>,
    pub epoll: Epoll,
    /// Wakes the worker (to end it, or to take over a transmit stream: `handoff`).
    pub wake: EventFd,
    /// A notify=exit kick found a stream of chains and left it to the worker.
    handoff: AtomicBool,
    /// `txhold`: how long a transmit interrupt may be held behind a receive interrupt, in
    /// microseconds (0: never held).
    pub txhold_us: u32,
    state: Mutex<PairState>,
}

pub(crate) struct PairState {
    pub active: Option<ActivePair>,
    /// The TAP queue is attached (TUNSETQUEUE); detached ones get no frames.
    pub attached: bool,
    /// The TAP was deleted.
    pub gone: bool,
    /// The TAP fd's registration in the epoll set now.
    registered: Option<EventSet>,
    pub counters: PairCounters,
    pub iov: IoVecs,
    pub segs: Vec<Seg>,
    pub rx: RxBuffers,
    pub overflow: Box<[u8; OVERFLOW_LEN]>,
    /// `--trace`: the timeline (set at activation) and the flow the current run serves.
    pub timeline: Option<Arc<Timeline>>,
    pub flow: u64,
    /// `vhost=on`: the pair's vhost-net instance, which serves its rings while active.
    pub vhost: Option<VhostPair>,
}

/// A pair between DRIVER_OK and reset.
pub(crate) struct ActivePair {
    pub mem: GuestMemoryMmap,
    /// `mem`'s regions, for translating buffers.
    pub ram: RamMap,
    pub rxq: Queue,
    pub txq: Queue,
    pub rx_used: UsedRing,
    pub tx_used: UsedRing,
    /// Queue indexes (for interrupts).
    pub rx_index: u16,
    pub tx_index: u16,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Features the driver accepted.
    pub acked: u64,
    /// MRG_RXBUF: a frame may span several receive chains.
    pub mrg: bool,
    /// Bytes (header included) the buffers for one frame must hold.
    pub rx_need: usize,
    /// Waiting for the TAP to be writable.
    pub tx_blocked: bool,
    /// Waiting for the driver to add receive buffers.
    pub rx_stalled: bool,
    /// Within the queue pairs the driver uses (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
    pub rx_enabled: bool,
    /// vhost-net serves both rings: this thread neither reads nor writes the TAP for them.
    pub vhost: bool,
    /// The transmit interrupt wanted and not yet sent (module `hold`).
    pub hold: TxHold,
    /// `--trace`: that interrupt's flow and hold.
    pub hold_trace: HoldTrace,
}

impl Pair {
    pub fn new(
        index: usize,
        backend: Box<dyn NetBackend>,
        txhold_us: u32,
    ) -> std::io::Result<Pair> {
        Ok(Pair {
            index,
            backend,
            epoll: Epoll::new()?,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            handoff: AtomicBool::new(false),
            txhold_us,
            state: Mutex::new(PairState {
                active: None,
                attached: true,
                gone: false,
                registered: None,
                counters: PairCounters::default(),
                iov: IoVecs::default(),
                segs: Vec::new(),
                rx: RxBuffers::default(),
                overflow: Box::new([0; OVERFLOW_LEN]),
                timeline: None,
                flow: 0,
                vhost: None,
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, PairState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the TAP fd's epoll registration match what the state needs.
    pub fn sync_poll(&self, st: &mut PairState) {
        let want = match &st.active {
            Some(a) if st.attached && !st.gone && !a.vhost => {
                let mut ev = EventSet::empty();
                if a.rxq.ready() && a.rx_enabled && !a.rx_stalled {
                    ev |= EventSet::IN;
                }
                if a.tx_blocked {
                    ev |= EventSet::OUT;
                }
                Some(ev)
            }
            _ => None,
        };
        if want == st.registered {
            return;
        }
        let fd = self.backend.fd();
        let r = match (st.registered, want) {
            (None, Some(ev)) => {
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, TOKEN_TAP))
            }
            (Some(_), Some(ev)) => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, TOKEN_TAP))
            }
            (Some(_), None) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, None) => Ok(()),
        };
        match r {
            Ok(()) => st.registered = want,
            Err(e) => log::warn!("{}: epoll: {e}", self.backend.describe()),
        }
    }

    /// The driver kicked the transmit queue (`kicks` times, as one wakeup). `flow`: the trace
    /// flow this run serves (0: none).
    pub fn kick_tx(&self, kicks: u64, flow: u64) {
        let mut st = self.lock();
        st.counters.tx.kicks += kicks;
        self.serve_tx(&mut st, flow, false);
    }

    /// One transmit wakeup for trace flow `flow`; `read_after`: read the TAP too when frames
    /// went out.
    fn serve_tx(&self, st: &mut PairState, flow: u64, read_after: bool) {
        st.counters.tx.wakeups += 1;
        st.flow = flow;
        let sent = st.counters.tx.frames;
        // On the vCPU thread (`read_after`) nothing is held: no worker would come back to it.
        self.run_tx(st, !read_after);
        if read_after && st.counters.tx.frames != sent {
            self.run_rx(st);
        }
        self.sync_poll(st);
        st.flow = 0;
    }

    /// A transmit kick on the vCPU thread (notify=exit), which the guest waits on. One small
    /// chain waiting (a request, a ping, an ACK; up to `INLINE_MAX` bytes): sent here, and the
    /// TAP read right after, so that a reply the host's stack queued during the `writev` is in
    /// the receive ring before the guest runs again (it need not halt and take an interrupt
    /// for it). More chains, or a large one (a stream, a TSO segment): left to the worker, and
    /// the guest runs on at once.
    pub fn kick_tx_exit(&self, flow: u64) {
        let mut st = self.lock();
        st.counters.tx.kicks += 1;
        let inline = match st.tx_waiting() {
            0 => true,
            1 => st.tx_head_len().is_some_and(|n| n <= INLINE_MAX),
            _ => false,
        };
        if !inline {
            self.handoff.store(true, Ordering::Release);
            let _ = self.wake.write(1);
            return;
        }
        self.serve_tx(&mut st, flow, true);
    }

    /// The worker handled a batch of events: what to do about a transmit interrupt not yet
    /// sent (module `hold`). `Decide` is done here; the caller peeks, arms the timer or waits.
    pub fn after_events(&self) -> HoldStep {
        let mut st = self.lock();
        let Some(a) = st.active.as_mut() else {
            return HoldStep::Wait;
        };
        let step = a.hold.step();
        if step == HoldStep::Decide {
            st.decide_tx(false);
        }
        step
    }

    /// The hold's timer expired: the held transmit interrupt is sent if still wanted.
    pub fn hold_expired(&self) {
        let mut st = self.lock();
        if st.active.as_ref().is_some_and(|a| a.hold.held()) {
            st.decide_tx(true);
        }
    }

    /// The worker's side of a handoff from [`Pair::kick_tx_exit`].
    pub fn serve_handoff(&self) {
        if self.handoff.swap(false, Ordering::AcqRel) {
            self.kick_tx(0, 0);
        }
    }

    /// The driver kicked the receive queue (it added buffers): read the TAP again.
    pub fn kick_rx(&self, kicks: u64, flow: u64) {
        let mut st = self.lock();
        st.counters.rx.kicks += kicks;
        st.counters.rx.wakeups += u64::from(kicks > 0);
        st.flow = flow;
        self.run_rx(&mut st);
        self.sync_poll(&mut st);
        st.flow = 0;
    }

    /// The TAP fd is ready. Returns true when it was found gone just now.
    pub fn tap_ready(&self, events: EventSet, flow: u64) -> bool {
        let mut st = self.lock();
        st.counters.tap_wakeups += 1;
        st.flow = flow;
        let mut gone_now = false;
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) && st.attached && !st.gone {
            // An attached queue polls EPOLLERR only once the TAP is deleted.
            st.gone = true;
            gone_now = true;
            log::warn!("{}: the TAP is gone", self.backend.describe());
        }
        if events.contains(EventSet::OUT) {
            if let Some(a) = st.active.as_mut() {
                a.tx_blocked = false;
            }
            self.run_tx(&mut st, true);
        }
        if events.contains(EventSet::IN) {
            self.run_rx(&mut st);
        }
        self.sync_poll(&mut st);
        st.flow = 0;
        gone_now
    }

    /// A transmit pass; `worker`: on the pair's worker, which may hold its interrupt.
    fn run_tx(&self, st: &mut PairState, worker: bool) {
        if let Err(e) = st.process_tx(self.backend.as_ref(), worker && self.txhold_us > 0) {
            st.publish_after_error(true);
            st.counters.queue_errors += 1;
            log::debug!("{}: transmit queue: {e}", self.backend.describe());
        }
    }

    fn run_rx(&self, st: &mut PairState) {
        let interrupts = st.counters.rx.interrupts;
        let result = st.process_rx(self.backend.as_ref());
        if st.counters.rx.interrupts != interrupts {
            let tracing = st.timeline.is_some();
            if let Some(a) = st.active.as_mut() {
                if a.hold.rx_interrupt() {
                    st.counters.tx.irq_held += 1;
                    if tracing {
                        a.hold_trace.since = Some(Instant::now());
                    }
                }
            }
        }
        if let Err(e) = result {
            // A ring the driver broke (an available index past the queue size, say): stop
            // polling the TAP until the driver kicks again, rather than spin on it.
            if let Some(a) = st.active.as_mut() {
                a.rx_stalled = true;
            }
            st.publish_after_error(false);
            st.counters.queue_errors += 1;
            log::debug!("{}: receive queue: {e}", self.backend.describe());
        }
    }
}

impl PairState {
    /// Bytes of the next transmit chain (its descriptors' lengths), without taking it.
    fn tx_head_len(&mut self) -> Option<u64> {
        let ActivePair { txq, mem, .. } = self.active.as_mut()?;
        let mut chains = txq.iter(&*mem).ok()?;
        let chain = chains.next()?;
        let len = chain.clone().map(|d| u64::from(d.len())).sum();
        chains.go_to_previous_position();
        Some(len)
    }

    /// Chains the driver made available on the transmit queue that the device has not taken.
    fn tx_waiting(&self) -> u16 {
        let Some(a) = self.active.as_ref() else {
            return 0;
        };
        let avail = a.txq.avail_idx(&a.mem, Ordering::Acquire);
        avail.map_or(0, |v| (v - Wrapping(a.txq.next_avail())).0)
    }

    /// After a queue error: the used entries written so far become visible. Their chains were
    /// consumed (frames sent, or received into them, and counted); a ring the driver broke
    /// afterwards (found by the net_device fuzz target: an available index past the queue
    /// size) must not hide them until its next good kick.
    fn publish_after_error(&mut self, tx: bool) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let (used, queue) = if tx {
            (&mut a.tx_used, &mut a.txq)
        } else {
            (&mut a.rx_used, &mut a.rxq)
        };
        if used.publish(&a.mem).is_ok() {
            queue.set_next_used(used.next_used());
        }
    }
}

/// Interrupt counters of one queue.
pub(crate) struct IrqCounters<'a> {
    pub sent: &'a mut u64,
    pub suppressed: &'a mut u64,
    pub errors: &'a mut u64,
}

impl<'a> IrqCounters<'a> {
    /// The interrupt counters of a transmit queue.
    pub fn tx(c: &'a mut crate::net::counters::TxCounters) -> Self {
        IrqCounters {
            sent: &mut c.interrupts,
            suppressed: &mut c.interrupts_suppressed,
            errors: &mut c.interrupt_errors,
        }
    }

    /// The interrupt counters of a receive queue.
    pub fn rx(c: &'a mut crate::net::counters::RxCounters) -> Self {
        IrqCounters {
            sent: &mut c.interrupts,
            suppressed: &mut c.interrupts_suppressed,
            errors: &mut c.interrupt_errors,
        }
    }
}

/// Publishes the pending used entries (a span on the run's `trace`); how many.
pub(crate) fn publish(
    used: &mut UsedRing,
    mem: &GuestMemoryMmap,
    index: u16,
    trace: &Option<Tracer<'_>>,
) -> Result<u16, virtio_queue::Error> {
    let start = trace.as_ref().map(|_| Instant::now());
    let published = used.pending();
    used.publish(mem)?;
    if let Some(t) = trace {
        if published > 0 {
            t.span(
                start,
                format!("queue {index}: used ring +{published}"),
                "used ring",
                serde_json::json!({ "queue": index, "entries": published, "used_idx": used.next_used() }),
            );
        }
    }
    Ok(published)
}

/// Publishes the pending used entries and interrupts the driver if it wants it. `trace`:
/// the run's tracer (the publication is a span, the interrupt ends its flow).
pub(crate) fn signal(
    used: &mut UsedRing,
    mem: &GuestMemoryMmap,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    c: IrqCounters<'_>,
    trace: &Option<Tracer<'_>>,
) -> Result<(), virtio_queue::Error> {
    publish(used, mem, index, trace)?;
    if used.unsignalled() == 0 {
        return Ok(());
    }
    if used.needs_notification(mem)? {
        *c.sent += 1;
        let flow = trace.as_ref().map_or(0, |t| t.flow());
        if interrupt
            .trigger_in_flow(VirtioInterruptType::Queue(index), flow)
            .is_err()
        {
            *c.errors += 1;
        }
    } else {
        *c.suppressed += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::net::ctrl::tests::{queue, rings, NoIrq};
    use crate::net::{Net, NetConfig};
    use crate::virtio::VirtioDevice;

    /// A TAP queue with `left` 60-byte frames to read that, like a driver on another CPU,
    /// breaks its receive ring's available index while the first one is read.
    struct Breaker {
        evt: EventFd,
        mem: GuestMemoryMmap,
        left: AtomicUsize,
    }

    impl NetBackend for Breaker {
        fn fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
            if self.left.fetch_sub(1, Ordering::SeqCst) == 0 {
                return Ok(None);
            }
            let avail = rings(0).1;
            self.mem
                .write_obj(0x8000u16, GuestAddress(avail + 2))
                .unwrap();
            // The frame's bytes are left as they are: the length is what counts.
            Ok(Some(60.min(iovs.iter().map(|v| v.iov_len).sum())))
        }
        unsafe fn writev_raw(&self, _: &[libc::iovec]) -> io::Result<Option<usize>> {
            Ok(None)
        }
        fn set_offload(&self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn set_queue_enabled(&self, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "breaker".into()
        }
    }

    /// Found by the net_device fuzz target: a frame received into a chain and counted stayed
    /// unpublished (the used index not moved) when the ring broke later in the same run.
    #[test]
    fn frames_received_before_a_ring_error_are_published() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let backend = Breaker {
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            mem: mem.clone(),
            left: AtomicUsize::new(2),
        };
        let mut net = Net::with_backends(&NetConfig::new("brk0"), vec![Box::new(backend)]).unwrap();
        net.activate(mem.clone(), (0..3).map(queue).collect(), Arc::new(NoIrq))
            .unwrap();
        let (desc, avail, used) = rings(0);
        mem.write_obj(0x8_0000u64, GuestAddress(desc)).unwrap();
        mem.write_obj(2048u32, GuestAddress(desc + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap(); // WRITE
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
        net.process_queue(0).unwrap();
        let c = net.counters().pairs[0];
        assert_eq!((c.rx.frames, c.queue_errors), (1, 1), "{c:?}");
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 1);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(used + 8)).unwrap(), 60);
    }
}
