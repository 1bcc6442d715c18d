//! Addresses under the boot page tables (see `boot`): physical space is identity-mapped as
//! device memory up to 512 GiB, the image lives at `boot::LINK_BASE`.
use super::boot::{self, LINK_BASE};

/// Highest address the identity map reaches.
const IDENTITY_REACH: u64 = 512 << 30;

/// The physical address a device must be given for `addr`: image addresses are translated,
/// everything else is the identity.
pub fn dma_addr(addr: u64) -> u64 {
    if addr >= LINK_BASE && addr - LINK_BASE < boot::image_size() {
        addr - LINK_BASE + boot::image_pa()
    } else {
        addr
    }
}

/// Device MMIO needs no change: the identity map already makes it device memory. Checks the
/// range is inside it.
pub fn map_uncached(addr: u64, len: u64) -> Result<(), &'static str> {
    let end = addr.checked_add(len).ok_or("mapping wraps around")?;
    if end > IDENTITY_REACH {
        return Err("MMIO above 512 GiB is not mapped");
    }
    Ok(())
}
