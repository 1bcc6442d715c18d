//! vCPU boot state: general registers, segments and control registers, the boot GDT, IDT and
//! identity page tables, FPU, MSRs and the local APIC's LINT pins (as Firecracker and Cloud
//! Hypervisor set them).
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_PD_COUNT, BOOT_STACK_POINTER, PDE_START, PDPTE_START,
    PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use super::{kvm_err, mem_err, ArchError, BootEntry};

pub const X86_CR0_PE: u64 = 1 << 0;
pub const X86_CR0_ET: u64 = 1 << 4;
pub const X86_CR0_PG: u64 = 1 << 31;
pub const X86_CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Boot MSRs (as Firecracker's `create_boot_msr_entries`).
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled (bit 11), default memory type write-back (6).
pub const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// Local APIC LVT LINT0 / LINT1 register offsets and delivery modes.
pub const APIC_LVT0: usize = 0x350;
pub const APIC_LVT1: usize = 0x360;
pub const APIC_MODE_NMI: u32 = 0x4;
pub const APIC_MODE_EXTINT: u32 = 0x7;

/// GDT selectors of the boot GDT: null, code, data, TSS.
pub const GDT_CODE_SELECTOR: u16 = 1 << 3;
pub const GDT_DATA_SELECTOR: u16 = 2 << 3;
pub const GDT_TSS_SELECTOR: u16 = 3 << 3;

/// Page-table entry bits: present, writable, page size (2 MiB page in a PD).
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_LARGE: u64 = 0x80;

/// A GDT descriptor from access/flags (`flags` is the 0xF0FF pattern: flags nibble in bits
/// 15:12, access byte in 7:0), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment a GDT descriptor at `index` describes.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT for `entry`'s mode: null, code, data, TSS.
pub fn boot_gdt(entry: &BootEntry) -> [u64; 4] {
    match entry {
        BootEntry::Pvh { .. } => [
            0,
            gdt_entry(0xc09b, 0, 0xffff_ffff),
            gdt_entry(0xc093, 0, 0xffff_ffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
        _ => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x808b, 0, 0xfffff),
        ],
    }
}

fn write_gdt_idt(
    mem: &GuestMemoryMmap,
    gdt: &[u64; 4],
    sregs: &mut kvm_sregs,
) -> Result<(), ArchError> {
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(mem_err("the boot GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(mem_err("the boot IDT"))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    Ok(())
}

/// Identity page tables at `PML4_START`: one PML4 entry, `BOOT_PD_COUNT` PDPT entries and
/// 2 MiB pages covering the first `BOOT_PD_COUNT` GiB.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(mem_err("the boot page tables"))?;
    for pd in 0..BOOT_PD_COUNT {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | PTE_PRESENT_RW, GuestAddress(PDPTE_START + pd * 8))
            .map_err(mem_err("the boot page tables"))?;
        let mut page = [0u8; 4096];
        for (i, slot) in page.chunks_exact_mut(8).enumerate() {
            let addr = ((pd << 9) + i as u64) << 21;
            slot.copy_from_slice(&(addr | PDE_LARGE | PTE_PRESENT_RW).to_le_bytes());
        }
        mem.write_slice(&page, GuestAddress(pd_addr))
            .map_err(mem_err("the boot page tables"))?;
    }
    Ok(())
}

/// The special registers of the boot vCPU for `entry`, from the vCPU's reset state `sregs`;
/// writes the GDT, IDT and (long mode) page tables to `mem`.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, ArchError> {
    match entry {
        BootEntry::Linux64 { .. } => {
            write_gdt_idt(mem, &boot_gdt(entry), &mut sregs)?;
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            write_gdt_idt(mem, &boot_gdt(entry), &mut sregs)?;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.efer = 0;
        }
        BootEntry::RealMode { cs, .. } => {
            sregs.cs.selector = *cs;
            sregs.cs.base = u64::from(*cs) << 4;
            sregs.cs.limit = 0xffff;
            for seg in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                seg.selector = 0;
                seg.base = 0;
                seg.limit = 0xffff;
            }
            sregs.cr0 = X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// Sets the boot vCPU's special registers for `entry`.
pub fn setup_sregs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
) -> Result<(), ArchError> {
    let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let sregs = boot_sregs(mem, entry, sregs)?;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))
}

/// The general registers of the boot vCPU for `entry`.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry } => {
            regs.rip = entry.0;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootEntry::Pvh { entry } => {
            regs.rip = entry.0;
            regs.rbx = PVH_INFO_START;
        }
        BootEntry::RealMode { ip, .. } => regs.rip = u64::from(*ip),
    }
    regs
}

/// Sets the boot vCPU's general registers for `entry`.
pub fn setup_regs(vcpu: &VcpuFd, entry: &BootEntry) -> Result<(), ArchError> {
    vcpu.set_regs(&boot_regs(entry))
        .map_err(kvm_err("KVM_SET_REGS"))
}

/// x87 control word and MXCSR at their reset defaults.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))
}

/// The boot MSRs (index, value).
pub fn boot_msrs() -> [(u32, u64); 11] {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
}

/// Sets the boot MSRs that KVM lists as supported (and the MTRR default type). An MSR KVM then refuses is skipped with a
/// warning rather than failing the boot.
pub fn setup_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<(), ArchError> {
    let supported = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let supported = supported.as_slice();
    let mut entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .filter(|(index, _)| {
            // KVM always emulates the MTRRs but leaves them out of the index list; without
            // MTRRdefType Linux finds "MTRRs disabled" and skips PAT.
            let ok = supported.contains(index) || *index == MSR_MTRR_DEF_TYPE;
            if !ok {
                log::debug!("MSR {index:#x} is not supported by KVM; not set");
            }
            ok
        })
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    while !entries.is_empty() {
        let msrs = Msrs::from_entries(&entries).map_err(|_| ArchError::Kvm {
            op: "KVM_SET_MSRS",
            err: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let done = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if done >= entries.len() {
            break;
        }
        // KVM stops at the first MSR it refuses: skip that one and carry on.
        log::warn!(
            "KVM refused MSR {:#x}; leaving it at its reset value",
            entries[done].index
        );
        entries.drain(..=done);
    }
    Ok(())
}

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = byte as std::os::raw::c_char;
    }
}

/// `reg` with its delivery mode (bits 10:8) replaced by `mode`.
pub fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (the 8259s' output), LINT1 = NMI, as a PC's BIOS leaves them.
pub fn setup_lints(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut lapic = vcpu.get_lapic().map_err(|err| ArchError::Lapic {
        op: "KVM_GET_LAPIC",
        err,
    })?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(|err| ArchError::Lapic {
        op: "KVM_SET_LAPIC",
        err,
    })
}

/// Reads LVT0 and LVT1 of the vCPU's local APIC (for tests and diagnostics).
pub fn read_lints(vcpu: &VcpuFd) -> Result<(u32, u32), ArchError> {
    let lapic = vcpu.get_lapic().map_err(|err| ArchError::Lapic {
        op: "KVM_GET_LAPIC",
        err,
    })?;
    Ok((
        lapic_reg(&lapic.regs, APIC_LVT0),
        lapic_reg(&lapic.regs, APIC_LVT1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code64.base, code64.limit, code64.selector),
            (0, 0xffff_ffff, 8)
        );
        assert_eq!(
            (code64.type_, code64.s, code64.present, code64.dpl),
            (0xb, 1, 1, 0)
        );
        assert_eq!(
            (code64.l, code64.db, code64.g, code64.unusable),
            (1, 0, 1, 0)
        );

        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xffff_ffff), 1);
        assert_eq!(
            (code32.limit, code32.l, code32.db, code32.g),
            (0xffff_ffff, 0, 1, 1)
        );

        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!(
            (tss.limit, tss.type_, tss.s, tss.g, tss.selector),
            (0x67, 0xb, 0, 0, 0x18)
        );

        let null = segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));

        let based = segment_from_gdt(gdt_entry(0xc093, 0x1234_5678, 0xfffff), 2);
        assert_eq!(based.base, 0x1234_5678);
    }

    #[test]
    fn long_mode_sregs_and_page_tables() {
        let mem = mem();
        let entry = BootEntry::Linux64 {
            entry: GuestAddress(0x100_0000),
        };
        let s = boot_sregs(&mem, &entry, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_PG | X86_CR0_ET);
        assert_eq!(s.cr4, X86_CR4_PAE);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l), (GDT_CODE_SELECTOR, 1));
        assert_eq!(
            (s.ds.selector, s.ss.selector),
            (GDT_DATA_SELECTOR, GDT_DATA_SELECTOR)
        );
        assert_eq!(s.tr.selector, GDT_TSS_SELECTOR);
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 7));

        let gdt: [u64; 4] = mem.read_obj(GuestAddress(BOOT_GDT_START)).unwrap();
        assert_eq!(gdt, boot_gdt(&entry));
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        for pd in 0..BOOT_PD_COUNT {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START + pd * 8)).unwrap();
            assert_eq!(pdpte, (PDE_START + pd * 0x1000) | 3);
        }
        // 2 MiB pages, identity: the n-th PD entry maps n * 2 MiB.
        let first: u64 = mem.read_obj(GuestAddress(PDE_START)).unwrap();
        assert_eq!(first, 0x83);
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + BOOT_PD_COUNT * 0x1000 - 8))
            .unwrap();
        assert_eq!(last, ((BOOT_PD_COUNT << 30) - (2 << 20)) | 0x83);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode() {
        let mem = mem();
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x100_0000),
        };
        let s = boot_sregs(&mem, &entry, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert_eq!(
            (s.cs.base, s.cs.limit, s.cs.db, s.cs.l),
            (0, 0xffff_ffff, 1, 0)
        );
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(
                (seg.selector, seg.base, seg.limit, seg.type_),
                (0x10, 0, 0xffff_ffff, 3)
            );
        }
        assert_eq!((s.tr.base, s.tr.limit, s.tr.type_), (0, 0x67, 0xb));
    }

    #[test]
    fn real_mode_sregs() {
        let mem = mem();
        let reset = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        let s = boot_sregs(
            &mem,
            &BootEntry::RealMode {
                cs: 0x1234,
                ip: 0x10,
            },
            reset,
        )
        .unwrap();
        assert_eq!(
            (s.cs.selector, s.cs.base, s.cs.limit),
            (0x1234, 0x12340, 0xffff)
        );
        assert_eq!((s.ds.base, s.ss.base, s.es.selector), (0, 0, 0));
        assert_eq!(s.cr0, X86_CR0_ET);
    }

    #[test]
    fn boot_regs_per_protocol() {
        let r = boot_regs(&BootEntry::Linux64 {
            entry: GuestAddress(0x10_0200),
        });
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rbp, r.rflags),
            (
                0x10_0200,
                ZERO_PAGE_START,
                BOOT_STACK_POINTER,
                BOOT_STACK_POINTER,
                2
            )
        );
        let r = boot_regs(&BootEntry::Pvh {
            entry: GuestAddress(0x100_0850),
        });
        assert_eq!(
            (r.rip, r.rbx, r.rflags, r.rsi),
            (0x100_0850, PVH_INFO_START, 2, 0)
        );
        let r = boot_regs(&BootEntry::RealMode { cs: 0, ip: 0x7c00 });
        assert_eq!((r.rip, r.rflags), (0x7c00, 2));
    }

    #[test]
    fn delivery_mode_replaces_bits_10_to_8() {
        assert_eq!(with_delivery_mode(0x1_0000, APIC_MODE_EXTINT), 0x1_0700);
        assert_eq!(with_delivery_mode(0x1_0700, APIC_MODE_NMI), 0x1_0400);
    }
}
