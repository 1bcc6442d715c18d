//! The local APIC: x2APIC through MSRs when CPUID offers it, xAPIC MMIO otherwise.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cpu::{self, cpuid};

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_MSR_BASE: u32 = 0x800;

/// Register offsets (xAPIC MMIO; x2APIC MSR = 0x800 + offset / 16).
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ISR: u32 = 0x100;
const REG_IRR: u32 = 0x200;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;
const REG_LVT_PERF: u32 = 0x340;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_ERROR: u32 = 0x370;

const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b0011: the timer counts at the APIC bus clock / 16.
const TIMER_DIVIDE_16: u32 = 0b0011;
/// APIC bus clock assumed by [`timer_periodic`]: KVM's (and QEMU TCG's) 1 GHz.
const APIC_BUS_KHZ: u64 = 1_000_000;
const SVR_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// ICR low word: INIT, level assert.
pub const ICR_INIT: u32 = 0x0000_4500;
/// ICR low word: start-up IPI (OR in the vector = trampoline page number).
pub const ICR_STARTUP: u32 = 0x0000_4600;

static X2APIC: AtomicBool = AtomicBool::new(false);
static MMIO_BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);

/// Whether the BSP's APIC runs in x2APIC mode.
pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

fn read(reg: u32) -> u32 {
    if is_x2apic() {
        // SAFETY: x2APIC mode is on, so the x2APIC MSR range exists.
        unsafe { cpu::rdmsr(X2APIC_MSR_BASE + (reg >> 4)) as u32 }
    } else {
        // SAFETY: the APIC page (below 4 GiB) is identity-mapped uncached.
        unsafe { cpu::mmio_read32(MMIO_BASE.load(Ordering::Relaxed) + u64::from(reg)) }
    }
}

fn write(reg: u32, value: u32) {
    if is_x2apic() {
        // SAFETY: x2APIC mode is on; APIC register writes don't affect memory safety.
        unsafe { cpu::wrmsr(X2APIC_MSR_BASE + (reg >> 4), u64::from(value)) }
    } else {
        // SAFETY: the APIC page is identity-mapped uncached.
        unsafe { cpu::mmio_write32(MMIO_BASE.load(Ordering::Relaxed) + u64::from(reg), value) }
    }
}

/// Enables the BSP's APIC (x2APIC when CPUID.1:ECX[21] says so), spurious vector 0xff, every
/// local interrupt source masked (LINT0 included, so a legacy PIC's ExtINT never reaches us).
pub fn init_bsp() {
    let x2 = cpuid(1, 0).ecx & (1 << 21) != 0;
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (CPUID.1:EDX[9]); the transitions
    // used (disabled → xAPIC → x2APIC) are the architecturally allowed ones.
    unsafe {
        let mut base = cpu::rdmsr(IA32_APIC_BASE);
        if base & APIC_BASE_ENABLE == 0 {
            base |= APIC_BASE_ENABLE;
            cpu::wrmsr(IA32_APIC_BASE, base);
        }
        if x2 && base & APIC_BASE_X2APIC == 0 {
            base |= APIC_BASE_X2APIC;
            cpu::wrmsr(IA32_APIC_BASE, base);
        }
        MMIO_BASE.store(base & 0xf_ffff_f000, Ordering::Relaxed);
        X2APIC.store(base & APIC_BASE_X2APIC != 0, Ordering::Relaxed);
    }
    write(REG_TPR, 0);
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_LVT_PERF, LVT_MASKED);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_ERROR, LVT_MASKED);
    write(REG_SVR, SVR_ENABLE | u32::from(super::idt::SPURIOUS_VECTOR));
}

/// Whether `vector` is requested (IRR) and in service (ISR) at this CPU's APIC, and the task
/// priority and spurious-vector registers: what decides whether it is delivered.
pub fn vector_state(vector: u8) -> (bool, bool, u32, u32) {
    let (word, bit) = (u32::from(vector / 32) * 0x10, 1 << (vector % 32));
    (
        read(REG_IRR + word) & bit != 0,
        read(REG_ISR + word) & bit != 0,
        read(REG_TPR),
        read(REG_SVR),
    )
}

/// This CPU's APIC ID (from the APIC).
pub fn id() -> u32 {
    let v = read(REG_ID);
    if is_x2apic() {
        v
    } else {
        v >> 24
    }
}

/// This CPU's APIC ID from CPUID (usable before, or without, touching the APIC: the APs).
pub fn id_from_cpuid() -> u32 {
    if cpuid(0, 0).eax >= 0xb {
        let leaf = cpuid(0xb, 0);
        if leaf.ebx != 0 {
            return leaf.edx;
        }
    }
    cpuid(1, 0).ebx >> 24
}

/// Starts the local APIC timer in periodic mode: `vector` every `period_us` (at the 1 GHz bus
/// clock KVM and QEMU emulate; a wake-up source for `sti; hlt` waits, not a clock).
pub fn timer_periodic(vector: u8, period_us: u32) {
    let count = (u64::from(period_us) * APIC_BUS_KHZ / 1000 / 16).clamp(1, u64::from(u32::MAX));
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(vector));
    write(REG_TIMER_INITIAL, count as u32);
}

/// Starts the local APIC timer in one-shot mode: `vector` once, after `us` microseconds (at
/// the assumed 1 GHz bus clock).
pub fn timer_oneshot(vector: u8, us: u32) {
    let count = (u64::from(us) * APIC_BUS_KHZ / 1000 / 16).clamp(1, u64::from(u32::MAX));
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, u32::from(vector));
    write(REG_TIMER_INITIAL, count as u32);
}

/// Starts the timer counting down from `count`, masked (no interrupt), one-shot: for reading
/// [`timer_count`] against another clock. One count is 16 bus cycles (16 ns at 1 GHz).
pub fn timer_start_masked(count: u32) {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INITIAL, count);
}

/// The timer's current count.
pub fn timer_count() -> u32 {
    read(REG_TIMER_CURRENT)
}

/// Nanoseconds per timer count at the assumed bus clock and divide-by-16.
pub const TIMER_COUNT_NS: u64 = 16 * 1_000_000 / APIC_BUS_KHZ;

/// Stops and masks the local APIC timer.
pub fn timer_stop() {
    write(REG_TIMER_INITIAL, 0);
    write(REG_LVT_TIMER, LVT_MASKED);
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Sends an IPI (`icr_low`: vector, delivery mode, level) to the APIC with ID `dest`; in xAPIC
/// mode waits (bounded) for the delivery-status bit to clear.
pub fn send_ipi(dest: u32, icr_low: u32) -> Result<(), &'static str> {
    if is_x2apic() {
        // SAFETY: x2APIC mode is on; the ICR is a single 64-bit MSR there.
        unsafe {
            cpu::wrmsr(
                X2APIC_MSR_BASE + (REG_ICR_LOW >> 4),
                (u64::from(dest) << 32) | u64::from(icr_low),
            )
        };
        return Ok(());
    }
    if dest > 0xff {
        return Err("APIC ID above 255 needs x2APIC");
    }
    write(REG_ICR_HIGH, dest << 24);
    write(REG_ICR_LOW, icr_low);
    for _ in 0..100_000 {
        if read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
            return Ok(());
        }
        cpu::pause();
    }
    Err("IPI stuck in delivery")
}
