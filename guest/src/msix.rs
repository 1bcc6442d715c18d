//! MSI-X: the capability and its table. What a table entry holds (the message: an address and
//! data that reach one CPU's interrupt controller) comes from the arch (`arch::msi::message`).
use core::fmt;

use crate::arch::{self, cpu};
use crate::pci::{self, Bdf, Function};

/// Message control: MSI-X enable.
const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask (every vector masked).
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes of one table entry: address low, address high, data, vector control.
const ENTRY_BYTES: u64 = 16;
/// Vector control: masked.
const ENTRY_MASKED: u32 = 1;

/// An MSI message: the device writes `data` (32 bits) to `addr`.
#[derive(Clone, Copy)]
pub struct Message {
    pub addr: u64,
    pub data: u32,
    /// Who receives it, in the arch's terms (x86: the APIC ID; aarch64: the LPI).
    pub target: u32,
}

impl fmt::Display for Message {
    /// `apic 0 vector 0x40` (x86), `lpi 8256 event 0x40 devid 0x8` (aarch64).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        arch::msi::describe(self, f)
    }
}

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

    /// Points table entry `entry` at `vector` on this CPU (the message from
    /// `arch::msi::message`) and unmasks it; returns the message. The table's BAR must be mapped
    /// (see `arch::paging`).
    pub fn route(&self, f: &Function, entry: u16, vector: u8) -> Result<Message, &'static str> {
        if entry >= self.table_size {
            return Err("MSI-X entry beyond the table");
        }
        let msg = arch::msi::message(f.bdf, vector)?;
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
            cpu::mmio_write32(at, msg.addr as u32);
            cpu::mmio_write32(at + 4, (msg.addr >> 32) as u32);
            cpu::mmio_write32(at + 8, msg.data);
            cpu::mmio_write32(at + 12, 0);
            if cpu::mmio_read32(at + 8) != msg.data {
                return Err("MSI-X table entry did not keep its data");
            }
        }
        Ok(msg)
    }
}
