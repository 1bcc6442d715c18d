//! The PCI root: bus 0 with a host bridge at 00:00.0, config access by conf1 ports and ECAM,
//! BAR placement and BAR moves.
//!
//! Config access paths, both ending in [`PciRoot::config_read`]/[`PciRoot::config_write`]:
//! * **conf1**: PIO 0xcf8 (CONFIG_ADDRESS: enable bit 31, bus 23:16, device 15:11, function
//!   10:8, register 7:2) and 0xcfc..0xcff (CONFIG_DATA; 1/2/4-byte accesses at any of the four
//!   ports address register + port offset);
//! * **ECAM**: the MMIO window at `arch::pci_layout().ecam_start`, 4 KiB per function (bus 0
//!   only).
//!
//! conf1 is an x86 port mechanism: only `arch::x86_64` puts [`Conf1`] on its PIO bus; every
//! architecture has ECAM.
//!
//! Absent functions read as all-ones and ignore writes.
//!
//! BARs: at [`PciRoot::add_device`] each BAR is placed (vm-allocator) in the 32-bit window
//! (`Mem32`) or the 64-bit window above RAM (`Mem64`), and memory decode is turned on, as
//! firmware would. Afterwards the guest owns them: after every config write that changed a
//! BAR or the command register, each BAR's wanted place (its address while memory decode is
//! on, nowhere otherwise) is compared with where it is on the MMIO bus; a BAR that moved is
//! taken off the bus, put at its new address (each of its regions a bus range) and the device
//! is told ([`PciDevice::bar_mapped`]) so that its ioeventfds move too. A place that overlaps
//! a range the architecture reserves (guest RAM, the ECAM window, the in-kernel interrupt
//! controller, KVM's TSS pages on x86) or any bus range (another BAR, the test device) is
//! refused: logged, counted, the BAR decodes nowhere, the VM runs on.
use std::sync::{Arc, Mutex, MutexGuard};

use vm_allocator::{AddressAllocator, AllocPolicy, Constraint};

use super::config::{self, BAR_COUNT, COMMAND_MEMORY};
use super::{
    lock_device, BarKind, BarRegion, ConfigWrite, PciConfig, PciDevice, PciError, PciHeader,
    SharedPciDevice,
};
use crate::arch::{self, PciLayout, Reserved};
use crate::bus::{Bus, BusDevice, DeviceEvent};

/// Device numbers on bus 0.
pub const SLOTS: usize = 32;
/// conf1 ports: CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc.
pub const CONF1_PORT: u16 = 0xcf8;
pub const CONF1_LEN: u64 = 8;
const CONF1_ENABLE: u32 = 1 << 31;

struct Slot {
    dev: SharedPciDevice,
    /// Where each BAR is on the MMIO bus now.
    mapped: [Option<u64>; BAR_COUNT],
}

/// Counters of the root.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RootStats {
    pub config_reads: u64,
    pub config_writes: u64,
    /// Accesses to absent functions, other buses, or straddling a function's 4 KiB.
    pub absent: u64,
    /// BARs put at a new place on the bus (placement at start included).
    pub bar_maps: u64,
    /// BARs taken off the bus (moved away, or memory decode turned off).
    pub bar_unmaps: u64,
    /// BAR places refused (overlap with RAM, a reserved range or another range on the bus).
    pub bar_conflicts: u64,
}

struct Windows {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
}

/// Bus 0.
pub struct PciRoot {
    mmio: Arc<Bus>,
    reserved: Vec<Reserved>,
    slots: Mutex<Vec<Option<Slot>>>,
    windows: Mutex<Windows>,
    layout: PciLayout,
    /// A [`Conf1`] port device exists for this root (x86_64).
    conf1: std::sync::atomic::AtomicBool,
    stats: Mutex<RootStats>,
}

/// The bus range backing one region of a BAR.
struct BarWindow {
    dev: SharedPciDevice,
    bar: usize,
    /// The region's offset inside the BAR.
    base: u64,
    region: &'static str,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock_device(&self.dev).bar_read(self.bar, self.base + offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        lock_device(&self.dev).bar_write(self.bar, self.base + offset, data);
        DeviceEvent::None
    }
    fn region_name(&self, _offset: u64) -> &'static str {
        self.region
    }
}

impl PciRoot {
    /// Bus 0 for a VM with `mem_size` bytes of RAM, whose BARs live on `mmio`; with the host
    /// bridge at 00:00.0. The windows are the architecture's (`arch::pci_layout`).
    pub fn new(mmio: Arc<Bus>, mem_size: u64) -> Result<Arc<PciRoot>, PciError> {
        Self::with_layout(mmio, arch::pci_layout(mem_size))
    }

    /// Bus 0 with the windows and reserved ranges of `layout`.
    pub fn with_layout(mmio: Arc<Bus>, layout: PciLayout) -> Result<Arc<PciRoot>, PciError> {
        let window = |base, size| {
            AddressAllocator::new(base, size).map_err(|e| PciError::Window(e.to_string()))
        };
        let root = Arc::new(PciRoot {
            mmio,
            reserved: layout.reserved.clone(),
            slots: Mutex::new((0..SLOTS).map(|_| None).collect()),
            windows: Mutex::new(Windows {
                mmio32: window(layout.mmio32_start, layout.mmio32_size)?,
                mmio64: window(layout.mmio64_start, layout.mmio64_size)?,
            }),
            layout,
            conf1: std::sync::atomic::AtomicBool::new(false),
            stats: Mutex::new(RootStats::default()),
        });
        root.add_device_at(0, Arc::new(Mutex::new(HostBridge::new())))?;
        Ok(root)
    }

    /// The windows this root places BARs in.
    pub fn layout(&self) -> &PciLayout {
        &self.layout
    }

    pub fn stats(&self) -> RootStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut RootStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Option<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plugs `dev` into the first free slot; places its BARs and turns memory decode on.
    /// Returns the device number.
    pub fn add_device(&self, dev: SharedPciDevice) -> Result<u8, PciError> {
        let free = self.free_slot().ok_or(PciError::NoSlot)?;
        self.add_device_at(usize::from(free), dev)?;
        Ok(free)
    }

    /// The device number `add_device` would use next (its requester id is known before the
    /// function is made).
    pub fn free_slot(&self) -> Option<u8> {
        self.slots()
            .iter()
            .position(Option::is_none)
            .map(|n| n as u8)
    }

    /// Plugs `dev` in as device `slot`, which must be free.
    pub fn add_device_in(&self, slot: u8, dev: SharedPciDevice) -> Result<(), PciError> {
        match self.slots().get(usize::from(slot)) {
            Some(None) => {}
            _ => return Err(PciError::NoSlot),
        }
        self.add_device_at(usize::from(slot), dev)
    }

    fn add_device_at(&self, slot: usize, dev: SharedPciDevice) -> Result<(), PciError> {
        {
            let mut d = lock_device(&dev);
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            for bar in 0..BAR_COUNT {
                let Some(info) = d.config().bar(bar) else {
                    continue;
                };
                let (alloc, name) = match info.kind {
                    BarKind::Mem32 => (&mut windows.mmio32, "32-bit"),
                    BarKind::Mem64 => (&mut windows.mmio64, "64-bit"),
                };
                let range = Constraint::new(info.size, info.size, AllocPolicy::FirstMatch)
                    .and_then(|c| alloc.allocate(c.size(), c.align(), AllocPolicy::FirstMatch))
                    .map_err(|_| PciError::NoBarSpace {
                        window: name,
                        size: info.size,
                    })?;
                d.config_mut().set_bar_addr(bar, range.start())?;
            }
            let cmd = d.config().command() | COMMAND_MEMORY;
            d.config_mut().set_command(cmd);
        }
        let mut slots = self.slots();
        slots[slot] = Some(Slot {
            dev,
            mapped: [None; BAR_COUNT],
        });
        if let Some(s) = slots[slot].as_mut() {
            self.sync_bars(s);
        }
        Ok(())
    }

    /// A config read of function `func` of device `dev` on bus 0.
    pub fn config_read(&self, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        self.count(|s| s.config_reads += 1);
        let slots = self.slots();
        match slots.get(usize::from(dev)).and_then(Option::as_ref) {
            Some(s)
                if func == 0
                    && offset.saturating_add(data.len()) <= config::EXT_CONFIG_SPACE_SIZE =>
            {
                lock_device(&s.dev).config_read(offset, data);
            }
            _ => {
                data.fill(0xff);
                drop(slots);
                self.count(|s| s.absent += 1);
            }
        }
    }

    /// A config write; remaps the function's BARs if it changed them or the command register.
    pub fn config_write(&self, dev: u8, func: u8, offset: usize, data: &[u8]) {
        self.count(|s| s.config_writes += 1);
        let mut slots = self.slots();
        match slots.get_mut(usize::from(dev)).and_then(Option::as_mut) {
            Some(s)
                if func == 0
                    && offset.saturating_add(data.len()) <= config::EXT_CONFIG_SPACE_SIZE =>
            {
                let w: ConfigWrite = lock_device(&s.dev).config_write(offset, data);
                if w.needs_remap() {
                    self.sync_bars(s);
                }
            }
            _ => {
                drop(slots);
                self.count(|s| s.absent += 1);
            }
        }
    }

    /// Brings each BAR's bus registration in line with its register and memory decode.
    fn sync_bars(&self, slot: &mut Slot) {
        let mut d = lock_device(&slot.dev);
        let enabled = d.config().memory_enabled();
        for bar in 0..BAR_COUNT {
            let Some(info) = d.config().bar(bar) else {
                continue;
            };
            let want = if enabled {
                d.config().bar_decode_addr(bar)
            } else {
                None
            };
            if want == slot.mapped[bar] {
                continue;
            }
            let regions = d.bar_regions(bar);
            if let Some(old) = slot.mapped[bar].take() {
                for r in &regions {
                    let _ = self.mmio.remove(old + r.offset);
                }
                self.count(|s| s.bar_unmaps += 1);
            }
            if let Some(addr) = want {
                match self.map_bar(&slot.dev, d.name(), bar, addr, info.size, &regions) {
                    Ok(()) => {
                        slot.mapped[bar] = Some(addr);
                        self.count(|s| s.bar_maps += 1);
                    }
                    Err(why) => {
                        self.count(|s| s.bar_conflicts += 1);
                        log::warn!(
                            "{}: BAR{bar} at {addr:#x} (size {:#x}) refused: {why}; it decodes nowhere",
                            d.name(),
                            info.size
                        );
                    }
                }
            }
            d.bar_mapped(bar, slot.mapped[bar]);
        }
    }

    /// Puts every region of a BAR on the bus at `addr`, or none of them.
    fn map_bar(
        &self,
        dev: &SharedPciDevice,
        name: &str,
        bar: usize,
        addr: u64,
        size: u64,
        regions: &[BarRegion],
    ) -> Result<(), String> {
        let end = addr
            .checked_add(size)
            .ok_or_else(|| "it wraps the address space".to_string())?;
        if let Some(r) = self.reserved.iter().find(|r| addr < r.end && r.start < end) {
            return Err(format!("it overlaps {}", r.what));
        }
        let mut done = Vec::new();
        for r in regions {
            let window = BarWindow {
                dev: dev.clone(),
                bar,
                base: r.offset,
                region: r.name,
            };
            let res = self.mmio.insert(
                addr + r.offset,
                r.len,
                name,
                &format!("bar{bar} {}", r.name),
                Arc::new(Mutex::new(window)),
            );
            match res {
                Ok(()) => done.push(addr + r.offset),
                Err(e) => {
                    for base in done {
                        let _ = self.mmio.remove(base);
                    }
                    return Err(e.to_string());
                }
            }
        }
        Ok(())
    }

    /// Where BAR `bar` of device `dev` decodes now.
    pub fn bar_mapping(&self, dev: u8, bar: usize) -> Option<u64> {
        let slots = self.slots();
        slots
            .get(usize::from(dev))?
            .as_ref()?
            .mapped
            .get(bar)
            .copied()
            .flatten()
    }

    /// The PCI part of `--print-map`: windows, functions, BARs and their regions.
    pub fn format_map(&self) -> String {
        let l = &self.layout;
        let conf1 = if self.conf1.load(std::sync::atomic::Ordering::Relaxed) {
            format!(
                "conf1 pio {:#x}-{:#x}, ",
                CONF1_PORT,
                u64::from(CONF1_PORT) + CONF1_LEN - 1
            )
        } else {
            String::new()
        };
        let mut out = format!(
            "pci: {conf1}ecam {:#x}-{:#x} (bus 0), mmio32 window {:#x}-{:#x}, mmio64 window {:#x}-{:#x}\n",
            l.ecam_start,
            l.ecam_start + l.ecam_size - 1,
            l.mmio32_start,
            l.mmio32_start + l.mmio32_size - 1,
            l.mmio64_start,
            l.mmio64_start + l.mmio64_size - 1,
        );
        let slots = self.slots();
        for (n, s) in slots.iter().enumerate() {
            let Some(s) = s else { continue };
            let d = lock_device(&s.dev);
            let c: &PciConfig = d.config();
            let (class, sub, pi) = c.class();
            let extra = d.describe();
            out.push_str(&format!(
                "  00:{n:02x}.0 {:04x}:{:04x} class {class:02x}{sub:02x}{pi:02x} {}{}{}\n",
                c.vendor_id(),
                c.device_id(),
                d.name(),
                if extra.is_empty() { "" } else { " " },
                extra
            ));
            for bar in 0..BAR_COUNT {
                let Some(info) = c.bar(bar) else { continue };
                let addr = c.bar_addr(bar).unwrap_or(0);
                let state = match s.mapped[bar] {
                    Some(_) => "",
                    None => " (not decoded)",
                };
                let regions: Vec<String> = d
                    .bar_regions(bar)
                    .iter()
                    .map(|r| format!("{}@+{:#x}", r.name, r.offset))
                    .collect();
                out.push_str(&format!(
                    "    bar{bar} {} {:016x}-{:016x} (size {:#x}){state}: {}\n",
                    match info.kind {
                        BarKind::Mem32 => "mem32",
                        BarKind::Mem64 => "mem64",
                    },
                    addr,
                    addr + (info.size - 1),
                    info.size,
                    regions.join(" ")
                ));
            }
        }
        out
    }
}

/// Splits a CONFIG_ADDRESS value: (enabled, bus, device, function, register).
fn conf1_decode(address: u32) -> (bool, u8, u8, u8, usize) {
    (
        address & CONF1_ENABLE != 0,
        (address >> 16) as u8,
        ((address >> 11) & 0x1f) as u8,
        ((address >> 8) & 0x7) as u8,
        (address & 0xfc) as usize,
    )
}

/// Ports 0xcf8..0xcff.
pub struct Conf1 {
    root: Arc<PciRoot>,
    address: u32,
}

impl Conf1 {
    pub fn new(root: Arc<PciRoot>) -> Self {
        root.conf1.store(true, std::sync::atomic::Ordering::Relaxed);
        Conf1 { root, address: 0 }
    }

    fn target(&self, port_offset: u64) -> Option<(u8, u8, usize)> {
        let (enabled, bus, dev, func, reg) = conf1_decode(self.address);
        (enabled && bus == 0).then_some((dev, func, reg + (port_offset as usize - 4)))
    }
}

impl BusDevice for Conf1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let end = offset + data.len() as u64;
        if end <= 4 {
            let bytes = self.address.to_le_bytes();
            data.copy_from_slice(&bytes[offset as usize..end as usize]);
        } else if offset >= 4 {
            match self.target(offset) {
                Some((dev, func, reg)) => self.root.config_read(dev, func, reg, data),
                None => {
                    data.fill(0xff);
                    self.root.count(|s| s.absent += 1);
                }
            }
        } else {
            // Straddles CONFIG_ADDRESS and CONFIG_DATA: not a real access.
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        let end = offset + data.len() as u64;
        if end <= 4 {
            let mut bytes = self.address.to_le_bytes();
            bytes[offset as usize..end as usize].copy_from_slice(data);
            // Bits 30:24 are reserved and 1:0 are always 0.
            self.address = u32::from_le_bytes(bytes) & 0x80ff_fffc;
        } else if offset >= 4 {
            match self.target(offset) {
                Some((dev, func, reg)) => self.root.config_write(dev, func, reg, data),
                None => self.root.count(|s| s.absent += 1),
            }
        }
        DeviceEvent::None
    }

    fn region_name(&self, offset: u64) -> &'static str {
        if offset < 4 {
            "config-address"
        } else {
            "config-data"
        }
    }
}

/// The ECAM window: bus 0's 32 devices × 8 functions × 4 KiB.
pub struct Ecam {
    root: Arc<PciRoot>,
}

impl Ecam {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Ecam { root }
    }

    fn target(offset: u64, len: usize) -> Option<(u8, u8, usize)> {
        let bus = offset >> 20;
        let dev = ((offset >> 15) & 0x1f) as u8;
        let func = ((offset >> 12) & 0x7) as u8;
        let reg = (offset & 0xfff) as usize;
        (bus == 0 && reg + len <= config::EXT_CONFIG_SPACE_SIZE).then_some((dev, func, reg))
    }
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Ecam::target(offset, data.len()) {
            Some((dev, func, reg)) => self.root.config_read(dev, func, reg, data),
            None => {
                data.fill(0xff);
                self.root.count(|s| s.absent += 1);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        match Ecam::target(offset, data.len()) {
            Some((dev, func, reg)) => self.root.config_write(dev, func, reg, data),
            None => self.root.count(|s| s.absent += 1),
        }
        DeviceEvent::None
    }

    fn region_name(&self, _offset: u64) -> &'static str {
        "config"
    }
}

/// 00:00.0: a host bridge with no BARs (Red Hat's generic PCIe host bridge id, as QEMU's
/// `gpex`, so no guest applies chipset quirks to it).
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: PciConfig::new(&PciHeader {
                vendor_id: 0x1b36,
                device_id: 0x0008,
                class: 0x06,
                subclass: 0x00,
                subsystem_vendor_id: 0x1b36,
                subsystem_id: 0x0008,
                ..Default::default()
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn name(&self) -> &str {
        "host-bridge"
    }
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests;
