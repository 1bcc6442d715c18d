//! KVM's one-reg ids for the arm64 registers trapvisor touches, and the boot vCPU's register
//! state: pure, so they build (and their tests run) on every host. The id encoding is KVM's
//! (Documentation/virt/kvm/api.rst, KVM_SET_ONE_REG, arm64): `0x6030_0000_0010_xxxx` for a
//! 64-bit core register (xxxx: its offset in `struct kvm_regs` in 32-bit words), and
//! `0x6030_0000_0013_xxxx` for a system register (xxxx: op0:2 op1:3 CRn:4 CRm:4 op2:3).
use super::{ArchError, BootEntry};

const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// `PSR_MODE_EL1h | PSR_A_BIT | PSR_F_BIT | PSR_I_BIT | PSR_D_BIT`: EL1 with SP_EL1, every
/// exception masked (booting.rst).
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// A core register's id: its offset in `struct kvm_regs`, in 32-bit words.
const fn core_reg(offset_bytes: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset_bytes / 4)
}

/// `kvm_regs` starts with `user_pt_regs`: x0..x30, sp, pc, pstate; then sp_el1, elr_el1.
pub const fn xreg(n: u64) -> u64 {
    core_reg(n * 8)
}
pub const REG_SP: u64 = core_reg(31 * 8);
pub const REG_PC: u64 = core_reg(32 * 8);
pub const REG_PSTATE: u64 = core_reg(33 * 8);
pub const REG_SP_EL1: u64 = core_reg(34 * 8);
pub const REG_ELR_EL1: u64 = core_reg(35 * 8);

/// A system register's id from its encoding (op0, op1, CRn, CRm, op2).
const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | op0 << 14
        | op1 << 11
        | crn << 7
        | crm << 3
        | op2
}
pub const REG_MPIDR_EL1: u64 = sysreg(3, 0, 0, 0, 5);
pub const REG_ESR_EL1: u64 = sysreg(3, 0, 5, 2, 0);
pub const REG_FAR_EL1: u64 = sysreg(3, 0, 6, 0, 0);
pub const REG_SCTLR_EL1: u64 = sysreg(3, 0, 1, 0, 0);

/// One register write of the boot state: id, value, and what a failure is called.
pub type RegWrite = (u64, u64, &'static str);

/// The registers vCPU `id` of `nr_cpus` gets before its first run: the boot vCPU (0) starts at
/// the Image's first byte with X0 = the FDT, X1..X3 = 0, at EL1h with every exception masked;
/// the others get none (they wait, powered off, for the guest's PSCI CPU_ON, which KVM
/// handles and which sets their PC and X0 itself).
pub fn boot_regs(id: u8, nr_cpus: u8, entry: &BootEntry) -> Result<Vec<RegWrite>, ArchError> {
    if nr_cpus == 0 {
        return Err(ArchError::NoVcpus);
    }
    if id >= nr_cpus {
        return Err(ArchError::VcpuId { id, nr_cpus });
    }
    if id != 0 {
        return Ok(Vec::new());
    }
    let mut v = vec![
        (REG_PSTATE, PSTATE_EL1H_MASKED, "KVM_SET_ONE_REG (PSTATE)"),
        (REG_PC, entry.pc, "KVM_SET_ONE_REG (PC)"),
        (xreg(0), entry.fdt, "KVM_SET_ONE_REG (X0)"),
    ];
    v.extend((1..4).map(|n| (xreg(n), 0, "KVM_SET_ONE_REG (X1-X3)")));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kvms() {
        // The values KVM's API documentation and QEMU's/kvmtool's tables give.
        assert_eq!(xreg(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg(1), 0x6030_0000_0010_0002);
        assert_eq!(xreg(30), 0x6030_0000_0010_003c);
        assert_eq!(REG_SP, 0x6030_0000_0010_003e);
        assert_eq!(REG_PC, 0x6030_0000_0010_0040);
        assert_eq!(REG_PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(REG_SP_EL1, 0x6030_0000_0010_0044);
        assert_eq!(REG_ELR_EL1, 0x6030_0000_0010_0046);
        assert_eq!(REG_MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(REG_SCTLR_EL1, 0x6030_0000_0013_c080);
        assert_eq!(REG_ESR_EL1, 0x6030_0000_0013_c290);
        assert_eq!(REG_FAR_EL1, 0x6030_0000_0013_c300);
    }

    /// Where kvm-bindings has the arm64 constants, they agree with the ones written out here.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn constants_match_kvm_bindings() {
        assert_eq!(KVM_REG_ARM64, kvm_bindings::KVM_REG_ARM64);
        assert_eq!(KVM_REG_SIZE_U64, kvm_bindings::KVM_REG_SIZE_U64);
        assert_eq!(KVM_REG_ARM_CORE, u64::from(kvm_bindings::KVM_REG_ARM_CORE));
        assert_eq!(
            KVM_REG_ARM64_SYSREG,
            u64::from(kvm_bindings::KVM_REG_ARM64_SYSREG)
        );
    }

    #[test]
    fn the_boot_vcpu_enters_the_image_with_the_fdt_in_x0() {
        let entry = BootEntry {
            pc: 0x8020_0000,
            fdt: 0x8fe0_0000,
            fdt_size: 0x1000,
        };
        let regs = boot_regs(0, 4, &entry).unwrap();
        let get = |id| regs.iter().find(|r| r.0 == id).map(|r| r.1);
        assert_eq!(get(REG_PC), Some(0x8020_0000));
        assert_eq!(get(xreg(0)), Some(0x8fe0_0000));
        for n in 1..4 {
            assert_eq!(get(xreg(n)), Some(0), "x{n}");
        }
        // EL1h (mode 0b0101), D, A, I and F masked.
        assert_eq!(get(REG_PSTATE), Some(0b1111 << 6 | 0b0101));
        assert_eq!(regs.len(), 6);
        // Secondaries are left to PSCI CPU_ON.
        for id in 1..4 {
            assert!(boot_regs(id, 4, &entry).unwrap().is_empty());
        }
    }

    #[test]
    fn vcpu_ids_outside_the_vm_are_refused() {
        let entry = BootEntry {
            pc: 0,
            fdt: 0,
            fdt_size: 0,
        };
        assert!(matches!(boot_regs(0, 0, &entry), Err(ArchError::NoVcpus)));
        assert!(matches!(
            boot_regs(2, 2, &entry),
            Err(ArchError::VcpuId { id: 2, nr_cpus: 2 })
        ));
    }
}
