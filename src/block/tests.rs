//! The device end to end without a VM: requests built in a guest memory by hand, on an image in
//! memory (no threads) and on a real file through io_uring and the thread pool (with workers).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::config::EngineKind;
use super::request::*;
use super::*;
use crate::seccomp::SeccompMode;
use crate::virtio::{
    feature, InterruptError, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

const SIZE: u16 = 64;
const WRITE: u16 = 2;
const NEXT: u16 = 1;
/// Data buffers live from here.
const DATA: u64 = 0x10_0000;

#[derive(Default)]
struct CountIrq(Mutex<u64>);

impl VirtioInterrupt for CountIrq {
    fn trigger(&self, _: VirtioInterruptType) -> Result<(), InterruptError> {
        *self.0.lock().unwrap() += 1;
        Ok(())
    }
}

fn rings(q: u64) -> (u64, u64, u64) {
    let base = 0x30_0000 + q * 0x3000;
    (base, base + 0x1000, base + 0x2000)
}

fn queue(q: u64) -> Queue {
    let (desc, avail, used) = rings(q);
    let mut queue = Queue::new(super::device::QUEUE_SIZE).unwrap();
    queue.try_set_size(SIZE).unwrap();
    queue
        .try_set_desc_table_address(GuestAddress(desc))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(avail))
        .unwrap();
    queue.try_set_used_ring_address(GuestAddress(used)).unwrap();
    queue.set_ready(true);
    queue
}

/// A device, its memory and the driver's side of queue 0.
struct Rig {
    dev: Blk,
    mem: GuestMemoryMmap,
    irq: Arc<CountIrq>,
    /// Next descriptor and available index to use.
    next_desc: u16,
    avail: u16,
    used_seen: u16,
}

impl Rig {
    fn new(dev: Blk, features: u64) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut dev = dev;
        dev.ack_features(features);
        let irq = Arc::new(CountIrq::default());
        let n = dev.queue_max_sizes().len() as u64;
        dev.activate(mem.clone(), (0..n).map(queue).collect(), irq.clone())
            .unwrap();
        Rig {
            dev,
            mem,
            irq,
            next_desc: 0,
            avail: 0,
            used_seen: 0,
        }
    }

    fn mem_rig(capacity: u64, readonly: bool) -> (Rig, Arc<Mutex<Vec<u8>>>) {
        let image = Arc::new(Mutex::new(vec![0u8; (capacity * 512) as usize]));
        let mut cfg = DiskConfig::new("/mem.img");
        cfg.readonly = readonly;
        let engine = MemEngine::new(image.clone()).unwrap();
        let dev = Blk::with_engines(&cfg, capacity, vec![Box::new(engine)]).unwrap();
        let all = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_BLK_F_DISCARD)
            | feature(VIRTIO_BLK_F_WRITE_ZEROES)
            | feature(VIRTIO_RING_F_EVENT_IDX);
        (Rig::new(dev, all), image)
    }

    /// Posts a chain of (addr, len, device-writable) buffers on queue 0; returns its head.
    fn post(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let (desc, avail, _) = rings(0);
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let id = (head + i as u16) % SIZE;
            let last = i + 1 == bufs.len();
            let at = desc + 16 * u64::from(id);
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            let flags = (if w { WRITE } else { 0 }) | (if last { 0 } else { NEXT });
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem
                .write_obj((id + 1) % SIZE, GuestAddress(at + 14))
                .unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % SIZE;
        let slot = avail + 4 + 2 * u64::from(self.avail % SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(avail + 2))
            .unwrap();
        head
    }

    /// A request: header at `at`, then `data` (readable for OUT-like, writable for IN-like
    /// when `data_in`), status byte after. Returns the status address.
    fn request(&mut self, t: u32, sector: u64, at: u64, data: Option<(u32, bool)>) -> u64 {
        self.request_head(t, sector, at, data).0
    }

    /// As `request`, with the chain's head.
    fn request_head(
        &mut self,
        t: u32,
        sector: u64,
        at: u64,
        data: Option<(u32, bool)>,
    ) -> (u64, u16) {
        self.mem.write_obj(t, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        let status = at + 0x800;
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let mut bufs = vec![(at, 16, false)];
        if let Some((len, data_in)) = data {
            bufs.push((DATA + at, len, data_in));
        }
        bufs.push((status, 1, true));
        (status, self.post(&bufs))
    }

    fn kick(&mut self) {
        self.dev.process_queue(0).unwrap();
        self.dev.handle().engine_ready(0);
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(rings(0).2 + 2)).unwrap()
    }

    /// Waits until the used index reaches the available index.
    fn wait_used(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.used_idx() != self.avail {
            assert!(Instant::now() < end, "requests never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.used_seen = self.avail;
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// The used length the device gave the chain headed by `head` (its latest entry).
    fn used_len(&self, head: u16) -> u32 {
        let used = rings(0).2;
        (0..self.used_idx())
            .rev()
            .map(|n| {
                let at = used + 4 + 8 * u64::from(n % SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                (id, len)
            })
            .find(|&(id, _)| id == u32::from(head))
            .map_or(u32::MAX, |(_, len)| len)
    }
}

#[test]
fn write_read_flush_get_id_discard_on_memory() {
    let (mut r, image) = Rig::mem_rig(64, false);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    r.mem
        .write_slice(&pattern, GuestAddress(DATA + 0x1000))
        .unwrap();
    let w = r.request(T_OUT, 4, 0x1000, Some((1024, false)));
    let f = r.request(T_FLUSH, 0, 0x2000, None);
    let (rd, rd_head) = r.request_head(T_IN, 4, 0x3000, Some((1024, true)));
    let (id, id_head) = r.request_head(T_GET_ID, 0, 0x4000, Some((20, true)));
    r.kick();
    r.wait_used();
    assert_eq!(
        [r.status(w), r.status(f), r.status(rd), r.status(id)],
        [S_OK; 4]
    );
    assert_eq!(&image.lock().unwrap()[4 * 512..6 * 512], &pattern[..]);
    let mut back = vec![0u8; 1024];
    r.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(back, pattern);
    assert_eq!((r.used_len(rd_head), r.used_len(id_head)), (1025, 21));
    let mut serial = [0u8; 20];
    r.mem
        .read_slice(&mut serial, GuestAddress(DATA + 0x4000))
        .unwrap();
    assert_eq!(&serial[..8], b"mem.img\0");
    // Discard sectors 4..6: zeros.
    let seg = 0x5000;
    r.mem.write_obj(4u64, GuestAddress(DATA + seg)).unwrap();
    r.mem.write_obj(2u32, GuestAddress(DATA + seg + 8)).unwrap();
    r.mem
        .write_obj(0u32, GuestAddress(DATA + seg + 12))
        .unwrap();
    let d = r.request(T_DISCARD, 0, seg, Some((16, false)));
    r.kick();
    r.wait_used();
    assert_eq!(r.status(d), S_OK);
    assert!(image.lock().unwrap()[4 * 512..6 * 512]
        .iter()
        .all(|&b| b == 0));
    let c = r.dev.handle().counters()[0];
    assert_eq!(
        (c.of(Kind::In), c.of(Kind::Out), c.of(Kind::Discard)),
        (1, 1, 1)
    );
    assert_eq!((c.read_bytes, c.written_bytes, c.inflight), (1024, 1024, 0));
    assert!(c.inflight_max >= 1);
    assert!(*r.irq.0.lock().unwrap() >= 1);
}

#[test]
fn bad_requests_get_ioerr_or_unsupp_and_the_image_is_untouched() {
    let (mut r, image) = Rig::mem_rig(8, true);
    image.lock().unwrap().fill(0x5a);
    let cases = [
        (r.request(T_OUT, 0, 0x1000, Some((512, false))), S_IOERR),
        (r.request(T_IN, 8, 0x2000, Some((512, true))), S_IOERR),
        (
            r.request(T_IN, u64::MAX, 0x3000, Some((512, true))),
            S_IOERR,
        ),
        (r.request(T_IN, 0, 0x4000, Some((100, true))), S_IOERR),
        (r.request(99, 0, 0x5000, None), S_UNSUPP),
        (r.request(T_DISCARD, 0, 0x6000, Some((16, false))), S_UNSUPP),
        (r.request(T_FLUSH, 0, 0x7000, None), S_OK),
    ];
    // A chain with no writable byte: back with length 0, nothing written.
    let lone = r.post(&[(0x8000, 16, false)]);
    r.kick();
    r.wait_used();
    for (i, (at, want)) in cases.iter().enumerate() {
        assert_eq!(r.status(*at), *want, "case {i}");
    }
    assert_eq!(r.used_len(lone), 0);
    assert!(image.lock().unwrap().iter().all(|&b| b == 0x5a));
    let c = r.dev.handle().counters()[0];
    assert_eq!(c.refused_for(Refusal::ReadOnly), 1);
    assert_eq!(c.refused_for(Refusal::NoStatus), 1);
    // Good requests still work.
    let ok = r.request(T_IN, 7, 0x9000, Some((512, true)));
    r.kick();
    r.wait_used();
    assert_eq!(r.status(ok), S_OK);
}

#[test]
fn io_errors_and_a_reset_with_requests_in_flight() {
    let image = Arc::new(Mutex::new(vec![0u8; 8 * 512]));
    let mut engine = MemEngine::new(image).unwrap();
    engine.fail_next(libc::EIO);
    let hold = engine.hold_switch();
    let dev = Blk::with_engines(&DiskConfig::new("/e.img"), 8, vec![Box::new(engine)]).unwrap();
    let mut r = Rig::new(dev, feature(VIRTIO_F_VERSION_1));
    let a = r.request(T_IN, 0, 0x1000, Some((512, true)));
    r.kick();
    r.wait_used();
    assert_eq!(r.status(a), S_IOERR);
    assert_eq!(r.dev.handle().counters()[0].io_errors, 1);
    // In flight (the engine holds its completion) when the device resets: dropped.
    hold.store(true, std::sync::atomic::Ordering::SeqCst);
    r.request(T_IN, 0, 0x2000, Some((512, true)));
    r.dev.process_queue(0).unwrap();
    assert_eq!(r.dev.handle().counters()[0].inflight, 1);
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    r.dev.reset();
    let c = r.dev.handle().counters()[0];
    assert_eq!((c.stale, c.inflight), (1, 0));
    assert_eq!(r.used_idx(), 1, "nothing written after the reset");
}

fn file_image(name: &str, sectors: u64) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("tv-blk-{}-{name}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(sectors * 512).unwrap();
    p
}

/// The real engines on a real file, with workers: many requests in flight, data on disk.
fn file_roundtrip(engine: EngineKind, direct: bool, queues: u16) {
    let path = file_image(&format!("{engine:?}-{direct}-{queues}"), 256);
    let mut cfg = DiskConfig::new(&path);
    cfg.engine = engine;
    cfg.direct = direct;
    cfg.queues = queues;
    let dev = Blk::new(&cfg).unwrap();
    let handle = dev.handle();
    let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    handle.start(&stop, SeccompMode::Off).unwrap();
    let mq = if queues > 1 {
        feature(VIRTIO_BLK_F_MQ)
    } else {
        0
    };
    let mut r = Rig::new(dev, feature(VIRTIO_F_VERSION_1) | mq);
    // Eight 1 KiB writes in flight at once; the buffers are not 512-aligned in guest RAM
    // with direct=on only when bounced (offset 0x100).
    let mut statuses = Vec::new();
    for i in 0..8u64 {
        let at = 0x1000 * (i + 1);
        let data: Vec<u8> = (0..1024).map(|k| (k as u64 * 3 + i) as u8).collect();
        r.mem.write_slice(&data, GuestAddress(DATA + at)).unwrap();
        statuses.push(r.request(T_OUT, 2 * i, at, Some((1024, false))));
    }
    statuses.push(r.request(T_FLUSH, 0, 0xa000, None));
    r.kick();
    r.wait_used();
    for s in &statuses {
        assert_eq!(r.status(*s), S_OK);
    }
    handle.stop();
    let bytes = std::fs::read(&path).unwrap();
    for i in 0..8usize {
        let want: Vec<u8> = (0..1024).map(|k| (k * 3 + i) as u8).collect();
        assert_eq!(&bytes[i * 1024..(i + 1) * 1024], &want[..], "request {i}");
    }
    assert_eq!(handle.counters()[0].written_bytes, 8192);
    drop(r);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn io_uring_on_a_file() {
    file_roundtrip(EngineKind::Uring, false, 1);
}

#[test]
fn io_uring_direct_on_a_file() {
    file_roundtrip(EngineKind::Uring, true, 1);
}

#[test]
fn thread_pool_on_a_file() {
    file_roundtrip(EngineKind::Pool, false, 2);
}

#[test]
fn config_space() {
    let (r, _) = Rig::mem_rig(1000, false);
    let mut c = [0u8; 60];
    r.dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 1000);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 1);
    assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 1);
    let mut past = [0xffu8; 8];
    r.dev.read_config(u64::MAX - 2, &mut past);
    assert_eq!(past, [0; 8]);
}

#[test]
fn discard_and_write_zeroes_are_offered_only_where_holes_can_be_punched() {
    // The probe punches past the end: the file's bytes and size stay as they were.
    let path = file_image("holes", 9);
    let data: Vec<u8> = (0..9 * 512).map(|k| (k * 7) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let holes = super::image::can_punch_holes(&f, data.len() as u64);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        data,
        "the probe changed the file"
    );
    // The device offers the two commands exactly when the probe says yes (the temp dir's file
    // system decides which; 9p and FUSE ones without fallocate say no).
    let dev = Blk::new(&DiskConfig::new(&path)).unwrap();
    let both = feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
    assert_eq!(dev.features() & both, if holes { both } else { 0 });
    // Read-only: never (and no probe that would need write access).
    drop(dev);
    let mut ro = DiskConfig::new(&path);
    ro.readonly = true;
    assert_eq!(Blk::new(&ro).unwrap().features() & both, 0);
    std::fs::remove_file(&path).unwrap();
}
