//! The transport's side of [`VirtioInterrupt`]: ISR bits and MSI-X vectors.
//!
//! Shared (`Arc`) between the transport, which sets the vectors the driver programs, and the
//! device, which fires from whatever thread it runs on (the event loop, or a vCPU for
//! notify=exit). Firing sets the ISR bit and fires the vector the driver chose for that queue
//! (or for config) through [`Msix`]: an irqfd write or a KVM_SIGNAL_MSI; masked vectors pend.
//! An open vector fires without the MSI-X lock ([`FastPath`]): no mutex on the interrupt path,
//! which the vCPU's MSI-X table writes share.
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::pci::msix::{Fired, Msix};
use crate::pci::msix_fast::FastPath;
use crate::trace::timeline::{Flow, Timeline};
use crate::virtio::{InterruptError, VirtioInterrupt, VirtioInterruptType};

/// "No vector" in config_msix_vector / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// Counters of interrupts raised by the device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InterruptStats {
    pub delivered: u64,
    pub pending: u64,
    /// Raised with no vector set, MSI-X disabled, or delivery failed.
    pub lost: u64,
}

pub struct VirtioPciInterrupt {
    msix: Arc<Mutex<Msix>>,
    fast: Arc<FastPath>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    pending: AtomicU64,
    lost: AtomicU64,
    /// Tracing: the timeline, and the flow (kick) now being served (0: none).
    timeline: OnceLock<Arc<Timeline>>,
    flow: AtomicU64,
}

impl VirtioPciInterrupt {
    pub fn new(msix: Arc<Mutex<Msix>>, nr_queues: usize) -> Self {
        let fast = msix.lock().unwrap_or_else(|e| e.into_inner()).fast();
        VirtioPciInterrupt {
            msix,
            fast,
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..nr_queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            pending: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            timeline: OnceLock::new(),
            flow: AtomicU64::new(0),
        }
    }

    /// Records every interrupt on `timeline`, ending the current kick's flow.
    pub fn set_timeline(&self, timeline: Arc<Timeline>) {
        let _ = self.timeline.set(timeline);
    }

    pub fn timeline(&self) -> Option<&Arc<Timeline>> {
        self.timeline.get()
    }

    /// The flow (kick) whose completion the next interrupts belong to (0: none).
    pub fn set_flow(&self, id: u64) {
        self.flow.store(id, Ordering::Relaxed);
    }

    pub fn msix(&self) -> &Arc<Mutex<Msix>> {
        &self.msix
    }

    pub fn lock_msix(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> InterruptStats {
        InterruptStats {
            delivered: self.fast.total_delivered(),
            pending: self.pending.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    /// Reads and clears the ISR (virtio 1.2 §4.1.4.5).
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    pub fn queue_vector(&self, q: usize) -> u16 {
        self.queue_vectors
            .get(q)
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    pub fn set_config_vector(&self, v: u16) {
        self.config_vector.store(v, Ordering::Release);
        self.update_in_use();
    }

    pub fn set_queue_vector(&self, q: usize, v: u16) {
        if let Some(slot) = self.queue_vectors.get(q) {
            slot.store(v, Ordering::Release);
            self.update_in_use();
        }
    }

    /// Device reset: ISR clear, no vectors (so every vector's route and irqfd go away).
    pub fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.update_in_use();
    }

    /// Tells MSI-X which vectors this device fires, so only those are armed.
    fn update_in_use(&self) {
        let mut used: Vec<u16> = self
            .queue_vectors
            .iter()
            .map(|v| v.load(Ordering::Acquire))
            .chain(std::iter::once(self.config_vector()))
            .filter(|&v| v != NO_VECTOR)
            .collect();
        used.sort_unstable();
        used.dedup();
        self.lock_msix().set_in_use(&used);
    }
}

impl VirtioInterrupt for VirtioPciInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError> {
        self.trigger_in_flow(kind, self.flow.load(Ordering::Relaxed))
    }

    fn timeline(&self) -> Option<Arc<Timeline>> {
        self.timeline.get().cloned()
    }

    fn current_flow(&self) -> u64 {
        self.flow.load(Ordering::Relaxed)
    }

    fn irqfd(&self, kind: VirtioInterruptType) -> Option<std::os::fd::RawFd> {
        let vector = match kind {
            VirtioInterruptType::Config => self.config_vector(),
            VirtioInterruptType::Queue(q) => self.queue_vector(usize::from(q)),
        };
        if vector == NO_VECTOR {
            return None;
        }
        self.lock_msix().irqfd(vector)
    }

    fn trigger_in_flow(&self, kind: VirtioInterruptType, flow: u64) -> Result<(), InterruptError> {
        let (bit, vector) = match kind {
            VirtioInterruptType::Config => (ISR_CONFIG, self.config_vector()),
            VirtioInterruptType::Queue(q) => {
                let slot = self
                    .queue_vectors
                    .get(usize::from(q))
                    .ok_or(InterruptError::NoQueue(q))?;
                (ISR_QUEUE, slot.load(Ordering::Acquire))
            }
        };
        // Only MSI-X here, so the ISR is informational: set, but not written when set already
        // (one device's queues fire from several threads).
        if self.isr.load(Ordering::Relaxed) & bit == 0 {
            self.isr.fetch_or(bit, Ordering::AcqRel);
        }
        if vector == NO_VECTOR {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return Err(InterruptError::Delivery(
                "no MSI-X vector set (and no INTx)".into(),
            ));
        }
        let started = self.timeline.get().map(|_| Instant::now());
        let fired = if self.fast.try_fire(vector) {
            Fired::Delivered
        } else {
            self.lock_msix().fire(vector)
        };
        if let (Some(tl), Some(t0)) = (self.timeline.get(), started) {
            let done = Instant::now();
            // The message the vector sent: where it went (the LAPIC on x86_64, the ITS's
            // GITS_TRANSLATER on aarch64) and its data (the vector, or the ITS event id).
            let mut entry = [0u8; 16];
            self.lock_msix()
                .read_table(u64::from(vector) * 16, &mut entry);
            let address = u64::from_le_bytes(entry[..8].try_into().unwrap_or_default());
            let data = u32::from_le_bytes(entry[8..12].try_into().unwrap_or_default());
            tl.span(
                &format!("msi-x vector {vector}: {fired:?}"),
                "irq",
                t0,
                done,
                serde_json::json!({ "vector": vector, "isr": bit,
                                    "address": format!("{address:#x}"), "data": data }),
            );
            if flow != 0 {
                tl.flow(flow, "interrupt", Flow::End, t0);
            }
        }
        match fired {
            Fired::Delivered => Ok(()),
            Fired::Pending => {
                self.pending.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Fired::Dropped | Fired::Failed => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                Err(InterruptError::Delivery(format!(
                    "MSI-X vector {vector} not delivered"
                )))
            }
        }
    }
}
