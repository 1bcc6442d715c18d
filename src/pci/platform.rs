//! A VM's PCI side, put together: the root with its ECAM window on the MMIO bus (and whatever
//! else the architecture attaches: conf1 ports on x86_64), the GSI router and ioeventfds on the
//! VM fd, the virtio functions, and the event loop that runs their queues for notify=ioeventfd.
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use super::root::{Ecam, PciRoot};
use super::PciError;
use crate::bus::Bus;
use crate::event_loop::{EventLoop, EventLoopError, EventLoopHandle, SourceCounter, StopSignal};
use crate::kvm::ioevent::{IoEventRegistry, KvmIoEvents};
use crate::kvm::irq::{requester_id, FunctionIrqRouting, IrqRouting, KvmIrqRouter};
use crate::kvm::vm::Vm;
use crate::virtio::transport::{TransportError, VirtioPciDevice};
use crate::virtio::{DeviceOptions, VirtioDevice};

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio function on the bus.
pub struct VirtioSlot {
    pub slot: u8,
    pub name: &'static str,
    pub dev: Arc<Mutex<VirtioPciDevice>>,
}

/// The PCI platform of one VM.
pub struct PciPlatform {
    root: Arc<PciRoot>,
    router: Arc<KvmIrqRouter>,
    ioevents: Arc<dyn IoEventRegistry>,
    mem: GuestMemoryMmap,
    virtio: Vec<VirtioSlot>,
    /// Filled while devices are added; taken by `start`.
    event_loop: Option<EventLoop>,
    /// The event loop's sources and their dispatch counters (kept when it starts).
    loop_counters: Vec<SourceCounter>,
}

impl PciPlatform {
    /// The root with its host bridge: ECAM on `mmio`, and what the architecture attaches to
    /// `pio` (`arch::attach_pci`: conf1 at 0xcf8 on x86_64). On aarch64 call it after
    /// `Vm::create_vcpus`: the router reads KVM_CAP_MSI_DEVID, which needs the ITS.
    pub fn new(vm: &Vm, pio: &Bus, mmio: &Arc<Bus>) -> Result<Self, PlatformError> {
        let root = PciRoot::new(mmio.clone(), vm.mem_size())?;
        crate::arch::attach_pci(pio, &root)?;
        let layout = root.layout();
        mmio.insert(
            layout.ecam_start,
            layout.ecam_size,
            "pci-ecam",
            "bus 0",
            Arc::new(Mutex::new(Ecam::new(root.clone()))),
        )?;
        Ok(PciPlatform {
            root,
            router: Arc::new(KvmIrqRouter::new(vm.shared_fd())),
            ioevents: Arc::new(KvmIoEvents::new(vm.shared_fd())),
            mem: vm.memory().clone(),
            virtio: Vec::new(),
            event_loop: Some(EventLoop::new()?),
            loop_counters: Vec::new(),
        })
    }

    pub fn root(&self) -> &Arc<PciRoot> {
        &self.root
    }

    pub fn router(&self) -> &Arc<KvmIrqRouter> {
        &self.router
    }

    pub fn virtio(&self) -> &[VirtioSlot] {
        &self.virtio
    }

    /// Plugs a virtio device in behind the virtio-pci transport; with notify=ioeventfd its
    /// queues' eventfds go on the event loop.
    pub fn add_virtio(
        &mut self,
        device: Box<dyn VirtioDevice>,
        options: DeviceOptions,
    ) -> Result<u8, PlatformError> {
        let name = device.name();
        let slot = self.root.free_slot().ok_or(PciError::NoSlot)?;
        // Every message of this function carries its requester id (the ITS's device id).
        let router: Arc<dyn IrqRouting> = Arc::new(FunctionIrqRouting::new(
            self.router.clone(),
            requester_id(0, slot, 0),
        ));
        let transport = VirtioPciDevice::new(
            device,
            options,
            self.mem.clone(),
            router,
            self.ioevents.clone(),
        )?;
        let events = transport.notify_events().map_err(PlatformError::EventFd)?;
        let dev = Arc::new(Mutex::new(transport));
        self.root.add_device_in(slot, dev.clone())?;
        if let Some(lp) = self.event_loop.as_mut() {
            for (q, evt) in events {
                let d = dev.clone();
                lp.add(
                    format!("{name}@00:{slot:02x}.0 queue {q}"),
                    evt,
                    // The bottom half of a kick: runs on the event loop thread.
                    Box::new(move |_kicks| {
                        d.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .queue_notified(q)
                    }),
                )?;
            }
        }
        self.virtio.push(VirtioSlot { slot, name, dev });
        Ok(slot)
    }

    /// Starts the event loop (once; `None` when nothing needs it). It stops when `stop` becomes
    /// readable.
    pub fn start(
        &mut self,
        stop: Arc<dyn StopSignal>,
    ) -> Result<Option<EventLoopHandle>, PlatformError> {
        self.start_with(stop, Box::new(|| {}))
    }

    /// As `start`, running `init` first on the loop's thread (its seccomp filter).
    pub fn start_with(
        &mut self,
        stop: Arc<dyn StopSignal>,
        init: Box<dyn FnOnce() + Send>,
    ) -> Result<Option<EventLoopHandle>, PlatformError> {
        match self.event_loop.take() {
            Some(lp) if !lp.is_empty() => {
                self.loop_counters = lp.counters();
                Ok(Some(lp.start_with(stop, init)?))
            }
            _ => Ok(None),
        }
    }

    /// The event loop's sources with their live dispatch counters.
    pub fn loop_counters(&self) -> Vec<SourceCounter> {
        match &self.event_loop {
            Some(lp) => lp.counters(),
            None => self.loop_counters.clone(),
        }
    }

    /// The PCI part of `--print-map`.
    pub fn format_map(&self) -> String {
        self.root.format_map()
    }
}
