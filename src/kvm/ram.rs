//! Guest RAM: anonymous memory at 2 MiB-aligned host addresses, with transparent huge pages
//! asked for, so that KVM maps the guest with 2 MiB pages where the host backs them so.
//!
//! KVM maps a guest page with a huge page only when the guest address and the host address
//! have the same offset inside the huge page and the host side is a huge page too. A plain
//! `mmap` of guest RAM (vm-memory's `from_ranges`) gets an address aligned to 4 KiB only (Linux
//! aligns large anonymous mappings to 2 MiB only since 6.7), so every guest page the kernel
//! touches at boot cost a nested-paging fault of its own: about 31,000 `npf` exits for Debian's
//! kernel to userspace in 512 MiB, measured in the nested L1 (docs/nested.md, boot benchmark).
//!
//! Each region is mapped once for the life of the process and never unmapped: guest memory
//! handles are cloned into device threads that may outlive the `Vm`.
use std::ptr::null_mut;

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::vm::VmError;

/// Alignment of each region's host address: the x86_64 and arm64 (4 KiB granule) PMD size.
pub const RAM_ALIGN: usize = 2 << 20;

const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// `size` bytes of anonymous memory at a `RAM_ALIGN`-aligned address, with `MADV_HUGEPAGE`
/// (refused where the kernel has no transparent huge pages: then it is plain memory).
fn map_aligned(size: usize) -> Result<MmapRegion, VmError> {
    let err = |what: &str| VmError::Memory(format!("{what}: {}", std::io::Error::last_os_error()));
    let len = size
        .checked_add(RAM_ALIGN)
        .ok_or_else(|| VmError::Memory(format!("{size} bytes is too large")))?;
    // SAFETY: a new anonymous mapping at an address the kernel picks; it overlaps nothing.
    let base = unsafe { libc::mmap(null_mut(), len, PROT, FLAGS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(err("mmap"));
    }
    let base = base as usize;
    let start = base.next_multiple_of(RAM_ALIGN);
    let head = start - base;
    let tail = len - head - size;
    // SAFETY: [base, start) and [start + size, base + len) lie inside the mapping made above and
    // outside the part kept; nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: [start, start + size) is mapped above; madvise changes no contents.
    unsafe { libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
    // SAFETY: [start, start + size) is a mapping of this process with PROT and FLAGS, kept for
    // the life of the process (the region does not own it, so nothing unmaps it).
    unsafe { MmapRegion::build_raw(start as *mut u8, size, PROT, FLAGS) }
        .map_err(|e| VmError::Memory(e.to_string()))
}

/// Guest memory for `ranges` (guest address, bytes), each range at an aligned host address.
pub fn guest_memory(ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, VmError> {
    let regions = ranges
        .iter()
        .map(|&(addr, size)| {
            GuestRegionMmap::new(map_aligned(size)?, addr)
                .ok_or_else(|| VmError::Memory(format!("region at {:#x} wraps", addr.0)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| VmError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    #[test]
    fn regions_start_on_a_huge_page_and_hold_data() {
        let mem =
            guest_memory(&[(GuestAddress(0), 3 << 20), (GuestAddress(1 << 32), 1 << 20)]).unwrap();
        assert_eq!(mem.num_regions(), 2);
        for r in mem.iter() {
            let host = r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
            assert_eq!(host % RAM_ALIGN, 0, "region at {:#x}", r.start_addr().0);
        }
        mem.write_obj(0xdead_beef_u32, GuestAddress((3 << 20) - 4))
            .unwrap();
        mem.write_obj(7u64, GuestAddress((1 << 32) + 8)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((3 << 20) - 4)).unwrap(),
            0xdead_beef
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress((1 << 32) + 8)).unwrap(), 7);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0,
            "zeroed"
        );
        // Past the end of a region: an error, not a touch outside guest RAM.
        assert!(mem.read_obj::<u64>(GuestAddress(3 << 20)).is_err());
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        assert!(
            guest_memory(&[(GuestAddress(0), 2 << 20), (GuestAddress(1 << 20), 2 << 20)]).is_err()
        );
    }
}
