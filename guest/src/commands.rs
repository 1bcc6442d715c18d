//! Runs the command line (see `cmdline`): every word is checked first, then each runs in
//! order; after the last, PASS.
use core::arch::asm;

use crate::cmdline::{self, Command, ParseError};
use crate::pvh::BootInfo;
use crate::{cpu, drivers, idt, pci, println, smp, testdev, user};

/// Parses and runs `line` (empty: [`cmdline::DEFAULT`]); never returns.
pub fn run_all(info: &BootInfo) -> ! {
    let raw = match core::str::from_utf8(info.cmdline()) {
        Ok(s) => s,
        Err(_) => crate::fail!("the command line is not UTF-8"),
    };
    let line = if raw.trim().is_empty() {
        cmdline::DEFAULT
    } else {
        raw
    };
    for word in cmdline::words(line) {
        match cmdline::parse(word) {
            Ok(Command::Net(n)) => crate::net::configure(&n),
            Ok(_) => {}
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
    for word in cmdline::words(line) {
        if let Ok(command) = cmdline::parse(word) {
            run(command, info, raw);
        }
    }
    testdev::pass()
}

fn run(command: Command, info: &BootInfo, raw: &str) {
    match command {
        Command::Hello => hello(info, raw),
        Command::PioLoop(n) => pio_loop(n),
        Command::MmioLoop(n) => mmio_loop(n),
        Command::Cpl3(n) => user::run(n),
        Command::Idle => idle(),
        Command::TripleFault => {
            println!("triple-fault: now");
            idt::triple_fault()
        }
        Command::Smp => smp::run(info.rsdp_paddr),
        Command::Pci => {
            pci::list(info.rsdp_paddr);
        }
        Command::Rng => drivers::rng::run(info.rsdp_paddr),
        Command::Exit(code) => {
            println!("exit: reporting {}", code);
            testdev::exit(code)
        }
        Command::Fail => crate::fail!("fail requested on the command line"),
        Command::Net(n) => crate::net::run(n, info),
    }
}

fn hello(info: &BootInfo, raw: &str) {
    println!("trapvisor-guest: hello");
    if raw.is_empty() {
        println!("cmdline: (empty: running \"{}\")", cmdline::DEFAULT);
    } else {
        println!("cmdline: {}", raw);
    }
    println!(
        "start info: {:#x} version {}, rsdp {:#x}, {} memory map entries, {} MiB RAM, {} APIC",
        info.start_info_paddr,
        info.version,
        info.rsdp_paddr,
        info.memmap_entries,
        info.ram_bytes >> 20,
        if crate::apic::is_x2apic() { "x2" } else { "x" }
    );
}

/// Checks a SINK count after `n` writes and prints the result line.
fn report_sink(what: &str, n: u32, present: bool, before: u32, after: u32) {
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

fn pio_loop(n: u32) {
    let present = testdev::present();
    let before = testdev::sink_pio();
    if n > 0 {
        // SAFETY: port writes to the test device's SINK register, which only counts them.
        unsafe {
            asm!(
                "2:",
                "out dx, eax",
                "dec ecx",
                "jnz 2b",
                in("dx") testdev::SINK_PORT,
                in("eax") 0u32,
                inout("ecx") n => _,
                options(nomem, nostack),
            )
        }
    }
    let after = testdev::sink_pio();
    report_sink("pio-loop", n, present, before, after);
}

fn mmio_loop(n: u32) {
    let present = testdev::present();
    let before = testdev::sink_mmio();
    if n > 0 {
        // SAFETY: MMIO writes to the test device's SINK register (identity-mapped, uncached),
        // which only counts them.
        unsafe {
            asm!(
                "2:",
                "mov dword ptr [{addr}], eax",
                "dec ecx",
                "jnz 2b",
                addr = in(reg) testdev::SINK_MMIO,
                in("eax") 0u32,
                inout("ecx") n => _,
                options(nostack),
            )
        }
    }
    let after = testdev::sink_mmio();
    report_sink("mmio-loop", n, present, before, after);
}

fn idle() -> ! {
    println!("idle: halted with interrupts on");
    loop {
        cpu::sti_hlt();
    }
}
