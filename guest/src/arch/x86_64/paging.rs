//! Changes to the boot identity map (see `boot`): uncached 2 MiB pages for device MMIO that is
//! not already in the uncached top GiB (QEMU's ECAM at 0xb000_0000), and identity mappings above
//! 4 GiB (64-bit BARs a VMM placed there).
use core::sync::atomic::{AtomicUsize, Ordering};

use super::boot;
use super::cpu;
use crate::sync::Global;

const PAGE_2M: u64 = 2 << 20;
const GIB: u64 = 1 << 30;
/// P | RW | US.
const TABLE_FLAGS: u64 = 0x7;
/// P | RW | US | PWT | PCD | PS.
const UNCACHED_2M: u64 = 0x9f;
const PWT_PCD: u64 = 0x18;
/// Highest address the one PDPT (under PML4[0]) reaches.
const PDPT_REACH: u64 = 512 * GIB;
/// Page directories for GiBs above 4 (each maps 1 GiB).
const SPARE_PDS: usize = 4;

#[repr(C, align(4096))]
struct PageDirs([[u64; 512]; SPARE_PDS]);

/// Not zeroed at boot: each is cleared when taken.
#[link_section = ".noinit.paging"]
static SPARE: Global<PageDirs> = Global::new(PageDirs([[0; 512]; SPARE_PDS]));
static SPARE_USED: AtomicUsize = AtomicUsize::new(0);

/// Maps `[addr, addr + len)` identity, uncached (2 MiB granules). Below 4 GiB the boot map is
/// already there and only gains PWT | PCD; above, page directories are added as needed. BSP
/// only, interrupts off.
pub fn map_uncached(addr: u64, len: u64) -> Result<(), &'static str> {
    if len == 0 {
        return Ok(());
    }
    let end = addr.checked_add(len).ok_or("mapping wraps around")?;
    if end > PDPT_REACH {
        return Err("MMIO above 512 GiB is not mappable");
    }
    let mut page = addr & !(PAGE_2M - 1);
    while page < end {
        let gib = (page / GIB) as usize;
        let index = ((page % GIB) / PAGE_2M) as usize;
        // SAFETY: BSP only with interrupts off (no other CPU walks these tables while the guest
        // runs one command at a time); the entries changed map MMIO, never the code, data or
        // stacks the guest runs on, and the TLB entry is flushed after the change.
        unsafe {
            if gib < 4 {
                let pd = core::ptr::addr_of_mut!(boot::boot_pd) as *mut u64;
                let entry = pd.add(gib * 512 + index);
                entry.write_volatile(entry.read_volatile() | PWT_PCD);
            } else {
                let pdpt = core::ptr::addr_of_mut!(boot::boot_pdpt) as *mut u64;
                let slot = pdpt.add(gib);
                if slot.read_volatile() & 1 == 0 {
                    let n = SPARE_USED.fetch_add(1, Ordering::Relaxed);
                    if n >= SPARE_PDS {
                        return Err("out of page directories for MMIO above 4 GiB");
                    }
                    let dir = (*SPARE.get()).0[n].as_mut_ptr();
                    core::ptr::write_bytes(dir, 0, 512);
                    slot.write_volatile(dir as u64 | TABLE_FLAGS);
                }
                let dir = (slot.read_volatile() & !0xfff) as *mut u64;
                dir.add(index).write_volatile(page | UNCACHED_2M);
            }
            cpu::invlpg(page);
        }
        page += PAGE_2M;
    }
    Ok(())
}

/// The physical address a device must be given for `addr`: the identity (everything the guest
/// uses is identity-mapped).
#[inline(always)]
pub fn dma_addr(addr: u64) -> u64 {
    addr
}
