//! x86_64 boot: memory layout, kernel loading (bzImage, ELF/PVH, raw real-mode images), boot
//! tables (e820, hvm_start_info, ACPI), CPUID and the boot state of each vCPU.
//!
//! CONTRACT (used by `kvm::vm`, `kvm::vcpu` and `vmm`): the functions below keep these
//! signatures.
//!
//! The pieces: `loader` puts the kernel, initrd and command line in guest memory;
//! `bootparams` writes the Linux zero page or the PVH `hvm_start_info`, both with the memory
//! map of [`bootparams::memory_map`]; `acpi` writes RSDP, XSDT, FADT, MADT, MCFG and DSDT;
//! `cpuid` filters KVM's supported CPUID per vCPU; `regs` sets registers, segments, page
//! tables, FPU, MSRs and the local APIC's LINT pins.
pub mod acpi;
pub mod bootparams;
pub mod cpuid;
pub mod devices;
pub mod irq;
pub mod layout;
pub mod loader;
pub mod regs;
pub mod report;
pub mod seccomp;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vcpu_tests;

use std::fs::File;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use self::devices::{attach_pci, register_devices};
pub use self::irq::{default_gsi_routes, LEGACY_GSIS};
pub use self::layout::{pci_layout, ram_regions};
pub use self::report::vcpu_report;
pub use crate::arch::{BootConfig, KernelSource};

/// The architecture's name, for messages.
pub const NAME: &str = "x86_64";

/// The most vCPUs a VM may have (APIC ids fit the xAPIC MADT entries).
pub const MAX_VCPUS: u8 = 64;

/// Errors of the boot code. Each message is one line, fit for the command line.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("kernel image is neither a bzImage nor an ELF vmlinux")]
    UnknownKernelFormat,
    #[error("the kernel is an arm64 Image: this trapvisor runs x86_64 guests (give it a bzImage or an ELF vmlinux)")]
    WrongArch,
    #[error("reading the kernel image failed: {0}")]
    KernelRead(std::io::Error),
    #[error(
        "the {format} kernel is truncated: the file has {size} bytes, its header says {expected}"
    )]
    KernelTruncated {
        format: &'static str,
        size: u64,
        expected: u64,
    },
    #[error("loading the {format} kernel failed: {reason}")]
    KernelLoad {
        format: &'static str,
        reason: String,
    },
    #[error("the bzImage has no 64-bit entry point (boot protocol {0:#x}, XLF_KERNEL_64 unset)")]
    NoLongModeEntry(u16),
    #[error(
        "the kernel needs guest RAM up to {needed:#x} to unpack, but RAM ends at {ram_end:#x}"
    )]
    KernelTooLarge { needed: u64, ram_end: u64 },
    #[error("the ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhNote,
    #[error("real-mode image ({size} bytes at {addr:#x}) does not fit in guest RAM")]
    ImageTooLarge { size: usize, addr: u64 },
    #[error("kernel command line is {len} bytes with its NUL; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("initrd ({size} bytes) does not fit in guest RAM ({room} bytes free between the kernel and {top:#x})")]
    InitrdTooLarge { size: u64, room: u64, top: u64 },
    #[error("reading the initrd failed: {0}")]
    InitrdRead(std::io::Error),
    #[error("an initrd needs a Linux or PVH kernel, not a real-mode image")]
    InitrdWithRealMode,
    #[error("the number of vCPUs must be at least 1")]
    NoVcpus,
    #[error("vCPU id {id} is out of range for {nr_cpus} vCPUs")]
    VcpuId { id: u8, nr_cpus: u8 },
    #[error("ACPI tables ({size} bytes) do not fit between {start:#x} and {end:#x}")]
    AcpiTooLarge { size: usize, start: u64, end: u64 },
    #[error("writing {what} to guest memory failed: {err}")]
    GuestMemory {
        what: &'static str,
        err: vm_memory::GuestMemoryError,
    },
    #[error("KVM {op} failed: {err}")]
    Kvm {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("KVM {op} failed: {err} (is the in-kernel irqchip created before the vCPU?)")]
    Lapic {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("KVM's supported CPUID has no leaf {0:#x}")]
    CpuidLeafMissing(u32),
    #[error("the CPUID table has {0} entries; KVM takes at most {max}", max = kvm_bindings::KVM_MAX_CPUID_ENTRIES)]
    CpuidTooLarge(usize),
}

/// Maps a guest-memory write error to [`ArchError::GuestMemory`] with what was written.
pub(crate) fn mem_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> ArchError {
    move |err| ArchError::GuestMemory { what, err }
}

/// Maps a KVM ioctl error to [`ArchError::Kvm`] with the ioctl's name.
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
    move |err| ArchError::Kvm { op, err }
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

/// The hint trapvisor gives a Linux kernel (see [`linux_cmdline`]).
pub const PCI_HINT: &str = "pci=noearly";

/// A Linux kernel's command line with trapvisor's hint in front: `pci=noearly`, unless the
/// command line has a `pci=` parameter of its own (before a `--`: what follows is init's).
///
/// Linux's early PCI code reads config space through conf1 before the PCI subsystem exists: the
/// early quirks (for host chipsets: none applies to trapvisor's bus 0) and, on AMD CPUs of
/// families 0xf to 0x12 and early 0x15, the GART aperture checks, which read the class of every
/// slot of all 256 buses twice (`search_agp_bridge`): 16,400 conf1 reads, 33,900 exits, the
/// boot's largest cost in the nested test setup (QEMU's TCG presents family 0xf; see
/// docs/nested.md, boot benchmark). `pci=noearly` skips all of it; the PCI subsystem probes the
/// bus as before (and sets up ECAM later). Firecracker's `pci=off` skips it too.
pub fn linux_cmdline(cmdline: &str) -> std::borrow::Cow<'_, str> {
    let has_pci = cmdline
        .split_ascii_whitespace()
        .take_while(|w| *w != "--")
        .any(|w| w.starts_with("pci="));
    if has_pci {
        std::borrow::Cow::Borrowed(cmdline)
    } else if cmdline.is_empty() {
        std::borrow::Cow::Borrowed(PCI_HINT)
    } else {
        std::borrow::Cow::Owned(format!("{PCI_HINT} {cmdline}"))
    }
}

/// After the RAM slots, before any vCPU: KVM's TSS and identity-map pages, the in-kernel
/// irqchip (IOAPIC, PIC, and a local APIC per vCPU created later) and, with `legacy`, the PIT
/// (Linux never programs it here: with a hardware-reduced FADT it sets up no PIT timer).
pub fn setup_vm(vm: &VmFd, legacy: bool) -> Result<(), ArchError> {
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    // The irqchip after the memory slots: on some hosts (this PVM one: 7-11 ms) the first
    // memslot change after KVM_CREATE_IRQCHIP is slow, and here there is none.
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    if legacy {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    }
    Ok(())
}

/// What the boot tables describe of the vCPUs and the interrupt controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    pub nr_cpus: u8,
}

impl Machine {
    /// A machine of `nr_cpus` vCPUs (APIC ids 0..nr_cpus).
    pub fn new(nr_cpus: u8) -> Self {
        Machine { nr_cpus }
    }

    /// Whether MSI messages need the sender's device id. x86 KVM has no KVM_CAP_MSI_DEVID.
    pub fn msi_devid(&self) -> bool {
        false
    }
}

/// The guest physical map outside the buses, for `--print-map` and `GET /map`: none is listed
/// on x86_64 (the IOAPIC, LAPIC and boot tables sit at fixed places, see `layout`).
pub fn map_lines(_machine: &Machine, _entry: &BootEntry) -> Vec<crate::arch::MapLine> {
    Vec::new()
}

/// After every vCPU exists. On x86_64 the irqchip was made by [`setup_vm`] and each vCPU got
/// its local APIC when it was created: nothing is left to do.
pub fn setup_vcpus(_kvm: &Kvm, _vm: &VmFd, vcpus: &[VcpuFd]) -> Result<Machine, ArchError> {
    let nr_cpus = u8::try_from(vcpus.len()).map_err(|_| ArchError::VcpuId {
        id: u8::MAX,
        nr_cpus: MAX_VCPUS,
    })?;
    Ok(Machine::new(nr_cpus))
}

/// Loads the kernel (and initrd, command line), writes the boot tables the protocol needs
/// (zero page with e820, or hvm_start_info with its memory map; ACPI tables in both cases) and
/// returns where the boot vCPU starts.
///
/// An ELF from a file boots through PVH when it has the PVH note, else through the Linux 64-bit
/// protocol at its entry point; a bzImage boots through the 64-bit protocol at load address +
/// 0x200. The built-in guest is an ELF with the PVH note. Real-mode images get the command line and ACPI tables too (the tables only when RAM
/// reaches past them); the image is copied last, so it may overwrite either.
///
/// `mem` is RAM just mapped (all zero): the holes of a sparse kernel file are not written.
pub fn load_kernel(mem: &GuestMemoryMmap, cfg: BootConfig<'_>) -> Result<BootEntry, ArchError> {
    let BootConfig {
        kernel,
        initrd,
        cmdline,
        mem_size,
        machine,
        legacy,
        phases,
    } = cfg;
    let nr_cpus = machine.nr_cpus;
    if nr_cpus == 0 {
        return Err(ArchError::NoVcpus);
    }

    // A Linux kernel's gets trapvisor's hints (`linux_cmdline`). Checked before anything is
    // written, so a bad command line fails fast.
    let hinted = match kernel {
        KernelSource::File(_) => linux_cmdline(cmdline),
        _ => std::borrow::Cow::Borrowed(cmdline),
    };
    let cmdline: &str = &hinted;
    let cmdline_size = loader::check_cmdline(cmdline)?;

    match kernel {
        KernelSource::RealMode {
            image,
            load_addr,
            cs,
            ip,
        } => {
            if initrd.is_some() {
                return Err(ArchError::InitrdWithRealMode);
            }
            loader::check_real_mode(mem, image, load_addr)?;
            if acpi::fits_in(mem) {
                acpi::write_tables(mem, nr_cpus, mem_size, legacy)?;
                write_reset_vector(mem)?;
            } else {
                log::debug!("guest RAM ends below the ACPI tables; real-mode guest gets none");
            }
            loader::write_cmdline(mem, cmdline)?;
            loader::load_real_mode(mem, image, load_addr)?;
            Ok(BootEntry::RealMode { cs, ip })
        }
        KernelSource::File(file) => {
            let kernel = loader::load_file(mem, file, mem_size)?;
            finish_load(
                mem,
                kernel,
                initrd,
                cmdline,
                cmdline_size,
                mem_size,
                (nr_cpus, legacy),
                phases,
            )
        }
        KernelSource::Builtin(bytes) => {
            let kernel = loader::load_pvh_elf(mem, bytes)?;
            finish_load(
                mem,
                kernel,
                initrd,
                cmdline,
                cmdline_size,
                mem_size,
                (nr_cpus, legacy),
                phases,
            )
        }
    }
}

/// Command line, initrd, ACPI and the protocol's boot table for a loaded Linux/PVH kernel.
#[allow(clippy::too_many_arguments)]
fn finish_load(
    mem: &GuestMemoryMmap,
    kernel: loader::LoadedKernel,
    initrd: Option<&mut File>,
    cmdline: &str,
    cmdline_size: usize,
    mem_size: u64,
    (nr_cpus, legacy): (u8, bool),
    mut phases: Option<&mut crate::trace::phases::StartPhases>,
) -> Result<BootEntry, ArchError> {
    let mut mark = |name| {
        if let Some(p) = phases.as_deref_mut() {
            p.mark(name);
        }
    };
    mark("kernel");
    loader::write_cmdline(mem, cmdline)?;
    let initrd = match initrd {
        Some(file) => {
            let top = loader::initrd_top(mem_size, kernel.setup_header.as_ref());
            let placed = loader::load_initrd(mem, file, kernel.end, top)?;
            mark("initrd");
            Some(placed)
        }
        None => None,
    };
    acpi::write_tables(mem, nr_cpus, mem_size, legacy)?;
    write_reset_vector(mem)?;
    match kernel.entry {
        BootEntry::Linux64 { .. } => {
            let params = bootparams::build_boot_params(
                kernel.setup_header,
                mem_size,
                cmdline_size as u32,
                initrd,
            );
            bootparams::write_boot_params(mem, &params)?;
        }
        BootEntry::Pvh { .. } => bootparams::write_pvh_info(mem, mem_size, initrd)?,
        BootEntry::RealMode { .. } => unreachable!("real-mode images are not loaded here"),
    }
    mark("acpi+boot tables");
    Ok(kernel.entry)
}

/// Where a real-mode `ljmp $0xf000,$0xfff0` lands: the BIOS reset entry.
pub const RESET_VECTOR: u64 = 0xffff0;

/// The code at the BIOS reset entry: there is no BIOS, so it asks for a reset through the ACPI
/// reset register. Linux's default reboot on a hardware-reduced platform without EFI ends with
/// a jump here (its "BIOS" method); without this it would hang.
pub fn reset_vector_code() -> [u8; 10] {
    let [lo, hi] = layout::ACPI_RESET_PORT.to_le_bytes();
    [
        0xba,
        lo,
        hi, // mov dx, ACPI_RESET_PORT
        0xb0,
        crate::devices::acpi_pm::RESET_VALUE, // mov al, RESET_VALUE
        0xee,                                 // out dx, al
        0xf4,                                 // hlt
        0xeb,
        0xfd, // jmp back to hlt
        0x90,
    ]
}

fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    use vm_memory::Bytes;
    mem.write_slice(&reset_vector_code(), GuestAddress(RESET_VECTOR))
        .map_err(|err| ArchError::GuestMemory {
            what: "the reset vector",
            err,
        })
}

/// Sets CPUID, MSRs, FPU and LAPIC LINT pins for vCPU `id` of `nr_cpus`; for the boot vCPU
/// (`id == 0`) also the registers for `entry`. Other vCPUs wait for INIT/SIPI.
///
/// Needs the in-kernel irqchip (for the local APIC). For `Linux64` and `Pvh` it writes the boot
/// GDT and IDT (and for `Linux64` the identity page tables) into `mem`.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    nr_cpus: u8,
    entry: &BootEntry,
    mem: &GuestMemoryMmap,
) -> Result<(), ArchError> {
    if nr_cpus == 0 {
        return Err(ArchError::NoVcpus);
    }
    if id >= nr_cpus {
        return Err(ArchError::VcpuId { id, nr_cpus });
    }
    cpuid::set_cpuid(kvm, vcpu, id, nr_cpus)?;
    regs::setup_msrs(kvm, vcpu)?;
    regs::setup_fpu(vcpu)?;
    regs::setup_lints(vcpu)?;
    if id == 0 {
        regs::setup_sregs(vcpu, mem, entry)?;
        regs::setup_regs(vcpu, entry)?;
    }
    Ok(())
}
