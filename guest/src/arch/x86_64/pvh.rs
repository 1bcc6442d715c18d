//! The PVH boot protocol: `hvm_start_info` (its physical address arrives in EBX).
//!
//! Everything the guest needs from it is copied out at boot, so that low memory (where VMMs
//! place the start info, memory map and command line) can be reused, e.g. by the SMP trampoline.
use crate::sync::Global;

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const MAGIC: u32 = 0x336e_c578;
/// Longest command line kept (Linux's limit, which trapvisor uses for every protocol).
pub const CMDLINE_MAX: usize = 2048;
/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

/// `struct hvm_start_info`.
#[repr(C)]
#[derive(Clone, Copy)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// What the guest keeps of the start info.
pub struct BootInfo {
    pub start_info_paddr: u64,
    pub version: u32,
    pub rsdp_paddr: u64,
    pub memmap_entries: u32,
    /// Usable RAM in bytes, from the memory map (0 when there is none).
    pub ram_bytes: u64,
    /// The end of the highest RAM range of the memory map (0 when there is none).
    pub ram_top: u64,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
}

impl BootInfo {
    /// The command line as received (bytes up to the first NUL, at most [`CMDLINE_MAX`]).
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }
}

static BOOT_INFO: Global<BootInfo> = Global::new(BootInfo {
    start_info_paddr: 0,
    version: 0,
    rsdp_paddr: 0,
    memmap_entries: 0,
    ram_bytes: 0,
    ram_top: 0,
    cmdline: [0; CMDLINE_MAX],
    cmdline_len: 0,
});

/// Reads and copies the start info at `paddr`. Called once, on the BSP, before anything else
/// runs; returns the copy, which lives for the rest of the guest's life.
pub fn read(paddr: u64) -> Result<&'static BootInfo, &'static str> {
    if paddr == 0 || paddr >= 0x1_0000_0000 {
        return Err("start info address out of range (not booted through PVH?)");
    }
    // SAFETY: the first 4 GiB are identity-mapped and the VMM put the start info at `paddr`;
    // read_unaligned copes with any alignment.
    let si = unsafe { core::ptr::read_unaligned(paddr as *const StartInfo) };
    if si.magic != MAGIC {
        return Err("bad hvm_start_info magic");
    }
    // SAFETY: single CPU at boot; nothing else references BOOT_INFO yet.
    let info = unsafe { &mut *BOOT_INFO.get() };
    info.start_info_paddr = paddr;
    info.version = si.version;
    info.rsdp_paddr = si.rsdp_paddr;
    info.memmap_entries = si.memmap_entries;

    if si.cmdline_paddr != 0 && si.cmdline_paddr < 0x1_0000_0000 {
        let mut n = 0;
        while n < CMDLINE_MAX {
            // SAFETY: identity-mapped guest RAM holding the NUL-terminated command line.
            let b = unsafe { core::ptr::read_volatile((si.cmdline_paddr + n as u64) as *const u8) };
            if b == 0 {
                break;
            }
            info.cmdline[n] = b;
            n += 1;
        }
        info.cmdline_len = n;
    }

    // The memory map exists from version 1 on.
    if si.version >= 1 && si.memmap_paddr != 0 && si.memmap_paddr < 0x1_0000_0000 {
        let entries = si.memmap_entries.min(128) as u64;
        for i in 0..entries {
            let at = si.memmap_paddr + i * core::mem::size_of::<MemmapEntry>() as u64;
            // SAFETY: identity-mapped guest RAM holding the memory map the VMM described.
            let e = unsafe { core::ptr::read_unaligned(at as *const MemmapEntry) };
            if e.kind == E820_RAM {
                info.ram_bytes += e.size;
                info.ram_top = info.ram_top.max(e.addr.saturating_add(e.size));
            }
        }
    }
    Ok(info)
}
