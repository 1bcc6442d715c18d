//! virtio-blk end to end: the built-in guest's `blk.*` commands against `--disk` images.
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_usage_error, trapvisor, wait, Output};

fn scratch(name: &str, size: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tv-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.img"));
    let _ = std::fs::remove_file(&p);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn run_with(disk: &str, cmdline: &str, env: &[(&str, &str)]) -> Output {
    let mut c = trapvisor();
    c.args(["run", "--disk", disk, "--cmdline", cmdline]);
    for (k, v) in env {
        c.env(k, v);
    }
    wait(c.spawn().unwrap(), Duration::from_secs(120))
}

fn run(disk: &Path, opts: &str, cmdline: &str) -> Output {
    run_with(&format!("path={}{opts}", disk.display()), cmdline, &[])
}

fn assert_pass(out: &Output) {
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(
        out.stdout.contains("trapvisor-guest: PASS"),
        "{}",
        out.dump()
    );
}

/// The guest's pattern: word `w` of sector `sector` (as guest/src/blk/mod.rs).
fn pattern(seed: u32, sector: u64, w: u64) -> u64 {
    let mut z = (u64::from(seed) << 40) ^ sector.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn sector_matches(bytes: &[u8], seed: u32, sector: u64) -> bool {
    let s = &bytes[sector as usize * 512..(sector as usize + 1) * 512];
    (0..64u64).all(|w| {
        let at = w as usize * 8;
        u64::from_le_bytes(s[at..at + 8].try_into().unwrap()) == pattern(seed, sector, w)
    })
}

fn checksum(p: &Path) -> u64 {
    std::fs::read(p)
        .unwrap()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

#[test]
fn data_written_in_one_run_is_read_back_in_the_next() {
    let img = scratch("persist", 16 << 20);
    let out = run(&img, "", "blk.info blk.write=100,count=3000,seed=7");
    assert_pass(&out);
    assert!(
        out.stdout
            .contains("blk: write sector=100 count=3000 seed=7"),
        "{}",
        out.dump()
    );
    let out = run(&img, "", "blk.verify=100,count=3000,seed=7");
    assert_pass(&out);
    assert!(
        out.stdout
            .contains("blk: verify sector=100 count=3000 seed=7"),
        "{}",
        out.dump()
    );
    // Another seed does not match: FAIL.
    let out = run(&img, "", "blk.verify=100,count=8,seed=8");
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(out.stdout.contains("MISMATCH"), "{}", out.dump());
    let bytes = std::fs::read(&img).unwrap();
    assert!(sector_matches(&bytes, 7, 100) && sector_matches(&bytes, 7, 3099));
    assert!(bytes[..100 * 512].iter().all(|&b| b == 0));
}

#[test]
fn flush_reaches_the_file() {
    let img = scratch("flush", 4 << 20);
    let out = run(&img, ",direct=on", "blk.write=0,count=64,seed=3 blk.flush");
    assert_pass(&out);
    assert!(out.stdout.contains("blk: flush ok"), "{}", out.dump());
    let bytes = std::fs::read(&img).unwrap();
    assert!((0..64).all(|s| sector_matches(&bytes, 3, s)));
}

#[test]
fn a_read_only_disk_refuses_writes_and_stays_unchanged() {
    let img = scratch("ro", 4 << 20);
    assert_pass(&run(&img, "", "blk.write=0,count=16,seed=9"));
    let before = checksum(&img);
    let out = run(
        &img,
        ",readonly=on",
        "blk.info blk.write=0,count=16,seed=10",
    );
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(
        out.stdout.contains("features=") && out.stdout.contains(",RO,"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("IOERR"), "{}", out.dump());
    assert_eq!(checksum(&img), before);
    // Reads and flushes work.
    assert_pass(&run(
        &img,
        ",readonly=on",
        "blk.verify=0,count=16,seed=9 blk.flush",
    ));
    assert_eq!(checksum(&img), before);
}

#[test]
fn discard_punches_holes() {
    let img = scratch("discard", 8 << 20);
    assert_pass(&run(&img, "", "blk.write=0,count=8192,seed=1 blk.flush"));
    let full = std::fs::metadata(&img).unwrap().blocks();
    assert!(full >= 8192, "{full} blocks after writing 4 MiB");
    let out = run(&img, "", "blk.discard=0,count=8192 blk.flush");
    assert_pass(&out);
    let after = std::fs::metadata(&img).unwrap().blocks();
    assert!(after + 8000 <= full, "blocks {full} -> {after}");
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..4 << 20].iter().all(|&b| b == 0));
    // WRITE_ZEROES too.
    assert_pass(&run(
        &img,
        "",
        "blk.write=0,count=16,seed=2 blk.discard=0,count=16,zero=1",
    ));
    assert!(std::fs::read(&img).unwrap()[..8192].iter().all(|&b| b == 0));
}

#[test]
fn hostile_requests_get_ioerr_or_unsupp_and_good_ones_work_after() {
    let img = scratch("hostile", 4 << 20);
    let out = run(&img, "", "blk.hostile");
    assert_pass(&out);
    assert!(
        out.stdout.contains("blk: hostile cases=17 wrong=0"),
        "{}",
        out.dump()
    );
    assert!(!out.stdout.contains("WRONG"), "{}", out.dump());
    // On a read-only disk too (no DISCARD offered: discards are UNSUPP), the image untouched.
    let before = checksum(&img);
    let out = run(&img, ",readonly=on", "blk.hostile");
    assert_pass(&out);
    assert!(
        out.stdout.contains("blk: hostile cases=17 wrong=0"),
        "{}",
        out.dump()
    );
    assert_eq!(checksum(&img), before);
}

#[test]
fn two_queues_both_carry_requests() {
    let img = scratch("mq", 8 << 20);
    let out = run(
        &img,
        ",queues=2",
        "blk.queues=2 blk.write=0,count=4096,seed=4 blk.verify=0,count=4096,seed=4",
    );
    assert_pass(&out);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("blk: write"))
        .unwrap();
    let reqs = line.split("requests=").nth(1).unwrap();
    let (a, b) = reqs.split_once('/').unwrap();
    let b: u64 = b.split(' ').next().unwrap().parse().unwrap();
    assert!(a.parse::<u64>().unwrap() > 0 && b > 0, "{line}");
}

/// notify=exit: the vCPU thread serves the kick inside the exit (seccomp on, as by default),
/// with io_uring and with the thread pool, one and two queues; the kicks arrive as exits.
#[test]
fn kicks_served_on_the_vcpu_with_notify_exit() {
    let img = scratch("exit", 8 << 20);
    for opts in [
        ",notify=exit",
        ",notify=exit,engine=pool",
        ",notify=exit,queues=2",
    ] {
        let queues = if opts.contains("queues=2") {
            "blk.queues=2 "
        } else {
            ""
        };
        let mut c = trapvisor();
        c.args(["run", "--stats", "--disk"])
            .arg(format!("path={}{opts}", img.display()))
            .arg("--cmdline")
            .arg(format!(
                "{queues}blk.write=0,count=4096,seed=7 blk.verify=0,count=4096,seed=7 blk.flush \
                 blk.bench=randread,qd=8,count=2000 blk.hostile"
            ));
        let out = wait(c.spawn().unwrap(), Duration::from_secs(120));
        assert_pass(&out);
        assert!(
            out.stdout.contains("blk: hostile cases=17 wrong=0"),
            "{}",
            out.dump()
        );
        // The queue table: QUEUE SIZE VECTOR IOEVENTFD KICKS(EVTFD) KICKS(EXIT).
        let row = out
            .stderr
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("QUEUE"))
            .nth(1)
            .unwrap_or_else(|| panic!("no queue table: {}", out.dump()));
        let cols: Vec<&str> = row.split_whitespace().collect();
        let exits: u64 = cols.last().unwrap().parse().unwrap();
        assert!(exits > 0, "{opts}: {row}");
    }
    let bytes = std::fs::read(&img).unwrap();
    assert!((0..4096).all(|s| sector_matches(&bytes, 7, s)));
}

#[test]
fn the_thread_pool_and_the_fallback() {
    let img = scratch("pool", 4 << 20);
    assert_pass(&run(
        &img,
        ",engine=pool",
        "blk.write=0,count=512,seed=5 blk.verify=0,count=512,seed=5 blk.flush",
    ));
    // A kernel that refuses io_uring: one line, then the pool.
    let out = run_with(
        &format!("path={}", img.display()),
        "blk.verify=0,count=512,seed=5",
        &[(trapvisor::block::NO_IO_URING_ENV, "1")],
    );
    assert_pass(&out);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("io_uring"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.dump());
    assert!(lines[0].contains("using a thread pool"), "{}", out.dump());
    // engine=uring insists.
    let out = run_with(
        &format!("path={},engine=uring", img.display()),
        "blk.info",
        &[(trapvisor::block::NO_IO_URING_ENV, "1")],
    );
    assert_eq!(out.code, Some(2), "{}", out.dump());
}

#[test]
fn bad_disk_input_is_one_line_and_exit_2() {
    let out = common::run(&["run", "--disk", "path=/nonexistent/disk.img"]);
    assert_usage_error(&out, "cannot open disk image /nonexistent/disk.img");
    let out = common::run(&["run", "--disk", "path=/tmp"]);
    assert_usage_error(&out, "disk image /tmp is a directory");
    let out = common::run(&["run", "--disk", "path=/dev/null"]);
    assert_usage_error(&out, "not a regular file or a block device");
    let img = scratch("bad", 1 << 20);
    let p = img.to_str().unwrap();
    for bad in [
        ",bogus=1",
        ",queues=0",
        ",readonly=yes",
        ",serial=012345678901234567890",
    ] {
        let out = common::run(&["run", "--disk", &format!("path={p}{bad}")]);
        assert_usage_error(&out, "--disk");
    }
    let out = common::run(&["run", "--disk", "readonly=on"]);
    assert_usage_error(&out, "path= is missing");
    let tiny = scratch("tiny", 100);
    let out = common::run(&["run", "--disk", &format!("path={}", tiny.display())]);
    assert_usage_error(&out, "smaller than one sector");
    // Locked by another process (as a second VM would hold it).
    let holder = std::fs::File::open(&img).unwrap();
    // SAFETY: flock on a file this test owns.
    let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&holder), libc::LOCK_EX) };
    assert_eq!(r, 0);
    let out = common::run(&["run", "--disk", &format!("path={p}")]);
    assert_usage_error(&out, "is in use by another VM or process");
    drop(holder);
    // Two disks on one image: the second is refused.
    let out = common::run(&[
        "run",
        "--disk",
        &format!("path={p}"),
        "--disk",
        &format!("path={p}"),
    ]);
    assert_usage_error(&out, "locked");
    // Read-only shares.
    let out = common::run(&[
        "run",
        "--disk",
        &format!("path={p},readonly=on"),
        "--disk",
        &format!("path={p},readonly=on"),
        "--cmdline",
        "hello",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
}

/// The disk as the API, `ctl` and `--trace` show it: per-queue counters with latency, the
/// image and its mode in the map, and flows from a kick through submission and completion to
/// the interrupt.
#[test]
fn stats_map_and_trace_show_the_disk() {
    let img = scratch("observe", 4 << 20);
    let dir = img.parent().unwrap();
    let sock = dir.join("observe.sock");
    let trace = dir.join("observe.json");
    let _ = std::fs::remove_file(&sock);
    let child = trapvisor()
        .args(["run", "--api-socket", sock.to_str().unwrap()])
        .args(["--trace", trace.to_str().unwrap(), "--disk"])
        .arg(format!(
            "path={},readonly=off,serial=tv-disk-1",
            img.display()
        ))
        .args([
            "--cmdline",
            "blk.write=0,count=512,seed=1 blk.verify=0,count=512,seed=1 blk.flush idle",
        ])
        .spawn()
        .unwrap();
    let s = sock.to_str().unwrap();
    // Until the guest idles (the workload is over).
    let mut stats = serde_json::Value::Null;
    for _ in 0..600 {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(v) = trapvisor::api::client::request(&sock, "GET", "/stats") else {
            continue;
        };
        let c = &v["devices"][0]["counters"];
        let over = c["q0.flush"].as_u64() == Some(1) && c["q0.inflight"].as_u64() == Some(0);
        stats = v;
        if over {
            break;
        }
    }
    let c = &stats["devices"][0]["counters"];
    assert_eq!(
        stats["devices"][0]["device"], "virtio-blk@00:01.0",
        "{stats}"
    );
    assert_eq!(c["q0.write"].as_u64(), Some(2), "{c}");
    assert_eq!(c["q0.read"].as_u64(), Some(2), "{c}");
    assert_eq!(c["q0.written_bytes"].as_u64(), Some(512 * 512), "{c}");
    assert_eq!(c["q0.inflight"].as_u64(), Some(0), "{c}");
    assert!(c["q0.inflight_max"].as_u64().unwrap() >= 2, "{c}");
    assert!(c["q0.latency_p99_us"].as_u64().unwrap() >= c["q0.latency_p50_us"].as_u64().unwrap());
    assert!(c["q0.latency_max_us"].as_u64().unwrap() > 0, "{c}");
    let out = common::run(&["ctl", "--api-socket", s, "stats"]);
    assert!(
        out.stdout.contains("q0.write=2") && out.stdout.contains("q0.latency_p50_us="),
        "{}",
        out.dump()
    );
    let out = common::run(&["ctl", "--api-socket", s, "map"]);
    assert!(out.stdout.contains("virtio devices:"), "{}", out.dump());
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("virtio-blk@00:01.0") && l.contains("image="))
        .unwrap_or("");
    assert!(
        line.contains(&format!("image={} rw", img.display())) && line.contains("engine=io_uring"),
        "{}",
        out.dump()
    );
    let out = common::run(&["ctl", "--api-socket", s, "shutdown"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let out = wait(child, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    // The timeline: a kick's flow goes through submission and completion to an interrupt.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    let step = |name: &str| {
        events
            .iter()
            .filter(|e| e["cat"] == "flow" && e["name"] == name)
            .filter_map(|e| e["id"].as_u64())
            .collect::<std::collections::HashSet<u64>>()
    };
    let (kicks, subs, dones) = (
        step("ioeventfd wakeup"),
        step("submission"),
        step("completion"),
    );
    let ends: std::collections::HashSet<u64> = events
        .iter()
        .filter(|e| e["cat"] == "flow" && e["ph"] == "f")
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let whole = kicks
        .iter()
        .filter(|id| subs.contains(id) && dones.contains(id) && ends.contains(id))
        .count();
    assert!(
        whole >= 1,
        "no kick -> submission -> completion -> interrupt flow"
    );
    assert!(events.iter().any(|e| e["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("virtio-blk queue 0: submit"))));
}
