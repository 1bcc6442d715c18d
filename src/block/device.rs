//! The virtio-blk device (virtio 1.2 §5.2) on a raw image: N request queues, one worker thread
//! and one engine (io_uring, or the thread pool) per queue.
//!
//! Features offered: VERSION_1, SIZE_MAX, SEG_MAX, BLK_SIZE (512), FLUSH, EVENT_IDX,
//! RING_INDIRECT_DESC; RO for a read-only disk, else DISCARD and WRITE_ZEROES (one segment per
//! request); MQ with more than one queue. Without MQ only queue 0 is used.
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::config::{DiskConfig, EngineKind};
use super::counters::QueueCounters;
use super::engine::Engine;
use super::image::{Image, ImageError};
use super::pool::Pool;
use super::queue::{Active, BlkQueue};
use super::request::{Limits, SECTOR_SIZE};
use super::uring::Uring;
use super::worker::{self, TOKEN_KICK};
use crate::net::chain::RamMap;
use crate::net::used::UsedRing;
use crate::seccomp::SeccompMode;
use crate::trace::timeline::Timeline;
use crate::virtio::{
    feature, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// The virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of each request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments in one request (the queue size less the header and the status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most bytes in one data segment.
pub const SIZE_MAX: u32 = 128 << 10;
/// What DISCARD and WRITE_ZEROES take: sectors per segment, one segment, 4 KiB granules.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 23;
pub const DISCARD_ALIGN_SECTORS: u32 = 8;
/// Device configuration up to `unused1` (virtio 1.2 §5.2.4).
const CONFIG_LEN: usize = 60;
/// How long a reset or stop waits for requests in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("virtio-blk {name}: {got} engines for {want} queues")]
    Engines {
        name: String,
        got: usize,
        want: usize,
    },
    #[error("virtio-blk: epoll or eventfd: {0}")]
    Io(std::io::Error),
    #[error("disk {name}: io_uring: {err}")]
    Uring { name: String, err: std::io::Error },
    #[error("disk {name}: cannot start the thread pool: {err}")]
    Pool { name: String, err: std::io::Error },
    #[error("cannot start a virtio-blk worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("virtio-blk worker: {0}")]
    Seccomp(String),
    #[error("the virtio-blk workers are already running")]
    AlreadyStarted,
}

/// What the device, its workers and the API share.
pub(crate) struct Shared {
    /// The image path (messages, thread names, maps).
    pub name: String,
    pub cfg: DiskConfig,
    /// The open, locked image (None for an in-memory backend).
    image: Option<Image>,
    pub capacity: u64,
    pub queues: Vec<BlkQueue>,
    /// The queues' ioeventfds (notify=ioeventfd), polled by the workers.
    kicks: OnceLock<Vec<EventFd>>,
    pub quit: AtomicBool,
    threads: Mutex<Vec<worker::Worker>>,
    /// Queues the driver uses; 0 while not activated.
    used_queues: AtomicUsize,
    /// The engine the queues use ("io_uring", "thread pool", "memory").
    engine: Mutex<&'static str>,
    stray_kicks: AtomicU64,
    /// `--trace`: the timeline (from the interrupt handle at the first activation).
    timeline: OnceLock<Arc<Timeline>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn kick_evt(&self, q: usize) -> Option<&EventFd> {
        self.kicks.get().and_then(|k| k.get(q))
    }

    pub fn timeline(&self) -> Option<&Arc<Timeline>> {
        self.timeline.get()
    }

    /// Queue `q` was kicked `count` times: serve it on this thread.
    pub fn kick(&self, q: usize, count: u64, flow: u64) {
        let used = self.used_queues.load(Ordering::Acquire);
        if q >= used {
            self.stray_kicks.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queues[q].kick(count, flow);
    }

    /// Gives each queue its engine: io_uring (or, when the kernel refuses it and the config
    /// allows, the thread pool, saying so in one line), or the thread pool.
    fn make_engines(&self, mode: SeccompMode) -> Result<(), BlkError> {
        let Some(image) = &self.image else {
            return Ok(());
        };
        let fd = image.file.as_raw_fd();
        let mut kind = self.cfg.engine;
        for (i, q) in self.queues.iter().enumerate() {
            let mut st = q.lock();
            if st.io.engine.is_some() {
                continue;
            }
            let engine: Box<dyn Engine> = loop {
                match kind {
                    EngineKind::Auto | EngineKind::Uring => {
                        match Uring::new(fd, u32::from(QUEUE_SIZE)) {
                            Ok(u) => break Box::new(u),
                            Err(err) if kind == EngineKind::Uring => {
                                return Err(BlkError::Uring {
                                    name: self.name.clone(),
                                    err,
                                })
                            }
                            Err(err) => {
                                eprintln!(
                                    "trapvisor: disk {}: io_uring unavailable ({err}); using a thread pool",
                                    self.name
                                );
                                kind = EngineKind::Pool;
                            }
                        }
                    }
                    EngineKind::Pool => {
                        let name = format!("blk{i}");
                        match Pool::new(fd, &name, mode) {
                            Ok(p) => break Box::new(p),
                            Err(err) => {
                                return Err(BlkError::Pool {
                                    name: self.name.clone(),
                                    err,
                                })
                            }
                        }
                    }
                }
            };
            *lock(&self.engine) = engine.name();
            st.io.engine = Some(engine);
        }
        Ok(())
    }

    pub fn counters(&self) -> Vec<QueueCounters> {
        self.queues.iter().map(BlkQueue::counters).collect()
    }
}

/// Starts, stops and reads a [`Blk`] from outside (the VMM, tests, the fuzz target).
#[derive(Clone)]
pub struct BlkHandle {
    shared: Arc<Shared>,
}

impl BlkHandle {
    /// Makes each queue's engine and starts one worker per queue; they end when `stop`
    /// becomes readable or at [`BlkHandle::stop`]. Each installs the seccomp filter of
    /// `mode` first.
    pub fn start(&self, stop: &EventFd, mode: SeccompMode) -> Result<(), BlkError> {
        let mut threads = lock(&self.shared.threads);
        if !threads.is_empty() {
            return Err(BlkError::AlreadyStarted);
        }
        self.shared.make_engines(mode)?;
        *threads = worker::start(&self.shared, stop, mode)?;
        Ok(())
    }

    /// Ends the workers (after the requests in flight complete) and joins them.
    pub fn stop(&self) {
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        worker::stop_all(&self.shared, threads);
    }

    pub fn workers(&self) -> usize {
        lock(&self.shared.threads).len()
    }

    /// Each queue's counters.
    pub fn counters(&self) -> Vec<QueueCounters> {
        self.shared.counters()
    }

    /// What a worker does when queue `q`'s engine has completions, run on this thread (for
    /// drivers of the device without workers: tests, the fuzz target).
    pub fn engine_ready(&self, q: usize) {
        if let Some(queue) = self.shared.queues.get(q) {
            queue.completed();
        }
    }

    /// The engine in use.
    pub fn engine(&self) -> &'static str {
        *lock(&self.shared.engine)
    }

    pub fn path(&self) -> &str {
        &self.shared.name
    }
}

/// A virtio-blk device.
pub struct Blk {
    shared: Arc<Shared>,
    features: u64,
    acked: u64,
    queue_sizes: Vec<u16>,
    readonly: bool,
}

impl Blk {
    /// Opens and locks the image of `cfg`. The engines are made when the workers start.
    pub fn new(cfg: &DiskConfig) -> Result<Blk, BlkError> {
        let image = Image::open(cfg)?;
        Blk::build(cfg, Some(image), None, 0)
    }

    /// A device on engines of one's choosing, one per queue, over an image of `capacity`
    /// sectors (tests and fuzzing; `cfg.path` only names it).
    pub fn with_engines(
        cfg: &DiskConfig,
        capacity: u64,
        engines: Vec<Box<dyn Engine>>,
    ) -> Result<Blk, BlkError> {
        if engines.len() != usize::from(cfg.queues) {
            return Err(BlkError::Engines {
                name: cfg.path.display().to_string(),
                got: engines.len(),
                want: usize::from(cfg.queues),
            });
        }
        Blk::build(cfg, None, Some(engines), capacity)
    }

    fn build(
        cfg: &DiskConfig,
        image: Option<Image>,
        engines: Option<Vec<Box<dyn Engine>>>,
        capacity: u64,
    ) -> Result<Blk, BlkError> {
        let n = usize::from(cfg.queues.max(1));
        let capacity = image.as_ref().map_or(capacity, |i| i.capacity);
        let direct_align = image.as_ref().and_then(|i| i.direct_align);
        // Engines of one's choosing (tests, fuzzing) take every request.
        let holes = image.as_ref().is_none_or(|i| i.holes);
        let mut queues = Vec::with_capacity(n);
        let mut engine_name = "none";
        let mut engines = engines.map(Vec::into_iter);
        for i in 0..n {
            let q = BlkQueue::new(i, cfg.serial_bytes(), direct_align).map_err(BlkError::Io)?;
            q.epoll
                .ctl(
                    ControlOperation::Add,
                    q.wake.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, worker::TOKEN_WAKE),
                )
                .map_err(BlkError::Io)?;
            if let Some(e) = engines.as_mut().and_then(Iterator::next) {
                engine_name = e.name();
                q.lock().io.engine = Some(e);
            }
            queues.push(q);
        }
        let mut features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_RING_F_INDIRECT_DESC);
        if cfg.readonly {
            features |= feature(VIRTIO_BLK_F_RO);
        } else if holes {
            features |= feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        if n > 1 {
            features |= feature(VIRTIO_BLK_F_MQ);
        }
        Ok(Blk {
            shared: Arc::new(Shared {
                name: cfg.path.display().to_string(),
                cfg: cfg.clone(),
                image,
                capacity,
                queues,
                kicks: OnceLock::new(),
                quit: AtomicBool::new(false),
                threads: Mutex::new(Vec::new()),
                used_queues: AtomicUsize::new(0),
                engine: Mutex::new(engine_name),
                stray_kicks: AtomicU64::new(0),
                timeline: OnceLock::new(),
            }),
            features,
            acked: 0,
            queue_sizes: vec![QUEUE_SIZE; n],
            readonly: cfg.readonly,
        })
    }

    pub fn handle(&self) -> BlkHandle {
        BlkHandle {
            shared: self.shared.clone(),
        }
    }

    /// Sectors.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |at: usize, b: &[u8]| c[at..at + b.len()].copy_from_slice(b);
        put(0, &self.shared.capacity.to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(34, &(self.queue_sizes.len() as u16).to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes());
        put(44, &DISCARD_ALIGN_SECTORS.to_le_bytes());
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes());
        put(56, &[1]);
        c
    }

    fn limits(&self) -> Limits {
        let has = |bit: u32| self.acked & feature(bit) != 0;
        Limits {
            capacity: self.shared.capacity,
            readonly: self.readonly,
            discard: has(VIRTIO_BLK_F_DISCARD),
            write_zeroes: has(VIRTIO_BLK_F_WRITE_ZEROES),
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_segments: 1,
        }
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        self.handle().stop();
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
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

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, SCSI (as QEMU's virtio-blk-pci).
        (0x01, 0x00, 0x00)
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
        for (q, e) in evts.iter().enumerate() {
            let ev = EpollEvent::new(EventSet::IN, TOKEN_KICK);
            if let Err(err) =
                self.shared.queues[q]
                    .epoll
                    .ctl(ControlOperation::Add, e.as_raw_fd(), ev)
            {
                log::warn!("{}: queue {q} kick: epoll: {err}", self.shared.name);
                for (q, e) in evts.iter().enumerate().take(q) {
                    let _ = self.shared.queues[q].epoll.ctl(
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
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        let n = if self.acked & feature(VIRTIO_BLK_F_MQ) != 0 {
            queues.len()
        } else {
            1
        };
        let timeline = interrupt.timeline();
        if let Some(tl) = &timeline {
            let _ = self.shared.timeline.set(tl.clone());
        }
        let limits = self.limits();
        for (i, queue) in queues.into_iter().enumerate().take(n) {
            let mut st = self.shared.queues[i].lock();
            st.io.timeline = timeline.clone();
            if !queue.ready() {
                continue;
            }
            st.active = Some(Active {
                used: UsedRing::new(&queue, &mem),
                ram: RamMap::new(&mem),
                mem: mem.clone(),
                queue,
                index: i as u16,
                interrupt: interrupt.clone(),
                limits,
            });
        }
        self.shared.used_queues.store(n, Ordering::Release);
        Ok(())
    }

    fn reset(&mut self) {
        self.shared.used_queues.store(0, Ordering::Release);
        for q in &self.shared.queues {
            q.reset();
        }
        // No request of the old driver may still write guest memory once this returns.
        for q in &self.shared.queues {
            if !q.drain(DRAIN_LIMIT) {
                log::warn!(
                    "{}: queue {}: requests still in flight after a reset",
                    self.shared.name,
                    q.index
                );
            }
        }
        self.acked = 0;
    }

    fn process_queue(&mut self, queue: usize) -> Result<(), DeviceError> {
        if queue >= self.queue_sizes.len() {
            return Err(DeviceError::NoQueue(queue));
        }
        if self.shared.used_queues.load(Ordering::Acquire) == 0 {
            return Err(DeviceError::NotActivated);
        }
        // notify=exit: the kick is served here, on the vCPU thread, inside the exit (as QEMU
        // does with ioeventfd=off): pop, check, submit, and what completed within the
        // submission (a read from the page cache) is in the used ring before the vCPU runs
        // again. What completes later reaches the worker through the engine's eventfd. No
        // second thread has to wake: on a host where that wakeup lands on the vCPU's CPU, it
        // costs more than the I/O (see `cargo bench --bench blk`).
        worker::kick(&self.shared, queue, 1, "mmio exit");
        Ok(())
    }

    fn describe(&self) -> String {
        let c = self.shared.counters();
        let sum = |f: fn(&QueueCounters) -> u64| c.iter().map(f).sum::<u64>();
        format!(
            "image={} {} capacity={} sectors queues={}/{} engine={} requests={} read={}B written={}B errors={} irqs={}",
            self.shared.name,
            self.shared.cfg.mode(),
            self.shared.capacity,
            self.shared.used_queues.load(Ordering::Acquire),
            self.queue_sizes.len(),
            *lock(&self.shared.engine),
            sum(QueueCounters::total),
            sum(|c| c.read_bytes),
            sum(|c| c.written_bytes),
            sum(|c| c.io_errors + c.refused.iter().sum::<u64>()),
            sum(|c| c.interrupts),
        )
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .shared
            .counters()
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.list(i))
            .collect();
        v.push((
            "stray_kicks".into(),
            self.shared.stray_kicks.load(Ordering::Relaxed),
        ));
        v
    }
}
