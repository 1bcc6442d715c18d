//! The thread-pool engine, for kernels without io_uring (chosen at start, with one line on
//! stderr) or `engine=pool`: a few helper threads per queue take operations from a shared
//! list and do them with blocking `preadv`/`pwritev`/`fdatasync`/`fallocate`, straight from and
//! into guest RAM as io_uring does; each result goes back through a list and an eventfd. The
//! helpers install the `BlockIo` seccomp filter first and end when the engine is dropped.
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::engine::{run_blocking, Completion, Engine, Op};
use crate::seccomp::{self, SeccompMode, ThreadKind};

/// Helper threads per queue: requests in flight at once.
pub const THREADS: usize = 4;

struct Shared {
    work: Mutex<Work>,
    ready: Condvar,
    done: Mutex<Vec<Completion>>,
    evt: EventFd,
}

#[derive(Default)]
struct Work {
    ops: VecDeque<(Op, u64)>,
    quit: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Pool {
    shared: Arc<Shared>,
    /// Pushed, not yet handed to the helpers.
    pending: Vec<(Op, u64)>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// `THREADS` helpers on image `fd` (which must stay open while the pool lives), named
    /// after `name`, each under the `BlockIo` filter of `mode`.
    pub fn new(fd: RawFd, name: &str, mode: SeccompMode) -> io::Result<Pool> {
        let shared = Arc::new(Shared {
            work: Mutex::new(Work::default()),
            ready: Condvar::new(),
            done: Mutex::new(Vec::new()),
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        });
        let mut pool = Pool {
            shared,
            pending: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..THREADS {
            let sh = pool.shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("{name}-io{i}"))
                .spawn(move || {
                    if let Err(e) = seccomp::install(ThreadKind::BlockIo, mode) {
                        log::error!("{e}");
                        return;
                    }
                    helper(&sh, fd);
                })?;
            pool.threads.push(t);
        }
        Ok(pool)
    }
}

fn helper(sh: &Shared, fd: RawFd) {
    loop {
        let (op, token) = {
            let mut w = lock(&sh.work);
            loop {
                if w.quit {
                    return;
                }
                if let Some(item) = w.ops.pop_front() {
                    break item;
                }
                w = sh.ready.wait(w).unwrap_or_else(|e| e.into_inner());
            }
        };
        // SAFETY: the pusher keeps the iovecs and their memory valid until the result is
        // reaped (Engine::push), which happens only after it is added below.
        let result = unsafe { run_blocking(fd, &op) };
        lock(&sh.done).push((token, result));
        let _ = sh.evt.write(1);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.work).quit = true;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Engine for Pool {
    fn name(&self) -> &'static str {
        "thread pool"
    }

    unsafe fn push(&mut self, op: Op, token: u64) -> bool {
        self.pending.push((op, token));
        true
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len();
        lock(&self.shared.work).ops.extend(self.pending.drain(..));
        if n == 1 {
            self.shared.ready.notify_one();
        } else {
            self.shared.ready.notify_all();
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.shared.evt.read();
        out.append(&mut lock(&self.shared.done));
    }

    fn completion_fd(&self) -> RawFd {
        self.shared.evt.as_raw_fd()
    }
}
