//! Thin wrappers around the x86 instructions the guest needs.
//!
//! Port I/O, CPUID, RDTSC, PAUSE and HLT have no memory-safety effect in this guest, so their
//! wrappers are safe functions. (The one device that writes guest memory, virtio, is pointed only
//! at memory its driver owns, and only after the driver enabled bus mastering; see `virtio`.)
//! MSR writes and MMIO go through `unsafe fn`s: they can change paging, the APIC or arbitrary
//! memory.
use core::arch::asm;

/// Writes a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no guest memory; see the module comment.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O touches no guest memory; see the module comment.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 16-bit value to an I/O port.
#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: port I/O touches no guest memory; see the module comment.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 16-bit value from an I/O port.
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: port I/O touches no guest memory; see the module comment.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit value to an I/O port.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O touches no guest memory; see the module comment.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 32-bit value from an I/O port.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: port I/O touches no guest memory; see the module comment.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a model-specific register.
///
/// # Safety
/// `msr` must exist on this CPU (a missing one raises #GP, which the guest reports as a failure).
#[inline(always)]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; reading it changes no state.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The write must not break the assumptions of the running code (paging, segments, APIC use).
#[inline(always)]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the effect of the write.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// The four registers CPUID returns.
#[derive(Clone, Copy, Debug)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID only reads CPU identification. RBX is reserved by LLVM, so it is saved in a
    // scratch register around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Spin-loop hint.
#[inline(always)]
pub fn pause() {
    core::hint::spin_loop();
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI/HLT only stop this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Disables interrupts.
#[inline(always)]
pub fn cli() {
    // SAFETY: masking interrupts on this CPU has no memory effect.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Enables interrupts and halts until one arrives (`sti; hlt`, atomic thanks to the STI shadow).
#[inline(always)]
pub fn sti_hlt() {
    // SAFETY: every vector has a handler (see `idt`), so enabling interrupts is sound.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3 (the page-table root).
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Flushes the TLB entry for `addr` (after a page-table change).
///
/// # Safety
/// The page tables must map what the running code needs.
#[inline(always)]
pub unsafe fn invlpg(addr: u64) {
    // SAFETY: the caller guarantees the new mapping is sound.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) }
}

/// 8-bit MMIO read.
///
/// # Safety
/// `addr` must be identity-mapped and either device MMIO or memory the caller may read.
#[inline(always)]
pub unsafe fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: the caller guarantees `addr` is mapped and readable.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// 16-bit MMIO read.
///
/// # Safety
/// As [`mmio_read8`], and `addr` 2-byte aligned.
#[inline(always)]
pub unsafe fn mmio_read16(addr: u64) -> u16 {
    // SAFETY: the caller guarantees `addr` is mapped, readable and aligned.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

/// 8-bit MMIO write.
///
/// # Safety
/// `addr` must be identity-mapped device MMIO (or memory the caller owns).
#[inline(always)]
pub unsafe fn mmio_write8(addr: u64, value: u8) {
    // SAFETY: the caller guarantees `addr` is mapped and writable.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}

/// 16-bit MMIO write.
///
/// # Safety
/// As [`mmio_write8`], and `addr` 2-byte aligned.
#[inline(always)]
pub unsafe fn mmio_write16(addr: u64, value: u16) {
    // SAFETY: the caller guarantees `addr` is mapped, writable and aligned.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
}

/// 32-bit MMIO read.
///
/// # Safety
/// `addr` must be identity-mapped and either device MMIO or memory the caller may read.
#[inline(always)]
pub unsafe fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the caller guarantees `addr` is mapped and readable.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// 32-bit MMIO write.
///
/// # Safety
/// `addr` must be identity-mapped device MMIO (or memory the caller owns).
#[inline(always)]
pub unsafe fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: the caller guarantees `addr` is mapped and writable.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// A GDTR/IDTR image.
#[repr(C, packed)]
pub struct DescriptorTablePointer {
    pub limit: u16,
    pub base: u64,
}
