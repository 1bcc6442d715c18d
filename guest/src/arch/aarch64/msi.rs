//! MSI messages on aarch64: a write of the event ID to the ITS's GITS_TRANSLATER, which
//! translates (device ID, event) into an LPI (`gic::map`). The device ID is the function's PCI
//! requester ID through the host bridge's `msi-map`.
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use super::gic;
use crate::msix::Message;
use crate::pci::Bdf;

/// The ITS base (0: none).
static ITS: AtomicU64 = AtomicU64::new(0);
/// `msi-map`: rid-base (bits 47:32), devid-base (31:0); and the map's length (+1; 0: identity).
static MAP: AtomicU64 = AtomicU64::new(0);
static MAP_LEN: AtomicU64 = AtomicU64::new(0);
/// The bus of the functions (the host bridge's first bus).
static BUS: AtomicU64 = AtomicU64::new(0);

/// Takes the ITS and the PCI host's `msi-map` from the FDT.
pub fn init(its: Option<u64>, bus: u32, msi_map: Option<(u32, u32, u32)>) {
    ITS.store(its.unwrap_or(0), Ordering::Relaxed);
    BUS.store(u64::from(bus), Ordering::Relaxed);
    if let Some((rid, devid, len)) = msi_map {
        MAP.store((u64::from(rid) << 32) | u64::from(devid), Ordering::Relaxed);
        MAP_LEN.store(u64::from(len) + 1, Ordering::Relaxed);
    }
}

/// The ITS device ID of `bdf`: its requester ID (bus << 8 | dev << 3 | func) through `msi-map`.
pub fn devid(bdf: Bdf) -> Result<u32, &'static str> {
    let rid =
        (BUS.load(Ordering::Relaxed) as u32) << 8 | u32::from(bdf.dev) << 3 | u32::from(bdf.func);
    let len = MAP_LEN.load(Ordering::Relaxed);
    if len == 0 {
        return Ok(rid);
    }
    let map = MAP.load(Ordering::Relaxed);
    let (rid_base, devid_base) = ((map >> 32) as u32, map as u32);
    if rid < rid_base || u64::from(rid - rid_base) >= len - 1 {
        return Err("the function's requester ID is outside the host bridge's msi-map");
    }
    Ok(devid_base + (rid - rid_base))
}

/// The message that raises `vector` on this CPU: event `vector` of the function's device ID,
/// mapped to LPI `gic::LPI_BASE + vector`.
pub fn message(bdf: Bdf, vector: u8) -> Result<Message, &'static str> {
    let its = ITS.load(Ordering::Relaxed);
    if its == 0 {
        return Err("no ITS (arm,gic-v3-its) in the FDT: no MSIs");
    }
    let devid = devid(bdf)?;
    let intid = gic::map(its, devid, u32::from(vector))?;
    Ok(Message {
        addr: its + gic::GITS_TRANSLATER,
        data: u32::from(vector),
        target: intid,
    })
}

/// `its lpi 8256 event 0x40`.
pub fn describe(m: &Message, f: &mut fmt::Formatter) -> fmt::Result {
    write!(f, "its lpi {} event {:#x}", m.target, m.data)
}

/// What the GIC says about `vector`'s LPI (for a driver whose MSI never came): see
/// [`gic::lpi_state`].
pub fn state(vector: u8) -> impl fmt::Display {
    gic::lpi_state(u32::from(vector))
}
