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

/// CMOS registers (MC146818).
const RTC_INDEX: u16 = 0x70;
const RTC_DATA: u16 = 0x71;
const RTC_A_UIP: u8 = 0x80;
const RTC_B_BINARY: u8 = 0x04;
const RTC_B_24H: u8 = 0x02;

fn cmos(reg: u8) -> u8 {
    cpu::outb(RTC_INDEX, reg);
    cpu::inb(RTC_DATA)
}

/// The clock registers (seconds, minutes, hours, day, month, year, century), read after an
/// update-in-progress has passed.
fn cmos_time() -> [u8; 7] {
    let mut spins = 0u32;
    while cmos(0x0a) & RTC_A_UIP != 0 && spins < 1_000_000 {
        spins += 1;
    }
    [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(cmos)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// The `rtc` command: the date from the CMOS RTC (as Linux's `mach_get_cmos_time` reads it:
/// twice, until two reads agree), in the format register B says.
pub fn rtc() {
    // Nothing at the ports (a VMM without an RTC, as trapvisor with --no-legacy) reads all-ones;
    // an MC146818's register A never does (its divider bits are 010 when it runs).
    if cmos(0x0a) == 0xff {
        crate::fail!("rtc: no CMOS RTC (register A reads 0xff)");
    }
    let mut t = cmos_time();
    for _ in 0..10 {
        let again = cmos_time();
        if again == t {
            break;
        }
        t = again;
    }
    let b = cmos(0x0b);
    let valid = cmos(0x0d) & 0x80 != 0;
    let bcd = b & RTC_B_BINARY == 0;
    let dec = |v: u8| -> i64 {
        if bcd {
            i64::from((v >> 4) * 10 + (v & 0x0f))
        } else {
            i64::from(v)
        }
    };
    let mut hour = dec(t[2] & 0x7f);
    if b & RTC_B_24H == 0 {
        hour = hour % 12 + if t[2] & 0x80 != 0 { 12 } else { 0 };
    }
    let (sec, min, day, mon) = (dec(t[0]), dec(t[1]), dec(t[3]), dec(t[4]));
    let year = dec(t[6]) * 100 + dec(t[5]);
    let sane = valid
        && sec < 60
        && min < 60
        && hour < 24
        && (1..=31).contains(&day)
        && (1..=12).contains(&mon)
        && year >= 1970;
    if !sane {
        crate::fail!(
            "rtc: registers {:02x?} (B {:#04x}, valid {}) are not a date",
            t,
            b,
            valid
        );
    }
    let epoch = days_from_civil(year, mon, day) * 86_400 + hour * 3600 + min * 60 + sec;
    println!(
        "rtc: {:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z epoch={} mode={},{}",
        year,
        mon,
        day,
        hour,
        min,
        sec,
        epoch,
        if bcd { "bcd" } else { "binary" },
        if b & RTC_B_24H != 0 { "24h" } else { "12h" }
    );
}
