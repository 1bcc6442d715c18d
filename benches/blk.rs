//! virtio-blk against two floors measured in the same run: the built-in guest's `blk.bench`
//! through `--disk` (the guest's kick is an exit that signals the queue's ioeventfd, the
//! queue's worker thread wakes, pops the request and reads through its io_uring, writes the
//! used ring; the guest polls it) against
//!
//! * **bare**: one host thread doing the same reads at the same offsets and depth on the same
//!   file with io_uring (`submit_and_wait`): no VM, no virtqueue, no second thread. The target
//!   of issue 17 (≥ 0.8× of its IOPS) is against this floor.
//! * **handoff**: the same reads carried the way the device carries them, minus the VM: a
//!   "driver" thread posts up to `qd` requests into a shared ring, wakes a worker thread through
//!   an eventfd once per batch and spins on a completion counter; the worker reads the eventfd
//!   (blocking, as the device's worker sleeps in epoll), submits the batch to its io_uring and
//!   publishes the completions. What this floor loses against `bare` is the cost of a second
//!   thread (wakeup, cache traffic, sharing the CPUs) on this host; what the guest with
//!   `notify=ioeventfd` loses against it is the VM: the kick's exit (on PVM a page fault at
//!   CPL3, the instruction emulated, the vCPU's world switch both ways) and the vCPU being
//!   preempted when the worker is woken on its CPU.
//!
//! The image is a file of `--size` MiB in the temp directory, written once and read once (both
//! sides start from a warm page cache). Cases: 4 KiB random reads at queue depth 1 and 32, and
//! 1 MiB sequential reads at depth 4. The guest spins on the used ring (interrupts suppressed),
//! with the default `notify=ioeventfd` and with `notify=exit` (the kick is served on the vCPU
//! thread inside the exit: one thread, as the bare floor). Each round runs both floors and both
//! variants once per case, back to back; a ratio is the median of the rounds' ratios (a round
//! saw one state of a shared machine), printed with the lowest and highest. Per variant also:
//! kicks per request and the guest's time per kick (TSC around the notify write: the exit and
//! whatever ran on the vCPU's CPU before it came back).
//!
//! `cargo bench --bench blk` (needs /dev/kvm; options `-- --size MIB --count N --rounds R`).
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

struct Case {
    name: &'static str,
    op: &'static str,
    size: u32,
    qd: u32,
    count: u32,
}

struct Variant {
    name: &'static str,
    disk: &'static str,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        name: "notify=ioeventfd",
        disk: "",
    },
    Variant {
        name: "notify=exit",
        disk: ",notify=exit",
    },
];

/// The guest's offsets: xorshift64 from the guest's seed, or sequential; in bytes.
struct Offsets {
    rng: u64,
    next: u64,
    span: u64,
    size: u64,
    random: bool,
}

impl Offsets {
    fn new(c: &Case, file_len: u64) -> Offsets {
        Offsets {
            rng: 0x2545_f491_4f6c_dd1d,
            next: 0,
            span: file_len / u64::from(c.size),
            size: u64::from(c.size),
            random: c.op == "randread",
        }
    }

    fn next(&mut self) -> u64 {
        let k = if self.random {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % self.span
        } else {
            let k = self.next % self.span;
            self.next += 1;
            k
        };
        k * self.size
    }
}

fn buffers(c: &Case) -> (Vec<Vec<u8>>, Vec<libc::iovec>) {
    let mut bufs: Vec<Vec<u8>> = (0..c.qd).map(|_| vec![0u8; c.size as usize]).collect();
    let iovs = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    (bufs, iovs)
}

/// The bare floor: IOPS of `count` reads, `qd` in flight, from this thread.
fn bare(path: &std::path::Path, c: &Case) -> f64 {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut off = Offsets::new(c, f.metadata().unwrap().len());
    let mut ring = IoUring::new(256).unwrap();
    let (_bufs, iovs) = buffers(c);
    let t0 = Instant::now();
    let (mut posted, mut done, mut inflight) = (0u32, 0u32, 0u32);
    while done < c.count {
        while inflight < c.qd && posted < c.count {
            let k = (posted % c.qd) as usize;
            let e = opcode::Readv::new(types::Fd(f.as_raw_fd()), &iovs[k], 1)
                .offset(off.next())
                .build()
                .user_data(u64::from(posted));
            // SAFETY: the iovec and its buffer live until the loop has reaped everything.
            unsafe { ring.submission().push(&e).unwrap() };
            posted += 1;
            inflight += 1;
        }
        ring.submit_and_wait(1).unwrap();
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), c.size as i32, "bare read failed");
            done += 1;
            inflight -= 1;
        }
    }
    f64::from(c.count) / t0.elapsed().as_secs_f64()
}

/// What the handoff floor's two threads share: a ring of offsets (as the available ring), the
/// driver's published index, the worker's completion count (as the used index).
struct Handoff {
    offsets: Vec<AtomicU64>,
    avail: AtomicU32,
    used: AtomicU32,
    stop: AtomicBool,
    kick: EventFd,
}

/// The handoff floor: IOPS of the same reads posted by this thread and carried out by a worker
/// thread woken through an eventfd.
fn handoff(path: &std::path::Path, c: &Case) -> f64 {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut off = Offsets::new(c, f.metadata().unwrap().len());
    let slots = 256u32;
    let h = Arc::new(Handoff {
        offsets: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        avail: AtomicU32::new(0),
        used: AtomicU32::new(0),
        stop: AtomicBool::new(false),
        kick: EventFd::new(0).unwrap(),
    });
    let (qd, size) = (c.qd, c.size);
    let worker = {
        let h = h.clone();
        std::thread::spawn(move || {
            let mut ring = IoUring::new(256).unwrap();
            let (_bufs, iovs) = buffers(&Case {
                name: "",
                op: "",
                size,
                qd,
                count: 0,
            });
            let mut next = 0u32;
            loop {
                let _ = h.kick.read();
                if h.stop.load(Ordering::Acquire) {
                    return;
                }
                let avail = h.avail.load(Ordering::Acquire);
                let n = avail.wrapping_sub(next);
                for i in 0..n {
                    let at = next.wrapping_add(i);
                    let e =
                        opcode::Readv::new(types::Fd(f.as_raw_fd()), &iovs[(at % qd) as usize], 1)
                            .offset(h.offsets[(at % slots) as usize].load(Ordering::Relaxed))
                            .build()
                            .user_data(u64::from(at));
                    // SAFETY: the iovecs and buffers live as long as this thread.
                    unsafe { ring.submission().push(&e).unwrap() };
                }
                ring.submit_and_wait(n as usize).unwrap();
                let mut done = 0;
                for cqe in ring.completion() {
                    assert_eq!(cqe.result(), size as i32, "handoff read failed");
                    done += 1;
                }
                next = next.wrapping_add(n);
                h.used.fetch_add(done, Ordering::Release);
            }
        })
    };
    let t0 = Instant::now();
    let (mut posted, mut seen) = (0u32, 0u32);
    while seen < c.count {
        let batch = (seen + c.qd).min(c.count).saturating_sub(posted);
        if batch > 0 {
            for _ in 0..batch {
                h.offsets[(posted % slots) as usize].store(off.next(), Ordering::Relaxed);
                posted += 1;
            }
            h.avail.store(posted, Ordering::Release);
            h.kick.write(1).unwrap();
        }
        loop {
            let used = h.used.load(Ordering::Acquire);
            if used != seen {
                seen = used;
                break;
            }
            std::hint::spin_loop();
        }
    }
    let iops = f64::from(c.count) / t0.elapsed().as_secs_f64();
    h.stop.store(true, Ordering::Release);
    h.kick.write(1).unwrap();
    worker.join().unwrap();
    iops
}

/// The guest's figures from its `blk: bench` line: IOPS, kicks, microseconds in kicks.
fn guest(img: &std::path::Path, c: &Case, v: &Variant) -> (f64, f64, f64) {
    let cmdline = format!(
        "blk.bench={},size={},qd={},count={}",
        c.op, c.size, c.qd, c.count
    );
    let out = Command::new(env!("CARGO_BIN_EXE_trapvisor"))
        .args(["run", "--memory", "512M", "--disk"])
        .arg(format!("path={}{}", img.display(), v.disk))
        .args(["--cmdline", &cmdline])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        panic!("trapvisor failed");
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("blk: bench"))
        .unwrap_or_else(|| panic!("no bench line in {stdout}"));
    let get = |k: &str| -> f64 {
        line.split(' ')
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (get("iops="), get("kicks="), get("kick_us="))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{:.2}x ({lo:.2}-{hi:.2})", median(v))
}

fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let size_mib = opt("--size", 256);
    let count = opt("--count", 20_000) as u32;
    let rounds = opt("--rounds", 5).max(1) as usize;
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("blk bench: skipped (no /dev/kvm)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tv-blk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("bench.img");
    {
        let mut f = std::fs::File::create(&img).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 13 + 7) as u8).collect();
        for _ in 0..size_mib {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let _ = std::fs::read(&img).unwrap();
    let cases = [
        Case {
            name: "4 KiB random read, QD1",
            op: "randread",
            size: 4096,
            qd: 1,
            count,
        },
        Case {
            name: "4 KiB random read, QD32",
            op: "randread",
            size: 4096,
            qd: 32,
            count: count * 4,
        },
        Case {
            name: "1 MiB sequential read, QD4",
            op: "read",
            size: 1 << 20,
            qd: 4,
            count: (count / 20).max(64),
        },
    ];
    let load0 = load();
    // Per case: bare and handoff IOPS per round; per case and variant: (iops, kicks, kick_us).
    let mut floors = vec![(Vec::new(), Vec::new()); cases.len()];
    let mut runs = vec![vec![Vec::new(); VARIANTS.len()]; cases.len()];
    for _ in 0..rounds {
        for (ci, c) in cases.iter().enumerate() {
            floors[ci].0.push(bare(&img, c));
            floors[ci].1.push(handoff(&img, c));
            for (vi, v) in VARIANTS.iter().enumerate() {
                runs[ci][vi].push(guest(&img, c, v));
            }
        }
    }
    println!(
        "virtio-blk vs its floors, {size_mib} MiB image in the page cache, {} CPUs, {rounds} rounds, load {load0} at the start, {} at the end",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    println!(
        "bare: one host thread, io_uring, no VM; handoff: a driver thread and a worker thread woken \
         by an eventfd, no VM. Ratios: median of the rounds (lowest-highest); target >= 0.8x of bare"
    );
    println!(
        "{:<27} {:<18} {:>9} {:>16} {:>16} {:>9} {:>9}",
        "case", "who", "IOPS", "/ bare", "/ handoff", "kicks/req", "us/kick"
    );
    for (ci, c) in cases.iter().enumerate() {
        let (b, h) = &floors[ci];
        println!("{:<27} {:<18} {:>9.0}", c.name, "bare", median(b));
        let hb: Vec<f64> = h.iter().zip(b).map(|(h, b)| h / b).collect();
        println!(
            "{:<27} {:<18} {:>9.0} {:>16}",
            "",
            "handoff",
            median(h),
            spread(&hb)
        );
        for (vi, v) in VARIANTS.iter().enumerate() {
            let r = &runs[ci][vi];
            let iops: Vec<f64> = r.iter().map(|x| x.0).collect();
            let vb: Vec<f64> = iops.iter().zip(b).map(|(g, b)| g / b).collect();
            let vh: Vec<f64> = iops.iter().zip(h).map(|(g, h)| g / h).collect();
            let kicks: f64 = r.iter().map(|x| x.1).sum();
            let kick_us: f64 = r.iter().map(|x| x.2).sum();
            let reqs = f64::from(c.count) * rounds as f64;
            println!(
                "{:<27} {:<18} {:>9.0} {:>16} {:>16} {:>9.3} {:>9.1}{}",
                "",
                v.name,
                median(&iops),
                spread(&vb),
                spread(&vh),
                kicks / reqs,
                if kicks > 0.0 { kick_us / kicks } else { 0.0 },
                if median(&vb) >= 0.8 {
                    ""
                } else {
                    "  (below 0.8x of bare)"
                }
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
