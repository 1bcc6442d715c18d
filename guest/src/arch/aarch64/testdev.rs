//! trapvisor's test device on aarch64 (`trapvisor,testdev` in the FDT, one MMIO page: EXIT at
//! +0x0, SINK at +0x4, CONSOLE at +0x8), which is also the debug exit; without one (QEMU's
//! `virt`), the verdict leaves through PSCI: SYSTEM_OFF for 0, SYSTEM_RESET for anything else.
use core::sync::atomic::{AtomicU64, Ordering};

use super::{cpu, psci};

pub const EXIT: u64 = 0x0;
pub const SINK: u64 = 0x4;
pub const CONSOLE: u64 = 0x8;
/// What an absent SINK reads as.
pub const ABSENT: u32 = 0xffff_ffff;

static BASE: AtomicU64 = AtomicU64::new(0);

/// Takes the device's page from the FDT.
pub fn init(base: Option<u64>) {
    BASE.store(base.unwrap_or(0), Ordering::Relaxed);
}

fn base() -> Option<u64> {
    match BASE.load(Ordering::Relaxed) {
        0 => None,
        b => Some(b),
    }
}

/// Whether the FDT has the test device.
pub fn present() -> bool {
    base().is_some()
}

/// Reads the SINK count ([`ABSENT`] without the device).
pub fn sink_mmio() -> u32 {
    match base() {
        // SAFETY: the page is device memory in the identity map; reading SINK has no effect.
        Some(b) => unsafe { cpu::mmio_read32(b + SINK) },
        None => ABSENT,
    }
}

/// The SINK count as the unprivileged loop's check reads it.
pub fn sink_count() -> u32 {
    sink_mmio()
}

/// The SINK register, when there is a device.
pub fn sink_addr() -> Option<u64> {
    base().map(|b| b + SINK)
}

/// The CONSOLE register, when there is a device.
pub fn console_addr() -> Option<u64> {
    base().map(|b| b + CONSOLE)
}

/// Reports `code` and stops: the EXIT register, then PSCI (SYSTEM_OFF for 0, SYSTEM_RESET
/// otherwise), then a halt.
pub fn exit(code: u32) -> ! {
    if let Some(b) = base() {
        // SAFETY: writing EXIT stops the VM; the page is device memory in the identity map.
        unsafe { cpu::mmio_write32(b + EXIT, code) };
    }
    power(code == 0)
}

/// PSCI SYSTEM_OFF (`off`) or SYSTEM_RESET, then a halt if the VM still runs.
pub fn power(off: bool) -> ! {
    psci::call(
        if off {
            psci::SYSTEM_OFF
        } else {
            psci::SYSTEM_RESET
        },
        0,
        0,
        0,
    );
    cpu::halt_forever()
}
