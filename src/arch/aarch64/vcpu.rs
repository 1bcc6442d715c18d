//! The arm64-only KVM calls: vCPU init, the GICv3 and its ITS, the PMU, registers through
//! KVM_{GET,SET}_ONE_REG, loading the Image with linux-loader's PE loader, the failure report.
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::sync::Arc;

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_vcpu_init, KVM_ARM_VCPU_PMU_V3,
    KVM_ARM_VCPU_PMU_V3_CTRL, KVM_ARM_VCPU_PMU_V3_INIT, KVM_ARM_VCPU_PMU_V3_IRQ,
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_VGIC_ITS_ADDR_TYPE, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{Cap, DeviceFd, Kvm, VcpuFd, VmFd};
use linux_loader::loader::pe::PE;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use super::fdt::{self, FdtConfig};
use super::image;
use super::layout::*;
use super::regs::*;
use super::{check_cmdline, kvm_err, mem_err, ArchError, BootEntry, Machine, MAX_VCPUS};
use crate::arch::{BootConfig, KernelSource};

fn get_reg(vcpu: &VcpuFd, id: u64) -> Result<u64, kvm_ioctls::Error> {
    let mut b = [0u8; 8];
    vcpu.get_one_reg(id, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn set_reg(vcpu: &VcpuFd, id: u64, v: u64, what: &'static str) -> Result<(), ArchError> {
    vcpu.set_one_reg(id, &v.to_le_bytes())
        .map(|_| ())
        .map_err(kvm_err(what))
}

fn set_attr(
    dev: &DeviceFd,
    group: u32,
    attr: u32,
    addr: u64,
    what: &'static str,
) -> Result<(), ArchError> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr: u64::from(attr),
        addr,
    };
    dev.set_device_attr(&a).map_err(kvm_err(what))
}

/// The GICv3 (distributor, one redistributor per vCPU), its ITS when KVM makes one, the
/// number of interrupts, then the GIC's init. Needs every vCPU created.
fn create_gic(vm: &VmFd, nr_cpus: u8) -> Result<(Vec<DeviceFd>, bool), ArchError> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm.create_device(&mut dev).map_err(ArchError::NoGicV3)?;
    let dist = GIC_DIST_START;
    let redist = gic_redist_start(nr_cpus);
    // The address attributes point at u64s; KVM reads them during the ioctl.
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_DIST,
        &dist as *const u64 as u64,
        "KVM_SET_DEVICE_ATTR (GIC distributor address)",
    )?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_REDIST,
        &redist as *const u64 as u64,
        "KVM_SET_DEVICE_ATTR (GIC redistributor address)",
    )?;
    let mut devices = vec![];
    let mut its_dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
        fd: 0,
        flags: 0,
    };
    let its = match vm.create_device(&mut its_dev) {
        Ok(its) => {
            let base = gic_its_start(nr_cpus);
            set_attr(
                &its,
                KVM_DEV_ARM_VGIC_GRP_ADDR,
                KVM_VGIC_ITS_ADDR_TYPE,
                &base as *const u64 as u64,
                "KVM_SET_DEVICE_ATTR (ITS address)",
            )?;
            set_attr(
                &its,
                KVM_DEV_ARM_VGIC_GRP_CTRL,
                KVM_DEV_ARM_VGIC_CTRL_INIT,
                0,
                "KVM_SET_DEVICE_ATTR (ITS init)",
            )?;
            devices.push(its);
            true
        }
        Err(e) => {
            log::warn!("KVM cannot make a GICv3 ITS ({e}): PCI devices get no MSIs");
            false
        }
    };
    let nr_irqs: u32 = 32 + NR_SPIS;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        &nr_irqs as *const u32 as u64,
        "KVM_SET_DEVICE_ATTR (GIC number of interrupts)",
    )?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        KVM_DEV_ARM_VGIC_CTRL_INIT,
        0,
        "KVM_SET_DEVICE_ATTR (GIC init)",
    )?;
    devices.insert(0, gic);
    Ok((devices, its))
}

/// The PMU's overflow interrupt (PPI 7, INTID 23), then its init; after the GIC's init.
fn init_pmu(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let intid: u32 = 16 + PPI_PMU;
    let irq = kvm_device_attr {
        flags: 0,
        group: KVM_ARM_VCPU_PMU_V3_CTRL,
        attr: u64::from(KVM_ARM_VCPU_PMU_V3_IRQ),
        addr: &intid as *const u32 as u64,
    };
    vcpu.set_device_attr(&irq)
        .map_err(kvm_err("KVM_SET_DEVICE_ATTR (PMU interrupt)"))?;
    let init = kvm_device_attr {
        flags: 0,
        group: KVM_ARM_VCPU_PMU_V3_CTRL,
        attr: u64::from(KVM_ARM_VCPU_PMU_V3_INIT),
        addr: 0,
    };
    vcpu.set_device_attr(&init)
        .map_err(kvm_err("KVM_SET_DEVICE_ATTR (PMU init)"))
}

/// After every vCPU exists: each vCPU's init (the preferred target, PSCI 0.2, secondaries
/// powered off until PSCI CPU_ON, a PMU where KVM has one), the GIC and ITS, the PMU's
/// interrupt, then each vCPU's MPIDR.
pub fn setup_vcpus(_kvm: &Kvm, vm: &VmFd, vcpus: &[VcpuFd]) -> Result<Machine, ArchError> {
    if vcpus.is_empty() {
        return Err(ArchError::NoVcpus);
    }
    let nr_cpus = u8::try_from(vcpus.len())
        .ok()
        .filter(|&n| n <= MAX_VCPUS)
        .ok_or(ArchError::VcpuId {
            id: u8::MAX,
            nr_cpus: MAX_VCPUS,
        })?;
    if !vm.check_extension(Cap::ArmPsci02) {
        return Err(ArchError::NoPsci);
    }
    let mut kvi = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut kvi)
        .map_err(kvm_err("KVM_ARM_PREFERRED_TARGET"))?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    let pmu = vm.check_extension(Cap::ArmPmuV3);
    if pmu {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_PMU_V3;
    }
    for (id, vcpu) in vcpus.iter().enumerate() {
        let mut k = kvi;
        if id > 0 {
            k.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        vcpu.vcpu_init(&k).map_err(kvm_err("KVM_ARM_VCPU_INIT"))?;
    }
    let (devices, its) = create_gic(vm, nr_cpus)?;
    if pmu {
        for vcpu in vcpus {
            init_pmu(vcpu)?;
        }
    }
    let mpidrs = vcpus
        .iter()
        .map(|v| get_reg(v, REG_MPIDR_EL1).map_err(kvm_err("KVM_GET_ONE_REG (MPIDR_EL1)")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Machine {
        mpidrs,
        its,
        pmu,
        devices: Arc::new(devices),
    })
}

/// Writes [`boot_regs`]: the boot vCPU (`id` 0) starts at the Image's first byte with X0 = the
/// FDT, X1..X3 = 0, at EL1h with every exception masked; the others wait, powered off, for the
/// guest's PSCI CPU_ON.
pub fn configure_vcpu(
    _kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    nr_cpus: u8,
    entry: &BootEntry,
    _mem: &GuestMemoryMmap,
) -> Result<(), ArchError> {
    for (reg, value, what) in boot_regs(id, nr_cpus, entry)? {
        set_reg(vcpu, reg, value, what)?;
    }
    Ok(())
}

/// Reads a kernel file's head: enough for the Image header, for naming a bzImage and for the
/// PE section table of an EFI stub.
fn read_head(f: &mut File) -> Result<(Vec<u8>, u64), ArchError> {
    let len = f.seek(SeekFrom::End(0)).map_err(ArchError::KernelRead)?;
    f.seek(SeekFrom::Start(0)).map_err(ArchError::KernelRead)?;
    let mut head = vec![0u8; 4096.min(len as usize)];
    f.read_exact(&mut head).map_err(ArchError::KernelRead)?;
    Ok((head, len))
}

fn pe_load<F: Read + Seek + ReadVolatile>(
    mem: &GuestMemoryMmap,
    base: u64,
    image: &mut F,
) -> Result<(), ArchError> {
    PE::load(mem, Some(GuestAddress(base)), image, None)
        .map(|_| ())
        .map_err(|e| ArchError::KernelLoad(e.to_string()))
}

/// Loads the Image (linux-loader's PE loader at the 2 MiB aligned start of RAM), the initrd
/// and the FDT, and returns where the boot vCPU starts.
pub fn load_kernel(mem: &GuestMemoryMmap, cfg: BootConfig<'_>) -> Result<BootEntry, ArchError> {
    let BootConfig {
        kernel,
        initrd,
        cmdline,
        mem_size,
        machine,
        legacy: _,
        mut phases,
    } = cfg;
    let mut mark = |name| {
        if let Some(p) = phases.as_deref_mut() {
            p.mark(name);
        }
    };
    if machine.mpidrs.is_empty() {
        return Err(ArchError::NoVcpus);
    }
    check_cmdline(cmdline)?;
    let initrd_size = match &initrd {
        Some(f) => Some(f.metadata().map_err(ArchError::InitrdRead)?.len()),
        None => None,
    };
    let plan = match kernel {
        KernelSource::RealMode { .. } => return Err(ArchError::RealModeUnsupported),
        KernelSource::File(f) => {
            let (head, len) = read_head(f)?;
            let h = image::parse_header(&head)?;
            image::check_complete(&head, len)?;
            let plan = image::plan(mem_size, &h, len, initrd_size)?;
            pe_load(mem, plan.kernel_base, f)?;
            plan
        }
        KernelSource::Builtin(bytes) => {
            let h = match image::parse_header(&bytes[..bytes.len().min(0x206)]) {
                Ok(h) => h,
                Err(_) => return Err(ArchError::NoBuiltinImage),
            };
            let plan = image::plan(mem_size, &h, bytes.len() as u64, initrd_size)?;
            pe_load(mem, plan.kernel_base, &mut Cursor::new(bytes))?;
            plan
        }
    };
    mark("kernel");
    let initrd = match (initrd, plan.initrd, initrd_size) {
        (Some(f), Some(at), Some(size)) => {
            f.seek(SeekFrom::Start(0)).map_err(ArchError::InitrdRead)?;
            mem.read_exact_volatile_from(GuestAddress(at), f, size as usize)
                .map_err(mem_err("the initrd"))?;
            mark("initrd");
            Some((at, size))
        }
        _ => None,
    };
    let mut seed = [0u8; 32];
    let got = crate::sys::getrandom(&mut seed, libc::GRND_NONBLOCK).ok();
    let blob = fdt::build(&FdtConfig {
        mem_size,
        mpidrs: &machine.mpidrs,
        cmdline,
        initrd,
        its: machine.its,
        pmu: machine.pmu,
        rng_seed: if got == Some(seed.len()) { &seed } else { &[] },
    })?;
    mem.write_slice(&blob, GuestAddress(plan.fdt))
        .map_err(mem_err("the device tree"))?;
    mark("fdt");
    Ok(BootEntry {
        pc: plan.kernel_load,
        fdt: plan.fdt,
        fdt_size: blob.len() as u64,
    })
}

/// The report for vCPU `id`, which stopped because of `why`: PC, PSTATE, the exception
/// syndrome and fault address, X0-X30, and the instruction at PC when the MMU is off.
pub fn vcpu_report(fd: &VcpuFd, id: u8, why: &str, mem: &GuestMemoryMmap) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "vcpu{id}: {why}");
    let r = |reg| get_reg(fd, reg).ok();
    let (Some(pc), Some(pstate)) = (r(REG_PC), r(REG_PSTATE)) else {
        let _ = writeln!(s, "  (registers unavailable)");
        return s;
    };
    let hex = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v:#018x}"));
    let _ = writeln!(
        s,
        "  pc={pc:#018x} pstate={pstate:#x} (EL{}) sp={} sp_el1={} elr_el1={}",
        (pstate >> 2) & 3,
        hex(r(REG_SP)),
        hex(r(REG_SP_EL1)),
        hex(r(REG_ELR_EL1))
    );
    let sctlr = r(REG_SCTLR_EL1);
    let _ = writeln!(
        s,
        "  esr_el1={} far_el1={} sctlr_el1={}",
        hex(r(REG_ESR_EL1)),
        hex(r(REG_FAR_EL1)),
        hex(sctlr)
    );
    // With the MMU off (SCTLR_EL1.M clear), PC is a physical address.
    if sctlr.is_some_and(|v| v & 1 == 0) {
        let mut b = [0u8; 16];
        match mem.read_slice(&mut b, GuestAddress(pc)) {
            Ok(()) => {
                let words: Vec<String> = b
                    .chunks(4)
                    .map(|w| format!("{:08x}", u32::from_le_bytes(w.try_into().unwrap_or([0; 4]))))
                    .collect();
                let _ = writeln!(s, "  code at {pc:#x}: {}", words.join(" "));
            }
            Err(_) => {
                let _ = writeln!(s, "  code: PC is not in guest RAM");
            }
        }
    }
    for row in 0..8 {
        let regs: Vec<String> = (row * 4..(row * 4 + 4).min(31))
            .map(|n| format!("x{n:<2}={}", hex(r(xreg(n)))))
            .collect();
        let _ = writeln!(s, "  {}", regs.join(" "));
    }
    s
}
