//! COM1 (16550 at 0x3f8), polled output. Every line the guest prints goes here.
//!
//! Each port access is an exit to the VMM, so with a 16550A's FIFO (IIR bits 7:6 after
//! enabling it: trapvisor's vm-superio and QEMU both have one) the guest polls LSR once per 16
//! bytes: THRE set means the whole transmit FIFO is empty. Without a FIFO, once per byte.
use core::fmt::{self, Write};

use super::cpu::{inb, outb};
use crate::sync::SpinLock;

const COM1: u16 = 0x3f8;
const THR: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const IIR: u16 = 2;
const IIR_FIFO_ENABLED: u8 = 0xc0;
/// Transmit FIFO depth of a 16550A.
const FIFO_DEPTH: u8 = 16;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Polls of LSR per byte before giving up (a missing UART reads 0xff, a stuck one never empties).
const MAX_POLLS: u32 = 100_000;

/// The UART. Only reachable through [`SERIAL`].
pub struct Com1 {
    /// Bytes the transmitter takes after LSR.THRE was seen (16 with a FIFO, else 1).
    burst: u8,
    /// Bytes that may still be written before polling LSR again.
    room: u8,
}

static SERIAL: SpinLock<Com1> = SpinLock::new(Com1 { burst: 1, room: 0 });

/// Programs 115200 8N1, FIFOs on, interrupts off.
pub fn init() {
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x80); // DLAB
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x03); // 8N1
    outb(COM1 + FCR, 0xc7);
    outb(COM1 + MCR, 0x03); // DTR, RTS; OUT2 off (no interrupts)
    if inb(COM1 + IIR) & IIR_FIFO_ENABLED == IIR_FIFO_ENABLED {
        SERIAL.lock().burst = FIFO_DEPTH;
    }
}

impl Com1 {
    fn put(&mut self, byte: u8) {
        if self.room == 0 {
            for _ in 0..MAX_POLLS {
                if inb(COM1 + LSR) & LSR_THR_EMPTY != 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            self.room = self.burst;
        }
        outb(COM1 + THR, byte);
        self.room -= 1;
    }
}

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.put(b);
        }
        Ok(())
    }
}

/// Prints one line under the lock, so that lines of different CPUs never mix.
pub fn print_line(args: fmt::Arguments) {
    let mut com = SERIAL.lock();
    let _ = com.write_fmt(args);
    com.put(b'\n');
}

/// Prints `bytes` and a newline under the lock, without formatting (cheaper at emulated CPL0).
pub fn print_bytes_line(bytes: &[u8]) {
    let mut com = SERIAL.lock();
    for &b in bytes {
        com.put(b);
    }
    com.put(b'\n');
}

/// Prints one line without the lock: for the fatal path (exceptions, panics), which may run
/// while this CPU already holds it.
pub fn print_line_unlocked(args: fmt::Arguments) {
    // SAFETY: the guest stops right after the fatal path prints; a line mixed with another
    // CPU's output is the worst outcome.
    let com = unsafe { SERIAL.steal() };
    let _ = com.write_fmt(args);
    com.put(b'\n');
}
