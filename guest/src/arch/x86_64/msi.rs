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

/// What the local APIC says about `vector` (for a driver whose MSI never came).
pub fn state(vector: u8) -> impl fmt::Display {
    let (irr, isr, tpr, svr) = apic::vector_state(vector);
    State {
        vector,
        irr,
        isr,
        tpr,
        svr,
    }
}

struct State {
    vector: u8,
    irr: bool,
    isr: bool,
    tpr: u32,
    svr: u32,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "lapic vector {:#x} irr={} isr={} tpr={:#x} svr={:#x}",
            self.vector,
            u8::from(self.irr),
            u8::from(self.isr),
            self.tpr,
            self.svr
        )
    }
}
