//! Thin wrappers around the aarch64 instructions the guest needs.
//!
//! Device MMIO goes through `unsafe fn`s with explicit barriers: a write is preceded by
//! `dsb st`, so that ring updates in normal memory are visible before a device sees the write
//! (a virtio notify); a read is followed by `dsb ld`, so that normal-memory reads after it
//! (DMA buffers) are not satisfied earlier. Every device access traps to the VMM anyway, which
//! costs microseconds; the barriers cost nothing next to that.
use core::arch::asm;

/// Spin-loop hint (`yield`).
#[inline(always)]
pub fn pause() {
    core::hint::spin_loop();
}

/// Masks interrupts and waits forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: masking interrupts and waiting only stop this CPU.
        unsafe { asm!("msr daifset, #0xf", "wfi", options(nomem, nostack)) }
    }
}

/// Reads MPIDR_EL1's affinity fields (Aff3 in bits 39:32, Aff2..Aff0 in 23:0).
pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v & 0xff_00ff_ffff
}

macro_rules! mmio_rw {
    ($read:ident, $write:ident, $t:ty, $ldr:literal, $str:literal, $reg:literal) => {
        /// MMIO read.
        ///
        /// # Safety
        /// `addr` must be mapped (device memory or memory the caller may read), aligned to the
        /// access size.
        #[inline(always)]
        pub unsafe fn $read(addr: u64) -> $t {
            let v: u32;
            // SAFETY: the caller guarantees `addr` is mapped, readable and aligned.
            unsafe {
                asm!(concat!($ldr, " {v:w}, [{a}]"), "dsb ld", a = in(reg) addr, v = out(reg) v,
                     options(nostack, preserves_flags))
            }
            v as $t
        }

        /// MMIO write.
        ///
        /// # Safety
        /// `addr` must be mapped device memory (or memory the caller owns), aligned to the
        /// access size.
        #[inline(always)]
        pub unsafe fn $write(addr: u64, value: $t) {
            // SAFETY: the caller guarantees `addr` is mapped, writable and aligned.
            unsafe {
                asm!("dsb st", concat!($str, " {v:w}, [{a}]"), a = in(reg) addr,
                     v = in(reg) u32::from(value), options(nostack, preserves_flags))
            }
        }
    };
}

mmio_rw!(mmio_read8, mmio_write8, u8, "ldrb", "strb", "w");
mmio_rw!(mmio_read16, mmio_write16, u16, "ldrh", "strh", "w");
mmio_rw!(mmio_read32, mmio_write32, u32, "ldr", "str", "w");

/// 64-bit MMIO read (GIC and ITS registers).
///
/// # Safety
/// As [`mmio_read32`], 8-byte aligned.
#[inline(always)]
pub unsafe fn mmio_read64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees `addr` is mapped, readable and aligned.
    unsafe {
        asm!("ldr {v}, [{a}]", "dsb ld", a = in(reg) addr, v = out(reg) v,
             options(nostack, preserves_flags))
    }
    v
}

/// 64-bit MMIO write (GIC and ITS registers).
///
/// # Safety
/// As [`mmio_write32`], 8-byte aligned.
#[inline(always)]
pub unsafe fn mmio_write64(addr: u64, value: u64) {
    // SAFETY: the caller guarantees `addr` is mapped, writable and aligned.
    unsafe {
        asm!("dsb st", "str {v}, [{a}]", a = in(reg) addr, v = in(reg) value,
             options(nostack, preserves_flags))
    }
}
