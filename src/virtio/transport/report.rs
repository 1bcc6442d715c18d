//! What the observability API reports of one virtio-pci function: its notify and interrupt
//! paths, each queue (size, vector, where its ioeventfd sits, kicks by path), each MSI-X
//! vector (message, GSI route, deliveries), the transport's counters and the device's own.
use serde::Serialize;

use super::{TransportStats, VirtioPciDevice, NO_VECTOR};
use crate::pci::msix::{MsixStats, VectorReport};

#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub queue: u16,
    pub size: u16,
    pub enabled: bool,
    /// The MSI-X vector its interrupts use, if any.
    pub vector: Option<u16>,
    /// Guest-physical address of its ioeventfd (notify=ioeventfd, after DRIVER_OK).
    pub ioeventfd: Option<u64>,
    /// Kicks that reached the transport through the event loop (the ioeventfd) and as MMIO
    /// exits. A device that waits on its ioeventfds itself (virtio-net's workers) counts
    /// those wakeups in its own counters.
    pub kicks_ioeventfd: u64,
    pub kicks_exit: u64,
    /// Who else waits on its ioeventfd ("vhost-net"), if not the event loop or the device's
    /// threads.
    pub waiter: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub name: &'static str,
    /// "notify=ioeventfd,irq=irqfd", ...
    pub options: String,
    pub status: u8,
    /// The device's queues wait on their ioeventfds on its own threads, not the event loop.
    pub own_threads: bool,
    pub queues: Vec<QueueReport>,
    pub config_vector: Option<u16>,
    pub msix_enabled: bool,
    pub vectors: Vec<VectorReport>,
    pub msix: MsixStats,
    pub transport: TransportStats,
    /// The device's own counters ("tx0.frames", ...).
    pub counters: Vec<(String, u64)>,
    /// The device in words (a disk: its image, mode and engine; a NIC: its TAP and MAC).
    pub describe: String,
}

fn vector(v: u16) -> Option<u16> {
    (v != NO_VECTOR).then_some(v)
}

impl VirtioPciDevice {
    /// A snapshot for `/stats` and `/map`.
    pub fn report(&self) -> DeviceReport {
        let (msix_enabled, vectors, msix) = {
            let m = self.interrupt.lock_msix();
            (m.enabled(), m.report(), m.stats())
        };
        DeviceReport {
            name: self.name,
            options: self.options.to_string(),
            status: self.status,
            own_threads: self.device_polls_kicks,
            queues: self
                .queues
                .iter()
                .enumerate()
                .map(|(q, regs)| QueueReport {
                    queue: q as u16,
                    size: regs.size,
                    enabled: regs.enabled,
                    vector: vector(self.interrupt.queue_vector(q)),
                    ioeventfd: self.ioevent_address(q),
                    kicks_ioeventfd: self.queue_kicks[q][0],
                    kicks_exit: self.queue_kicks[q][1],
                    waiter: self.device.kick_waiter(q),
                })
                .collect(),
            config_vector: vector(self.interrupt.config_vector()),
            msix_enabled,
            vectors,
            msix,
            transport: self.stats,
            counters: self.device.counters(),
            describe: self.device.describe(),
        }
    }
}
