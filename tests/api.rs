//! The control API against a running built-in guest.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use trapvisor::api::client::request;

fn socket(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "trapvisor-apitest-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// Starts trapvisor with the API and waits until the guest printed `ready`.
fn start(sock: &Path, cmdline: &str, ready: &str) -> Child {
    start_with(sock, &[], cmdline, ready).0
}

/// As `start`, with more options; also returns what the guest printed up to `ready`.
fn start_with(sock: &Path, extra: &[&str], cmdline: &str, ready: &str) -> (Child, String) {
    let mut child = common::trapvisor()
        .args(["run", "--api-socket"])
        .arg(sock)
        .args(extra)
        .args(["--cmdline", cmdline])
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut line, mut seen) = (String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && out.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains(ready) {
            break;
        }
        line.clear();
    }
    assert!(line.contains(ready), "guest never printed {ready}:\n{seen}");
    // Keep draining stdout so the guest never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    (child, seen)
}

fn count(stats: &Value, reason: &str, place: &str) -> u64 {
    stats["all"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason && r["where"] == place)
        .and_then(|r| r["count"].as_u64())
        .unwrap_or(0)
}

#[test]
fn stats_count_exactly_what_the_guest_did_and_map_lists_every_device() {
    let sock = socket("stats");
    let child = start(&sock, "pio-loop=123 mmio-loop=45 idle", "idle: halted");
    let stats = request(&sock, "GET", "/stats").unwrap();
    assert_eq!(count(&stats, "io-out", "pio testdev sink"), 123, "{stats}");
    assert_eq!(
        count(&stats, "mmio-write", "mmio testdev sink"),
        45,
        "{stats}"
    );
    let map = request(&sock, "GET", "/map").unwrap();
    let devices: Vec<&str> = ["pio", "mmio"]
        .iter()
        .flat_map(|b| map[b].as_array().unwrap().iter())
        .map(|e| e["device"].as_str().unwrap())
        .collect();
    for d in ["serial0", "i8042", "debug-exit", "testdev", "acpi-pm"] {
        assert!(devices.contains(&d), "{d} missing from {map}");
    }
    let vm = request(&sock, "GET", "/vm").unwrap();
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["config"]["cmdline"], "pio-loop=123 mmio-loop=45 idle");
    request(&sock, "PUT", "/vm/shutdown").unwrap();
    let out = common::wait(child, Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(!sock.exists());
}

#[test]
fn pause_stops_exits_and_resume_continues() {
    let sock = socket("pause");
    // A long exit loop: exits keep coming until we stop the VM.
    let child = start(&sock, "hello pio-loop=100000000", "trapvisor-guest: hello");
    let sink = |s: &Value| count(s, "io-out", "pio testdev sink");
    std::thread::sleep(Duration::from_millis(200));
    request(&sock, "PUT", "/vm/pause").unwrap();
    assert_eq!(request(&sock, "GET", "/vm").unwrap()["state"], "paused");
    let a = sink(&request(&sock, "GET", "/stats").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let b = sink(&request(&sock, "GET", "/stats").unwrap());
    assert!(a > 0, "the loop never ran");
    assert_eq!(a, b, "exits counted while paused");
    request(&sock, "PUT", "/vm/resume").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let c = sink(&request(&sock, "GET", "/stats").unwrap());
    assert!(c > b, "no exits after resume ({b} -> {c})");
    request(&sock, "PUT", "/vm/shutdown").unwrap();
    let out = common::wait(child, Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{}", out.dump());
}

#[test]
fn socket_is_owner_only_under_umask_000_and_a_group_option_widens_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    for (group, mode) in [(None, 0o600), (Some("0"), 0o660)] {
        let sock = socket(if group.is_some() {
            "umask-group"
        } else {
            "umask"
        });
        let mut cmd = common::trapvisor();
        cmd.args(["run", "--api-socket"]).arg(&sock);
        if let Some(g) = group {
            cmd.args(["--api-socket-group", g]);
        }
        cmd.args(["--cmdline", "idle"]);
        // SAFETY: umask(2) is async-signal-safe and only changes the child's mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let meta = std::fs::metadata(&sock).expect("no API socket");
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{group:?}");
        if group.is_some() {
            assert_eq!(meta.gid(), 0);
        }
        // Still usable by its owner.
        assert!(request(&sock, "GET", "/vm").is_ok());
        request(&sock, "PUT", "/vm/shutdown").unwrap();
        let out = common::wait(child, Duration::from_secs(30));
        assert_eq!(out.code, Some(0), "{}", out.dump());
        assert!(!sock.exists(), "socket left behind");
    }
    let out = common::run(&["run", "--api-socket-group", "0"]);
    common::assert_usage_error(&out, "required");
    let out = common::run(&[
        "run",
        "--api-socket",
        "/tmp/x.sock",
        "--api-socket-group",
        "no-such-group-here",
    ]);
    common::assert_usage_error(&out, "no group");
}

#[test]
fn existing_socket_path_is_a_one_line_error() {
    let sock = socket("exists");
    std::fs::write(&sock, b"").unwrap();
    let out = common::run(&["run", "--api-socket", sock.to_str().unwrap()]);
    common::assert_usage_error(&out, "already exists");
    std::fs::remove_file(&sock).unwrap();
    let out = common::run(&["run", "--api-socket", "/nonexistent-dir/x.sock"]);
    common::assert_usage_error(&out, "cannot listen");
}

#[test]
fn stats_carry_kvm_own_counters_per_vcpu() {
    let sock = socket("kstats");
    let child = start(&sock, "pio-loop=500 mmio-loop=50 idle", "idle: halted");
    let stats = request(&sock, "GET", "/stats").unwrap();
    let k = &stats["kernel"];
    assert_eq!(k["source"], "KVM_GET_STATS_FD", "{k}");
    assert!(k.get("errors").is_none(), "{k}");
    assert!(k["vm_id"].as_str().unwrap().starts_with("kvm-"), "{k}");
    let v0 = &k["vcpus"][0];
    assert_eq!(v0["id"], 0);
    assert!(v0["kvm_id"].as_str().unwrap().ends_with("/vcpu-0"), "{k}");
    // Every exit that reached trapvisor was an exit KVM took first.
    let user: u64 = stats["all"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["where"] == "" && r["reason"] != "intr")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert!(user >= 550, "{stats}");
    assert_eq!(v0["userspace_exits"].as_u64(), Some(user), "{k}");
    let kexits = v0["stats"]["exits"].as_u64().unwrap();
    assert!(
        kexits >= user,
        "KVM exits {kexits} < trapvisor's {user}: {k}"
    );
    assert_eq!(k["exits"]["kernel"].as_u64(), Some(kexits));
    // KVM's names and types, parsed from its descriptors: counters, histograms as arrays.
    for name in [
        "exits",
        "halt_exits",
        "io_exits",
        "mmio_exits",
        "halt_poll_success_ns",
    ] {
        assert!(v0["stats"][name].is_u64(), "{name} missing: {k}");
    }
    assert!(v0["stats"]["halt_wait_hist"].is_array(), "{k}");
    assert_eq!(k["types"]["halt_wait_hist"], "log-hist", "{k}");
    assert_eq!(k["units"]["halt_poll_success_ns"], "ns", "{k}");
    assert!(k["vm"].as_object().is_some_and(|m| !m.is_empty()), "{k}");
    // Where a per-type counter is not kept although trapvisor saw such exits, a note says so.
    if v0["stats"]["io_exits"] == 0 {
        let notes = k["notes"].to_string();
        assert!(notes.contains("io_exits=0 although"), "{k}");
    }
    request(&sock, "PUT", "/vm/shutdown").unwrap();
    let out = common::wait(child, Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{}", out.dump());
}

#[test]
fn ctl_prints_tables_and_draws_the_histogram() {
    let sock = socket("ctl");
    let child = start(&sock, "pio-loop=10 idle", "idle: halted");
    let s = sock.to_str().unwrap();
    let out = common::run(&["ctl", "--api-socket", s, "stats"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(out.stdout.contains("pio testdev sink"), "{}", out.dump());
    let out = common::run(&["ctl", "--api-socket", s, "map"]);
    assert!(out.stdout.contains("serial0"), "{}", out.dump());
    let svg = std::env::temp_dir().join(format!("trapvisor-hist-{}.svg", std::process::id()));
    let out = common::run(&[
        "ctl",
        "--api-socket",
        s,
        "histogram",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("<polyline") && text.contains("io-out"),
        "{text}"
    );
    std::fs::remove_file(&svg).unwrap();
    let out = common::run(&["ctl", "--api-socket", s, "top", "--count", "2"]);
    assert!(out.stdout.contains("REASON"), "{}", out.dump());
    // The kernel table beside it, with rates between the two refreshes.
    assert!(
        out.stdout.contains("kernel (KVM's own statistics"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("RATE/s"), "{}", out.dump());
    let out = common::run(&["ctl", "--api-socket", s, "shutdown"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let done = common::wait(child, Duration::from_secs(20));
    assert_eq!(done.code, Some(0), "{}", done.dump());
    // The VM is gone: ctl says so in one line.
    let out = common::run(&["ctl", "--api-socket", s, "stats"]);
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(out.stderr.contains("cannot connect"), "{}", out.dump());
}

#[test]
fn stats_show_kicks_dispatches_and_interrupts_per_vector_of_an_event_loop_device() {
    let sock = socket("rng");
    let (child, seen) = start_with(&sock, &["--rng"], "rng idle", "idle: halted");
    let taken: u64 = seen
        .lines()
        .find_map(|l| l.strip_prefix("rng: interrupts="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no interrupt count in:\n{seen}"));
    let stats = request(&sock, "GET", "/stats").unwrap();
    let dev = &stats["devices"][0];
    assert_eq!(dev["device"], "virtio-rng@00:01.0", "{stats}");
    assert_eq!(dev["own_threads"], false, "{dev}");
    // The guest wrote the notify register once: one ioeventfd kick, no exit, one dispatch.
    assert_eq!(dev["queues"][0]["kicks_ioeventfd"], 1, "{dev}");
    assert_eq!(dev["queues"][0]["kicks_exit"], 0, "{dev}");
    let sources = stats["event_loop"].as_array().unwrap();
    let q0 = sources
        .iter()
        .find(|s| s["source"] == "virtio-rng@00:01.0 queue 0")
        .unwrap_or_else(|| panic!("no event-loop source for the queue: {stats}"));
    assert_eq!(q0["dispatches"], 1, "{stats}");
    // Every interrupt the guest took came through vector 0, by irqfd on a GSI of its own.
    let v0 = dev["interrupts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vector"] == 0)
        .unwrap_or_else(|| panic!("vector 0 missing: {dev}"));
    assert_eq!(v0["delivered"], taken, "{dev}");
    assert_eq!(v0["path"], "irqfd", "{dev}");
    assert!(v0["gsi"].as_u64().is_some_and(|g| g >= 24), "{dev}");
    assert_eq!(
        dev["counters"]["requests"].as_u64().map(|n| n > 0),
        Some(true),
        "{dev}"
    );
    // The guest reset the device when it was done: no ioeventfd left in the map.
    let map = request(&sock, "GET", "/map").unwrap();
    assert_eq!(
        map["ioeventfds"].as_array().map(|a| a.len()),
        Some(0),
        "{map}"
    );
    request(&sock, "PUT", "/vm/shutdown").unwrap();
    let out = common::wait(child, Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{}", out.dump());
}
