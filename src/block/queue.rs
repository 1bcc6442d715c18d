//! One request queue: its state under one lock, and the two halves of its data path.
//!
//! * [`QueueState::run_kick`]: pop each available chain, walk it (`net::chain::walk`: inside
//!   RAM, no loops, readable then writable), check it (`request::parse`), and either answer it
//!   at once (refusals, GET_ID, a read-only flush) or turn it into one engine operation whose
//!   iovecs point into guest RAM, kept in a slot until it completes; then one submission.
//! * [`QueueState::run_done`]: take the engine's completions, write each request's status byte
//!   and used entry, publish the used ring once, and interrupt the driver if it asked
//!   (EVENT_IDX `used_event`).
//!
//! At most a queue's worth of requests is in flight: a driver that posts more (heads still in
//! flight, made available again) waits until some complete. A device reset takes the queue
//! away (`active = None`) and bumps the generation; completions of the old generation are
//! dropped, and the guest memory stays mapped until the last of them is in.
use std::alloc::Layout;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use super::config::SERIAL_LEN;
use super::counters::{latency_histogram, QueueCounters};
use super::engine::{Completion, Engine, Op, OpKind};
use super::request::{parse, used_len, Kind, Limits, Parsed, Refusal, Shape, S_IOERR, S_OK};
use crate::net::chain::{read_host, walk, write_host, Direction, RamMap, Seg};
use crate::net::used::UsedRing;
use crate::trace::timeline::{Flow, Timeline};
use crate::virtio::queue::DrainPasses;
use crate::virtio::{VirtioInterrupt, VirtioInterruptType};

/// The most bytes one request may move (the iovecs stay under `UIO_MAXIOV` anyway).
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;

/// A queue between DRIVER_OK and reset.
pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    pub ram: RamMap,
    pub queue: Queue,
    pub used: UsedRing,
    pub index: u16,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub limits: Limits,
}

/// An aligned copy of a request's data (O_DIRECT with unaligned guest buffers).
struct Bounce {
    ptr: *mut u8,
    layout: Layout,
}

impl Bounce {
    fn new(len: usize, align: usize) -> Option<Bounce> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        (!ptr.is_null()).then_some(Bounce { ptr, layout })
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A request in flight.
struct Slot {
    generation: u64,
    head: u16,
    kind: Kind,
    op: Op,
    started: Instant,
    /// Host address of the status byte (inside guest RAM).
    status: usize,
    /// The used length when it succeeds.
    used_ok: u32,
    /// What the engine reads or writes (guest RAM, or `bounce`).
    iov: Vec<libc::iovec>,
    /// With a bounce buffer: the guest's buffers (`iov` is the bounce buffer).
    guest_iov: Vec<libc::iovec>,
    bounce: Option<Bounce>,
    flow: u64,
    retried: bool,
}

// SAFETY: the raw pointers of a slot are guest RAM (mapped while the queue holds its memory)
// and its own bounce buffer; only the thread holding the queue's lock touches them.
unsafe impl Send for Slot {}

pub(crate) struct QueueState {
    pub active: Option<Active>,
    pub io: Io,
}

/// Everything of a queue but the driver's rings: the engine, requests in flight, counters.
pub(crate) struct Io {
    pub engine: Option<Box<dyn Engine>>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Guest memory kept mapped while requests of an old generation are in flight.
    inflight_mem: Option<GuestMemoryMmap>,
    generation: u64,
    pub counters: QueueCounters,
    latency: Histogram<u64>,
    segs: Vec<Seg>,
    done: Vec<Completion>,
    pub timeline: Option<Arc<Timeline>>,
    pub serial: [u8; SERIAL_LEN],
    /// O_DIRECT alignment (None: buffered).
    pub direct_align: Option<usize>,
    /// Stopped taking requests with a queue's worth in flight.
    throttled: bool,
    /// The trace flow of the latest completion (the interrupt that follows ends it).
    last_flow: u64,
}

/// A queue and what its worker waits on.
pub(crate) struct BlkQueue {
    pub index: usize,
    pub epoll: Epoll,
    /// Wakes the worker: to end it, or for a kick that came as an exit (notify=exit).
    pub wake: EventFd,
    state: Mutex<QueueState>,
    /// Signalled when the last request in flight completes.
    idle: Condvar,
}

impl BlkQueue {
    pub fn new(
        index: usize,
        serial: [u8; SERIAL_LEN],
        direct_align: Option<usize>,
    ) -> std::io::Result<BlkQueue> {
        Ok(BlkQueue {
            index,
            epoll: Epoll::new()?,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            state: Mutex::new(QueueState {
                active: None,
                io: Io {
                    engine: None,
                    slots: Vec::new(),
                    free: Vec::new(),
                    inflight_mem: None,
                    generation: 0,
                    counters: QueueCounters::default(),
                    latency: latency_histogram(),
                    segs: Vec::new(),
                    done: Vec::new(),
                    timeline: None,
                    serial,
                    direct_align,
                    throttled: false,
                    last_flow: 0,
                },
            }),
            idle: Condvar::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The driver kicked (`kicks` notifications, one wakeup); `flow`: the trace flow.
    pub fn kick(&self, kicks: u64, flow: u64) {
        let mut st = self.lock();
        st.io.counters.kicks += kicks;
        st.io.counters.wakeups += 1;
        st.run_kick(flow);
    }

    /// The engine announced completions.
    pub fn completed(&self) {
        let mut st = self.lock();
        st.run_done();
        if st.io.counters.inflight == 0 {
            self.idle.notify_all();
        }
    }

    /// Device reset: the queue goes away; requests in flight complete into nothing.
    pub fn reset(&self) {
        let mut st = self.lock();
        if let Some(a) = st.active.take() {
            if st.io.counters.inflight > 0 {
                st.io.inflight_mem = Some(a.mem);
            }
        }
        st.io.generation += 1;
        st.io.throttled = false;
    }

    /// Waits (up to `limit`) until no request is in flight, reaping completions here too
    /// (there may be no worker). True when none is left.
    pub fn drain(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut st = self.lock();
        loop {
            st.run_done();
            if st.io.counters.inflight == 0 {
                st.io.inflight_mem = None;
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            let wait = (end - now).min(Duration::from_millis(1));
            st = self
                .idle
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn counters(&self) -> QueueCounters {
        let st = self.lock();
        let mut c = st.io.counters;
        c.set_latency(&st.io.latency);
        c
    }
}

/// Appends iovecs for bytes `start..start + len` of the chain's buffers.
fn iov_range(segs: &[Seg], start: u64, len: u64, out: &mut Vec<libc::iovec>) {
    let (mut skip, mut left) = (start, len);
    for s in segs {
        if left == 0 {
            break;
        }
        let n = u64::from(s.len);
        if skip >= n {
            skip -= n;
            continue;
        }
        let take = (n - skip).min(left);
        out.push(libc::iovec {
            iov_base: (s.host + skip as usize) as *mut libc::c_void,
            iov_len: take as usize,
        });
        left -= take;
        skip = 0;
    }
}

/// Copies between iovecs and a flat buffer (`to_flat`: gather into it, else scatter from it).
///
/// # Safety
/// Every iovec and `flat` (of the iovecs' total length) must be valid for the access.
unsafe fn copy_iov(iov: &[libc::iovec], flat: *mut u8, to_flat: bool) {
    let mut at = 0;
    for v in iov {
        let p = v.iov_base as *mut u8;
        // SAFETY: the caller's promise; the ranges belong to different allocations.
        unsafe {
            if to_flat {
                std::ptr::copy_nonoverlapping(p, flat.add(at), v.iov_len);
            } else {
                std::ptr::copy_nonoverlapping(flat.add(at), p, v.iov_len);
            }
        }
        at += v.iov_len;
    }
}

/// What became of a chain at pop time.
enum Start {
    /// Answered at once (status written): the used length.
    Answered(u32),
    /// An operation in flight.
    Submitted,
    /// Not answerable: back with length 0.
    Dropped,
}

/// What `Io::start` needs of the active queue.
struct Ctx<'a> {
    ram: &'a RamMap,
    limits: &'a Limits,
    max: usize,
    index: u16,
    now: Instant,
    flow: u64,
}

/// The status byte of a request: the last byte of its last (device-writable) buffer.
///
/// # Safety
/// `status` is inside guest RAM that stays mapped for the call.
unsafe fn answer(status: usize, code: u8) {
    // SAFETY: the caller's promise.
    unsafe { std::ptr::write_volatile(status as *mut u8, code) };
}

impl Io {
    fn note_inflight(&mut self, delta: i64) {
        let c = &mut self.counters;
        c.inflight = c.inflight.saturating_add_signed(delta);
        c.inflight_max = c.inflight_max.max(c.inflight);
    }

    fn free_slot(&mut self, token: usize) {
        self.slots[token] = None;
        self.free.push(token);
    }

    /// Checks one chain and answers it or starts its operation.
    fn start(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, ctx: &Ctx<'_>) -> Start {
        let head = chain.head_index();
        let walked = match walk(
            chain,
            ctx.ram,
            Direction::ReadThenWrite,
            ctx.max,
            MAX_REQUEST_BYTES,
            &mut self.segs,
        ) {
            Ok(w) => w,
            Err(e) => {
                log::debug!("virtio-blk queue {}: chain {head}: {e}", ctx.index);
                self.counters.bad_chains += 1;
                self.counters.count(Kind::Other);
                return Start::Dropped;
            }
        };
        let segs = std::mem::take(&mut self.segs);
        let r = self.start_walked(&segs, walked.readable, walked.writable, head, ctx);
        self.segs = segs;
        r
    }

    fn start_walked(
        &mut self,
        segs: &[Seg],
        readable: u64,
        writable: u64,
        head: u16,
        ctx: &Ctx<'_>,
    ) -> Start {
        let shape = Shape {
            readable,
            writable,
            read: |off: usize, buf: &mut [u8]| read_host(segs, off, buf),
        };
        let (kind, parsed) = parse(shape, ctx.limits);
        self.counters.count(kind);
        let status = segs
            .last()
            .filter(|s| s.write && s.len > 0)
            .map(|s| s.host + s.len as usize - 1);
        let Some(status) = status else {
            self.counters.refuse(Refusal::NoStatus);
            return Start::Dropped;
        };
        // SAFETY (every `answer` below): the status byte is the last byte of a device-writable
        // segment `walk` found inside guest RAM, which the active queue keeps mapped.
        let (op, used_ok) = match parsed {
            Parsed::Unanswerable => {
                self.counters.refuse(Refusal::NoStatus);
                return Start::Dropped;
            }
            Parsed::Refused(why) => {
                self.counters.refuse(why);
                // SAFETY: see above.
                unsafe { answer(status, why.status()) };
                return Start::Answered(used_len(0));
            }
            Parsed::Done => {
                // SAFETY: see above.
                unsafe { answer(status, S_OK) };
                return Start::Answered(used_len(0));
            }
            Parsed::GetId { len } => {
                let ok = write_host(segs, readable as usize, &self.serial[..len]);
                // SAFETY: see above.
                unsafe { answer(status, if ok { S_OK } else { S_IOERR }) };
                return Start::Answered(used_len(len as u64));
            }
            Parsed::Read { offset, len } => (Op::control(OpKind::Read, offset, len), len),
            Parsed::Write { offset, len } => (Op::control(OpKind::Write, offset, len), 0),
            Parsed::Flush => (Op::control(OpKind::Flush, 0, 0), 0),
            Parsed::Discard { offset, len } => (Op::control(OpKind::PunchHole, offset, len), 0),
            Parsed::WriteZeroes { offset, len, unmap } => {
                let kind = if unmap {
                    OpKind::PunchHole
                } else {
                    OpKind::ZeroRange
                };
                (Op::control(kind, offset, len), 0)
            }
        };
        let mut slot = Slot {
            generation: self.generation,
            head,
            kind,
            op,
            started: ctx.now,
            status,
            used_ok: used_len(used_ok),
            iov: Vec::new(),
            guest_iov: Vec::new(),
            bounce: None,
            flow: ctx.flow,
            retried: false,
        };
        if matches!(op.kind, OpKind::Read | OpKind::Write) {
            let start = if op.kind == OpKind::Read {
                readable
            } else {
                super::request::HEADER_LEN as u64
            };
            iov_range(segs, start, op.len, &mut slot.iov);
            if let Some(align) = self.direct_align {
                if !self.bounce_if_unaligned(&mut slot, align) {
                    // SAFETY: see above.
                    unsafe { answer(status, S_IOERR) };
                    self.counters.io_errors += 1;
                    return Start::Answered(used_len(0));
                }
            }
            slot.op.iov = slot.iov.as_ptr();
            slot.op.iovcnt = slot.iov.len();
        }
        let token = match self.free.pop() {
            Some(t) => t,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let op = slot.op;
        self.slots[token] = Some(slot);
        let pushed = match self.engine.as_mut() {
            // SAFETY: the iovecs live in the slot (their array on the heap, not moved by
            // moving the slot) and point into guest RAM that stays mapped (the active queue's
            // memory, or `inflight_mem` after a reset) or into the slot's bounce buffer, until
            // this token's completion is reaped in `run_done`, which frees the slot.
            Some(engine) => unsafe { engine.push(op, token as u64) },
            None => false,
        };
        if !pushed {
            self.free_slot(token);
            // SAFETY: see above.
            unsafe { answer(status, S_IOERR) };
            self.counters.io_errors += 1;
            return Start::Answered(used_len(0));
        }
        self.note_inflight(1);
        Start::Submitted
    }

    /// O_DIRECT takes only aligned buffers: copy through an aligned one when the guest's are
    /// not. False when no buffer could be had.
    fn bounce_if_unaligned(&mut self, slot: &mut Slot, align: usize) -> bool {
        let aligned = slot.iov.iter().all(|v| {
            (v.iov_base as usize).is_multiple_of(align) && v.iov_len.is_multiple_of(align)
        });
        if aligned {
            return true;
        }
        let Some(b) = Bounce::new(slot.op.len as usize, align) else {
            return false;
        };
        if slot.op.kind == OpKind::Write {
            // SAFETY: the iovecs are guest RAM `walk` checked; the bounce buffer holds their
            // total (`op.len`).
            unsafe { copy_iov(&slot.iov, b.ptr, true) };
        }
        slot.guest_iov = std::mem::replace(
            &mut slot.iov,
            vec![libc::iovec {
                iov_base: b.ptr.cast(),
                iov_len: slot.op.len as usize,
            }],
        );
        slot.bounce = Some(b);
        self.counters.bounced += 1;
        true
    }
}

impl QueueState {
    /// Pops and starts every available request (see the module comment), then takes what
    /// completed already: io_uring finishes a read from the page cache inside the submission,
    /// so its completion is in the ring before this thread would sleep, and one wakeup serves
    /// it.
    pub fn run_kick(&mut self, flow: u64) {
        let index = self.active.as_ref().map_or(0, |a| a.index);
        loop {
            if let Err(e) = self.pop_all(flow) {
                self.io.counters.bad_chains += 1;
                log::debug!("virtio-blk queue {index}: {e}");
            }
            if let Some(engine) = self.io.engine.as_mut() {
                if let Err(e) = engine.submit() {
                    log::warn!("virtio-blk queue {index}: submission: {e}");
                }
            }
            // A queue's worth was in flight: what just completed made room for more.
            if !(self.reap() > 0 && self.io.throttled) {
                break;
            }
        }
        self.signal(flow);
    }

    /// Finishes what completed (see the module comment), and takes more requests if the queue
    /// had stopped with a queue's worth in flight.
    pub fn run_done(&mut self) {
        let finished = self.reap();
        if finished > 0 && self.io.throttled {
            self.run_kick(self.io.last_flow);
        } else {
            self.signal(self.io.last_flow);
        }
    }

    fn pop_all(&mut self, flow: u64) -> Result<(), virtio_queue::Error> {
        let now = Instant::now();
        let QueueState { active, io } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        let Active {
            mem,
            ram,
            queue,
            used,
            index,
            limits,
            ..
        } = a;
        let mem: &GuestMemoryMmap = mem;
        let ctx = Ctx {
            ram,
            limits,
            max: usize::from(queue.size()),
            index: *index,
            now,
            flow,
        };
        let mut submitted = 0u32;
        let mut passes = DrainPasses::default();
        io.throttled = false;
        loop {
            queue.disable_notification(mem)?;
            let mut found = false;
            loop {
                if io.counters.inflight as usize >= ctx.max {
                    io.throttled = true;
                    io.counters.throttled += 1;
                    break;
                }
                let Some(chain) = queue.iter(mem)?.next() else {
                    break;
                };
                found = true;
                let head = chain.head_index();
                if usize::from(head) >= ctx.max {
                    io.counters.bad_heads += 1;
                    continue;
                }
                match io.start(chain, &ctx) {
                    Start::Answered(len) => used.add(mem, head, len)?,
                    Start::Dropped => used.add(mem, head, 0)?,
                    Start::Submitted => submitted += 1,
                }
            }
            if io.throttled || !passes.again(queue.enable_notification(mem)?, found) {
                break;
            }
        }
        if let (Some(tl), true) = (&io.timeline, submitted > 0) {
            tl.span(
                &format!("virtio-blk queue {index}: submit {submitted}"),
                "blk",
                now,
                Instant::now(),
                serde_json::json!({ "queue": *index, "requests": submitted }),
            );
            if flow != 0 {
                tl.flow(flow, "submission", Flow::Step, now);
            }
        }
        Ok(())
    }

    /// Takes the engine's completions: status bytes, used entries (not yet published).
    /// Returns how many requests finished.
    fn reap(&mut self) -> u32 {
        let QueueState { active, io } = self;
        let Some(engine) = io.engine.as_mut() else {
            return 0;
        };
        let mut done = std::mem::take(&mut io.done);
        engine.reap(&mut done);
        if done.is_empty() {
            io.done = done;
            return 0;
        }
        let now = Instant::now();
        let (mut flow, mut finished, mut resubmit) = (0, 0u32, false);
        for &(token, result) in &done {
            let Ok(token) = usize::try_from(token) else {
                continue;
            };
            let Some(mut slot) = io.slots.get_mut(token).and_then(Option::take) else {
                continue;
            };
            // A file system without ZERO_RANGE: punch the hole instead (reads as zeros). Not
            // for a request of an old generation: it completes as stale (and a reset draining
            // on a vCPU thread must not submit).
            if slot.op.kind == OpKind::ZeroRange
                && result == -i64::from(libc::EOPNOTSUPP)
                && !slot.retried
                && slot.generation == io.generation
                && active.is_some()
            {
                slot.retried = true;
                slot.op.kind = OpKind::PunchHole;
                let op = slot.op;
                io.slots[token] = Some(slot);
                if let Some(engine) = io.engine.as_mut() {
                    // SAFETY: a control operation: no memory.
                    if unsafe { engine.push(op, token as u64) } {
                        resubmit = true;
                        continue;
                    }
                }
                slot = io.slots[token].take().expect("just put back");
            }
            io.free.push(token);
            io.note_inflight(-1);
            let current = slot.generation == io.generation;
            let Some(a) = active.as_mut().filter(|_| current) else {
                io.counters.stale += 1;
                continue;
            };
            let ok = match slot.op.kind {
                OpKind::Read | OpKind::Write => result >= 0 && result as u64 == slot.op.len,
                _ => result >= 0,
            };
            if ok && slot.op.kind == OpKind::Read {
                if let Some(b) = &slot.bounce {
                    // SAFETY: the guest iovecs are RAM `walk` checked (still mapped: this
                    // generation's memory); the bounce buffer holds their total.
                    unsafe { copy_iov(&slot.guest_iov, b.ptr, false) };
                }
            }
            // SAFETY: the status byte is in guest RAM of this generation, kept mapped.
            unsafe { answer(slot.status, if ok { S_OK } else { S_IOERR }) };
            let len = if ok { slot.used_ok } else { used_len(0) };
            if let Err(e) = a.used.add(&a.mem, slot.head, len) {
                log::debug!("virtio-blk queue {}: used ring: {e}", a.index);
            }
            let c = &mut io.counters;
            if ok {
                match slot.kind {
                    Kind::In => c.read_bytes += slot.op.len,
                    Kind::Out => c.written_bytes += slot.op.len,
                    _ => {}
                }
            } else {
                c.io_errors += 1;
                log::debug!(
                    "virtio-blk queue {}: {:?} at {:#x}+{:#x}: {result}",
                    a.index,
                    slot.op.kind,
                    slot.op.offset,
                    slot.op.len
                );
            }
            let ns = now.saturating_duration_since(slot.started).as_nanos();
            let _ = io
                .latency
                .record(u64::try_from(ns).unwrap_or(u64::MAX).max(1000));
            if slot.flow != 0 {
                flow = slot.flow;
            }
            finished += 1;
        }
        done.clear();
        io.done = done;
        if io.counters.inflight == 0 && active.is_none() {
            io.inflight_mem = None;
        }
        if let Some(tl) = io.timeline.as_ref().filter(|_| finished > 0) {
            let index = active.as_ref().map_or(0, |a| a.index);
            tl.span(
                &format!("virtio-blk queue {index}: complete {finished}"),
                "blk",
                now,
                Instant::now(),
                serde_json::json!({ "queue": index, "requests": finished }),
            );
            if flow != 0 {
                tl.flow(flow, "completion", Flow::Step, now);
            }
        }
        if resubmit {
            if let Some(engine) = io.engine.as_mut() {
                let _ = engine.submit();
            }
        }
        if flow != 0 {
            io.last_flow = flow;
        }
        finished
    }

    /// Publishes the used entries and interrupts the driver if it wants it.
    fn signal(&mut self, flow: u64) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let c = &mut self.io.counters;
        if a.used.publish(&a.mem).is_err() {
            return;
        }
        a.queue.set_next_used(a.used.next_used());
        if a.used.unsignalled() == 0 {
            return;
        }
        match a.used.needs_notification(&a.mem) {
            Ok(true) => {
                c.interrupts += 1;
                if a.interrupt
                    .trigger_in_flow(VirtioInterruptType::Queue(a.index), flow)
                    .is_err()
                {
                    c.interrupt_errors += 1;
                }
            }
            Ok(false) => c.interrupts_suppressed += 1,
            Err(_) => c.interrupt_errors += 1,
        }
    }
}
