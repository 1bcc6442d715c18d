//! Time on the generic timer's virtual counter (CNTVCT_EL0, readable at EL0 too: `init` sets
//! CNTKCTL_EL1.EL0VCTEN), at the rate CNTFRQ_EL0 states (KVM and QEMU program it).
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// The name of the clock [`ticks`] reads (printed as `cntvct_khz=` and `cntvct_source=`).
pub const COUNTER: &str = "cntvct";
/// Assumed when CNTFRQ_EL0 reads 0 (QEMU's and the L1's rate).
const FALLBACK_KHZ: u64 = 62_500;
static KHZ: AtomicU64 = AtomicU64::new(0);

/// Lets EL0 read the virtual and physical counters (the net workloads time at EL0).
pub fn init() {
    // SAFETY: CNTKCTL_EL1 only controls EL0's access to the counters and timers.
    unsafe {
        asm!(
            "mrs {t}, cntkctl_el1",
            "orr {t}, {t}, #3",
            "msr cntkctl_el1, {t}",
            "isb",
            t = out(reg) _,
            options(nomem, nostack)
        )
    }
    let _ = ticks_khz();
}

/// The virtual counter.
#[inline(always)]
pub fn ticks() -> u64 {
    let v: u64;
    // SAFETY: reading the counter (after an ISB, so it is not read early) has no side effect.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) }
    v
}

/// Ticks per millisecond, and whether CNTFRQ_EL0 told it.
pub fn ticks_khz() -> (u64, bool) {
    let cached = KHZ.load(Ordering::Relaxed);
    if cached != 0 {
        return (cached & !1, cached & 1 != 0);
    }
    let frq: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) frq, options(nomem, nostack)) }
    let (khz, known) = match frq & 0xffff_ffff {
        0 => (FALLBACK_KHZ, false),
        f => ((f / 1000).max(2), true),
    };
    KHZ.store((khz & !1) | u64::from(known), Ordering::Relaxed);
    (khz & !1, known)
}

/// Where the rate came from: `cntfrq` or `assumed`.
pub fn source() -> &'static str {
    if ticks_khz().1 {
        "cntfrq"
    } else {
        "assumed"
    }
}

/// Nothing to measure: the counter's rate is architectural.
pub fn calibrate() {}

/// A point in time, `us` microseconds from now.
pub fn deadline_us(us: u64) -> u64 {
    ticks().saturating_add(us.saturating_mul(ticks_khz().0) / 1000)
}

/// Whether `deadline` has passed.
pub fn passed(deadline: u64) -> bool {
    ticks() >= deadline
}
