//! Virtio 1.x over PCI ("modern"): the vendor capabilities, the common configuration and
//! queue notifications. Drivers (`drivers`) use [`Transport`] and a [`queue::SplitQueue`].
//!
//! Registers are reached with accesses of their own width; 64-bit fields as two 32-bit halves
//! (low first), which the spec allows and every device must take.
pub mod queue;

use crate::arch::{cpu, paging, time};
use crate::pci::{self, Bdf, Function};
use crate::println;

pub const VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
pub const MODERN_DEVICE_BASE: u16 = 0x1040;
pub const F_VERSION_1: u64 = 1 << 32;
pub const NO_VECTOR: u16 = 0xffff;

pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;
const CFG_SHARED_MEMORY: u8 = 8;

// struct virtio_pci_common_cfg
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const COMMON_CFG_LEN: u32 = 0x38;

/// How long a reset may take to read back 0.
const RESET_TIMEOUT_US: u64 = 100_000;

/// The name of a virtio device by its PCI device ID.
pub fn device_name(device: u16) -> &'static str {
    let kind = if device >= MODERN_DEVICE_BASE {
        device - MODERN_DEVICE_BASE
    } else {
        // Transitional IDs 0x1000..0x103f: net, block, balloon, console, scsi, rng, 9p.
        match device {
            0x1000 => 1,
            0x1001 => 2,
            0x1002 => 5,
            0x1003 => 3,
            0x1004 => 8,
            0x1005 => 4,
            0x1009 => 9,
            _ => 0,
        }
    };
    match kind {
        1 => "virtio-net",
        2 => "virtio-blk",
        3 => "virtio-console",
        4 => "virtio-rng",
        5 => "virtio-balloon",
        8 => "virtio-scsi",
        9 => "virtio-9p",
        16 => "virtio-gpu",
        18 => "virtio-input",
        19 => "virtio-vsock",
        _ => "virtio",
    }
}

/// Where a virtio structure lives: BAR, offset, length.
#[derive(Clone, Copy)]
pub struct Region {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

/// One `struct virtio_pci_cap` (plus the notify multiplier for the notify capability).
struct Cap {
    cfg_type: u8,
    region: Region,
    notify_multiplier: u32,
}

fn read_cap(bdf: Bdf, at: u16) -> Cap {
    let cfg_type = pci::read8(bdf, at + 3);
    Cap {
        cfg_type,
        region: Region {
            bar: pci::read8(bdf, at + 4),
            offset: pci::read32(bdf, at + 8),
            length: pci::read32(bdf, at + 12),
        },
        notify_multiplier: if cfg_type == CFG_NOTIFY && pci::read8(bdf, at + 2) >= 20 {
            pci::read32(bdf, at + 16)
        } else {
            0
        },
    }
}

/// Prints a vendor capability of a virtio function: `virtio-cap: <type> bar B off O len L`.
pub fn print_cap(bdf: Bdf, at: u16) {
    let c = read_cap(bdf, at);
    let name = match c.cfg_type {
        CFG_COMMON => "common",
        CFG_NOTIFY => "notify",
        CFG_ISR => "isr",
        CFG_DEVICE => "device",
        CFG_PCI => "pci-cfg",
        CFG_SHARED_MEMORY => "shared-memory",
        _ => "unknown",
    };
    let r = c.region;
    if c.cfg_type == CFG_NOTIFY {
        println!(
            "virtio-cap: notify bar {} off {:#x} len {:#x} notify_off_multiplier {}",
            r.bar, r.offset, r.length, c.notify_multiplier
        );
    } else {
        println!(
            "virtio-cap: {} bar {} off {:#x} len {:#x}",
            name, r.bar, r.offset, r.length
        );
    }
}

/// A modern virtio-pci device, its structures mapped. (The ISR structure is checked and mapped
/// too, but not kept: MSI-X drivers never read it.)
pub struct Transport {
    common: u64,
    notify: u64,
    notify_len: u32,
    notify_multiplier: u32,
    /// The device-specific configuration (0 and 0 when the device has none).
    device: u64,
    device_len: u32,
}

/// The address of `region` in `f`'s BARs, mapped uncached; `min_len`: what the driver needs.
fn locate(f: &Function, region: Region, min_len: u32) -> Result<u64, &'static str> {
    let bar = f
        .bar(region.bar)
        .ok_or("virtio structure in a BAR the device lacks")?;
    if bar.kind == pci::BarKind::Io {
        return Err("virtio structure in an I/O BAR");
    }
    if region.length < min_len || u64::from(region.offset) + u64::from(region.length) > bar.size {
        return Err("virtio structure does not fit its BAR");
    }
    let at = bar.addr + u64::from(region.offset);
    paging::map_uncached(at, u64::from(region.length))?;
    Ok(at)
}

impl Transport {
    /// Finds the common, notify, ISR and (optional) device structures of `f` and maps them.
    pub fn new(f: &Function) -> Result<Transport, &'static str> {
        let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
        for (id, at) in pci::capabilities(f.bdf) {
            if id != pci::CAP_VENDOR {
                continue;
            }
            let c = read_cap(f.bdf, at);
            // The first capability of each type is the one to use (spec 4.1.4.1).
            match c.cfg_type {
                CFG_COMMON if common.is_none() => common = Some(c),
                CFG_NOTIFY if notify.is_none() => notify = Some(c),
                CFG_ISR if isr.is_none() => isr = Some(c),
                CFG_DEVICE if device.is_none() => device = Some(c),
                _ => {}
            }
        }
        let common = common.ok_or("no virtio common configuration capability")?;
        let notify = notify.ok_or("no virtio notify capability")?;
        let isr: Cap = isr.ok_or("no virtio ISR capability")?;
        locate(f, isr.region, 1)?;
        let (device, device_len) = match device {
            Some(d) => (locate(f, d.region, 0)?, d.region.length),
            None => (0, 0),
        };
        Ok(Transport {
            common: locate(f, common.region, COMMON_CFG_LEN)?,
            notify: locate(f, notify.region, 2)?,
            notify_len: notify.region.length,
            notify_multiplier: notify.notify_multiplier,
            device,
            device_len,
        })
    }

    /// A byte of the device-specific configuration (None beyond it, or without one).
    pub fn device_read8(&self, off: u32) -> Option<u8> {
        if self.device == 0 || off >= self.device_len {
            return None;
        }
        // SAFETY: inside the device-specific structure, mapped uncached by `new`.
        Some(unsafe { cpu::mmio_read8(self.device + u64::from(off)) })
    }

    /// A 16-bit field of the device-specific configuration (little-endian, `off` even).
    pub fn device_read16(&self, off: u32) -> Option<u16> {
        if self.device == 0 || !off.is_multiple_of(2) || off + 2 > self.device_len {
            return None;
        }
        // SAFETY: as in `device_read8`; aligned.
        Some(unsafe { cpu::mmio_read16(self.device + u64::from(off)) })
    }

    fn read8(&self, off: u64) -> u8 {
        // SAFETY: inside the common configuration structure, mapped uncached by `new`.
        unsafe { cpu::mmio_read8(self.common + off) }
    }
    fn write8(&self, off: u64, v: u8) {
        // SAFETY: as in `read8`.
        unsafe { cpu::mmio_write8(self.common + off, v) }
    }
    fn read16(&self, off: u64) -> u16 {
        // SAFETY: as in `read8`; every 16-bit field is 2-byte aligned.
        unsafe { cpu::mmio_read16(self.common + off) }
    }
    fn write16(&self, off: u64, v: u16) {
        // SAFETY: as in `read16`.
        unsafe { cpu::mmio_write16(self.common + off, v) }
    }
    fn read32(&self, off: u64) -> u32 {
        // SAFETY: as in `read8`; every 32-bit field is 4-byte aligned.
        unsafe { cpu::mmio_read32(self.common + off) }
    }
    fn write32(&self, off: u64, v: u32) {
        // SAFETY: as in `read32`.
        unsafe { cpu::mmio_write32(self.common + off, v) }
    }
    fn write64(&self, off: u64, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }

    pub fn status(&self) -> u8 {
        self.read8(DEVICE_STATUS)
    }

    /// ORs `bits` into the device status.
    pub fn add_status(&self, bits: u8) {
        let s = self.status();
        self.write8(DEVICE_STATUS, s | bits);
    }

    pub fn num_queues(&self) -> u16 {
        self.read16(NUM_QUEUES)
    }

    /// Writes 0 to the status and waits (bounded) until it reads 0. After this the device
    /// neither reads nor writes guest memory until it is set up again.
    pub fn reset(&self) -> Result<(), &'static str> {
        self.write8(DEVICE_STATUS, 0);
        let end = time::deadline_us(RESET_TIMEOUT_US);
        while self.status() != 0 {
            if time::passed(end) {
                return Err("device status did not read 0 after reset");
            }
            cpu::pause();
        }
        Ok(())
    }

    /// Both halves of the device's feature bits.
    pub fn device_features(&self) -> u64 {
        self.write32(DEVICE_FEATURE_SELECT, 0);
        let lo = self.read32(DEVICE_FEATURE);
        self.write32(DEVICE_FEATURE_SELECT, 1);
        let hi = self.read32(DEVICE_FEATURE);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    fn set_driver_features(&self, features: u64) {
        self.write32(DRIVER_FEATURE_SELECT, 0);
        self.write32(DRIVER_FEATURE, features as u32);
        self.write32(DRIVER_FEATURE_SELECT, 1);
        self.write32(DRIVER_FEATURE, (features >> 32) as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation (the driver's `supported` bits that the
    /// device offers; VERSION_1 required), FEATURES_OK and its read-back. Returns (offered,
    /// accepted). On failure the status gets FAILED.
    pub fn negotiate(&self, supported: u64) -> Result<(u64, u64), &'static str> {
        self.reset()?;
        self.add_status(STATUS_ACKNOWLEDGE);
        self.add_status(STATUS_DRIVER);
        let offered = self.device_features();
        let accepted = offered & supported;
        if accepted & F_VERSION_1 == 0 {
            self.add_status(STATUS_FAILED);
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        self.set_driver_features(accepted);
        self.add_status(STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.add_status(STATUS_FAILED);
            return Err("device did not keep FEATURES_OK");
        }
        Ok((offered, accepted))
    }

    /// Routes configuration-change interrupts to MSI-X `vector` (or NO_VECTOR) and checks the
    /// device kept it.
    pub fn set_config_vector(&self, vector: u16) -> Result<(), &'static str> {
        self.write16(CONFIG_MSIX_VECTOR, vector);
        if self.read16(CONFIG_MSIX_VECTOR) != vector {
            return Err("device refused the config MSI-X vector");
        }
        Ok(())
    }

    /// The largest size queue `index` takes (0: no such queue).
    pub fn queue_max_size(&self, index: u16) -> u16 {
        self.write16(QUEUE_SELECT, index);
        self.read16(QUEUE_SIZE)
    }

    /// Gives queue `index` the rings of `q`, routes its interrupts to MSI-X entry
    /// `msix_vector`, enables it, and returns its notify address.
    pub fn setup_queue(
        &self,
        index: u16,
        q: &queue::SplitQueue,
        msix_vector: u16,
    ) -> Result<u64, &'static str> {
        self.write16(QUEUE_SELECT, index);
        let max = self.read16(QUEUE_SIZE);
        if max == 0 || q.size() > max {
            return Err("queue missing or smaller than the driver's ring");
        }
        if self.read16(QUEUE_ENABLE) != 0 {
            return Err("queue already enabled after reset");
        }
        self.write16(QUEUE_SIZE, q.size());
        self.write64(QUEUE_DESC, q.desc_addr());
        self.write64(QUEUE_DRIVER, q.avail_addr());
        self.write64(QUEUE_DEVICE, q.used_addr());
        self.write16(QUEUE_MSIX_VECTOR, msix_vector);
        if self.read16(QUEUE_MSIX_VECTOR) != msix_vector {
            return Err("device refused the queue MSI-X vector");
        }
        let off = u64::from(self.read16(QUEUE_NOTIFY_OFF)) * u64::from(self.notify_multiplier);
        if off + 2 > u64::from(self.notify_len) {
            return Err("queue notify address beyond the notify structure");
        }
        self.write16(QUEUE_ENABLE, 1);
        Ok(self.notify + off)
    }

    /// Sets DRIVER_OK and checks the device did not ask for a reset.
    pub fn driver_ok(&self) -> Result<(), &'static str> {
        self.add_status(STATUS_DRIVER_OK);
        let s = self.status();
        if s & STATUS_NEEDS_RESET != 0 {
            return Err("device set NEEDS_RESET");
        }
        if s & STATUS_DRIVER_OK == 0 {
            return Err("device did not keep DRIVER_OK");
        }
        Ok(())
    }

    /// Kicks queue `index` at `notify` (from [`Transport::setup_queue`]).
    pub fn notify(&self, notify: u64, index: u16) {
        // Ring writes (WB memory) must reach the device before this notify: on x86 stores to WB
        // memory are ordered before this UC store and the fence only keeps the compiler from
        // sinking them past it; on aarch64 it is a `dmb ish`, and the arch's MMIO write adds the
        // barrier that orders normal memory before device memory.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        // SAFETY: `notify` is inside the notify structure (checked in `setup_queue`), mapped
        // uncached; the write only tells the device to look at the queue.
        unsafe { cpu::mmio_write16(notify, index) }
    }
}
