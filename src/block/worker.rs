//! One worker thread per request queue: the "bottom half" of virtio-blk.
//!
//! Each waits in `epoll_wait` on its queue's set: the queue's ioeventfd (notify=ioeventfd),
//! its engine's completion eventfd, the VM's stop eventfd (polled, never read) and its own
//! wake eventfd (to end it). A kick pops the queue's requests and submits them to the engine
//! on this thread (with notify=exit the vCPU thread does that itself, see
//! `Blk::process_queue`); a completion writes the used ring and interrupts the driver from
//! this thread. The threads are made when the VM starts (as
//! virtio-net's) and end, after the requests in flight, when the VM stops.
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::device::{BlkError, Shared};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::trace::timeline::Flow;

/// epoll tokens.
pub(crate) const TOKEN_KICK: u64 = 1;
pub(crate) const TOKEN_DONE: u64 = 2;
pub(crate) const TOKEN_WAKE: u64 = 3;
pub(crate) const TOKEN_STOP: u64 = 4;

/// How long a stopping worker waits for its requests in flight.
const STOP_DRAIN: Duration = Duration::from_secs(10);

/// A worker thread; joining it gives back its copy of the stop eventfd, to close.
pub(crate) type Worker = JoinHandle<EventFd>;

/// Starts one worker per queue; returns once each has its seccomp filter (or failed to).
pub(crate) fn start(
    shared: &Arc<Shared>,
    stop: &EventFd,
    mode: SeccompMode,
) -> Result<Vec<Worker>, BlkError> {
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    let mut failure = None;
    for q in 0..shared.queues.len() {
        match spawn_one(shared, q, stop, mode, tx.clone()) {
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
            Ok(Err(e)) => failure = failure.or(Some(BlkError::Seccomp(e))),
            Err(_) => failure = failure.or(Some(BlkError::Seccomp("a worker died".into()))),
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
    q: usize,
    stop: &EventFd,
    mode: SeccompMode,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<Worker, BlkError> {
    let queue = &shared.queues[q];
    let stop = stop.try_clone().map_err(BlkError::Io)?;
    let add = |fd, token| {
        queue
            .epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(BlkError::Io)
    };
    add(stop.as_raw_fd(), TOKEN_STOP)?;
    let done_fd = queue.lock().io.engine.as_ref().map(|e| e.completion_fd());
    if let Some(fd) = done_fd {
        add(fd, TOKEN_DONE)?;
    }
    let sh = shared.clone();
    std::thread::Builder::new()
        .name(format!("blk{q}"))
        .spawn(move || {
            let filter = seccomp::install(ThreadKind::BlockWorker, mode).map_err(|e| e.to_string());
            let ok = filter.is_ok();
            let _ = ready.send(filter);
            if ok {
                run(&sh, q);
            }
            let queue = &sh.queues[q];
            queue.drain(STOP_DRAIN);
            for fd in [Some(stop.as_raw_fd()), done_fd].into_iter().flatten() {
                let _ = queue
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            stop
        })
        .map_err(BlkError::Spawn)
}

/// Ends the workers and joins them.
pub(crate) fn stop_all(shared: &Shared, threads: Vec<Worker>) {
    shared.quit.store(true, Ordering::SeqCst);
    for q in &shared.queues {
        let _ = q.wake.write(1);
    }
    for t in threads {
        let _ = t.join();
    }
    shared.quit.store(false, Ordering::SeqCst);
}

fn run(shared: &Shared, q: usize) {
    let queue = &shared.queues[q];
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let n = match queue.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{}: epoll_wait: {e}; worker {q} stops", shared.name);
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_DONE => queue.completed(),
                TOKEN_WAKE => {
                    let kicks = queue.wake.read().unwrap_or(0);
                    if shared.quit.load(Ordering::SeqCst) {
                        return;
                    }
                    if kicks > 0 {
                        kick(shared, q, kicks, "mmio exit");
                    }
                }
                _ => {
                    let Some(evt) = shared.kick_evt(q) else {
                        continue;
                    };
                    match evt.read() {
                        Ok(kicks) => kick(shared, q, kicks, "ioeventfd wakeup"),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => log::warn!("{}: queue {q} kick: {e}", shared.name),
                    }
                }
            }
        }
    }
}

/// Serves a kick on this thread (a worker's, or with notify=exit a vCPU's); traced, it starts
/// a flow that the submission, the completion and the interrupt continue.
pub(crate) fn kick(shared: &Shared, q: usize, kicks: u64, how: &str) {
    let Some(tl) = shared.timeline() else {
        shared.kick(q, kicks, 0);
        return;
    };
    let t0 = Instant::now();
    let flow = tl.new_flow();
    tl.flow(flow, how, Flow::Start, t0);
    shared.kick(q, kicks, flow);
    tl.span(
        &format!("{}: queue {q} {how}", shared.name),
        "queue",
        t0,
        Instant::now(),
        serde_json::json!({"queue": q, "kicks": kicks, "flow": flow}),
    );
}
