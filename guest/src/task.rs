//! The unprivileged level (CPL3 on x86, EL0 on aarch64): the `cpl3`/`el0` loop and tasks.
//!
//! The mechanism is the arch's (`arch::user`: `enter`, `resume`, `call`, `call_args`): code
//! entered unprivileged makes a call into the kernel with a number and two arguments; the
//! kernel handles it and resumes the code where it left off with an answer.
//!
//! [`run`] is the `cpl3[=N]` / `el0[=N]` command: compute there (a CRC-32 over 16 KiB, the
//! primes below 10,000), N MMIO writes to the test device's SINK register and a console line
//! through its CONSOLE register, then call [`USER_DONE`]; the kernel checks the results.
//!
//! [`run_task`] runs a task (the `net.*` workloads): its calls are [`SYS_EXIT`] (the task is
//! over; a0 its result), [`SYS_FLUSH`] (print the log), [`SYS_WAIT`] (halt until an interrupt,
//! bounded by a deadline on the arch's clock: `arch::irq::wait_until`), [`SYS_PANIC`] (a panic
//! unprivileged). The task writes its output into [`LOG`] with `ulog!` (formatting runs at
//! native speed there; printing needs the console, which is the kernel's), flushed when it
//! fills, on [`flush`] and when the task ends.
use crate::arch::{self, cpu, testdev, user};
use crate::crc32::crc32;
use crate::println;
use crate::sync::Global;

/// What the unprivileged loop reports back.
const USER_DONE: u64 = 0x600d_c0de;
/// Bytes the unprivileged loop generates and checksums.
const BUF_LEN: usize = 16 * 1024;

/// Shared between the kernel and the unprivileged loop (its pages are user-accessible).
#[repr(C)]
pub struct UserTask {
    /// In: MMIO SINK writes to do (0 without a test device).
    writes: u32,
    /// In: the SINK and CONSOLE registers (0: no test device).
    sink: u64,
    console: u64,
    /// Out: CRC-32 of `BUF`.
    crc: u32,
    /// Out: CRC-32 of "123456789" (the check value, 0xcbf43926).
    check: u32,
    /// Out: primes below 10,000.
    primes: u32,
    /// Out: MMIO SINK writes done.
    done_writes: u32,
}

const TASK_INIT: UserTask = UserTask {
    writes: 0,
    sink: 0,
    console: 0,
    crc: 0,
    check: 0,
    primes: 0,
    done_writes: 0,
};
static TASK: Global<UserTask> = Global::new(TASK_INIT);
/// Filled by the user code before anything reads it, so not zeroed at boot (`.noinit`).
#[link_section = ".noinit.user"]
static BUF: Global<[u8; BUF_LEN]> = Global::new([0; BUF_LEN]);

/// Primes below `n` (trial division: real work, cheap at native speed).
fn count_primes(n: u32) -> u32 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u32
}

/// Runs unprivileged. Touches only user-accessible memory and the test device's MMIO page.
extern "C" fn user_main(task: usize) -> ! {
    // SAFETY: `task` is TASK and BUF is this code's alone while the kernel waits in `enter`.
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
    if task.sink != 0 {
        for i in 0..task.writes {
            // SAFETY: the test device's MMIO page is mapped user-accessible; SINK writes only
            // count.
            unsafe { cpu::mmio_write32(task.sink, i) };
            task.done_writes = i + 1;
        }
    }
    if task.console != 0 {
        for s in [user::LEVEL, ": hello from ", user::WHERE, "\n"] {
            for b in s.bytes() {
                // SAFETY: as above; CONSOLE prints one byte per write.
                unsafe { cpu::mmio_write32(task.console, u32::from(b)) };
            }
        }
    }
    user::call(USER_DONE, 0, 0);
    unreachable!("the unprivileged loop was resumed after it finished")
}

/// The `cpl3[=N]` (`el0[=N]`) command.
pub fn run(writes: u32) {
    let level = user::LEVEL;
    let (sink, console) = (testdev::sink_addr(), testdev::console_addr());
    // SAFETY: nothing runs unprivileged; the kernel owns TASK.
    unsafe {
        *TASK.get() = UserTask {
            writes,
            sink: sink.unwrap_or(0),
            console: console.unwrap_or(0),
            ..TASK_INIT
        };
    }
    // SAFETY: no task runs; the log is the kernel's (reset in case the user code panics).
    unsafe { (*LOG.get()).len = 0 };
    let present = testdev::present();
    let before = testdev::sink_count();
    // SAFETY: user_main touches only TASK, BUF and the MMIO page, and comes back by `call`.
    let result = unsafe { user::enter(user_main, TASK.get() as usize) };
    let after = testdev::sink_count();
    // SAFETY: back in the kernel; the user code has finished with TASK.
    let task = unsafe { &*TASK.get() };
    if result != USER_DONE {
        crate::fail!(
            "{}: returned {:#x}, expected {:#x}",
            level,
            result,
            USER_DONE
        );
    }
    if task.check != 0xcbf4_3926 {
        crate::fail!(
            "{}: crc32 check value {:#x}, expected 0xcbf43926",
            level,
            task.check
        );
    }
    if task.primes != 1229 {
        crate::fail!(
            "{}: counted {} primes below 10000, expected 1229",
            level,
            task.primes
        );
    }
    // SAFETY: the user code has finished with BUF.
    let crc0 = crc32(unsafe { &*BUF.get() });
    if crc0 != task.crc {
        crate::fail!(
            "{}: crc32 unprivileged {:#x}, in the kernel {:#x}",
            level,
            task.crc,
            crc0
        );
    }
    let done = if sink.is_some() { writes } else { 0 };
    if task.done_writes != done {
        crate::fail!(
            "{}: {} of {} MMIO writes done",
            level,
            task.done_writes,
            done
        );
    }
    if present {
        let counted = after.wrapping_sub(before);
        if counted != writes {
            crate::fail!(
                "{}: sink counted {} MMIO writes, expected {}",
                level,
                counted,
                writes
            );
        }
        println!(
            "{}: ok (crc32 {:#010x} over {} bytes, {} primes, {} mmio writes, sink={})",
            level, task.crc, BUF_LEN, task.primes, writes, after
        );
    } else {
        println!(
            "{}: ok (crc32 {:#010x} over {} bytes, {} primes, {} mmio writes, sink=absent)",
            level, task.crc, BUF_LEN, task.primes, done
        );
    }
}

/// The task is over; a0: its result (returned by [`run_task`]).
pub const SYS_EXIT: u64 = 1;
/// Print the log buffer.
pub const SYS_FLUSH: u64 = 2;
/// Halt until an interrupt: a0 = deadline (`arch::time::ticks`), a1 = the value of
/// `arch::irq::INTERRUPTS` the caller last saw (no wait if it has moved since: no lost
/// wake-ups).
pub const SYS_WAIT: u64 = 3;
/// A panic unprivileged; its message is in the log.
pub const SYS_PANIC: u64 = 4;

const LOG_LEN: usize = 8192;
/// Room a line may need; the log is flushed before writing when less is left.
const LOG_LINE_ROOM: usize = 512;

/// Output of the unprivileged code, printed by the kernel.
pub struct Log {
    len: usize,
    buf: [u8; LOG_LEN],
}

/// Written only unprivileged while a task runs, read (and emptied) only by the kernel during
/// a call.
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

/// Appends one line to the log (unprivileged), flushing it first when it is nearly full.
pub fn log_line(args: core::fmt::Arguments) {
    // SAFETY: the log is the running task's until it calls into the kernel (which `flush`
    // does before the log is touched again).
    unsafe {
        if (*LOG.get()).len + LOG_LINE_ROOM > LOG_LEN {
            flush();
        }
        let log = &mut *LOG.get();
        let _ = core::fmt::Write::write_fmt(log, args);
        let _ = core::fmt::Write::write_str(log, "\n");
    }
}

/// Prints the log now (unprivileged).
pub fn flush() {
    user::call(SYS_FLUSH, 0, 0);
}

/// Ends the task with `result` (unprivileged).
pub fn exit(result: u64) -> ! {
    user::call(SYS_EXIT, result, 0);
    unreachable!("a task was resumed after it exited")
}

/// Halts in the kernel until an interrupt arrives or `deadline` passes, unless one arrived
/// since the caller read `arch::irq::INTERRUPTS` as `seen` (unprivileged).
pub fn wait(deadline: u64, seen: u64) {
    user::call(SYS_WAIT, deadline, seen);
}

/// The panic handler's path unprivileged: the message into the log, then [`SYS_PANIC`].
pub fn panic_in_user(info: &core::panic::PanicInfo) -> ! {
    log_line(format_args!(
        "trapvisor-guest: panic at {}: {}",
        user::LEVEL_NAME,
        info
    ));
    user::call(SYS_PANIC, 0, 0);
    unreachable!("a task was resumed after it panicked")
}

/// Prints the log on the console and empties it (kernel).
fn print_log() {
    // SAFETY: the task is stopped in a call (or over): the kernel owns the log now.
    let log = unsafe { &mut *LOG.get() };
    for line in log.buf[..log.len].split(|&b| b == b'\n') {
        if !line.is_empty() {
            arch::serial::print_bytes_line(line);
        }
    }
    log.len = 0;
}

/// Runs `entry(arg)` unprivileged until it calls [`SYS_EXIT`], handling its calls; returns its
/// result. The log is printed whenever the task asks and when it ends.
pub fn run_task(entry: extern "C" fn(usize) -> !, arg: usize) -> u64 {
    // SAFETY: nothing else uses the log while no task runs.
    unsafe { (*LOG.get()).len = 0 };
    // SAFETY: the task touches only user-accessible memory and MMIO, and comes back by `call`.
    let mut number = unsafe { user::enter(entry, arg) };
    loop {
        let (a0, a1) = user::call_args();
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
                arch::irq::wait_until(a0, a1);
                0
            }
            SYS_PANIC => {
                print_log();
                crate::fail!("panic at {} (see the line above)", user::LEVEL_NAME);
            }
            other => crate::fail!(
                "{} task made an unknown call {:#x}",
                user::LEVEL_NAME,
                other
            ),
        };
        // SAFETY: the task is stopped in `call`; `resume` continues it there.
        number = unsafe { user::resume(reply) };
    }
}
