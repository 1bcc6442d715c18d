//! MSI-X: the capability, its table, and messages to a local APIC.
use crate::cpu;
use crate::pci::{self, Bdf, Function};

/// Message control: MSI-X enable.
const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask (every vector masked).
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes of one table entry: address low, address high, data, vector control.
const ENTRY_BYTES: u64 = 16;
/// Vector control: masked.
const ENTRY_MASKED: u32 = 1;
/// MSI address of the local APIC range (destination APIC ID in bits 19:12, physical mode).
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

/// An MSI-X capability.
#[derive(Clone, Copy)]
pub struct Msix {
    /// Offset of the capability in config space.
    pub cap: u16,
    /// Entries in the table.
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl Msix {
    /// Reads the capability at `cap` (which must be an MSI-X capability).
    pub fn read(bdf: Bdf, cap: u16) -> Option<Msix> {
        if pci::read8(bdf, cap) != pci::CAP_MSIX {
            return None;
        }
        let ctrl = pci::read16(bdf, cap + 2);
        let table = pci::read32(bdf, cap + 4);
        let pba = pci::read32(bdf, cap + 8);
        Some(Msix {
            cap,
            table_size: (ctrl & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        })
    }

    /// The function's MSI-X capability, if it has one.
    pub fn find(bdf: Bdf) -> Option<Msix> {
        pci::capabilities(bdf)
            .find(|&(id, _)| id == pci::CAP_MSIX)
            .and_then(|(_, at)| Msix::read(bdf, at))
    }

    /// Turns MSI-X on, with every vector masked at the function level while `masked`.
    pub fn enable(&self, bdf: Bdf, masked: bool) {
        let ctrl = pci::read16(bdf, self.cap + 2);
        let ctrl = if masked {
            ctrl | CTRL_ENABLE | CTRL_FUNCTION_MASK
        } else {
            (ctrl | CTRL_ENABLE) & !CTRL_FUNCTION_MASK
        };
        pci::write16(bdf, self.cap + 2, ctrl);
    }

    /// Message control as the device reports it.
    pub fn control(&self, bdf: Bdf) -> u16 {
        pci::read16(bdf, self.cap + 2)
    }

    /// Points table entry `entry` at `vector` on the local APIC with ID `apic_id` (fixed
    /// delivery, edge) and unmasks it. The table's BAR must be mapped (see `paging`).
    pub fn route(
        &self,
        f: &Function,
        entry: u16,
        apic_id: u32,
        vector: u8,
    ) -> Result<(), &'static str> {
        if entry >= self.table_size {
            return Err("MSI-X entry beyond the table");
        }
        if apic_id > 0xff {
            return Err("APIC ID above 255 does not fit an MSI address");
        }
        let bar = f
            .bar(self.table_bar)
            .ok_or("MSI-X table in a BAR the device lacks")?;
        let at = bar.addr + u64::from(self.table_offset) + u64::from(entry) * ENTRY_BYTES;
        if u64::from(self.table_offset) + u64::from(self.table_size) * ENTRY_BYTES > bar.size {
            return Err("MSI-X table larger than its BAR");
        }
        // SAFETY: `at` is inside the function's memory BAR (checked above), mapped uncached by
        // the driver; the table entry only decides where the device's interrupts go.
        unsafe {
            cpu::mmio_write32(at + 12, ENTRY_MASKED);
            cpu::mmio_write32(at, MSI_ADDRESS_BASE | (apic_id << 12));
            cpu::mmio_write32(at + 4, 0);
            cpu::mmio_write32(at + 8, u32::from(vector));
            cpu::mmio_write32(at + 12, 0);
            if cpu::mmio_read32(at + 8) != u32::from(vector) {
                return Err("MSI-X table entry did not keep its data");
            }
        }
        Ok(())
    }
}
