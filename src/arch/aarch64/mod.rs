//! aarch64: memory layout, the GICv3 with its ITS, vCPU init (PSCI 0.2, PMU), the arm64
//! `Image` and its device tree, the MMIO platform devices.
//!
//! The pure parts (`layout`, `fdt`, `image`, `devices`, `irq`, `regs`, `seccomp`) build on every host,
//! so that their unit tests run on x86_64 too; `vcpu` (KVM's arm64-only ioctls: vCPU init, the
//! GIC device, one-reg access) builds only on aarch64.
//!
//! A VM is put together in this order (the kernel documents it, Firecracker and Cloud
//! Hypervisor do the same):
//! 1. `KVM_CREATE_VM` with the host's IPA size (kvm-ioctls), RAM from 2 GiB;
//! 2. every vCPU created, then [`setup_vcpus`]: `KVM_ARM_PREFERRED_TARGET`, `KVM_ARM_VCPU_INIT`
//!    (PSCI 0.2; secondaries powered off until the guest's PSCI CPU_ON; the PMU where KVM has
//!    one), the GICv3 (distributor, one redistributor per vCPU), its ITS, the GIC's init, the
//!    PMU's interrupt and init, then each vCPU's MPIDR read back;
//! 3. `KVM_CAP_MSI_DEVID` now reads 1: the GSI router is made (`pci::platform`);
//! 4. devices and their irqfds (SPIs), PCI;
//! 5. [`load_kernel`]: the Image, the initrd, the FDT; [`configure_vcpu`]: PC, X0 = FDT, PSTATE.
pub mod devices;
pub mod fdt;
pub mod image;
pub mod irq;
pub mod layout;
pub mod regs;
pub mod seccomp;
#[cfg(target_arch = "aarch64")]
mod vcpu;

use std::sync::Arc;

pub use self::devices::{attach_pci, register_devices};
pub use self::irq::{default_gsi_routes, LEGACY_GSIS};
pub use self::layout::{pci_layout, ram_regions};
#[cfg(target_arch = "aarch64")]
pub use self::vcpu::{configure_vcpu, load_kernel, setup_vcpus, vcpu_report};
use crate::arch::MapLine;

/// The architecture's name, for messages.
pub const NAME: &str = "aarch64";

/// The most vCPUs a VM may have (the redistributors fit the GIC region; MPIDR Aff0 < 16 needs
/// no more than Aff1 in the cpu nodes).
pub const MAX_VCPUS: u8 = 64;

/// Errors of the boot code. Each message is one line, fit for the command line.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("kernel image is not an arm64 Image (no \"ARM\\x64\" magic at byte 56)")]
    UnknownKernelFormat,
    #[error("the kernel is {0}: this trapvisor runs aarch64 guests (give it an arm64 Image)")]
    WrongArch(&'static str),
    #[error("the kernel is an arm64 ELF vmlinux: give the Image (arch/arm64/boot/Image) instead")]
    ElfVmlinux,
    #[error("the kernel is a big-endian arm64 Image; KVM guests here run little-endian")]
    BigEndianImage,
    #[error("the built-in guest of this build is not an arm64 Image (it was built without the aarch64 guest): give --kernel")]
    NoBuiltinImage,
    #[error("real-mode images exist only on x86_64")]
    RealModeUnsupported,
    #[error("reading the kernel image failed: {0}")]
    KernelRead(std::io::Error),
    #[error(
        "the arm64 Image is truncated: the file has {len} bytes, its PE sections end at {needed}"
    )]
    Truncated { len: u64, needed: u64 },
    #[error("loading the Image failed: {0}")]
    KernelLoad(String),
    #[error("the kernel and its 2 MiB device tree slot need guest RAM up to {needed:#x}, but the boot window ends before that (RAM ends at {ram_end:#x})")]
    KernelTooLarge { needed: u64, ram_end: u64 },
    #[error("kernel command line is {len} bytes with its NUL; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("initrd ({size} bytes) does not fit in guest RAM ({room} bytes free between the kernel and {top:#x})")]
    InitrdTooLarge { size: u64, room: u64, top: u64 },
    #[error("reading the initrd failed: {0}")]
    InitrdRead(std::io::Error),
    #[error("the number of vCPUs must be at least 1")]
    NoVcpus,
    #[error("vCPU id {id} is out of range for {nr_cpus} vCPUs")]
    VcpuId { id: u8, nr_cpus: u8 },
    #[error("writing the device tree failed: {0}")]
    Fdt(String),
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
    #[error("this host's KVM has no PSCI 0.2 for guests (KVM_CAP_ARM_PSCI_0_2): secondary vCPUs could not be started")]
    NoPsci,
    #[error("this host's KVM cannot make a GICv3 ({0}); trapvisor needs one (GICv2-only hosts are not supported)")]
    NoGicV3(kvm_ioctls::Error),
}

/// Maps a guest-memory write error to [`ArchError::GuestMemory`] with what was written.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn mem_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> ArchError {
    move |err| ArchError::GuestMemory { what, err }
}

/// Maps a KVM ioctl error to [`ArchError::Kvm`] with the ioctl's name.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
    move |err| ArchError::Kvm { op, err }
}

/// Where the boot vCPU starts: PC (the Image's first byte) and X0 (the FDT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub pc: u64,
    pub fdt: u64,
    pub fdt_size: u64,
}

/// After the RAM slot, before any vCPU: nothing on arm64 (the GIC needs every vCPU first; no
/// legacy devices).
pub fn setup_vm(_vm: &kvm_ioctls::VmFd, _legacy: bool) -> Result<(), ArchError> {
    Ok(())
}

/// The boot command line's limit (arm64's COMMAND_LINE_SIZE), NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Checks the command line before anything is written.
pub fn check_cmdline(cmdline: &str) -> Result<(), ArchError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(ArchError::CmdlineNul);
    }
    let len = cmdline.len() + 1;
    if len > CMDLINE_MAX_SIZE {
        return Err(ArchError::CmdlineTooLong {
            len,
            max: CMDLINE_MAX_SIZE,
        });
    }
    Ok(())
}

/// What the boot tables describe of the vCPUs and the interrupt controller: made by
/// `setup_vcpus`, which also keeps KVM's GIC and ITS devices open here.
#[derive(Clone, Default)]
pub struct Machine {
    /// MPIDR_EL1 of each vCPU, read back from KVM.
    pub mpidrs: Vec<u64>,
    /// KVM made an ITS (MSIs, PCI's msi-map).
    pub its: bool,
    /// The vCPUs have a PMU.
    pub pmu: bool,
    /// KVM's GIC (and ITS) device fds.
    pub devices: Arc<Vec<kvm_ioctls::DeviceFd>>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("mpidrs", &self.mpidrs)
            .field("its", &self.its)
            .field("pmu", &self.pmu)
            .finish()
    }
}

impl Machine {
    pub fn nr_cpus(&self) -> u8 {
        self.mpidrs.len() as u8
    }
}

/// The guest physical map outside the buses: the GIC's frames (handled inside KVM), the
/// FDT and the kernel (guest RAM).
pub fn map_lines(machine: &Machine, entry: &BootEntry) -> Vec<MapLine> {
    use self::layout::*;
    let n = machine.nr_cpus();
    let line = |base, size, name: &str, what: &str| MapLine {
        base,
        size,
        name: name.to_string(),
        what: what.to_string(),
    };
    let mut v = Vec::new();
    if machine.its {
        v.push(line(
            gic_its_start(n),
            GIC_ITS_SIZE,
            "gic-its",
            "in-kernel (KVM): MSIs to GITS_TRANSLATER",
        ));
    }
    v.push(line(
        gic_redist_start(n),
        GIC_REDIST_SIZE * u64::from(n),
        "gic-redist",
        "in-kernel (KVM)",
    ));
    v.push(line(
        GIC_DIST_START,
        GIC_DIST_SIZE,
        "gic-dist",
        "in-kernel (KVM)",
    ));
    v.push(line(entry.pc, 0, "kernel", "guest RAM: the boot vCPU's PC"));
    v.push(line(
        entry.fdt,
        entry.fdt_size,
        "fdt",
        "guest RAM: X0 of the boot vCPU",
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::layout::*;
    use super::*;

    #[test]
    fn the_command_line_fits_arm64s_limit_with_its_nul() {
        assert!(check_cmdline("").is_ok());
        assert!(check_cmdline(&"a".repeat(CMDLINE_MAX_SIZE - 1)).is_ok());
        assert!(matches!(
            check_cmdline(&"a".repeat(CMDLINE_MAX_SIZE)),
            Err(ArchError::CmdlineTooLong { len, max: CMDLINE_MAX_SIZE }) if len == CMDLINE_MAX_SIZE + 1
        ));
        assert!(matches!(
            check_cmdline("console=ttyS0\0init=/x"),
            Err(ArchError::CmdlineNul)
        ));
    }

    fn machine(n: u8, its: bool) -> Machine {
        Machine {
            mpidrs: (0..u64::from(n)).collect(),
            its,
            ..Machine::default()
        }
    }

    #[test]
    fn the_map_names_the_gic_frames_the_kernel_and_the_fdt() {
        let entry = BootEntry {
            pc: 0x8000_0000,
            fdt: 0x8fe0_0000,
            fdt_size: 0x89e,
        };
        for n in [1u8, 2, 4, MAX_VCPUS] {
            let lines = map_lines(&machine(n, true), &entry);
            let get = |name: &str| lines.iter().find(|l| l.name == name).unwrap();
            let its = get("gic-its");
            assert_eq!((its.base, its.size), (gic_its_start(n), GIC_ITS_SIZE));
            let rd = get("gic-redist");
            // One redistributor per vCPU, ending at the distributor; the ITS right below.
            assert_eq!(rd.base, gic_redist_start(n));
            assert_eq!(rd.size, GIC_REDIST_SIZE * u64::from(n));
            assert_eq!(rd.base + rd.size, GIC_DIST_START);
            assert_eq!(its.base + its.size, rd.base);
            let dist = get("gic-dist");
            assert_eq!((dist.base, dist.size), (GIC_DIST_START, GIC_DIST_SIZE));
            assert_eq!(get("kernel").base, 0x8000_0000);
            let fdt = get("fdt");
            assert_eq!((fdt.base, fdt.size), (0x8fe0_0000, 0x89e));
        }
        // Without an ITS (KVM made none) there is no ITS line.
        let lines = map_lines(&machine(2, false), &entry);
        assert!(lines.iter().all(|l| l.name != "gic-its"));
        assert_eq!(lines.len(), 4);
    }
}
