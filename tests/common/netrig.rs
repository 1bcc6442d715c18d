//! A virtio-net device on a real TAP in a throwaway network namespace (or on a socket pair),
//! driven by the in-memory driver of `virtq.rs`: what the device-level tests share.
//!
//! Needs, in the test crate: `mod netns; mod virtq; mod frames;` (from tests/common).
#![allow(dead_code)]
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trapvisor::net::header::{VnetHeader, HDR_LEN};
use trapvisor::net::{Net, NetBackend, NetConfig, NetCounters, NetHandle};
use trapvisor::seccomp::SeccompMode;
use trapvisor::virtio::{InterruptError, VirtioDevice, VirtioInterrupt, VirtioInterruptType};
use virtio_bindings::virtio_net::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::netns::NetNs;
use crate::virtq::{Arena, Buf, DriverQueue, QUEUE_SPAN};

pub const HOST_IP: [u8; 4] = [10, 0, 2, 1];
pub const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
pub const WAIT: Duration = Duration::from_secs(5);
pub const RAM: u64 = 64 << 20;
/// Where the queues go; buffers come after.
const QUEUES_BASE: u64 = 0x10_0000;
const ARENA_BASE: u64 = 0x100_0000;

pub fn f(bit: u32) -> u64 {
    1u64 << bit
}

/// VERSION_1 and the ring features every test wants.
pub fn base_features() -> u64 {
    f(32) | f(VIRTIO_NET_F_MAC) | f(VIRTIO_NET_F_STATUS) | f(VIRTIO_NET_F_CTRL_VQ)
}

pub fn event_idx() -> u64 {
    f(trapvisor::virtio::VIRTIO_RING_F_EVENT_IDX)
}

/// Every offload a Linux guest negotiates.
pub fn offload_features() -> u64 {
    [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    ]
    .into_iter()
    .fold(0, |a, b| a | f(b))
}

/// Interrupts, counted per queue and for config changes.
#[derive(Default)]
pub struct Irqs {
    pub queues: Mutex<Vec<u64>>,
    pub config: AtomicU64,
}

impl Irqs {
    pub fn queue(&self, q: usize) -> u64 {
        self.queues.lock().unwrap().get(q).copied().unwrap_or(0)
    }
}

impl VirtioInterrupt for Irqs {
    fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError> {
        match kind {
            VirtioInterruptType::Config => {
                self.config.fetch_add(1, Ordering::SeqCst);
            }
            VirtioInterruptType::Queue(q) => {
                let mut v = self.queues.lock().unwrap();
                let q = usize::from(q);
                if v.len() <= q {
                    v.resize(q + 1, 0);
                }
                v[q] += 1;
            }
        }
        Ok(())
    }
}

/// One end of a `SOCK_DGRAM` socket pair as a TAP queue: frames keep their boundaries, and
/// the peer decides when there is room (EAGAIN) and what arrives.
pub struct SocketBackend(pub UnixDatagram);

impl SocketBackend {
    /// (backend, the peer end for the test).
    pub fn pair() -> (SocketBackend, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (SocketBackend(a), b)
    }
}

fn retry(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) {
        Ok(None)
    } else {
        Err(e)
    }
}

impl NetBackend for SocketBackend {
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller vouches for the iovecs.
        retry(unsafe { libc::readv(self.fd(), iovs.as_ptr(), iovs.len() as i32) })
    }
    unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller vouches for the iovecs.
        retry(unsafe { libc::writev(self.fd(), iovs.as_ptr(), iovs.len() as i32) })
    }
    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn set_queue_enabled(&self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "socket pair".into()
    }
}

/// A received frame: its header, the bytes after it, and the chains it took.
#[derive(Debug, Clone)]
pub struct Frame {
    pub hdr: VnetHeader,
    pub data: Vec<u8>,
    pub chains: usize,
}

pub struct Opts {
    pub queues: u16,
    /// Features the driver accepts (masked by what the device offers).
    pub features: u64,
    pub offload: bool,
    /// Kicks by eventfd to the workers (notify=ioeventfd); else `process_queue` (exit).
    pub ioeventfd: bool,
    pub queue_size: u16,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            queues: 1,
            features: base_features() | event_idx() | f(VIRTIO_NET_F_MRG_RXBUF),
            offload: true,
            ioeventfd: true,
            queue_size: 256,
        }
    }
}

/// Fields drop in order: the device (and its workers) before the namespace.
pub struct Rig {
    pub net: Net,
    pub mem: &'static GuestMemoryMmap,
    pub handle: NetHandle,
    pub irqs: Arc<Irqs>,
    pub kicks: Vec<EventFd>,
    pub stop: EventFd,
    pub queues: Vec<DriverQueue<'static>>,
    pub arena: Arena,
    pub acked: u64,
    pub ioeventfd: bool,
    pub mac: [u8; 6],
    /// Per RX queue: used entries of a frame not complete yet.
    partial: Vec<VecDeque<(u32, Vec<Buf>)>>,
    /// Per pair: frames complete but not yet looked at.
    ready: Vec<VecDeque<Frame>>,
    pub ns: Option<NetNs>,
}

/// Skips (None, with a message) when no namespace can be made.
pub fn netns(tag: &str) -> Option<NetNs> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: /dev/net/tun does not exist");
        return None;
    }
    NetNs::new(tag)
}

/// Gives `dev` the host address and MAC, brings it up, and tells the kernel the guest's MAC.
pub fn configure(ns: &NetNs, dev: &str, guest_mac: [u8; 6]) {
    let host_mac = crate::frames::mac_text(&HOST_MAC);
    ns.ip(&["link", "set", "dev", dev, "address", &host_mac])
        .unwrap();
    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", dev]).unwrap();
    ns.ip(&["link", "set", "dev", dev, "up"]).unwrap();
    let gm = crate::frames::mac_text(&guest_mac);
    ns.ip(&[
        "neigh",
        "replace",
        "10.0.2.15",
        "lladdr",
        &gm,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
    .unwrap();
}

impl Rig {
    /// A device on TAP `name` in a new namespace, addressed as 10.0.2.1 (host side).
    pub fn tap(tag: &str, name: &str, opts: Opts) -> Option<Rig> {
        let ns = netns(tag)?;
        let mut cfg = NetConfig::new(name);
        cfg.queues = opts.queues;
        cfg.offload = opts.offload;
        let net = ns.exec(|| Net::new(&cfg)).expect("open the TAP");
        configure(&ns, name, cfg.mac());
        Some(Rig::start(net, Some(ns), opts))
    }

    /// A device on socket pairs; returns the peers.
    pub fn sockets(opts: Opts) -> (Rig, Vec<UnixDatagram>) {
        let mut cfg = NetConfig::new("sock");
        cfg.queues = opts.queues;
        cfg.offload = opts.offload;
        let (backends, peers): (Vec<_>, Vec<_>) = (0..opts.queues)
            .map(|_| {
                let (b, p) = SocketBackend::pair();
                (Box::new(b) as Box<dyn NetBackend>, p)
            })
            .unzip();
        let net = Net::with_backends(&cfg, backends).unwrap();
        (Rig::start(net, None, opts), peers)
    }

    pub fn start(mut net: Net, ns: Option<NetNs>, opts: Opts) -> Rig {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
        ));
        let nq = net.queue_max_sizes().len();
        let queues: Vec<DriverQueue<'static>> = (0..nq)
            .map(|q| {
                let size = if q == nq - 1 { 64 } else { opts.queue_size };
                DriverQueue::new(mem, QUEUES_BASE + QUEUE_SPAN * q as u64, size)
            })
            .collect();
        let kicks: Vec<EventFd> = (0..nq)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        if opts.ioeventfd {
            assert!(net.take_notify_events(&kicks));
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let handle = net.handle();
        handle.start(&stop, SeccompMode::Off).unwrap();
        let acked = opts.features & net.features();
        net.ack_features(acked);
        let ev = acked & event_idx() != 0;
        let irqs = Arc::new(Irqs::default());
        net.activate(
            mem.clone(),
            queues.iter().map(|q| q.queue(ev)).collect(),
            irqs.clone(),
        )
        .unwrap();
        let mac = net.mac();
        Rig {
            ns,
            mem,
            net,
            handle,
            irqs,
            kicks,
            stop,
            partial: (0..nq).map(|_| VecDeque::new()).collect(),
            ready: (0..nq).map(|_| VecDeque::new()).collect(),
            queues,
            arena: Arena::new(ARENA_BASE, RAM),
            acked,
            ioeventfd: opts.ioeventfd,
            mac,
        }
    }

    pub fn pairs(&self) -> usize {
        (self.queues.len() - 1) / 2
    }

    pub fn ctrl_index(&self) -> usize {
        if self.acked & f(VIRTIO_NET_F_MQ) != 0 {
            self.queues.len() - 1
        } else {
            2
        }
    }

    /// Queue `q` was given new buffers: kick it.
    pub fn kick(&mut self, q: usize) {
        if self.ioeventfd {
            self.kicks[q].write(1).unwrap();
        } else {
            let _ = self.net.process_queue(q);
        }
    }

    /// Sends `frame` on pair `p` with header `hdr`: the header and the frame in two buffers.
    pub fn send(&mut self, p: usize, hdr: VnetHeader, frame: &[u8]) -> u16 {
        let a = self.arena.alloc((HDR_LEN + frame.len()) as u64);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(a))
            .unwrap();
        let b = a + HDR_LEN as u64;
        self.mem.write_slice(frame, GuestAddress(b)).unwrap();
        let head = self.queues[2 * p + 1].add(&[
            Buf::read(a, HDR_LEN as u32),
            Buf::read(b, frame.len() as u32),
        ]);
        self.queues[2 * p + 1].publish();
        self.kick(2 * p + 1);
        head
    }

    /// Adds a raw chain to TX queue `p` (already written) and kicks.
    pub fn send_chain(&mut self, p: usize, bufs: &[Buf]) -> u16 {
        let head = self.queues[2 * p + 1].add(bufs);
        self.queues[2 * p + 1].publish();
        self.kick(2 * p + 1);
        head
    }

    /// Gives RX queue `p` `n` buffers of `size` bytes and kicks.
    pub fn post_rx(&mut self, p: usize, n: usize, size: u32) {
        for _ in 0..n {
            let a = self.arena.alloc(u64::from(size));
            self.queues[2 * p].add(&[Buf::write(a, size)]);
        }
        self.queues[2 * p].publish();
        self.kick(2 * p);
    }

    /// Reads `bufs` back, `len` bytes of them.
    pub fn read_bufs(&self, bufs: &[Buf], len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for b in bufs {
            let n = left.min(b.len as usize);
            let mut v = vec![0u8; n];
            self.mem.read_slice(&mut v, GuestAddress(b.addr)).unwrap();
            out.extend(v);
            left -= n;
        }
        out
    }

    /// Frames that arrived on RX queue `p` so far (a frame spanning chains comes whole).
    pub fn received(&mut self, p: usize) -> Vec<Frame> {
        self.collect(p);
        self.ready[p].drain(..).collect()
    }

    fn collect(&mut self, p: usize) {
        let q = 2 * p;
        for (_, len, bufs) in self.queues[q].take_used() {
            self.partial[q].push_back((len, bufs));
        }
        while let Some((len, bufs)) = self.partial[q].front().cloned() {
            if len == 0 {
                // A chain the device gave back unused.
                self.partial[q].pop_front();
                continue;
            }
            let first = self.read_bufs(&bufs, len);
            let mut raw = [0u8; HDR_LEN];
            raw.copy_from_slice(&first[..HDR_LEN]);
            let hdr = VnetHeader::from_bytes(&raw);
            let k = usize::from(hdr.num_buffers.max(1));
            if self.partial[q].len() < k {
                break;
            }
            let mut data = first[HDR_LEN..].to_vec();
            self.partial[q].pop_front();
            for _ in 1..k {
                let (len, bufs) = self.partial[q].pop_front().unwrap();
                data.extend(self.read_bufs(&bufs, len));
            }
            self.ready[p].push_back(Frame {
                hdr,
                data,
                chains: k,
            });
        }
    }

    /// Waits for a frame on any RX queue that `want` accepts; other frames are dropped.
    pub fn recv_any(&mut self, mut want: impl FnMut(&Frame) -> bool) -> Option<(usize, Frame)> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            for p in 0..self.pairs() {
                self.collect(p);
                while let Some(fr) = self.ready[p].pop_front() {
                    if want(&fr) {
                        return Some((p, fr));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    pub fn counters(&self) -> NetCounters {
        self.net.counters()
    }

    /// Waits until `cond` holds on the counters.
    pub fn wait_counters(&self, mut cond: impl FnMut(&NetCounters) -> bool) -> bool {
        wait_for(|| cond(&self.counters()))
    }
}

pub fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// A header with nothing asked (no checksum, no GSO).
pub fn plain() -> VnetHeader {
    VnetHeader::default()
}
