//! The modern virtio-pci transport (virtio 1.2 §4.1), generic over [`VirtioDevice`].
//!
//! A [`VirtioPciDevice`] is a [`PciDevice`]: a type-0 function with the virtio vendor
//! capabilities (common, notify, ISR, device config, PCI config access) and MSI-X, all in
//! BAR0 (see [`layout`]). No legacy (0.9.5) interface: VERSION_1 is required.
//!
//! The common-config state machine is in [`common`]. The two notify paths:
//! * `notify=ioeventfd`: at DRIVER_OK each enabled queue's notify address gets an ioeventfd
//!   (moved when the BAR moves, removed at reset). A kick never leaves KVM; the event loop
//!   reads the eventfd and calls [`VirtioPciDevice::queue_notified`].
//! * `notify=exit`: the notify page is only a bus range; a kick is an MMIO exit that runs the
//!   device on the vCPU thread in [`VirtioPciDevice::bar_write`].
//!
//! Both end in the same call, `VirtioDevice::process_queue`.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::kvm::ioevent::IoEventRegistry;
use crate::kvm::irq::IrqRouting;
use crate::pci::config::overlaps;
use crate::pci::msix::{IrqfdDelivery, MsiDelivery, Msix, SignalMsiDelivery, MSIX_ENTRY_SIZE};
use crate::pci::{BarInfo, BarKind, BarRegion, ConfigWrite, PciConfig, PciDevice, PciHeader};
use crate::trace::timeline::{Flow, Timeline};
use crate::virtio::queue::QueueRegs;
use crate::virtio::{DeviceError, DeviceOptions, IrqMode, NotifyMode, VirtioDevice};

mod common;
pub mod interrupt;
pub mod layout;
mod report;

pub use interrupt::{VirtioPciInterrupt, NO_VECTOR};
pub use report::{DeviceReport, QueueReport};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{name}: {count} queues (1 to {max} supported)")]
    QueueCount {
        name: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{name}: queue {queue} maximum size {size} is not a power of two up to 32768")]
    QueueSize {
        name: &'static str,
        queue: usize,
        size: u16,
    },
    #[error("{name}: the device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1 { name: &'static str },
    #[error(transparent)]
    Pci(#[from] crate::pci::PciError),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Irq(crate::kvm::irq::IrqError),
}

/// Counters of the transport: guest mistakes and the notify paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TransportStats {
    /// Kicks that arrived by ioeventfd (through the event loop).
    pub ioeventfd_kicks: u64,
    /// Kicks that arrived as MMIO exits (notify=exit, or an ioeventfd not in place).
    pub exit_kicks: u64,
    /// Kicks before DRIVER_OK or for a queue that is not enabled (the queue is processed at
    /// activation anyway).
    pub early_kicks: u64,
    /// Notify writes to a queue that does not exist or at a misaligned offset.
    pub bad_notifies: u64,
    /// Writes to read-only common-config fields, and queue/feature writes after they are
    /// locked in (queue enabled, FEATURES_OK set).
    pub read_only_writes: u64,
    /// queue_size writes that are zero, not a power of two or above the maximum.
    pub bad_queue_sizes: u64,
    /// queue_enable with a bad size or rings misaligned or outside RAM (→ DEVICE_NEEDS_RESET).
    pub bad_queues: u64,
    /// FEATURES_OK refused (features not offered, or no VERSION_1).
    pub bad_features: u64,
    /// DRIVER_OK without FEATURES_OK (→ DEVICE_NEEDS_RESET).
    pub driver_ok_without_features: u64,
    /// Status writes clearing bits, or setting DEVICE_NEEDS_RESET.
    pub bad_status: u64,
    /// MSI-X vector numbers past the table (read back as NO_VECTOR).
    pub bad_vectors: u64,
    /// PCI-config-access window uses with a bad bar/offset/length.
    pub bad_pci_cfg: u64,
    pub resets: u64,
    pub activations: u64,
    /// Device errors while processing a queue, or while activating.
    pub device_errors: u64,
    /// ioeventfd (un)registrations KVM refused (kicks then come as exits).
    pub ioevent_errors: u64,
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    name: &'static str,
    options: DeviceOptions,
    mem: GuestMemoryMmap,
    device_features: u64,

    // Common configuration (see `common`).
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    activated: bool,

    interrupt: Arc<VirtioPciInterrupt>,
    msix_cap: usize,
    pci_cfg_cap: usize,

    ioevents: Arc<dyn IoEventRegistry>,
    /// One eventfd per queue (notify=ioeventfd only).
    notify_evts: Vec<EventFd>,
    /// Where each queue's ioeventfd is registered now.
    ioevent_at: Vec<Option<u64>>,
    /// Where BAR0 decodes now.
    bar_addr: Option<u64>,
    /// The device waits on `notify_evts` itself (`VirtioDevice::take_notify_events`).
    device_polls_kicks: bool,

    stats: TransportStats,
    /// Per queue: kicks that reached the transport by ioeventfd (event loop) and by exit.
    queue_kicks: Vec<[u64; 2]>,
}

impl VirtioPciDevice {
    /// Wraps `device`. `router` delivers MSI-X vectors (irqfd or KVM_SIGNAL_MSI per
    /// `options.irq`); `ioevents` registers notify ioeventfds (notify=ioeventfd).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        options: DeviceOptions,
        mem: GuestMemoryMmap,
        router: Arc<dyn IrqRouting>,
        ioevents: Arc<dyn IoEventRegistry>,
    ) -> Result<Self, TransportError> {
        let name = device.name();
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.is_empty() || sizes.len() > layout::MAX_QUEUES {
            return Err(TransportError::QueueCount {
                name,
                count: sizes.len(),
                max: layout::MAX_QUEUES,
            });
        }
        if let Some((queue, &size)) = sizes
            .iter()
            .enumerate()
            .find(|(_, s)| !s.is_power_of_two() || **s > 32768)
        {
            return Err(TransportError::QueueSize { name, queue, size });
        }
        let device_features = device.features();
        if device_features & crate::virtio::feature(crate::virtio::VIRTIO_F_VERSION_1) == 0 {
            return Err(TransportError::NoVersion1 { name });
        }
        // A vector per queue plus one for config changes.
        let nr_vectors = (sizes.len() + 1).min(usize::from(layout::MAX_VECTORS)) as u16;
        let delivery: Box<dyn MsiDelivery> = match options.irq {
            IrqMode::Irqfd => {
                Box::new(IrqfdDelivery::new(router, nr_vectors).map_err(TransportError::Irq)?)
            }
            IrqMode::Msi => Box::new(SignalMsiDelivery::new(router)),
        };
        let msix = Msix::new(nr_vectors, delivery);

        let (class, subclass, prog_if) = device.pci_class();
        let mut config = PciConfig::new(&PciHeader {
            vendor_id: layout::VENDOR_ID,
            device_id: layout::DEVICE_ID_BASE + device.device_type() as u16,
            revision_id: layout::REVISION_ID,
            class,
            subclass,
            prog_if,
            subsystem_vendor_id: layout::SUBSYSTEM_VENDOR_ID,
            subsystem_id: layout::SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        config.add_bar(
            layout::BAR,
            BarInfo {
                kind: BarKind::Mem32,
                size: layout::BAR_SIZE,
                prefetchable: false,
            },
        )?;
        let bar = layout::BAR as u8;
        let (cap, mask) = msix.capability(
            (bar, layout::MSIX_TABLE.offset as u32),
            (bar, layout::MSIX_PBA.offset as u32),
        );
        let msix_cap = config.add_capability(&cap, &mask)?;
        use layout::{vendor_cap, CAP_COMMON_CFG, CAP_DEVICE_CFG, CAP_ISR_CFG, CAP_NOTIFY_CFG};
        config.add_capability(&vendor_cap(CAP_COMMON_CFG, layout::COMMON, &[]), &[])?;
        config.add_capability(&vendor_cap(CAP_ISR_CFG, layout::ISR, &[]), &[])?;
        config.add_capability(&vendor_cap(CAP_DEVICE_CFG, layout::DEVICE, &[]), &[])?;
        config.add_capability(
            &vendor_cap(
                CAP_NOTIFY_CFG,
                layout::NOTIFY,
                &layout::NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        let (cap, mask) = layout::pci_cfg_cap();
        let pci_cfg_cap = config.add_capability(&cap, &mask)?;

        let notify_evts = match options.notify {
            NotifyMode::Ioeventfd => (0..sizes.len())
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(TransportError::EventFd)?,
            NotifyMode::Exit => Vec::new(),
        };
        // A device with threads of its own may wait on the kicks itself.
        let mut device = device;
        let device_polls_kicks = !notify_evts.is_empty() && device.take_notify_events(&notify_evts);
        let interrupt = Arc::new(VirtioPciInterrupt::new(
            Arc::new(Mutex::new(msix)),
            sizes.len(),
        ));
        Ok(VirtioPciDevice {
            config,
            name,
            options,
            mem,
            device_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: sizes.iter().map(|&s| QueueRegs::new(s)).collect(),
            activated: false,
            interrupt,
            msix_cap,
            pci_cfg_cap,
            ioevents,
            ioevent_at: vec![None; sizes.len()],
            notify_evts,
            bar_addr: None,
            stats: TransportStats::default(),
            queue_kicks: vec![[0; 2]; sizes.len()],
            device_polls_kicks,
            device,
        })
    }

    pub fn options(&self) -> DeviceOptions {
        self.options
    }

    pub fn stats(&self) -> TransportStats {
        self.stats
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn interrupt(&self) -> &Arc<VirtioPciInterrupt> {
        &self.interrupt
    }

    /// The queues' notify eventfds for the event loop (notify=ioeventfd; empty otherwise, and
    /// when the device waits on them itself): (queue, a clone of its eventfd).
    pub fn notify_events(&self) -> Result<Vec<(u16, EventFd)>, std::io::Error> {
        if self.device_polls_kicks {
            return Ok(Vec::new());
        }
        self.notify_evts
            .iter()
            .enumerate()
            .map(|(q, e)| Ok((q as u16, e.try_clone()?)))
            .collect()
    }

    /// Where queue `q`'s ioeventfd is registered now.
    pub fn ioevent_address(&self, q: usize) -> Option<u64> {
        self.ioevent_at.get(q).copied().flatten()
    }

    /// The event loop's entry: queue `q`'s ioeventfd fired (the eventfd is already read).
    pub fn queue_notified(&mut self, q: u16) {
        self.stats.ioeventfd_kicks += 1;
        if let Some(k) = self.queue_kicks.get_mut(usize::from(q)) {
            k[0] += 1;
        }
        self.kick(usize::from(q), "ioeventfd wakeup");
    }

    /// Traces this device's kicks, queue work and interrupts on `timeline`.
    pub fn set_timeline(&mut self, timeline: Arc<Timeline>) {
        self.interrupt.set_timeline(timeline);
    }

    /// Both notify paths end here. With a timeline, the kick starts a flow that the queue work
    /// and the completion interrupt continue.
    fn kick(&mut self, q: usize, how: &str) {
        let Some(tl) = self.interrupt.timeline().cloned() else {
            return self.kick_untraced(q);
        };
        let t0 = Instant::now();
        let flow = tl.new_flow();
        tl.flow(flow, how, Flow::Start, t0);
        self.interrupt.set_flow(flow);
        self.kick_untraced(q);
        self.interrupt.set_flow(0);
        tl.span(
            &format!("{} queue {q}", self.name),
            "queue",
            t0,
            Instant::now(),
            serde_json::json!({ "kick": how, "flow": flow }),
        );
    }

    fn kick_untraced(&mut self, q: usize) {
        if q >= self.queues.len() {
            self.stats.bad_notifies += 1;
            return;
        }
        if !self.activated || !self.queues[q].enabled {
            self.stats.early_kicks += 1;
            return;
        }
        self.process(q);
    }

    fn process(&mut self, q: usize) {
        match self.device.process_queue(q) {
            Ok(()) => {}
            Err(DeviceError::NeedsReset(why)) => {
                log::warn!("{}: queue {q}: {why}", self.name);
                self.stats.device_errors += 1;
                self.set_needs_reset();
            }
            Err(e) => {
                self.stats.device_errors += 1;
                if self.stats.device_errors == 1 {
                    log::warn!("{}: queue {q}: {e}", self.name);
                }
            }
        }
    }

    /// A write in the notify page that reached the VMM.
    fn notify_write(&mut self, offset: u64) {
        let q = offset / u64::from(layout::NOTIFY_OFF_MULTIPLIER);
        if !offset.is_multiple_of(u64::from(layout::NOTIFY_OFF_MULTIPLIER))
            || q >= self.queues.len() as u64
        {
            self.stats.bad_notifies += 1;
            return;
        }
        let q = q as usize;
        self.stats.exit_kicks += 1;
        self.queue_kicks[q][1] += 1;
        match self.options.notify {
            // The device runs here, on the vCPU thread.
            NotifyMode::Exit => self.kick(q, "mmio exit"),
            // The ioeventfd is not in place (before DRIVER_OK, or KVM refused it): hand the
            // kick to the event loop as the ioeventfd would have.
            NotifyMode::Ioeventfd => {
                if self.activated && self.queues[q].enabled {
                    let _ = self.notify_evts[q].write(1);
                } else {
                    self.stats.early_kicks += 1;
                }
            }
        }
    }

    /// Registers each enabled queue's ioeventfd at its notify address (notify=ioeventfd,
    /// activated, BAR decoded).
    fn register_ioevents(&mut self) {
        if self.options.notify != NotifyMode::Ioeventfd || !self.activated {
            return;
        }
        let Some(base) = self.bar_addr else {
            return;
        };
        for q in 0..self.queues.len() {
            if !self.queues[q].enabled {
                continue;
            }
            let addr =
                base + layout::NOTIFY.offset + q as u64 * u64::from(layout::NOTIFY_OFF_MULTIPLIER);
            if self.ioevent_at[q] == Some(addr) {
                continue;
            }
            match self.ioevents.register(&self.notify_evts[q], addr) {
                Ok(()) => self.ioevent_at[q] = Some(addr),
                Err(e) => {
                    self.stats.ioevent_errors += 1;
                    log::warn!("{}: queue {q}: {e}; kicks will exit", self.name);
                }
            }
        }
    }

    fn unregister_ioevents(&mut self) {
        for q in 0..self.ioevent_at.len() {
            if let Some(addr) = self.ioevent_at[q].take() {
                if let Err(e) = self.ioevents.unregister(&self.notify_evts[q], addr) {
                    self.stats.ioevent_errors += 1;
                    log::warn!("{}: queue {q}: {e}", self.name);
                }
            }
        }
    }

    /// The PCI-config-access window's target: (offset in BAR0, length), if valid.
    fn pci_cfg_target(&mut self) -> Option<(u64, usize)> {
        let c = self.pci_cfg_cap;
        let bar = self.config.u8_at(c + layout::CAP_BAR);
        let off = u64::from(self.config.u32_at(c + layout::CAP_OFFSET));
        let len = self.config.u32_at(c + layout::CAP_LENGTH) as usize;
        let ok = usize::from(bar) == layout::BAR
            && matches!(len, 1 | 2 | 4)
            && off.is_multiple_of(len as u64)
            && off + len as u64 <= layout::BAR_SIZE;
        if !ok {
            self.stats.bad_pci_cfg += 1;
        }
        ok.then_some((off, len))
    }
}

impl PciDevice for VirtioPciDevice {
    fn name(&self) -> &str {
        self.name
    }

    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + layout::PCI_CFG_DATA;
        if overlaps(offset, data.len(), window, 4) {
            // VIRTIO_PCI_CAP_PCI_CFG: reading pci_cfg_data reads the BAR.
            if let Some((off, len)) = self.pci_cfg_target() {
                let mut buf = [0u8; 4];
                self.bar_read(layout::BAR, off, &mut buf[..len]);
                self.config.write_raw(window, &buf);
            }
        }
        self.config.read(offset, data)
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) -> ConfigWrite {
        let w = self.config.write(offset, data);
        if overlaps(offset, data.len(), self.msix_cap + 2, 2) {
            let ctrl = self.config.u16_at(self.msix_cap + 2);
            self.interrupt.lock_msix().set_control(ctrl);
        }
        let window = self.pci_cfg_cap + layout::PCI_CFG_DATA;
        if overlaps(offset, data.len(), window, 4) {
            if let Some((off, len)) = self.pci_cfg_target() {
                let mut buf = [0u8; 4];
                self.config.peek(window, &mut buf);
                self.bar_write(layout::BAR, off, &buf[..len]);
            }
        }
        w
    }

    fn bar_regions(&self, bar: usize) -> Vec<BarRegion> {
        if bar == layout::BAR {
            layout::REGIONS.to_vec()
        } else {
            Vec::new()
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let Some((region, off)) = layout::region_at(offset).filter(|_| bar == layout::BAR) else {
            data.fill(0xff);
            return;
        };
        match region.name {
            "common" => self.common_read(off, data),
            "isr" => {
                data.fill(0);
                if off == 0 && !data.is_empty() {
                    data[0] = self.interrupt.take_isr();
                }
            }
            "device" => self.device.read_config(off, data),
            "msix-table" => self.interrupt.lock_msix().read_table(off, data),
            "msix-pba" => self.interrupt.lock_msix().read_pba(off, data),
            // Notify and anything else read as 0.
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let Some((region, off)) = layout::region_at(offset).filter(|_| bar == layout::BAR) else {
            return;
        };
        match region.name {
            "common" => self.common_write(off, data),
            "device" => self.device.write_config(off, data),
            "notify" => self.notify_write(off),
            "msix-table" => self.interrupt.lock_msix().write_table(off, data),
            "msix-pba" => self.interrupt.lock_msix().write_pba(off, data),
            // ISR is read-only.
            _ => self.stats.read_only_writes += 1,
        }
    }

    fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
        if bar != layout::BAR {
            return;
        }
        // The notify addresses moved with the BAR: so do the ioeventfds.
        self.unregister_ioevents();
        self.bar_addr = addr;
        self.register_ioevents();
    }

    fn describe(&self) -> String {
        let extra = self.device.describe();
        format!(
            "{} status={:#04x}{}{}",
            self.options,
            self.status,
            if extra.is_empty() { "" } else { " " },
            extra
        )
    }
}

/// MSI-X table entry size, for tests and drivers.
pub const MSIX_TABLE_ENTRY: u64 = MSIX_ENTRY_SIZE;

#[cfg(test)]
mod tests;
