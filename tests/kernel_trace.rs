//! `--trace-kernel`: KVM's tracepoints on trapvisor's threads, on this host's /dev/kvm (as root,
//! which these tests and CI are). Where the host cannot trace (no tracefs, no privilege), each
//! test checks the one line that says so instead.
mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use trapvisor::api::client::request;

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("trapvisor-ktrace-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Whether this machine lets trapvisor trace KVM (else the reason, from trapvisor itself).
fn can_trace() -> Result<(), String> {
    trapvisor::trace::kernel::KernelTrace::open(false).map(|_| ())
}

/// Starts trapvisor with the API, waiting until the guest printed `ready`.
fn start(sock: &std::path::Path, extra: &[&str], cmdline: &str, ready: &str) -> Child {
    let mut child = common::trapvisor()
        .args(["run", "--trace-kernel", "--api-socket"])
        .arg(sock)
        .args(extra)
        .args(["--cmdline", cmdline])
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && out.read_line(&mut line).unwrap_or(0) > 0 {
        if line.contains(ready) {
            break;
        }
        line.clear();
    }
    assert!(line.contains(ready), "guest never printed {ready}");
    std::thread::spawn(move || for _ in out.lines() {});
    child
}

/// trapvisor's own count of exits KVM returned to it (all rows, interrupted returns too).
fn userspace_exits(stats: &Value) -> u64 {
    stats["all"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["where"] == "")
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn every_return_to_userspace_is_one_kvm_userspace_exit_and_pio_exits_name_their_device() {
    if let Err(why) = can_trace() {
        let out = common::run(&["run", "--trace-kernel", "--cmdline", "pio-loop=10"]);
        assert_eq!(out.code, Some(0), "{}", out.dump());
        assert!(out.stderr.contains(&why), "{}", out.dump());
        return;
    }
    let sock = temp("count.sock");
    let child = start(&sock, &[], "pio-loop=1000 idle", "idle: halted");
    // The collector drains every 20 ms: wait until it caught up with the (now idle) guest.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut stats, mut seen);
    loop {
        stats = request(&sock, "GET", "/stats").unwrap();
        seen = stats["kernel_trace"]["seen"]["kvm_userspace_exit"]
            .as_u64()
            .unwrap_or(0);
        if seen == userspace_exits(&stats) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let kt = &stats["kernel_trace"];
    assert_eq!(seen, userspace_exits(&stats), "{kt}");
    assert!(seen > 1000, "{kt}");
    assert_eq!(kt["threads"][0]["name"], "vcpu0", "{kt}");
    assert_eq!(kt["lost_records"], 0, "{kt}");
    // The 1000 port writes went to trapvisor, named by device and register.
    let rows = kt["reasons"].as_array().unwrap();
    let to_sink: u64 = rows
        .iter()
        .flat_map(|r| r["places"].as_array().unwrap().iter())
        .filter(|p| p["where"] == "pio testdev sink")
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert!(to_sink >= 1000, "{kt}");
    match kt["mode"].as_str() {
        // A VMX/SVM host: per hardware reason.
        Some("exits") => assert!(
            rows.iter()
                .any(|r| r["reason"] == "ioio" || r["reason"] == "IO_INSTRUCTION"),
            "{kt}"
        ),
        // A host without kvm_exit (PVM): per KVM_RUN, and the note says so.
        _ => {
            assert!(rows.iter().any(|r| r["reason"] == "KVM_RUN -> IO"), "{kt}");
            assert!(kt["note"].as_str().unwrap().contains("no kvm_exit"), "{kt}");
        }
    }
    let s = sock.to_str().unwrap();
    let out = common::run(&["ctl", "--api-socket", s, "stats"]);
    assert!(
        out.stdout.contains("this host provides: "),
        "{}",
        out.dump()
    );
    // The histogram gets the kernel's panel.
    let svg = temp("hist.svg");
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
    std::fs::remove_file(&svg).unwrap();
    assert!(
        text.contains("kernel: ") && text.matches("<polyline").count() >= 2,
        "{text}"
    );
    request(&sock, "PUT", "/vm/shutdown").unwrap();
    let out = common::wait(child, Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{}", out.dump());
}

#[test]
fn kernel_events_land_on_the_thread_that_made_them_in_order() {
    let path = temp("rng.json");
    let p = path.to_str().unwrap();
    let out = common::run(&[
        "run",
        "--rng",
        "--trace-kernel",
        "--trace",
        p,
        "--cmdline",
        "rng",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    if let Err(why) = can_trace() {
        assert!(out.stderr.contains(&why), "{}", out.dump());
        assert!(json["otherData"].get("kernel").is_none());
        return;
    }
    let events = json["traceEvents"].as_array().unwrap();
    let track = |name: &str| {
        events
            .iter()
            .find(|e| e["ph"] == "M" && e["args"]["name"] == name)
            .and_then(|e| e["tid"].as_u64())
            .unwrap_or_else(|| panic!("no track {name}"))
    };
    let (vcpu, lp) = (track("vcpu0"), track("event-loop"));
    let spans = |tid: u64, cat: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == tid && e["cat"] == cat)
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                (ts, ts + e["dur"].as_f64().unwrap())
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    // The vCPU's KVM_RUNs (or exits) and trapvisor's handling of each return are on the same
    // track, one after the other: no kernel span overlaps another, and none overlaps a
    // handler span (a handler runs between two KVM_RUNs).
    let kernel = spans(vcpu, "kernel");
    let handlers = spans(vcpu, "exit");
    assert!(
        kernel.len() > 10 && handlers.len() > 10,
        "{} {}",
        kernel.len(),
        handlers.len()
    );
    for w in kernel.windows(2) {
        assert!(w[0].1 <= w[1].0 + 0.001, "kernel spans overlap: {w:?}");
    }
    if json["otherData"]["kernel"]["mode"] == "kvm_run" {
        for h in &handlers {
            assert!(
                !kernel
                    .iter()
                    .any(|k| k.0 < h.1 - 0.001 && h.0 < k.1 - 0.001),
                "handler {h:?} overlaps a KVM_RUN"
            );
        }
    }
    // The interrupts the event loop raised were injected on its own thread, none on the vCPU.
    let injected = |tid: u64| {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == tid && e["cat"] == "irq")
            .filter(|e| e["name"].as_str().unwrap().starts_with("kvm_msi_set_irq"))
            .count()
    };
    assert!(injected(lp) >= 1, "no injection on the event loop");
    assert_eq!(injected(vcpu), 0);
    // The flow from the rng's kick ends in the kernel.
    assert!(
        json["otherData"]["kernel"]["flows_joined"]["interrupts"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let k = &json["otherData"]["kernel"];
    assert_eq!(k["vcpus"][0]["name"], "vcpu0", "{k}");
}

#[test]
fn without_the_privilege_or_tracefs_one_line_says_why_and_the_vm_runs() {
    // No capabilities (root's uid, but neither CAP_PERFMON nor CAP_SYS_ADMIN): perf refuses.
    let exe = env!("CARGO_BIN_EXE_trapvisor");
    let run = |pre: &[&str], extra: &[&str]| {
        let mut c = std::process::Command::new(pre[0]);
        c.args(&pre[1..])
            .arg(exe)
            .args(["run", "--trace-kernel", "--cmdline", "pio-loop=10"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        common::wait(c.spawn().unwrap(), Duration::from_secs(60))
    };
    let out = run(
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("--trace-kernel"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.dump());
    assert!(
        lines[0].contains("need root or CAP_PERFMON") || lines[0].contains("run as root"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("trapvisor-guest: PASS"),
        "{}",
        out.dump()
    );
    // No tracefs (a mount namespace where an empty tmpfs hides it).
    let out = run(
        &["unshare", "--mount", "sh", "-c",
          "mount -t tmpfs none /sys/kernel/tracing 2>/dev/null || mount -t tmpfs none /sys/kernel; exec \"$@\"", "sh"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("--trace-kernel"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.dump());
    assert!(lines[0].contains("tracefs"), "{}", out.dump());
}

#[test]
fn seccomp_stays_on_for_traced_threads() {
    // vcpu0 opens its events, then installs its filter: its forbidden syscall still stops it.
    let out = common::run(&[
        "run",
        "--trace-kernel",
        "--seccomp-selftest",
        "--cmdline",
        "pio-loop=10",
    ]);
    assert_eq!(out.code, Some(128 + libc::SIGSYS), "{}", out.dump());
    assert!(
        out.stderr.contains("thread 'vcpu0' made forbidden syscall"),
        "{}",
        out.dump()
    );
}
