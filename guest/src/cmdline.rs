//! The command line: space-separated words, each one command.
//!
//! An empty command line runs [`DEFAULT`]. Every word is parsed before any runs, so a typo fails
//! the guest before it does anything. Words meant for a Linux kernel, which other VMMs put on
//! every command line (Firecracker appends `pci=off` and boots with `reboot=k panic=1
//! 8250.nr_uarts=0 i8042.noaux ...`), are passed over ([`classify`]): a known kernel option, or
//! a key with a dot (a module parameter) outside the guest's own `net.` commands. Anything else
//! that is not a command still fails.

/// The sequence run for an empty command line (per arch: x86 has port I/O, aarch64 does not).
pub const DEFAULT: &str = crate::arch::commands::DEFAULT;
/// Default count for `pio-loop`, `mmio-loop` and `cpl3` without `=N`.
pub const DEFAULT_COUNT: u32 = 1000;

/// One command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `hello`: greet and echo the command line.
    Hello,
    /// `pio-loop=N`: N 32-bit `out`s to the test device's SINK port.
    PioLoop(u32),
    /// `mmio-loop=N`: N 32-bit MMIO writes to the test device's SINK register.
    MmioLoop(u32),
    /// `cpl3[=N]` (or `el0[=N]`, its aarch64 name): compute unprivileged (CPL3, EL0), N MMIO
    /// SINK writes and a console line from there.
    Cpl3(u32),
    /// `idle`: `sti; hlt` forever.
    Idle,
    /// `triple-fault`: shut the VM down by a triple fault.
    TripleFault,
    /// `smp`: start every AP in the MADT.
    Smp,
    /// `pci`: list PCI bus 0 (functions, BARs, capabilities).
    Pci,
    /// `rng`: list bus 0, then read random bytes from a virtio-rng device.
    Rng,
    /// `rtc`: read the date from the CMOS RTC (x86).
    Rtc,
    /// `poweroff`: PSCI SYSTEM_OFF (aarch64).
    PowerOff,
    /// `reboot`: PSCI SYSTEM_RESET (aarch64).
    Reboot,
    /// `exit=N`: report N through the debug-exit port at once.
    Exit(u32),
    /// `fail`: FAIL on purpose.
    Fail,
    /// `net.*`: virtio-net and the IPv4 stack (see `net`).
    Net(crate::net::NetCommand),
    /// `blk.*`: virtio-blk (see `blk`).
    Blk(crate::blk::BlkCommand),
}

/// Why a word is not a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    Unknown(&'a str),
    BadValue(&'a str),
}

/// The words of a command line.
pub fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split_ascii_whitespace()
}

/// Parses a decimal or `0x` hexadecimal u32.
fn number(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Parses one word.
pub fn parse(word: &str) -> Result<Command, ParseError<'_>> {
    if word.starts_with("net.") {
        return crate::net::parse(word).map(Command::Net);
    }
    if word.starts_with("blk.") {
        return crate::blk::parse(word).map(Command::Blk);
    }
    let (name, value) = match word.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (word, None),
    };
    let count = |default: Option<u32>| -> Result<u32, ParseError<'_>> {
        match value {
            Some(v) => number(v).ok_or(ParseError::BadValue(word)),
            None => default.ok_or(ParseError::BadValue(word)),
        }
    };
    let no_value = |c: Command| -> Result<Command, ParseError<'_>> {
        match value {
            None => Ok(c),
            Some(_) => Err(ParseError::BadValue(word)),
        }
    };
    match name {
        "hello" => no_value(Command::Hello),
        "pio-loop" => Ok(Command::PioLoop(count(Some(DEFAULT_COUNT))?)),
        "mmio-loop" => Ok(Command::MmioLoop(count(Some(DEFAULT_COUNT))?)),
        "cpl3" | "el0" => Ok(Command::Cpl3(count(Some(DEFAULT_COUNT))?)),
        "idle" => no_value(Command::Idle),
        "triple-fault" => no_value(Command::TripleFault),
        "smp" => no_value(Command::Smp),
        "pci" => no_value(Command::Pci),
        "rng" => no_value(Command::Rng),
        "rtc" => no_value(Command::Rtc),
        "poweroff" => no_value(Command::PowerOff),
        "reboot" => no_value(Command::Reboot),
        "exit" => Ok(Command::Exit(count(None)?)),
        "fail" => no_value(Command::Fail),
        _ => Err(ParseError::Unknown(word)),
    }
}

/// Kernel options (the part before `=`) a VMM or a user may put on a Linux command line; the
/// guest passes over them when they are not one of its own commands in a form it accepts
/// (`pci` lists the bus, `pci=off` is Linux's; `idle` halts, `idle=poll` is Linux's).
const KERNEL_OPTIONS: &[&str] = &[
    "acpi",
    "apic",
    "audit",
    "clocksource",
    "console",
    "crashkernel",
    "debug",
    "earlycon",
    "earlyprintk",
    "hugepages",
    "idle",
    "ignore_loglevel",
    "init",
    "initcall_debug",
    "initrd",
    "iommu",
    "ip",
    "isolcpus",
    "keep_bootcon",
    "kpti",
    "loglevel",
    "lpj",
    "maxcpus",
    "mem",
    "memmap",
    "mitigations",
    "net.ifnames",
    "nfsroot",
    "no-kvmapf",
    "no-kvmclock",
    "no_timer_check",
    "noapic",
    "noexec",
    "nohz",
    "noinitrd",
    "nokaslr",
    "nolapic",
    "nomce",
    "nomodeset",
    "nomodule",
    "nopti",
    "noreplace-smp",
    "nosmp",
    "nosmt",
    "notsc",
    "nowatchdog",
    "nox2apic",
    "nr_cpus",
    "panic",
    "panic_on_warn",
    "pci",
    "possible_cpus",
    "pti",
    "quiet",
    "rcu_nocbs",
    "rdinit",
    "reboot",
    "ro",
    "root",
    "rootdelay",
    "rootflags",
    "rootfstype",
    "rootwait",
    "rw",
    "security",
    "selinux",
    "swiotlb",
    "transparent_hugepage",
    "tsc",
    "vga",
    "video",
];

/// Whether `word` is a parameter for a Linux kernel rather than a command: its key (before `=`)
/// is in [`KERNEL_OPTIONS`], or has a dot (`8250.nr_uarts=0`, `i8042.noaux`: module
/// parameters) and is not one of the guest's `net.` or `blk.` commands.
pub fn is_kernel_param(word: &str) -> bool {
    let key = word.split_once('=').map_or(word, |(k, _)| k);
    if key.is_empty() {
        return false;
    }
    KERNEL_OPTIONS.contains(&key)
        || (key.contains('.') && !key.starts_with("net.") && !key.starts_with("blk."))
}

/// A command, `None` for a kernel parameter to pass over (see [`is_kernel_param`]), or why the
/// word is neither: one of the guest's own commands always wins when it parses.
pub fn classify(word: &str) -> Result<Option<Command>, ParseError<'_>> {
    match parse(word) {
        Ok(c) => Ok(Some(c)),
        Err(_) if is_kernel_param(word) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The kernel parameters of a command line, space-separated, for the one line that says which
/// were passed over.
pub struct Ignored<'a>(pub &'a str);

impl core::fmt::Display for Ignored<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for w in words(self.0).filter(|w| matches!(classify(w), Ok(None))) {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(w)?;
            first = false;
        }
        Ok(())
    }
}
