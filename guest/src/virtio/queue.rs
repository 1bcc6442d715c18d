//! A split virtqueue (virtio 1.x, 2.7): descriptor table, available ring, used ring, in memory
//! the driver owns and hands to the device.
use core::sync::atomic::{fence, Ordering};

/// The largest queue a [`QueueMemory`] holds.
pub const MAX_SIZE: u16 = 256;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(4096))]
struct AvailRing {
    flags: u16,
    idx: u16,
    ring: [u16; MAX_SIZE as usize],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4096))]
struct UsedRing {
    flags: u16,
    idx: u16,
    ring: [UsedElem; MAX_SIZE as usize],
    avail_event: u16,
}

/// Memory for one queue of up to [`MAX_SIZE`] entries (12 KiB, page-aligned parts). Keep it in
/// a `.noinit` static: [`SplitQueue::new`] clears what the queue uses.
#[repr(C, align(4096))]
pub struct QueueMemory {
    desc: [Descriptor; MAX_SIZE as usize],
    avail: AvailRing,
    used: UsedRing,
}

impl QueueMemory {
    /// An initialiser for statics (the contents do not matter).
    pub const fn new() -> QueueMemory {
        QueueMemory {
            desc: [Descriptor {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            }; MAX_SIZE as usize],
            avail: AvailRing {
                flags: 0,
                idx: 0,
                ring: [0; MAX_SIZE as usize],
                used_event: 0,
            },
            used: UsedRing {
                flags: 0,
                idx: 0,
                ring: [UsedElem { id: 0, len: 0 }; MAX_SIZE as usize],
                avail_event: 0,
            },
        }
    }
}

/// One buffer of a chain.
#[derive(Clone, Copy)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    /// The device writes it (else reads it).
    pub device_writes: bool,
}

/// The driver's side of a split queue.
pub struct SplitQueue {
    mem: *mut QueueMemory,
    size: u16,
    free_head: u16,
    num_free: u16,
    /// Next available-ring index to publish (a free-running u16).
    avail_idx: u16,
    /// Used-ring entries consumed so far (free-running).
    last_used: u16,
}

impl SplitQueue {
    /// A queue of `size` entries (a power of two up to [`MAX_SIZE`]) in `mem`, its rings cleared
    /// and every descriptor free.
    ///
    /// # Safety
    /// `mem` must be valid, identity-mapped, and used by nothing but this queue and its device
    /// for as long as the device may touch it (until it is reset).
    pub unsafe fn new(mem: *mut QueueMemory, size: u16) -> Result<SplitQueue, &'static str> {
        if !size.is_power_of_two() || size > MAX_SIZE {
            return Err("queue size not a power of two up to 256");
        }
        // SAFETY: the caller hands `mem` to this queue; the device is not using it yet.
        unsafe {
            let m = &mut *mem;
            for (i, d) in m.desc[..size as usize].iter_mut().enumerate() {
                *d = Descriptor {
                    addr: 0,
                    len: 0,
                    flags: 0,
                    next: (i as u16 + 1) % size,
                };
            }
            m.avail.flags = 0; // interrupts wanted
            m.avail.idx = 0;
            m.used.flags = 0;
            m.used.idx = 0;
        }
        Ok(SplitQueue {
            mem,
            size,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    // SAFETY (for the three address functions): only addresses are computed, nothing is read.
    pub fn desc_addr(&self) -> u64 {
        // SAFETY: see above.
        unsafe { core::ptr::addr_of!((*self.mem).desc) as u64 }
    }
    pub fn avail_addr(&self) -> u64 {
        // SAFETY: see above.
        unsafe { core::ptr::addr_of!((*self.mem).avail) as u64 }
    }
    pub fn used_addr(&self) -> u64 {
        // SAFETY: see above.
        unsafe { core::ptr::addr_of!((*self.mem).used) as u64 }
    }

    /// Adds one chain (not yet visible to the device: see [`SplitQueue::publish`]); returns its
    /// head descriptor id, or None when there are not enough free descriptors.
    ///
    /// # Safety
    /// Every buffer must be memory the caller owns, identity-mapped, that the device may read
    /// or (when `device_writes`) write until the chain comes back from [`SplitQueue::pop_used`].
    pub unsafe fn add(&mut self, chain: &[Buffer]) -> Option<u16> {
        if chain.is_empty() || chain.len() > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut id = head;
        // SAFETY: `id` is always a free descriptor below `size`; the device does not read a
        // descriptor until its head is published.
        unsafe {
            let desc = core::ptr::addr_of_mut!((*self.mem).desc) as *mut Descriptor;
            for (n, b) in chain.iter().enumerate() {
                let d = desc.add(usize::from(id));
                let next = (*d).next;
                let last = n + 1 == chain.len();
                (*d).addr = b.addr;
                (*d).len = b.len;
                (*d).flags = if b.device_writes { DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { DESC_F_NEXT };
                if last {
                    self.free_head = next;
                } else {
                    id = next;
                }
            }
            self.num_free -= chain.len() as u16;
            let avail = core::ptr::addr_of_mut!((*self.mem).avail);
            let slot = usize::from(self.avail_idx % self.size);
            core::ptr::addr_of_mut!((*avail).ring[slot]).write_volatile(head);
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(head)
    }

    /// Makes every chain added so far visible to the device (then notify it).
    pub fn publish(&mut self) {
        fence(Ordering::Release);
        // SAFETY: the driver owns the available ring; the device only reads it.
        unsafe { core::ptr::addr_of_mut!((*self.mem).avail.idx).write_volatile(self.avail_idx) }
        fence(Ordering::SeqCst);
    }

    /// The next chain the device has finished with: (head id, bytes it wrote). Frees its
    /// descriptors. An error when the device returned an id that is no chain head.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, &'static str> {
        // SAFETY: the used ring is written by the device; it is read with volatile loads, and
        // the element only after the index that covers it (acquire fence).
        unsafe {
            let used = core::ptr::addr_of!((*self.mem).used);
            let idx = core::ptr::addr_of!((*used).idx).read_volatile();
            if idx == self.last_used {
                return Ok(None);
            }
            fence(Ordering::Acquire);
            let slot = usize::from(self.last_used % self.size);
            let elem = core::ptr::addr_of!((*used).ring[slot]).read_volatile();
            self.last_used = self.last_used.wrapping_add(1);
            let head = elem.id as u16;
            if u32::from(head) != elem.id || head >= self.size {
                return Err("device returned a descriptor id beyond the queue");
            }
            // Free the chain: walk to its last descriptor, link it to the free list.
            let desc = core::ptr::addr_of_mut!((*self.mem).desc) as *mut Descriptor;
            let mut id = head;
            let mut n = 1;
            while (*desc.add(usize::from(id))).flags & DESC_F_NEXT != 0 && n < self.size {
                id = (*desc.add(usize::from(id))).next;
                n += 1;
            }
            (*desc.add(usize::from(id))).next = self.free_head;
            self.free_head = head;
            self.num_free += n;
            Ok(Some((head, elem.len)))
        }
    }
}
