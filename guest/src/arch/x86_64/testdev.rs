//! The VMM's debug-exit port and test device (trapvisor's `src/devices/testdev.rs`).
//!
//! Debug-exit: PIO 0xf4, 0 = pass, anything else = fail. Test device: the same registers in a
//! PIO window at 0x510 and in an MMIO page at 0xf000_0000 (CPL3 code must use the MMIO page).
use core::sync::atomic::{AtomicU8, Ordering};

use super::cpu::{self, inl, outl};

pub const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const PIO_BASE: u16 = 0x510;
pub const MMIO_BASE: u64 = 0xf000_0000;
pub const EXIT: u16 = 0x0;
pub const SINK: u16 = 0x4;
pub const CONSOLE: u16 = 0x8;

pub const SINK_PORT: u16 = PIO_BASE + SINK;
pub const SINK_MMIO: u64 = MMIO_BASE + SINK as u64;
pub const CONSOLE_MMIO: u64 = MMIO_BASE + CONSOLE as u64;

/// What an absent device reads as.
pub const ABSENT: u32 = 0xffff_ffff;
/// What the SINK port reads as under QEMU (pc/q35), where 0x514 is fw_cfg's DMA address
/// register: part of its "QEMU CFG" signature.
const QEMU_FW_CFG_DMA: u32 = 0x554d_4551; // "QEMU"

const UNKNOWN: u8 = 0;
const PRESENT: u8 = 1;
const MISSING: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether the test device answers, probed once by reading the PIO SINK register: a port
/// nobody owns reads all-ones, and QEMU has its fw_cfg DMA register there. (Reading only: a
/// probe write would be counted.)
pub fn present() -> bool {
    match STATE.load(Ordering::Relaxed) {
        PRESENT => true,
        MISSING => false,
        _ => {
            let v = inl(SINK_PORT);
            let here = v != ABSENT && v != QEMU_FW_CFG_DMA;
            STATE.store(if here { PRESENT } else { MISSING }, Ordering::Relaxed);
            here
        }
    }
}

/// Reads the SINK count through the PIO window.
pub fn sink_pio() -> u32 {
    inl(SINK_PORT)
}

/// The SINK register in the MMIO page (always there for the unprivileged loop to write: an
/// absent page takes the writes silently).
pub fn sink_addr() -> Option<u64> {
    Some(SINK_MMIO)
}

/// The CONSOLE register in the MMIO page.
pub fn console_addr() -> Option<u64> {
    Some(CONSOLE_MMIO)
}

/// The SINK count as the unprivileged loop's check reads it (through the PIO window).
pub fn sink_count() -> u32 {
    sink_pio()
}

/// Reads the SINK count through the MMIO page.
pub fn sink_mmio() -> u32 {
    // SAFETY: the MMIO page is identity-mapped (uncached) by the boot page tables; reading SINK
    // has no side effect.
    unsafe { cpu::mmio_read32(SINK_MMIO) }
}

/// Reports `code` and stops: debug-exit port first, the test device's EXIT register second, and
/// if neither stopped the VM, halts forever.
pub fn exit(code: u32) -> ! {
    outl(DEBUG_EXIT_PORT, code);
    outl(PIO_BASE + EXIT, code);
    cpu::halt_forever()
}
