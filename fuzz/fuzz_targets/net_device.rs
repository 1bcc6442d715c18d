//! The whole virtio-net device (`Net`, 1 to 3 queue pairs) on an in-memory backend per pair,
//! driven on this thread through `VirtioDevice` (features, activation, `process_queue`,
//! reset) and `NetHandle`'s `backend_ready`, `ioeventfd_kick` and `wake_ready` (what a worker
//! does when the TAP fd polls, a queue's ioeventfd fires, or a notify=exit kick hands it a
//! transmit stream), by a
//! driver model that builds TX, RX and control chains in guest RAM from the fuzz input:
//! well-formed ones and hostile ones (buffers outside RAM or across its end, loops, broken
//! NEXT, indirect tables of odd sizes or outside RAM, heads past the queue size, heads made
//! available twice, stale and bogus available indexes, malformed control commands). The
//! backends hand in frames of any length, say EAGAIN or fail when told to.
//!
//! Invariants, checked after every step: no panic; every iovec the device hands a backend lies
//! inside guest RAM (for a read, but for the device's own 64-byte overflow tail); every frame
//! written is 14 to `MAX_FRAME_LEN` bytes after a 12-byte vnet header that passes the
//! negotiated checks, and only once the transmit queue's previous chain is published (its used
//! index moved: the per-chain completion rule); every used entry names a chain the driver made available (its oldest
//! outstanding copy) and is no longer than that chain's writable bytes (TX: 0; control: the
//! ack byte, VIRTIO_NET_OK exactly when the command should succeed — VQ_PAIRS_SET within
//! 1..=max, GUEST_OFFLOADS_SET with negotiated bits only — and 0 bytes for a malformed
//! chain); the used index never runs ahead of what was made available; the counters add up
//! (every TX chain given back is a frame the backend took or a counted drop, every RX chain
//! given back is a filled buffer or a counted bad/small one, every frame a backend gave is
//! delivered or counted, every control chain is answered or counted); the backends' queue
//! attachment and offloads follow the commands acknowledged OK; the config space stays sane;
//! and once the workers go idle at the end (one more look, then the `txhold` timer), no
//! transmit interrupt stays owed.
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use trapvisor::net::header::HDR_LEN;
use trapvisor::net::tap::offload_from_features;
use trapvisor::net::{Net, NetBackend, NetConfig, NetHandle};
use trapvisor::virtio::VirtioDevice;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM and where things go in it: per queue a descriptor table, an available ring and a
/// used ring (one page each); per (queue, descriptor) a 256-byte indirect table; control
/// commands and their acks; then buffers. Writable buffers only ever lie in the last two, so
/// frames the device writes never change what the model reads back (rings, tables).
const RAM: u64 = 0x20_0000;
const QBASE: u64 = 0x1000;
const QSPAN: u64 = 0x3000;
const IND: u64 = 0x2_0000;
const IND_SPAN: u64 = 256;
const CTRL_AREA: u64 = 0x9_0000;
const CTRL_SPAN: u64 = 0x1_0000;
const BUF: u64 = 0x10_0000;
const MAX_PAIRS: usize = 3;
const MAX_QUEUES: usize = 2 * MAX_PAIRS + 1;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const OK: u8 = VIRTIO_NET_OK as u8;
const ERR: u8 = VIRTIO_NET_ERR as u8;
const GUEST_OFFLOADS: u64 = (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN)
    | (1 << VIRTIO_NET_F_GUEST_UFO);

/// A buffer or frame length: mostly up to 4 KiB, sometimes up to 70 000 bytes (past the
/// largest frame).
fn length(len: u32) -> u64 {
    u64::from(if len & 0x8000_0000 != 0 {
        len % 70_000
    } else {
        len % 4096
    })
}

fn has(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

#[path = "net_device/fake.rs"]
mod fake;
use fake::{lock, Fake, Io, Irq};
#[path = "net_device/chains.rs"]
mod chains;
use chains::split;
#[path = "net_device/input.rs"]
mod input;
use input::{DescSpec, Input, Op};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Ok,
    Err,
    /// A malformed chain: given back with length 0.
    Nothing,
}

#[derive(Debug, Clone, Copy)]
enum Cmd {
    Pairs(u16),
    Offloads(u64),
    Other,
}

/// A chain made available and not yet used.
#[derive(Debug)]
struct Sub {
    writable: u64,
    slots: Vec<u16>,
    /// Control commands: the ack byte, what it should say, what the command was.
    ack: Option<(u64, Expect, Cmd)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Rx(usize),
    Tx(usize),
    Ctrl,
    Unused,
}

/// The driver's view of one queue.
struct Dq {
    role: Role,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    /// The available index written, and the used index read.
    shadow: u16,
    used_seen: u16,
    /// Outstanding chains using each descriptor (free at 0).
    refs: Vec<u32>,
    subs: Vec<VecDeque<Sub>>,
    made_available: u64,
    used_total: u64,
}

struct Rig {
    mem: GuestMemoryMmap,
    net: Net,
    handle: NetHandle,
    ios: Vec<Arc<Mutex<Io>>>,
    mac: [u8; 6],
    npairs: usize,
    offload: bool,
    fail_config: bool,
    irq_fail: bool,
    sizes: [u16; MAX_QUEUES],
    not_ready: u8,
    acked: u64,
    used_pairs: usize,
    qs: Vec<Dq>,
    cursor: u64,
    ctrl_cursor: u64,
    /// Used entries seen, per role, over all activations.
    tx_used: [u64; MAX_PAIRS],
    rx_used: [u64; MAX_PAIRS],
    ctrl_used: u64,
    /// Control chains made available with a head past the queue size (never given back).
    ctrl_bad_heads: u64,
    /// What the backends should say: attachment per pair, offload flags.
    enabled: [bool; MAX_PAIRS],
    offloads: Option<u32>,
    /// NET_DEVICE_TRACE set: each step on stderr, to follow a reproducer.
    trace: bool,
}

impl Rig {
    fn new(input: &Input) -> Rig {
        let npairs = 1 + usize::from(input.pairs) % MAX_PAIRS;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let mut cfg = NetConfig::new("fuzz0");
        cfg.queues = npairs as u16;
        cfg.offload = input.offload;
        let mut ios = Vec::new();
        let mut backends: Vec<Box<dyn NetBackend>> = Vec::new();
        for p in 0..npairs {
            let io = Arc::new(Mutex::new(Io {
                fail_config: input.fail_config,
                enabled: true,
                ..Io::default()
            }));
            backends.push(Box::new(Fake {
                evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                ram: (host, RAM as usize),
                tx_used_idx: host + (QBASE + QSPAN * (2 * p as u64 + 1) + 0x2000 + 2) as usize,
                io: io.clone(),
            }));
            ios.push(io);
        }
        let net = Net::with_backends(&cfg, backends).unwrap();
        let mut sizes = [0u16; MAX_QUEUES];
        for (q, max) in net.queue_max_sizes().iter().enumerate() {
            sizes[q] = (1u16 << (input.sizes[q] % 9)).min(*max);
        }
        Rig {
            handle: net.handle(),
            mem,
            net,
            ios,
            mac: cfg.mac(),
            npairs,
            offload: input.offload,
            fail_config: input.fail_config,
            irq_fail: input.irq_fail,
            sizes,
            not_ready: input.not_ready,
            acked: 0,
            used_pairs: 0,
            qs: Vec::new(),
            cursor: BUF,
            ctrl_cursor: CTRL_AREA,
            tx_used: [0; MAX_PAIRS],
            rx_used: [0; MAX_PAIRS],
            ctrl_used: 0,
            ctrl_bad_heads: 0,
            enabled: [true; MAX_PAIRS],
            offloads: None,
            trace: std::env::var_os("NET_DEVICE_TRACE").is_some(),
        }
    }

    /// Negotiates `features` and activates the device on fresh rings (what DRIVER_OK does).
    fn activate(&mut self, features: u64) {
        self.net.ack_features(features);
        self.acked = features & self.net.features();
        for io in &self.ios {
            lock(io).acked = self.acked;
        }
        self.used_pairs = if has(self.acked, VIRTIO_NET_F_MQ) {
            self.npairs
        } else {
            1
        };
        let ctrl = has(self.acked, VIRTIO_NET_F_CTRL_VQ).then_some(2 * self.used_pairs);
        let event_idx = has(self.acked, trapvisor::virtio::VIRTIO_RING_F_EVENT_IDX);
        let nq = 2 * self.npairs + 1;
        let zeros = vec![0u8; (QSPAN as usize) * nq];
        self.mem.write_slice(&zeros, GuestAddress(QBASE)).unwrap();
        let mut queues = Vec::new();
        self.qs.clear();
        for q in 0..nq {
            let base = QBASE + QSPAN * q as u64;
            let size = self.sizes[q];
            let ready = self.not_ready & 0x80 == 0 || self.not_ready & (1 << q) == 0;
            let mut queue = Queue::new(self.net.queue_max_sizes()[q]).unwrap();
            if ready {
                queue.try_set_size(size).unwrap();
                queue
                    .try_set_desc_table_address(GuestAddress(base))
                    .unwrap();
                queue
                    .try_set_avail_ring_address(GuestAddress(base + 0x1000))
                    .unwrap();
                queue
                    .try_set_used_ring_address(GuestAddress(base + 0x2000))
                    .unwrap();
                queue.set_event_idx(event_idx);
                queue.set_ready(true);
            }
            queues.push(queue);
            let role = if q < 2 * self.used_pairs {
                if q % 2 == 0 {
                    Role::Rx(q / 2)
                } else {
                    Role::Tx(q / 2)
                }
            } else if Some(q) == ctrl {
                Role::Ctrl
            } else {
                Role::Unused
            };
            self.qs.push(Dq {
                role,
                size,
                ready,
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                shadow: 0,
                used_seen: 0,
                refs: vec![0; usize::from(size)],
                subs: (0..size).map(|_| VecDeque::new()).collect(),
                made_available: 0,
                used_total: 0,
            });
        }
        let irq = Arc::new(Irq {
            queues: nq,
            fail: self.irq_fail,
        });
        self.net.activate(self.mem.clone(), queues, irq).unwrap();
        // Until VQ_PAIRS_SET only pair 0 is attached; offloads follow the features.
        self.enabled = [true, false, false];
        self.offloads = Some(if self.offload {
            offload_from_features(self.acked & GUEST_OFFLOADS)
        } else {
            0
        });
    }

    fn op(&mut self, op: &Op) {
        for io in &self.ios {
            lock(io).last_write_used = None;
        }
        let nq = self.qs.len();
        let pair = |p: u8| usize::from(p) % self.used_pairs;
        match *op {
            Op::RxBuffers {
                pair: p,
                count,
                len,
                pieces,
            } => {
                let Some(q) = self.queue(Role::Rx(pair(p))) else {
                    return;
                };
                for _ in 0..count % 17 {
                    let total = length(len);
                    let a = self.buf(total);
                    self.chain(q, &split(a, total, pieces, WRITE), None);
                }
            }
            Op::TxFrame {
                pair: p,
                hdr,
                len,
                pieces,
            } => {
                let Some(q) = self.queue(Role::Tx(pair(p))) else {
                    return;
                };
                let total = (HDR_LEN as u64) + length(len);
                let a = self.buf(total);
                self.mem.write_slice(&hdr, GuestAddress(a)).unwrap();
                self.chain(q, &split(a, total, pieces, 0), None);
            }
            Op::Chain {
                queue,
                n,
                ref descs,
                ind_n,
                ind_len,
                ref ind,
            } => {
                let q = usize::from(queue) % nq;
                if self.qs[q].ready {
                    self.fuzzed_chain(q, n, descs, (ind_n, ind_len, ind));
                }
            }
            Op::Ctrl {
                class,
                cmd,
                data_len,
                ref data,
                shape,
            } => {
                self.ctrl(class, cmd, &data[..usize::from(data_len % 9)], shape);
            }
            Op::PairsSet { pairs } => {
                let (c, k) = (
                    VIRTIO_NET_CTRL_MQ as u8,
                    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
                );
                self.ctrl(c, k, &pairs.to_le_bytes(), 0);
            }
            Op::OffloadsSet { offloads } => {
                let c = VIRTIO_NET_CTRL_GUEST_OFFLOADS as u8;
                let k = VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET as u8;
                self.ctrl(c, k, &offloads.to_le_bytes(), 0);
            }
            Op::Frames {
                pair: p,
                count,
                len,
                fill,
            } => {
                let mut io = lock(&self.ios[usize::from(p) % self.npairs]);
                for _ in 0..count % 5 {
                    if io.rx.len() < 64 {
                        io.rx.push_back((length(len) as usize, fill));
                    }
                }
            }
            Op::Kick { queue } => {
                let q = usize::from(queue & 0x7f) % (nq + 1);
                if queue & 0x80 != 0 {
                    // Through the queue's ioeventfd: what its worker does.
                    self.handle.ioeventfd_kick(q);
                } else {
                    // notify=exit: on this (the vCPU's) thread; a stream it leaves to the
                    // worker is then served as the worker would.
                    let r = self.net.process_queue(q);
                    assert_eq!(r.is_ok(), q < nq, "kick of queue {q}: {r:?}");
                    self.handle.wake_ready();
                }
            }
            Op::WorkerIdle { pair: p } => {
                self.handle.worker_idle(usize::from(p) % (self.npairs + 1));
            }
            Op::HoldExpired { pair: p } => {
                self.handle.hold_expired(usize::from(p) % (self.npairs + 1));
            }
            Op::Ready { pair: p, events } => {
                let bits = [
                    EventSet::IN,
                    EventSet::OUT,
                    EventSet::ERROR,
                    EventSet::HANG_UP,
                ];
                let ev = bits
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| events & (1 << i) != 0)
                    .fold(EventSet::empty(), |a, (_, b)| a | *b);
                self.handle
                    .backend_ready(usize::from(p) % (self.npairs + 1), ev);
            }
            Op::AvailJump { queue, delta } => {
                let q = usize::from(queue) % nq;
                let dq = &self.qs[q];
                if !dq.ready {
                    return;
                }
                for _ in 0..1 + delta % dq.size {
                    let dq = &self.qs[q];
                    let at = dq.avail + 4 + 2 * u64::from(dq.shadow % dq.size);
                    let head: u16 = self.mem.read_obj(GuestAddress(at)).unwrap();
                    self.submit(q, head, None);
                }
            }
            Op::AvailGlitch { queue, delta } => {
                let q = usize::from(queue) % nq;
                let dq = &self.qs[q];
                let size = u32::from(dq.size);
                // Only while no more than the queue size are outstanding: then the device's
                // next available index is within `size` behind ours, and the bogus index more
                // than `size` ahead of it.
                if !dq.ready || dq.made_available - dq.used_total > u64::from(size) {
                    return;
                }
                let ahead = size + 1 + u32::from(delta) % (65_536 - 2 * size - 1);
                let (avail, shadow) = (dq.avail, dq.shadow);
                self.write_u16(avail + 2, shadow.wrapping_add(ahead as u16));
                self.net.process_queue(q).unwrap();
                self.write_u16(avail + 2, shadow);
            }
            Op::Head { queue, head } => {
                let q = usize::from(queue) % nq;
                let dq = &self.qs[q];
                if dq.ready {
                    let head = if head & 0x8000 != 0 {
                        head
                    } else {
                        head % (2 * dq.size)
                    };
                    self.submit(q, head, None);
                }
            }
            Op::Suppress {
                queue,
                no_interrupt,
                used_event,
            } => {
                let dq = &self.qs[usize::from(queue) % nq];
                if dq.ready {
                    let (avail, size) = (dq.avail, dq.size);
                    self.write_u16(avail, u16::from(no_interrupt));
                    self.write_u16(avail + 4 + 2 * u64::from(size), used_event);
                }
            }
            Op::Poke { offset, value } => {
                let at = BUF + u64::from(offset) % (RAM - BUF - 8);
                self.mem.write_obj(value, GuestAddress(at)).unwrap();
            }
            Op::Backend {
                pair: p,
                tx_again,
                tx_error,
                rx_error,
            } => {
                let errors = [
                    None,
                    Some(libc::EIO),
                    Some(libc::EBADFD),
                    Some(libc::EINVAL),
                ];
                let mut io = lock(&self.ios[usize::from(p) % self.npairs]);
                io.tx_again = tx_again % 4;
                io.tx_error = errors[usize::from(tx_error % 4)];
                io.rx_error = errors[usize::from(rx_error % 4)];
            }
            Op::Reset { features } => {
                self.net.reset();
                self.activate(features);
            }
            Op::ReadConfig { offset, len } => {
                let mut b = [0u8; 16];
                self.net
                    .read_config(u64::from(offset), &mut b[..usize::from(len % 17)]);
            }
        }
    }

    /// Reads the used entries the device added since the last look and checks each.
    fn scan(&mut self) {
        let mut acks = Vec::new();
        for q in 0..self.qs.len() {
            let dq = &self.qs[q];
            if !dq.ready {
                continue;
            }
            let idx: u16 = self.mem.read_obj(GuestAddress(dq.used + 2)).unwrap();
            let delta = idx.wrapping_sub(dq.used_seen);
            let outstanding = dq.made_available - dq.used_total;
            assert!(
                u64::from(delta) <= outstanding,
                "queue {q}: the used index moved by {delta} with {outstanding} chains available"
            );
            assert!(
                delta == 0 || dq.role != Role::Unused,
                "queue {q} is not in use but used"
            );
            for k in 0..delta {
                let dq = &self.qs[q];
                let at = dq.used + 4 + 8 * u64::from(dq.used_seen.wrapping_add(k) % dq.size);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                assert!(
                    id < u32::from(dq.size),
                    "queue {q}: used entry for head {id}"
                );
                if self.trace {
                    eprintln!("  used q{q} head {id} len {len}");
                }
                let dq = &mut self.qs[q];
                let Some(sub) = dq.subs[id as usize].pop_front() else {
                    panic!("queue {q}: used entry for head {id}, which is not available");
                };
                for &s in &sub.slots {
                    dq.refs[usize::from(s)] -= 1;
                }
                assert!(
                    u64::from(len) <= sub.writable,
                    "queue {q}: used length {len} for a chain of {} writable bytes",
                    sub.writable
                );
                match dq.role {
                    Role::Tx(_) => {
                        assert_eq!(len, 0, "queue {q}: a transmit chain used with a length")
                    }
                    Role::Ctrl => acks.push((len, sub.ack)),
                    _ => {}
                }
            }
            let dq = &mut self.qs[q];
            dq.used_seen = idx;
            dq.used_total += u64::from(delta);
            match dq.role {
                Role::Rx(p) => self.rx_used[p] += u64::from(delta),
                Role::Tx(p) => self.tx_used[p] += u64::from(delta),
                Role::Ctrl => self.ctrl_used += u64::from(delta),
                Role::Unused => {}
            }
        }
        for (len, ack) in acks {
            self.ctrl_ack(len, ack);
        }
    }

    fn ctrl_ack(&mut self, len: u32, ack: Option<(u64, Expect, Cmd)>) {
        assert!(len <= 1, "a control chain used with {len} bytes");
        let Some((addr, expect, cmd)) = ack else {
            return;
        };
        if expect == Expect::Nothing {
            assert_eq!(len, 0, "a malformed control chain answered");
            return;
        }
        assert_eq!(len, 1, "a control command not answered");
        let b: u8 = self.mem.read_obj(GuestAddress(addr)).unwrap();
        match expect {
            Expect::Err => assert_eq!(b, ERR, "{cmd:?} accepted"),
            _ if self.fail_config => assert!(b == OK || b == ERR, "ack {b}"),
            _ => assert_eq!(b, OK, "{cmd:?} refused"),
        }
        if b != OK {
            return;
        }
        match cmd {
            Cmd::Pairs(n) => {
                for (p, e) in self.enabled.iter_mut().enumerate() {
                    *e = p < usize::from(n);
                }
            }
            Cmd::Offloads(bits) => {
                let f = if self.offload {
                    offload_from_features(bits & GUEST_OFFLOADS)
                } else {
                    0
                };
                self.offloads = Some(f);
            }
            Cmd::Other => {}
        }
    }

    /// The counters against what the driver and the backends saw; the backends' settings;
    /// the config space.
    fn check(&self) {
        let c = self.net.counters();
        for p in 0..self.npairs {
            let io = lock(&self.ios[p]);
            let (tx, rx) = (&c.pairs[p].tx, &c.pairs[p].rx);
            assert_eq!(
                (tx.frames, tx.bytes),
                (io.sent, io.sent_bytes),
                "pair {p}: {tx:?}"
            );
            let given_back = tx.frames + tx.drops.total() - tx.drops.bad_head;
            assert_eq!(
                given_back, self.tx_used[p],
                "pair {p}: transmit chains: {tx:?}"
            );
            let given_back = rx.buffers + rx.drops.bad_chain + rx.drops.small_buffer;
            assert_eq!(
                given_back, self.rx_used[p],
                "pair {p}: receive chains: {rx:?}"
            );
            let read = rx.frames + rx.drops.truncated + rx.drops.runt;
            assert_eq!(read, io.read, "pair {p}: frames read: {rx:?}");
            if !self.fail_config {
                assert_eq!(io.enabled, self.enabled[p], "pair {p}: attachment");
            }
        }
        let answered = c.ctrl.ok + c.ctrl.err + c.ctrl.bad_chain;
        assert!(
            (self.ctrl_used..=self.ctrl_used + self.ctrl_bad_heads).contains(&answered),
            "control: {:?}, {} used, {} bad heads",
            c.ctrl,
            self.ctrl_used,
            self.ctrl_bad_heads
        );
        if !self.fail_config {
            assert_eq!(lock(&self.ios[0]).offload, self.offloads, "offloads");
        }
        let mut cfg = [0u8; 12];
        self.net.read_config(0, &mut cfg);
        assert_eq!(cfg[..6], self.mac);
        assert!(u16::from_le_bytes([cfg[6], cfg[7]]) <= 1, "status {cfg:?}");
        assert_eq!(
            usize::from(u16::from_le_bytes([cfg[8], cfg[9]])),
            self.npairs
        );
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1500);
    }
}

fuzz_target!(|input: Input| {
    let mut rig = Rig::new(&input);
    rig.activate(input.features);
    rig.check();
    for op in input.ops.iter().take(128) {
        if rig.trace {
            eprintln!("{op:?}");
        }
        rig.op(op);
        rig.scan();
        rig.check();
    }
    // The workers go idle: no transmit interrupt stays owed (`txhold`: one more look, then
    // the hold's timer).
    for p in 0..rig.npairs {
        while rig.handle.worker_idle(p) {}
        rig.handle.hold_expired(p);
        assert!(
            !rig.handle.tx_interrupt_pending(p),
            "pair {p}: a transmit interrupt left undecided"
        );
    }
    rig.check();
});
