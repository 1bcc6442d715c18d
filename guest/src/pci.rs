//! PCI bus 0: configuration space, enumeration, BARs and capabilities.
//!
//! Where configuration space is comes from the arch ([`Platform`], from `arch::pci::platform`):
//! an ECAM window for bus 0 (x86: the ACPI MCFG, whose answers are cross-checked over conf1;
//! aarch64: the FDT's `pci-host-ecam-generic`), else the arch's legacy mechanism (x86's conf1,
//! ports 0xcf8/0xcfc). Every function's BARs are sized with the usual protocol (decode off,
//! write all ones, read back, restore); a memory BAR left at 0 is assigned from the platform's
//! 32-bit window above every BAR already there (an I/O BAR from its I/O window, when it has one),
//! and decode is enabled for whatever the function has. Bus mastering is left to drivers.
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, cpu};
use crate::{println, virtio};

const REG_ID: u16 = 0x00;
pub const REG_COMMAND: u16 = 0x04;
const REG_STATUS: u16 = 0x06;
const REG_CLASS: u16 = 0x08;
const REG_HEADER_TYPE: u16 = 0x0e;
const REG_BAR0: u16 = 0x10;
const REG_CAP_PTR: u16 = 0x34;

pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
const STATUS_CAP_LIST: u16 = 1 << 4;

pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_MSIX: u8 = 0x11;

/// Functions kept from one scan.
pub const MAX_FUNCTIONS: usize = 32;
/// Bytes of one bus's ECAM space.
pub const ECAM_BUS_BYTES: u64 = 1 << 20;

/// How the platform reaches bus 0, and where BARs may go.
pub struct Platform {
    /// ECAM base of bus 0 (mapped uncached by the arch), or None: the legacy mechanism.
    pub ecam: Option<u64>,
    /// Where the ECAM base came from (`mcfg`, `fdt`).
    pub source: &'static str,
    /// Window for memory BARs that read 0: [start, end) (PCI and CPU addresses are the same).
    pub mem32: (u64, u64),
    /// Window for I/O BARs that read 0 (None: I/O BARs stay unassigned and I/O decode off).
    pub io: Option<(u64, u64)>,
}

/// ECAM base for bus 0; 0 = use the legacy mechanism.
static ECAM: AtomicU64 = AtomicU64::new(0);

/// A function on bus 0.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    pub dev: u8,
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "00:{:02x}.{:x}", self.dev, self.func)
    }
}

/// Whether a vendor/device dword means "no function here": all ones is the standard answer;
/// all zeros and half-and-half come from broken or absent decoders (Linux checks the same).
fn absent(id: u32) -> bool {
    matches!(id, 0xffff_ffff | 0 | 0x0000_ffff | 0xffff_0000)
}

fn ecam_address(bdf: Bdf) -> Option<u64> {
    match ECAM.load(Ordering::Relaxed) {
        0 => None,
        base => Some(base + (u64::from(bdf.dev) << 15) + (u64::from(bdf.func) << 12)),
    }
}

/// Reads `width` bytes of config space through the arch's legacy mechanism (all ones without
/// one).
fn legacy_read(bdf: Bdf, off: u16, width: u8) -> u32 {
    arch::pci::legacy_read(bdf, off, width).unwrap_or(u32::MAX)
}

pub fn read32(bdf: Bdf, off: u16) -> u32 {
    match ecam_address(bdf) {
        // SAFETY: the ECAM window of bus 0 is mapped uncached (see `scan`); `off` < 4096, aligned.
        Some(a) => unsafe { cpu::mmio_read32(a + u64::from(off & 0xffc)) },
        None => legacy_read(bdf, off & 0xffc, 4),
    }
}

pub fn read16(bdf: Bdf, off: u16) -> u16 {
    match ecam_address(bdf) {
        // SAFETY: as in `read32`.
        Some(a) => unsafe { cpu::mmio_read16(a + u64::from(off & 0xffe)) },
        None => legacy_read(bdf, off & 0xffe, 2) as u16,
    }
}

pub fn read8(bdf: Bdf, off: u16) -> u8 {
    match ecam_address(bdf) {
        // SAFETY: as in `read32`.
        Some(a) => unsafe { cpu::mmio_read8(a + u64::from(off & 0xfff)) },
        None => legacy_read(bdf, off & 0xfff, 1) as u8,
    }
}

pub fn write32(bdf: Bdf, off: u16, value: u32) {
    match ecam_address(bdf) {
        // SAFETY: as in `read32`. Config writes reprogram the device, not guest memory (bus
        // mastering is enabled only by drivers that own the memory they hand out).
        Some(a) => unsafe { cpu::mmio_write32(a + u64::from(off & 0xffc), value) },
        None => arch::pci::legacy_write(bdf, off & 0xffc, 4, value),
    }
}

pub fn write16(bdf: Bdf, off: u16, value: u16) {
    match ecam_address(bdf) {
        // SAFETY: as in `write32`.
        Some(a) => unsafe { cpu::mmio_write16(a + u64::from(off & 0xffe), value) },
        None => arch::pci::legacy_write(bdf, off & 0xffe, 2, u32::from(value)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// One BAR, sized.
#[derive(Clone, Copy)]
pub struct Bar {
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub addr: u64,
    pub size: u64,
    /// Given its address by this scan (it read 0).
    pub assigned: bool,
}

/// One function of bus 0.
#[derive(Clone, Copy)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: u32,
    pub bars: [Option<Bar>; 6],
}

impl Function {
    /// The BAR with this index (the low index of a 64-bit pair).
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().flatten().find(|b| b.index == index)
    }

    /// Sets `bits` in the command register.
    pub fn enable(&self, bits: u16) {
        let cmd = read16(self.bdf, REG_COMMAND);
        if cmd & bits != bits {
            write16(self.bdf, REG_COMMAND, cmd | bits);
        }
    }
}

/// The functions of one scan.
pub struct Bus {
    functions: [Option<Function>; MAX_FUNCTIONS],
    /// The ECAM base used (None: the legacy mechanism).
    pub ecam: Option<u64>,
    /// Where the platform's description came from.
    source: &'static str,
}

impl Bus {
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter().flatten()
    }

    pub fn find(&self, vendor: u16, device: u16) -> Option<&Function> {
        self.functions()
            .find(|f| f.vendor == vendor && f.device == device)
    }
}

/// The capabilities of a function: (id, offset) in list order (at most 48, against loops).
pub fn capabilities(bdf: Bdf) -> impl Iterator<Item = (u8, u16)> {
    let mut at = if read16(bdf, REG_STATUS) & STATUS_CAP_LIST != 0 {
        u16::from(read8(bdf, REG_CAP_PTR) & 0xfc)
    } else {
        0
    };
    let mut left = 48;
    core::iter::from_fn(move || {
        if at < 0x40 || left == 0 {
            return None;
        }
        left -= 1;
        let header = read16(bdf, at);
        let here = at;
        at = (header >> 8) & 0xfc;
        Some(((header & 0xff) as u8, here))
    })
}

/// Sizes the BARs of `bdf` (header type 0: six, type 1: two) with decode turned off meanwhile.
fn size_bars(bdf: Bdf, header_type: u8) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    let count = match header_type & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    let cmd = read16(bdf, REG_COMMAND);
    if count > 0 {
        write16(bdf, REG_COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
    }
    let mut i = 0;
    while i < count {
        let off = REG_BAR0 + 4 * i as u16;
        let orig = read32(bdf, off);
        write32(bdf, off, 0xffff_ffff);
        let probe = read32(bdf, off);
        write32(bdf, off, orig);
        let index = i as u8;
        i += 1;
        if probe == 0 {
            continue; // not implemented
        }
        let bar = if orig & 1 != 0 {
            let mask = probe & 0xffff_fffc;
            let mask = if mask >> 16 == 0 {
                mask | 0xffff_0000
            } else {
                mask
            };
            Bar {
                index,
                kind: BarKind::Io,
                prefetchable: false,
                addr: u64::from(orig & 0xffff_fffc),
                size: u64::from((!mask).wrapping_add(1)),
                assigned: false,
            }
        } else if (orig >> 1) & 3 == 2 && i < count {
            let hi_off = off + 4;
            let orig_hi = read32(bdf, hi_off);
            write32(bdf, hi_off, 0xffff_ffff);
            let probe_hi = read32(bdf, hi_off);
            write32(bdf, hi_off, orig_hi);
            i += 1;
            let mask = (u64::from(probe_hi) << 32) | u64::from(probe & 0xffff_fff0);
            Bar {
                index,
                kind: BarKind::Mem64,
                prefetchable: orig & 8 != 0,
                addr: (u64::from(orig_hi) << 32) | u64::from(orig & 0xffff_fff0),
                size: (!mask).wrapping_add(1),
                assigned: false,
            }
        } else {
            let mask = 0xffff_ffff_0000_0000 | u64::from(probe & 0xffff_fff0);
            Bar {
                index,
                kind: BarKind::Mem32,
                prefetchable: orig & 8 != 0,
                addr: u64::from(orig & 0xffff_fff0),
                size: (!mask).wrapping_add(1),
                assigned: false,
            }
        };
        bars[index as usize] = Some(bar);
    }
    if count > 0 {
        write16(bdf, REG_COMMAND, cmd);
    }
    bars
}

/// Reads one function's identity and BARs.
fn probe(bdf: Bdf, id: u32) -> Function {
    let header_type = read8(bdf, REG_HEADER_TYPE);
    Function {
        bdf,
        vendor: id as u16,
        device: (id >> 16) as u16,
        class: read32(bdf, REG_CLASS) >> 8,
        bars: size_bars(bdf, header_type),
    }
}

/// A bump allocator over `window`, starting above every BAR of `kind` already inside it.
struct Window {
    next: u64,
    end: u64,
}

impl Window {
    fn new(window: (u64, u64), bus: &Bus, io: bool) -> Window {
        let mut next = window.0;
        for bar in bus.functions().flat_map(|f| f.bars.iter().flatten()) {
            let end = bar.addr.saturating_add(bar.size);
            if (bar.kind == BarKind::Io) == io && bar.addr >= window.0 && bar.addr < window.1 {
                next = next.max(end);
            }
        }
        Window {
            next,
            end: window.1,
        }
    }

    fn take(&mut self, size: u64) -> Option<u64> {
        let at = self.next.checked_add(size - 1)? & !(size - 1);
        let end = at.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(at)
    }
}

/// Gives every BAR that reads 0 an address, then enables decode where the function has BARs.
fn assign(bus: &mut Bus, platform: &Platform) -> Result<(), &'static str> {
    let mut mem = Window::new(platform.mem32, bus, false);
    let mut io = platform.io.map(|w| Window::new(w, bus, true));
    for f in bus.functions.iter_mut().flatten() {
        let mut decode = 0;
        for bar in f.bars.iter_mut().flatten() {
            if bar.kind == BarKind::Io && io.is_none() {
                continue; // no I/O window on this platform: left alone, I/O decode stays off
            }
            if bar.addr == 0 && bar.size.is_power_of_two() {
                let window = match (&mut io, bar.kind) {
                    (Some(io), BarKind::Io) => io,
                    _ => &mut mem,
                };
                bar.addr = window
                    .take(bar.size)
                    .ok_or("no room left in the BAR window")?;
                bar.assigned = true;
                let off = REG_BAR0 + 4 * u16::from(bar.index);
                let flags = read32(f.bdf, off) & if bar.kind == BarKind::Io { 0x3 } else { 0xf };
                write32(f.bdf, off, bar.addr as u32 | flags);
                if bar.kind == BarKind::Mem64 {
                    write32(f.bdf, off + 4, (bar.addr >> 32) as u32);
                }
            }
            decode |= if bar.kind == BarKind::Io {
                CMD_IO
            } else {
                CMD_MEMORY
            };
        }
        if decode != 0 {
            f.enable(decode);
        }
    }
    Ok(())
}

/// Enumerates bus 0 (the platform's ECAM when it has one, else the legacy mechanism) and
/// assigns BARs.
pub fn scan(info: &arch::BootInfo) -> Result<Bus, &'static str> {
    let platform = arch::pci::platform(info)?;
    let ecam = platform.ecam;
    ECAM.store(ecam.unwrap_or(0), Ordering::Relaxed);
    let mut bus = Bus {
        functions: [None; MAX_FUNCTIONS],
        ecam,
        source: "",
    };
    let mut n = 0;
    for dev in 0..32u8 {
        let funcs = {
            let f0 = Bdf { dev, func: 0 };
            if absent(read32(f0, REG_ID)) {
                continue;
            }
            if read8(f0, REG_HEADER_TYPE) & 0x80 != 0 {
                8
            } else {
                1
            }
        };
        for func in 0..funcs {
            let bdf = Bdf { dev, func };
            let id = read32(bdf, REG_ID);
            if absent(id) {
                continue;
            }
            if let (Some(_), Some(c)) = (ecam, arch::pci::legacy_read(bdf, REG_ID, 4)) {
                if c != id {
                    println!(
                        "pci: {} id {:#010x} over ECAM, {:#010x} over {}",
                        bdf,
                        id,
                        c,
                        arch::pci::LEGACY
                    );
                    return Err("ECAM and the legacy config mechanism disagree");
                }
            }
            if n == MAX_FUNCTIONS {
                return Err("more functions on bus 0 than the guest keeps");
            }
            bus.functions[n] = Some(probe(bdf, id));
            n += 1;
        }
    }
    assign(&mut bus, &platform)?;
    bus.source = platform.source;
    Ok(bus)
}

fn class_name(f: &Function) -> &'static str {
    if f.vendor == virtio::VENDOR {
        return virtio::device_name(f.device);
    }
    match f.class >> 8 {
        0x0100 => "scsi",
        0x0101 => "ide",
        0x0106 => "sata",
        0x0108 => "nvme",
        0x0200 => "ethernet",
        0x0300 => "vga",
        0x0600 => "host bridge",
        0x0601 => "isa bridge",
        0x0604 => "pci bridge",
        0x0c03 => "usb",
        0x0c05 => "smbus",
        _ => "",
    }
}

fn cap_name(id: u8) -> &'static str {
    match id {
        0x01 => "pm",
        0x05 => "msi",
        0x09 => "vendor",
        0x10 => "pcie",
        0x11 => "msi-x",
        0x12 => "sata",
        0x13 => "af",
        _ => "other",
    }
}

/// Prints one function: identity, BARs, capabilities.
pub fn print_function(f: &Function) {
    let bdf = f.bdf;
    let name = class_name(f);
    println!(
        "pci: {} {:04x}:{:04x} class {:06x}{}{}, cmd {:#06x}",
        bdf,
        f.vendor,
        f.device,
        f.class,
        if name.is_empty() { "" } else { " " },
        name,
        read16(bdf, REG_COMMAND)
    );
    for bar in f.bars.iter().flatten() {
        let kind = match bar.kind {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        };
        println!(
            "pci: {} bar{} {}{} {:#x} size {:#x}{}",
            bdf,
            bar.index,
            kind,
            if bar.prefetchable { " pref" } else { "" },
            bar.addr,
            bar.size,
            if bar.assigned { " (assigned)" } else { "" }
        );
    }
    for (id, at) in capabilities(bdf) {
        match id {
            CAP_MSIX => {
                if let Some(m) = crate::msix::Msix::read(bdf, at) {
                    println!(
                        "msi-x: table bar {} off {:#x}, pba bar {} off {:#x}, table size {}",
                        m.table_bar, m.table_offset, m.pba_bar, m.pba_offset, m.table_size
                    );
                }
            }
            CAP_VENDOR if f.vendor == virtio::VENDOR => virtio::print_cap(bdf, at),
            _ => println!(
                "pci: {} cap {:#04x} ({}) at {:#x}",
                bdf,
                id,
                cap_name(id),
                at
            ),
        }
    }
}

/// Scans bus 0 and prints every function (the `pci` command; `rng` starts with it too).
pub fn list(info: &arch::BootInfo) -> Bus {
    let bus = match scan(info) {
        Ok(b) => b,
        Err(e) => crate::fail!("pci: {}", e),
    };
    match (
        bus.ecam,
        arch::pci::legacy_read(Bdf { dev: 0, func: 0 }, REG_ID, 4),
    ) {
        (Some(base), Some(_)) => println!(
            "pci: config access ecam {:#x} ({}), {} agrees",
            base,
            bus.source,
            arch::pci::LEGACY
        ),
        (Some(base), None) => println!("pci: config access ecam {:#x} ({})", base, bus.source),
        (None, _) => println!(
            "pci: config access {} (no {})",
            arch::pci::LEGACY,
            bus.source
        ),
    }
    for f in bus.functions() {
        print_function(f);
    }
    let assigned = bus
        .functions()
        .flat_map(|f| f.bars.iter().flatten())
        .filter(|b| b.assigned)
        .count();
    println!(
        "pci: {} functions on bus 0, {} BARs assigned by the guest",
        bus.functions().count(),
        assigned
    );
    bus
}
