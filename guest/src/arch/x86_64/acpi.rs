//! Just enough ACPI to count CPUs and find PCI's ECAM: RSDP → XSDT (or RSDT) → MADT, MCFG.
use super::boot::MAX_CPUS;

const LOW_4G: u64 = 0x1_0000_0000;
const SDT_HEADER_LEN: usize = 36;

/// The enabled processors the MADT lists, in its order.
pub struct CpuList {
    apic_ids: [u32; MAX_CPUS],
    count: usize,
    /// Enabled processors listed, including any beyond `MAX_CPUS`.
    pub listed: usize,
}

impl CpuList {
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.count]
    }

    fn push(&mut self, id: u32) {
        if self.apic_ids[..self.count].contains(&id) {
            return; // an x2APIC entry repeating an xAPIC one
        }
        self.listed += 1;
        if self.count < MAX_CPUS {
            self.apic_ids[self.count] = id;
            self.count += 1;
        }
    }
}

/// `len` bytes of identity-mapped physical memory.
fn phys(addr: u64, len: usize) -> Result<&'static [u8], &'static str> {
    if addr == 0 || addr.checked_add(len as u64).is_none_or(|end| end > LOW_4G) {
        return Err("ACPI table outside the first 4 GiB");
    }
    // SAFETY: the first 4 GiB are identity-mapped; ACPI tables are in RAM (or ROM) the VMM
    // filled and nothing writes them while the guest reads.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// A whole system description table, its length and checksum checked.
fn table(addr: u64) -> Result<&'static [u8], &'static str> {
    let header = phys(addr, SDT_HEADER_LEN)?;
    let len = u32_at(header, 4) as usize;
    if !(SDT_HEADER_LEN..=1 << 20).contains(&len) {
        return Err("ACPI table with a bad length");
    }
    let t = phys(addr, len)?;
    if !checksum_ok(t) {
        return Err("ACPI table with a bad checksum");
    }
    Ok(t)
}

/// Finds the RSDP: the start info's address, or a scan of the BIOS area when that is 0.
fn rsdp(hint: u64) -> Result<&'static [u8], &'static str> {
    let addr = if hint != 0 {
        hint
    } else {
        let area = phys(0xe0000, 0x20000)?;
        (0..area.len() - 20)
            .step_by(16)
            .find(|&o| &area[o..o + 8] == b"RSD PTR " && checksum_ok(&area[o..o + 20]))
            .map(|o| 0xe0000 + o as u64)
            .ok_or("no RSDP (start info has none, none in 0xe0000-0xfffff)")?
    };
    let r = phys(addr, 20)?;
    if &r[..8] != b"RSD PTR " {
        return Err("RSDP signature mismatch");
    }
    if !checksum_ok(r) {
        return Err("RSDP checksum mismatch");
    }
    if r[15] >= 2 {
        let r = phys(addr, 36)?;
        if !checksum_ok(r) {
            return Err("RSDP extended checksum mismatch");
        }
        return Ok(r);
    }
    Ok(r)
}

/// Finds the table with signature `sig` through the XSDT (ACPI 2+) or the RSDT.
fn find(rsdp_hint: u64, sig: &[u8; 4]) -> Result<Option<&'static [u8]>, &'static str> {
    let r = rsdp(rsdp_hint)?;
    let (root, entry_len) = if r.len() >= 36 && u64_at(r, 24) != 0 {
        (table(u64_at(r, 24))?, 8)
    } else {
        (table(u64::from(u32_at(r, 16)))?, 4)
    };
    let entries = &root[SDT_HEADER_LEN..];
    for e in entries.chunks_exact(entry_len) {
        let addr = if entry_len == 8 {
            u64_at(e, 0)
        } else {
            u64::from(u32_at(e, 0))
        };
        let header = phys(addr, SDT_HEADER_LEN)?;
        if &header[..4] == sig {
            return table(addr).map(Some);
        }
    }
    Ok(None)
}

/// Finds the MADT.
fn madt(rsdp_hint: u64) -> Result<&'static [u8], &'static str> {
    find(rsdp_hint, b"APIC")?.ok_or("no MADT in the XSDT/RSDT")
}

/// The ECAM window of PCI segment 0 that covers bus 0, from the MCFG: its base address (that of
/// bus 0). `Ok(None)` when there is no MCFG or it has no such window.
pub fn ecam_bus0(rsdp_paddr: u64) -> Result<Option<u64>, &'static str> {
    let Some(m) = find(rsdp_paddr, b"MCFG")? else {
        return Ok(None);
    };
    // Header, 8 reserved bytes, then 16-byte entries: base u64, segment u16, start bus u8, end
    // bus u8, reserved u32.
    let entries = m.get(SDT_HEADER_LEN + 8..).unwrap_or(&[]);
    for e in entries.chunks_exact(16) {
        let (base, segment, start, end) =
            (u64_at(e, 0), u16::from_le_bytes([e[8], e[9]]), e[10], e[11]);
        if segment == 0 && start == 0 && end >= start {
            return Ok(Some(base));
        }
    }
    Ok(None)
}

/// The enabled processors of the MADT (`rsdp_paddr` from the start info; 0 = scan).
pub fn cpus(rsdp_paddr: u64) -> Result<CpuList, &'static str> {
    let m = madt(rsdp_paddr)?;
    let mut list = CpuList {
        apic_ids: [0; MAX_CPUS],
        count: 0,
        listed: 0,
    };
    let mut at = SDT_HEADER_LEN + 8; // local APIC address, flags
    while at + 2 <= m.len() {
        let (kind, len) = (m[at], m[at + 1] as usize);
        if len < 2 || at + len > m.len() {
            return Err("malformed MADT entry");
        }
        let e = &m[at..at + len];
        match kind {
            // Processor Local APIC: uid u8, APIC ID u8, flags u32 (bit 0 enabled)
            0 if len >= 8 && u32_at(e, 4) & 1 != 0 => list.push(u32::from(e[3])),
            // Processor Local x2APIC: reserved u16, x2APIC ID u32, flags u32, uid u32
            9 if len >= 16 && u32_at(e, 8) & 1 != 0 => list.push(u32_at(e, 4)),
            _ => {}
        }
        at += len;
    }
    if list.listed == 0 {
        return Err("MADT lists no enabled processor");
    }
    Ok(list)
}
