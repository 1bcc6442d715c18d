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

use crate::boot::{self, USER_CS, USER_DS};
use crate::sync::Global;
use crate::{cpu, println, testdev};

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

    /* Vector 3 (#BP), DPL 3: `int3` from CPL3 returns RAX from enter_user. */
    .balign 16
    .global user_return_stub
user_return_stub:
    testb $3, 8(%rsp)           /* CS of the interrupted code */
    jz 1f
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
    "#,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    options(att_syntax)
);

extern "C" {
    fn enter_user(entry: extern "C" fn(*mut UserTask) -> !, stack: u64, arg: *mut UserTask) -> u64;
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

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE), table-driven.
fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Primes below `n` (trial division: real work, cheap at native speed).
fn count_primes(n: u32) -> u32 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u32
}

/// Runs at CPL3. Touches only user-accessible memory and the test device's MMIO page.
extern "C" fn user_main(task: *mut UserTask) -> ! {
    // SAFETY: `task` is TASK and BUF is this code's alone while CPL0 waits in enter_user.
    let (task, buf) = unsafe { (&mut *task, &mut *BUF.get()) };
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
    let present = testdev::present();
    let before = testdev::sink_pio();
    // 16-byte aligned top, minus 8 as if a return address had been pushed (SysV entry alignment).
    let stack = crate::sym_addr!(boot::user_stack_top) - 8;
    // SAFETY: the GDT has the user segments, the TSS has RSP0 and vector 3's gate leads back
    // here; user_main touches only TASK, BUF and the MMIO page.
    let result = unsafe { enter_user(user_main, stack, TASK.get()) };
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
