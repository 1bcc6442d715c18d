//! What the guest reports: lines on the console (`println!`), lines from unprivileged tasks
//! (`ulog!`), and the verdict (`pass`, `fail!`), which goes to the VMM through the arch's exit
//! device (`arch::testdev::exit`).
use core::fmt;

use crate::arch;

/// Prints the PASS line and exits with 0.
pub fn pass() -> ! {
    crate::println!("trapvisor-guest: PASS");
    arch::testdev::exit(0)
}

/// Prints `trapvisor-guest: FAIL: <reason>` and exits with 1.
pub fn fail(reason: fmt::Arguments) -> ! {
    crate::println!("trapvisor-guest: FAIL: {}", reason);
    arch::testdev::exit(1)
}

/// [`fail`] for the fatal path (exceptions, panics): prints without taking the console lock.
pub fn fail_unlocked(reason: fmt::Arguments) -> ! {
    arch::serial::print_line_unlocked(format_args!("trapvisor-guest: FAIL: {}", reason));
    arch::testdev::exit(1)
}

/// `println!` to the console, one line at a time (lines of different CPUs never mix).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::arch::serial::print_line(format_args!($($arg)*))
    };
}

/// `fail!("...", args)`: FAIL with a formatted reason.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        $crate::report::fail(format_args!($($arg)*))
    };
}

/// `ulog!("...", args)`: one line of output from an unprivileged task (see `arch::user`).
#[macro_export]
macro_rules! ulog {
    ($($arg:tt)*) => {
        $crate::task::log_line(format_args!($($arg)*))
    };
}

/// The address of an assembly symbol.
#[macro_export]
macro_rules! sym_addr {
    ($sym:path) => {
        core::ptr::addr_of!($sym) as u64
    };
}
