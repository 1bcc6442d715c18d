//! PCI on x86: ECAM from the ACPI MCFG, conf1 (ports 0xcf8/0xcfc) as the legacy mechanism,
//! and the BAR windows of trapvisor's DSDT (on QEMU q35, the start of the 32-bit hole above its
//! ECAM).
use super::cpu::{inb, inl, inw, outl, outw};
use super::{acpi, paging, BootInfo};
use crate::pci::{Bdf, Platform, ECAM_BUS_BYTES};

const CONF1_ADDRESS: u16 = 0xcf8;
const CONF1_DATA: u16 = 0xcfc;

/// Name of the legacy configuration mechanism.
pub const LEGACY: &str = "conf1";
const MEM32_WINDOW: (u64, u64) = (0xc000_0000, 0xe000_0000);
const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);

/// Bus 0's ECAM from the MCFG (mapped uncached), or conf1 without one.
pub fn platform(info: &BootInfo) -> Result<Platform, &'static str> {
    let ecam = acpi::ecam_bus0(info.rsdp_paddr).unwrap_or(None);
    if let Some(base) = ecam {
        paging::map_uncached(base, ECAM_BUS_BYTES)?;
    }
    Ok(Platform {
        ecam,
        source: "mcfg",
        mem32: MEM32_WINDOW,
        io: Some(IO_WINDOW),
    })
}

fn conf1_address(bdf: Bdf, off: u16) -> u32 {
    0x8000_0000 | (u32::from(bdf.dev) << 11) | (u32::from(bdf.func) << 8) | u32::from(off & 0xfc)
}

/// Reads `width` (1, 2 or 4) bytes at `off` (aligned to `width`) over conf1.
pub fn legacy_read(bdf: Bdf, off: u16, width: u8) -> Option<u32> {
    outl(CONF1_ADDRESS, conf1_address(bdf, off));
    Some(match width {
        1 => u32::from(inb(CONF1_DATA + (off & 3))),
        2 => u32::from(inw(CONF1_DATA + (off & 2))),
        _ => inl(CONF1_DATA),
    })
}

/// Writes `width` (2 or 4) bytes at `off` (aligned to `width`) over conf1.
pub fn legacy_write(bdf: Bdf, off: u16, width: u8, value: u32) {
    outl(CONF1_ADDRESS, conf1_address(bdf, off));
    match width {
        2 => outw(CONF1_DATA + (off & 2), value as u16),
        _ => outl(CONF1_DATA, value),
    }
}
