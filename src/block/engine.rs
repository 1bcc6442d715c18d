//! What carries a request to the image: an [`Engine`] takes operations (read or write with
//! iovecs pointing into guest RAM, flush, punch hole, zero range), starts them, and hands back
//! their results, announcing them on an eventfd the queue's worker waits on. Many operations
//! are in flight at once; they complete in any order, each with the token it was pushed with.
//!
//! Three engines: io_uring (`uring`), a thread pool doing blocking `preadv`/`pwritev`/
//! `fdatasync`/`fallocate` (`pool`, chosen at start when the kernel refuses io_uring, or with
//! `engine=pool`), and [`MemEngine`], an image in memory for tests and fuzzing.
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    /// fdatasync.
    Flush,
    /// fallocate(PUNCH_HOLE | KEEP_SIZE).
    PunchHole,
    /// fallocate(ZERO_RANGE | KEEP_SIZE).
    ZeroRange,
}

/// One operation. For reads and writes, `iov`/`iovcnt` is an iovec array the caller keeps
/// alive, with the memory it points to, until the operation's result has been reaped.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub kind: OpKind,
    /// Byte offset in the image.
    pub offset: u64,
    /// Bytes (the iovecs' total for reads and writes).
    pub len: u64,
    pub iov: *const libc::iovec,
    pub iovcnt: usize,
}

// SAFETY: an Op is addresses and sizes; whoever pushes it guarantees (see `Engine::push`) that
// the iovecs and the memory they describe stay valid until the result is reaped, whichever
// thread carries the operation out.
unsafe impl Send for Op {}

impl Op {
    pub fn control(kind: OpKind, offset: u64, len: u64) -> Op {
        Op {
            kind,
            offset,
            len,
            iov: std::ptr::null(),
            iovcnt: 0,
        }
    }
}

/// A finished operation: its token and the result (bytes done, or a negative errno).
pub type Completion = (u64, i64);

pub trait Engine: Send {
    /// "io_uring", "thread pool", "memory".
    fn name(&self) -> &'static str;

    /// Queues `op`; it starts at the next [`Engine::submit`] (or sooner). False when the
    /// engine has no room (the caller retries after reaping).
    ///
    /// # Safety
    /// For reads and writes, `op.iov` must point to `op.iovcnt` iovecs describing memory that
    /// may be written (reads) or read (writes); the array and that memory must stay valid and
    /// untouched by the caller until this operation's completion has been returned by
    /// [`Engine::reap`].
    unsafe fn push(&mut self, op: Op, token: u64) -> bool;

    /// Starts what was pushed.
    fn submit(&mut self) -> io::Result<()>;

    /// Appends the finished operations to `out` (clearing the completion eventfd first).
    fn reap(&mut self, out: &mut Vec<Completion>);

    /// An eventfd that becomes readable when completions wait.
    fn completion_fd(&self) -> RawFd;
}

/// Does `op` with blocking syscalls on `fd` (the thread pool's workers; nothing else).
///
/// # Safety
/// As for [`Engine::push`]: the iovecs are valid for the whole call.
pub unsafe fn run_blocking(fd: RawFd, op: &Op) -> i64 {
    let ret = |r: libc::c_long| -> i64 {
        if r < 0 {
            -i64::from(
                io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            )
        } else {
            r
        }
    };
    let Ok(offset) = libc::off_t::try_from(op.offset) else {
        return -i64::from(libc::EINVAL);
    };
    let len = libc::off_t::try_from(op.len).unwrap_or(libc::off_t::MAX);
    let fallocate = |mode: libc::c_int| {
        // SAFETY: fallocate on an fd this process owns; no memory is passed.
        ret(unsafe { libc::fallocate(fd, mode, offset, len) }.into())
    };
    let iovcnt = op.iovcnt.min(libc::c_int::MAX as usize) as libc::c_int;
    match op.kind {
        // SAFETY: the caller guarantees the iovecs (see above).
        OpKind::Read => ret(unsafe { libc::preadv(fd, op.iov, iovcnt, offset) } as libc::c_long),
        // SAFETY: as above; the kernel only reads the memory.
        OpKind::Write => ret(unsafe { libc::pwritev(fd, op.iov, iovcnt, offset) } as libc::c_long),
        // SAFETY: fdatasync on an fd this process owns.
        OpKind::Flush => ret(unsafe { libc::fdatasync(fd) }.into()),
        OpKind::PunchHole => fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE),
        OpKind::ZeroRange => fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE),
    }
}

/// An image held in memory (tests, fuzzing): every operation completes at push.
pub struct MemEngine {
    image: Arc<Mutex<Vec<u8>>>,
    done: Vec<Completion>,
    evt: EventFd,
    /// Operations still to fail with this errno (0: none), for tests of error paths.
    fail_next: i32,
    /// While set, completions are held back (requests stay in flight), for tests of resets.
    hold: Arc<AtomicBool>,
}

impl MemEngine {
    pub fn new(image: Arc<Mutex<Vec<u8>>>) -> io::Result<MemEngine> {
        Ok(MemEngine {
            image,
            done: Vec::new(),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            fail_next: 0,
            hold: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A switch that holds completions back while it is on.
    pub fn hold_switch(&self) -> Arc<AtomicBool> {
        self.hold.clone()
    }

    /// The next operation fails with `errno`.
    pub fn fail_next(&mut self, errno: i32) {
        self.fail_next = errno;
    }

    /// # Safety
    /// As for [`Engine::push`].
    unsafe fn apply(&mut self, op: &Op) -> i64 {
        let mut img = self.image.lock().unwrap_or_else(|e| e.into_inner());
        let (Ok(start), Ok(len)) = (usize::try_from(op.offset), usize::try_from(op.len)) else {
            return -i64::from(libc::EINVAL);
        };
        let Some(end) = start.checked_add(len).filter(|&e| e <= img.len()) else {
            return -i64::from(libc::EINVAL);
        };
        match op.kind {
            OpKind::Read | OpKind::Write => {
                let mut at = start;
                for i in 0..op.iovcnt {
                    // SAFETY: the caller guarantees `iovcnt` valid iovecs.
                    let v = unsafe { *op.iov.add(i) };
                    let n = v.iov_len.min(end - at);
                    let p = v.iov_base as *mut u8;
                    if op.kind == OpKind::Read {
                        // SAFETY: `p` is writable for `iov_len` bytes (the caller's promise);
                        // the image range was checked above.
                        unsafe { std::ptr::copy_nonoverlapping(img[at..].as_ptr(), p, n) };
                    } else {
                        // SAFETY: `p` is readable for `iov_len` bytes.
                        unsafe { std::ptr::copy_nonoverlapping(p, img[at..].as_mut_ptr(), n) };
                    }
                    at += n;
                }
                (at - start) as i64
            }
            OpKind::Flush => 0,
            OpKind::PunchHole | OpKind::ZeroRange => {
                img[start..end].fill(0);
                0
            }
        }
    }
}

impl Engine for MemEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    unsafe fn push(&mut self, op: Op, token: u64) -> bool {
        let result = if self.fail_next != 0 {
            -i64::from(std::mem::take(&mut self.fail_next))
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { self.apply(&op) }
        };
        self.done.push((token, result));
        let _ = self.evt.write(1);
        true
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.evt.read();
        if !self.hold.load(Ordering::SeqCst) {
            out.append(&mut self.done);
        }
    }

    fn completion_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}
