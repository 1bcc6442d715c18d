//! A small virtio split-queue driver over in-memory guest memory, for device-level tests and
//! benchmarks: it adds chains, publishes them, reads the used ring back and recycles the
//! descriptors, with the EVENT_IDX fields at hand.
//!
//! virtio-queue's `MockSplitQueue` lays out the descriptor table and the available ring (and
//! its `DescriptorTable` and ring accessors write them); the used ring is placed separately,
//! 16 KiB after the start, because MockSplitQueue sizes the available ring in elements rather
//! than bytes and so puts its own used ring on top of it.
#![allow(dead_code)]
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Room each queue takes from its base address.
pub const QUEUE_SPAN: u64 = 0x8000;
const USED_OFFSET: u64 = 0x4000;

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Buf {
    pub fn read(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            write: false,
        }
    }
    pub fn write(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            write: true,
        }
    }
}

pub struct DriverQueue<'m> {
    mem: &'m GuestMemoryMmap,
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    size: u16,
    used_addr: u64,
    free: Vec<u16>,
    /// By head: (descriptor indexes, buffers) of chains in flight.
    in_flight: Vec<Option<(Vec<u16>, Vec<Buf>)>>,
    /// By head: one-buffer chains in flight (`add_single`, no allocation).
    singles: Vec<Option<Buf>>,
    avail_idx: u16,
    last_used: u16,
    /// The avail index at the last kick decision.
    kicked_at: u16,
}

impl<'m> DriverQueue<'m> {
    /// A queue of `size` (≤ 256) entries at `base` (QUEUE_SPAN bytes).
    pub fn new(mem: &'m GuestMemoryMmap, base: u64, size: u16) -> Self {
        assert!(size <= 256);
        let vq = MockSplitQueue::create(mem, GuestAddress(base), size);
        let used_addr = base + USED_OFFSET;
        mem.write_slice(&[0u8; 4 + 8 * 256 + 2], GuestAddress(used_addr))
            .unwrap();
        DriverQueue {
            mem,
            vq,
            size,
            used_addr,
            free: (0..size).rev().collect(),
            in_flight: (0..size).map(|_| None).collect(),
            singles: vec![None; usize::from(size)],
            avail_idx: 0,
            last_used: 0,
            kicked_at: 0,
        }
    }

    /// The device's view of the queue (as the transport builds it at DRIVER_OK).
    pub fn queue(&self, event_idx: bool) -> Queue {
        assert_eq!(
            self.vq.avail_addr().0,
            self.vq.desc_table_addr().0 + 16 * u64::from(self.size)
        );
        Self::queue_at(self.vq.desc_table_addr().0, self.size, event_idx)
    }

    /// The device's view of the queue `new(mem, base, size)` makes.
    /// (MockSplitQueue puts the available ring right after the 16-byte descriptors.)
    pub fn queue_at(base: u64, size: u16, event_idx: bool) -> Queue {
        let mut q = Queue::new(size).unwrap();
        q.try_set_size(size).unwrap();
        q.try_set_desc_table_address(GuestAddress(base)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(base + 16 * u64::from(size)))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(base + USED_OFFSET))
            .unwrap();
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    /// The used entries seen so far.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|c| c.is_some()).count()
    }

    /// Takes `n` descriptor indexes for a chain the caller writes itself.
    pub fn reserve(&mut self, n: usize) -> Vec<u16> {
        assert!(self.free.len() >= n, "out of descriptors");
        (0..n).map(|_| self.free.pop().unwrap()).collect()
    }

    /// Writes raw descriptor `index`.
    pub fn store_desc(&self, index: u16, d: Descriptor) {
        self.vq
            .desc_table()
            .store(index, RawDescriptor::from(d))
            .unwrap();
    }

    /// Puts `head` in the available ring (not yet published); `descs` are freed when the
    /// device returns `head`.
    pub fn push_head(&mut self, head: u16, descs: Vec<u16>, bufs: Vec<Buf>) {
        let slot = usize::from(self.avail_idx % self.size);
        self.vq.avail().ring().ref_at(slot).unwrap().store(head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        if head < self.size {
            self.in_flight[usize::from(head)] = Some((descs, bufs));
        }
    }

    /// Adds a chain of `bufs` (not yet published); returns its head.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let idx = self.reserve(bufs.len());
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.write { WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < bufs.len() {
                flags |= NEXT;
                next = idx[i + 1];
            }
            self.store_desc(idx[i], Descriptor::new(b.addr, b.len, flags, next));
        }
        let head = idx[0];
        self.push_head(head, idx, bufs.to_vec());
        head
    }

    /// Adds a one-buffer chain without allocating (for benchmarks); returns its head.
    pub fn add_single(&mut self, b: Buf) -> u16 {
        let head = self.free.pop().expect("out of descriptors");
        let flags = if b.write { WRITE } else { 0 };
        self.store_desc(head, Descriptor::new(b.addr, b.len, flags, 0));
        let slot = usize::from(self.avail_idx % self.size);
        self.vq.avail().ring().ref_at(slot).unwrap().store(head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.singles[usize::from(head)] = Some(b);
        head
    }

    /// Used entries of `add_single` chains not seen yet, appended to `out` as (len, buffer).
    pub fn take_used_singles(&mut self, out: &mut Vec<(u32, Buf)>) {
        let end = self.used_idx();
        while self.last_used != end {
            let slot = u64::from(self.last_used % self.size);
            let e: [u32; 2] = self
                .mem
                .read_obj(GuestAddress(self.used_addr + 4 + 8 * slot))
                .unwrap();
            self.last_used = self.last_used.wrapping_add(1);
            let head = e[0] as u16;
            if let Some(b) = self
                .singles
                .get_mut(usize::from(head))
                .and_then(Option::take)
            {
                self.free.push(head);
                out.push((e[1], b));
            }
        }
    }

    /// Makes the added chains visible to the device.
    pub fn publish(&mut self) {
        fence(Ordering::SeqCst);
        self.vq.avail().idx().store(self.avail_idx);
        fence(Ordering::SeqCst);
    }

    /// Sets the avail index to anything (bad input).
    pub fn set_avail_idx(&mut self, v: u16) {
        self.avail_idx = v;
        self.publish();
    }

    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index the device published.
    pub fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        self.mem
            .read_obj::<u16>(GuestAddress(self.used_addr + 2))
            .unwrap()
    }

    /// Used entries not seen yet: (head, len, that chain's buffers). Their descriptors go
    /// back to the free list.
    pub fn take_used(&mut self) -> Vec<(u16, u32, Vec<Buf>)> {
        let end = self.used_idx();
        let mut out = Vec::new();
        while self.last_used != end {
            let slot = u64::from(self.last_used % self.size);
            let e: [u32; 2] = self
                .mem
                .read_obj(GuestAddress(self.used_addr + 4 + 8 * slot))
                .unwrap();
            self.last_used = self.last_used.wrapping_add(1);
            let head = e[0] as u16;
            let chain = self
                .in_flight
                .get_mut(usize::from(head))
                .and_then(Option::take);
            let bufs = match chain {
                Some((descs, bufs)) => {
                    self.free.extend(descs);
                    bufs
                }
                None => Vec::new(),
            };
            out.push((head, e[1], bufs));
        }
        out
    }

    /// used_event (EVENT_IDX): interrupt me once the used index passes this.
    pub fn set_used_event(&self, v: u16) {
        let addr = self.vq.avail_addr().0 + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
        fence(Ordering::SeqCst);
    }

    /// avail_event (EVENT_IDX): the device wants a kick once the avail index passes this.
    pub fn avail_event(&self) -> u16 {
        fence(Ordering::SeqCst);
        let addr = self.used_addr + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY without EVENT_IDX).
    pub fn used_flags(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_addr)).unwrap()
    }

    /// The avail ring's flags (VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, v: u16) {
        self.mem.write_obj(v, self.vq.avail_addr()).unwrap();
    }

    /// Whether the device wants a kick for what was published since the last call
    /// (vring_need_event on avail_event).
    pub fn needs_kick(&mut self, event_idx: bool) -> bool {
        let new = self.avail_idx;
        let old = std::mem::replace(&mut self.kicked_at, new);
        if new == old {
            return false;
        }
        if !event_idx {
            return self.used_flags() & 1 == 0;
        }
        let ev = self.avail_event();
        new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
    }
}

/// Bump allocation of guest buffers.
pub struct Arena {
    next: u64,
    end: u64,
}

impl Arena {
    pub fn new(start: u64, end: u64) -> Self {
        Arena { next: start, end }
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next;
        self.next = (self.next + len + 63) & !63;
        assert!(self.next <= self.end, "arena exhausted");
        a
    }
}
