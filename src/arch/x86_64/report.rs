//! The report printed when the guest cannot go on: exit reason, registers, and the instruction
//! bytes at RIP (translated through the guest's page tables when paging is on).
use std::fmt::Write;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1;
const PTE_LARGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Translates a linear address with the guest's 4-level page tables (long mode), or 1:1 when
/// paging is off. Other paging modes are not walked. Reads go through `mem`, so a table
/// outside RAM ends the walk.
pub fn translate(mem: &GuestMemoryMmap, sregs: &kvm_sregs, linear: u64) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        return Some(linear);
    }
    if sregs.efer & EFER_LMA == 0 || sregs.cr4 & CR4_PAE == 0 {
        return None;
    }
    let mut table = sregs.cr3 & ADDR_MASK;
    // Levels: PML4 (bits 47..39), PDPT (38..30), PD (29..21), PT (20..12).
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let index = (linear >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        let large = (level == 1 || level == 2) && entry & PTE_LARGE != 0;
        if large || level == 3 {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (linear & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

/// The report for vCPU `id`, which stopped because of `why`: its registers read from KVM now.
pub fn vcpu_report(fd: &VcpuFd, id: u8, why: &str, mem: &GuestMemoryMmap) -> String {
    let regs = fd.get_regs().ok();
    let sregs = fd.get_sregs().ok();
    format_report(id, why, regs.as_ref(), sregs.as_ref(), mem)
}

/// Formats the register report. `regs`/`sregs` are `None` when KVM could not return them.
pub fn format_report(
    vcpu_id: u8,
    reason: &str,
    regs: Option<&kvm_regs>,
    sregs: Option<&kvm_sregs>,
    mem: &GuestMemoryMmap,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "vcpu{vcpu_id}: {reason}");
    let (Some(r), Some(sr)) = (regs, sregs) else {
        let _ = writeln!(s, "  (registers unavailable)");
        return s;
    };
    let linear = sr.cs.base.wrapping_add(r.rip);
    let _ = writeln!(
        s,
        "  rip={:#018x} (cs={:#06x} base={:#x} linear={:#x}) rflags={:#x}",
        r.rip, sr.cs.selector, sr.cs.base, linear, r.rflags
    );
    let bytes = translate(mem, sr, linear).and_then(|phys| {
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(phys))
            .ok()
            .map(|_| (phys, b))
    });
    match bytes {
        Some((phys, b)) => {
            let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
            let _ = writeln!(s, "  code at {phys:#x}: {}", hex.join(" "));
        }
        None => {
            let _ = writeln!(s, "  code: RIP does not map to guest RAM");
        }
    }
    let _ = writeln!(
        s,
        "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
        r.rax, r.rbx, r.rcx, r.rdx
    );
    let _ = writeln!(
        s,
        "  rsi={:#018x} rdi={:#018x} rsp={:#018x} rbp={:#018x}",
        r.rsi, r.rdi, r.rsp, r.rbp
    );
    let _ = writeln!(
        s,
        "  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}",
        r.r8, r.r9, r.r10, r.r11
    );
    let _ = writeln!(
        s,
        "  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}",
        r.r12, r.r13, r.r14, r.r15
    );
    let _ = writeln!(
        s,
        "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cpl={}",
        sr.cr0,
        sr.cr2,
        sr.cr3,
        sr.cr4,
        sr.efer,
        sr.cs.selector & 3
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    #[test]
    fn paging_off_is_identity() {
        let sregs = kvm_sregs::default();
        assert_eq!(translate(&mem(), &sregs, 0x1234), Some(0x1234));
    }

    #[test]
    fn walks_4_level_tables_with_2m_and_4k_pages() {
        let m = mem();
        // PML4 at 0x1000 → PDPT at 0x2000 → PD at 0x3000.
        m.write_obj(0x2000u64 | 3, GuestAddress(0x1000)).unwrap();
        m.write_obj(0x3000u64 | 3, GuestAddress(0x2000)).unwrap();
        // PD[0]: 2 MiB page at 0x200000. PD[1]: PT at 0x4000, whose entry 5 maps 0x7000.
        m.write_obj(0x20_0000u64 | 0x83, GuestAddress(0x3000))
            .unwrap();
        m.write_obj(0x4000u64 | 3, GuestAddress(0x3008)).unwrap();
        m.write_obj(0x7000u64 | 3, GuestAddress(0x4000 + 5 * 8))
            .unwrap();
        let sregs = kvm_sregs {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
            ..Default::default()
        };
        assert_eq!(translate(&m, &sregs, 0x1_2345), Some(0x21_2345));
        assert_eq!(translate(&m, &sregs, 0x20_5123), Some(0x7123));
        // Not present: PD[2] is zero.
        assert_eq!(translate(&m, &sregs, 0x40_0000), None);
        // A table pointer outside RAM ends the walk.
        m.write_obj(0x4000_0000u64 | 3, GuestAddress(0x3010))
            .unwrap();
        assert_eq!(translate(&m, &sregs, 0x40_0000), None);
    }

    #[test]
    fn report_shows_reason_registers_and_code() {
        let m = mem();
        m.write_slice(&[0x0f, 0x0b], GuestAddress(0x1000)).unwrap();
        let regs = kvm_regs {
            rip: 0x1000,
            rax: 0xdead,
            ..Default::default()
        };
        let sregs = kvm_sregs::default();
        let r = format_report(0, "KVM_EXIT_INTERNAL_ERROR", Some(&regs), Some(&sregs), &m);
        assert!(r.contains("vcpu0: KVM_EXIT_INTERNAL_ERROR"));
        assert!(r.contains("code at 0x1000: 0f 0b 00"), "{r}");
        assert!(r.contains("rax=0x000000000000dead"), "{r}");
        let far = kvm_regs {
            rip: 0x4000_0000,
            ..Default::default()
        };
        let r = format_report(1, "x", Some(&far), Some(&sregs), &m);
        assert!(r.contains("does not map to guest RAM"), "{r}");
        assert!(format_report(2, "y", None, None, &m).contains("unavailable"));
    }
}
