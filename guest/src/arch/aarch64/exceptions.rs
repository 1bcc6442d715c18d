//! The exception vector table (VBAR_EL1).
//!
//! IRQs, from EL1 or EL0, save every caller-saved register (x0–x18, x29, x30, q0–q7, q16–q31,
//! FPCR, FPSR, ELR, SPSR) on the EL1 stack and call [`super::irq::dispatch`]. A synchronous
//! exception from EL0 that is an SVC is a task's call into EL1 (`user`); anything else (an EL1
//! fault, an EL0 fault, FIQ, SError, AArch32) is fatal: `trapvisor-guest: FAIL: exception ...`
//! with ESR, ELR, FAR and SPSR, exit 1.
use core::sync::atomic::{AtomicBool, Ordering};

/// Bytes of the IRQ frame: 21 general registers + ELR + SPSR (+1 pad) = 24 × 8, then 24 q
/// registers × 16, then FPCR and FPSR.
const FRAME: usize = 24 * 8 + 24 * 16 + 16;

core::arch::global_asm!(
    r#"
    .macro fatal kind
    .balign 0x80
    mov x0, #\kind
    b exception_fatal_entry
    .endm

    .section .text.vectors, "ax"
    .balign 2048
    .global exception_vectors
exception_vectors:
    fatal 0                     /* current EL, SP0: sync */
    fatal 1                     /* IRQ */
    fatal 2                     /* FIQ */
    fatal 3                     /* SError */
    .balign 0x80                /* current EL, SPx: sync */
    mov x0, #4
    b exception_fatal_entry
    .balign 0x80                /* IRQ */
    b irq_entry
    fatal 6
    fatal 7
    .balign 0x80                /* lower EL, AArch64: sync (SVC: a task's call) */
    b el0_sync
    .balign 0x80                /* IRQ */
    b irq_entry
    fatal 10
    fatal 11
    fatal 12                    /* lower EL, AArch32 */
    fatal 13
    fatal 14
    fatal 15

exception_fatal_entry:
    mrs x1, esr_el1
    mrs x2, elr_el1
    mrs x3, far_el1
    mrs x4, spsr_el1
    bl exception_fatal
6:  wfe
    b 6b

el0_sync:
    mrs x9, esr_el1
    lsr x9, x9, #26
    cmp x9, #0x15               /* EC: SVC from AArch64 */
    b.eq user_call_entry
    mov x0, #8
    b exception_fatal_entry

irq_entry:
    sub sp, sp, #{frame}
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x29, [sp, #144]
    mrs x0, elr_el1
    mrs x1, spsr_el1
    stp x30, x0, [sp, #160]
    str x1, [sp, #176]
    add x0, sp, #192
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q16, q17, [x0, #128]
    stp q18, q19, [x0, #160]
    stp q20, q21, [x0, #192]
    stp q22, q23, [x0, #224]
    stp q24, q25, [x0, #256]
    stp q26, q27, [x0, #288]
    stp q28, q29, [x0, #320]
    stp q30, q31, [x0, #352]
    mrs x1, fpcr
    mrs x2, fpsr
    stp x1, x2, [x0, #384]
    bl irq_dispatch
    add x0, sp, #192
    ldp x1, x2, [x0, #384]
    msr fpcr, x1
    msr fpsr, x2
    ldp q0, q1, [x0, #0]
    ldp q2, q3, [x0, #32]
    ldp q4, q5, [x0, #64]
    ldp q6, q7, [x0, #96]
    ldp q16, q17, [x0, #128]
    ldp q18, q19, [x0, #160]
    ldp q20, q21, [x0, #192]
    ldp q22, q23, [x0, #224]
    ldp q24, q25, [x0, #256]
    ldp q26, q27, [x0, #288]
    ldp q28, q29, [x0, #320]
    ldp q30, q31, [x0, #352]
    ldp x30, x0, [sp, #160]
    ldr x1, [sp, #176]
    msr elr_el1, x0
    msr spsr_el1, x1
    ldp x0, x1, [sp, #0]
    ldp x2, x3, [sp, #16]
    ldp x4, x5, [sp, #32]
    ldp x6, x7, [sp, #48]
    ldp x8, x9, [sp, #64]
    ldp x10, x11, [sp, #80]
    ldp x12, x13, [sp, #96]
    ldp x14, x15, [sp, #112]
    ldp x16, x17, [sp, #128]
    ldp x18, x29, [sp, #144]
    add sp, sp, #{frame}
    eret
    "#,
    frame = const FRAME,
);

static IN_FATAL: AtomicBool = AtomicBool::new(false);

/// Names of the vector table's entries.
const KINDS: [&str; 16] = [
    "synchronous (EL1, SP0)",
    "IRQ (EL1, SP0)",
    "FIQ (EL1, SP0)",
    "SError (EL1, SP0)",
    "synchronous at EL1",
    "IRQ (EL1)",
    "FIQ at EL1",
    "SError at EL1",
    "synchronous at EL0",
    "IRQ (EL0)",
    "FIQ at EL0",
    "SError at EL0",
    "synchronous (AArch32)",
    "IRQ (AArch32)",
    "FIQ (AArch32)",
    "SError (AArch32)",
];

/// The exception class of ESR_EL1, named.
fn class_name(esr: u64) -> &'static str {
    match esr >> 26 {
        0x00 => "unknown",
        0x01 => "WFI/WFE",
        0x07 => "FP/SIMD access",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "system register access",
        0x20 => "instruction abort from EL0",
        0x21 => "instruction abort",
        0x22 => "PC alignment",
        0x24 => "data abort from EL0",
        0x25 => "data abort",
        0x26 => "SP alignment",
        0x2f => "SError",
        0x3c => "BRK",
        _ => "other",
    }
}

/// Called by the vector stubs for everything fatal.
#[no_mangle]
extern "C" fn exception_fatal(kind: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    if IN_FATAL.swap(true, Ordering::SeqCst) {
        // A fault while reporting one (or a second CPU failing at once): just stop.
        super::testdev::exit(1);
    }
    crate::report::fail_unlocked(format_args!(
        "exception: {} at ELR {:#x} (ESR {:#x}: {}, FAR {:#x}, SPSR {:#x})",
        KINDS.get(kind as usize).copied().unwrap_or("?"),
        elr,
        esr,
        class_name(esr),
        far,
        spsr
    ))
}
