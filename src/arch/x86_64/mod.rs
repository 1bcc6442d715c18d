//! x86_64 boot: memory layout, kernel loading (bzImage, ELF/PVH, raw real-mode images), boot
//! tables (e820, hvm_start_info, ACPI), CPUID and the boot state of each vCPU.
//!
//! CONTRACT (used by `kvm::vm`, `kvm::vcpu` and `vmm`): the functions below keep these
//! signatures.
pub mod layout;

use std::fs::File;

use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors of the boot code.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("not implemented yet: {0}")]
    Unimplemented(&'static str),
}

/// How the boot vCPU starts executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode with identity paging, RSI = zero page.
    Linux64 { entry: GuestAddress },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh { entry: GuestAddress },
    /// Real mode at CS:IP (purpose-made test guests).
    RealMode { cs: u16, ip: u16 },
}

/// What the guest boots.
pub enum KernelSource<'a> {
    /// A bzImage or ELF vmlinux (PVH note required for ELF) from a file.
    File(&'a mut File),
    /// An ELF with a PVH note held in memory (the built-in guest).
    PvhElf(&'a [u8]),
    /// A flat real-mode image copied to `load_addr` and started at `cs:ip`.
    RealMode { image: &'a [u8], load_addr: u64, cs: u16, ip: u16 },
}

/// Everything the loader needs besides guest memory.
pub struct BootConfig<'a> {
    pub kernel: KernelSource<'a>,
    pub initrd: Option<&'a mut File>,
    pub cmdline: &'a str,
    /// Total guest RAM in bytes (see `layout::ram_regions`).
    pub mem_size: u64,
    pub nr_cpus: u8,
}

/// Loads the kernel (and initrd, command line), writes the boot tables the protocol needs
/// (zero page with e820, or hvm_start_info with its memory map; ACPI tables in both cases) and
/// returns where the boot vCPU starts.
pub fn load_kernel(_mem: &GuestMemoryMmap, _cfg: BootConfig<'_>) -> Result<BootEntry, ArchError> {
    Err(ArchError::Unimplemented("load_kernel"))
}

/// Sets CPUID, MSRs, FPU and LAPIC LINT pins for vCPU `id` of `nr_cpus`; for the boot vCPU
/// (`id == 0`) also the registers for `entry`. Other vCPUs wait for INIT/SIPI.
pub fn configure_vcpu(
    _kvm: &Kvm,
    _vcpu: &VcpuFd,
    _id: u8,
    _nr_cpus: u8,
    _entry: &BootEntry,
    _mem: &GuestMemoryMmap,
) -> Result<(), ArchError> {
    Err(ArchError::Unimplemented("configure_vcpu"))
}
