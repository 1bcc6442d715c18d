//! The io_uring engine: one ring per queue, made at start (before the worker's seccomp filter,
//! which then allows only `io_uring_enter` of the io_uring calls), with an eventfd registered
//! for completions. A kick's requests become submission entries (`readv`/`writev` straight from
//! and into guest RAM, `fsync` with DATASYNC, `fallocate`) and go to the kernel with one
//! `io_uring_enter`; completions are read from the mapped completion ring without a syscall.
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use super::engine::{Completion, Engine, Op, OpKind};

/// Set (to anything) to make io_uring look unavailable (tests of the fallback).
pub const DISABLE_ENV: &str = "TRAPVISOR_NO_IO_URING";

pub struct Uring {
    ring: IoUring,
    fd: RawFd,
    evt: EventFd,
    /// Entries pushed and not yet submitted.
    unsubmitted: u32,
}

impl Uring {
    /// A ring of `entries` submission entries (twice as many completions) for image `fd`.
    pub fn new(fd: RawFd, entries: u32) -> io::Result<Uring> {
        if std::env::var_os(DISABLE_ENV).is_some() {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(2))
            .build(entries)?;
        let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        ring.submitter().register_eventfd(evt.as_raw_fd())?;
        Ok(Uring {
            ring,
            fd,
            evt,
            unsubmitted: 0,
        })
    }
}

impl Engine for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    unsafe fn push(&mut self, op: Op, token: u64) -> bool {
        let fd = types::Fd(self.fd);
        let iovcnt = u32::try_from(op.iovcnt).unwrap_or(u32::MAX);
        let entry = match op.kind {
            OpKind::Read => opcode::Readv::new(fd, op.iov, iovcnt)
                .offset(op.offset)
                .build(),
            OpKind::Write => opcode::Writev::new(fd, op.iov, iovcnt)
                .offset(op.offset)
                .build(),
            OpKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            OpKind::PunchHole => opcode::Fallocate::new(fd, op.len)
                .offset(op.offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            OpKind::ZeroRange => opcode::Fallocate::new(fd, op.len)
                .offset(op.offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
        }
        .user_data(token);
        // SAFETY: the entry's buffers (the iovecs and what they point to) stay valid until its
        // completion is reaped: the caller's promise, passed on.
        let pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if pushed {
            self.unsubmitted += 1;
        } else if self.submit().is_ok() {
            // Full: hand the queued entries to the kernel and try once more.
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.unsubmitted += 1;
                return true;
            }
        }
        pushed
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.evt.read();
        for cqe in self.ring.completion() {
            out.push((cqe.user_data(), i64::from(cqe.result())));
        }
    }

    fn completion_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}
