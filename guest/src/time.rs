//! Delays on the TSC.
//!
//! The TSC rate comes from CPUID (leaf 0x15, the hypervisor leaf 0x40000010, or leaf 0x16). If
//! none tells, 4 GHz is assumed, so waits are at least as long as asked on any TSC up to that.
use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{self, cpuid};

const FALLBACK_KHZ: u64 = 4_000_000;
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// The TSC rate in kHz, and whether CPUID told it.
pub fn tsc_khz() -> (u64, bool) {
    let cached = TSC_KHZ.load(Ordering::Relaxed);
    if cached != 0 {
        return (cached & !1, cached & 1 != 0);
    }
    let (khz, known) = match detect() {
        Some(k) => (k, true),
        None => (FALLBACK_KHZ, false),
    };
    // Low bit: "known" (the rate is rounded to even kHz, harmless).
    TSC_KHZ.store((khz & !1) | u64::from(known), Ordering::Relaxed);
    (khz & !1, known)
}

fn detect() -> Option<u64> {
    let max = cpuid(0, 0).eax;
    if max >= 0x15 {
        let l = cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000);
        }
    }
    if cpuid(1, 0).ecx & (1 << 31) != 0 {
        let hv_max = cpuid(0x4000_0000, 0).eax;
        if (0x4000_0010..0x5000_0000).contains(&hv_max) {
            let khz = cpuid(0x4000_0010, 0).eax;
            if khz != 0 {
                return Some(u64::from(khz));
            }
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1000);
        }
    }
    None
}

/// A point in time, `us` microseconds from now.
pub fn deadline_us(us: u64) -> u64 {
    cpu::rdtsc().saturating_add(us.saturating_mul(tsc_khz().0) / 1000)
}

/// Whether `deadline` has passed.
pub fn passed(deadline: u64) -> bool {
    cpu::rdtsc() >= deadline
}

/// Waits `us` microseconds with `pause`.
pub fn delay_us(us: u64) {
    let end = deadline_us(us);
    while !passed(end) {
        cpu::pause();
    }
}
