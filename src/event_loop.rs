//! The device event loop: the "bottom half" of the trap path.
//!
//! One thread, one epoll set. Device work that must not run on a vCPU thread runs here. The
//! wakeup path of a virtio queue kick with `notify=ioeventfd`, step by step:
//!
//! ```text
//! guest vCPU: write to the queue's notify address
//!   → KVM matches the address against its ioeventfds (kvm_io_bus_write): no exit to us,
//!     the vCPU goes straight back into the guest
//!   → the queue's eventfd counter goes up
//! this thread: epoll_wait returns with that eventfd's token          ← [`EventLoop::run`]
//!   → read(eventfd): takes the counter (the kicks coalesced since the last read)
//!   → the source's handler                                            ← `Handler`
//!   → VirtioPciDevice::queue_notified(q) → VirtioDevice::process_queue(q)
//!   → used ring → MSI-X vector → irqfd write / KVM_SIGNAL_MSI → guest interrupt
//! ```
//!
//! The loop stops when the VM's stop eventfd becomes readable. That eventfd is polled, never
//! read (others wait on it too), so it stays readable and every waiter sees it.
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::kvm::control::VmControl;

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("epoll: {0}")]
    Epoll(io::Error),
    #[error("cannot start the event loop thread: {0}")]
    Spawn(io::Error),
}

/// Runs when an eventfd source fired, with the counter read from it (≥ 1).
pub type Handler = Box<dyn FnMut(u64) + Send>;
/// Runs when a plain fd source is ready, with the ready events (the handler reads the fd).
pub type FdHandler = Box<dyn FnMut(EventSet) + Send>;

/// Something whose fd becomes readable, and stays so, when the loop must stop.
pub trait StopSignal: Send + Sync {
    fn stop_fd(&self) -> RawFd;
}

impl StopSignal for VmControl {
    fn stop_fd(&self) -> RawFd {
        self.stop_evt().as_raw_fd()
    }
}

impl StopSignal for EventFd {
    fn stop_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

enum Kind {
    /// An eventfd: the loop reads (and so clears) it, then calls the handler.
    Event { evt: EventFd, handler: Handler },
    /// Any other fd (a TAP device): the handler is called with the ready events.
    Fd {
        /// Kept open while it is watched.
        _fd: Box<dyn AsRawFd + Send>,
        handler: FdHandler,
    },
}

struct Source {
    name: String,
    kind: Kind,
    /// Dispatches of this source; shared so the API can read it while the loop runs.
    wakeups: Arc<AtomicU64>,
}

/// A source's name and its live dispatch counter.
pub type SourceCounter = (String, Arc<AtomicU64>);

/// Wakeups per source, returned when the loop ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoopStats {
    pub wakeups: Vec<(String, u64)>,
}

const STOP_TOKEN: u64 = u64::MAX;

/// Sources are added before the loop starts; the loop owns them while it runs.
pub struct EventLoop {
    epoll: Epoll,
    sources: Vec<Source>,
}

impl EventLoop {
    pub fn new() -> Result<Self, EventLoopError> {
        Ok(EventLoop {
            epoll: Epoll::new().map_err(EventLoopError::Epoll)?,
            sources: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    fn watch(&mut self, fd: RawFd, events: EventSet) -> Result<(), EventLoopError> {
        let token = self.sources.len() as u64;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
            .map_err(EventLoopError::Epoll)
    }

    /// Watches eventfd `evt` (level-triggered); `handler` runs after each read of it.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        evt: EventFd,
        handler: Handler,
    ) -> Result<(), EventLoopError> {
        self.watch(evt.as_raw_fd(), EventSet::IN)?;
        self.sources.push(Source {
            name: name.into(),
            kind: Kind::Event { evt, handler },
            wakeups: Arc::default(),
        });
        Ok(())
    }

    /// Watches `fd` for `events` (level-triggered); the handler must consume what is ready.
    pub fn add_fd(
        &mut self,
        name: impl Into<String>,
        fd: Box<dyn AsRawFd + Send>,
        events: EventSet,
        handler: FdHandler,
    ) -> Result<(), EventLoopError> {
        self.watch(fd.as_raw_fd(), events)?;
        self.sources.push(Source {
            name: name.into(),
            kind: Kind::Fd { _fd: fd, handler },
            wakeups: Arc::default(),
        });
        Ok(())
    }

    /// Each source's name and live dispatch counter (for `/stats`).
    pub fn counters(&self) -> Vec<SourceCounter> {
        self.sources
            .iter()
            .map(|s| (s.name.clone(), s.wakeups.clone()))
            .collect()
    }

    /// Starts the loop on its own thread; it ends when `stop` becomes readable.
    pub fn start(self, stop: Arc<dyn StopSignal>) -> Result<EventLoopHandle, EventLoopError> {
        self.start_with(stop, Box::new(|| {}))
    }

    /// As [`EventLoop::start`], running `init` first on the new thread (before it touches any
    /// guest-driven work): the VMM installs the thread's seccomp filter there.
    pub fn start_with(
        self,
        stop: Arc<dyn StopSignal>,
        init: Box<dyn FnOnce() + Send>,
    ) -> Result<EventLoopHandle, EventLoopError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                stop.stop_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(EventLoopError::Epoll)?;
        let thread = std::thread::Builder::new()
            .name("event-loop".into())
            .spawn(move || {
                init();
                let mut lp = self;
                let stats = lp.run();
                // The sources (and `stop`, whose fd was watched) go back to the joining thread
                // and are closed there: this thread's seccomp filter need not allow what
                // closing entails (debug builds check each fd with fcntl before closing it).
                (stats, lp, stop)
            })
            .map_err(EventLoopError::Spawn)?;
        Ok(EventLoopHandle {
            thread: Some(thread),
        })
    }

    /// The loop. Returns when the stop fd is readable (or epoll fails).
    fn run(&mut self) -> LoopStats {
        let mut events = vec![EpollEvent::default(); 32];
        'outer: loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("event loop: epoll_wait failed: {e}; stopping");
                    break;
                }
            };
            if events[..n].iter().any(|e| e.data() == STOP_TOKEN) {
                break 'outer;
            }
            for ev in &events[..n] {
                let Some(src) = self.sources.get_mut(ev.data() as usize) else {
                    continue;
                };
                match &mut src.kind {
                    Kind::Event { evt, handler } => match evt.read() {
                        // The bottom half proper: the handler runs the device.
                        Ok(count) => {
                            src.wakeups.fetch_add(1, Ordering::Relaxed);
                            handler(count);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => log::warn!("event loop: reading {}: {e}", src.name),
                    },
                    Kind::Fd { handler, .. } => {
                        src.wakeups.fetch_add(1, Ordering::Relaxed);
                        handler(ev.event_set());
                    }
                }
            }
        }
        LoopStats {
            wakeups: self
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.wakeups.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// The running loop's thread.
/// What the loop's thread hands back: its statistics, and the sources and stop signal to be
/// closed by the joining thread.
type LoopResult = (LoopStats, EventLoop, Arc<dyn StopSignal>);

pub struct EventLoopHandle {
    thread: Option<JoinHandle<LoopResult>>,
}

impl EventLoopHandle {
    /// Waits for the loop to end (after its stop fd became readable); its sources are closed
    /// on the calling thread.
    pub fn join(mut self) -> Option<LoopStats> {
        let (stats, sources, stop) = self.thread.take()?.join().ok()?;
        drop(sources);
        drop(stop);
        Some(stats)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn handlers_run_on_the_loop_thread_and_stop_joins() {
        let mut lp = EventLoop::new().unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        lp.add(
            "q0",
            evt.try_clone().unwrap(),
            Box::new(move |count| {
                let name = std::thread::current().name().map(String::from);
                tx.send((count, name)).unwrap();
            }),
        )
        .unwrap();
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let h = lp.start(stop.clone()).unwrap();
        evt.write(3).unwrap();
        let (count, name) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(count, 3, "coalesced kicks arrive as one counter");
        assert_eq!(name.as_deref(), Some("event-loop"));
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().0, 1);
        stop.write(1).unwrap();
        let stats = h.join().unwrap();
        assert_eq!(stats.wakeups, vec![("q0".to_string(), 2)]);
        // The stop eventfd was polled, not read: still readable for everyone else.
        assert_eq!(stop.read().unwrap(), 1);
    }

    #[test]
    fn plain_fds_and_a_stop_already_requested() {
        let mut lp = EventLoop::new().unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let reader = evt.try_clone().unwrap();
        lp.add_fd(
            "fd",
            Box::new(evt.try_clone().unwrap()),
            EventSet::IN,
            Box::new(move |ev| {
                assert!(ev.contains(EventSet::IN));
                let _ = reader.read();
                s.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        evt.write(1).unwrap();
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let h = lp.start(stop.clone()).unwrap();
        for _ in 0..500 {
            if seen.load(Ordering::SeqCst) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        stop.write(1).unwrap();
        assert!(h.join().is_some());
    }
}
