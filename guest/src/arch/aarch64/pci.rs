//! PCI on aarch64: ECAM only (the FDT's `pci-host-ecam-generic`), BARs assigned from its 32-bit
//! memory window; I/O BARs are left alone (no I/O window is used).
use super::BootInfo;
use crate::pci::{Bdf, Platform};

/// Name of the legacy configuration mechanism (there is none).
pub const LEGACY: &str = "none";

/// Bus 0's ECAM and the 32-bit window from the FDT.
pub fn platform(info: &BootInfo) -> Result<Platform, &'static str> {
    let host = info.pci.ok_or("no pci-host-ecam-generic node in the FDT")?;
    if host.first_bus != 0 {
        return Err("the host bridge's bus-range does not start at bus 0");
    }
    if host.ecam_size < crate::pci::ECAM_BUS_BYTES {
        return Err("the ECAM window is smaller than one bus");
    }
    super::paging::map_uncached(host.ecam, crate::pci::ECAM_BUS_BYTES)?;
    Ok(Platform {
        ecam: Some(host.ecam),
        source: "fdt",
        mem32: host
            .mem32
            .ok_or("the host bridge's ranges have no 32-bit memory window")?,
        io: None,
    })
}

/// No legacy mechanism: always None.
pub fn legacy_read(_bdf: Bdf, _off: u16, _width: u8) -> Option<u32> {
    None
}

/// No legacy mechanism: nothing happens.
pub fn legacy_write(_bdf: Bdf, _off: u16, _width: u8, _value: u32) {}
