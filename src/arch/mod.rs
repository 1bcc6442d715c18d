//! Architecture support: one folder per architecture, picked here once.
//!
//! Everything outside `arch/` is the same on every host; what differs sits behind this small
//! boundary, which `x86_64/` and `aarch64/` both provide with the same names and signatures:
//!
//! | step | function | x86_64 | aarch64 |
//! |---|---|---|---|
//! | memory layout | [`ram_regions`], [`pci_layout`], [`MAX_VCPUS`] | RAM from 0 around the 32-bit hole | RAM from 2 GiB, MMIO below |
//! | VM setup | [`setup_vm`] (after RAM, before vCPUs) | TSS, identity map, IOAPIC/PIC, PIT | nothing yet |
//! | vCPUs and irqchip | [`setup_vcpus`] → [`Machine`] (after every vCPU exists) | nothing more | `KVM_ARM_VCPU_INIT`, GICv3 + ITS, PMU, MPIDRs |
//! | interrupts | [`LEGACY_GSIS`], [`default_gsi_routes`] | IOAPIC + PIC pins | one SPI per GSI |
//! | platform devices | [`register_devices`], [`attach_pci`] | COM1, i8042, ACPI PM, pvpanic, debug-exit and test device on ports; conf1 | 16550, PL031, pvpanic, test device on MMIO |
//! | boot | [`load_kernel`] (kernel, initrd, command line, boot tables), [`configure_vcpu`] | bzImage/ELF/PVH, zero page, ACPI | arm64 `Image`, FDT |
//! | failure report | [`vcpu_report`] | registers, code at RIP | PC, PSTATE, ESR, X0–X30 |
//! | map | [`map_lines`] (`--print-map`, `GET /map`) | — | GIC frames, kernel, FDT |
//! | seccomp | [`seccomp`] | x86_64 syscall numbers | aarch64 syscall numbers |
//!
//! The pure parts of the aarch64 code (layout, FDT, `Image` header, devices) build on every
//! host, so their unit tests run on x86_64 too; the parts that call arm64-only KVM ioctls build
//! only on aarch64.
use vm_memory::GuestAddress;

pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
use self::x86_64 as host;

#[cfg(target_arch = "aarch64")]
use self::aarch64 as host;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("trapvisor runs on x86_64 and aarch64 hosts");

pub use host::{
    attach_pci, configure_vcpu, default_gsi_routes, load_kernel, map_lines, pci_layout,
    ram_regions, register_devices, seccomp, setup_vcpus, setup_vm, vcpu_report, ArchError,
    BootEntry, Machine, LEGACY_GSIS, MAX_VCPUS,
};

/// The name of the architecture this build runs guests of ("x86_64", "aarch64").
pub const NAME: &str = host::NAME;

/// A guest physical range `[start, end)` that PCI BARs may not take, with what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub start: u64,
    pub end: u64,
    pub what: &'static str,
}

/// Where PCI lives in guest physical memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciLayout {
    /// The ECAM window of bus 0 (1 MiB).
    pub ecam_start: u64,
    pub ecam_size: u64,
    /// The 32-bit BAR window.
    pub mmio32_start: u64,
    pub mmio32_size: u64,
    /// The 64-bit BAR window, above RAM.
    pub mmio64_start: u64,
    pub mmio64_size: u64,
    /// Ranges BARs may not overlap: guest RAM, the ECAM window, the interrupt controller, ...
    pub reserved: Vec<Reserved>,
}

/// What the guest boots.
pub enum KernelSource<'a> {
    /// A kernel file: bzImage or ELF vmlinux on x86_64, an arm64 `Image` on aarch64.
    File(&'a mut std::fs::File),
    /// The built-in guest's image, held in memory (`crate::guest`).
    Builtin(&'a [u8]),
    /// A flat real-mode image copied to `load_addr` and started at `cs:ip` (x86_64 only:
    /// purpose-made test guests).
    RealMode {
        image: &'a [u8],
        load_addr: u64,
        cs: u16,
        ip: u16,
    },
}

/// Everything the loader needs besides guest memory.
pub struct BootConfig<'a> {
    pub kernel: KernelSource<'a>,
    pub initrd: Option<&'a mut std::fs::File>,
    pub cmdline: &'a str,
    /// Total guest RAM in bytes (see [`ram_regions`]).
    pub mem_size: u64,
    /// What [`setup_vcpus`] made: the vCPUs (their number and ids) and the interrupt
    /// controller, for the boot tables.
    pub machine: &'a Machine,
    /// The legacy PC devices (x86_64: the i8042 and the CMOS RTC in the boot tables); off with
    /// `--no-legacy`.
    /// Nothing on aarch64 is legacy.
    pub legacy: bool,
    /// When given, the loader marks its phases here (x86_64: `kernel`, `initrd`, `acpi+boot
    /// tables`; aarch64: `kernel`, `initrd`, `fdt`; see `trace::phases`).
    pub phases: Option<&'a mut crate::trace::phases::StartPhases>,
}

/// A guest RAM range: its start and length.
pub type RamRegion = (GuestAddress, usize);

/// A piece of the guest physical map that is not a bus range (interrupt controller frames,
/// boot tables), for `--print-map` and `GET /map`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapLine {
    pub base: u64,
    pub size: u64,
    /// What it is: "gic-dist", "fdt", ...
    pub name: String,
    /// How the guest reaches it, or what handles it: "in-kernel (KVM)", "guest RAM", ...
    pub what: String,
}
