//! Terminal input to the guest's serial port.
//!
//! When stdin is a terminal, it is put in raw mode (signals kept, so Ctrl-C still stops the
//! VM) and a thread moves typed bytes into the UART's receive FIFO as it drains. The terminal
//! mode is restored and the thread joined when the forwarder is dropped.
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::devices::serial::{IrqFdTrigger, SerialDevice};
use crate::kvm::vcpu::VmControl;

pub struct StdinForwarder {
    saved: Option<libc::termios>,
    thread: Option<JoinHandle<()>>,
    control: Arc<VmControl>,
}

fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

impl StdinForwarder {
    /// Starts forwarding if stdin is a terminal; `None` otherwise.
    pub fn start(
        serial: Arc<Mutex<SerialDevice<IrqFdTrigger>>>,
        control: Arc<VmControl>,
        mode: crate::seccomp::SeccompMode,
    ) -> Option<StdinForwarder> {
        let fd = io::stdin().as_raw_fd();
        if !is_terminal(fd) {
            return None;
        }
        // SAFETY: termios is plain data, filled by tcgetattr before use.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only edits it.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_lflag |= libc::ISIG;
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: `raw` is a valid termios for this terminal.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) };
        let ctl = control.clone();
        let thread = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                // Terminal bytes are guest input: confine the thread first.
                if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Worker, mode) {
                    ctl.request_stop(crate::kvm::exit::StopReason::Fatal(e.to_string()));
                    return;
                }
                forward(fd, &serial, &ctl)
            })
            .ok();
        Some(StdinForwarder {
            saved: Some(saved),
            thread,
            control,
        })
    }
}

fn forward(fd: i32, serial: &Mutex<SerialDevice<IrqFdTrigger>>, control: &VmControl) {
    let mut buf = [0u8; 64];
    let mut pending: Vec<u8> = Vec::new();
    while !control.is_stopping() {
        let mut fds = [
            libc::pollfd {
                fd,
                events: if pending.is_empty() { libc::POLLIN } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: control.stop_evt().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // With bytes pending, wake up every 10 ms to see whether the FIFO has room.
        let timeout = if pending.is_empty() { -1 } else { 10 };
        // SAFETY: `fds` is a valid array of two pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) } < 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: `buf` is a writable buffer of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            pending.extend_from_slice(&buf[..n as usize]);
        } else if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
        if !pending.is_empty() {
            let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
            let room = s.input_capacity().min(pending.len());
            let n = s.enqueue_input(&pending[..room]);
            pending.drain(..n);
        }
    }
}

impl Drop for StdinForwarder {
    fn drop(&mut self) {
        // The thread wakes on the stop eventfd, which is readable once a stop was requested.
        if !self.control.is_stopping() {
            self.control
                .request_stop(crate::kvm::exit::StopReason::Requested);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(saved) = self.saved.take() {
            // SAFETY: restores the mode saved from this terminal.
            unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &saved) };
        }
    }
}
