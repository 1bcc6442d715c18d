//! What a virtio-net queue pair needs from its host end: one non-blocking fd that moves whole
//! frames (12-byte vnet header first) with `readv`/`writev`, says `EAGAIN` as `Ok(None)`, and
//! takes offload and attach settings. [`Tap`] is the real one; tests plug in others (a
//! `SOCK_SEQPACKET` socket pair makes a TAP whose queue can be filled up on purpose).
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::tap::Tap;

/// The host end of one queue pair.
pub trait NetBackend: Send + Sync {
    /// The fd to poll: readable when a frame waits, writable when a frame can be written.
    fn fd(&self) -> RawFd;

    /// Reads one frame into `iovs`. `Ok(None)`: nothing waits.
    ///
    /// # Safety
    ///
    /// Each iovec must describe memory valid for writes of its length for the whole call.
    unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>>;

    /// Writes one frame gathered from `iovs`. `Ok(None)`: the queue is full; poll for writable.
    ///
    /// # Safety
    ///
    /// Each iovec must describe memory valid for reads of its length for the whole call.
    unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>>;

    /// What the guest can receive: `TUN_F_*` offload flags.
    fn set_offload(&self, flags: u32) -> io::Result<()>;

    /// Attaches or detaches this queue (multi-queue TAPs; a no-op elsewhere).
    fn set_queue_enabled(&self, enabled: bool) -> io::Result<()>;

    /// "tap tv0 queue 1", for messages.
    fn describe(&self) -> String;
}

fn to_io(e: super::tap::TapError) -> io::Error {
    io::Error::other(e.to_string())
}

impl NetBackend for Tap {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller gives the same guarantee Tap::readv_raw asks for.
        unsafe { Tap::readv_raw(self, iovs) }
    }

    unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller gives the same guarantee Tap::writev_raw asks for.
        unsafe { Tap::writev_raw(self, iovs) }
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(to_io)
    }

    fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        Tap::set_queue_enabled(self, enabled).map_err(to_io)
    }

    fn describe(&self) -> String {
        format!("tap {} queue {}", self.name(), self.queue_index())
    }
}
