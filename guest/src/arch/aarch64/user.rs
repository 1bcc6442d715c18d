//! EL0: run a function unprivileged and come back (the mechanism under `crate::task`).
//!
//! `enter_user(entry, stack, arg)` saves the EL1 callee-saved registers (x19–x30, d8–d15) on the
//! EL1 stack and that stack pointer, then `eret`s to `entry(arg)` at EL0 (SP_EL0 = `stack`,
//! interrupts unmasked). EL0 calls back with `svc #0`, x8 = a call number, x0 and x1 = its
//! arguments ([`call`]): the vector table's lower-EL synchronous path (`user_call_entry`) saves
//! EL0's callee-saved registers, SP_EL0, ELR, SPSR and the arguments in `user_ctx`, restores the
//! EL1 stack and registers, and returns the number from `enter_user` as if it had been a normal
//! call. `resume_user(reply)` continues EL0 where it called, with x0 = `reply`. Every
//! caller-saved register is declared clobbered by [`call`], so nothing else needs saving.
use core::arch::asm;

use super::boot::{self, USER_STACK_SIZE};

core::arch::global_asm!(
    r#"
    .section .text.user, "ax"
    .macro save_el1
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    adrp x9, user_saved_sp
    mov x10, sp
    str x10, [x9, :lo12:user_saved_sp]
    .endm

    .macro zero_caller_saved
    mov x1, xzr
    mov x2, xzr
    mov x3, xzr
    mov x4, xzr
    mov x5, xzr
    mov x6, xzr
    mov x7, xzr
    mov x8, xzr
    mov x9, xzr
    mov x10, xzr
    mov x11, xzr
    mov x12, xzr
    mov x13, xzr
    mov x14, xzr
    mov x15, xzr
    mov x16, xzr
    mov x17, xzr
    mov x18, xzr
    .endm

    /* u64 enter_user(entry: x0, stack: x1, arg: x2) */
    .global enter_user
enter_user:
    save_el1
    msr sp_el0, x1
    msr elr_el1, x0
    msr spsr_el1, xzr           /* EL0t, nothing masked */
    mov x0, x2
    zero_caller_saved
    mov x19, xzr
    mov x20, xzr
    mov x21, xzr
    mov x22, xzr
    mov x23, xzr
    mov x24, xzr
    mov x25, xzr
    mov x26, xzr
    mov x27, xzr
    mov x28, xzr
    mov x29, xzr
    mov x30, xzr
    eret

    /* u64 resume_user(reply: x0) */
    .global resume_user
resume_user:
    save_el1
    adrp x9, user_ctx
    add x9, x9, :lo12:user_ctx
    ldp x10, x11, [x9, #96]
    msr sp_el0, x10
    msr elr_el1, x11
    ldr x10, [x9, #112]
    bic x10, x10, #0x3c0        /* DAIF clear: interrupts on at EL0 */
    msr spsr_el1, x10
    ldp d8, d9, [x9, #136]
    ldp d10, d11, [x9, #152]
    ldp d12, d13, [x9, #168]
    ldp d14, d15, [x9, #184]
    ldp x19, x20, [x9, #0]
    ldp x21, x22, [x9, #16]
    ldp x23, x24, [x9, #32]
    ldp x25, x26, [x9, #48]
    ldp x27, x28, [x9, #64]
    ldp x29, x30, [x9, #80]
    zero_caller_saved
    eret

    /* From the vector table: an SVC from EL0. x8 = number, x0, x1 = arguments. */
    .global user_call_entry
user_call_entry:
    adrp x9, user_ctx
    add x9, x9, :lo12:user_ctx
    stp x19, x20, [x9, #0]
    stp x21, x22, [x9, #16]
    stp x23, x24, [x9, #32]
    stp x25, x26, [x9, #48]
    stp x27, x28, [x9, #64]
    stp x29, x30, [x9, #80]
    mrs x10, sp_el0
    mrs x11, elr_el1
    stp x10, x11, [x9, #96]
    mrs x10, spsr_el1
    str x10, [x9, #112]
    stp x0, x1, [x9, #120]
    stp d8, d9, [x9, #136]
    stp d10, d11, [x9, #152]
    stp d12, d13, [x9, #168]
    stp d14, d15, [x9, #184]
    adrp x10, user_saved_sp
    ldr x10, [x10, :lo12:user_saved_sp]
    mov sp, x10
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    mov x0, x8
    ret

    .section .bss.user, "aw", @nobits
    .balign 16
user_saved_sp:
    .skip 16
    .global user_ctx
user_ctx:
    .skip 208
    "#
);

extern "C" {
    fn enter_user(entry: extern "C" fn(usize) -> !, stack: u64, arg: usize) -> u64;
    fn resume_user(reply: u64) -> u64;
    /// x19–x30, SP_EL0, ELR, SPSR, x0, x1, d8–d15 of the last `svc` from EL0.
    static user_ctx: [u64; 26];
}

/// The unprivileged level's name, as the `el0` command reports it.
pub const LEVEL: &str = "el0";
/// The unprivileged level's name in messages.
pub const LEVEL_NAME: &str = "EL0";
/// Where the unprivileged loop's console line says it comes from.
pub const WHERE: &str = "EL0";

/// Enters `entry(arg)` at EL0 on the EL0 stack; returns the number of the first call it makes
/// ([`call`]).
///
/// # Safety
/// `entry` must touch only EL0-accessible memory (the image's data and device MMIO) and come
/// back only through [`call`].
pub unsafe fn enter(entry: extern "C" fn(usize) -> !, arg: usize) -> u64 {
    let stack = crate::sym_addr!(boot::user_stack_top);
    // SAFETY: the vector table's lower-EL paths lead back here; the caller vouches for `entry`.
    unsafe { enter_user(entry, stack, arg) }
}

/// Continues the EL0 code stopped in [`call`] with `reply` as the call's result; returns the
/// number of its next call.
///
/// # Safety
/// A task entered with [`enter`] must be stopped in a call (not exited).
pub unsafe fn resume(reply: u64) -> u64 {
    // SAFETY: the caller guarantees the task is stopped in `call`.
    unsafe { resume_user(reply) }
}

/// The two arguments of the call that just came back from EL0.
pub fn call_args() -> (u64, u64) {
    // SAFETY: written by `user_call_entry` before it returned to `enter` or `resume`.
    unsafe {
        let ctx = core::ptr::addr_of!(user_ctx) as *const u64;
        (ctx.add(15).read_volatile(), ctx.add(16).read_volatile())
    }
}

/// Makes call `number` into EL1 from EL0; returns EL1's answer.
#[inline(never)]
pub fn call(number: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: `svc` at EL0 enters the task's handling at EL1 and comes back here through
    // resume_user with the callee-saved registers and SP restored; every caller-saved register
    // is declared clobbered.
    unsafe {
        asm!(
            "svc #0",
            inlateout("x8") number => _,
            inlateout("x0") a0 => ret,
            inlateout("x1") a1 => _,
            clobber_abi("C"),
        )
    }
    ret
}

/// Whether the CPU runs at EL0 now: EL0 code runs on the EL0 stack and nothing else does.
pub fn in_user() -> bool {
    let sp: u64;
    // SAFETY: reading SP has no effect.
    unsafe { asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    let top = crate::sym_addr!(boot::user_stack_top);
    sp <= top && sp > top - USER_STACK_SIZE as u64
}
