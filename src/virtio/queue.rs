//! Queue helpers: the transport's copy of a queue's registers, the checks made when the driver
//! enables a queue, and turning the registers into a `virtio_queue::Queue` at DRIVER_OK.
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Descriptor table entry, available ring and used ring element sizes (split virtqueue).
const DESC_SIZE: u64 = 16;
const AVAIL_ELEM: u64 = 2;
const USED_ELEM: u64 = 8;
/// flags + idx (+ used_event/avail_event with EVENT_IDX).
const RING_HEADER: u64 = 4;
const RING_EVENT: u64 = 2;

/// Why a queue cannot be enabled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueConfigError {
    #[error("size {size} is zero, not a power of two, or above the maximum {max}")]
    Size { size: u16, max: u16 },
    #[error("{what} at {addr:#x} is not {align}-byte aligned")]
    Align {
        what: &'static str,
        addr: u64,
        align: u64,
    },
    #[error("{what} at {addr:#x} ({len} bytes) is not inside guest RAM")]
    Range {
        what: &'static str,
        addr: u64,
        len: u64,
    },
}

/// A queue's registers as the driver programs them through common config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRegs {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueRegs {
    /// A queue at reset: size at its maximum, addresses 0, disabled.
    pub fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Checks size, alignment (virtio 1.2 §2.7: 16, 2 and 4 bytes) and that the three areas
    /// lie inside guest RAM.
    pub fn validate(&self, mem: &GuestMemoryMmap) -> Result<(), QueueConfigError> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(QueueConfigError::Size {
                size,
                max: self.max_size,
            });
        }
        let n = u64::from(size);
        let areas = [
            ("descriptor table", self.desc, DESC_SIZE, DESC_SIZE * n),
            (
                "driver (available) ring",
                self.driver,
                2,
                RING_HEADER + AVAIL_ELEM * n + RING_EVENT,
            ),
            (
                "device (used) ring",
                self.device,
                4,
                RING_HEADER + USED_ELEM * n + RING_EVENT,
            ),
        ];
        for (what, addr, align, len) in areas {
            if !addr.is_multiple_of(align) {
                return Err(QueueConfigError::Align { what, addr, align });
            }
            let inside = addr.checked_add(len).is_some()
                && GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize);
            if !inside {
                return Err(QueueConfigError::Range { what, addr, len });
            }
        }
        Ok(())
    }

    /// The `Queue` the device works on (ready only if the driver enabled it).
    pub fn to_queue(&self, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
        let mut q = Queue::new(self.max_size)?;
        if self.enabled {
            q.try_set_size(self.size)?;
            q.try_set_desc_table_address(GuestAddress(self.desc))?;
            q.try_set_avail_ring_address(GuestAddress(self.driver))?;
            q.try_set_used_ring_address(GuestAddress(self.device))?;
            q.set_event_idx(event_idx);
            q.set_ready(true);
        }
        Ok(q)
    }
}

/// Whether a device's drain loop (pop every chain, re-enable notifications, look again) goes
/// round once more. "More" after a pass that popped nothing is normal once: the driver
/// published a chain between that pass and the re-enable, and may not kick for it, so it must
/// be served now (virtio 1.2 §2.7.10). A second empty pass in a row means the answer will not
/// change (a ring laid over its own used ring moves the available index at every toggle): the
/// loop ends, and the driver's next kick resumes it.
#[derive(Debug, Default)]
pub struct DrainPasses {
    empty: u8,
}

impl DrainPasses {
    /// After a pass that popped something (`found`) or not, and re-enabling notifications,
    /// which said whether there is `more`.
    pub fn again(&mut self, more: bool, found: bool) -> bool {
        self.empty = if found { 0 } else { self.empty + 1 };
        more && self.empty < 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn good() -> QueueRegs {
        QueueRegs {
            max_size: 256,
            size: 16,
            enabled: true,
            desc: 0x1000,
            driver: 0x2000,
            device: 0x3000,
        }
    }

    #[test]
    fn good_queue_validates_and_builds() {
        let r = good();
        assert_eq!(r.validate(&mem()), Ok(()));
        let q = r.to_queue(true).unwrap();
        assert!(q.ready());
        assert_eq!(q.size(), 16);
        assert!(q.is_valid(&mem()));
        // Disabled queues build as not ready.
        let q = QueueRegs::new(256).to_queue(false).unwrap();
        assert!(!q.ready());
    }

    #[test]
    fn bad_sizes_are_refused() {
        for size in [0, 3, 12, 512, u16::MAX] {
            let r = QueueRegs { size, ..good() };
            assert!(
                matches!(r.validate(&mem()), Err(QueueConfigError::Size { .. })),
                "size {size}"
            );
        }
    }

    #[test]
    fn misaligned_rings_are_refused() {
        for r in [
            QueueRegs {
                desc: 0x1008,
                ..good()
            },
            QueueRegs {
                driver: 0x2001,
                ..good()
            },
            QueueRegs {
                device: 0x3002,
                ..good()
            },
        ] {
            assert!(matches!(
                r.validate(&mem()),
                Err(QueueConfigError::Align { .. })
            ));
        }
    }

    #[test]
    fn rings_outside_ram_are_refused() {
        for r in [
            QueueRegs {
                desc: 0x10_0000,
                ..good()
            },
            QueueRegs {
                driver: 0xf_fff0,
                ..good()
            },
            QueueRegs {
                device: u64::MAX - 3,
                ..good()
            },
            QueueRegs {
                desc: 0xc000_0000,
                ..good()
            },
        ] {
            assert!(
                matches!(r.validate(&mem()), Err(QueueConfigError::Range { .. })),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_drain_goes_round_after_one_empty_pass_not_two() {
        let mut d = DrainPasses::default();
        assert!(d.again(true, true));
        // Published between the pass and the re-enable: look again.
        assert!(d.again(true, false));
        assert!(d.again(true, true));
        assert!(d.again(true, false));
        // Two empty passes in a row: the same answer forever.
        assert!(!d.again(true, false));
        let mut d = DrainPasses::default();
        assert!(!d.again(false, true));
        assert!(!d.again(false, false));
    }
}
