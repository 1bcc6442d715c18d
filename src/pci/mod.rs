//! PCI: one bus (00) behind a host bridge, reached by port (conf1, 0xcf8/0xcfc) and by ECAM.
//!
//! * [`config`]: a type-0 configuration space (header, BARs with the sizing protocol,
//!   capabilities);
//! * [`msix`]: the MSI-X capability, table and PBA, and how a vector reaches KVM (irqfd on a
//!   GSI route, or KVM_SIGNAL_MSI);
//! * [`root`]: the host bridge, the conf1 and ECAM bus devices, BAR placement from the MMIO
//!   windows and BAR moves (bus registration follows the BAR; the device is told so that its
//!   ioeventfds follow too).
//!
//! A function is a [`PciDevice`]: a plain state machine driven by config and BAR accesses.
use std::sync::{Arc, Mutex};

pub mod config;
pub mod msix;
pub mod msix_fast;
pub mod platform;
pub mod root;

pub use config::{BarInfo, BarKind, ConfigWrite, PciConfig, PciHeader};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR index {0} is out of range or cannot hold this BAR")]
    BarIndex(usize),
    #[error(
        "BAR size {0:#x} is not a power of two of at least 16 bytes (at most 2 GiB for 32-bit)"
    )]
    BarSize(u64),
    #[error("BAR register {0} is already used")]
    BarTaken(usize),
    #[error("BAR address {addr:#x} is not aligned to its size {size:#x}")]
    BarAlign { addr: u64, size: u64 },
    #[error("no room for a {0}-byte capability")]
    CapabilitySpace(usize),
    #[error("no free slot on bus 0")]
    NoSlot,
    #[error("no room for a {size:#x}-byte BAR in the {window} window")]
    NoBarSpace { window: &'static str, size: u64 },
    #[error("bad PCI window: {0}")]
    Window(String),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// A named part of a BAR, registered on the MMIO bus as its own range so that maps and exit
/// statistics name it (virtio: common, isr, device, notify; MSI-X: table, PBA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    /// Offset inside the BAR.
    pub offset: u64,
    pub len: u64,
    pub name: &'static str,
}

/// A PCI function.
pub trait PciDevice: Send {
    /// A short name for maps and logs ("virtio-rng").
    fn name(&self) -> &str;
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;

    /// A guest config read (`offset` < 4096). Devices with side-effecting capabilities (the
    /// virtio PCI-config-access window) override this.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config_mut().read(offset, data)
    }

    /// A guest config write; the returned changes make the root remap BARs.
    fn config_write(&mut self, offset: usize, data: &[u8]) -> ConfigWrite {
        self.config_mut().write(offset, data)
    }

    /// The regions of BAR `bar`; by default the whole BAR as one.
    fn bar_regions(&self, bar: usize) -> Vec<BarRegion> {
        self.config()
            .bar(bar)
            .map(|b| {
                vec![BarRegion {
                    offset: 0,
                    len: b.size,
                    name: "bar",
                }]
            })
            .unwrap_or_default()
    }

    /// A guest read at `offset` inside BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` inside BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `bar` now decodes at `addr` on the MMIO bus, or nowhere (`None`): memory decode
    /// turned off, the BAR moved, or its new place was refused. Devices with ioeventfds inside
    /// the BAR move them here.
    fn bar_mapped(&mut self, _bar: usize, _addr: Option<u64>) {}

    /// Extra words for `--print-map` (options, state).
    fn describe(&self) -> String {
        String::new()
    }
}

/// A function shared by the root (config, BAR moves), the MMIO bus (BAR regions) and whoever
/// else drives it (the event loop for virtio queues).
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Locks a function, carrying on past a poisoned lock (the state is plain data).
pub fn lock_device(dev: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}
