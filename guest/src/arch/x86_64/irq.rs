//! Interrupts as the arch-neutral code sees them (`drivers`, `net`): counters per vector
//! (`idt`), the local APIC timer as a periodic wake-up source, and a halt until an interrupt.
pub use super::idt::{count, INTERRUPTS};
use super::{apic, cpu};

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
