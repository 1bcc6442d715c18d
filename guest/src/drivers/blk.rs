//! A virtio-blk driver (virtio 1.x over PCI, one or two request queues, completions by MSI-X).
//!
//! [`BlkDev::init`] runs privileged: negotiation (VERSION_1 required; SEG_MAX, SIZE_MAX,
//! BLK_SIZE, FLUSH, RO, DISCARD, WRITE_ZEROES and EVENT_IDX taken when offered, MQ when more
//! than one queue is asked for), MSI-X entry `1 + q` → [`QUEUE_VECTOR`] `+ q` (no config
//! vector), every queue as large as the device allows up to 256. After that everything
//! (posting requests, kicks, reaping) is memory access plus the MMIO write of a kick, so the
//! `blk.*` workloads run unprivileged.
//!
//! A request is one chain: the 16-byte header and the status byte live in per-queue slots
//! indexed by the chain's head id (never in the descriptors the device reads back), the data
//! is the caller's, split into descriptors of at most `size_max` bytes.
use crate::arch::{irq, paging};
use crate::msix::Msix;
use crate::pci::{self, Bdf, Function};
use crate::sync::Global;
use crate::virtio::queue::{Buffer, QueueMemory, RawDesc, SplitQueue};
use crate::virtio::{self, Transport};

/// PCI device ID of a modern virtio-blk.
pub const DEVICE_ID: u16 = virtio::MODERN_DEVICE_BASE + 2;

pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
const SUPPORTED: u64 = virtio::F_VERSION_1
    | F_SIZE_MAX
    | F_SEG_MAX
    | F_RO
    | F_BLK_SIZE
    | F_FLUSH
    | F_DISCARD
    | F_WRITE_ZEROES
    | F_EVENT_IDX;

/// Names of the feature bits `blk.info` prints.
pub const FEATURE_NAMES: [(u64, &str); 11] = [
    (F_SIZE_MAX, "SIZE_MAX"),
    (F_SEG_MAX, "SEG_MAX"),
    (F_RO, "RO"),
    (F_BLK_SIZE, "BLK_SIZE"),
    (F_FLUSH, "FLUSH"),
    (F_MQ, "MQ"),
    (F_DISCARD, "DISCARD"),
    (F_WRITE_ZEROES, "WRITE_ZEROES"),
    (F_INDIRECT_DESC, "INDIRECT_DESC"),
    (F_EVENT_IDX, "EVENT_IDX"),
    (virtio::F_VERSION_1, "VERSION_1"),
];

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// What a status byte holds until the device writes it.
pub const S_UNSET: u8 = 0xee;

/// Queue `q`'s completions raise vector `QUEUE_VECTOR + q`.
pub const QUEUE_VECTOR: u8 = 0x48;
/// Queues the driver can drive (`blk.queues`).
pub const MAX_QUEUES: usize = 2;
const MAX_QUEUE: u16 = 256;
/// Largest data descriptor when the device gives no `size_max`.
const DEFAULT_SEG: u32 = 128 << 10;

/// Header and status of the request headed by each descriptor id.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct ReqSlot {
    pub hdr: [u8; 16],
    pub status: u8,
    _pad: [u8; 15],
}

#[link_section = ".noinit.blk"]
static QUEUES: Global<[QueueMemory; MAX_QUEUES]> =
    Global::new([const { QueueMemory::new() }; MAX_QUEUES]);
#[link_section = ".noinit.blk"]
static SLOTS: Global<[[ReqSlot; MAX_QUEUE as usize]; MAX_QUEUES]> = Global::new(
    [[ReqSlot {
        hdr: [0; 16],
        status: 0,
        _pad: [0; 15],
    }; MAX_QUEUE as usize]; MAX_QUEUES],
);

/// One request queue.
pub struct BlkQueue {
    pub q: SplitQueue,
    pub notify: u64,
    pub index: u16,
}

/// The device, set up.
pub struct BlkDev {
    pub t: Transport,
    pub bdf: Bdf,
    pub offered: u64,
    pub accepted: u64,
    /// Sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub max_discard_sectors: u32,
    pub queues: [BlkQueue; MAX_QUEUES],
    pub nqueues: usize,
    pub max_queues: u16,
    pub event_idx: bool,
    pub kicks: u64,
}

fn slot(q: usize, id: u16) -> *mut ReqSlot {
    (SLOTS.get() as *mut ReqSlot).wrapping_add(q * MAX_QUEUE as usize + usize::from(id))
}

fn pow2_floor(n: u16) -> u16 {
    let n = n.min(MAX_QUEUE);
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

impl BlkDev {
    /// Sets `f` up from scratch with up to `want` queues (more than one only with MQ).
    pub fn init(f: &Function, want: usize) -> Result<BlkDev, &'static str> {
        let t = Transport::new(f)?;
        f.enable(pci::CMD_MEMORY | pci::CMD_BUS_MASTER);
        let msix = Msix::find(f.bdf).ok_or("no MSI-X capability")?;
        let table_bar = f
            .bar(msix.table_bar)
            .ok_or("MSI-X table in a BAR the device lacks")?;
        paging::map_uncached(
            table_bar.addr + u64::from(msix.table_offset),
            u64::from(msix.table_size) * 16,
        )?;
        let want = want.clamp(1, MAX_QUEUES);
        let mq = if want > 1 { F_MQ } else { 0 };
        let (offered, accepted) = t.negotiate(SUPPORTED | mq)?;
        let rd32 = |off: u32| -> u32 {
            (0..4).fold(0u32, |v, i| {
                v | u32::from(t.device_read8(off + i).unwrap_or(0)) << (8 * i)
            })
        };
        let capacity = u64::from(rd32(0)) | u64::from(rd32(4)) << 32;
        let has = |bit: u64| accepted & bit != 0;
        let size_max = if has(F_SIZE_MAX) { rd32(8) } else { 0 };
        let seg_max = if has(F_SEG_MAX) { rd32(12) } else { 0 };
        let blk_size = if has(F_BLK_SIZE) { rd32(20) } else { 512 };
        let max_queues = if has(F_MQ) {
            t.device_read16(34).unwrap_or(1).max(1)
        } else {
            1
        };
        let max_discard_sectors = if has(F_DISCARD) { rd32(36) } else { 0 };
        let nqueues = want.min(usize::from(max_queues));
        if usize::from(msix.table_size) < 1 + nqueues {
            return Err("MSI-X table too small for the queues");
        }
        msix.enable(f.bdf, true);
        for q in 0..nqueues as u16 {
            msix.route(f, 1 + q, QUEUE_VECTOR + q as u8)?;
        }
        t.set_config_vector(virtio::NO_VECTOR)?;
        msix.enable(f.bdf, false);
        let mut queues = [const { None }; MAX_QUEUES];
        for (i, out) in queues.iter_mut().enumerate() {
            let live = i < nqueues;
            let size = if live {
                pow2_floor(t.queue_max_size(i as u16))
            } else {
                2
            };
            if live && size < 4 {
                return Err("device lacks a request queue");
            }
            // SAFETY: the queue memory is this driver's alone; the device gets it only through
            // setup_queue (and `negotiate` reset a device being set up again).
            let q = unsafe {
                SplitQueue::new((QUEUES.get() as *mut QueueMemory).wrapping_add(i), size)?
            };
            let notify = if live {
                t.setup_queue(i as u16, &q, 1 + i as u16)?
            } else {
                0
            };
            *out = Some(BlkQueue {
                q,
                notify,
                index: i as u16,
            });
        }
        t.driver_ok()?;
        let [Some(q0), Some(q1)] = queues else {
            return Err("queue set-up incomplete");
        };
        let mut dev = BlkDev {
            t,
            bdf: f.bdf,
            offered,
            accepted,
            capacity,
            size_max,
            seg_max,
            blk_size,
            max_discard_sectors,
            queues: [q0, q1],
            nqueues,
            max_queues,
            event_idx: has(F_EVENT_IDX),
            kicks: 0,
        };
        dev.interrupts(true);
        Ok(dev)
    }

    pub fn readonly(&self) -> bool {
        self.accepted & F_RO != 0
    }

    /// Asks for an interrupt on every completion (or for none) on every queue.
    pub fn interrupts(&mut self, on: bool) {
        let e = self.event_idx;
        for q in &mut self.queues[..self.nqueues] {
            q.q.want_interrupts(on, e);
        }
    }

    /// Data descriptors one request may have and how long each.
    fn seg_len(&self) -> u32 {
        if self.size_max == 0 {
            DEFAULT_SEG
        } else {
            self.size_max.min(DEFAULT_SEG)
        }
    }

    /// Queues request `t` at `sector` with `len` bytes of data at `data` (device-writable for
    /// IN and GET_ID) on queue `qi`; returns its head id, or None when the queue is full.
    /// Published and kicked by [`BlkDev::kick`].
    ///
    /// # Safety
    /// `data..data + len` must be memory the caller owns and leaves to the device until the
    /// request comes back from [`BlkDev::reap`].
    pub unsafe fn post(
        &mut self,
        qi: usize,
        t: u32,
        sector: u64,
        data: u64,
        len: u32,
    ) -> Option<u16> {
        let seg = self.seg_len();
        let nseg = len.div_ceil(seg) as usize;
        let mut bufs = [Buffer {
            addr: 0,
            len: 0,
            device_writes: false,
        }; 18];
        if nseg + 2 > bufs.len() {
            return None;
        }
        let q = &mut self.queues[qi].q;
        let id = q.next_free()?;
        let s = slot(qi, id);
        // SAFETY: slot `id` belongs to the chain headed by free descriptor `id` (not with the
        // device); it stays the driver's until that chain is posted.
        unsafe {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&t.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            core::ptr::addr_of_mut!((*s).hdr).write(h);
            core::ptr::addr_of_mut!((*s).status).write_volatile(S_UNSET);
        }
        let writes = t == T_IN || t == T_GET_ID;
        bufs[0] = Buffer {
            addr: s as u64,
            len: 16,
            device_writes: false,
        };
        for k in 0..nseg {
            let off = k as u32 * seg;
            bufs[1 + k] = Buffer {
                addr: data + u64::from(off),
                len: seg.min(len - off),
                device_writes: writes,
            };
        }
        bufs[1 + nseg] = Buffer {
            // SAFETY: only the address is taken.
            addr: unsafe { core::ptr::addr_of!((*s).status) } as u64,
            len: 1,
            device_writes: true,
        };
        // SAFETY: the header and status are the slot's; the data is the caller's (see above).
        let head = unsafe { q.add(&bufs[..nseg + 2]) }?;
        debug_assert_eq!(head, id);
        Some(head)
    }

    /// Posts a chain of descriptors written as given (malformed on purpose), with the slot of
    /// its head as header (`hdr`) and status; `status_at`/`hdr_at` in `descs` are replaced by
    /// those addresses. Returns the head.
    ///
    /// # Safety
    /// As [`SplitQueue::add_raw`]: every address must be one the device may touch.
    pub unsafe fn post_raw(
        &mut self,
        qi: usize,
        hdr: [u8; 16],
        descs: &mut [RawDesc],
    ) -> Option<u16> {
        let q = &mut self.queues[qi].q;
        let id = q.next_free()?;
        let s = slot(qi, id);
        // SAFETY: as in `post`.
        unsafe {
            core::ptr::addr_of_mut!((*s).hdr).write(hdr);
            core::ptr::addr_of_mut!((*s).status).write_volatile(S_UNSET);
        }
        for d in descs.iter_mut() {
            if d.addr == HDR_AT {
                d.addr = s as u64;
            } else if d.addr == STATUS_AT {
                // SAFETY: only the address is taken.
                d.addr = unsafe { core::ptr::addr_of!((*s).status) } as u64;
            }
        }
        // SAFETY: the caller's promise.
        unsafe { q.add_raw(descs) }
    }

    /// Publishes what was posted on queue `qi` and kicks it if the device wants it.
    pub fn kick(&mut self, qi: usize) {
        let e = self.event_idx;
        let q = &mut self.queues[qi];
        if q.q.publish_need_kick(e) {
            self.kicks += 1;
            self.t.notify(q.notify, q.index);
        }
    }

    /// Publishes and kicks queue `qi` whatever the device asked.
    pub fn kick_always(&mut self, qi: usize) {
        let q = &mut self.queues[qi];
        q.q.publish();
        self.kicks += 1;
        self.t.notify(q.notify, q.index);
    }

    /// The next finished request of queue `qi`: (head, used length, status byte).
    pub fn reap(&mut self, qi: usize) -> Result<Option<(u16, u32, u8)>, &'static str> {
        let Some((head, len)) = self.queues[qi].q.pop_used()? else {
            return Ok(None);
        };
        // SAFETY: the device returned the chain; its slot is the driver's again.
        let status = unsafe { core::ptr::addr_of!((*slot(qi, head)).status).read_volatile() };
        Ok(Some((head, len, status)))
    }

    /// Interrupts taken on queue `qi`'s vector so far.
    pub fn irqs(qi: usize) -> u64 {
        irq::count(QUEUE_VECTOR + qi.min(MAX_QUEUES - 1) as u8)
    }
}

/// Placeholders in [`BlkDev::post_raw`]'s descriptors: the head's header and status byte.
pub const HDR_AT: u64 = 0xffff_ffff_ffff_0001;
pub const STATUS_AT: u64 = 0xffff_ffff_ffff_0002;
