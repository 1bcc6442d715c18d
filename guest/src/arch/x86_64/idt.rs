//! The IDT: a stub for every vector, one Rust dispatcher.
//!
//! The IDT itself is assembled as data (`idt_table`), not built at boot: filling 256 gates is
//! about a millisecond of emulated CPL0 code on PVM. That needs the stubs' address at assembly
//! time, so `link.ld` places `.text.isr` first in the image, at [`ISR_BASE`] (and asserts it).
//!
//! Exceptions (0–31) and anything else unexpected print
//! `trapvisor-guest: FAIL: exception V at RIP ...` and exit 1. External interrupts (32–254) are
//! counted (0x30–0x4f also per vector: [`count`]) and EOI'd at the local APIC; 0xff is the APIC's spurious vector (no EOI). Vector 3
//! (#BP) has a DPL-3 gate: CPL3 code returns to CPL0 with `int3` (see `user`). Every other gate
//! has DPL 0, so `int N` at CPL3 is a #GP.
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cpu::{self, DescriptorTablePointer};
use super::{apic, boot, testdev};

/// Where `link.ld` puts the stubs (the image's first bytes).
const ISR_BASE: u64 = 0x10_0000;
/// Bytes of the IDT.
const IDT_BYTES: usize = 256 * 16;
/// The local APIC's spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Bytes between consecutive stubs.
const STUB_STRIDE: u64 = 16;

// Each stub pushes a zero error code when the CPU does not push one, then the vector (as a
// sign-extended byte), and jumps to the common path, which saves the general registers and
// calls `interrupt_dispatch(&mut Frame)`.
core::arch::global_asm!(
    r#"
    .macro isr_noerr n
    .balign 16
    .byte 0x6a, 0
    .byte 0x6a, \n
    jmp isr_common
    .endm

    .macro isr_err n
    .balign 16
    .byte 0x6a, \n
    jmp isr_common
    .endm

    .section .text.isr, "ax"
    .balign 16
    .global isr_stubs
isr_stubs:
    isr_noerr 0
    isr_noerr 1
    isr_noerr 2
    .balign 16                  /* 3: #BP, DPL 3: the way back from CPL3 (see `user`) */
    jmp user_return_stub
    isr_noerr 4
    isr_noerr 5
    isr_noerr 6
    isr_noerr 7
    isr_err 8
    isr_noerr 9
    isr_err 10
    isr_err 11
    isr_err 12
    isr_err 13
    isr_err 14
    isr_noerr 15
    isr_noerr 16
    isr_err 17
    isr_noerr 18
    isr_noerr 19
    isr_noerr 20
    isr_err 21
    isr_noerr 22
    isr_noerr 23
    isr_noerr 24
    isr_noerr 25
    isr_noerr 26
    isr_noerr 27
    isr_noerr 28
    isr_err 29
    isr_err 30
    isr_noerr 31
    isr_vector = 32
    .rept 256 - 32
    isr_noerr isr_vector
    isr_vector = isr_vector + 1
    .endr
    .balign 16
    .global isr_stubs_end
isr_stubs_end:

    .global isr_common
isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call interrupt_dispatch
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq

    /* 256 interrupt gates: selector KERNEL_CS, present, 64-bit interrupt gate, DPL 0 (0x8e);
       vector 3 DPL 3 (0xee); vector 8 (#DF) on IST1. */
    .section .data.idt, "aw"
    .balign 16
    .global idt_table
idt_table:
    idt_vector = 0
    .rept 256
    idt_stub = {isr_base} + idt_vector * 16
    .word idt_stub & 0xffff
    .word {kernel_cs}
    .if idt_vector == 8
    .byte 1
    .else
    .byte 0
    .endif
    .if idt_vector == 3
    .byte 0xee
    .else
    .byte 0x8e
    .endif
    .word (idt_stub >> 16) & 0xffff
    .long idt_stub >> 32
    .long 0
    idt_vector = idt_vector + 1
    .endr
    "#,
    isr_base = const ISR_BASE,
    kernel_cs = const boot::KERNEL_CS,
    options(att_syntax)
);

extern "C" {
    static isr_stubs: u8;
    static isr_stubs_end: u8;
    /// The 256 gates (16 bytes each), assembled above.
    static idt_table: u8;
}

/// What `isr_common` leaves on the stack.
#[repr(C)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// External interrupts taken (all CPUs).
pub static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// First vector with a count of its own (device and timer vectors live here).
pub const COUNTED_BASE: u8 = 0x30;
const COUNTED: usize = 32;
static PER_VECTOR: [AtomicU64; COUNTED] = [const { AtomicU64::new(0) }; COUNTED];
/// Spurious APIC interrupts taken.
pub static SPURIOUS: AtomicU64 = AtomicU64::new(0);
static IN_FATAL: AtomicBool = AtomicBool::new(false);

/// Checks that the stubs are where the assembled IDT expects them, and loads it.
pub fn init() {
    let base = crate::sym_addr!(isr_stubs);
    let end = crate::sym_addr!(isr_stubs_end);
    if base != ISR_BASE || end - base != 256 * STUB_STRIDE {
        crate::report::fail(format_args!(
            "interrupt stubs at {:#x}..{:#x}, expected {:#x}..+4096",
            base, end, ISR_BASE
        ));
    }
    load();
}

/// Loads the IDT on this CPU (APs call this too).
pub fn load() {
    let ptr = DescriptorTablePointer {
        limit: (IDT_BYTES - 1) as u16,
        base: crate::sym_addr!(idt_table),
    };
    // SAFETY: the IDT is assembled data, complete before any CPU runs, and never changed.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) }
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

/// Called by `isr_common` with interrupts off.
#[no_mangle]
extern "C" fn interrupt_dispatch(frame: &mut Frame) {
    let vector = (frame.vector & 0xff) as u8;
    match vector {
        0..=31 => fatal(frame, vector),
        SPURIOUS_VECTOR => {
            SPURIOUS.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            INTERRUPTS.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = PER_VECTOR.get(usize::from(vector.wrapping_sub(COUNTED_BASE))) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            apic::eoi();
        }
    }
}

/// Interrupts taken on `vector` (one of the 32 from [`COUNTED_BASE`]; 0 for others).
pub fn count(vector: u8) -> u64 {
    PER_VECTOR
        .get(usize::from(vector.wrapping_sub(COUNTED_BASE)))
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

fn fatal(frame: &Frame, vector: u8) -> ! {
    if IN_FATAL.swap(true, Ordering::SeqCst) {
        // A fault while reporting one (or a second CPU failing at once): just stop.
        testdev::exit(1);
    }
    let name = EXCEPTION_NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("unexpected vector");
    let cr2 = if vector == 14 { cpu::read_cr2() } else { 0 };
    crate::report::fail_unlocked(format_args!(
        "exception {} at RIP {:#x} ({}, error code {:#x}, CPL {}, RSP {:#x}, CR2 {:#x})",
        vector,
        frame.rip,
        name,
        frame.error_code,
        frame.cs & 3,
        frame.rsp,
        cr2
    ))
}

/// Loads an empty IDT and raises #UD: #UD → #GP → #DF → triple fault (shutdown). (UD2 rather
/// than INT3: PVM's CPL0 emulator cannot execute INT3 outside real mode.)
pub fn triple_fault() -> ! {
    let ptr = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: deliberately unrecoverable; nothing runs after it.
    unsafe { asm!("lidt [{}]", "2:", "ud2", "jmp 2b", in(reg) &ptr, options(noreturn)) }
}
