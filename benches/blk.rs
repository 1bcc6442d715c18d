//! virtio-blk against its floor: the built-in guest's `blk.bench` through `--disk` (kick by
//! ioeventfd, a worker's io_uring, completion to the used ring) against a bare io_uring loop in
//! this process doing the same I/O on the same file, in the same run.
//!
//! The image is a file of `--size` MiB in the temp directory, written through once (so every
//! block exists) and read once (so both sides start from a warm page cache). Cases: 4 KiB
//! random reads at queue depth 1 and 32, and 1 MiB sequential reads at depth 4. Printed per
//! case: IOPS and MB/s of both, and trapvisor's share of the floor's IOPS (target ≥ 0.8).
//!
//! `cargo bench --bench blk` (needs /dev/kvm; options `-- --size MIB --count N`).
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

struct Case {
    name: &'static str,
    op: &'static str,
    size: u32,
    qd: u32,
    count: u32,
}

/// The floor: `count` reads of `size` bytes, `qd` in flight, at the offsets the guest uses.
fn bare(path: &std::path::Path, c: &Case) -> (f64, f64) {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let span = f.metadata().unwrap().len() / u64::from(c.size);
    let mut ring = IoUring::new(256).unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..c.qd).map(|_| vec![0u8; c.size as usize]).collect();
    let iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // The guest's offsets: xorshift64 from the same seed, or sequential.
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = 0u64;
    let mut offset = || {
        let k = if c.op == "randread" {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % span
        } else {
            let k = next % span;
            next += 1;
            k
        };
        k * u64::from(c.size)
    };
    let t0 = Instant::now();
    let (mut posted, mut done, mut inflight) = (0u32, 0u32, 0u32);
    while done < c.count {
        while inflight < c.qd && posted < c.count {
            let k = (posted % c.qd) as usize;
            let e = opcode::Readv::new(types::Fd(f.as_raw_fd()), &iovs[k], 1)
                .offset(offset())
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
    let secs = t0.elapsed().as_secs_f64();
    let iops = f64::from(c.count) / secs;
    (iops, iops * f64::from(c.size) / 1e6)
}

/// The guest's figures from its `blk: bench` line.
fn parse_line(line: &str) -> (f64, f64) {
    let get = |k: &str| -> f64 {
        line.split(' ')
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let iops = get("iops=");
    let size = get("size=");
    (iops, iops * size / 1e6)
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
    let cmdline: Vec<String> = cases
        .iter()
        .map(|c| {
            format!(
                "blk.bench={},size={},qd={},count={}",
                c.op, c.size, c.qd, c.count
            )
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_trapvisor"))
        .args(["run", "--memory", "512M", "--disk"])
        .arg(format!("path={}", img.display()))
        .args(["--cmdline", &cmdline.join(" ")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        panic!("trapvisor failed");
    }
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("blk: bench"))
        .collect();
    assert_eq!(lines.len(), cases.len(), "{stdout}");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "virtio-blk vs a bare io_uring loop, {size_mib} MiB image in the page cache, {} CPUs, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:<28} {:>12} {:>10} {:>12} {:>10} {:>7}",
        "case", "bare IOPS", "bare MB/s", "guest IOPS", "guest MB/s", "ratio"
    );
    for (c, line) in cases.iter().zip(&lines) {
        let (b_iops, b_mbs) = bare(&img, c);
        let (g_iops, g_mbs) = parse_line(line);
        println!(
            "{:<28} {:>12.0} {:>10.1} {:>12.0} {:>10.1} {:>6.2}x{}",
            c.name,
            b_iops,
            b_mbs,
            g_iops,
            g_mbs,
            g_iops / b_iops,
            if g_iops / b_iops >= 0.8 {
                ""
            } else {
                "  (below the 0.8 target)"
            }
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
