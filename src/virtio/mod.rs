//! Virtio devices over the modern virtio-pci transport (virtio 1.2 §4.1).
//!
//! * [`VirtioDevice`]: what a device type implements (features, config space, activation with
//!   its queues and an interrupt handle, reset, per-queue processing). virtio-rng ([`rng`]) is
//!   the first; virtio-net plugs in the same way.
//! * [`VirtioInterrupt`]: how a device tells the driver "used buffers" or "config changed";
//!   the transport implements it with MSI-X.
//! * [`transport`]: the PCI function (capabilities, common config state machine, notify,
//!   ISR, device config, MSI-X) wrapping any `VirtioDevice`.
//!
//! Per device, two choices ([`DeviceOptions`]): how a queue kick reaches the device
//! (`notify=ioeventfd`: KVM signals an eventfd, the event loop runs the device, no exit;
//! `notify=exit`: the MMIO exit runs the device on the vCPU thread) and how interrupts reach
//! KVM (`irq=irqfd`: a GSI route plus irqfd per vector; `irq=msi`: KVM_SIGNAL_MSI each time).
use std::fmt;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::trace::timeline::Timeline;

pub mod queue;
pub mod rng;
pub mod transport;

pub use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
pub use virtio_bindings::virtio_ids::{VIRTIO_ID_NET, VIRTIO_ID_RNG};
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Feature bit `bit` as a mask.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// Which interrupt a device raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// The device configuration changed (or the device needs a reset).
    Config,
    /// Queue `n` has new used buffers.
    Queue(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("queue {0} has no such queue")]
    NoQueue(u16),
    #[error("the interrupt was not delivered: {0}")]
    Delivery(String),
}

/// The device's handle for interrupting the driver. Cheap to call from any thread.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError>;

    /// As `trigger`, for work done on behalf of trace flow `flow` (a kick the device's own
    /// thread took; 0: none): the interrupt ends that flow on the `--trace` timeline.
    fn trigger_in_flow(&self, kind: VirtioInterruptType, _flow: u64) -> Result<(), InterruptError> {
        self.trigger(kind)
    }

    /// The `--trace` timeline, when the VM is traced.
    fn timeline(&self) -> Option<Arc<Timeline>> {
        None
    }

    /// The flow of the kick the transport is serving on the calling thread (notify=exit: the
    /// MMIO exit), 0 if none.
    fn current_flow(&self) -> u64 {
        0
    }

    /// The eventfd whose write raises `kind`'s vector through KVM (irq=irqfd), for a kernel
    /// backend (vhost-net) to signal directly; `None` without one. Borrowed: valid while the
    /// transport lives.
    fn irqfd(&self, _kind: VirtioInterruptType) -> Option<std::os::fd::RawFd> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the device expects {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not usable: {1}")]
    BadQueue(usize, String),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("queue {0} does not exist")]
    NoQueue(usize),
    #[error("the device is not activated")]
    NotActivated,
    #[error("queue {queue}: {err}")]
    Queue {
        queue: usize,
        err: virtio_queue::Error,
    },
    /// The device cannot go on until the driver resets it (DEVICE_NEEDS_RESET).
    #[error("the device needs a reset: {0}")]
    NeedsReset(String),
}

/// A virtio device type behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// A short name ("virtio-rng").
    fn name(&self) -> &'static str;
    /// The maximum size of each queue; their number is the device's queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered features, including `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;
    /// The features the driver accepted (at FEATURES_OK; a subset of `features`).
    fn ack_features(&mut self, _features: u64) {}
    /// Reads the device-specific configuration (any width, any offset: outside it reads 0).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }
    /// Writes the device-specific configuration (outside or read-only: ignored).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// DRIVER_OK: the device gets guest memory, one `Queue` per queue (`ready()` false for
    /// those the driver did not enable) and its interrupt handle, and may start work.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Device reset: drop the queues, memory and interrupt handle; back to the initial state.
    fn reset(&mut self);
    /// The driver kicked queue `queue` (by ioeventfd or by exit): process what is available.
    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError>;
    /// PCI class, subclass and programming interface for this device type.
    fn pci_class(&self) -> (u8, u8, u8) {
        match self.device_type() {
            VIRTIO_ID_NET => (0x02, 0x00, 0x00),
            _ => (0xff, 0x00, 0x00),
        }
    }
    /// Device-specific counters for maps and statistics ("requests=3 bytes=96").
    fn describe(&self) -> String {
        String::new()
    }
    /// The same counters, named, for the API ("tx0.frames", 12).
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// notify=ioeventfd: a device whose own threads wait on its queues' kicks takes copies of
    /// the queues' eventfds here (one per queue, in order) and returns true; the event loop
    /// then does not watch them. The default (false) leaves them to the event loop, which
    /// calls `process_queue`.
    fn take_notify_events(&mut self, _events: &[EventFd]) -> bool {
        false
    }
    /// Who waits on queue `queue`'s ioeventfd when it is not the event loop or the device's
    /// own threads (vhost-net), for reports; `None`: the usual.
    fn kick_waiter(&self, _queue: usize) -> Option<&'static str> {
        None
    }
}

/// How a queue kick reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyMode {
    /// KVM_IOEVENTFD on each queue's notify address: no exit; the event loop runs the device.
    #[default]
    Ioeventfd,
    /// The notify write exits to the VMM, which runs the device on the vCPU thread.
    Exit,
}

/// How an MSI-X vector reaches KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IrqMode {
    /// A GSI route plus an irqfd per unmasked vector; firing is an eventfd write.
    #[default]
    Irqfd,
    /// KVM_SIGNAL_MSI for every interrupt.
    Msi,
}

/// Per-device transport options (`--rng notify=exit,irq=msi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceOptions {
    pub notify: NotifyMode,
    pub irq: IrqMode,
}

impl fmt::Display for DeviceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "notify={},irq={}",
            match self.notify {
                NotifyMode::Ioeventfd => "ioeventfd",
                NotifyMode::Exit => "exit",
            },
            match self.irq {
                IrqMode::Irqfd => "irqfd",
                IrqMode::Msi => "msi",
            }
        )
    }
}

impl DeviceOptions {
    /// Parses `notify=ioeventfd|exit` and `irq=irqfd|msi`, comma-separated, each at most
    /// once; the empty string is the defaults.
    pub fn parse(s: &str) -> Result<DeviceOptions, String> {
        let mut o = DeviceOptions::default();
        let (mut seen_notify, mut seen_irq) = (false, false);
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("'{item}' is not key=value (notify=..., irq=...)"))?;
            match key {
                "notify" => {
                    if std::mem::replace(&mut seen_notify, true) {
                        return Err("notify= given twice".into());
                    }
                    o.notify = match value {
                        "ioeventfd" => NotifyMode::Ioeventfd,
                        "exit" => NotifyMode::Exit,
                        _ => return Err(format!("notify={value}: use ioeventfd or exit")),
                    };
                }
                "irq" => {
                    if std::mem::replace(&mut seen_irq, true) {
                        return Err("irq= given twice".into());
                    }
                    o.irq = match value {
                        "irqfd" => IrqMode::Irqfd,
                        "msi" => IrqMode::Msi,
                        _ => return Err(format!("irq={value}: use irqfd or msi")),
                    };
                }
                _ => return Err(format!("unknown option '{key}' (notify=..., irq=...)")),
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        assert_eq!(DeviceOptions::parse(""), Ok(DeviceOptions::default()));
        assert_eq!(
            DeviceOptions::parse("notify=exit,irq=msi"),
            Ok(DeviceOptions {
                notify: NotifyMode::Exit,
                irq: IrqMode::Msi
            })
        );
        assert_eq!(
            DeviceOptions::parse("irq=msi").unwrap().notify,
            NotifyMode::Ioeventfd
        );
        assert_eq!(
            DeviceOptions::parse("notify=ioeventfd,irq=irqfd")
                .unwrap()
                .to_string(),
            "notify=ioeventfd,irq=irqfd"
        );
        for bad in [
            "notify",
            "notify=",
            "notify=fast",
            "irq=intx",
            "mode=exit",
            "notify=exit,notify=exit",
            "irq=msi,irq=irqfd",
        ] {
            assert!(DeviceOptions::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
