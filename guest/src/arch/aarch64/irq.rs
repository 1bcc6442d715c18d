//! Interrupts as the arch-neutral code sees them: counters per vector, the generic timer's
//! virtual timer as the periodic wake-up (`TIMER_VECTOR`) and as the one-shot bound of a task's
//! wait (`WAKE_VECTOR`), and a halt until an interrupt.
//!
//! A "vector" v (0x30..0x4f) is counted when the timer fires in the matching mode, or when LPI
//! `gic::LPI_BASE + v` arrives (MSIs: `msi` maps event v of a device to that LPI).
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::{gic, time};

/// External interrupts taken (all CPUs).
pub static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Spurious acknowledges (INTID 1020–1023).
pub static SPURIOUS: AtomicU64 = AtomicU64::new(0);
/// Interrupts that were neither the timer nor an LPI.
pub static OTHER: AtomicU64 = AtomicU64::new(0);
/// First vector with a count of its own.
pub const COUNTED_BASE: u8 = 0x30;
const COUNTED: usize = 32;
static PER_VECTOR: [AtomicU64; COUNTED] = [const { AtomicU64::new(0) }; COUNTED];

/// Vector counted for each tick of the periodic wake-up timer.
pub const TIMER_VECTOR: u8 = 0x30;
/// Vector counted when a task's one-shot wait timer fires.
pub const WAKE_VECTOR: u8 = 0x31;
/// Longest single halt in a [`wait_until`].
const MAX_WAIT_US: u64 = 1_000_000;

const MODE_OFF: u8 = 0;
const MODE_PERIODIC: u8 = 1;
const MODE_ONESHOT: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
/// The periodic timer's period in counter ticks.
static PERIOD: AtomicU64 = AtomicU64::new(0);
static TIMER_INTID: AtomicU32 = AtomicU32::new(27);

/// Remembers which PPI the virtual timer raises (from the FDT).
pub fn init(timer_intid: u32) {
    TIMER_INTID.store(timer_intid, Ordering::Relaxed);
    set_timer(0, false);
}

fn bump(vector: u8) {
    if let Some(c) = PER_VECTOR.get(usize::from(vector.wrapping_sub(COUNTED_BASE))) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Interrupts taken on `vector` (one of the 32 from [`COUNTED_BASE`]; 0 for others).
pub fn count(vector: u8) -> u64 {
    PER_VECTOR
        .get(usize::from(vector.wrapping_sub(COUNTED_BASE)))
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Programs the virtual timer: fire after `ticks` (enabled), or off.
fn set_timer(ticks: u64, on: bool) {
    // SAFETY: the virtual timer's registers only decide when its PPI fires.
    unsafe {
        if on {
            asm!("msr cntv_tval_el0, {}", "mov {t}, #1", "msr cntv_ctl_el0, {t}", "isb",
                 in(reg) ticks.min(u64::from(u32::MAX >> 1)), t = out(reg) _,
                 options(nomem, nostack));
        } else {
            asm!("msr cntv_ctl_el0, xzr", "isb", options(nomem, nostack));
        }
    }
}

fn us_to_ticks(us: u64) -> u64 {
    (us.saturating_mul(time::ticks_khz().0) / 1000).max(1)
}

/// Counts [`TIMER_VECTOR`] every `period_us` (a wake-up source for waits, not a clock).
pub fn timer_periodic(period_us: u32) {
    let t = us_to_ticks(u64::from(period_us));
    PERIOD.store(t, Ordering::Relaxed);
    MODE.store(MODE_PERIODIC, Ordering::Relaxed);
    set_timer(t, true);
}

/// Stops the timer.
pub fn timer_stop() {
    MODE.store(MODE_OFF, Ordering::Relaxed);
    set_timer(0, false);
}

/// With interrupts masked: waits for one (`wfi` wakes on a pending interrupt even while it is
/// masked), takes it, and masks them again.
pub fn halt_until_interrupt() {
    // SAFETY: every interrupt has a handler (`dispatch`), so unmasking IRQs is sound.
    unsafe {
        asm!(
            "wfi",
            "msr daifclr, #2",
            "isb",
            "msr daifset, #2",
            options(nomem, nostack)
        )
    }
}

/// A task's wait (`task::SYS_WAIT`), interrupts masked: unless an interrupt arrived since the
/// task saw [`INTERRUPTS`] as `seen`, halts until one arrives or `deadline` passes, with the
/// one-shot timer for the deadline.
pub fn wait_until(deadline: u64, seen: u64) {
    if INTERRUPTS.load(Ordering::Relaxed) != seen {
        return;
    }
    let now = time::ticks();
    if deadline <= now {
        return;
    }
    let max = us_to_ticks(MAX_WAIT_US);
    MODE.store(MODE_ONESHOT, Ordering::Relaxed);
    set_timer((deadline - now).min(max), true);
    halt_until_interrupt();
    timer_stop();
}

/// Called by the vector table's IRQ path with IRQs masked: acknowledges one interrupt, counts
/// it, re-arms or stops the timer, and ends it.
#[no_mangle]
extern "C" fn irq_dispatch() {
    let intid = gic::ack();
    if (1020..=1023).contains(&intid) {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    if intid == TIMER_INTID.load(Ordering::Relaxed) {
        match MODE.load(Ordering::Relaxed) {
            MODE_PERIODIC => {
                bump(TIMER_VECTOR);
                set_timer(PERIOD.load(Ordering::Relaxed), true);
            }
            MODE_ONESHOT => {
                bump(WAKE_VECTOR);
                set_timer(0, false);
            }
            // A level interrupt from a timer meant to be off: turn it off.
            _ => set_timer(0, false),
        }
    } else if intid >= gic::LPI_BASE {
        let v = intid - gic::LPI_BASE;
        if v < 256 {
            bump(v as u8);
        }
    } else {
        OTHER.fetch_add(1, Ordering::Relaxed);
    }
    gic::eoi(intid);
}
