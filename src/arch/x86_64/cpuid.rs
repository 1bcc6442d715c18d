//! CPUID for each vCPU: KVM's supported CPUID, filtered as Firecracker and Cloud Hypervisor do.
//!
//! - Leaf 0x1: initial APIC id (EBX[31:24]) = vCPU index, addressable logical processors
//!   (EBX[23:16]) = vCPU count rounded up to a power of two, CLFLUSH size 64 bytes, HTT when
//!   there is more than one vCPU; hypervisor (ECX[31]) and TSC-deadline (ECX[24], emulated by
//!   the in-kernel local APIC) set; PDCM (ECX[15], perf capabilities) cleared: no PMU here.
//! - Leaf 0x4 (Intel): one thread per L1/L2 cache, the L3 shared by all vCPUs, cores per
//!   package = vCPU count.
//! - Leaves 0xB and 0x1F: two levels, SMT (one thread per core) and core (all vCPUs in one
//!   package), each with the x2APIC id in EDX.
//! - Leaf 0xA (architectural PMU) is dropped: no PMU here.
//! - 0x40000000: "KVMKVMKVM\0\0\0", max leaf 0x40000001; 0x40000001: KVM's features as
//!   supported.
//! - AMD: 0x80000008 ECX core count, 0x8000001E extended APIC id and core id.
use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};

use super::{kvm_err, ArchError};

pub const LEAF_FEATURES: u32 = 0x1;
pub const LEAF_CACHE_PARAMS: u32 = 0x4;
pub const LEAF_PMU: u32 = 0xa;
pub const LEAF_TOPOLOGY: u32 = 0xb;
pub const LEAF_TOPOLOGY_V2: u32 = 0x1f;
pub const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
pub const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
pub const LEAF_AMD_SIZES: u32 = 0x8000_0008;
pub const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// Leaf 1 ECX bits.
pub const ECX_PDCM: u32 = 1 << 15;
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT (EBX[23:16] is valid).
pub const EDX_HTT: u32 = 1 << 28;

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// x86 CPU vendors that matter to topology leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// The vendor named by leaf 0.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(e) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&e.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&e.edx.to_le_bytes());
    id[8..].copy_from_slice(&e.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `n` things: ceil(log2(n)).
fn bits_for(n: u8) -> u32 {
    u32::from(n).next_power_of_two().trailing_zeros()
}

fn set_bits(reg: &mut u32, shift: u32, width: u32, value: u32) {
    let mask = ((1u64 << width) - 1) as u32;
    *reg = (*reg & !(mask << shift)) | ((value & mask) << shift);
}

fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// The topology leaf `function` (0xB or 0x1F) for vCPU `id` of `nr_cpus`: SMT level (one
/// thread per core), core level (all vCPUs), then the terminating invalid level.
fn topology_leaf(function: u32, id: u8, nr_cpus: u8) -> [kvm_cpuid_entry2; 3] {
    let id = u32::from(id);
    let f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    [
        entry(function, 0, f, [0, 1, 1 << 8, id]),
        entry(
            function,
            1,
            f,
            [bits_for(nr_cpus), u32::from(nr_cpus), (2 << 8) | 1, id],
        ),
        entry(function, 2, f, [0, 0, 2, id]),
    ]
}

/// Filters KVM's supported CPUID `entries` for vCPU `id` of `nr_cpus` (see the module docs).
/// Pure: no KVM needed.
pub fn filter_cpuid(
    entries: &mut Vec<kvm_cpuid_entry2>,
    id: u8,
    nr_cpus: u8,
) -> Result<(), ArchError> {
    let vendor = vendor(entries);
    let nr = u32::from(nr_cpus.max(1));
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);

    entries.retain(|e| e.function != LEAF_PMU);

    let leaf1 = entries
        .iter_mut()
        .find(|e| e.function == LEAF_FEATURES)
        .ok_or(ArchError::CpuidLeafMissing(LEAF_FEATURES))?;
    set_bits(&mut leaf1.ebx, 8, 8, 8);
    set_bits(&mut leaf1.ebx, 16, 8, nr.next_power_of_two());
    set_bits(&mut leaf1.ebx, 24, 8, u32::from(id));
    leaf1.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
    leaf1.ecx &= !ECX_PDCM;
    if nr > 1 {
        leaf1.edx |= EDX_HTT;
    } else {
        leaf1.edx &= !EDX_HTT;
    }

    if vendor == Vendor::Intel {
        for e in entries
            .iter_mut()
            .filter(|e| e.function == LEAF_CACHE_PARAMS && e.eax & 0x1f != 0)
        {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { nr - 1 } else { 0 };
            set_bits(&mut e.eax, 14, 12, sharing);
            set_bits(&mut e.eax, 26, 6, (nr - 1).min(63));
        }
    }

    for function in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        let present = entries.iter().any(|e| e.function == function);
        entries.retain(|e| e.function != function);
        // 0xB whenever the basic range reaches it; 0x1F only where KVM offers it.
        if (function == LEAF_TOPOLOGY && max_basic >= LEAF_TOPOLOGY) || present {
            entries.extend(topology_leaf(function, id, nr_cpus.max(1)));
        }
    }

    entries.retain(|e| e.function != LEAF_KVM_SIGNATURE);
    entries.push(entry(
        LEAF_KVM_SIGNATURE,
        0,
        0,
        [
            LEAF_KVM_FEATURES,
            KVM_SIGNATURE[0],
            KVM_SIGNATURE[1],
            KVM_SIGNATURE[2],
        ],
    ));
    if !entries.iter().any(|e| e.function == LEAF_KVM_FEATURES) {
        entries.push(entry(LEAF_KVM_FEATURES, 0, 0, [0; 4]));
    }

    if vendor == Vendor::Amd {
        if let Some(e) = entries.iter_mut().find(|e| e.function == LEAF_AMD_SIZES) {
            set_bits(&mut e.ecx, 0, 8, nr - 1);
            set_bits(&mut e.ecx, 12, 4, bits_for(nr_cpus.max(1)));
        }
        if let Some(e) = entries.iter_mut().find(|e| e.function == LEAF_AMD_TOPOLOGY) {
            e.eax = u32::from(id);
            // Compute unit (core) id = vCPU index, one thread per core.
            e.ebx = u32::from(id);
            // Node 0, one node per package.
            e.ecx = 0;
            e.edx = 0;
        }
    }

    if entries.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(ArchError::CpuidTooLarge(entries.len()));
    }
    Ok(())
}

/// Fills the processor brand string leaves (0x8000_0002..=0x8000_0004) with `brand` when KVM
/// left them zero (it does: Linux then calls the CPU "AMD Hammer" or similar). `brand` is 48
/// bytes of the string as CPUID returns it, NUL-padded.
pub fn fill_brand(entries: &mut [kvm_cpuid_entry2], brand: &[u8; 48]) {
    for (i, function) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let Some(e) = entries.iter_mut().find(|e| e.function == function) else {
            continue;
        };
        if (e.eax | e.ebx | e.ecx | e.edx) != 0 {
            continue;
        }
        let word = |k: usize| {
            let o = i * 16 + k * 4;
            u32::from_le_bytes([brand[o], brand[o + 1], brand[o + 2], brand[o + 3]])
        };
        (e.eax, e.ebx, e.ecx, e.edx) = (word(0), word(1), word(2), word(3));
    }
}

/// The host CPU's brand string, as the brand leaves return it (zeros when it has none).
fn host_brand() -> [u8; 48] {
    let mut b = [0u8; 48];
    let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max < 0x8000_0004 {
        return b;
    }
    for (i, function) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = std::arch::x86_64::__cpuid(function);
        for (k, w) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
            b[i * 16 + k * 4..i * 16 + k * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    b
}

/// KVM's supported CPUID filtered for vCPU `id`, set on `vcpu`.
pub fn set_cpuid(kvm: &Kvm, vcpu: &VcpuFd, id: u8, nr_cpus: u8) -> Result<(), ArchError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut entries = supported.as_slice().to_vec();
    filter_cpuid(&mut entries, id, nr_cpus)?;
    fill_brand(&mut entries, &host_brand());
    let cpuid =
        CpuId::from_entries(&entries).map_err(|_| ArchError::CpuidTooLarge(entries.len()))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    fn vendor_leaf(max: u32, id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes(id[i..i + 4].try_into().unwrap());
        entry(0, 0, 0, [max, w(0), w(8), w(4)])
    }

    /// A cut-down Intel KVM_GET_SUPPORTED_CPUID.
    fn intel() -> Vec<kvm_cpuid_entry2> {
        let f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        vec![
            vendor_leaf(0x1f, b"GenuineIntel"),
            // Host-ish leaf 1: APIC id 7, 16 logical processors, PDCM and HTT set.
            entry(
                1,
                0,
                0,
                [0x806f8, 0x0710_0800, 0x7ffa_fbff | ECX_PDCM, 0xbfeb_fbff],
            ),
            entry(4, 0, f, [0x1c00_4121, 0, 0, 0]),
            entry(4, 1, f, [0x1c00_4122, 0, 0, 0]),
            entry(4, 2, f, [0x1c00_4143, 0, 0, 0]),
            entry(4, 3, f, [0x1c03_c163, 0, 0, 0]),
            entry(4, 4, f, [0, 0, 0, 0]),
            entry(0xa, 0, 0, [0x0803_0402, 0, 0, 0]),
            entry(0xb, 0, f, [1, 2, 0x100, 7]),
            entry(0x1f, 0, f, [1, 2, 0x100, 7]),
            entry(LEAF_KVM_SIGNATURE, 0, 0, [0x4000_0001, 1, 2, 3]),
            entry(LEAF_KVM_FEATURES, 0, 0, [0x0100_7afb, 0, 0, 0]),
        ]
    }

    #[test]
    fn leaf1_gets_apic_id_count_and_hypervisor_bit() {
        let mut e = intel();
        filter_cpuid(&mut e, 3, 6).unwrap();
        let l1 = leaf(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "initial APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 8, "addressable ids: 6 rounded up");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH 64 bytes");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ecx & ECX_PDCM, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.eax, 0x806f8, "signature untouched");

        let mut one = intel();
        filter_cpuid(&mut one, 0, 1).unwrap();
        let l1 = leaf(&one, 1, 0);
        assert_eq!(l1.ebx >> 16, 1);
        assert_eq!(l1.edx & EDX_HTT, 0);
    }

    #[test]
    fn kvm_signature_leaves() {
        let mut e = intel();
        filter_cpuid(&mut e, 0, 1).unwrap();
        let sig = leaf(&e, LEAF_KVM_SIGNATURE, 0);
        assert_eq!(sig.eax, LEAF_KVM_FEATURES);
        let mut name = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name, b"KVMKVMKVM\0\0\0");
        assert_eq!(
            leaf(&e, LEAF_KVM_FEATURES, 0).eax,
            0x0100_7afb,
            "features as supported"
        );
        assert_eq!(
            e.iter()
                .filter(|x| x.function == LEAF_KVM_SIGNATURE)
                .count(),
            1
        );

        // A list without the features leaf gets an empty one.
        let mut bare = intel();
        bare.retain(|x| x.function != LEAF_KVM_FEATURES);
        filter_cpuid(&mut bare, 0, 1).unwrap();
        assert_eq!(leaf(&bare, LEAF_KVM_FEATURES, 0).eax, 0);
    }

    #[test]
    fn pmu_leaf_is_dropped() {
        let mut e = intel();
        filter_cpuid(&mut e, 0, 2).unwrap();
        assert!(!e.iter().any(|x| x.function == LEAF_PMU));
    }

    #[test]
    fn topology_leaves_carry_the_x2apic_id() {
        let mut e = intel();
        filter_cpuid(&mut e, 5, 6).unwrap();
        for function in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
            let smt = leaf(&e, function, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
            let core = leaf(&e, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
            let end = leaf(&e, function, 2);
            assert_eq!((end.eax, end.ebx, end.ecx & 0xff00, end.edx), (0, 0, 0, 5));
            assert_eq!(e.iter().filter(|x| x.function == function).count(), 3);
            assert!(e
                .iter()
                .filter(|x| x.function == function)
                .all(|x| x.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX));
        }
    }

    #[test]
    fn leaf_0x1f_only_where_kvm_offers_it() {
        let mut e = intel();
        e.retain(|x| x.function != LEAF_TOPOLOGY_V2 && x.function != LEAF_TOPOLOGY);
        filter_cpuid(&mut e, 0, 2).unwrap();
        assert!(e.iter().any(|x| x.function == LEAF_TOPOLOGY));
        assert!(!e.iter().any(|x| x.function == LEAF_TOPOLOGY_V2));
    }

    #[test]
    fn cache_leaf_shares_l3_between_all_vcpus() {
        let mut e = intel();
        filter_cpuid(&mut e, 0, 4).unwrap();
        for (index, sharing) in [(0, 0), (1, 0), (2, 0), (3, 3)] {
            let c = leaf(&e, 4, index);
            assert_eq!((c.eax >> 14) & 0xfff, sharing, "subleaf {index}");
            assert_eq!(c.eax >> 26, 3, "cores per package - 1");
            assert_eq!(c.eax & 0x3fff, leaf(&intel(), 4, index).eax & 0x3fff);
        }
        assert_eq!(leaf(&e, 4, 4).eax, 0, "terminator untouched");
    }

    #[test]
    fn amd_core_count_and_extended_apic_id() {
        let mut e = vec![
            vendor_leaf(0x10, b"AuthenticAMD"),
            entry(1, 0, 0, [0x830f10, 0, 0, 0]),
            entry(LEAF_AMD_SIZES, 0, 0, [0x3030, 0, 0x700f, 0]),
            entry(LEAF_AMD_TOPOLOGY, 0, 0, [9, 0x0109, 0x0100, 0]),
        ];
        assert_eq!(vendor(&e), Vendor::Amd);
        filter_cpuid(&mut e, 2, 3).unwrap();
        let sizes = leaf(&e, LEAF_AMD_SIZES, 0);
        assert_eq!(sizes.ecx & 0xff, 2, "NC = cores - 1");
        assert_eq!((sizes.ecx >> 12) & 0xf, 2, "APIC id bits");
        let topo = leaf(&e, LEAF_AMD_TOPOLOGY, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx), (2, 2, 0));
        assert!(
            e.iter().any(|x| x.function == LEAF_TOPOLOGY),
            "0xB up to max 0x10"
        );
    }

    #[test]
    fn missing_leaf1_is_an_error() {
        let mut e = vec![vendor_leaf(0xd, b"GenuineIntel")];
        let err = filter_cpuid(&mut e, 0, 1).unwrap_err();
        assert!(matches!(err, ArchError::CpuidLeafMissing(1)), "{err}");
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(
            [1u8, 2, 3, 4, 5, 8, 9, 255].map(bits_for),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }

    #[test]
    fn brand_string_fills_only_empty_leaves() {
        let mut brand = [0u8; 48];
        brand[..21].copy_from_slice(b"trapvisor virtual CPU");
        let mut e: Vec<kvm_cpuid_entry2> = (0x8000_0002u32..=0x8000_0004)
            .map(|function| kvm_cpuid_entry2 {
                function,
                ..Default::default()
            })
            .collect();
        e[2].eax = 7; // KVM gave this one: keep it
        fill_brand(&mut e, &brand);
        assert_eq!(e[0].eax.to_le_bytes(), *b"trap");
        assert_eq!(e[0].edx.to_le_bytes(), *b"rtua");
        assert_eq!(e[1].eax.to_le_bytes(), *b"l CP");
        assert_eq!(e[2].eax, 7);
        assert_eq!(e[2].ebx, 0);
    }
}
