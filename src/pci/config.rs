//! A type-0 configuration space: the header, memory BARs with the sizing protocol, and a
//! capability list.
//!
//! Every byte has a write mask; a write changes only the writable bits (read-only fields keep
//! their value and the attempt is counted). Accesses may have any width at any offset: bytes
//! past the 256-byte header and capabilities read as 0 up to 4 KiB (the ECAM function size; no
//! extended capabilities) and as all-ones past that.
//!
//! BARs: the register reads back the address with the size bits forced to zero, so writing
//! all-ones and reading back gives the size mask. The address the device decodes at
//! ([`PciConfig::bar_decode_addr`]) changes on a write of a 32-bit BAR, and on a write of the
//! *upper* half of a 64-bit BAR (drivers write low then high; the low half alone would be a
//! transient address). The all-ones sizing pattern and 0 mean "not placed".
use super::PciError;

/// The conventional configuration space (header and capabilities).
pub const CONFIG_SPACE_SIZE: usize = 256;
/// A function's size in the ECAM window.
pub const EXT_CONFIG_SPACE_SIZE: usize = 4096;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const PROG_IF: usize = 0x09;
pub const SUBCLASS: usize = 0x0a;
pub const CLASS_CODE: usize = 0x0b;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;
/// Where the first capability goes.
pub const FIRST_CAPABILITY: usize = 0x40;
pub const BAR_COUNT: usize = 6;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// I/O, memory, bus master, parity error response, SERR#, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0547;
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// The kinds of BAR this VMM implements (no I/O BARs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    Mem64,
}

/// What a BAR is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    pub kind: BarKind,
    /// A power of two, at least 16 bytes.
    pub size: u64,
    pub prefetchable: bool,
}

impl BarInfo {
    /// The writable address bits.
    fn mask(&self) -> u64 {
        let m = !(self.size - 1);
        match self.kind {
            BarKind::Mem32 => m & 0xffff_fff0,
            BarKind::Mem64 => m,
        }
    }

    /// The read-only low bits: memory space, type, prefetchable.
    fn flags(&self) -> u32 {
        let t = match self.kind {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => 0b100,
        };
        t | if self.prefetchable { 0b1000 } else { 0 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    info: BarInfo,
    /// The address in the register (size bits clear).
    addr: u64,
    /// The address the BAR decodes at (see the module comment).
    decode: u64,
}

/// The identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0: no INTx pin.
    pub interrupt_pin: u8,
}

/// What a config write changed that the PCI root must act on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigWrite {
    /// The command register changed (memory decode may have turned on or off).
    pub command_changed: bool,
    /// Bit n: BAR n's decode address changed.
    pub bars_changed: u8,
}

impl ConfigWrite {
    pub fn needs_remap(&self) -> bool {
        self.command_changed || self.bars_changed != 0
    }

    pub fn merge(&mut self, other: ConfigWrite) {
        self.command_changed |= other.command_changed;
        self.bars_changed |= other.bars_changed;
    }
}

/// Counters of guest config accesses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigStats {
    pub reads: u64,
    pub writes: u64,
    /// Writes that tried to change read-only bits (the bits kept their value).
    pub read_only_writes: u64,
    /// Writes at offsets past the capability space (dropped).
    pub out_of_range_writes: u64,
}

/// A type-0 configuration space.
pub struct PciConfig {
    regs: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    /// Indexed by BAR register; the upper register of a 64-bit BAR is `None` with
    /// `upper[i]` set.
    bars: [Option<Bar>; BAR_COUNT],
    upper: [bool; BAR_COUNT],
    last_cap: Option<usize>,
    next_cap: usize,
    stats: ConfigStats,
}

impl PciConfig {
    pub fn new(h: &PciHeader) -> Self {
        let mut c = PciConfig {
            regs: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            bars: [None; BAR_COUNT],
            upper: [false; BAR_COUNT],
            last_cap: None,
            next_cap: FIRST_CAPABILITY,
            stats: ConfigStats::default(),
        };
        c.set_u16(VENDOR_ID, h.vendor_id);
        c.set_u16(DEVICE_ID, h.device_id);
        c.regs[REVISION_ID] = h.revision_id;
        c.regs[PROG_IF] = h.prog_if;
        c.regs[SUBCLASS] = h.subclass;
        c.regs[CLASS_CODE] = h.class;
        c.set_u16(SUBSYSTEM_VENDOR_ID, h.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, h.subsystem_id);
        c.regs[INTERRUPT_PIN] = h.interrupt_pin;
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xff;
        c.wmask[LATENCY_TIMER] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    pub fn stats(&self) -> ConfigStats {
        self.stats
    }

    /// Declares BAR `index`. A 64-bit BAR also takes register `index + 1`.
    pub fn add_bar(&mut self, index: usize, info: BarInfo) -> Result<(), PciError> {
        let regs_needed = if info.kind == BarKind::Mem64 { 2 } else { 1 };
        if index + regs_needed > BAR_COUNT {
            return Err(PciError::BarIndex(index));
        }
        if !info.size.is_power_of_two()
            || info.size < 16
            || (info.kind == BarKind::Mem32 && info.size > 1 << 31)
        {
            return Err(PciError::BarSize(info.size));
        }
        for i in index..index + regs_needed {
            if self.bars[i].is_some() || self.upper[i] {
                return Err(PciError::BarTaken(i));
            }
        }
        self.bars[index] = Some(Bar {
            info,
            addr: 0,
            decode: 0,
        });
        if regs_needed == 2 {
            self.upper[index + 1] = true;
        }
        self.store_bar(index);
        Ok(())
    }

    /// BAR `index`, if one is declared there (not the upper half of a 64-bit BAR).
    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        self.bars.get(index)?.map(|b| b.info)
    }

    /// The address in BAR `index`'s register(s).
    pub fn bar_addr(&self, index: usize) -> Option<u64> {
        self.bars.get(index)?.map(|b| b.addr)
    }

    /// Places BAR `index` (the VMM acting as firmware).
    pub fn set_bar_addr(&mut self, index: usize, addr: u64) -> Result<(), PciError> {
        let bar = self
            .bars
            .get_mut(index)
            .and_then(|b| b.as_mut())
            .ok_or(PciError::BarIndex(index))?;
        if addr & !bar.info.mask() != 0 {
            return Err(PciError::BarAlign {
                addr,
                size: bar.info.size,
            });
        }
        bar.addr = addr;
        bar.decode = addr;
        self.store_bar(index);
        Ok(())
    }

    /// Where BAR `index` decodes, or `None` if it is unplaced (0) or holds the sizing pattern.
    /// The command register's memory enable is not looked at here.
    pub fn bar_decode_addr(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index)?.as_ref()?;
        if bar.decode == 0 || bar.decode == bar.info.mask() {
            return None;
        }
        Some(bar.decode)
    }

    /// Writes BAR `index`'s register bytes from its address.
    fn store_bar(&mut self, index: usize) {
        if let Some(bar) = self.bars[index] {
            let lo = (bar.addr as u32 & 0xffff_fff0) | bar.info.flags();
            self.set_u32(BAR0 + 4 * index, lo);
            if bar.info.kind == BarKind::Mem64 {
                self.set_u32(BAR0 + 4 * (index + 1), (bar.addr >> 32) as u32);
            }
        }
    }

    /// Applies a guest write of the whole register `reg` (0..6) holding `value`.
    fn write_bar_register(&mut self, reg: usize, value: u32, out: &mut ConfigWrite) {
        if let Some(bar) = self.bars[reg].as_mut() {
            let mask = bar.info.mask();
            match bar.info.kind {
                BarKind::Mem32 => {
                    bar.addr = u64::from(value) & mask;
                    bar.decode = bar.addr;
                    out.bars_changed |= 1 << reg;
                }
                BarKind::Mem64 => {
                    bar.addr = (bar.addr & !0xffff_ffff) | (u64::from(value) & mask & 0xffff_ffff);
                }
            }
            self.store_bar(reg);
        } else if reg > 0 && self.upper[reg] {
            if let Some(bar) = self.bars[reg - 1].as_mut() {
                let mask = bar.info.mask();
                bar.addr = (bar.addr & 0xffff_ffff) | ((u64::from(value) << 32) & mask);
                bar.decode = bar.addr;
                out.bars_changed |= 1 << (reg - 1);
                self.store_bar(reg - 1);
            }
        }
        // A register with no BAR reads 0 and ignores writes: "not implemented".
    }

    /// Adds a capability: `bytes` starts with the capability id and a placeholder next
    /// pointer; `wmask` gives the writable bits of each byte (shorter means read-only rest).
    /// Returns the capability's offset.
    pub fn add_capability(&mut self, bytes: &[u8], wmask: &[u8]) -> Result<usize, PciError> {
        let offset = self.next_cap;
        if bytes.len() < 2 || offset + bytes.len() > CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpace(bytes.len()));
        }
        self.regs[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.regs[offset + 1] = 0;
        for (i, &m) in wmask.iter().take(bytes.len()).enumerate() {
            self.wmask[offset + i] = m;
        }
        match self.last_cap {
            Some(prev) => self.regs[prev + 1] = offset as u8,
            None => self.regs[CAPABILITIES_POINTER] = offset as u8,
        }
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        self.last_cap = Some(offset);
        self.next_cap = (offset + bytes.len()).next_multiple_of(4);
        Ok(offset)
    }

    /// A guest read of any width at any offset.
    pub fn read(&mut self, offset: usize, data: &mut [u8]) {
        self.stats.reads += 1;
        self.peek(offset, data);
    }

    /// Reads without counting (the VMM's own view).
    pub fn peek(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i);
            *b = if off < CONFIG_SPACE_SIZE {
                self.regs[off]
            } else if off < EXT_CONFIG_SPACE_SIZE {
                0
            } else {
                0xff
            };
        }
    }

    /// A guest write of any width at any offset.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> ConfigWrite {
        self.stats.writes += 1;
        let mut out = ConfigWrite::default();
        let old_command = self.command();
        let mut bar_bytes: [Option<u8>; 4 * BAR_COUNT] = [None; 4 * BAR_COUNT];
        let mut read_only = false;
        let mut outside = false;
        for (i, &v) in data.iter().enumerate() {
            let off = offset.saturating_add(i);
            if off >= CONFIG_SPACE_SIZE {
                outside = true;
                continue;
            }
            if (BAR0..BAR0 + 4 * BAR_COUNT).contains(&off) {
                bar_bytes[off - BAR0] = Some(v);
                continue;
            }
            let m = self.wmask[off];
            let old = self.regs[off];
            if (old ^ v) & !m != 0 {
                read_only = true;
            }
            self.regs[off] = (old & !m) | (v & m);
        }
        for reg in 0..BAR_COUNT {
            let bytes = &bar_bytes[4 * reg..4 * reg + 4];
            if bytes.iter().all(Option::is_none) {
                continue;
            }
            let mut value = self.u32_at(BAR0 + 4 * reg).to_le_bytes();
            for (dst, src) in value.iter_mut().zip(bytes) {
                if let Some(b) = src {
                    *dst = *b;
                }
            }
            self.write_bar_register(reg, u32::from_le_bytes(value), &mut out);
        }
        if read_only {
            self.stats.read_only_writes += 1;
        }
        if outside {
            self.stats.out_of_range_writes += 1;
        }
        out.command_changed = self.command() != old_command;
        out
    }

    /// Sets bytes without write masks (the device's own fields).
    pub fn write_raw(&mut self, offset: usize, data: &[u8]) {
        let end = (offset + data.len()).min(CONFIG_SPACE_SIZE);
        if offset < end {
            self.regs[offset..end].copy_from_slice(&data[..end - offset]);
        }
    }

    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// Sets the command register (the VMM acting as firmware).
    pub fn set_command(&mut self, value: u16) {
        self.set_u16(COMMAND, value & COMMAND_WRITABLE);
    }

    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    pub fn vendor_id(&self) -> u16 {
        self.u16_at(VENDOR_ID)
    }

    pub fn device_id(&self) -> u16 {
        self.u16_at(DEVICE_ID)
    }

    /// Class, subclass, programming interface.
    pub fn class(&self) -> (u8, u8, u8) {
        (
            self.regs[CLASS_CODE],
            self.regs[SUBCLASS],
            self.regs[PROG_IF],
        )
    }

    pub fn u8_at(&self, offset: usize) -> u8 {
        self.regs.get(offset).copied().unwrap_or(0)
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.peek(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.peek(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn set_u16(&mut self, offset: usize, v: u16) {
        self.write_raw(offset, &v.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, v: u32) {
        self.write_raw(offset, &v.to_le_bytes());
    }
}

/// Whether `[a, a + alen)` and `[b, b + blen)` overlap.
pub fn overlaps(a: usize, alen: usize, b: usize, blen: usize) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1044,
            revision_id: 1,
            class: 0xff,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            ..Default::default()
        }
    }

    fn read32(c: &mut PciConfig, off: usize) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(c: &mut PciConfig, off: usize, v: u32) -> ConfigWrite {
        c.write(off, &v.to_le_bytes())
    }

    #[test]
    fn header_reads_at_any_width_and_offset() {
        let mut c = PciConfig::new(&header());
        assert_eq!(read32(&mut c, 0), 0x1044_1af4);
        let mut b = [0; 2];
        c.read(1, &mut b);
        assert_eq!(b, [0x1a, 0x44]);
        let mut b = [0; 1];
        c.read(8, &mut b);
        assert_eq!(b, [1]);
        // Unaligned 4-byte read straddling the end of the 256-byte space.
        let mut b = [0xaa; 4];
        c.read(254, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
        // Extended space reads 0; past 4 KiB all-ones.
        assert_eq!(read32(&mut c, 0x100), 0);
        assert_eq!(read32(&mut c, 0xffc), 0);
        assert_eq!(read32(&mut c, 0x1000), 0xffff_ffff);
        let mut b = [0; 8];
        c.read(usize::MAX - 3, &mut b);
        assert_eq!(b, [0xff; 8]);
    }

    #[test]
    fn read_only_fields_keep_their_value_and_are_counted() {
        let mut c = PciConfig::new(&header());
        write32(&mut c, 0, 0xdead_beef);
        assert_eq!(read32(&mut c, 0), 0x1044_1af4);
        c.write(0x0b, &[0x02]);
        assert_eq!(c.class().0, 0xff);
        assert_eq!(c.stats().read_only_writes, 2);
        // Writable scratch bytes take the value.
        c.write(INTERRUPT_LINE, &[0x0b]);
        assert_eq!(c.u8_at(INTERRUPT_LINE), 0x0b);
        // Past the space: dropped, counted, no panic.
        c.write(0x100, &[1, 2, 3, 4]);
        c.write(usize::MAX, &[1, 2]);
        assert_eq!(c.stats().out_of_range_writes, 2);
        assert_eq!(c.stats().read_only_writes, 2);
    }

    #[test]
    fn command_register_masks_and_reports_changes() {
        let mut c = PciConfig::new(&header());
        let w = c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert!(w.command_changed);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        assert!(c.memory_enabled());
        let w = c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert!(!w.command_changed);
        // A byte write to the high half leaves memory decode on.
        let w = c.write(COMMAND + 1, &[0]);
        assert!(w.command_changed);
        assert!(c.memory_enabled());
    }

    #[test]
    fn bar32_sizing_protocol() {
        let mut c = PciConfig::new(&header());
        c.add_bar(
            0,
            BarInfo {
                kind: BarKind::Mem32,
                size: 0x8000,
                prefetchable: false,
            },
        )
        .unwrap();
        c.set_bar_addr(0, 0xc000_0000).unwrap();
        assert_eq!(read32(&mut c, BAR0), 0xc000_0000);
        assert_eq!(c.bar_decode_addr(0), Some(0xc000_0000));
        let w = write32(&mut c, BAR0, 0xffff_ffff);
        assert_eq!(w.bars_changed, 1);
        assert_eq!(read32(&mut c, BAR0), 0xffff_8000);
        // The sizing pattern does not decode.
        assert_eq!(c.bar_decode_addr(0), None);
        write32(&mut c, BAR0, 0xd000_0000);
        assert_eq!(c.bar_decode_addr(0), Some(0xd000_0000));
        // Low bits are forced: the address stays size-aligned.
        write32(&mut c, BAR0, 0xd000_1234);
        assert_eq!(read32(&mut c, BAR0), 0xd000_0000);
        // A byte write to the top byte moves it.
        let w = c.write(BAR0 + 3, &[0xc1]);
        assert_eq!(w.bars_changed, 1);
        assert_eq!(c.bar_decode_addr(0), Some(0xc100_0000));
        // Unimplemented BARs read 0 (sizing finds nothing) and ignore writes.
        write32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!(read32(&mut c, BAR0 + 4), 0);
        // The expansion ROM BAR is absent.
        write32(&mut c, 0x30, 0xffff_ffff);
        assert_eq!(read32(&mut c, 0x30), 0);
    }

    #[test]
    fn bar64_sizing_and_move_on_upper_write() {
        let mut c = PciConfig::new(&header());
        c.add_bar(
            2,
            BarInfo {
                kind: BarKind::Mem64,
                size: 0x4000,
                prefetchable: true,
            },
        )
        .unwrap();
        c.set_bar_addr(2, 0x1_0000_0000).unwrap();
        assert_eq!(read32(&mut c, BAR0 + 8), 0b1100);
        assert_eq!(read32(&mut c, BAR0 + 12), 1);
        let w = write32(&mut c, BAR0 + 8, 0xffff_ffff);
        assert_eq!(w.bars_changed, 0, "low half alone does not move the BAR");
        assert_eq!(c.bar_decode_addr(2), Some(0x1_0000_0000));
        let w = write32(&mut c, BAR0 + 12, 0xffff_ffff);
        assert_eq!(w.bars_changed, 1 << 2);
        assert_eq!(read32(&mut c, BAR0 + 8), 0xffff_c00c);
        assert_eq!(read32(&mut c, BAR0 + 12), 0xffff_ffff);
        assert_eq!(c.bar_decode_addr(2), None);
        write32(&mut c, BAR0 + 8, 0x8000_0000);
        write32(&mut c, BAR0 + 12, 0x2);
        assert_eq!(c.bar_decode_addr(2), Some(0x2_8000_0000));
        // An 8-byte write over both halves.
        let w = c.write(BAR0 + 8, &0x3_0000_4000u64.to_le_bytes());
        assert_eq!(w.bars_changed, 1 << 2);
        assert_eq!(c.bar_decode_addr(2), Some(0x3_0000_4000));
        assert_eq!(c.bar(3), None);
    }

    #[test]
    fn bad_bar_declarations_are_refused() {
        let mut c = PciConfig::new(&header());
        let info = |kind, size| BarInfo {
            kind,
            size,
            prefetchable: false,
        };
        assert!(c.add_bar(5, info(BarKind::Mem64, 0x1000)).is_err());
        assert!(c.add_bar(6, info(BarKind::Mem32, 0x1000)).is_err());
        assert!(c.add_bar(0, info(BarKind::Mem32, 0x1001)).is_err());
        assert!(c.add_bar(0, info(BarKind::Mem32, 8)).is_err());
        c.add_bar(0, info(BarKind::Mem64, 0x1000)).unwrap();
        assert!(c.add_bar(1, info(BarKind::Mem32, 0x1000)).is_err());
        assert!(c.set_bar_addr(0, 0x1234).is_err());
    }

    #[test]
    fn capabilities_are_linked() {
        let mut c = PciConfig::new(&header());
        let a = c.add_capability(&[0x11, 0xee, 1, 2, 3], &[]).unwrap();
        let b = c
            .add_capability(&[0x09, 0, 16, 1], &[0, 0, 0, 0xff])
            .unwrap();
        assert_eq!(a, FIRST_CAPABILITY);
        assert_eq!(b, 0x48);
        assert_eq!(c.u8_at(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.u8_at(a + 1), 0x48);
        assert_eq!(c.u8_at(b + 1), 0);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAPABILITIES, 0);
        // The next pointer is read-only; the declared writable byte is writable.
        c.write(a + 1, &[0x80]);
        assert_eq!(c.u8_at(a + 1), 0x48);
        c.write(b + 3, &[7]);
        assert_eq!(c.u8_at(b + 3), 7);
        assert!(c.add_capability(&[0; 200], &[]).is_err());
    }
}
