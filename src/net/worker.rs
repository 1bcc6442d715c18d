//! One worker thread per queue pair: the "bottom half" of virtio-net.
//!
//! Each waits in `epoll_wait` on its pair's set: the pair's RX and TX kick eventfds (the
//! queues' ioeventfds, with notify=ioeventfd; the control queue's goes to pair 0's worker, or
//! to whichever worker's pair the negotiated layout puts it in), the pair's TAP fd (only while
//! there is work for it, see `Pair::sync_poll`), the VM's stop eventfd (polled, never read),
//! its own wake eventfd and its `txhold` timer. A kick runs the queue's handler on this
//! thread; no exit, no event-loop hop. After each batch of events the pair says what to do
//! about a transmit interrupt not sent yet (module `hold`): look once more without blocking,
//! start the hold's timer, or wait.
//!
//! The threads are made when the VM starts (`NetHandle::start`, before any seccomp filter:
//! a vCPU thread, which is where DRIVER_OK and resets happen, may not create threads), live
//! across device resets (a reset takes the queues away from them under each pair's lock,
//! so they hold nothing of the old driver once it returns), and end, joined, when the VM
//! stops or the device is dropped. Each installs the Worker seccomp filter first.
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::device::{NetError, NetHandle, Shared};
use super::hold::HoldStep;
use super::pair::{TOKEN_HOLD, TOKEN_STOP, TOKEN_TAP, TOKEN_WAKE};
use super::trace::Wakeup;
use crate::seccomp::{self, SeccompMode, ThreadKind};

/// Starts one worker per pair; returns once each has its seccomp filter (or failed to).
pub(crate) fn start(
    shared: &Arc<Shared>,
    stop: &EventFd,
    mode: SeccompMode,
) -> Result<Vec<Worker>, NetError> {
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    let mut failure = None;
    for p in 0..shared.pairs.len() {
        let result = spawn_one(shared, p, stop, mode, tx.clone());
        match result {
            Ok(t) => threads.push(t),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(NetError::Seccomp(e))),
            Err(_) => failure = failure.or(Some(NetError::Seccomp("a worker died".into()))),
        }
    }
    match failure {
        None => Ok(threads),
        Some(e) => {
            stop_all(shared, threads);
            Err(e)
        }
    }
}

fn spawn_one(
    shared: &Arc<Shared>,
    p: usize,
    stop: &EventFd,
    mode: SeccompMode,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<Worker, NetError> {
    let pair = &shared.pairs[p];
    // Our own copy of the stop eventfd: valid for as long as the thread watches it.
    let stop = stop.try_clone().map_err(NetError::EventFd)?;
    // Made here: the worker's seccomp filter allows setting a timer, not creating one.
    let mut timer = TimerFd::new().map_err(|e| NetError::Timer(e.into()))?;
    for (fd, token) in [
        (stop.as_raw_fd(), TOKEN_STOP),
        (timer.as_raw_fd(), TOKEN_HOLD),
    ] {
        let ev = EpollEvent::new(EventSet::IN, token);
        pair.epoll
            .ctl(ControlOperation::Add, fd, ev)
            .map_err(NetError::Epoll)?;
    }
    let sh = shared.clone();
    std::thread::Builder::new()
        .name(format!("net{p}-{}", shared.name))
        .spawn(move || {
            let filter = seccomp::install(ThreadKind::Worker, mode).map_err(|e| e.to_string());
            let ok = filter.is_ok();
            let _ = ready.send(filter);
            if ok {
                run(&sh, p, &mut timer);
            }
            for fd in [stop.as_raw_fd(), timer.as_raw_fd()] {
                let _ = sh.pairs[p]
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            // Closed by the joining thread: closing may take syscalls the filter forbids
            // (debug builds check the fd with fcntl).
            (stop, timer)
        })
        .map_err(NetError::Spawn)
}

/// A worker thread; joining it gives back its copy of the stop eventfd and its timer, to close.
pub(crate) type Worker = JoinHandle<(EventFd, TimerFd)>;

/// Ends the workers and joins them.
pub(crate) fn stop_all(shared: &Shared, threads: Vec<Worker>) {
    shared.quit.store(true, Ordering::SeqCst);
    for pair in &shared.pairs {
        let _ = pair.wake.write(1);
    }
    for t in threads {
        let _ = t.join();
    }
    shared.quit.store(false, Ordering::SeqCst);
}

fn run(shared: &Shared, p: usize, timer: &mut TimerFd) {
    let pair = &shared.pairs[p];
    let mut events = vec![EpollEvent::default(); 16];
    let mut timeout = -1;
    loop {
        let n = match pair.epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{}: epoll_wait: {e}; worker {p} stops", shared.name);
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_HOLD => {
                    let _ = timer.wait();
                    pair.hold_expired();
                }
                TOKEN_WAKE => {
                    let _ = pair.wake.read();
                    if shared.quit.load(Ordering::SeqCst) {
                        return;
                    }
                    pair.serve_handoff();
                }
                TOKEN_TAP => {
                    let w = Wakeup::new(shared.timeline());
                    let flow = w.as_ref().map_or(0, |w| w.flow);
                    shared.tap_ready(p, ev.event_set(), flow);
                    if let Some(w) = w {
                        let events = ev.events;
                        let name = format!("{}: tap queue {p} ready", shared.name);
                        let args = serde_json::json!({"pair": p, "events": events, "flow": flow});
                        w.end(&name, "tap ready", args);
                    }
                }
                q => {
                    let q = q as usize;
                    let Some(evt) = shared.kick_evt(q) else {
                        continue;
                    };
                    let w = Wakeup::new(shared.timeline());
                    match evt.read() {
                        Ok(kicks) => serve_kick(shared, q, kicks, w),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => log::warn!("{}: queue {q} kick: {e}", shared.name),
                    }
                }
            }
        }
        timeout = match pair.after_events() {
            HoldStep::Peek => 0,
            HoldStep::ArmTimer => {
                let hold = std::time::Duration::from_micros(u64::from(pair.txhold_us));
                if let Err(e) = timer.reset(hold, None) {
                    // Without its timer a hold could last until the next transmit pass.
                    log::warn!("{}: txhold timer: {e}; deciding now", shared.name);
                    pair.hold_expired();
                }
                -1
            }
            HoldStep::Wait | HoldStep::Decide => -1,
        };
    }
}

/// `kicks` ioeventfd kicks of queue `q`, served in the flow of wakeup `w` when traced.
fn serve_kick(shared: &Shared, q: usize, kicks: u64, w: Option<Wakeup<'_>>) {
    let flow = w.as_ref().map_or(0, |w| w.flow);
    shared.kick(q, kicks, flow, false);
    if let Some(w) = w {
        let name = format!("{}: queue {q} ioeventfd wakeup", shared.name);
        let args = serde_json::json!({"queue": q, "kicks": kicks, "flow": flow});
        w.end(&name, "ioeventfd wakeup", args);
    }
}

/// A worker's steps, run on the caller's thread: for drivers of the device without worker
/// threads (tests, the fuzz target).
impl NetHandle {
    /// What a worker does when pair `p`'s backend fd polls `events` (readable, writable,
    /// error), run on this thread: for drivers of the device without worker threads (the
    /// fuzz target). A pair that does not exist is ignored.
    pub fn backend_ready(&self, p: usize, events: EventSet) {
        if p < self.shared.pairs.len() {
            self.shared.tap_ready(p, events, 0);
        }
    }

    /// What a worker does when queue `q`'s ioeventfd fires (`process_queue` is notify=exit).
    pub fn ioeventfd_kick(&self, q: usize) {
        serve_kick(&self.shared, q, 1, Wakeup::new(self.shared.timeline()));
    }

    /// What pair `p`'s worker does after each batch of events: decide a transmit interrupt
    /// that it would not hold (module `hold`). True when it would first look once more
    /// without blocking (then it is asked again).
    pub fn worker_idle(&self, p: usize) -> bool {
        self.shared
            .pairs
            .get(p)
            .is_some_and(|pair| pair.after_events() == HoldStep::Peek)
    }

    /// What pair `p`'s worker does when its `txhold` timer expires.
    pub fn hold_expired(&self, p: usize) {
        if let Some(pair) = self.shared.pairs.get(p) {
            pair.hold_expired();
        }
    }

    /// Whether pair `p` owes the driver a transmit interrupt decision (held or about to be
    /// decided; none once the hold expired).
    pub fn tx_interrupt_pending(&self, p: usize) -> bool {
        self.shared.pairs.get(p).is_some_and(|pair| {
            let st = pair.lock();
            st.active
                .as_ref()
                .is_some_and(|a| a.hold.held() || a.hold.uncovered())
        })
    }

    /// What the workers do when a notify=exit kick leaves them a transmit stream.
    pub fn wake_ready(&self) {
        for pair in &self.shared.pairs {
            pair.serve_handoff();
        }
    }
}
