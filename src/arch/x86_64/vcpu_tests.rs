//! Tests of `configure_vcpu` on real vCPUs (skipped where /dev/kvm cannot be opened): the boot
//! vCPU's registers for each boot entry, application processors left alone, bad ids and a VM
//! without an irqchip refused.
use kvm_bindings::{kvm_msr_entry, Msrs};
use vm_memory::GuestAddress;

use super::layout::*;
use super::tests::guest_mem;
use super::*;

/// A VM with the in-kernel irqchip and one vCPU per id, or None without /dev/kvm.
fn kvm_vcpus(n: u8) -> Option<(Kvm, kvm_ioctls::VmFd, Vec<VcpuFd>)> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("skipping: cannot open /dev/kvm: {e}");
            return None;
        }
    };
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let vcpus = (0..n)
        .map(|i| vm.create_vcpu(u64::from(i)).unwrap())
        .collect();
    Some((kvm, vm, vcpus))
}

fn fresh_vcpu_reports_mxcsr(kvm: &Kvm) -> bool {
    let vm = kvm.create_vm().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let reported = vcpu.get_fpu().unwrap().mxcsr != 0;
    if !reported {
        eprintln!("note: KVM_GET_FPU reports MXCSR as 0 here; not checked");
    }
    reported
}

fn entries() -> [BootEntry; 3] {
    [
        BootEntry::Linux64 {
            entry: GuestAddress(0x100_0000),
        },
        BootEntry::Pvh {
            entry: GuestAddress(0x100_0850),
        },
        BootEntry::RealMode {
            cs: 0x1000,
            ip: 0x20,
        },
    ]
}

#[test]
fn configure_boot_vcpu_for_each_entry() {
    for entry in entries() {
        let Some((kvm, _vm, vcpus)) = kvm_vcpus(1) else {
            return;
        };
        let mem = guest_mem(64 << 20);
        configure_vcpu(&kvm, &vcpus[0], 0, 1, &entry, &mem).unwrap();
        let regs = vcpus[0].get_regs().unwrap();
        let sregs = vcpus[0].get_sregs().unwrap();
        assert_eq!(regs.rflags, 2, "{entry:?}");
        match entry {
            BootEntry::Linux64 { entry } => {
                assert_eq!(regs.rip, entry.0);
                assert_eq!((regs.rsi, regs.rsp), (ZERO_PAGE_START, BOOT_STACK_POINTER));
                assert_eq!(sregs.cr0 & 0x8000_0011, 0x8000_0011, "PG|ET|PE");
                assert_ne!(sregs.cr4 & regs::X86_CR4_PAE, 0);
                assert_eq!(sregs.cr3, PML4_START);
                assert_eq!(sregs.efer & 0x500, 0x500, "LME|LMA");
                assert_eq!((sregs.cs.selector, sregs.cs.l), (8, 1));
                assert_eq!(sregs.gdt.base, BOOT_GDT_START);
            }
            BootEntry::Pvh { entry } => {
                assert_eq!(regs.rip, entry.0);
                assert_eq!(regs.rbx, PVH_INFO_START);
                assert_eq!(sregs.cr0 & 0x8000_0011, 0x11, "PE|ET, no paging");
                assert_eq!(sregs.efer & 0x500, 0);
                assert_eq!((sregs.cs.selector, sregs.cs.db, sregs.cs.l), (8, 1, 0));
                assert_eq!((sregs.cs.base, sregs.cs.limit), (0, 0xffff_ffff));
                assert_eq!((sregs.ds.selector, sregs.ss.selector), (0x10, 0x10));
                assert_eq!((sregs.tr.limit, sregs.tr.type_), (0x67, 0xb));
            }
            BootEntry::RealMode { cs, ip } => {
                assert_eq!(regs.rip, u64::from(ip));
                assert_eq!((sregs.cs.selector, sregs.cs.base), (cs, u64::from(cs) << 4));
                assert_eq!(sregs.cs.limit, 0xffff);
                assert_eq!(sregs.ds.base, 0);
                assert_eq!(sregs.cr0 & 0x8000_0001, 0, "real mode, no paging");
            }
        }
        let fpu = vcpus[0].get_fpu().unwrap();
        assert_eq!(fpu.fcw, 0x37f);
        // This machine's PVM KVM_GET_FPU reports MXCSR as 0 even for a fresh vCPU (whose
        // MXCSR is 0x1f80); check it only where KVM reports it.
        if fresh_vcpu_reports_mxcsr(&kvm) {
            assert_eq!(fpu.mxcsr, 0x1f80);
        }
        let (lvt0, lvt1) = regs::read_lints(&vcpus[0]).unwrap();
        assert_eq!((lvt0 >> 8) & 7, regs::APIC_MODE_EXTINT);
        assert_eq!((lvt1 >> 8) & 7, regs::APIC_MODE_NMI);
    }
}

#[test]
fn configure_application_processor_leaves_registers_alone() {
    let Some((kvm, _vm, vcpus)) = kvm_vcpus(2) else {
        return;
    };
    let mem = guest_mem(16 << 20);
    let entry = entries()[0];
    let before = vcpus[1].get_sregs().unwrap();
    configure_vcpu(&kvm, &vcpus[1], 1, 2, &entry, &mem).unwrap();
    let after = vcpus[1].get_sregs().unwrap();
    assert_eq!(
        (after.cr0, after.cs.selector),
        (before.cr0, before.cs.selector)
    );
    assert_eq!(after.cs.selector, 0xf000, "still at the reset vector");

    let cpuid = vcpus[1]
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let leaf = |f: u32, i: u32| {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    };
    let l1 = leaf(1, 0);
    assert_eq!(l1.ebx >> 24, 1, "APIC id of vCPU 1");
    assert_ne!(l1.ecx & cpuid::ECX_HYPERVISOR, 0);
    let sig = leaf(cpuid::LEAF_KVM_SIGNATURE, 0);
    assert_eq!([sig.ebx, sig.ecx, sig.edx], cpuid::KVM_SIGNATURE);
    assert_eq!(leaf(0xb, 0).edx, 1, "x2APIC id");

    // The boot MSRs KVM supports read back.
    let supported = kvm.get_msr_index_list().unwrap();
    for (index, value) in [
        (regs::MSR_IA32_MISC_ENABLE, regs::MISC_ENABLE_FAST_STRING),
        (regs::MSR_MTRR_DEF_TYPE, regs::MTRR_DEF_TYPE_WB_ENABLED),
    ] {
        if !supported.as_slice().contains(&index) {
            continue;
        }
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(vcpus[1].get_msrs(&mut msrs).unwrap(), 1);
        assert_eq!(msrs.as_slice()[0].data & value, value, "MSR {index:#x}");
    }
}

#[test]
fn configure_vcpu_checks_its_ids() {
    let Some((kvm, _vm, vcpus)) = kvm_vcpus(1) else {
        return;
    };
    let mem = guest_mem(16 << 20);
    let err = configure_vcpu(&kvm, &vcpus[0], 2, 2, &entries()[0], &mem).unwrap_err();
    assert_eq!(err.to_string(), "vCPU id 2 is out of range for 2 vCPUs");
    assert!(matches!(
        configure_vcpu(&kvm, &vcpus[0], 0, 0, &entries()[0], &mem),
        Err(ArchError::NoVcpus)
    ));
}

#[test]
fn configure_vcpu_without_irqchip_says_so() {
    let Ok(kvm) = Kvm::new() else {
        return;
    };
    let vm = kvm.create_vm().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let mem = guest_mem(16 << 20);
    let err = configure_vcpu(&kvm, &vcpu, 0, 1, &entries()[1], &mem).unwrap_err();
    assert!(err.to_string().contains("irqchip"), "{err}");
}
