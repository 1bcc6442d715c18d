//! Soak: the built-in guest alternates `net.hostile` bursts (21 malformed transmit chains, then
//! pings) and plain pings against trapvisor's virtio-net on a TAP in a network namespace, for
//! about two minutes, while trapvisor's resident memory (VmRSS) and open fds are sampled every
//! second. After a warm-up (the first rounds: guest RAM pages first touched, the workers' and
//! the allocator's first allocations) both must stay flat: the same fd count in every sample,
//! and RSS within 1 MiB of the first warm sample (a leak of even a few hundred bytes per
//! malformed chain — over 700 of them per run — or per frame would cross that; the guest
//! reuses the same buffers every round, so its pages add nothing after the warm-up). Traffic
//! must keep flowing: every round's pings all answered, after every hostile burst too.
//!
//! Not part of `cargo test`: run with `cargo test --release --test soak -- --ignored
//! --nocapture` (root: it creates a namespace; `TRAPVISOR_CI_EXTENDED=1 bash .ci/run` does).
#[path = "common/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns::NetNs;

/// One round: a hostile burst, then 25 pings 100 ms apart (about 3 s). The command line holds
/// at most 2047 bytes; 36 rounds take about 1900.
const ROUND: &str = "net.hostile net.ping=10.0.2.1,count=25,interval=100";
const ROUNDS: usize = 36;
/// Rounds before the first sample that counts.
const WARM_UP: usize = 3;
const RSS_SLACK_KIB: u64 = 1024;

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: u64,
    rounds: usize,
    rss_kib: u64,
    fds: usize,
}

#[test]
#[ignore = "about two minutes; run with --ignored (root)"]
fn hostile_and_normal_traffic_keep_memory_and_fds_flat() {
    let Some(ns) = NetNs::new("soak") else { return };
    ns.ip(&["tuntap", "add", "tv0", "mode", "tap"]).unwrap();
    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "tv0"])
        .unwrap();
    ns.ip(&["link", "set", "tv0", "up"]).unwrap();
    let cmdline = vec![ROUND; ROUNDS].join(" ");
    assert!(cmdline.len() < 2048, "{} bytes", cmdline.len());
    // Spawned from a thread inside the namespace: the child is trapvisor itself.
    let mut child = ns
        .exec(|| {
            Command::new(env!("CARGO_BIN_EXE_trapvisor"))
                .args(["run", "--net", "tap=tv0", "--cmdline", &cmdline])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .unwrap();
    let pid = child.id();
    let rounds = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (rounds, out) = (rounds.clone(), out.clone());
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The round's own ping summary (the hostile burst's pings print one too, and
                // its own "then ping" verdict line).
                if line.starts_with("net: ping ") && line.contains(" sent=25 ") {
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        })
    };

    let start = Instant::now();
    let mut samples = Vec::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(400) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        let done = rounds.load(Ordering::SeqCst);
        if let (Some(rss_kib), Some(fds)) = (status_kib(pid, "VmRSS:"), fds(pid)) {
            // The last round's exit is not a steady state.
            if done < ROUNDS {
                samples.push(Sample {
                    secs: start.elapsed().as_secs(),
                    rounds: done,
                    rss_kib,
                    fds,
                });
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    reader.join().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let out = out.lock().unwrap().clone();
    let dump = || format!("--- stdout ---\n{out}\n--- stderr ---\n{stderr}");
    for s in &samples {
        println!(
            "soak: t={:>3}s rounds={:>2} VmRSS={} KiB fds={}",
            s.secs, s.rounds, s.rss_kib, s.fds
        );
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", dump());

    // Traffic kept flowing: every round's pings answered, every hostile burst's pings too.
    let pings: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("net: ping ") && l.contains(" sent=25 "))
        .collect();
    assert_eq!(pings.len(), ROUNDS, "{}", dump());
    assert!(
        pings.iter().all(|l| l.contains(" received=25 ")),
        "{}",
        dump()
    );
    let hostile_ok = out
        .lines()
        .filter(|l| l.starts_with("net: hostile peer=") && l.ends_with("then ping ok"))
        .count();
    assert_eq!(hostile_ok, ROUNDS, "{}", dump());
    assert!(out.contains("trapvisor-guest: PASS"), "{}", dump());

    // Flat after the warm-up.
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.rounds >= WARM_UP).collect();
    assert!(
        warm.len() >= 30,
        "only {} samples after the warm-up",
        warm.len()
    );
    let base = warm[0];
    for s in &warm {
        assert_eq!(s.fds, base.fds, "fd count changed: {s:?} vs {base:?}");
        assert!(
            s.rss_kib <= base.rss_kib + RSS_SLACK_KIB,
            "RSS grew by {} KiB after the warm-up: {s:?} vs {base:?}",
            s.rss_kib - base.rss_kib
        );
    }
    let last = warm[warm.len() - 1];
    println!(
        "soak: {} rounds in {} s; after warm-up {} samples, VmRSS {} -> {} KiB (max {} KiB), fds {}",
        ROUNDS,
        start.elapsed().as_secs(),
        warm.len(),
        base.rss_kib,
        last.rss_kib,
        warm.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        base.fds
    );
}
