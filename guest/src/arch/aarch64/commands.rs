//! The aarch64 side of the commands (see `crate::commands`): what `hello` adds, the MMIO write
//! loop, `idle`, and the commands that do not exist here (`pio-loop`: no port I/O;
//! `triple-fault`: an x86 shutdown).
use core::arch::asm;

use super::{boot, psci, serial, testdev, time, BootInfo};
use crate::cmdline::Command;
use crate::println;

/// What an empty command line runs.
pub const DEFAULT: &str = "hello mmio-loop=1000 el0";

/// Why `command` cannot run on aarch64 (None: it can).
pub fn unsupported(command: &Command) -> Option<&'static str> {
    match command {
        Command::PioLoop(_) => Some("no port I/O on aarch64 (use mmio-loop)"),
        Command::TripleFault => Some("no triple fault on aarch64 (use reboot or exit=N)"),
        Command::Rtc => Some("no CMOS RTC on aarch64"),
        _ => None,
    }
}

/// `hello`'s lines about the boot protocol and the machine.
pub fn hello(info: &BootInfo) {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effect.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    let uart = match info.uart {
        serial::Kind::Ns16550 { base, .. } => ("ns16550a", base),
        serial::Kind::Pl011 { base } => ("pl011", base),
        serial::Kind::None => ("none", 0),
    };
    println!(
        "boot: arm64 Image at {:#x} ({} KiB) entered at EL{}, fdt {:#x} ({} bytes), {} MiB RAM in {} range(s) up to {:#x}",
        info.image_paddr,
        boot::image_size() >> 10,
        (el >> 2) & 3,
        info.fdt_paddr,
        info.fdt_size,
        info.ram_bytes >> 20,
        info.ram_ranges,
        info.ram_top
    );
    let (major, minor) = psci::version().unwrap_or((0, 0));
    println!(
        "machine: {} cpus, gicv3 dist {:#x} redist {:#x}, its {}, uart {} at {:#x}, psci {}.{} via {}, timer intid {} at {} kHz, pci ecam {}, testdev {}",
        info.cpus_listed,
        info.gic_dist,
        info.gic_redist.0,
        Hex(info.its),
        uart.0,
        uart.1,
        major,
        minor,
        psci::conduit().unwrap_or("none"),
        info.timer_intid,
        time::ticks_khz().0,
        Hex(info.pci.map(|p| p.ecam)),
        Hex(info.testdev)
    );
}

/// `0x…` or `none`.
struct Hex(Option<u64>);

impl core::fmt::Display for Hex {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{:#x}", v),
            None => f.write_str("none"),
        }
    }
}

/// Not on aarch64 (refused by [`unsupported`] before anything runs).
pub fn pio_loop(_n: u32) {
    crate::fail!("pio-loop: no port I/O on aarch64");
}

/// N 32-bit MMIO writes of 0 to the test device's SINK register, in a tight loop (none
/// without a test device).
pub fn sink_writes(n: u32) {
    let Some(sink) = testdev::sink_addr() else {
        return;
    };
    if n == 0 {
        return;
    }
    // SAFETY: MMIO writes to the test device's SINK register (device memory in the identity
    // map), which only counts them. `str` with a plain base register: a store KVM can decode.
    unsafe {
        asm!(
            "2:",
            "str wzr, [{addr}]",
            "subs {n:w}, {n:w}, #1",
            "b.ne 2b",
            addr = in(reg) sink,
            n = inout(reg) n => _,
            options(nostack),
        )
    }
}

/// `idle`: wait for interrupts forever (they stay masked: nothing is taken).
pub fn idle() -> ! {
    println!("idle: waiting in wfi");
    super::cpu::halt_forever()
}

/// Not on aarch64 (refused by [`unsupported`] before anything runs).
pub fn triple_fault() -> ! {
    crate::fail!("triple-fault: not on aarch64");
}

/// `poweroff`: PSCI SYSTEM_OFF.
pub fn poweroff() -> ! {
    println!("poweroff: psci system_off");
    testdev::power(true)
}

/// `reboot`: PSCI SYSTEM_RESET.
pub fn reboot() -> ! {
    println!("reboot: psci system_reset");
    testdev::power(false)
}

/// `rtc` is refused before any command runs (see `unsupported`).
pub fn rtc() {
    crate::fail!("rtc: no CMOS RTC on aarch64")
}
