//! The console: a 16550 on MMIO (`ns16550a`, with `reg-shift` and `reg-io-width`) or a PL011,
//! whichever the FDT's `/chosen/stdout-path` names (else the first of either), polled output.
//!
//! Until [`init`] has found one, lines go nowhere.
use core::fmt::{self, Write};

use super::cpu;
use crate::sync::SpinLock;

/// Polls of the status register per byte before giving up (a stuck UART).
const MAX_POLLS: u32 = 100_000;
const NS16550_THR: u64 = 0;
const NS16550_IER: u64 = 1;
const NS16550_FCR: u64 = 2;
const NS16550_IIR: u64 = 2;
const NS16550_LCR: u64 = 3;
const NS16550_MCR: u64 = 4;
const NS16550_LSR: u64 = 5;
const LSR_THR_EMPTY: u32 = 1 << 5;
const IIR_FIFO_ENABLED: u32 = 0xc0;
const PL011_DR: u64 = 0x00;
const PL011_FR: u64 = 0x18;
const PL011_CR: u64 = 0x30;
const FR_TXFF: u32 = 1 << 5;

/// Which UART, and where.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    None,
    /// base, reg-shift, reg-io-width (1 or 4)
    Ns16550 {
        base: u64,
        shift: u32,
        width: u32,
    },
    Pl011 {
        base: u64,
    },
}

pub struct Uart {
    kind: Kind,
    /// 16550: bytes the transmitter takes after THRE was seen (16 with a FIFO, else 1).
    burst: u8,
    room: u8,
}

static SERIAL: SpinLock<Uart> = SpinLock::new(Uart {
    kind: Kind::None,
    burst: 1,
    room: 0,
});

impl Uart {
    fn reg(&self, base: u64, shift: u32, off: u64) -> u64 {
        base + (off << shift)
    }

    fn read(&self, off: u64) -> u32 {
        match self.kind {
            // SAFETY: the UART's registers are device memory in the identity map; `init` took
            // the address from the FDT.
            Kind::Ns16550 { base, shift, width } => unsafe {
                let a = self.reg(base, shift, off);
                if width == 4 {
                    cpu::mmio_read32(a)
                } else {
                    u32::from(cpu::mmio_read8(a))
                }
            },
            // SAFETY: as above.
            Kind::Pl011 { base } => unsafe { cpu::mmio_read32(base + off) },
            Kind::None => 0,
        }
    }

    fn write(&self, off: u64, v: u32) {
        match self.kind {
            // SAFETY: as in `read`.
            Kind::Ns16550 { base, shift, width } => unsafe {
                let a = self.reg(base, shift, off);
                if width == 4 {
                    cpu::mmio_write32(a, v)
                } else {
                    cpu::mmio_write8(a, v as u8)
                }
            },
            // SAFETY: as in `read`.
            Kind::Pl011 { base } => unsafe { cpu::mmio_write32(base + off, v) },
            Kind::None => {}
        }
    }

    fn put(&mut self, byte: u8) {
        match self.kind {
            Kind::Ns16550 { .. } => {
                if self.room == 0 {
                    for _ in 0..MAX_POLLS {
                        if self.read(NS16550_LSR) & LSR_THR_EMPTY != 0 {
                            break;
                        }
                        core::hint::spin_loop();
                    }
                    self.room = self.burst;
                }
                self.write(NS16550_THR, u32::from(byte));
                self.room -= 1;
            }
            Kind::Pl011 { .. } => {
                for _ in 0..MAX_POLLS {
                    if self.read(PL011_FR) & FR_TXFF == 0 {
                        break;
                    }
                    core::hint::spin_loop();
                }
                self.write(PL011_DR, u32::from(byte));
            }
            Kind::None => {}
        }
    }
}

/// Starts using `kind`: a 16550 gets 8N1 with FIFOs on and interrupts off (its baud divisor
/// is left alone: the VMM's UART does not care), a PL011 is used as the firmware left it
/// (QEMU's is enabled at reset), with its transmitter turned on in case.
pub fn init(kind: Kind) {
    let mut u = SERIAL.lock();
    u.kind = kind;
    match kind {
        Kind::Ns16550 { .. } => {
            u.write(NS16550_IER, 0);
            u.write(NS16550_LCR, 0x03);
            u.write(NS16550_FCR, 0xc7);
            u.write(NS16550_MCR, 0x03);
            if u.read(NS16550_IIR) & IIR_FIFO_ENABLED == IIR_FIFO_ENABLED {
                u.burst = 16;
            }
        }
        Kind::Pl011 { .. } => {
            let cr = u.read(PL011_CR);
            u.write(PL011_CR, cr | 0x101); // UARTEN | TXE
        }
        Kind::None => {}
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.put(b);
        }
        Ok(())
    }
}

/// Prints one line under the lock, so that lines of different CPUs never mix.
pub fn print_line(args: fmt::Arguments) {
    let mut u = SERIAL.lock();
    let _ = u.write_fmt(args);
    u.put(b'\n');
}

/// Prints `bytes` and a newline under the lock.
pub fn print_bytes_line(bytes: &[u8]) {
    let mut u = SERIAL.lock();
    for &b in bytes {
        u.put(b);
    }
    u.put(b'\n');
}

/// Prints one line without the lock: for the fatal path, which may run while this CPU holds it.
pub fn print_line_unlocked(args: fmt::Arguments) {
    // SAFETY: the guest stops right after the fatal path prints; a line mixed with another
    // CPU's output is the worst outcome.
    let u = unsafe { SERIAL.steal() };
    let _ = u.write_fmt(args);
    u.put(b'\n');
}
