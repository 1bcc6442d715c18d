//! CPL3: run a function in ring 3 and come back.
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
use super::{cpu, testdev};
use crate::crc32::crc32;
use crate::println;
use crate::sync::Global;

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

/// What the user code reports back (`int3` with this in RAX).
const USER_DONE: u64 = 0x600d_c0de;
/// Bytes the user code generates and checksums.
const BUF_LEN: usize = 16 * 1024;
const CONSOLE_LINE: &[u8] = b"cpl3: hello from ring 3\n";

/// Shared between CPL0 and CPL3 (all pages are user-accessible).
#[repr(C)]
pub struct UserTask {
    /// In: MMIO SINK writes to do.
    writes: u32,
    /// Out: CRC-32 of `BUF`.
    crc: u32,
    /// Out: CRC-32 of "123456789" (the check value, 0xcbf43926).
    check: u32,
    /// Out: primes below 10,000.
    primes: u32,
    /// Out: MMIO SINK writes done.
    done_writes: u32,
}

static TASK: Global<UserTask> = Global::new(UserTask {
    writes: 0,
    crc: 0,
    check: 0,
    primes: 0,
    done_writes: 0,
});
/// Filled by the user code before anything reads it, so not zeroed at boot (`.noinit`).
#[link_section = ".noinit.user"]
static BUF: Global<[u8; BUF_LEN]> = Global::new([0; BUF_LEN]);

/// Primes below `n` (trial division: real work, cheap at native speed).
fn count_primes(n: u32) -> u32 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u32
}

/// Runs at CPL3. Touches only user-accessible memory and the test device's MMIO page.
extern "C" fn user_main(task: usize) -> ! {
    // SAFETY: `task` is TASK and BUF is this code's alone while CPL0 waits in enter_user.
    let (task, buf) = unsafe { (&mut *(task as *mut UserTask), &mut *BUF.get()) };
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    task.crc = crc32(buf);
    task.check = crc32(b"123456789");
    task.primes = count_primes(10_000);
    for i in 0..task.writes {
        // SAFETY: the test device's MMIO page is mapped with U/S set; SINK writes only count.
        unsafe { cpu::mmio_write32(testdev::SINK_MMIO, i) };
        task.done_writes = i + 1;
    }
    for &b in CONSOLE_LINE {
        // SAFETY: as above; CONSOLE prints one byte per write.
        unsafe { cpu::mmio_write32(testdev::CONSOLE_MMIO, u32::from(b)) };
    }
    // SAFETY: `int3` returns to CPL0 in enter_user and never comes back here.
    unsafe { asm!("int3", in("rax") USER_DONE, options(noreturn)) }
}

/// The `cpl3[=N]` command.
pub fn run(writes: u32) {
    // SAFETY: CPL3 is not running; CPL0 owns TASK.
    unsafe {
        *TASK.get() = UserTask {
            writes,
            crc: 0,
            check: 0,
            primes: 0,
            done_writes: 0,
        };
    }
    // SAFETY: no task runs; the log is CPL0's (reset in case the user code panics).
    unsafe { (*LOG.get()).len = 0 };
    let present = testdev::present();
    let before = testdev::sink_pio();
    // 16-byte aligned top, minus 8 as if a return address had been pushed (SysV entry alignment).
    let stack = crate::sym_addr!(boot::user_stack_top) - 8;
    // SAFETY: the GDT has the user segments, the TSS has RSP0 and vector 3's gate leads back
    // here; user_main touches only TASK, BUF and the MMIO page.
    let result = unsafe { enter_user(user_main, stack, TASK.get() as usize) };
    let after = testdev::sink_pio();
    // SAFETY: back at CPL0; the user code has finished with TASK.
    let task = unsafe { &*TASK.get() };
    if result != USER_DONE {
        crate::fail!("cpl3: returned {:#x}, expected {:#x}", result, USER_DONE);
    }
    if task.check != 0xcbf4_3926 {
        crate::fail!(
            "cpl3: crc32 check value {:#x}, expected 0xcbf43926",
            task.check
        );
    }
    if task.primes != 1229 {
        crate::fail!(
            "cpl3: counted {} primes below 10000, expected 1229",
            task.primes
        );
    }
    // SAFETY: the user code has finished with BUF.
    let crc0 = crc32(unsafe { &*BUF.get() });
    if crc0 != task.crc {
        crate::fail!("cpl3: crc32 at CPL3 {:#x}, at CPL0 {:#x}", task.crc, crc0);
    }
    if task.done_writes != writes {
        crate::fail!("cpl3: {} of {} MMIO writes done", task.done_writes, writes);
    }
    if present {
        let counted = after.wrapping_sub(before);
        if counted != writes {
            crate::fail!(
                "cpl3: sink counted {} MMIO writes, expected {}",
                counted,
                writes
            );
        }
        println!(
            "cpl3: ok (crc32 {:#010x} over {} bytes, {} primes, {} mmio writes, sink={})",
            task.crc, BUF_LEN, task.primes, writes, after
        );
    } else {
        println!(
            "cpl3: ok (crc32 {:#010x} over {} bytes, {} primes, {} mmio writes, sink=absent)",
            task.crc, BUF_LEN, task.primes, writes
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks: CPL3 code that calls back into CPL0 and is resumed where it left off.
//
// [`run_task`] enters `entry(arg)` at CPL3. The user code makes a call with `int3` and RAX = a
// call number, RDI and RSI = arguments ([`call`]); the stub saves its callee-saved registers,
// RIP, RFLAGS and RSP, and `run_task` handles the call at CPL0, then `resume_user` continues
// the user code with RAX = the answer. The calls: [`SYS_EXIT`] (the task is over; RDI its
// result), [`SYS_FLUSH`] (print the log buffer on COM1), [`SYS_WAIT`] (`sti; hlt` until an
// interrupt, bounded by a TSC deadline), [`SYS_PANIC`] (a panic at CPL3).
//
// The user code writes its output into [`LOG`] with [`ulog!`] (formatting at CPL3 is native
// speed; printing needs port I/O, which CPL3 cannot do), flushed when it fills, on
// [`flush`] and when the task ends.

/// The task is over; RDI: its result (returned by [`run_task`]).
pub const SYS_EXIT: u64 = 1;
/// Print the log buffer.
pub const SYS_FLUSH: u64 = 2;
/// Wait with `sti; hlt` for an interrupt: RDI = TSC deadline, RSI = the value of
/// `idt::INTERRUPTS` the caller last saw (no wait if it has moved since: no lost wake-ups).
pub const SYS_WAIT: u64 = 3;
/// A panic at CPL3; its message is in the log.
pub const SYS_PANIC: u64 = 4;
/// IDT vector of the one-shot local APIC timer that bounds a [`SYS_WAIT`].
pub const WAKE_VECTOR: u8 = 0x31;
/// Longest single halt in a [`SYS_WAIT`] (the user code waits again if it needs longer).
const MAX_WAIT_US: u64 = 1_000_000;

const LOG_LEN: usize = 8192;
/// Room a line may need; the log is flushed before writing when less is left.
const LOG_LINE_ROOM: usize = 512;

/// Output of the CPL3 code, printed by CPL0.
pub struct Log {
    len: usize,
    buf: [u8; LOG_LEN],
}

/// Written only at CPL3 while a task runs, read (and emptied) only by CPL0 during a call.
#[link_section = ".noinit.user"]
pub static LOG: Global<Log> = Global::new(Log {
    len: 0,
    buf: [0; LOG_LEN],
});

impl core::fmt::Write for Log {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.len = self.len.min(LOG_LEN);
        let room = LOG_LEN - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Appends one line to the log (at CPL3), flushing it first when it is nearly full.
pub fn log_line(args: core::fmt::Arguments) {
    // SAFETY: the log is the running task's until it calls into CPL0 (which `flush` does
    // before the log is touched again).
    unsafe {
        if (*LOG.get()).len + LOG_LINE_ROOM > LOG_LEN {
            flush();
        }
        let log = &mut *LOG.get();
        let _ = core::fmt::Write::write_fmt(log, args);
        let _ = core::fmt::Write::write_str(log, "\n");
    }
}

/// Makes call `number` into CPL0 from CPL3 (see [`run_task`]); returns CPL0's answer.
#[inline(never)]
pub fn call(number: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: `int3` at CPL3 enters run_task's handling through vector 3's DPL-3 gate and comes
    // back here through resume_user, with the callee-saved registers, RSP and RFLAGS restored
    // and every caller-saved register clobbered (declared by clobber_abi).
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

/// Prints the log now (CPL3).
pub fn flush() {
    call(SYS_FLUSH, 0, 0);
}

/// Ends the task with `result` (CPL3).
pub fn exit(result: u64) -> ! {
    call(SYS_EXIT, result, 0);
    unreachable!("a task was resumed after it exited")
}

/// Halts at CPL0 until an interrupt arrives or `deadline` (TSC) passes, unless one arrived
/// since the caller read `idt::INTERRUPTS` as `seen` (CPL3).
pub fn wait(deadline: u64, seen: u64) {
    call(SYS_WAIT, deadline, seen);
}

/// Whether the CPU runs at CPL3 now.
pub fn in_user() -> bool {
    let cs: u16;
    // SAFETY: reading CS has no effect.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3 == 3
}

/// The panic handler's path at CPL3: the message into the log, then [`SYS_PANIC`].
pub fn panic_in_user(info: &core::panic::PanicInfo) -> ! {
    log_line(format_args!("trapvisor-guest: panic at CPL3: {}", info));
    call(SYS_PANIC, 0, 0);
    unreachable!("a task was resumed after it panicked")
}

/// Prints the log on COM1 and empties it (CPL0).
fn print_log() {
    // SAFETY: the task is stopped in a call (or over): CPL0 owns the log now.
    let log = unsafe { &mut *LOG.get() };
    for line in log.buf[..log.len].split(|&b| b == b'\n') {
        if !line.is_empty() {
            super::serial::print_bytes_line(line);
        }
    }
    log.len = 0;
}

/// The CPL0 side of [`SYS_WAIT`]; interrupts are off here (the `int3` gate cleared IF).
fn sys_wait(deadline: u64, seen: u64) {
    use core::sync::atomic::Ordering;
    if super::idt::INTERRUPTS.load(Ordering::Relaxed) != seen {
        return;
    }
    let now = cpu::rdtsc();
    if deadline <= now {
        return;
    }
    let khz = super::time::tsc_khz().0.max(1);
    let us = ((deadline - now).saturating_mul(1000) / khz).clamp(1, MAX_WAIT_US);
    super::apic::timer_oneshot(WAKE_VECTOR, us as u32);
    cpu::sti_hlt();
    cpu::cli();
    super::apic::timer_stop();
}

/// Runs `entry(arg)` at CPL3 on the user stack until it calls [`SYS_EXIT`], handling its calls;
/// returns its result. The log is printed whenever the task asks and when it ends.
pub fn run_task(entry: extern "C" fn(usize) -> !, arg: usize) -> u64 {
    // SAFETY: nothing else uses the log while no task runs.
    unsafe { (*LOG.get()).len = 0 };
    let stack = crate::sym_addr!(boot::user_stack_top) - 8;
    // SAFETY: as in `run`: the user code touches only user-accessible memory and MMIO, and
    // comes back through vector 3's gate.
    let mut number = unsafe { enter_user(entry, stack, arg) };
    loop {
        // SAFETY: written by the stub of the `int3` that just returned here.
        let (a0, a1) = unsafe { (user_ctx[9], user_ctx[10]) };
        let reply = match number {
            SYS_EXIT => {
                print_log();
                return a0;
            }
            SYS_FLUSH => {
                print_log();
                0
            }
            SYS_WAIT => {
                sys_wait(a0, a1);
                0
            }
            SYS_PANIC => {
                print_log();
                crate::fail!("panic at CPL3 (see the line above)");
            }
            other => crate::fail!("CPL3 task made an unknown call {:#x}", other),
        };
        // SAFETY: the task is stopped in `call`; resume_user continues it there.
        number = unsafe { resume_user(reply) };
    }
}
