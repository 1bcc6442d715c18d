//! The net_device fuzz target's host end: an in-memory backend per queue pair that checks
//! every iovec the device hands it, and an interrupt sink.
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use trapvisor::net::header::{validate_tx, VnetHeader, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN};
use trapvisor::net::NetBackend;
use trapvisor::virtio::{InterruptError, VirtioInterrupt, VirtioInterruptType};
use vmm_sys_util::eventfd::EventFd;

/// The device's own bytes after the buffers of a read (`pair::OVERFLOW_LEN`).
const OVERFLOW_LEN: usize = 64;

/// What one backend does and saw.
#[derive(Default)]
pub struct Io {
    /// Frames waiting to be read: length and fill byte.
    pub rx: VecDeque<(usize, u8)>,
    /// EAGAINs to answer to the next writes.
    pub tx_again: u8,
    pub tx_error: Option<i32>,
    pub rx_error: Option<i32>,
    /// TUNSETOFFLOAD and TUNSETQUEUE fail.
    pub fail_config: bool,
    pub acked: u64,
    /// Frames taken and their bytes after the header; frames handed out.
    pub sent: u64,
    pub sent_bytes: u64,
    pub read: u64,
    pub offload: Option<u32>,
    pub enabled: bool,
    /// Within one step: the transmit queue's used index when the last chain the device took
    /// for good (written or failed, not EAGAIN) was handed over.
    pub last_write_used: Option<u16>,
}

pub struct Fake {
    pub evt: EventFd,
    pub ram: (usize, usize),
    /// Host address of this pair's transmit queue's used index.
    pub tx_used_idx: usize,
    pub io: Arc<Mutex<Io>>,
}

pub fn lock(io: &Mutex<Io>) -> MutexGuard<'_, Io> {
    io.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    fn inside(&self, v: &libc::iovec) -> bool {
        let (base, len) = self.ram;
        let a = v.iov_base as usize;
        a >= base && a.checked_add(v.iov_len).is_some_and(|e| e <= base + len)
    }

    fn disjoint(&self, v: &libc::iovec) -> bool {
        let (base, len) = self.ram;
        let a = v.iov_base as usize;
        a.saturating_add(v.iov_len) <= base || a >= base + len
    }
}

fn os_error(code: Option<i32>) -> Option<io::Error> {
    code.map(io::Error::from_raw_os_error)
}

impl NetBackend for Fake {
    fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        for (i, v) in iovs.iter().enumerate() {
            let tail = i + 1 == iovs.len() && v.iov_len == OVERFLOW_LEN && self.disjoint(v);
            assert!(
                tail || self.inside(v),
                "read iovec {i} outside guest RAM: {:?}+{}",
                v.iov_base,
                v.iov_len
            );
        }
        let mut io = lock(&self.io);
        if let Some(e) = os_error(io.rx_error.take()) {
            return Err(e);
        }
        let Some((len, fill)) = io.rx.pop_front() else {
            return Ok(None);
        };
        let mut done = 0;
        for v in iovs {
            let n = v.iov_len.min(len - done);
            // SAFETY: the caller guarantees each iovec is valid for writes of its length.
            unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), fill, n) };
            done += n;
        }
        io.read += 1;
        Ok(Some(done))
    }

    unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        let mut total = 0usize;
        let mut hdr = [0u8; HDR_LEN];
        for (i, v) in iovs.iter().enumerate() {
            assert!(
                self.inside(v),
                "write iovec {i} outside guest RAM: {:?}+{}",
                v.iov_base,
                v.iov_len
            );
            if total < HDR_LEN {
                let n = v.iov_len.min(HDR_LEN - total);
                // SAFETY: the caller guarantees each iovec is valid for reads of its length.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        v.iov_base.cast::<u8>(),
                        hdr[total..].as_mut_ptr(),
                        n,
                    )
                };
            }
            total += v.iov_len;
        }
        let mut io = lock(&self.io);
        // The completion rule (net/tx.rs): each chain is published before the next writev.
        // SAFETY: inside the guest RAM mapping, 2-byte aligned; the device writes it
        // atomically on this same thread.
        let used_now = unsafe {
            std::sync::atomic::AtomicU16::from_ptr(self.tx_used_idx as *mut u16)
                .load(std::sync::atomic::Ordering::Acquire)
        };
        if let Some(before) = io.last_write_used {
            assert_ne!(
                used_now, before,
                "writev before the previous chain's used entry was published"
            );
        }
        assert!(
            (HDR_LEN + ETH_HLEN..=HDR_LEN + MAX_FRAME_LEN).contains(&total),
            "a {total}-byte frame written"
        );
        let h = VnetHeader::from_bytes(&hdr);
        if let Err(e) = validate_tx(&h, total - HDR_LEN, io.acked) {
            panic!("a frame with a bad header written: {h:?}: {e}");
        }
        if io.tx_again > 0 {
            io.tx_again -= 1;
            return Ok(None);
        }
        io.last_write_used = Some(used_now);
        if let Some(e) = os_error(io.tx_error.take()) {
            return Err(e);
        }
        io.sent += 1;
        io.sent_bytes += (total - HDR_LEN) as u64;
        Ok(Some(total))
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        let mut io = lock(&self.io);
        if io.fail_config {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        io.offload = Some(flags);
        Ok(())
    }

    fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        let mut io = lock(&self.io);
        if io.fail_config {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        io.enabled = enabled;
        Ok(())
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

pub struct Irq {
    pub queues: usize,
    pub fail: bool,
}

impl VirtioInterrupt for Irq {
    fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError> {
        if let VirtioInterruptType::Queue(q) = kind {
            assert!(usize::from(q) < self.queues, "interrupt for queue {q}");
        }
        if self.fail {
            return Err(InterruptError::Delivery("fuzz".into()));
        }
        Ok(())
    }
}
