//! The guest memory map and the two boot tables that carry it: the Linux zero page
//! (`boot_params` with its e820 table) and PVH's `hvm_start_info` with its memory map and
//! module list.
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    self, CMDLINE_START, EBDA_START, HIGH_RAM_START, MEMMAP_START, PCI_ECAM_SIZE, PCI_ECAM_START,
    PVH_INFO_START, PVH_MODLIST_START, RSDP_START, ZERO_PAGE_START,
};
use super::{mem_err, ArchError};

/// e820 type of usable RAM (the same number in PVH's memory map).
pub const E820_RAM: u32 = 1;
/// e820 type of reserved ranges.
pub const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: "undefined" loader.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Alignment an ELF vmlinux is told it may be relocated to.
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Room for the PVH memory map: from MEMMAP_START up to the zero page.
const MEMMAP_MAX_ENTRIES: usize =
    (ZERO_PAGE_START - MEMMAP_START) as usize / std::mem::size_of::<hvm_memmap_table_entry>();

/// What a memory-map range is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemType {
    Ram,
    Reserved,
}

impl MemType {
    /// The e820 / PVH memory-map type number.
    pub fn e820_type(self) -> u32 {
        match self {
            MemType::Ram => E820_RAM,
            MemType::Reserved => E820_RESERVED,
        }
    }
}

/// One range of the guest memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    pub addr: u64,
    pub size: u64,
    pub kind: MemType,
}

/// The guest memory map for `mem_size` bytes of RAM, in address order: RAM below the EBDA,
/// the EBDA and BIOS area reserved up to 1 MiB, RAM from 1 MiB to the end of RAM below the
/// 32-bit MMIO hole, the PCI ECAM window reserved, and RAM above 4 GiB when there is some.
pub fn memory_map(mem_size: u64) -> Vec<MemRange> {
    let mut map = Vec::with_capacity(5);
    let mut push = |addr: u64, end: u64, kind: MemType| {
        if end > addr {
            map.push(MemRange {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    let low_end = mem_size.min(layout::MMIO_HOLE_START);
    push(0, low_end.min(EBDA_START), MemType::Ram);
    push(EBDA_START, HIGH_RAM_START, MemType::Reserved);
    push(HIGH_RAM_START, low_end, MemType::Ram);
    push(
        PCI_ECAM_START,
        PCI_ECAM_START + PCI_ECAM_SIZE,
        MemType::Reserved,
    );
    if mem_size > layout::MMIO_HOLE_START {
        push(
            layout::MMIO_HOLE_END,
            layout::ram_end(mem_size),
            MemType::Ram,
        );
    }
    map
}

/// The zero page for the Linux 64-bit boot protocol. `hdr` is a bzImage's setup header (an ELF
/// vmlinux has none and gets a minimal one); `cmdline_size` counts the NUL; `initrd` is
/// (address, size).
pub fn build_boot_params(
    hdr: Option<setup_header>,
    mem_size: u64,
    cmdline_size: u32,
    initrd: Option<(u64, u64)>,
) -> boot_params {
    let mut params = boot_params::default();
    match hdr {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    params.hdr.cmdline_size = cmdline_size;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = RSDP_START;
    let map = memory_map(mem_size);
    for (slot, range) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: range.addr,
            size: range.size,
            r#type: range.kind.e820_type(),
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes the zero page at `ZERO_PAGE_START`.
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), ArchError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(mem_err("the zero page"))
}

/// `hvm_start_info` as guest memory bytes.
#[repr(transparent)]
#[derive(Debug, Default, Clone, Copy)]
pub struct StartInfo(pub hvm_start_info);
// SAFETY: hvm_start_info is repr(C), made of integers only, and has no padding (4 u32 + 4 u64
// + 2 u32 = 56 bytes, every u64 at a multiple of 8), so every byte pattern is a valid value.
unsafe impl ByteValued for StartInfo {}

/// `hvm_memmap_table_entry` as guest memory bytes.
#[repr(transparent)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MemmapEntry(pub hvm_memmap_table_entry);
// SAFETY: repr(C), integers only, no padding (2 u64 + 2 u32 = 24 bytes).
unsafe impl ByteValued for MemmapEntry {}

/// `hvm_modlist_entry` as guest memory bytes.
#[repr(transparent)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ModlistEntry(pub hvm_modlist_entry);
// SAFETY: repr(C), integers only, no padding (4 u64 = 32 bytes).
unsafe impl ByteValued for ModlistEntry {}

/// PVH boot information: the start info and what it points at.
#[derive(Debug, Clone)]
pub struct PvhInfo {
    pub start_info: hvm_start_info,
    pub memmap: Vec<hvm_memmap_table_entry>,
    pub modules: Vec<hvm_modlist_entry>,
}

/// The PVH start info (version 1) for `mem_size` bytes of RAM and an optional initrd
/// (address, size): command line at `CMDLINE_START`, RSDP at `RSDP_START`, memory map at
/// `MEMMAP_START`, module list at `PVH_MODLIST_START`.
pub fn build_pvh_info(mem_size: u64, initrd: Option<(u64, u64)>) -> PvhInfo {
    let memmap: Vec<_> = memory_map(mem_size)
        .iter()
        .take(MEMMAP_MAX_ENTRIES)
        .map(|r| hvm_memmap_table_entry {
            addr: r.addr,
            size: r.size,
            type_: match r.kind {
                MemType::Ram => XEN_HVM_MEMMAP_TYPE_RAM,
                MemType::Reserved => XEN_HVM_MEMMAP_TYPE_RESERVED,
            },
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .into_iter()
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: RSDP_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    PvhInfo {
        start_info,
        memmap,
        modules,
    }
}

/// Writes the PVH start info, its memory map and module list.
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), ArchError> {
    let info = build_pvh_info(mem_size, initrd);
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in info.memmap.iter().enumerate() {
        mem.write_obj(
            MemmapEntry(*e),
            GuestAddress(MEMMAP_START + i as u64 * entry_size),
        )
        .map_err(mem_err("the PVH memory map"))?;
    }
    let mod_size = std::mem::size_of::<hvm_modlist_entry>() as u64;
    for (i, m) in info.modules.iter().enumerate() {
        mem.write_obj(
            ModlistEntry(*m),
            GuestAddress(PVH_MODLIST_START + i as u64 * mod_size),
        )
        .map_err(mem_err("the PVH module list"))?;
    }
    mem.write_obj(StartInfo(info.start_info), GuestAddress(PVH_INFO_START))
        .map_err(mem_err("the PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(addr: u64, size: u64) -> MemRange {
        MemRange {
            addr,
            size,
            kind: MemType::Ram,
        }
    }

    fn reserved(addr: u64, size: u64) -> MemRange {
        MemRange {
            addr,
            size,
            kind: MemType::Reserved,
        }
    }

    const EBDA_AREA: u64 = HIGH_RAM_START - EBDA_START;

    #[test]
    fn memory_map_256m() {
        assert_eq!(
            memory_map(256 << 20),
            vec![
                ram(0, EBDA_START),
                reserved(EBDA_START, EBDA_AREA),
                ram(HIGH_RAM_START, (256 << 20) - HIGH_RAM_START),
                reserved(PCI_ECAM_START, PCI_ECAM_SIZE),
            ]
        );
    }

    #[test]
    fn memory_map_4g_splits_around_the_hole() {
        // Only the table: no 4 GiB is allocated.
        assert_eq!(
            memory_map(4 << 30),
            vec![
                ram(0, EBDA_START),
                reserved(EBDA_START, EBDA_AREA),
                ram(HIGH_RAM_START, 0xc000_0000 - HIGH_RAM_START),
                reserved(PCI_ECAM_START, PCI_ECAM_SIZE),
                ram(0x1_0000_0000, 0x4000_0000),
            ]
        );
        // Exactly up to the hole: nothing above 4 GiB.
        assert_eq!(memory_map(0xc000_0000).len(), 4);
    }

    #[test]
    fn memory_map_ram_totals_mem_size() {
        for size in [1u64 << 20, 256 << 20, 3 << 30, 4 << 30, 64 << 30] {
            let ram: u64 = memory_map(size)
                .iter()
                .filter(|r| r.kind == MemType::Ram)
                .map(|r| r.size)
                .sum();
            // Everything but the EBDA/BIOS area below 1 MiB is usable.
            assert_eq!(ram, size - EBDA_AREA, "size {size:#x}");
        }
    }

    #[test]
    fn zero_page_of_a_vmlinux() {
        let p = build_boot_params(None, 256 << 20, 12, Some((0x0ff0_0000, 0x1234)));
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x0ff0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.acpi_rsdp_addr }, RSDP_START);
        assert_eq!(p.e820_entries, 4);
        let e = p.e820_table;
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
            (0, EBDA_START, 1)
        );
        assert_eq!(({ e[1].addr }, { e[1].r#type }), (EBDA_START, 2));
        assert_eq!(
            ({ e[2].addr }, { e[2].size }, { e[2].r#type }),
            (HIGH_RAM_START, (256 << 20) - HIGH_RAM_START, 1)
        );
        assert_eq!(({ e[3].addr }, { e[3].r#type }), (PCI_ECAM_START, 2));
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header() {
        let hdr = setup_header {
            version: 0x020f,
            setup_sects: 27,
            code32_start: 0x10_0000,
            ..Default::default()
        };
        let p = build_boot_params(Some(hdr), 4 << 30, 1, None);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.setup_sects }, 27);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!(p.e820_entries, 5);
        let last = p.e820_table[4];
        assert_eq!(({ last.addr }, { last.size }), (1 << 32, 1 << 30));
    }

    #[test]
    fn pvh_start_info() {
        let info = build_pvh_info(256 << 20, Some((0x0800_0000, 0x2000)));
        let s = info.start_info;
        assert_eq!(s.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(s.version, 1);
        assert_eq!(s.cmdline_paddr, CMDLINE_START);
        assert_eq!(s.rsdp_paddr, RSDP_START);
        assert_eq!(s.memmap_paddr, MEMMAP_START);
        assert_eq!(s.memmap_entries, 4);
        assert_eq!(s.nr_modules, 1);
        assert_eq!(s.modlist_paddr, PVH_MODLIST_START);
        assert_eq!(info.modules[0].paddr, 0x0800_0000);
        assert_eq!(info.modules[0].size, 0x2000);
        let types: Vec<u32> = info.memmap.iter().map(|e| e.type_).collect();
        assert_eq!(types, [1, 2, 1, 2]);
        assert_eq!(info.memmap[2].addr, HIGH_RAM_START);

        let none = build_pvh_info(4 << 30, None);
        assert_eq!(none.start_info.nr_modules, 0);
        assert_eq!(none.start_info.modlist_paddr, 0);
        assert_eq!(none.start_info.memmap_entries, 5);
        assert_eq!(none.memmap[4].addr, 1 << 32);
    }

    #[test]
    fn pvh_tables_do_not_overlap() {
        assert!(PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64 <= PVH_MODLIST_START);
        assert!(
            PVH_MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64 <= MEMMAP_START
        );
        assert!(MEMMAP_MAX_ENTRIES >= memory_map(1 << 40).len());
    }
}
