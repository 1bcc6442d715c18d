//! The whole virtio-blk device (`Blk`, 1 or 2 queues) on an in-memory image (`MemEngine`),
//! driven on this thread through `VirtioDevice` (features, activation, `process_queue`, reset)
//! and `BlkHandle::engine_ready` (what a worker does when the engine has completions), by a
//! driver model that posts well-formed requests of every type (data split over several
//! descriptors) and hostile chains (random descriptors: loops, buffers outside RAM or across
//! its end, wrong directions, random headers), kicks and completes in any order, and resets.
//!
//! Invariants, checked after every step: no panic; every used entry names a chain the driver
//! made available and has not had back; the used index never runs ahead of the available
//! one; a well-formed request gets the status its model says (OK inside the capacity, IOERR
//! past it or a write on a read-only disk, UNSUPP for types without support or not negotiated), a read returns the
//! image's bytes, and once everything is back the image is what the requests answered OK made
//! it (hostile chains, which may be valid writes by chance, and resets resync the model);
//! requests in flight never exceed the queue size and are 0 once everything is back.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trapvisor::block::request::*;
use trapvisor::block::{Blk, DiskConfig, MemEngine};
use trapvisor::virtio::{InterruptError, VirtioDevice, VirtioInterrupt, VirtioInterruptType};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RAM: u64 = 0x10_0000;
const QBASE: u64 = 0x1000;
const QSPAN: u64 = 0x3000;
/// Per (queue, head): header at +0, status at +16, a discard segment at +32.
const SLOTS: u64 = 0x8000;
/// Per (queue, head): 4 KiB of data.
const DATA: u64 = 0x2_0000;
const QSIZE: u16 = 16;
const CAPACITY: u64 = 64;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unknown(u8),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Good {
        queue: bool,
        kind: Kind,
        sector: u8,
        sectors: u8,
        split: u8,
        fill: u8,
    },
    Hostile {
        queue: bool,
        hdr: [u8; 16],
        descs: Vec<(u32, u16, u8, u8)>,
    },
    Kick(bool),
    Complete(bool),
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    readonly: bool,
    two_queues: bool,
    mq: bool,
    steps: Vec<Step>,
}

struct NoIrq;
impl VirtioInterrupt for NoIrq {
    fn trigger(&self, _: VirtioInterruptType) -> Result<(), InterruptError> {
        Ok(())
    }
}

/// What the model expects of a chain it made available.
#[derive(Clone, Debug)]
enum Expect {
    /// Status, and for a read the image offset and length to compare.
    Status(u8, Option<(u64, u64)>),
    /// Anything (hostile).
    Any,
}

struct Posted {
    ndesc: u16,
    expect: Expect,
    /// A write/discard the model applies to its image when answered OK.
    effect: Option<(u64, Vec<u8>)>,
}

struct Model {
    mem: GuestMemoryMmap,
    dev: Blk,
    image: Arc<Mutex<Vec<u8>>>,
    shadow: Vec<u8>,
    queues: usize,
    readonly: bool,
    /// Per queue: descriptor slots in use, outstanding chains by head, avail idx, used seen.
    busy: Vec<[bool; QSIZE as usize]>,
    posted: Vec<HashMap<u16, Posted>>,
    avail: Vec<u16>,
    used: Vec<u16>,
    /// A hostile chain was posted since everything was last back: the image may hold what it
    /// wrote, so reads are not compared and the model resyncs once nothing is outstanding.
    tainted: bool,
}

fn rings(q: usize) -> (u64, u64, u64) {
    let base = QBASE + q as u64 * QSPAN;
    (base, base + 0x1000, base + 0x2000)
}

fn queue(q: usize) -> Queue {
    let (d, a, u) = rings(q);
    let mut queue = Queue::new(256).unwrap();
    queue.try_set_size(QSIZE).unwrap();
    queue.try_set_desc_table_address(GuestAddress(d)).unwrap();
    queue.try_set_avail_ring_address(GuestAddress(a)).unwrap();
    queue.try_set_used_ring_address(GuestAddress(u)).unwrap();
    queue.set_ready(true);
    queue
}

impl Model {
    fn activate(&mut self, mq: bool) {
        let features = (1u64 << 32) | (1 << 13) | (1 << 14) | if mq { 1 << 12 } else { 0 };
        self.dev.ack_features(features);
        let n = self.dev.queue_max_sizes().len();
        for (i, q) in (0..n).enumerate() {
            let (_, a, u) = rings(q);
            self.mem.write_obj(0u16, GuestAddress(a + 2)).unwrap();
            self.mem.write_obj(0u16, GuestAddress(u + 2)).unwrap();
            self.busy[i] = [false; QSIZE as usize];
            self.posted[i].clear();
            self.avail[i] = 0;
            self.used[i] = 0;
        }
        self.queues = if mq { n } else { 1 };
        self.dev
            .activate(self.mem.clone(), (0..n).map(queue).collect(), Arc::new(NoIrq))
            .unwrap();
    }

    /// Places a chain of `descs` (addr, len, flags; next filled in) at free slots; returns the
    /// head, or None when there is no room.
    fn post(&mut self, q: usize, descs: &[(u64, u32, u16)], raw_next: Option<&[u8]>) -> Option<u16> {
        let n = descs.len();
        let ids: Vec<u16> = (0..QSIZE).filter(|&i| !self.busy[q][usize::from(i)]).take(n).collect();
        if ids.len() < n || n == 0 {
            return None;
        }
        let (dt, a, _) = rings(q);
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let at = dt + 16 * u64::from(ids[k]);
            let next = match raw_next {
                // A hostile chain's links stay among its own descriptors (loops included) or
                // point past the table: never into another chain, whose status byte it could
                // then legitimately write.
                Some(r) => match usize::from(r[k]) % (n + 2) {
                    i if i < n => ids[i],
                    i => QSIZE + i as u16,
                },
                None => ids.get(k + 1).copied().unwrap_or(0),
            };
            let flags = if raw_next.is_none() && k + 1 < n { flags | NEXT } else { flags };
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
            self.busy[q][usize::from(ids[k])] = true;
        }
        let head = ids[0];
        let slot = a + 4 + 2 * u64::from(self.avail[q] % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem.write_obj(self.avail[q], GuestAddress(a + 2)).unwrap();
        Some(head)
    }

    fn good(&mut self, q: usize, kind: Kind, sector: u64, sectors: u64, split: u8, fill: u8) {
        let slot = SLOTS + (q as u64 * u64::from(QSIZE)) * 64;
        // The slot address depends on the head, known only after `post`: use the next free id.
        let Some(head) = (0..QSIZE).find(|&i| !self.busy[q][usize::from(i)]) else { return };
        let base = slot + u64::from(head) * 64;
        let data = DATA + (q as u64 * u64::from(QSIZE) + u64::from(head)) * 4096;
        let (t, data_len, dir): (u32, u64, u16) = match kind {
            Kind::In => (T_IN, sectors * 512, WRITE),
            Kind::Out => (T_OUT, sectors * 512, 0),
            Kind::Flush => (T_FLUSH, 0, 0),
            Kind::GetId => (T_GET_ID, 20, WRITE),
            Kind::Discard => (T_DISCARD, 16, 0),
            Kind::WriteZeroes => (T_WRITE_ZEROES, 16, 0),
            Kind::Unknown(x) => (u32::from(x) | 0x40, 0, 0),
        };
        let hs = if matches!(kind, Kind::Discard | Kind::WriteZeroes) { 0 } else { sector };
        self.mem.write_obj(t, GuestAddress(base)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(base + 4)).unwrap();
        self.mem.write_obj(hs, GuestAddress(base + 8)).unwrap();
        self.mem.write_obj(0xeeu8, GuestAddress(base + 16)).unwrap();
        let mut descs = vec![(base, 16u32, 0u16)];
        let mut effect = None;
        let mut read_back = None;
        let in_range = sector + sectors <= CAPACITY;
        let expect = match kind {
            Kind::In | Kind::Out => {
                let bytes: Vec<u8> = (0..data_len).map(|i| fill.wrapping_add(i as u8)).collect();
                self.mem.write_slice(&bytes, GuestAddress(data)).unwrap();
                let pieces = u64::from(split % 4) + 1;
                let step = (data_len / pieces).max(1);
                let mut at = 0;
                while at < data_len {
                    let n = step.min(data_len - at);
                    descs.push((data + at, n as u32, dir));
                    at += n;
                }
                let ok = in_range && !(matches!(kind, Kind::Out) && self.readonly);
                if ok && matches!(kind, Kind::Out) && data_len > 0 {
                    effect = Some((sector * 512, bytes));
                }
                if ok && matches!(kind, Kind::In) && data_len > 0 {
                    read_back = Some((sector * 512, data_len));
                }
                if ok { S_OK } else { S_IOERR }
            }
            Kind::Flush => S_OK,
            Kind::GetId => {
                descs.push((data, 20, WRITE));
                S_OK
            }
            Kind::Discard | Kind::WriteZeroes => {
                let seg = base + 32;
                self.mem.write_obj(sector, GuestAddress(seg)).unwrap();
                self.mem.write_obj(sectors as u32, GuestAddress(seg + 8)).unwrap();
                self.mem.write_obj(0u32, GuestAddress(seg + 12)).unwrap();
                descs.push((seg, 16, 0));
                let ok = in_range && !self.readonly;
                if ok && sectors > 0 {
                    effect = Some((sector * 512, vec![0; (sectors * 512) as usize]));
                }
                // A read-only disk does not offer DISCARD or WRITE_ZEROES: not negotiated.
                if self.readonly {
                    S_UNSUPP
                } else if !in_range {
                    S_IOERR
                } else {
                    S_OK
                }
            }
            Kind::Unknown(_) => S_UNSUPP,
        };
        descs.push((base + 16, 1, WRITE));
        let Some(h) = self.post(q, &descs, None) else { return };
        assert_eq!(h, head);
        let n = descs.len() as u16;
        self.posted[q].insert(
            h,
            Posted { ndesc: n, expect: Expect::Status(expect, read_back), effect },
        );
    }

    fn hostile(&mut self, q: usize, hdr: [u8; 16], descs: &[(u32, u16, u8, u8)]) {
        let Some(head) = (0..QSIZE).find(|&i| !self.busy[q][usize::from(i)]) else { return };
        let base = SLOTS + (q as u64 * u64::from(QSIZE) + u64::from(head)) * 64;
        self.mem.write_slice(&hdr, GuestAddress(base)).unwrap();
        let data = DATA + (q as u64 * u64::from(QSIZE) + u64::from(head)) * 4096;
        let mut d: Vec<(u64, u32, u16)> = Vec::new();
        let mut nexts = Vec::new();
        for (i, &(addr, len, flags, next)) in descs.iter().take(6).enumerate() {
            // Mostly the request's own areas (never past them: another chain's slot or data
            // is that chain's), sometimes near RAM's end: across it or past it (nothing of the
            // model lives there).
            let len = u64::from(len % 5000);
            let (a, room) = match addr % 4 {
                0 if i == 0 => (base, 64),
                0 | 1 => {
                    let off = u64::from(addr % 4096);
                    (data + off, 4096 - off)
                }
                2 => (base + 16, 48),
                _ => (RAM - 2048 + u64::from(addr % 8192), u64::MAX),
            };
            d.push((a, len.min(room) as u32, u16::from(flags) & (NEXT | WRITE)));
            nexts.push(next);
        }
        if d.is_empty() {
            return;
        }
        let Some(h) = self.post(q, &d, Some(&nexts)) else { return };
        self.posted[q].insert(h, Posted { ndesc: d.len() as u16, expect: Expect::Any, effect: None });
        self.tainted = true;
    }

    fn kick(&mut self, q: usize) {
        let _ = self.dev.process_queue(q);
    }

    fn complete(&mut self, q: usize) {
        self.dev.handle().engine_ready(q);
    }

    /// Reads the used rings and checks every new entry.
    fn check(&mut self) {
        for q in 0..self.queues {
            let (_, _, u) = rings(q);
            let idx: u16 = self.mem.read_obj(GuestAddress(u + 2)).unwrap();
            let ahead = idx.wrapping_sub(self.used[q]);
            assert!(ahead <= self.avail[q].wrapping_sub(self.used[q]), "used index ran ahead");
            while self.used[q] != idx {
                let at = u + 4 + 8 * u64::from(self.used[q] % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                self.used[q] = self.used[q].wrapping_add(1);
                let head = u16::try_from(id).expect("used id past the queue");
                let p = self.posted[q].remove(&head).expect("used entry for a chain not outstanding");
                let base = SLOTS + (q as u64 * u64::from(QSIZE) + u64::from(head)) * 64;
                let status: u8 = self.mem.read_obj(GuestAddress(base + 16)).unwrap();
                // Free the chain's slots (the ones `post` took: consecutive free ids from head).
                let mut freed = 0;
                let mut i = head;
                while freed < p.ndesc {
                    if self.busy[q][usize::from(i)] {
                        self.busy[q][usize::from(i)] = false;
                        freed += 1;
                    }
                    i = (i + 1) % QSIZE;
                }
                match p.expect {
                    Expect::Any => {}
                    Expect::Status(want, read_back) => {
                        assert!(len >= 1, "well-formed request back without a status");
                        assert_eq!(status, want, "status of a well-formed request (queue {q}, head {head})");
                        if let (S_OK, Some((off, n)), false) = (status, read_back, self.tainted) {
                            let data = DATA + (q as u64 * u64::from(QSIZE) + u64::from(head)) * 4096;
                            let mut got = vec![0u8; n as usize];
                            self.mem.read_slice(&mut got, GuestAddress(data)).unwrap();
                            assert_eq!(&got[..], &self.shadow[off as usize..(off + n) as usize], "read data");
                        }
                        if status == S_OK {
                            if let Some((off, bytes)) = p.effect {
                                self.shadow[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
                            }
                        }
                    }
                }
            }
        }
        if self.posted.iter().all(HashMap::is_empty) {
            if std::mem::take(&mut self.tainted) {
                self.shadow = self.image.lock().unwrap().clone();
            }
            assert!(
                *self.image.lock().unwrap() == self.shadow,
                "the image changed without an OK request"
            );
        }
        let c = self.dev.handle().counters();
        for (q, c) in c.iter().enumerate() {
            assert!(c.inflight <= u64::from(QSIZE), "queue {q}: {} in flight", c.inflight);
        }
    }
}

fuzz_target!(|inp: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let image = Arc::new(Mutex::new(vec![0u8; (CAPACITY * 512) as usize]));
    let mut cfg = DiskConfig::new("/fuzz.img");
    cfg.readonly = inp.readonly;
    cfg.queues = if inp.two_queues { 2 } else { 1 };
    let engines = (0..cfg.queues)
        .map(|_| Box::new(MemEngine::new(image.clone()).unwrap()) as Box<dyn trapvisor::block::Engine>)
        .collect();
    let dev = Blk::with_engines(&cfg, CAPACITY, engines).unwrap();
    let n = usize::from(cfg.queues);
    let mut m = Model {
        mem,
        dev,
        image,
        shadow: vec![0u8; (CAPACITY * 512) as usize],
        queues: 1,
        readonly: inp.readonly,
        busy: vec![[false; QSIZE as usize]; n],
        posted: (0..n).map(|_| HashMap::new()).collect(),
        avail: vec![0; n],
        used: vec![0; n],
        tainted: false,
    };
    m.activate(inp.mq);
    for step in inp.steps.iter().take(200) {
        let pick = |b: bool| usize::from(b) % m.queues.max(1);
        match step {
            Step::Good { queue, kind, sector, sectors, split, fill } => {
                let q = pick(*queue);
                m.good(q, *kind, u64::from(*sector % 80), u64::from(*sectors % 9), *split, *fill);
            }
            Step::Hostile { queue, hdr, descs } => {
                let q = pick(*queue);
                m.hostile(q, *hdr, descs);
            }
            Step::Kick(queue) => {
                let q = pick(*queue);
                m.kick(q);
            }
            Step::Complete(queue) => {
                let q = pick(*queue);
                m.complete(q);
            }
            Step::Reset => {
                m.dev.reset();
                // Writes in flight at the reset may or may not have landed.
                m.shadow = m.image.lock().unwrap().clone();
                m.tainted = false;
                m.activate(inp.mq);
            }
        }
        m.check();
    }
    // Everything kicked and completed: nothing stays in flight.
    for q in 0..m.queues {
        m.kick(q);
        m.complete(q);
    }
    m.check();
    for c in m.dev.handle().counters() {
        assert_eq!(c.inflight, 0);
    }
});
