//! A split virtqueue (virtio 1.x, 2.7): descriptor table, available ring, used ring, in memory
//! the driver owns and hands to the device.
//!
//! The free list and the length of every outstanding chain live in driver-private memory (the
//! `links`/`chain_len` arrays after the rings), never in the descriptors the device reads: a
//! chain the driver wrote on purpose as a loop (`net.hostile`) or a device returning an id that
//! is no outstanding head cannot corrupt it. Everything here is plain memory access, so it works
//! at CPL3 as well as CPL0 (every page is user-accessible).
use core::sync::atomic::{fence, Ordering};

/// The largest queue a [`QueueMemory`] holds.
pub const MAX_SIZE: u16 = 256;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// `avail.flags`: no interrupts wanted (ignored by devices once EVENT_IDX is negotiated).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: no kicks wanted (when EVENT_IDX is not negotiated).
const USED_F_NO_NOTIFY: u16 = 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// `ring` has room for [`MAX_SIZE`] entries; the `used_event` a device reads sits right after
/// the queue's own entries (`ring[size]`), which is `used_event` only when size = MAX_SIZE.
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

/// As [`AvailRing`]: `avail_event` is at `ring[size]`.
#[repr(C, align(4096))]
struct UsedRing {
    flags: u16,
    idx: u16,
    ring: [UsedElem; MAX_SIZE as usize],
    avail_event: u16,
}

/// Memory for one queue of up to [`MAX_SIZE`] entries (16 KiB, page-aligned parts: descriptors,
/// available ring, used ring, then the driver's private bookkeeping). Keep it in a `.noinit`
/// static: [`SplitQueue::new`] clears what the queue uses.
#[repr(C, align(4096))]
pub struct QueueMemory {
    desc: [Descriptor; MAX_SIZE as usize],
    avail: AvailRing,
    used: UsedRing,
    /// Free-list links (free descriptors) and chain links (outstanding chains), by id.
    links: [u16; MAX_SIZE as usize],
    /// Descriptors in the chain headed by this id; 0 when the id is no outstanding head.
    chain_len: [u16; MAX_SIZE as usize],
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
            links: [0; MAX_SIZE as usize],
            chain_len: [0; MAX_SIZE as usize],
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

/// One descriptor written exactly as given (for malformed chains on purpose): `next` is an
/// index into the chain being added (its n-th descriptor), or, with `raw_next`, the literal
/// value of the `next` field.
#[derive(Clone, Copy)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
    pub raw_next: bool,
}

/// The driver's side of a split queue.
pub struct SplitQueue {
    mem: *mut QueueMemory,
    size: u16,
    free_head: u16,
    num_free: u16,
    /// Next available-ring index to publish (a free-running u16).
    avail_idx: u16,
    /// The available index the device has last been shown.
    published: u16,
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
            for i in 0..size as usize {
                m.desc[i] = Descriptor {
                    addr: 0,
                    len: 0,
                    flags: 0,
                    next: 0,
                };
                m.links[i] = (i as u16 + 1) % size;
                m.chain_len[i] = 0;
            }
            m.avail.flags = 0; // interrupts wanted
            m.avail.idx = 0;
            // used_event (ring[size]) and avail_event: 0, as after a reset.
            m.avail.ring.as_mut_ptr().add(size as usize).write(0);
            m.used.flags = 0;
            m.used.idx = 0;
            let used_ring = core::ptr::addr_of_mut!(m.used.ring) as *mut UsedElem;
            (used_ring.add(size as usize) as *mut u16).write(0);
        }
        Ok(SplitQueue {
            mem,
            size,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            published: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// The head id the next [`SplitQueue::add`] will use, if a descriptor is free.
    pub fn next_free(&self) -> Option<u16> {
        (self.num_free > 0).then_some(self.free_head)
    }

    // SAFETY (for the three address functions): only addresses are computed, nothing is read.
    pub fn desc_addr(&self) -> u64 {
        // SAFETY: see above.
        crate::arch::paging::dma_addr(unsafe { core::ptr::addr_of!((*self.mem).desc) as u64 })
    }
    pub fn avail_addr(&self) -> u64 {
        // SAFETY: see above.
        crate::arch::paging::dma_addr(unsafe { core::ptr::addr_of!((*self.mem).avail) as u64 })
    }
    pub fn used_addr(&self) -> u64 {
        // SAFETY: see above.
        crate::arch::paging::dma_addr(unsafe { core::ptr::addr_of!((*self.mem).used) as u64 })
    }

    /// Takes `n` descriptors off the free list; returns the head (their order is in `links`).
    fn alloc(&mut self, n: u16) -> Option<u16> {
        if n == 0 || n > self.num_free {
            return None;
        }
        let head = self.free_head;
        let mut id = head;
        // SAFETY: `links` is driver-private; ids on the free list are below `size`.
        unsafe {
            let links = core::ptr::addr_of_mut!((*self.mem).links) as *mut u16;
            for _ in 1..n {
                id = *links.add(usize::from(id));
            }
            self.free_head = *links.add(usize::from(id));
            *(core::ptr::addr_of_mut!((*self.mem).chain_len) as *mut u16).add(usize::from(head)) =
                n;
        }
        self.num_free -= n;
        Some(head)
    }

    /// Puts `head` in the next available-ring slot (published later).
    fn push_avail(&mut self, head: u16) {
        // SAFETY: the driver owns the available ring; the slot is below `size`.
        unsafe {
            let avail = core::ptr::addr_of_mut!((*self.mem).avail);
            let slot = usize::from(self.avail_idx % self.size);
            core::ptr::addr_of_mut!((*avail).ring[slot]).write_volatile(head);
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Adds one chain (not yet visible to the device: see [`SplitQueue::publish`]); returns its
    /// head descriptor id, or None when there are not enough free descriptors.
    ///
    /// # Safety
    /// Every buffer must be memory the caller owns (the device is given its physical address,
    /// `arch::paging::dma_addr`), that the device may read
    /// or (when `device_writes`) write until the chain comes back from [`SplitQueue::pop_used`].
    pub unsafe fn add(&mut self, chain: &[Buffer]) -> Option<u16> {
        let head = self.alloc(u16::try_from(chain.len()).ok()?)?;
        let mut id = head;
        // SAFETY: the ids come from the free list (below `size`); the device does not read a
        // descriptor until its head is published.
        unsafe {
            let desc = core::ptr::addr_of_mut!((*self.mem).desc) as *mut Descriptor;
            let links = core::ptr::addr_of!((*self.mem).links) as *const u16;
            for (n, b) in chain.iter().enumerate() {
                let last = n + 1 == chain.len();
                let next = *links.add(usize::from(id));
                desc.add(usize::from(id)).write(Descriptor {
                    addr: crate::arch::paging::dma_addr(b.addr),
                    len: b.len,
                    flags: if b.device_writes { DESC_F_WRITE } else { 0 }
                        | if last { 0 } else { DESC_F_NEXT },
                    next: if last { 0 } else { next },
                });
                id = next;
            }
        }
        self.push_avail(head);
        Some(head)
    }

    /// Adds a chain of descriptors written exactly as given, loops and nonsense included (see
    /// [`RawDesc`]). The driver's bookkeeping does not follow the descriptors' `next` fields, so
    /// it stays sound whatever they say.
    ///
    /// # Safety
    /// The device may read (and, for descriptors with [`DESC_F_WRITE`], write) any address in
    /// the chain: they must be addresses whose reading or writing the caller accepts.
    pub unsafe fn add_raw(&mut self, chain: &[RawDesc]) -> Option<u16> {
        let n = u16::try_from(chain.len()).ok()?;
        let head = self.alloc(n)?;
        let mut ids = [0u16; 16];
        if chain.len() > ids.len() {
            return None;
        }
        // SAFETY: as in `add`; ids come from the free list, walked through `links`.
        unsafe {
            let links = core::ptr::addr_of!((*self.mem).links) as *const u16;
            let mut id = head;
            for slot in ids.iter_mut().take(chain.len()) {
                *slot = id;
                id = *links.add(usize::from(id));
            }
            let desc = core::ptr::addr_of_mut!((*self.mem).desc) as *mut Descriptor;
            for (k, d) in chain.iter().enumerate() {
                let next = if d.raw_next {
                    d.next
                } else {
                    ids.get(usize::from(d.next)).copied().unwrap_or(d.next)
                };
                desc.add(usize::from(ids[k])).write(Descriptor {
                    addr: crate::arch::paging::dma_addr(d.addr),
                    len: d.len,
                    flags: d.flags,
                    next,
                });
            }
        }
        self.push_avail(head);
        Some(head)
    }

    /// Makes every chain added so far visible to the device (then notify it).
    pub fn publish(&mut self) {
        fence(Ordering::Release);
        // SAFETY: the driver owns the available ring; the device only reads it.
        unsafe { core::ptr::addr_of_mut!((*self.mem).avail.idx).write_volatile(self.avail_idx) }
        fence(Ordering::SeqCst);
    }

    /// [`SplitQueue::publish`], then whether the device wants a kick for what was added since
    /// the last publish: with EVENT_IDX its `avail_event`, else `used.flags` NO_NOTIFY.
    pub fn publish_need_kick(&mut self, event_idx: bool) -> bool {
        let old = self.published;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        self.publish();
        self.published = new;
        // SAFETY: the device writes these fields; volatile reads after the SeqCst fence in
        // `publish` (store of avail.idx, then load: the ordering EVENT_IDX needs).
        unsafe {
            if event_idx {
                let used_ring = core::ptr::addr_of!((*self.mem).used.ring) as *const UsedElem;
                let event = (used_ring.add(usize::from(self.size)) as *const u16).read_volatile();
                new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
            } else {
                core::ptr::addr_of!((*self.mem).used.flags).read_volatile() & USED_F_NO_NOTIFY == 0
            }
        }
    }

    /// Publishes `idx` as the available index as it stands, without any chain behind it (for
    /// malformed input on purpose: an index that runs ahead of the ring).
    pub fn publish_raw_idx(&mut self, idx: u16) {
        fence(Ordering::SeqCst);
        // SAFETY: the driver owns the available ring.
        unsafe { core::ptr::addr_of_mut!((*self.mem).avail.idx).write_volatile(idx) }
        fence(Ordering::SeqCst);
    }

    /// Asks for an interrupt on the next used entry (`on`), or for none. With EVENT_IDX through
    /// `used_event`: the next entry, or half the index space ahead (a device compares it with
    /// the index it last signalled, which may lag far behind, so "just behind" is no good), and
    /// VRING_AVAIL_F_NO_INTERRUPT as well (what a device without EVENT_IDX reads).
    pub fn want_interrupts(&mut self, on: bool, event_idx: bool) {
        // SAFETY: the driver owns the available ring, including used_event at ring[size].
        unsafe {
            let avail = core::ptr::addr_of_mut!((*self.mem).avail);
            if event_idx {
                let event = if on {
                    self.last_used
                } else {
                    self.last_used.wrapping_add(0x8000)
                };
                let ring = core::ptr::addr_of_mut!((*avail).ring) as *mut u16;
                ring.add(usize::from(self.size)).write_volatile(event);
            }
            let flags = if on { 0 } else { AVAIL_F_NO_INTERRUPT };
            core::ptr::addr_of_mut!((*avail).flags).write_volatile(flags);
        }
        fence(Ordering::SeqCst);
    }

    /// Used entries the device has added that the driver has not consumed yet.
    pub fn used_pending(&self) -> u16 {
        // SAFETY: a volatile read of the device-written index.
        let idx = unsafe { core::ptr::addr_of!((*self.mem).used.idx).read_volatile() };
        idx.wrapping_sub(self.last_used)
    }

    /// Whether the chain headed by `id` is still with the device (added, not yet returned).
    pub fn is_outstanding(&self, id: u16) -> bool {
        // SAFETY: `chain_len` is driver-private; the index is checked against the queue.
        id < self.size
            && unsafe {
                (core::ptr::addr_of!((*self.mem).chain_len) as *const u16)
                    .add(usize::from(id))
                    .read()
                    != 0
            }
    }

    /// The available index the driver has reached (published or not).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Chains added (and published or not) that the device has not returned.
    pub fn outstanding(&self) -> u16 {
        self.size - self.num_free
    }

    /// The next chain the device has finished with: (head id, bytes it wrote). Frees its
    /// descriptors. An error when the device returned an id that is no outstanding chain head
    /// (beyond the queue, never posted, or returned twice), or moved its index more than a
    /// ring's worth ahead.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, &'static str> {
        let pending = self.used_pending();
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err("device moved the used index more than the queue size ahead");
        }
        fence(Ordering::Acquire);
        // SAFETY: the used element is read (volatile) only after the index that covers it; the
        // bookkeeping arrays are driver-private and indexed below `size`.
        unsafe {
            let used = core::ptr::addr_of!((*self.mem).used);
            let slot = usize::from(self.last_used % self.size);
            let elem = core::ptr::addr_of!((*used).ring[slot]).read_volatile();
            self.last_used = self.last_used.wrapping_add(1);
            if elem.id >= u32::from(self.size) {
                return Err("device returned a descriptor id beyond the queue");
            }
            let head = elem.id as u16;
            let lens = core::ptr::addr_of_mut!((*self.mem).chain_len) as *mut u16;
            let n = *lens.add(usize::from(head));
            if n == 0 {
                return Err("device returned an id that is no outstanding chain head");
            }
            *lens.add(usize::from(head)) = 0;
            let links = core::ptr::addr_of_mut!((*self.mem).links) as *mut u16;
            let mut tail = head;
            for _ in 1..n {
                tail = *links.add(usize::from(tail));
            }
            *links.add(usize::from(tail)) = if self.num_free == 0 {
                head
            } else {
                self.free_head
            };
            self.free_head = head;
            self.num_free += n;
            Ok(Some((head, elem.len)))
        }
    }
}
