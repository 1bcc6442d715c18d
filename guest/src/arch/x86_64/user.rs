//! CPL3: run a function in ring 3 and come back (the mechanism under `crate::task`).
//!
//! `enter_user(entry, stack, arg)` saves the callee-saved registers and RSP, then `iretq`s to
//! `entry(arg)` at CPL3 (user segments, IF=1). The user code returns with `int3` and RAX = its
//! result, through vector 3's gate, which has DPL 3: its stub checks that it came from CPL3,
//! restores the saved RSP and registers, and returns RAX from `enter_user`, as if it had been a
//! normal call. A #BP at CPL0 goes to the common path and fails the guest.
//!
//! Why `int3`: it is the one way back that works on this machine's PVM /dev/kvm as well as on
//! KVM and TCG. Measured under PVM: `int 0x80` at CPL3 raises #UD even with a DPL-3 gate, and
//! `syscall` reaches LSTAR but without leaving CPL3 (the first `in` there raises #GP), while
//! exceptions and `int3` from CPL3 arrive at CPL0 properly. And because IOPL does not survive
//! PVM's emulated `iretq`, the user code talks to the test device only through its MMIO page.
use core::arch::asm;

use super::boot::{self, USER_CS, USER_DS};

core::arch::global_asm!(
    r#"
    .section .text.user, "ax"
    /* u64 enter_user(entry: rdi, user stack: rsi, arg: rdx) */
    .global enter_user
enter_user:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, user_saved_rsp(%rip)
    pushq ${user_ds}            /* SS */
    push %rsi                   /* RSP */
    pushq $0x202                /* RFLAGS: IF */
    pushq ${user_cs}            /* CS */
    push %rdi                   /* RIP */
    mov %rdx, %rdi
    xor %eax, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    xor %edx, %edx
    xor %esi, %esi
    xor %ebp, %ebp
    xor %r8d, %r8d
    xor %r9d, %r9d
    xor %r10d, %r10d
    xor %r11d, %r11d
    xor %r12d, %r12d
    xor %r13d, %r13d
    xor %r14d, %r14d
    xor %r15d, %r15d
    iretq

    /* u64 resume_user(reply: rdi): continues the CPL3 code that made a call (`int3`) where it
       left off, with RAX = reply; returns like enter_user at its next call. */
    .global resume_user
resume_user:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, user_saved_rsp(%rip)
    pushq ${user_ds}            /* SS */
    pushq user_ctx+64(%rip)     /* RSP */
    mov user_ctx+56(%rip), %rax
    or $0x200, %rax             /* IF */
    push %rax                   /* RFLAGS */
    pushq ${user_cs}            /* CS */
    pushq user_ctx+48(%rip)     /* RIP */
    mov %rdi, %rax
    mov user_ctx+0(%rip), %rbx
    mov user_ctx+8(%rip), %rbp
    mov user_ctx+16(%rip), %r12
    mov user_ctx+24(%rip), %r13
    mov user_ctx+32(%rip), %r14
    mov user_ctx+40(%rip), %r15
    xor %ecx, %ecx
    xor %edx, %edx
    xor %esi, %esi
    xor %edi, %edi
    xor %r8d, %r8d
    xor %r9d, %r9d
    xor %r10d, %r10d
    xor %r11d, %r11d
    iretq

    /* Vector 3 (#BP), DPL 3: `int3` from CPL3 returns RAX from enter_user (or resume_user),
       keeping what resume_user needs: the callee-saved registers, RIP, RFLAGS, RSP, and the
       call's arguments RDI and RSI. */
    .balign 16
    .global user_return_stub
user_return_stub:
    testb $3, 8(%rsp)           /* CS of the interrupted code */
    jz 1f
    mov %rbx, user_ctx+0(%rip)
    mov %rbp, user_ctx+8(%rip)
    mov %r12, user_ctx+16(%rip)
    mov %r13, user_ctx+24(%rip)
    mov %r14, user_ctx+32(%rip)
    mov %r15, user_ctx+40(%rip)
    mov 0(%rsp), %rcx
    mov %rcx, user_ctx+48(%rip) /* RIP (after the int3) */
    mov 16(%rsp), %rcx
    mov %rcx, user_ctx+56(%rip) /* RFLAGS */
    mov 24(%rsp), %rcx
    mov %rcx, user_ctx+64(%rip) /* RSP */
    mov %rdi, user_ctx+72(%rip)
    mov %rsi, user_ctx+80(%rip)
    mov user_saved_rsp(%rip), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret
1:  pushq $0                    /* #BP at CPL0: report it like any other exception */
    pushq $3
    jmp isr_common

    .section .bss.user, "aw", @nobits
    .balign 8
user_saved_rsp:
    .skip 8
    .global user_ctx
user_ctx:
    .skip 88
    "#,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    options(att_syntax)
);

extern "C" {
    fn enter_user(entry: extern "C" fn(usize) -> !, stack: u64, arg: usize) -> u64;
    fn resume_user(reply: u64) -> u64;
    /// rbx, rbp, r12–r15, RIP, RFLAGS, RSP, RDI, RSI of the last `int3` from CPL3.
    static user_ctx: [u64; 11];
}

/// The unprivileged level's name, as the `cpl3` command reports it.
pub const LEVEL: &str = "cpl3";
/// The unprivileged level's name in messages.
pub const LEVEL_NAME: &str = "CPL3";
/// Where the unprivileged loop's console line says it comes from.
pub const WHERE: &str = "ring 3";

/// Enters `entry(arg)` at CPL3 on the user stack; returns the number of the first call it makes
/// ([`call`]).
///
/// # Safety
/// `entry` must touch only user-accessible memory (every page is) and the MMIO it owns, and
/// come back only through [`call`].
pub unsafe fn enter(entry: extern "C" fn(usize) -> !, arg: usize) -> u64 {
    // 16-byte aligned top, minus 8 as if a return address had been pushed (SysV entry alignment).
    let stack = crate::sym_addr!(boot::user_stack_top) - 8;
    // SAFETY: the GDT has the user segments, the TSS has RSP0 and vector 3's gate leads back
    // here; the caller vouches for `entry`.
    unsafe { enter_user(entry, stack, arg) }
}

/// Continues the CPL3 code stopped in [`call`] with `reply` as the call's result; returns the
/// number of its next call.
///
/// # Safety
/// A task entered with [`enter`] must be stopped in a call (not exited).
pub unsafe fn resume(reply: u64) -> u64 {
    // SAFETY: the caller guarantees the task is stopped in `call`.
    unsafe { resume_user(reply) }
}

/// The two arguments of the call that just came back from CPL3.
pub fn call_args() -> (u64, u64) {
    // SAFETY: written by the stub of the `int3` that returned to `enter` or `resume`; the
    // task is stopped.
    unsafe { (user_ctx[9], user_ctx[10]) }
}

/// Makes call `number` into CPL0 from CPL3 (see `crate::task`); returns CPL0's answer.
#[inline(never)]
pub fn call(number: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: `int3` at CPL3 enters the task's handling through vector 3's DPL-3 gate and
    // comes back here through resume_user, with the callee-saved registers, RSP and RFLAGS
    // restored and every caller-saved register clobbered (declared by clobber_abi).
    unsafe {
        asm!(
            "int3",
            inlateout("rax") number => ret,
            inlateout("rdi") a0 => _,
            inlateout("rsi") a1 => _,
            clobber_abi("C"),
        )
    }
    ret
}

/// Whether the CPU runs at CPL3 now.
pub fn in_user() -> bool {
    let cs: u16;
    // SAFETY: reading CS has no effect.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3 == 3
}
