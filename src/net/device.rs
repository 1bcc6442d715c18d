//! The virtio-net device (virtio 1.2 §5.1) over a TAP: N queue pairs (receiveqN, transmitqN)
//! and a control queue, one TAP queue and one worker thread per pair.
//!
//! Queue layout: `rx0, tx0, rx1, tx1, ..., rx(N-1), tx(N-1), ctrl`. Which queue is which
//! depends on what the driver negotiated: without MQ only pair 0 exists and the control
//! queue is queue 2 (§5.1.2); the roles are fixed at DRIVER_OK.
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::NetBackend;
use super::chain::RamMap;
use super::config::{format_mac, NetConfig};
use super::counters::NetCounters;
use super::ctrl::{CtrlActive, CtrlState, GUEST_OFFLOAD_FEATURES};
use super::header::{RX_BIG_LEN, RX_SMALL_LEN};
use super::hold::TxHold;
use super::pair::{ActivePair, Pair, PairState, TOKEN_WAKE};
use super::tap::{offload_from_features, Tap, TapError};
use super::used::UsedRing;
use super::vhost::{Ring, VhostError, VhostPair};
use super::worker;
use crate::seccomp::SeccompMode;
use crate::trace::timeline::Timeline;
use crate::virtio::{
    feature, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
    VIRTIO_F_VERSION_1, VIRTIO_ID_NET, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Size of each receive and transmit queue.
pub const QUEUE_SIZE: u16 = 256;
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// The MTU the device config announces.
pub const MTU: u16 = 1500;
/// Device config: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("virtio-net {name}: {got} backends for {want} queue pairs")]
    Backends {
        name: String,
        got: usize,
        want: usize,
    },
    #[error("virtio-net: epoll: {0}")]
    Epoll(std::io::Error),
    #[error("virtio-net: eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("virtio-net: txhold timer: {0}")]
    Timer(std::io::Error),
    #[error("cannot start a virtio-net worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("virtio-net worker: {0}")]
    Seccomp(String),
    #[error("the virtio-net workers are already running")]
    AlreadyStarted,
    #[error(transparent)]
    Vhost(#[from] VhostError),
    #[error("virtio-net {0}: vhost=on needs the VM's memory (Net::open)")]
    VhostWithoutMemory(String),
}

/// What the device, its workers and the control queue share.
pub(crate) struct Shared {
    /// The TAP name (for messages and thread names).
    pub name: String,
    pub pairs: Vec<Pair>,
    pub ctrl: Mutex<CtrlState>,
    /// One eventfd per queue (notify=ioeventfd), polled by the workers.
    kicks: OnceLock<Vec<EventFd>>,
    pub quit: AtomicBool,
    link_up: AtomicBool,
    /// Queue pairs the negotiated features use; 0 while not activated.
    used_pairs: AtomicUsize,
    /// The control queue's index, or usize::MAX.
    ctrl_index: AtomicUsize,
    /// For config-change interrupts (link down).
    config_irq: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Offloads may be given to the guest (`offload=on`).
    offload: bool,
    threads: Mutex<Vec<worker::Worker>>,
    tap_gone: AtomicU64,
    tap_config_errors: AtomicU64,
    stray_kicks: AtomicU64,
    /// `--trace`: the VM's timeline (from the interrupt handle at the first activation).
    timeline: OnceLock<Arc<Timeline>>,
    /// vhost=on: queues whose kick eventfds were taken out of the workers' epoll sets while
    /// vhost-net waits on them.
    parked: Mutex<Vec<usize>>,
    vhost: AtomicBool,
}

impl Shared {
    pub fn kick_evt(&self, q: usize) -> Option<&EventFd> {
        self.kicks.get().and_then(|k| k.get(q))
    }

    /// Queue `q` was kicked `count` times: run its handler here, for trace flow `flow`.
    /// `exit`: on the vCPU thread, which the guest waits on (notify=exit).
    pub fn kick(&self, q: usize, count: u64, flow: u64, exit: bool) {
        let used = self.used_pairs.load(Ordering::Acquire);
        if used == 0 {
            return;
        }
        if q == self.ctrl_index.load(Ordering::Acquire) {
            let mut ctrl = lock(&self.ctrl);
            ctrl.counters.kicks += count;
            if let Err(e) = ctrl.process(self) {
                log::debug!("{}: control queue: {e}", self.name);
            }
            return;
        }
        let p = q / 2;
        if p >= used {
            self.stray_kicks.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if q.is_multiple_of(2) {
            self.pairs[p].kick_rx(count, flow);
        } else if exit {
            self.pairs[p].kick_tx_exit(flow);
        } else {
            self.pairs[p].kick_tx(count, flow);
        }
    }

    /// The `--trace` timeline, once a driver activated the device on a traced VM.
    pub fn timeline(&self) -> Option<&Arc<Timeline>> {
        self.timeline.get()
    }

    /// Pair `p`'s TAP fd is ready.
    pub fn tap_ready(&self, p: usize, events: EventSet, flow: u64) {
        if self.pairs[p].tap_ready(events, flow) {
            self.tap_gone.fetch_add(1, Ordering::Relaxed);
            // Tell the driver the link went down.
            if self.link_up.swap(false, Ordering::SeqCst) {
                if let Some(irq) = lock(&self.config_irq).as_ref() {
                    let _ = irq.trigger(VirtioInterruptType::Config);
                }
            }
        }
    }

    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: pairs `0..n` carry traffic, the others' TAP queues
    /// are detached.
    pub fn set_active_pairs(&self, n: usize) -> bool {
        let mut ok = true;
        for pair in &self.pairs {
            let enabled = pair.index < n;
            let mut st = pair.lock();
            if pair.index > 0 && st.attached != enabled {
                match pair.backend.set_queue_enabled(enabled) {
                    Ok(()) => st.attached = enabled,
                    Err(e) => {
                        log::warn!("{}: {e}", pair.backend.describe());
                        self.tap_config_errors.fetch_add(1, Ordering::Relaxed);
                        ok = false;
                    }
                }
            }
            if let Some(a) = st.active.as_mut() {
                a.rx_enabled = enabled;
            }
            pair.sync_poll(&mut st);
            if enabled {
                // Frames may have waited on a queue that was off.
                drop(st);
                pair.kick_rx(0, 0);
            }
        }
        ok
    }

    /// TUNSETOFFLOAD for the guest offload features `features` (any other bits ignored).
    pub fn set_offload(&self, features: u64) -> bool {
        let flags = if self.offload {
            offload_from_features(features & GUEST_OFFLOAD_FEATURES)
        } else {
            0
        };
        // Offloads belong to the TAP; queue 0 is always attached.
        match self.pairs[0].backend.set_offload(flags) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("{}: {e}", self.name);
                self.tap_config_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The worker whose epoll set waits on queue `q`'s kick: pair p's rx/tx to worker p, the
    /// control queue (or any past the pairs) to worker 0.
    fn worker_of(&self, q: usize) -> usize {
        if q / 2 >= self.pairs.len() {
            0
        } else {
            q / 2
        }
    }

    /// Takes queue `q`'s kick eventfd out of (`park`) or back into its worker's epoll set.
    fn park_kick(&self, q: usize, park: bool) {
        let Some(evt) = self.kick_evt(q) else {
            return;
        };
        let epoll = &self.pairs[self.worker_of(q)].epoll;
        let r = if park {
            epoll.ctl(
                ControlOperation::Delete,
                evt.as_raw_fd(),
                EpollEvent::default(),
            )
        } else {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, q as u64),
            )
        };
        match r {
            Ok(()) if park => lock(&self.parked).push(q),
            Ok(()) => {}
            Err(e) => log::warn!("{}: queue {q} kick: epoll: {e}", self.name),
        }
    }

    /// Every pair's vhost-net stops (device reset, VM stop); with `unpark` (a reset: the
    /// workers go on) the parked kicks go back to the workers' epoll sets.
    fn stop_vhost(&self, unpark: bool) {
        for pair in &self.pairs {
            if let Some(v) = pair.lock().vhost.as_mut() {
                v.stop();
            }
        }
        if unpark {
            let parked = std::mem::take(&mut *lock(&self.parked));
            for q in parked {
                self.park_kick(q, false);
            }
        }
    }

    pub fn counters(&self) -> NetCounters {
        NetCounters {
            pairs: self
                .pairs
                .iter()
                .map(|p| {
                    let st = p.lock();
                    let mut c = st.counters;
                    if let Some(v) = &st.vhost {
                        c.vhost.running = u64::from(v.running());
                        c.vhost.starts = v.starts;
                        c.vhost.stops = v.stops;
                        c.vhost.rx_base = v.last_base[0];
                        c.vhost.tx_base = v.last_base[1];
                    }
                    c
                })
                .collect(),
            ctrl: lock(&self.ctrl).counters,
            tap_gone: self.tap_gone.load(Ordering::Relaxed),
            tap_config_errors: self.tap_config_errors.load(Ordering::Relaxed),
            stray_kicks: self.stray_kicks.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts, stops and reads a [`Net`] from outside (the VMM, the API), while the device
/// itself sits behind its transport.
#[derive(Clone)]
pub struct NetHandle {
    /// (worker.rs runs a worker's steps through it, for drivers without worker threads.)
    pub(super) shared: Arc<Shared>,
}

impl NetHandle {
    /// Starts one worker thread per queue pair. They end when `stop` becomes readable (it is
    /// polled, never read) or at [`NetHandle::stop`]; each installs the Worker seccomp
    /// filter of `mode` first.
    pub fn start(&self, stop: &EventFd, mode: SeccompMode) -> Result<(), NetError> {
        let mut threads = lock(&self.shared.threads);
        if !threads.is_empty() {
            return Err(NetError::AlreadyStarted);
        }
        *threads = worker::start(&self.shared, stop, mode)?;
        Ok(())
    }

    /// Ends the worker threads and joins them; vhost-net lets go of the rings.
    pub fn stop(&self) {
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        worker::stop_all(&self.shared, threads);
        // The workers are gone: nothing to give the kicks back to (and the main thread, which
        // stops the VM, may not touch epoll sets under its seccomp filter).
        self.shared.stop_vhost(false);
    }

    /// Worker threads started and not yet joined.
    pub fn workers(&self) -> usize {
        lock(&self.shared.threads).len()
    }

    pub fn counters(&self) -> NetCounters {
        self.shared.counters()
    }

    pub fn tap_name(&self) -> &str {
        &self.shared.name
    }
}

/// A virtio-net device.
pub struct Net {
    shared: Arc<Shared>,
    mac: [u8; 6],
    features: u64,
    acked: u64,
    queue_sizes: Vec<u16>,
}

impl Net {
    /// The device of `cfg` for a VM with RAM `mem`: with `vhost=on`, one `/dev/vhost-net` per
    /// pair first (a host without it fails here, before any TAP is made), then the TAP.
    pub fn open(cfg: &NetConfig, mem: &GuestMemoryMmap) -> Result<Net, NetError> {
        if !cfg.vhost {
            return Net::new(cfg);
        }
        let vhost = (0..cfg.queues)
            .map(|_| VhostPair::open(mem))
            .collect::<Result<Vec<_>, _>>()?;
        let mut net = Net::open_taps(cfg)?;
        // Ring features vhost-net cannot serve are not offered.
        net.features &= !vhost[0].missing(net.features);
        for (pair, v) in net.shared.pairs.iter().zip(vhost) {
            pair.lock().vhost = Some(v);
        }
        net.shared.vhost.store(true, Ordering::Release);
        Ok(net)
    }

    /// Opens (or creates) the TAP of `cfg` with one queue per pair (`vhost=on`: see
    /// [`Net::open`]).
    pub fn new(cfg: &NetConfig) -> Result<Net, NetError> {
        if cfg.vhost {
            return Err(NetError::VhostWithoutMemory(cfg.tap.clone()));
        }
        Net::open_taps(cfg)
    }

    fn open_taps(cfg: &NetConfig) -> Result<Net, NetError> {
        let taps = Tap::open_queues(&cfg.tap, usize::from(cfg.queues))?;
        let backends = taps
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn NetBackend>)
            .collect();
        Net::with_backends(cfg, backends)
    }

    /// A device on backends of one's choosing, one per queue pair (`cfg.tap` only names it).
    pub fn with_backends(
        cfg: &NetConfig,
        backends: Vec<Box<dyn NetBackend>>,
    ) -> Result<Net, NetError> {
        let n = usize::from(cfg.queues);
        if backends.len() != n || n == 0 {
            return Err(NetError::Backends {
                name: cfg.tap.clone(),
                got: backends.len(),
                want: n,
            });
        }
        let mut pairs = Vec::with_capacity(n);
        for (i, b) in backends.into_iter().enumerate() {
            let pair = Pair::new(i, b, cfg.txhold_us).map_err(NetError::Epoll)?;
            pair.epoll
                .ctl(
                    ControlOperation::Add,
                    pair.wake.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_WAKE),
                )
                .map_err(NetError::Epoll)?;
            pairs.push(pair);
        }
        let mut features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_NET_F_MAC)
            | feature(VIRTIO_NET_F_STATUS)
            | feature(VIRTIO_NET_F_MTU)
            | feature(VIRTIO_NET_F_MRG_RXBUF)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_NET_F_CTRL_VQ);
        if cfg.offload {
            features |= [
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
            .fold(0, |f, b| f | feature(b));
        }
        if n > 1 {
            features |= feature(VIRTIO_NET_F_MQ);
        }
        let mut queue_sizes = vec![QUEUE_SIZE; 2 * n];
        queue_sizes.push(CTRL_QUEUE_SIZE);
        Ok(Net {
            shared: Arc::new(Shared {
                name: cfg.tap.clone(),
                pairs,
                ctrl: Mutex::new(CtrlState::default()),
                kicks: OnceLock::new(),
                quit: AtomicBool::new(false),
                timeline: OnceLock::new(),
                link_up: AtomicBool::new(true),
                used_pairs: AtomicUsize::new(0),
                ctrl_index: AtomicUsize::new(usize::MAX),
                config_irq: Mutex::new(None),
                offload: cfg.offload,
                threads: Mutex::new(Vec::new()),
                tap_gone: AtomicU64::new(0),
                tap_config_errors: AtomicU64::new(0),
                stray_kicks: AtomicU64::new(0),
                parked: Mutex::new(Vec::new()),
                vhost: AtomicBool::new(false),
            }),
            mac: cfg.mac(),
            features,
            acked: 0,
            queue_sizes,
        })
    }

    /// A handle to start, stop and read the device from outside.
    pub fn handle(&self) -> NetHandle {
        NetHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn counters(&self) -> NetCounters {
        self.shared.counters()
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link(&self) -> &'static str {
        ["down", "up"][usize::from(self.shared.link_up.load(Ordering::SeqCst))]
    }

    /// Queue pairs.
    pub fn pairs(&self) -> usize {
        self.shared.pairs.len()
    }

    /// Hands pair `p`'s rings to its vhost-net: their kicks leave the worker's epoll set.
    fn start_vhost(
        &self,
        p: usize,
        st: &mut PairState,
        mem: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<(), NetError> {
        let (rx, tx) = (2 * p, 2 * p + 1);
        let kicks = self.shared.kicks.get();
        let (Some(rx_kick), Some(tx_kick)) =
            (kicks.and_then(|k| k.get(rx)), kicks.and_then(|k| k.get(tx)))
        else {
            return Err(VhostError::Ioctl {
                op: "VHOST_SET_VRING_KICK",
                err: "the queues have no ioeventfd".into(),
            }
            .into());
        };
        let irqfd = |q: usize| {
            interrupt
                .irqfd(VirtioInterruptType::Queue(q as u16))
                .ok_or(VhostError::NoIrqfd(q as u16))
        };
        let (rx_call, tx_call) = (irqfd(rx)?, irqfd(tx)?);
        let PairState { active, vhost, .. } = st;
        let (Some(a), Some(v)) = (active.as_ref(), vhost.as_mut()) else {
            return Ok(());
        };
        self.shared.park_kick(rx, true);
        self.shared.park_kick(tx, true);
        let rings = [
            Ring {
                queue: &a.rxq,
                kick: rx_kick,
                call: rx_call,
            },
            Ring {
                queue: &a.txq,
                kick: tx_kick,
                call: tx_call,
            },
        ];
        v.start(a.acked, mem, rings, self.shared.pairs[p].backend.fd())?;
        Ok(())
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.shared.link_up.load(Ordering::SeqCst) {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&(self.pairs() as u16).to_le_bytes());
        c[10..12].copy_from_slice(&MTU.to_le_bytes());
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.handle().stop();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn take_notify_events(&mut self, events: &[EventFd]) -> bool {
        if events.len() != self.queue_sizes.len() || self.shared.kicks.get().is_some() {
            return false;
        }
        let Ok(evts) = events
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
        else {
            return false;
        };
        let last_pair = self.pairs() - 1;
        // rx/tx of pair p to worker p; the control queue (last) to worker 0.
        let worker = |q: usize| if q / 2 > last_pair { 0 } else { q / 2 };
        for (q, e) in evts.iter().enumerate() {
            let ev = EpollEvent::new(EventSet::IN, q as u64);
            let epoll = &self.shared.pairs[worker(q)].epoll;
            if let Err(err) = epoll.ctl(ControlOperation::Add, e.as_raw_fd(), ev) {
                log::warn!("{}: queue {q} kick: epoll: {err}", self.shared.name);
                // Leave them all to the event loop.
                for (q, e) in evts.iter().enumerate().take(q) {
                    let _ = self.shared.pairs[worker(q)].epoll.ctl(
                        ControlOperation::Delete,
                        e.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
                return false;
            }
        }
        self.shared.kicks.set(evts).is_ok()
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let n = self.pairs();
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        let acked = self.acked;
        let has = |bit: u32| acked & feature(bit) != 0;
        let pairs = if has(VIRTIO_NET_F_MQ) { n } else { 1 };
        let ctrl = has(VIRTIO_NET_F_CTRL_VQ).then_some(2 * pairs);
        let gso = [
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
        ]
        .into_iter()
        .any(has);
        let rx_need = if gso { RX_BIG_LEN } else { RX_SMALL_LEN };
        let mut queues: Vec<Option<Queue>> = queues.into_iter().map(Some).collect();
        // What the guest can receive; it may change it later (GUEST_OFFLOADS_SET).
        self.shared.set_offload(acked);
        *lock(&self.shared.config_irq) = Some(interrupt.clone());
        let timeline = interrupt.timeline();
        if let Some(tl) = &timeline {
            let _ = self.shared.timeline.set(tl.clone());
        }
        if let Some(ci) = ctrl {
            if let Some(queue) = queues[ci].take() {
                let mut c = lock(&self.shared.ctrl);
                c.active = Some(CtrlActive {
                    used: UsedRing::new(&queue, &mem),
                    ram: RamMap::new(&mem),
                    mem: mem.clone(),
                    queue,
                    index: ci as u16,
                    interrupt: interrupt.clone(),
                    acked,
                    max_pairs: pairs as u16,
                });
            }
        }
        for (p, pair) in self.shared.pairs.iter().enumerate() {
            let mut st = pair.lock();
            st.rx.clear();
            st.timeline = timeline.clone();
            // Until VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET only pair 0 carries traffic (§5.1.6.5.5).
            let enabled = p == 0;
            if p > 0 && st.attached != enabled {
                match pair.backend.set_queue_enabled(enabled) {
                    Ok(()) => st.attached = enabled,
                    Err(e) => {
                        log::warn!("{}: {e}", pair.backend.describe());
                        self.shared
                            .tap_config_errors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if p < pairs {
                let (Some(rxq), Some(txq)) = (queues[2 * p].take(), queues[2 * p + 1].take())
                else {
                    continue;
                };
                st.active = Some(ActivePair {
                    rx_used: UsedRing::new(&rxq, &mem),
                    ram: RamMap::new(&mem),
                    tx_used: UsedRing::new(&txq, &mem),
                    rxq,
                    txq,
                    mem: mem.clone(),
                    rx_index: (2 * p) as u16,
                    tx_index: (2 * p + 1) as u16,
                    interrupt: interrupt.clone(),
                    acked,
                    mrg: has(VIRTIO_NET_F_MRG_RXBUF),
                    rx_need,
                    tx_blocked: false,
                    rx_stalled: false,
                    rx_enabled: enabled,
                    vhost: st.vhost.is_some(),
                    hold: TxHold::default(),
                    hold_trace: Default::default(),
                });
                if st.vhost.is_some() {
                    if let Err(e) = self.start_vhost(p, &mut st, &mem, interrupt.as_ref()) {
                        st.active = None;
                        pair.sync_poll(&mut st);
                        drop(st);
                        self.reset();
                        return Err(ActivateError::Other(e.to_string()));
                    }
                }
            }
            pair.sync_poll(&mut st);
        }
        self.shared
            .ctrl_index
            .store(ctrl.unwrap_or(usize::MAX), Ordering::Release);
        self.shared.used_pairs.store(pairs, Ordering::Release);
        Ok(())
    }

    fn reset(&mut self) {
        self.shared.used_pairs.store(0, Ordering::Release);
        self.shared.ctrl_index.store(usize::MAX, Ordering::Release);
        self.shared.stop_vhost(true);
        // Under each lock: once this returns no worker holds anything of the old driver.
        for pair in &self.shared.pairs {
            let mut st = pair.lock();
            st.active = None;
            st.rx.clear();
            pair.sync_poll(&mut st);
        }
        lock(&self.shared.ctrl).active = None;
        *lock(&self.shared.config_irq) = None;
        self.acked = 0;
    }

    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError> {
        if queue >= self.queue_sizes.len() {
            return Err(DeviceError::NoQueue(queue));
        }
        if self.shared.used_pairs.load(Ordering::Acquire) == 0 {
            return Err(DeviceError::NotActivated);
        }
        // notify=exit: the transport started a trace flow for this exit; the run continues it.
        let flow = lock(&self.shared.config_irq)
            .as_ref()
            .map_or(0, |i| i.current_flow());
        self.shared.kick(queue, 1, flow, true);
        Ok(())
    }

    fn kick_waiter(&self, queue: usize) -> Option<&'static str> {
        let vhost = self.shared.vhost.load(Ordering::Acquire);
        let used = self.shared.used_pairs.load(Ordering::Acquire);
        (vhost && queue < 2 * used).then_some("vhost-net")
    }

    fn describe(&self) -> String {
        let c = self.counters();
        let t = c.total();
        if self.shared.vhost.load(Ordering::Acquire) {
            let running = c.pairs.iter().filter(|p| p.vhost.running > 0).count();
            return format!(
                "tap={} mac={} link={} pairs={}/{} vhost=on ({running} pair(s) served by the kernel's vhost-net: frames, kicks and interrupts bypass trapvisor)",
                self.shared.name,
                format_mac(&self.mac),
                self.link(),
                self.shared.used_pairs.load(Ordering::Acquire),
                self.pairs(),
            );
        }
        format!(
            "tap={} mac={} link={} pairs={}/{} rx={}/{}B tx={}/{}B drops={} irqs={}",
            self.shared.name,
            format_mac(&self.mac),
            self.link(),
            self.shared.used_pairs.load(Ordering::Acquire),
            self.pairs(),
            t.rx.frames,
            t.rx.bytes,
            t.tx.frames,
            t.tx.bytes,
            t.rx.drops.total() + t.tx.drops.total(),
            t.rx.interrupts + t.tx.interrupts,
        )
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.shared.counters().list()
    }
}
