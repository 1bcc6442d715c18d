//! The x86 side of the commands (see `crate::commands`): what `hello` adds, `pio-loop`, the
//! MMIO write loop, `idle` and `triple-fault`.
use core::arch::asm;

use super::{apic, cpu, idt, testdev, BootInfo};
use crate::cmdline::Command;
use crate::commands::report_sink;
use crate::println;

/// What an empty command line runs.
pub const DEFAULT: &str = "hello pio-loop=1000 mmio-loop=1000 cpl3";

/// Why `command` cannot run on x86 (None: it can).
pub fn unsupported(command: &Command) -> Option<&'static str> {
    match command {
        Command::PowerOff | Command::Reboot => {
            Some("no PSCI on x86_64 (use exit=N or triple-fault)")
        }
        _ => None,
    }
}

/// `hello`'s line about the boot protocol and the machine.
pub fn hello(info: &BootInfo) {
    println!(
        "start info: {:#x} version {}, rsdp {:#x}, {} memory map entries, {} MiB RAM, {} APIC",
        info.start_info_paddr,
        info.version,
        info.rsdp_paddr,
        info.memmap_entries,
        info.ram_bytes >> 20,
        if apic::is_x2apic() { "x2" } else { "x" }
    );
}

/// `pio-loop=N`: N 32-bit `out`s to the test device's SINK port.
pub fn pio_loop(n: u32) {
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

/// N 32-bit MMIO writes of 0 to the test device's SINK register, in a tight loop.
pub fn sink_writes(n: u32) {
    if n == 0 {
        return;
    }
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

/// `idle`: `sti; hlt` forever.
pub fn idle() -> ! {
    println!("idle: halted with interrupts on");
    loop {
        cpu::sti_hlt();
    }
}

/// `triple-fault`: shut the VM down by a triple fault.
pub fn triple_fault() -> ! {
    println!("triple-fault: now");
    idt::triple_fault()
}

/// Not on x86 (refused by [`unsupported`] before anything runs).
pub fn poweroff() -> ! {
    crate::fail!("poweroff: not on x86_64");
}

/// Not on x86 (refused by [`unsupported`] before anything runs).
pub fn reboot() -> ! {
    crate::fail!("reboot: not on x86_64");
}
