//! The used ring, written by the device: elements first and the used index once per
//! publication, so a frame spanning several receive chains (MRG_RXBUF) appears to the driver
//! all at once; and the interrupt decision, as virtio-queue's `needs_notification` makes it
//! (EVENT_IDX `used_event`, or the `VRING_AVAIL_F_NO_INTERRUPT` flag).
use std::num::Wrapping;
use std::sync::atomic::{fence, AtomicU16, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Used-ring publication and the interrupt decision, for one queue.
///
/// Kept apart from virtio-queue's `Queue` (which then only pops chains): elements are written
/// first and the used index once per [`Self::publish`], so a frame spanning several receive
/// chains (MRG_RXBUF) appears to the driver all at once. The rings were checked to lie inside
/// guest RAM when the driver enabled the queue; when each lies within one RAM region (always,
/// in practice) they are accessed through their host addresses, else through `GuestMemoryMmap`.
#[derive(Debug)]
pub struct UsedRing {
    size: u16,
    used_ring: u64,
    avail_ring: u64,
    event_idx: bool,
    /// The used index published.
    next_used: Wrapping<u16>,
    /// Entries written but not yet published.
    pending: u16,
    /// The used index when the driver was last considered for an interrupt.
    last_signalled: Wrapping<u16>,
    /// Host address of the used ring and of the available ring.
    used_host: Option<usize>,
    avail_host: Option<usize>,
}

const USED_RING_HEADER: u64 = 4;
const USED_ELEM: u64 = 8;
const AVAIL_RING_HEADER: u64 = 4;
const AVAIL_ELEM: u64 = 2;

/// The host address of guest range `addr..addr+len`, if it lies within one region.
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<usize> {
    GuestMemoryBackend::get_slice(mem, GuestAddress(addr), usize::try_from(len).ok()?)
        .ok()
        .map(|s| s.ptr_guard_mut().as_ptr() as usize)
}

impl UsedRing {
    /// Takes over `q`'s used ring (at activation). `mem` must outlive the value.
    pub fn new(q: &Queue, mem: &GuestMemoryMmap) -> Self {
        let n = u64::from(q.size());
        // Rings are 4- and 2-byte aligned (virtio-queue refuses others), as the atomic
        // accesses below need.
        let aligned = q.used_ring().is_multiple_of(4) && q.avail_ring().is_multiple_of(2);
        let used_len = USED_RING_HEADER + USED_ELEM * n + 2;
        let avail_len = AVAIL_RING_HEADER + AVAIL_ELEM * n + 2;
        UsedRing {
            size: q.size().max(1),
            used_ring: q.used_ring(),
            avail_ring: q.avail_ring(),
            event_idx: q.event_idx_enabled(),
            next_used: Wrapping(q.next_used()),
            pending: 0,
            last_signalled: Wrapping(q.next_used()),
            used_host: host_range(mem, q.used_ring(), used_len).filter(|_| aligned),
            avail_host: host_range(mem, q.avail_ring(), avail_len).filter(|_| aligned),
        }
    }

    /// Writes a used element after those pending; it becomes visible at [`Self::publish`].
    pub fn add(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), virtio_queue::Error> {
        if head >= self.size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = (self.next_used.0.wrapping_add(self.pending)) % self.size;
        let offset = USED_RING_HEADER + u64::from(slot) * USED_ELEM;
        if let Some(base) = self.used_host {
            let p = base + offset as usize;
            // SAFETY: `p` is element `slot` (< size) of the used ring, which `new` found inside
            // one mapped RAM region, 4-byte aligned; `mem` keeps it mapped. Volatile: the
            // guest may read it concurrently.
            unsafe {
                std::ptr::write_volatile(p as *mut u32, u32::from(head).to_le());
                std::ptr::write_volatile((p + 4) as *mut u32, len.to_le());
            }
        } else {
            let addr = self
                .used_ring
                .checked_add(offset)
                .ok_or(virtio_queue::Error::AddressOverflow)?;
            let elem = u64::from(head) | u64::from(len) << 32;
            mem.write_obj(elem.to_le(), GuestAddress(addr))
                .map_err(virtio_queue::Error::GuestMemory)?;
        }
        self.pending += 1;
        Ok(())
    }

    pub fn pending(&self) -> u16 {
        self.pending
    }

    /// The used index published so far.
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Entries published since the driver was last considered for an interrupt.
    pub fn unsignalled(&self) -> u16 {
        (self.next_used - self.last_signalled).0
    }

    /// Makes the pending elements visible: one store of the used index (release).
    pub fn publish(&mut self, mem: &GuestMemoryMmap) -> Result<(), virtio_queue::Error> {
        if self.pending == 0 {
            return Ok(());
        }
        let next = self.next_used + Wrapping(self.pending);
        if let Some(base) = self.used_host {
            // SAFETY: the used ring's idx field (offset 2, 2-byte aligned) inside one mapped
            // region (see `new`); atomic, as the guest reads it concurrently.
            let idx = unsafe { AtomicU16::from_ptr((base + 2) as *mut u16) };
            idx.store(next.0.to_le(), Ordering::Release);
        } else {
            let addr = self
                .used_ring
                .checked_add(2)
                .ok_or(virtio_queue::Error::AddressOverflow)?;
            mem.store(next.0.to_le(), GuestAddress(addr), Ordering::Release)
                .map_err(virtio_queue::Error::GuestMemory)?;
        }
        self.next_used = next;
        self.pending = 0;
        Ok(())
    }

    /// A 16-bit field of the available ring, `offset` bytes in.
    fn avail_u16(&self, mem: &GuestMemoryMmap, offset: u64) -> Result<u16, virtio_queue::Error> {
        if let Some(base) = self.avail_host {
            // SAFETY: `offset` is the flags (0) or used_event (4 + 2 * size) field, inside the
            // available ring that `new` found in one mapped region, 2-byte aligned.
            let v = unsafe { AtomicU16::from_ptr((base + offset as usize) as *mut u16) };
            return Ok(u16::from_le(v.load(Ordering::Relaxed)));
        }
        let addr = self
            .avail_ring
            .checked_add(offset)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        mem.load(GuestAddress(addr), Ordering::Relaxed)
            .map(u16::from_le)
            .map_err(virtio_queue::Error::GuestMemory)
    }

    /// Whether the driver wants an interrupt for what was published since the last call:
    /// with EVENT_IDX, whether the used index passed `used_event` (the same test as
    /// virtio-queue's `needs_notification` and Linux's `vring_need_event`); without it,
    /// unless the driver set `VRING_AVAIL_F_NO_INTERRUPT`.
    pub fn needs_notification(
        &mut self,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, virtio_queue::Error> {
        let wanted = self.wants_notification(mem);
        self.last_signalled = self.next_used;
        wanted
    }

    /// [`Self::needs_notification`]'s answer, without marking what was published as
    /// considered: asked again later, the question covers it still (against `used_event` as
    /// the driver has it then).
    pub fn wants_notification(&self, mem: &GuestMemoryMmap) -> Result<bool, virtio_queue::Error> {
        let (new, old) = (self.next_used, self.last_signalled);
        if new == old {
            return Ok(false);
        }
        // The used index store must be visible before the driver's event is read.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let offset = AVAIL_RING_HEADER + u64::from(self.size) * AVAIL_ELEM;
            let used_event = self.avail_u16(mem, offset)?;
            return Ok(new - Wrapping(used_event) - Wrapping(1) < new - old);
        }
        let flags = self.avail_u16(mem, 0)?;
        Ok(flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn used_ring_batches_and_event_idx() {
        let m = mem();
        // MockSplitQueue's used ring overlaps its available ring (it sizes the latter in
        // elements, not bytes), so the rings are placed here.
        let (avail, used_addr) = (0x2000u64, 0x3000u64);
        let queue = |event_idx: bool| {
            let mut q = Queue::new(16).unwrap();
            q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
            q.try_set_used_ring_address(GuestAddress(used_addr))
                .unwrap();
            q.set_ready(true);
            q.set_event_idx(event_idx);
            q
        };
        let used_idx = || m.read_obj::<u16>(GuestAddress(used_addr + 2)).unwrap();
        let elem = |i: u64| {
            m.read_obj::<[u32; 2]>(GuestAddress(used_addr + 4 + 8 * i))
                .unwrap()
        };
        let mut used = UsedRing::new(&queue(true), &m);
        used.add(&m, 3, 100).unwrap();
        used.add(&m, 5, 200).unwrap();
        assert_eq!(used_idx(), 0, "nothing visible before publish");
        used.publish(&m).unwrap();
        assert_eq!(used_idx(), 2);
        assert_eq!(elem(1), [5, 200]);
        assert_eq!((used.next_used(), used.unsignalled()), (2, 2));
        // used_event 0: the first entry (index 0 → 1) crossed it.
        assert!(used.needs_notification(&m).unwrap());
        assert_eq!(used.unsignalled(), 0);
        // Nothing new: no interrupt.
        assert!(!used.needs_notification(&m).unwrap());
        // The driver asks for an interrupt only after entry 10.
        let used_event_addr = avail + 4 + 2 * 16;
        m.write_obj(10u16, GuestAddress(used_event_addr)).unwrap();
        for _ in 0..5 {
            used.add(&m, 1, 1).unwrap();
            used.publish(&m).unwrap();
            assert!(!used.needs_notification(&m).unwrap());
        }
        for _ in 0..4 {
            used.add(&m, 1, 1).unwrap();
        }
        used.publish(&m).unwrap();
        assert!(used.needs_notification(&m).unwrap(), "11 > 10");
        assert!(used.add(&m, 16, 0).is_err(), "head past the queue");
        // The ring wraps.
        for i in 0..40u16 {
            used.add(&m, i % 16, u32::from(i)).unwrap();
            used.publish(&m).unwrap();
        }
        assert_eq!(used_idx(), 51);
        assert_eq!(elem(50 % 16), [39 % 16, 39]);
        // Without EVENT_IDX: the NO_INTERRUPT flag.
        let mut used = UsedRing::new(&queue(false), &m);
        used.add(&m, 1, 1).unwrap();
        used.publish(&m).unwrap();
        assert!(used.needs_notification(&m).unwrap());
        m.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, GuestAddress(avail))
            .unwrap();
        used.add(&m, 1, 1).unwrap();
        used.publish(&m).unwrap();
        assert!(!used.needs_notification(&m).unwrap());
    }
}
