//! Time on the TSC: [`ticks`] (the arch-neutral code's clock), its rate, and delays.
//!
//! The TSC rate comes from CPUID (leaf 0x15, the hypervisor leaf 0x40000010, or leaf 0x16). If
//! none tells, 4 GHz is assumed, so waits are at least as long as asked on any TSC up to that,
//! until [`calibrate`] measures it against the local APIC timer.
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::cpu::{self, cpuid};

const FALLBACK_KHZ: u64 = 4_000_000;
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// Where the rate came from: 0 not yet known, else one of the `SOURCE_*`.
static SOURCE: AtomicU8 = AtomicU8::new(0);
const SOURCE_CPUID: u8 = 1;
const SOURCE_ASSUMED: u8 = 2;
const SOURCE_APIC: u8 = 3;
/// Local APIC timer counts one [`calibrate`] measurement spans (5 ms at 16 ns a count).
const CALIBRATION_COUNTS: u32 = 312_500;

/// The name of the clock [`ticks`] reads (printed as `tsc_khz=` and `tsc_source=`).
pub const COUNTER: &str = "tsc";

/// The clock: the TSC.
#[inline(always)]
pub fn ticks() -> u64 {
    cpu::rdtsc()
}

/// Ticks per millisecond, and whether that rate is known (else assumed).
pub fn ticks_khz() -> (u64, bool) {
    tsc_khz()
}

/// Where the rate came from (see [`tsc_source`]).
pub fn source() -> &'static str {
    tsc_source()
}

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
    SOURCE.store(
        if known { SOURCE_CPUID } else { SOURCE_ASSUMED },
        Ordering::Relaxed,
    );
    (khz & !1, known)
}

/// Where the TSC rate came from: `cpuid`, `apic` (measured by [`calibrate`]) or `assumed`.
pub fn tsc_source() -> &'static str {
    tsc_khz();
    match SOURCE.load(Ordering::Relaxed) {
        SOURCE_CPUID => "cpuid",
        SOURCE_APIC => "apic",
        _ => "assumed",
    }
}

/// When CPUID does not give the TSC rate, measures it against the local APIC timer (masked,
/// counting down at the 1 GHz bus clock KVM and QEMU emulate) and uses that from now on: three
/// measurements over [`CALIBRATION_COUNTS`] (5 ms), the median kept; each end is the tightest of
/// three (TSC, timer, TSC) readings, so a preemption of the vCPU mid-reading is left out. BSP,
/// CPL0; it reads the timer and the TSC in a loop, no interrupt is awaited.
pub fn calibrate() {
    if tsc_khz().1 || SOURCE.load(Ordering::Relaxed) == SOURCE_APIC {
        return;
    }
    let mut khz = [0u64; 3];
    for k in khz.iter_mut() {
        *k = measure();
    }
    khz.sort_unstable();
    let khz = khz[1];
    if khz == 0 {
        return; // the timer did not count: keep the assumption
    }
    TSC_KHZ.store((khz & !1) | 1, Ordering::Relaxed);
    SOURCE.store(SOURCE_APIC, Ordering::Relaxed);
}

/// One measurement for [`calibrate`]: TSC kHz, or 0.
fn measure() -> u64 {
    // (TSC midpoint, timer count) of the tightest of three readings.
    let sample = || {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..3 {
            let a = cpu::rdtsc();
            let c = super::apic::timer_count();
            let b = cpu::rdtsc();
            if b.wrapping_sub(a) < best.0 {
                best = (b.wrapping_sub(a), a / 2 + b / 2, c);
            }
        }
        (best.1, best.2)
    };
    super::apic::timer_start_masked(u32::MAX);
    let (t0, c0) = sample();
    // Bounded by the TSC too, in case the timer does not count (4e9 ticks: 1 s at 4 GHz).
    let give_up = t0.saturating_add(4_000_000_000);
    let (t1, c1) = loop {
        let (t, c) = sample();
        if c0.wrapping_sub(c) >= CALIBRATION_COUNTS || t >= give_up {
            break (t, c);
        }
        cpu::pause();
    };
    super::apic::timer_stop();
    let counts = u64::from(c0.wrapping_sub(c1));
    if counts < u64::from(CALIBRATION_COUNTS) / 2 || t1 <= t0 {
        return 0;
    }
    (t1 - t0) * 1_000_000 / (counts * super::apic::TIMER_COUNT_NS)
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
