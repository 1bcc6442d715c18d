//! The `blk.*` commands: a virtio-blk device (`drivers::blk`) and workloads run unprivileged.
//!
//! The first `blk.*` command that needs the device finds and sets it up (privileged); each
//! workload then runs as an unprivileged task (`task::run_task`) that posts requests,
//! kicks and polls the used rings at native speed. `blk.write`, `blk.verify` and single
//! requests ask for an interrupt at the first completion of each batch (and count them);
//! `blk.bench` polls with interrupts suppressed (EVENT_IDX `used_event` left behind). A request that comes back with IOERR or UNSUPP, a verify mismatch or a device
//! that does not answer fails the guest (FAIL, exit 1). See `docs/builtin-guest.md`.
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::arch::{time, BootInfo};
use crate::cmdline::ParseError;
use crate::drivers::blk::{
    self as dev, BlkDev, S_IOERR, S_OK, S_UNSET, S_UNSUPP, T_DISCARD, T_FLUSH, T_IN, T_OUT,
    T_WRITE_ZEROES,
};
use crate::pci::{self, Function};
use crate::sync::Global;
use crate::{println, task, ulog, virtio};

mod hostile;

/// Bytes of data buffer the workloads share (requests in flight × their size fit in it).
pub const DATA_LEN: usize = 4 << 20;
/// Sectors per request of `blk.write` / `blk.verify`, and requests in flight.
const CHUNK_SECTORS: u32 = 256;
const DEPTH: usize = 16;
/// How long the device may take to finish the requests in flight.
const WAIT_MS: u64 = 10_000;

#[repr(C, align(4096))]
struct Data([u8; DATA_LEN]);

#[link_section = ".noinit.blk"]
static DATA: Global<Data> = Global::new(Data([0; DATA_LEN]));

/// What `blk.bench` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchOp {
    Read,
    Write,
    RandRead,
    RandWrite,
}

impl BenchOp {
    fn name(self) -> &'static str {
        match self {
            BenchOp::Read => "read",
            BenchOp::Write => "write",
            BenchOp::RandRead => "randread",
            BenchOp::RandWrite => "randwrite",
        }
    }
}

/// One `blk.*` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkCommand {
    /// `blk.queues=N`: request queues to drive (1 or 2; taken before any command runs).
    Queues(u8),
    /// `blk.info`.
    Info,
    /// `blk.write=SECTOR,count=N,seed=S`.
    Write { sector: u64, count: u32, seed: u32 },
    /// `blk.verify=SECTOR,count=N,seed=S`.
    Verify { sector: u64, count: u32, seed: u32 },
    /// `blk.flush`.
    Flush,
    /// `blk.discard=SECTOR,count=N` (and `zero=1`: WRITE_ZEROES instead).
    Discard { sector: u64, count: u32, zero: bool },
    /// `blk.bench=read|write|randread|randwrite[,size=B][,qd=N][,count=N]`.
    Bench {
        op: BenchOp,
        size: u32,
        qd: u32,
        count: u32,
    },
    /// `blk.hostile`: every malformed request shape, then good requests.
    Hostile,
}

static QUEUES: AtomicU32 = AtomicU32::new(1);

fn number(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Parses a `blk.*` word: `blk.NAME[=VALUE][,KEY=VALUE]...`.
pub fn parse(word: &str) -> Result<BlkCommand, ParseError<'_>> {
    let rest = &word[word.len().min(4)..];
    let (head, tail) = rest.split_once(',').unwrap_or((rest, ""));
    let (name, value) = match head.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (head, None),
    };
    let bad = ParseError::BadValue(word);
    let mut cmd = match (name, value) {
        ("queues", Some(v)) => BlkCommand::Queues(
            number(v)
                .filter(|n| (1..=dev::MAX_QUEUES as u64).contains(n))
                .ok_or(bad)? as u8,
        ),
        ("info", None) => BlkCommand::Info,
        ("flush", None) => BlkCommand::Flush,
        ("hostile", None) => BlkCommand::Hostile,
        ("write", Some(v)) => BlkCommand::Write {
            sector: number(v).ok_or(bad)?,
            count: 8,
            seed: 1,
        },
        ("verify", Some(v)) => BlkCommand::Verify {
            sector: number(v).ok_or(bad)?,
            count: 8,
            seed: 1,
        },
        ("discard", Some(v)) => BlkCommand::Discard {
            sector: number(v).ok_or(bad)?,
            count: 8,
            zero: false,
        },
        ("bench", Some(v)) => BlkCommand::Bench {
            op: match v {
                "read" => BenchOp::Read,
                "write" => BenchOp::Write,
                "randread" => BenchOp::RandRead,
                "randwrite" => BenchOp::RandWrite,
                _ => return Err(bad),
            },
            size: 4096,
            qd: 1,
            count: 10_000,
        },
        ("queues" | "info" | "flush" | "hostile" | "write" | "verify" | "discard" | "bench", _) => {
            return Err(bad)
        }
        _ => return Err(ParseError::Unknown(word)),
    };
    for opt in tail.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').ok_or(bad)?;
        let n = number(v).ok_or(bad)?;
        let n32 = u32::try_from(n).map_err(|_| bad)?;
        match (&mut cmd, k) {
            (
                BlkCommand::Write { count, .. }
                | BlkCommand::Verify { count, .. }
                | BlkCommand::Discard { count, .. },
                "count",
            ) if n32 > 0 => *count = n32,
            (BlkCommand::Write { seed, .. } | BlkCommand::Verify { seed, .. }, "seed") => {
                *seed = n32
            }
            (BlkCommand::Discard { zero, .. }, "zero") if n < 2 => *zero = n == 1,
            (BlkCommand::Bench { size, .. }, "size")
                if n32 >= 512 && n32 % 512 == 0 && n32 <= 1 << 20 =>
            {
                *size = n32
            }
            (BlkCommand::Bench { qd, .. }, "qd") if (1..=128).contains(&n32) => *qd = n32,
            (BlkCommand::Bench { count, .. }, "count") if n32 > 0 => *count = n32,
            _ => return Err(bad),
        }
    }
    if let BlkCommand::Bench { size, qd, .. } = cmd {
        if size as usize * qd as usize > DATA_LEN {
            return Err(bad);
        }
    }
    Ok(cmd)
}

/// Applies `blk.queues` before any command runs.
pub fn configure(cmd: &BlkCommand) {
    if let BlkCommand::Queues(n) = *cmd {
        QUEUES.store(u32::from(n), Ordering::Relaxed);
    }
}

/// The device, shared by the privileged side and the tasks (one runs at a time).
struct Blk {
    dev: BlkDev,
    func: Function,
    khz: u64,
}

#[link_section = ".noinit.blk"]
static BLK: Global<MaybeUninit<Blk>> = Global::new(MaybeUninit::uninit());
static UP: AtomicBool = AtomicBool::new(false);

struct Job {
    cmd: BlkCommand,
    error: Option<&'static str>,
}

static JOB: Global<Job> = Global::new(Job {
    cmd: BlkCommand::Info,
    error: None,
});

/// The device, set up on first use. Privileged.
fn up(info: &BootInfo) -> &'static mut Blk {
    // SAFETY: privileged, between tasks: nothing else uses BLK; initialised once UP is set.
    let blk = unsafe { &mut *BLK.get() };
    if UP.load(Ordering::Relaxed) {
        // SAFETY: initialised (UP).
        return unsafe { blk.assume_init_mut() };
    }
    let bus = match pci::scan(info) {
        Ok(b) => b,
        Err(e) => crate::fail!("blk: pci: {}", e),
    };
    let Some(func) = bus.find(virtio::VENDOR, dev::DEVICE_ID).copied() else {
        crate::fail!(
            "blk: no virtio-blk ({:04x}:{:04x}) on bus 0",
            virtio::VENDOR,
            dev::DEVICE_ID
        );
    };
    time::calibrate();
    let want = QUEUES.load(Ordering::Relaxed) as usize;
    let d = match BlkDev::init(&func, want) {
        Ok(d) => d,
        Err(e) => crate::fail!("blk: {}: {}", func.bdf, e),
    };
    println!(
        "blk: up {} capacity={} sectors queues={} size={} {}",
        func.bdf,
        d.capacity,
        d.nqueues,
        d.queues[0].q.size(),
        if d.readonly() { "ro" } else { "rw" }
    );
    blk.write(Blk {
        dev: d,
        func,
        khz: time::ticks_khz().0.max(1),
    });
    UP.store(true, Ordering::Relaxed);
    // SAFETY: just written.
    unsafe { blk.assume_init_mut() }
}

extern "C" fn task_entry(arg: usize) -> ! {
    // SAFETY: the privileged side hands JOB and BLK (initialised) to the task and waits.
    let (job, blk) = unsafe { (&mut *(arg as *mut Job), (*BLK.get()).assume_init_mut()) };
    job.error = work(blk, job.cmd).err();
    task::exit(0)
}

/// Runs one `blk.*` command. Privileged.
pub fn run(cmd: BlkCommand, info: &BootInfo) {
    match cmd {
        BlkCommand::Queues(n) => println!("blk: queues={}", n),
        BlkCommand::Info => print_info(up(info)),
        _ => {
            up(info);
            // SAFETY: no task runs; JOB is the privileged side's until run_task starts one.
            unsafe {
                let job = &mut *JOB.get();
                job.cmd = cmd;
                job.error = None;
            }
            task::run_task(task_entry, JOB.get() as usize);
            // SAFETY: the task is over.
            if let Some(e) = unsafe { (*JOB.get()).error } {
                crate::fail!("blk: {}", e);
            }
        }
    }
}

fn print_info(blk: &mut Blk) {
    let d = &blk.dev;
    let mut names = [0u8; 160];
    let mut len = 0;
    for (bit, name) in dev::FEATURE_NAMES {
        if d.accepted & bit != 0 && len + name.len() < names.len() {
            if len > 0 {
                names[len] = b',';
                len += 1;
            }
            names[len..len + name.len()].copy_from_slice(name.as_bytes());
            len += name.len();
        }
    }
    println!(
        "blk: info bdf={} capacity={} sectors ({} MiB) blk_size={} size_max={} seg_max={} max_discard_sectors={} queues={} max_queues={} queue_size={} offered={:#x} accepted={:#x} features={} mode={} func={}",
        d.bdf,
        d.capacity,
        d.capacity >> 11,
        d.blk_size,
        d.size_max,
        d.seg_max,
        d.max_discard_sectors,
        d.nqueues,
        d.max_queues,
        d.queues[0].q.size(),
        d.offered,
        d.accepted,
        core::str::from_utf8(&names[..len]).unwrap_or("?"),
        if d.readonly() { "ro" } else { "rw" },
        blk.func.bdf,
    );
}

fn data() -> u64 {
    DATA.get() as u64
}

/// The pattern word `w` of sector `sector` for `seed` (splitmix64).
fn pattern(seed: u32, sector: u64, w: u64) -> u64 {
    let mut z = (u64::from(seed) << 40) ^ sector.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn ms(blk: &Blk, n: u64) -> u64 {
    blk.khz * n
}

/// Waits until every request posted on the queues in `outstanding` is back; calls `done`
/// with (queue, head, used length, status) for each.
fn wait_all(
    blk: &mut Blk,
    outstanding: &mut [usize; dev::MAX_QUEUES],
    mut done: impl FnMut(usize, u16, u32, u8) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    let deadline = time::ticks() + ms(blk, WAIT_MS);
    while outstanding.iter().any(|&n| n > 0) {
        let mut any = false;
        for (q, n) in outstanding.iter_mut().enumerate() {
            while *n > 0 {
                let Some((head, len, status)) = blk.dev.reap(q)? else {
                    break;
                };
                *n -= 1;
                any = true;
                done(q, head, len, status)?;
            }
        }
        if !any && time::ticks() > deadline {
            return Err("the device did not finish the requests in time");
        }
    }
    Ok(())
}

fn check_status(status: u8) -> Result<(), &'static str> {
    match status {
        S_OK => Ok(()),
        S_IOERR => Err("the device answered IOERR"),
        S_UNSUPP => Err("the device answered UNSUPP"),
        _ => Err("the device left the status byte unwritten or wrote nonsense"),
    }
}

/// `blk.write` and `blk.verify`: chunks of `CHUNK_SECTORS`, `DEPTH` in flight, the queues
/// taking turns.
fn write_verify(
    blk: &mut Blk,
    write: bool,
    sector: u64,
    count: u32,
    seed: u32,
) -> Result<(), &'static str> {
    if sector
        .checked_add(u64::from(count))
        .is_none_or(|end| end > blk.dev.capacity)
    {
        ulog!(
            "blk: sectors {}+{} are past the capacity {}",
            sector,
            count,
            blk.dev.capacity
        );
    }
    let irqs0 = [BlkDev::irqs(0), BlkDev::irqs(1)];
    let t0 = time::ticks();
    let nq = blk.dev.nqueues;
    let mut per_queue = [0u64; dev::MAX_QUEUES];
    let (mut at, end) = (sector, sector + u64::from(count));
    let mut mismatch: Option<u64> = None;
    while at < end {
        // Up to DEPTH chunks: buffer k of the data area carries chunk k.
        let mut chunks = [(0u64, 0u32, 0usize, 0u16); DEPTH];
        let mut n = 0;
        let mut outstanding = [0usize; dev::MAX_QUEUES];
        while n < DEPTH && at < end {
            let secs = (end - at).min(u64::from(CHUNK_SECTORS)) as u32;
            let buf = data() + (n as u64) * u64::from(CHUNK_SECTORS) * 512;
            let words = buf as *mut u64;
            for s in 0..u64::from(secs) {
                for w in 0..64u64 {
                    let v = if write { pattern(seed, at + s, w) } else { 0 };
                    // SAFETY: inside buffer `n` of the data area, which is this task's.
                    unsafe { words.add((s * 64 + w) as usize).write_volatile(v) };
                }
            }
            let q = n % nq;
            let t = if write { T_OUT } else { T_IN };
            // SAFETY: buffer `n` stays with the device until `wait_all` has it back.
            let head =
                unsafe { blk.dev.post(q, t, at, buf, secs * 512) }.ok_or("request queue full")?;
            chunks[n] = (at, secs, q, head);
            outstanding[q] += 1;
            per_queue[q] += 1;
            at += u64::from(secs);
            n += 1;
        }
        // An interrupt for the first completion of the batch (used_event at the next entry).
        blk.dev.interrupts(true);
        for q in 0..nq {
            blk.dev.kick(q);
        }
        let mut first_error = None;
        wait_all(blk, &mut outstanding, |_, _, _, status| {
            if first_error.is_none() {
                first_error = check_status(status).err();
            }
            Ok(())
        })?;
        if let Some(e) = first_error {
            return Err(e);
        }
        if !write {
            for (k, &(start, secs, _, _)) in chunks[..n].iter().enumerate() {
                let words = (data() + (k as u64) * u64::from(CHUNK_SECTORS) * 512) as *const u64;
                for s in 0..u64::from(secs) {
                    for w in 0..64u64 {
                        // SAFETY: the device finished writing this buffer.
                        let v = unsafe { words.add((s * 64 + w) as usize).read_volatile() };
                        if v != pattern(seed, start + s, w) && mismatch.is_none() {
                            mismatch = Some(start + s);
                        }
                    }
                }
            }
        }
    }
    let dt = time::ticks() - t0;
    let us = dt * 1000 / blk.khz;
    ulog!(
        "blk: {} sector={} count={} seed={} requests={}/{} irqs={}/{} us={} {}",
        if write { "write" } else { "verify" },
        sector,
        count,
        seed,
        per_queue[0],
        per_queue[1],
        BlkDev::irqs(0) - irqs0[0],
        BlkDev::irqs(1) - irqs0[1],
        us,
        match mismatch {
            Some(_) => "MISMATCH",
            None => "ok",
        }
    );
    if let Some(s) = mismatch {
        ulog!("blk: first mismatch at sector {}", s);
        return Err("verify found data that is not the pattern");
    }
    Ok(())
}

/// One request with no data (flush), or a DISCARD / WRITE_ZEROES segment.
fn simple(blk: &mut Blk, t: u32, sector: u64, count: u32) -> Result<(), &'static str> {
    let (buf, len) = if t == T_DISCARD || t == T_WRITE_ZEROES {
        let seg = data() as *mut u8;
        // SAFETY: the start of the data area is this task's.
        unsafe {
            (seg as *mut u64).write_volatile(sector);
            (seg.add(8) as *mut u32).write_volatile(count);
            (seg.add(12) as *mut u32).write_volatile(0);
        }
        (data(), 16)
    } else {
        (0, 0)
    };
    // SAFETY: the segment (if any) stays with the device until wait_all has it back.
    unsafe { blk.dev.post(0, t, 0, buf, len) }.ok_or("request queue full")?;
    blk.dev.interrupts(true);
    blk.dev.kick(0);
    let mut outstanding = [1, 0];
    let mut st = S_UNSET;
    wait_all(blk, &mut outstanding, |_, _, _, s| {
        st = s;
        Ok(())
    })?;
    check_status(st)
}

/// `blk.bench`: `qd` requests of `size` bytes in flight, `count` in all.
fn bench(blk: &mut Blk, op: BenchOp, size: u32, qd: u32, count: u32) -> Result<(), &'static str> {
    let sectors = u64::from(size / 512);
    let span = blk.dev.capacity / sectors;
    if span == 0 {
        return Err("the disk is smaller than one request");
    }
    let t = match op {
        BenchOp::Read | BenchOp::RandRead => T_IN,
        _ => T_OUT,
    };
    let random = matches!(op, BenchOp::RandRead | BenchOp::RandWrite);
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = 0u64;
    let mut offset = || {
        let k = if random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % span
        } else {
            let k = next % span;
            next += 1;
            k
        };
        k * sectors
    };
    let irqs0 = BlkDev::irqs(0);
    let kicks0 = blk.dev.kicks;
    let (mut posted, mut completed, mut inflight) = (0u32, 0u32, 0u32);
    let t0 = time::ticks();
    let deadline = t0 + ms(blk, 120_000);
    let mut last = time::ticks();
    let mut kick_t = 0u64;
    while completed < count {
        while inflight < qd && posted < count {
            let k = posted % qd;
            let buf = data() + u64::from(k) * u64::from(size);
            // SAFETY: buffer k is in the data area, which is this task's; with completions out
            // of order two requests may share it, which only mixes bytes nobody looks at (the
            // bench never reads its data).
            unsafe { blk.dev.post(0, t, offset(), buf, size) }.ok_or("request queue full")?;
            posted += 1;
            inflight += 1;
        }
        // The time the kick takes as the guest sees it: the exit, and whatever the host runs
        // on this CPU before the vCPU is back.
        let tk = time::ticks();
        blk.dev.kick(0);
        kick_t += time::ticks() - tk;
        let mut got = false;
        while let Some((_, _, status)) = blk.dev.reap(0)? {
            check_status(status)?;
            completed += 1;
            inflight -= 1;
            got = true;
        }
        if got {
            last = time::ticks();
        } else if time::ticks() > deadline || time::ticks() - last > ms(blk, WAIT_MS) {
            return Err("the device stopped answering");
        }
    }
    let dt = (time::ticks() - t0).max(1);
    let iops = u64::from(count) * blk.khz * 1000 / dt;
    let kbps = u64::from(count) * u64::from(size) / 1024 * blk.khz * 1000 / dt;
    ulog!(
        "blk: bench op={} size={} qd={} requests={} us={} iops={} mbps={}.{} kicks={} kick_us={} irqs={}",
        op.name(),
        size,
        qd,
        count,
        dt * 1000 / blk.khz,
        iops,
        kbps / 1024,
        (kbps % 1024) * 10 / 1024,
        blk.dev.kicks - kicks0,
        kick_t * 1000 / blk.khz,
        BlkDev::irqs(0) - irqs0
    );
    Ok(())
}

fn work(blk: &mut Blk, cmd: BlkCommand) -> Result<(), &'static str> {
    match cmd {
        BlkCommand::Write {
            sector,
            count,
            seed,
        } => write_verify(blk, true, sector, count, seed),
        BlkCommand::Verify {
            sector,
            count,
            seed,
        } => write_verify(blk, false, sector, count, seed),
        BlkCommand::Flush => {
            simple(blk, T_FLUSH, 0, 0)?;
            ulog!("blk: flush ok");
            Ok(())
        }
        BlkCommand::Discard {
            sector,
            count,
            zero,
        } => {
            let t = if zero { T_WRITE_ZEROES } else { T_DISCARD };
            simple(blk, t, sector, count)?;
            ulog!(
                "blk: {} sector={} count={} ok",
                if zero { "write-zeroes" } else { "discard" },
                sector,
                count
            );
            Ok(())
        }
        BlkCommand::Bench {
            op,
            size,
            qd,
            count,
        } => bench(blk, op, size, qd, count),
        BlkCommand::Hostile => hostile::run(blk),
        BlkCommand::Queues(_) | BlkCommand::Info => Ok(()),
    }
}
