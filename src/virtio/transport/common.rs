//! The common configuration structure (virtio 1.2 §4.1.4.3) and the device status state
//! machine (§2.1, §3.1.1).
//!
//! Accesses of any width at any offset: a read assembles bytes from the fields it covers; a
//! write merges its bytes into each field it covers and then applies each field in address
//! order. Bytes outside the fields read 0 and ignore writes.
//!
//! Status: the driver sets ACKNOWLEDGE, DRIVER, then FEATURES_OK, which the device keeps only
//! if the driver's features are a subset of the offered ones and include VERSION_1 (the driver
//! re-reads it), then DRIVER_OK, which activates the device — refused without FEATURES_OK.
//! Bad queue setups set DEVICE_NEEDS_RESET. Writing 0 resets everything, ioeventfds and
//! irqfds included.
use crate::virtio::transport::interrupt::NO_VECTOR;
use crate::virtio::{
    feature, VirtioInterrupt, VirtioInterruptType, VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

use super::{layout, VirtioPciDevice};
use crate::virtio::queue::QueueRegs;

const ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;

/// The fields of struct virtio_pci_common_cfg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    QueueDesc,
    QueueDriver,
    QueueDevice,
}

/// (offset, size, field).
pub const FIELDS: [(u64, u64, Field); 16] = [
    (0x00, 4, Field::DeviceFeatureSelect),
    (0x04, 4, Field::DeviceFeature),
    (0x08, 4, Field::DriverFeatureSelect),
    (0x0c, 4, Field::DriverFeature),
    (0x10, 2, Field::ConfigMsixVector),
    (0x12, 2, Field::NumQueues),
    (0x14, 1, Field::DeviceStatus),
    (0x15, 1, Field::ConfigGeneration),
    (0x16, 2, Field::QueueSelect),
    (0x18, 2, Field::QueueSize),
    (0x1a, 2, Field::QueueMsixVector),
    (0x1c, 2, Field::QueueEnable),
    (0x1e, 2, Field::QueueNotifyOff),
    (0x20, 8, Field::QueueDesc),
    (0x28, 8, Field::QueueDriver),
    (0x30, 8, Field::QueueDevice),
];

/// The common configuration's size.
pub const COMMON_CFG_LEN: u64 = 0x38;

fn word(value: u64, select: u32) -> u64 {
    match select {
        0 => value & 0xffff_ffff,
        1 => value >> 32,
        _ => 0,
    }
}

impl VirtioPciDevice {
    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn read_field(&self, f: Field) -> u64 {
        let q = self.selected();
        match f {
            Field::DeviceFeatureSelect => u64::from(self.device_feature_select),
            Field::DeviceFeature => word(self.device_features, self.device_feature_select),
            Field::DriverFeatureSelect => u64::from(self.driver_feature_select),
            Field::DriverFeature => word(self.driver_features, self.driver_feature_select),
            Field::ConfigMsixVector => u64::from(self.interrupt.config_vector()),
            Field::NumQueues => self.queues.len() as u64,
            Field::DeviceStatus => u64::from(self.status),
            Field::ConfigGeneration => u64::from(self.config_generation),
            Field::QueueSelect => u64::from(self.queue_select),
            // An unavailable queue reads size 0 (§4.1.4.3.2).
            Field::QueueSize => q.map_or(0, |q| u64::from(q.size)),
            Field::QueueMsixVector => match q {
                Some(_) => u64::from(self.interrupt.queue_vector(usize::from(self.queue_select))),
                None => u64::from(NO_VECTOR),
            },
            Field::QueueEnable => q.map_or(0, |q| u64::from(q.enabled)),
            Field::QueueNotifyOff => q.map_or(0, |_| u64::from(self.queue_select)),
            Field::QueueDesc => q.map_or(0, |q| q.desc),
            Field::QueueDriver => q.map_or(0, |q| q.driver),
            Field::QueueDevice => q.map_or(0, |q| q.device),
        }
    }

    /// A guest read in the common configuration.
    pub(super) fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset + i as u64;
            *b = FIELDS
                .iter()
                .find(|(o, s, _)| off >= *o && off < o + s)
                .map_or(0, |&(o, _, f)| {
                    (self.read_field(f) >> (8 * (off - o))) as u8
                });
        }
    }

    /// A guest write in the common configuration.
    pub(super) fn common_write(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        for &(o, s, f) in FIELDS.iter() {
            if o >= end || o + s <= offset {
                continue;
            }
            let mut bytes = self.read_field(f).to_le_bytes();
            for (i, &v) in data.iter().enumerate() {
                let off = offset + i as u64;
                if off >= o && off < o + s {
                    bytes[(off - o) as usize] = v;
                }
            }
            self.write_field(f, u64::from_le_bytes(bytes));
        }
    }

    fn write_field(&mut self, f: Field, v: u64) {
        let sel = usize::from(self.queue_select);
        let queue_exists = sel < self.queues.len();
        let queue_locked = queue_exists && self.queues[sel].enabled;
        match f {
            Field::DeviceFeature
            | Field::NumQueues
            | Field::ConfigGeneration
            | Field::QueueNotifyOff => {
                if v != self.read_field(f) {
                    self.stats.read_only_writes += 1;
                }
            }
            Field::DeviceFeatureSelect => self.device_feature_select = v as u32,
            Field::DriverFeatureSelect => self.driver_feature_select = v as u32,
            Field::DriverFeature => {
                if v == self.read_field(f) {
                    return;
                }
                if self.status & FEATURES_OK != 0 || self.driver_feature_select > 1 {
                    self.stats.read_only_writes += 1;
                    return;
                }
                let shift = 32 * self.driver_feature_select;
                self.driver_features =
                    (self.driver_features & !(0xffff_ffff << shift)) | ((v & 0xffff_ffff) << shift);
            }
            Field::ConfigMsixVector => {
                let v = self.checked_vector(v as u16);
                self.interrupt.set_config_vector(v);
            }
            Field::DeviceStatus => self.set_status(v as u8),
            Field::QueueSelect => self.queue_select = v as u16,
            Field::QueueSize => {
                if !queue_exists || queue_locked {
                    self.stats.read_only_writes += u64::from(v != self.read_field(f));
                    return;
                }
                let size = v as u16;
                let max = self.queues[sel].max_size;
                if size == 0 || !size.is_power_of_two() || size > max {
                    // Kept (the driver reads back what it wrote); queue_enable refuses it.
                    self.stats.bad_queue_sizes += 1;
                }
                self.queues[sel].size = size;
            }
            Field::QueueMsixVector => {
                if queue_exists {
                    let v = self.checked_vector(v as u16);
                    self.interrupt.set_queue_vector(sel, v);
                }
            }
            Field::QueueEnable => {
                if !queue_exists || v == self.read_field(f) {
                    return;
                }
                if v == 1 {
                    self.enable_queue(sel);
                } else {
                    // Disabling a queue needs VIRTIO_F_RING_RESET, which is not offered.
                    self.stats.read_only_writes += 1;
                }
            }
            Field::QueueDesc | Field::QueueDriver | Field::QueueDevice => {
                if !queue_exists || queue_locked {
                    self.stats.read_only_writes += u64::from(v != self.read_field(f));
                    return;
                }
                let q = &mut self.queues[sel];
                match f {
                    Field::QueueDesc => q.desc = v,
                    Field::QueueDriver => q.driver = v,
                    _ => q.device = v,
                }
            }
        }
    }

    /// A vector number the table has, or NO_VECTOR (which the driver reads back and so
    /// learns the vector was refused, §4.1.5.1.2).
    fn checked_vector(&mut self, v: u16) -> u16 {
        if v == NO_VECTOR || v < self.interrupt.lock_msix().nr_vectors() {
            v
        } else {
            self.stats.bad_vectors += 1;
            NO_VECTOR
        }
    }

    fn enable_queue(&mut self, q: usize) {
        match self.queues[q].validate(&self.mem) {
            Ok(()) => self.queues[q].enabled = true,
            Err(e) => {
                self.stats.bad_queues += 1;
                log::warn!("{}: queue {q} cannot be enabled: {e}", self.name);
                self.set_needs_reset();
            }
        }
    }

    /// DEVICE_NEEDS_RESET, with a config interrupt if the driver is running (§2.1.2).
    pub(super) fn set_needs_reset(&mut self) {
        if self.status & NEEDS_RESET != 0 {
            return;
        }
        self.status |= NEEDS_RESET;
        if self.status & DRIVER_OK != 0 {
            self.config_generation = self.config_generation.wrapping_add(1);
            let _ = self.interrupt.trigger(VirtioInterruptType::Config);
        }
    }

    fn set_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver only adds bits; DEVICE_NEEDS_RESET is the device's.
        if old & !new & !NEEDS_RESET != 0 || new & !old & NEEDS_RESET != 0 {
            self.stats.bad_status += 1;
        }
        let added = new & !old & !NEEDS_RESET;
        let mut status = old | (added & (ACKNOWLEDGE | DRIVER | FAILED));
        if added & FEATURES_OK != 0 {
            let offered = self.device_features;
            let version1 = feature(VIRTIO_F_VERSION_1);
            if self.driver_features & !offered == 0 && self.driver_features & version1 != 0 {
                status |= FEATURES_OK;
                self.device.ack_features(self.driver_features);
            } else {
                self.stats.bad_features += 1;
                log::warn!(
                    "{}: FEATURES_OK refused: driver features {:#x}, offered {:#x}",
                    self.name,
                    self.driver_features,
                    offered
                );
            }
        }
        self.status = status;
        if added & DRIVER_OK != 0 {
            if status & FEATURES_OK == 0 {
                self.stats.driver_ok_without_features += 1;
                self.set_needs_reset();
            } else if status & (NEEDS_RESET | FAILED) == 0 {
                self.activate();
            }
        }
    }

    /// DRIVER_OK: hand the queues to the device, put the ioeventfds in place, then process
    /// what the driver queued before (kicks before DRIVER_OK were only counted).
    fn activate(&mut self) {
        let event_idx = self.driver_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues: Result<Vec<_>, _> = self.queues.iter().map(|q| q.to_queue(event_idx)).collect();
        let result = match queues {
            Ok(queues) => self
                .device
                .activate(self.mem.clone(), queues, self.interrupt.clone())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            self.stats.device_errors += 1;
            log::warn!("{}: activation failed: {e}", self.name);
            self.set_needs_reset();
            return;
        }
        self.status |= DRIVER_OK;
        self.activated = true;
        self.stats.activations += 1;
        self.register_ioevents();
        for q in 0..self.queues.len() {
            if self.queues[q].enabled {
                self.process(q);
            }
        }
    }

    /// Status 0: the device, the queues, the features, the vectors (so the irqfds and GSI
    /// routes), the ISR and the ioeventfds all go back to their initial state. The MSI-X
    /// table and enable bits are PCI state and stay.
    pub(super) fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.unregister_ioevents();
        for e in &self.notify_evts {
            // Drop a kick that raced with the reset.
            let _ = e.read();
        }
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.interrupt.reset();
        self.stats.resets += 1;
    }
}

const _: () = assert!(COMMON_CFG_LEN <= layout::COMMON.len);
