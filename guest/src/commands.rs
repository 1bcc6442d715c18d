//! Runs the command line (see `cmdline`): every word is checked first, then each runs in
//! order; after the last, PASS.
use crate::arch::{self, testdev, BootInfo};
use crate::cmdline::{self, Command, ParseError};
use crate::{drivers, pci, println, report};

/// Parses and runs the command line (empty, or only kernel parameters: [`cmdline::DEFAULT`]);
/// never returns.
pub fn run_all(info: &BootInfo) -> ! {
    let raw = match core::str::from_utf8(info.cmdline()) {
        Ok(s) => s,
        Err(_) => crate::fail!("the command line is not UTF-8"),
    };
    let (mut commands, mut ignored) = (0, 0);
    for word in cmdline::words(raw) {
        match cmdline::classify(word) {
            Ok(Some(Command::Net(n))) => {
                crate::net::configure(&n);
                commands += 1;
            }
            Ok(Some(Command::Blk(b))) => {
                crate::blk::configure(&b);
                commands += 1;
            }
            Ok(Some(c)) => {
                if let Some(why) = arch::commands::unsupported(&c) {
                    println!("unsupported command: {}", word);
                    crate::fail!("{}: {}", word, why);
                }
                commands += 1;
            }
            Ok(None) => ignored += 1,
            Err(ParseError::Unknown(w)) => {
                println!("unknown command: {}", w);
                crate::fail!("unknown command: {}", w);
            }
            Err(ParseError::BadValue(w)) => {
                println!("bad value: {}", w);
                crate::fail!("bad value: {}", w);
            }
        }
    }
    if ignored > 0 {
        println!(
            "trapvisor-guest: ignored kernel parameters: {}",
            cmdline::Ignored(raw)
        );
    }
    // Nothing but kernel parameters (Firecracker's default boot arguments): the default run.
    let line = if commands == 0 { cmdline::DEFAULT } else { raw };
    for word in cmdline::words(line) {
        if let Ok(Some(command)) = cmdline::classify(word) {
            run(command, info, raw);
        }
    }
    report::pass()
}

fn run(command: Command, info: &BootInfo, raw: &str) {
    match command {
        Command::Hello => hello(info, raw),
        Command::PioLoop(n) => arch::commands::pio_loop(n),
        Command::MmioLoop(n) => mmio_loop(n),
        Command::Cpl3(n) => crate::task::run(n),
        Command::Idle => arch::commands::idle(),
        Command::TripleFault => arch::commands::triple_fault(),
        Command::Smp => arch::smp::run(info),
        Command::Pci => {
            pci::list(info);
        }
        Command::Rng => drivers::rng::run(info),
        Command::Rtc => arch::commands::rtc(),
        Command::PowerOff => arch::commands::poweroff(),
        Command::Reboot => arch::commands::reboot(),
        Command::Exit(code) => {
            println!("exit: reporting {}", code);
            testdev::exit(code)
        }
        Command::Fail => crate::fail!("fail requested on the command line"),
        Command::Net(n) => crate::net::run(n, info),
        Command::Blk(b) => crate::blk::run(b, info),
    }
}

fn hello(info: &BootInfo, raw: &str) {
    println!("trapvisor-guest: hello");
    if raw.is_empty() {
        println!("cmdline: (empty: running \"{}\")", cmdline::DEFAULT);
    } else {
        println!("cmdline: {}", raw);
    }
    arch::commands::hello(info);
}

/// Checks a SINK count after `n` writes and prints the result line.
pub fn report_sink(what: &str, n: u32, present: bool, before: u32, after: u32) {
    if !present || after == testdev::ABSENT {
        println!("{}: {} exits, sink=absent", what, n);
        return;
    }
    let counted = after.wrapping_sub(before);
    println!("{}: {} exits, sink={}", what, n, after);
    if counted != n {
        crate::fail!("{}: sink counted {} writes, expected {}", what, counted, n);
    }
}

/// `mmio-loop=N`: N 32-bit MMIO writes to the test device's SINK register.
fn mmio_loop(n: u32) {
    let present = testdev::present();
    let before = testdev::sink_mmio();
    arch::commands::sink_writes(n);
    let after = testdev::sink_mmio();
    report_sink("mmio-loop", n, present, before, after);
}
