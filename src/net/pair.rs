//! One queue pair: its TAP queue, the epoll set its worker waits on, and the state that the
//! worker (or, with notify=exit, the vCPU thread) works on under one lock.
//!
//! The TAP fd is in the epoll set only while the pair is active and its TAP queue attached,
//! for `EPOLLIN` while the receive queue has buffers (and is not stalled waiting for the
//! driver), and for `EPOLLOUT` while a transmit waits for room after `EAGAIN`.
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::NetBackend;
use super::chain::{IoVecs, RamMap, Seg};
use super::counters::PairCounters;
use super::rx::RxBuffers;
use super::used::UsedRing;
use crate::virtio::{VirtioInterrupt, VirtioInterruptType};

/// epoll tokens besides the queue kicks (whose token is the queue index).
pub(crate) const TOKEN_STOP: u64 = u64::MAX;
pub(crate) const TOKEN_WAKE: u64 = u64::MAX - 1;
pub(crate) const TOKEN_TAP: u64 = u64::MAX - 2;

/// Extra room after the buffers offered for a frame: bytes landing there mean the frame was
/// longer than the buffers (the kernel truncates silently otherwise).
pub(crate) const OVERFLOW_LEN: usize = 64;

/// Used entries are published (one store of the used index) every this many frames, and at
/// the end of each run: a polling driver sees them soon, and the index's cache line does not
/// move between CPUs for every frame.
pub(crate) const PUBLISH_BATCH: u16 = 8;
/// The driver is considered for an interrupt every this many published entries, and at the
/// end of each run.
pub(crate) const BATCH: u16 = 16;

pub(crate) struct Pair {
    pub index: usize,
    pub backend: Box<dyn NetBackend>,
    pub epoll: Epoll,
    /// Wakes the worker (to end it).
    pub wake: EventFd,
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
}

impl Pair {
    pub fn new(index: usize, backend: Box<dyn NetBackend>) -> std::io::Result<Pair> {
        Ok(Pair {
            index,
            backend,
            epoll: Epoll::new()?,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
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
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, PairState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the TAP fd's epoll registration match what the state needs.
    pub fn sync_poll(&self, st: &mut PairState) {
        let want = match &st.active {
            Some(a) if st.attached && !st.gone => {
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

    /// The driver kicked the transmit queue.
    pub fn kick_tx(&self, kicks: u64) {
        let mut st = self.lock();
        st.counters.tx.kicks += kicks;
        self.run_tx(&mut st);
        self.sync_poll(&mut st);
    }

    /// The driver kicked the receive queue (it added buffers): read the TAP again.
    pub fn kick_rx(&self, kicks: u64) {
        let mut st = self.lock();
        st.counters.rx.kicks += kicks;
        self.run_rx(&mut st);
        self.sync_poll(&mut st);
    }

    /// The TAP fd is ready. Returns true when it was found gone just now.
    pub fn tap_ready(&self, events: EventSet) -> bool {
        let mut st = self.lock();
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
            self.run_tx(&mut st);
        }
        if events.contains(EventSet::IN) {
            self.run_rx(&mut st);
        }
        self.sync_poll(&mut st);
        gone_now
    }

    fn run_tx(&self, st: &mut PairState) {
        if let Err(e) = st.process_tx(self.backend.as_ref()) {
            st.counters.queue_errors += 1;
            log::debug!("{}: transmit queue: {e}", self.backend.describe());
        }
    }

    fn run_rx(&self, st: &mut PairState) {
        if let Err(e) = st.process_rx(self.backend.as_ref()) {
            // A ring the driver broke (an available index past the queue size, say): stop
            // polling the TAP until the driver kicks again, rather than spin on it.
            if let Some(a) = st.active.as_mut() {
                a.rx_stalled = true;
            }
            st.counters.queue_errors += 1;
            log::debug!("{}: receive queue: {e}", self.backend.describe());
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

/// Publishes the pending used entries and interrupts the driver if it wants it.
pub(crate) fn signal(
    used: &mut UsedRing,
    mem: &GuestMemoryMmap,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    c: IrqCounters<'_>,
) -> Result<(), virtio_queue::Error> {
    used.publish(mem)?;
    if used.unsignalled() == 0 {
        return Ok(());
    }
    if used.needs_notification(mem)? {
        *c.sent += 1;
        if interrupt
            .trigger(VirtioInterruptType::Queue(index))
            .is_err()
        {
            *c.errors += 1;
        }
    } else {
        *c.suppressed += 1;
    }
    Ok(())
}
