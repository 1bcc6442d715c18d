//! MSI messages on x86: a write to the local APIC range (destination APIC ID in address bits
//! 19:12, physical mode, fixed delivery, edge) with the IDT vector as data.
use core::fmt;

use super::apic;
use crate::msix::Message;
use crate::pci::Bdf;

const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

/// The message that raises `vector` on this CPU.
pub fn message(_bdf: Bdf, vector: u8) -> Result<Message, &'static str> {
    let apic_id = apic::id();
    if apic_id > 0xff {
        return Err("APIC ID above 255 does not fit an MSI address");
    }
    Ok(Message {
        addr: u64::from(MSI_ADDRESS_BASE | (apic_id << 12)),
        data: u32::from(vector),
        target: apic_id,
    })
}

/// `apic ID vector V`.
pub fn describe(m: &Message, f: &mut fmt::Formatter) -> fmt::Result {
    write!(f, "apic {} vector {:#x}", m.target, m.data)
}
