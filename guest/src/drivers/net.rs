//! A virtio-net driver (virtio 1.x over PCI, one or two queue pairs, completions by MSI-X).
//!
//! [`NetDev::init`] runs at CPL0: negotiation (VERSION_1 required; MAC, MRG_RXBUF, EVENT_IDX
//! and STATUS taken when offered; MQ and CTRL_VQ too when more than one pair is asked for),
//! MSI-X entry 0 = configuration changes ([`CONFIG_VECTOR`]), then per pair `p` entry 1 + 2p =
//! its receive queue (`RX_VECTOR + 2p`) and 2 + 2p = its transmit queue (`TX_VECTOR + 2p`)
//! (with fewer than three table entries, one pair and everything on entry 0 →
//! [`RX_VECTOR`]), every queue as large as the device allows up to 256, and every receive
//! buffer of every pair posted; with two pairs, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET on the control
//! queue (no vector: its used ring is polled) after DRIVER_OK. Everything after that (receive,
//! transmit, kicks, interrupt requests) is plain memory access plus the MMIO write of a kick,
//! so it runs at CPL3, where the workloads of `net` run.
//!
//! Buffers are fixed: descriptor id `i` of a queue always carries buffer `i` of that queue
//! (2 KiB each, the 12-byte `virtio_net_hdr_v1` first, then the frame), and every chain is one
//! descriptor. A received frame spread over several buffers (MRG_RXBUF, `num_buffers` > 1:
//! never with 2 KiB buffers and a 1500-byte MTU) is dropped, its buffers reposted.
use crate::arch::{cpu, irq, paging, time};
use crate::msix::Msix;
use crate::pci::{self, Bdf, Function};
use crate::sync::Global;
use crate::virtio::queue::{Buffer, QueueMemory, SplitQueue};
use crate::virtio::{self, Transport};

/// PCI device ID of a modern virtio-net.
pub const DEVICE_ID: u16 = virtio::MODERN_DEVICE_BASE + 1;

pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_MQ: u64 = 1 << 22;
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;
/// What the driver accepts when offered.
const SUPPORTED: u64 = virtio::F_VERSION_1 | F_MAC | F_MRG_RXBUF | F_EVENT_IDX | F_STATUS;

/// Names of the feature bits `net.info` prints.
pub const FEATURE_NAMES: [(u64, &str); 14] = [
    (F_CSUM, "CSUM"),
    (F_GUEST_CSUM, "GUEST_CSUM"),
    (F_MTU, "MTU"),
    (F_MAC, "MAC"),
    (F_GUEST_TSO4, "GUEST_TSO4"),
    (F_HOST_TSO4, "HOST_TSO4"),
    (F_MRG_RXBUF, "MRG_RXBUF"),
    (F_STATUS, "STATUS"),
    (F_CTRL_VQ, "CTRL_VQ"),
    (F_MQ, "MQ"),
    (F_INDIRECT_DESC, "INDIRECT_DESC"),
    (F_EVENT_IDX, "EVENT_IDX"),
    (virtio::F_VERSION_1, "VERSION_1"),
    (1 << 33, "ACCESS_PLATFORM"),
];

pub const CONFIG_VECTOR: u8 = 0x41;
/// Receive queue of pair `p`: `RX_VECTOR + 2p`; transmit: `TX_VECTOR + 2p`.
pub const RX_VECTOR: u8 = 0x42;
pub const TX_VECTOR: u8 = 0x43;

/// Bytes of `struct virtio_net_hdr_v1` in front of every frame.
pub const HDR_LEN: usize = 12;
/// Bytes of each buffer (header + frame).
pub const BUF_LEN: usize = 2048;
/// Largest frame a buffer holds.
pub const MAX_FRAME: usize = BUF_LEN - HDR_LEN;
/// Queue pairs the driver can drive (`net.pairs`).
pub const MAX_PAIRS: usize = 2;
const MAX_QUEUE: u16 = 256;
/// A locally administered MAC for a device that offers none.
const FALLBACK_MAC: [u8; 6] = [0x02, 0x74, 0x76, 0x00, 0x00, 0x01];
/// virtio_net_ctrl_hdr class and command of VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_OK: u8 = 0;
/// How long the device may take to answer a control command.
const CTRL_TIMEOUT_US: u64 = 500_000;

type Buffers = [[u8; BUF_LEN]; MAX_QUEUE as usize];

/// Queue memory: RX/TX of pair 0, RX/TX of pair 1, then the control queue.
#[link_section = ".noinit.net"]
static QUEUES: Global<[QueueMemory; 2 * MAX_PAIRS + 1]> =
    Global::new([const { QueueMemory::new() }; 2 * MAX_PAIRS + 1]);
#[link_section = ".noinit.net"]
static RX_BUFS: Global<[Buffers; MAX_PAIRS]> =
    Global::new([[[0; BUF_LEN]; MAX_QUEUE as usize]; MAX_PAIRS]);
#[link_section = ".noinit.net"]
static TX_BUFS: Global<[Buffers; MAX_PAIRS]> =
    Global::new([[[0; BUF_LEN]; MAX_QUEUE as usize]; MAX_PAIRS]);
/// The control command (4 bytes) and its ack (at byte 8).
#[link_section = ".noinit.net"]
static CTRL_BUF: Global<[u8; 16]> = Global::new([0; 16]);

/// Counters of one device.
#[derive(Clone, Copy, Default)]
pub struct Stats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames dropped by the driver (spread over several buffers, or too short).
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Times a frame found no free transmit descriptor at first.
    pub tx_full: u64,
    pub rx_kicks: u64,
    pub tx_kicks: u64,
    /// Frames received and queued per queue pair.
    pub rx_by_pair: [u64; MAX_PAIRS],
    pub tx_by_pair: [u64; MAX_PAIRS],
}

/// A received frame: its pair, its buffer id, the frame (without the virtio-net header).
pub type Received = (usize, u16, &'static [u8]);

/// One receive/transmit queue pair.
pub struct Pair {
    pub rx: SplitQueue,
    pub tx: SplitQueue,
    pub rx_notify: u64,
    pub tx_notify: u64,
}

/// The device, set up. Lives in `net`'s state; used at CPL3 by the workloads.
pub struct NetDev {
    pub t: Transport,
    pub bdf: Bdf,
    pub mac: [u8; 6],
    pub offered: u64,
    pub accepted: u64,
    /// The pairs; only the first `npairs` are set up (the others are empty stand-ins).
    pub pairs: [Pair; MAX_PAIRS],
    pub npairs: usize,
    /// The pair [`NetDev::tx_buffer`] and [`NetDev::tx_queue`] use.
    pub tx_pair: usize,
    pub rx_max: u16,
    pub tx_max: u16,
    pub msix_table: u16,
    /// MSI-X entries in use (1 + 2 per pair, or 1 when the table is smaller than 3).
    pub msix_used: u16,
    pub event_idx: bool,
    pub stats: Stats,
}

fn buf_addr(bufs: &Global<[Buffers; MAX_PAIRS]>, pair: usize, id: u16) -> u64 {
    (bufs.get() as *mut u8 as u64)
        + (pair * core::mem::size_of::<Buffers>()) as u64
        + u64::from(id) * BUF_LEN as u64
}

fn queue_mem(i: usize) -> *mut QueueMemory {
    (QUEUES.get() as *mut QueueMemory).wrapping_add(i)
}

/// The largest power of two up to `n` (and up to 256).
fn pow2_floor(n: u16) -> u16 {
    let n = n.min(MAX_QUEUE);
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

impl NetDev {
    /// Sets `f` up from scratch (also after a NEEDS_RESET) with up to `want_pairs` queue pairs
    /// (more than one only when the device offers MQ and a control queue): see the module
    /// comment. CPL0.
    pub fn init(f: &Function, want_pairs: usize) -> Result<NetDev, &'static str> {
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
        let want_pairs = want_pairs.clamp(1, MAX_PAIRS);
        let mq = if want_pairs > 1 { F_MQ | F_CTRL_VQ } else { 0 };
        let (offered, accepted) = t.negotiate(SUPPORTED | mq)?;
        let event_idx = accepted & F_EVENT_IDX != 0;
        let mq_ok = accepted & (F_MQ | F_CTRL_VQ) == F_MQ | F_CTRL_VQ;
        let max_pairs = if mq_ok {
            usize::from(t.device_read16(8).unwrap_or(1))
        } else {
            1
        };
        let mut npairs = want_pairs.min(max_pairs).max(1);
        // 1 + 2 entries per pair; with fewer, one pair (and everything on entry 0 below 3).
        if usize::from(msix.table_size) < 1 + 2 * npairs {
            npairs = 1;
        }

        msix.enable(f.bdf, true);
        let msix_used = if msix.table_size >= 3 {
            msix.route(f, 0, CONFIG_VECTOR)?;
            for p in 0..npairs as u16 {
                msix.route(f, 1 + 2 * p, RX_VECTOR + 2 * p as u8)?;
                msix.route(f, 2 + 2 * p, TX_VECTOR + 2 * p as u8)?;
            }
            t.set_config_vector(0)?;
            1 + 2 * npairs as u16
        } else {
            msix.route(f, 0, RX_VECTOR)?;
            t.set_config_vector(virtio::NO_VECTOR)?;
            1
        };
        msix.enable(f.bdf, false);

        let rx_max = t.queue_max_size(0);
        let tx_max = t.queue_max_size(1);
        let mut pairs = [const { None }; MAX_PAIRS];
        for (p, slot) in pairs.iter_mut().enumerate() {
            let (rxq, txq) = (2 * p as u16, 2 * p as u16 + 1);
            let live = p < npairs;
            let (rx_size, tx_size) = if live {
                (
                    pow2_floor(t.queue_max_size(rxq)),
                    pow2_floor(t.queue_max_size(txq)),
                )
            } else {
                (2, 2)
            };
            if rx_size < 2 || tx_size < 2 {
                return Err("device lacks a receive or transmit queue of a pair");
            }
            // SAFETY: the queue memory is this driver's alone, and the device gets it only
            // through setup_queue; a device being set up again was reset by `negotiate` first.
            let (mut rx, tx) = unsafe {
                (
                    SplitQueue::new(queue_mem(2 * p), rx_size)?,
                    SplitQueue::new(queue_mem(2 * p + 1), tx_size)?,
                )
            };
            let (mut rx_notify, mut tx_notify) = (0, 0);
            if live {
                let (rx_entry, tx_entry) = if msix_used > 1 {
                    (1 + 2 * p as u16, 2 + 2 * p as u16)
                } else {
                    (0, 0)
                };
                rx_notify = t.setup_queue(rxq, &rx, rx_entry)?;
                tx_notify = t.setup_queue(txq, &tx, tx_entry)?;
                for id in 0..rx_size {
                    // SAFETY: receive buffer `id` of pair `p` is the driver's; it goes to the
                    // device until it comes back in the used ring. The free list hands out 0,
                    // 1, 2, ... at first.
                    let head = unsafe {
                        rx.add(&[Buffer {
                            addr: buf_addr(&RX_BUFS, p, id),
                            len: BUF_LEN as u32,
                            device_writes: true,
                        }])
                    };
                    if head != Some(id) {
                        return Err("receive queue handed out descriptors out of order");
                    }
                }
                rx.publish();
            }
            *slot = Some(Pair {
                rx,
                tx,
                rx_notify,
                tx_notify,
            });
        }
        let ctrl = if mq_ok {
            let index = 2 * max_pairs as u16;
            let size = pow2_floor(t.queue_max_size(index)).min(4);
            // SAFETY: as for the pairs' queues.
            let q = unsafe { SplitQueue::new(queue_mem(2 * MAX_PAIRS), size)? };
            let notify = t.setup_queue(index, &q, virtio::NO_VECTOR)?;
            Some((q, notify, index))
        } else {
            None
        };
        t.driver_ok()?;
        if let Some((mut q, notify, index)) = ctrl {
            set_pairs(&t, &mut q, notify, index, npairs as u16)?;
        }

        let mut mac = FALLBACK_MAC;
        if accepted & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = t
                    .device_read8(i as u32)
                    .ok_or("device configuration shorter than the MAC")?;
            }
        }
        let [Some(p0), Some(p1)] = pairs else {
            return Err("queue pair set-up incomplete");
        };
        let mut dev = NetDev {
            t,
            bdf: f.bdf,
            mac,
            offered,
            accepted,
            pairs: [p0, p1],
            npairs,
            tx_pair: 0,
            rx_max,
            tx_max,
            msix_table: msix.table_size,
            msix_used,
            event_idx,
            stats: Stats::default(),
        };
        dev.interrupts(false);
        dev.kick_rx();
        Ok(dev)
    }

    /// Device status (`STATUS` feature: bit 0 link up), when negotiated.
    pub fn link_status(&self) -> Option<u16> {
        (self.accepted & F_STATUS != 0)
            .then(|| self.t.device_read16(6))
            .flatten()
    }

    /// `max_virtqueue_pairs`, when the device offers MQ.
    pub fn max_queue_pairs(&self) -> Option<u16> {
        (self.offered & F_MQ != 0)
            .then(|| self.t.device_read16(8))
            .flatten()
    }

    /// Whether the device status says NEEDS_RESET (an MMIO read: fine at CPL3).
    pub fn needs_reset(&self) -> bool {
        self.t.status() & virtio::STATUS_NEEDS_RESET != 0
    }

    /// The pairs in use.
    pub fn live(&self) -> &[Pair] {
        &self.pairs[..self.npairs]
    }

    fn live_mut(&mut self) -> &mut [Pair] {
        &mut self.pairs[..self.npairs]
    }

    /// Asks for interrupts on the next completion of every queue, or for none.
    pub fn interrupts(&mut self, on: bool) {
        let event_idx = self.event_idx;
        for p in self.live_mut() {
            p.rx.want_interrupts(on, event_idx);
            p.tx.want_interrupts(on, event_idx);
        }
    }

    /// Whether any queue has completions not yet consumed.
    pub fn pending(&self) -> bool {
        self.rx_pending() || self.tx_pending()
    }

    /// Whether any receive queue has completions not yet consumed.
    pub fn rx_pending(&self) -> bool {
        self.live().iter().any(|p| p.rx.used_pending() != 0)
    }

    /// Whether any transmit queue has completions not yet consumed.
    pub fn tx_pending(&self) -> bool {
        self.live().iter().any(|p| p.tx.used_pending() != 0)
    }

    /// Transmit chains the device holds, over every pair.
    pub fn tx_outstanding(&self) -> u32 {
        self.live()
            .iter()
            .map(|p| u32::from(p.tx.outstanding()))
            .sum()
    }

    /// Publishes reposted receive buffers and kicks every receive queue that wants it.
    pub fn kick_rx(&mut self) {
        let event_idx = self.event_idx;
        for (i, p) in self.pairs[..self.npairs].iter_mut().enumerate() {
            if p.rx.publish_need_kick(event_idx) {
                self.stats.rx_kicks += 1;
                self.t.notify(p.rx_notify, 2 * i as u16);
            }
        }
    }

    /// Publishes queued frames and kicks every transmit queue that wants it.
    pub fn kick_tx(&mut self) {
        let event_idx = self.event_idx;
        for (i, p) in self.pairs[..self.npairs].iter_mut().enumerate() {
            if p.tx.publish_need_kick(event_idx) {
                self.stats.tx_kicks += 1;
                self.t.notify(p.tx_notify, 2 * i as u16 + 1);
            }
        }
    }

    /// Publishes and kicks transmit queue 0 whatever the device asked (for malformed chains
    /// on purpose).
    pub fn kick_tx_always(&mut self) {
        self.pairs[0].tx.publish();
        self.notify_tx();
    }

    /// Kicks transmit queue 0 without publishing anything (the available index stays as the
    /// caller left it).
    pub fn notify_tx(&mut self) {
        self.stats.tx_kicks += 1;
        self.t.notify(self.pairs[0].tx_notify, 1);
    }

    /// The next received frame on any pair (without the virtio-net header), with its pair and
    /// buffer id, or None. Give the buffer back with [`NetDev::rx_done`] when finished with
    /// the frame.
    pub fn rx_next(&mut self) -> Result<Option<Received>, &'static str> {
        for p in 0..self.npairs {
            if let Some((id, frame)) = self.rx_next_on(p)? {
                return Ok(Some((p, id, frame)));
            }
        }
        Ok(None)
    }

    /// [`NetDev::rx_next`] on pair `p` only.
    fn rx_next_on(&mut self, p: usize) -> Result<Option<(u16, &'static [u8])>, &'static str> {
        loop {
            let Some((id, len)) = self.pairs[p].rx.pop_used()? else {
                return Ok(None);
            };
            let len = len as usize;
            let base = buf_addr(&RX_BUFS, p, id) as *const u8;
            if len > BUF_LEN {
                return Err("device wrote more than a receive buffer holds");
            }
            // SAFETY: the device finished writing buffer `id` (it is in the used ring, read
            // after the index); it stays the driver's until rx_done reposts it.
            let whole = unsafe { core::slice::from_raw_parts(base, len) };
            let buffers = if whole.len() >= HDR_LEN {
                u16::from_le_bytes([whole[10], whole[11]])
            } else {
                0
            };
            let merged = self.accepted & F_MRG_RXBUF != 0;
            if len < HDR_LEN || (merged && buffers != 1) {
                // Too short, or spread over several buffers: drop it and what belongs to it.
                self.stats.rx_dropped += 1;
                self.rx_done(p, id);
                for _ in 1..buffers.min(self.pairs[p].rx.size()) {
                    match self.pairs[p].rx.pop_used()? {
                        Some((more, _)) => self.rx_done(p, more),
                        None => break,
                    }
                }
                continue;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_by_pair[p] += 1;
            self.stats.rx_bytes += (len - HDR_LEN) as u64;
            return Ok(Some((id, &whole[HDR_LEN..])));
        }
    }

    /// Reposts receive buffer `id` of pair `p` (published by [`NetDev::kick_rx`]). Popping
    /// `id` put its descriptor first on the free list, so descriptor and buffer stay paired;
    /// any free descriptor gets its own buffer in any case.
    pub fn rx_done(&mut self, p: usize, id: u16) {
        let rx = &mut self.pairs[p].rx;
        let Some(d) = rx.next_free() else {
            return;
        };
        debug_assert_eq!(d, id);
        // SAFETY: descriptor `d` is free, so receive buffer `d` of pair `p` is not with the
        // device; it goes back to the device until it returns in the used ring.
        unsafe {
            rx.add(&[Buffer {
                addr: buf_addr(&RX_BUFS, p, d),
                len: BUF_LEN as u32,
                device_writes: true,
            }]);
        }
    }

    /// Takes back every frame the device has sent, on every pair; returns how many.
    pub fn tx_reclaim(&mut self) -> Result<u32, &'static str> {
        let mut n = 0;
        for p in self.live_mut() {
            while p.tx.pop_used()?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A free transmit buffer of pair [`NetDev::tx_pair`]: its id and the frame space after
    /// the (zeroed) header. None when every descriptor is with the device.
    pub fn tx_buffer(&mut self) -> Result<Option<(u16, &'static mut [u8])>, &'static str> {
        let p = self.tx_pair.min(self.npairs - 1);
        self.tx_pair = p;
        if self.pairs[p].tx.num_free() == 0 {
            while self.pairs[p].tx.pop_used()?.is_some() {}
        }
        let Some(id) = self.pairs[p].tx.next_free() else {
            return Ok(None);
        };
        // SAFETY: descriptor `id` is free, so buffer `id` of pair `p` is not with the device.
        let whole = unsafe {
            core::slice::from_raw_parts_mut(buf_addr(&TX_BUFS, p, id) as *mut u8, BUF_LEN)
        };
        whole[..HDR_LEN].fill(0);
        Ok(Some((id, &mut whole[HDR_LEN..])))
    }

    /// Queues the frame of `len` bytes written into buffer `id` (from [`NetDev::tx_buffer`],
    /// with the same [`NetDev::tx_pair`]); it goes out at the next [`NetDev::kick_tx`].
    pub fn tx_queue(&mut self, id: u16, len: usize) {
        let p = self.tx_pair;
        // SAFETY: buffer `id` of pair `p` holds the header and frame and is the driver's until
        // the device returns descriptor `id`.
        let head = unsafe {
            self.pairs[p].tx.add(&[Buffer {
                addr: buf_addr(&TX_BUFS, p, id),
                len: (HDR_LEN + len.min(MAX_FRAME)) as u32,
                device_writes: false,
            }])
        };
        debug_assert_eq!(head, Some(id));
        self.stats.tx_frames += 1;
        self.stats.tx_by_pair[p] += 1;
        self.stats.tx_bytes += len as u64;
    }

    /// The address of transmit buffer `id` (for malformed chains built by hand).
    pub fn tx_buf_addr(id: u16) -> u64 {
        buf_addr(&TX_BUFS, 0, id)
    }

    /// Interrupts taken on this device's vectors so far: receive and transmit (every pair),
    /// configuration.
    pub fn irqs() -> (u64, u64, u64) {
        let (mut rx, mut tx) = (0, 0);
        for p in 0..MAX_PAIRS as u8 {
            rx += irq::count(RX_VECTOR + 2 * p);
            tx += irq::count(TX_VECTOR + 2 * p);
        }
        (rx, tx, irq::count(CONFIG_VECTOR))
    }

    /// Interrupts taken on pair `p`'s receive and transmit vectors so far.
    pub fn pair_irqs(p: usize) -> (u64, u64) {
        let p = p.min(MAX_PAIRS - 1) as u8;
        (irq::count(RX_VECTOR + 2 * p), irq::count(TX_VECTOR + 2 * p))
    }
}

/// Sends VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET(`pairs`) on the control queue `q` (queue `index`,
/// kicked at `notify`) and waits (bounded) for the device's ack. CPL0, after DRIVER_OK; the
/// wait polls the used ring (no interrupt: the control queue has no vector).
fn set_pairs(
    t: &Transport,
    q: &mut SplitQueue,
    notify: u64,
    index: u16,
    pairs: u16,
) -> Result<(), &'static str> {
    let buf = CTRL_BUF.get() as *mut u8;
    let p = pairs.to_le_bytes();
    // SAFETY: CTRL_BUF is this driver's; the device reads bytes 0..4 and writes byte 8 only
    // while the chain is outstanding, and this function waits for it to come back.
    let chain = unsafe {
        for (i, b) in [CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, p[0], p[1]]
            .into_iter()
            .enumerate()
        {
            buf.add(i).write_volatile(b);
        }
        buf.add(8).write_volatile(0xff);
        q.add(&[
            Buffer {
                addr: buf as u64,
                len: 4,
                device_writes: false,
            },
            Buffer {
                addr: buf as u64 + 8,
                len: 1,
                device_writes: true,
            },
        ])
    };
    if chain.is_none() {
        return Err("control queue too small for a command");
    }
    q.publish();
    t.notify(notify, index);
    let end = time::deadline_us(CTRL_TIMEOUT_US);
    loop {
        if let Some((_, len)) = q.pop_used()? {
            // SAFETY: the device returned the chain; byte 8 is ours again.
            let ack = unsafe { buf.add(8).read_volatile() };
            return if len >= 1 && ack == CTRL_OK {
                Ok(())
            } else {
                Err("device refused VQ_PAIRS_SET")
            };
        }
        if time::passed(end) {
            return Err("no answer to VQ_PAIRS_SET on the control queue");
        }
        cpu::pause();
    }
}
