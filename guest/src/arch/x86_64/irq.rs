//! Interrupts as the arch-neutral code sees them (`drivers`, `net`): counters per vector
//! (`idt`), the local APIC timer as a periodic wake-up source, and a halt until an interrupt.
use core::sync::atomic::Ordering;

pub use super::idt::{count, INTERRUPTS};
use super::{apic, cpu, time};

/// Vector of the periodic wake-up timer ([`timer_periodic`]).
pub const TIMER_VECTOR: u8 = 0x30;

/// Raises [`TIMER_VECTOR`] every `period_us` (a wake-up source for waits, not a clock).
pub fn timer_periodic(period_us: u32) {
    apic::timer_periodic(TIMER_VECTOR, period_us);
}

/// Stops the wake-up timer.
pub fn timer_stop() {
    apic::timer_stop();
}

/// With interrupts off: enables them and halts until one arrives (`sti; hlt`, atomic thanks to
/// the STI shadow, so one pending before stays pending and ends the halt at once), then turns
/// them off again.
pub fn halt_until_interrupt() {
    cpu::sti_hlt();
    cpu::cli();
}

/// Vector of the one-shot local APIC timer that bounds a [`wait_until`].
pub const WAKE_VECTOR: u8 = 0x31;
/// Longest single halt in a [`wait_until`] (a task waits again if it needs longer).
const MAX_WAIT_US: u64 = 1_000_000;

/// A task's wait (`task::SYS_WAIT`), interrupts off: unless an interrupt arrived since the
/// task saw [`INTERRUPTS`] as `seen`, halts until one arrives or `deadline` (TSC) passes, with
/// a one-shot APIC timer for the deadline.
pub fn wait_until(deadline: u64, seen: u64) {
    if INTERRUPTS.load(Ordering::Relaxed) != seen {
        return;
    }
    let now = time::ticks();
    if deadline <= now {
        return;
    }
    let khz = time::ticks_khz().0.max(1);
    let us = ((deadline - now).saturating_mul(1000) / khz).clamp(1, MAX_WAIT_US);
    apic::timer_oneshot(WAKE_VECTOR, us as u32);
    halt_until_interrupt();
    apic::timer_stop();
}
