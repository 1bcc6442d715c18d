//! Seeing virtio-net's trap path: `/stats` and `/map` for a VM whose built-in guest pinged the
//! host through a real TAP (in a namespace this test creates), and the `--trace` timeline's
//! chains on the queue workers: kick → chain popped → TAP write → used ring → interrupt (or
//! the interrupt held behind the reply's, `txhold`), and TAP readable → TAP read → used ring →
//! interrupt.
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netns::NetNs;
use serde_json::Value;
use trapvisor::api::client::{format_map, format_stats, request};

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("trapvisor-observe-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn setup(tag: &str) -> Option<NetNs> {
    let ns = NetNs::new(tag)?;
    ns.ip(&["tuntap", "add", "tv0", "mode", "tap"]).unwrap();
    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "tv0"])
        .unwrap();
    ns.ip(&["link", "set", "tv0", "up"]).unwrap();
    Some(ns)
}

/// The flow events of `json`, by id: (phase, name, thread name) in time order.
fn chains(json: &Value) -> Vec<Vec<(String, String, String)>> {
    let events = json["traceEvents"].as_array().unwrap();
    let thread = |tid: &Value| {
        events
            .iter()
            .find(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["tid"] == *tid)
            .and_then(|e| e["args"]["name"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let mut by_id: std::collections::BTreeMap<u64, Vec<(f64, String, String, String)>> =
        Default::default();
    for e in events.iter().filter(|e| e["cat"] == "flow") {
        by_id.entry(e["id"].as_u64().unwrap()).or_default().push((
            e["ts"].as_f64().unwrap(),
            e["ph"].as_str().unwrap().to_string(),
            e["name"].as_str().unwrap().to_string(),
            thread(&e["tid"]),
        ));
    }
    by_id
        .into_values()
        .map(|mut v| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v.into_iter().map(|(_, p, n, t)| (p, n, t)).collect()
        })
        .collect()
}

/// Whether some chain has exactly these step names in this order (first a start, last an end),
/// all on a thread whose name starts with `thread`.
fn has_chain(chains: &[Vec<(String, String, String)>], thread: &str, names: &[&str]) -> bool {
    has_flow(chains, thread, names, true)
}

/// A flow on `thread` with `names` in order; `finished`: ended by an interrupt ("f").
fn has_flow(
    chains: &[Vec<(String, String, String)>],
    thread: &str,
    names: &[&str],
    finished: bool,
) -> bool {
    chains.iter().any(|c| {
        c.first().is_some_and(|s| s.0 == "s")
            && (!finished || c.last().is_some_and(|s| s.0 == "f"))
            && c.iter().all(|s| s.2.starts_with(thread))
            && {
                let mut want = names.iter();
                let mut next = want.next();
                for s in c {
                    if next == Some(&s.1.as_str()) {
                        next = want.next();
                    }
                }
                next.is_none()
            }
    })
}

#[test]
fn stats_map_and_trace_show_the_net_trap_path() {
    let Some(ns) = setup("observe") else { return };
    let sock = temp("api.sock");
    let trace = temp("trace.json");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_trapvisor")])
        .args(["run", "--net", "tap=tv0", "--api-socket"])
        .arg(&sock)
        .arg("--trace")
        .arg(&trace)
        .args(["--cmdline", "net.ping=10.0.2.1,count=10,wait=intr idle"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut line, mut seen) = (String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline && out.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains("idle: halted") {
            break;
        }
        line.clear();
    }
    assert!(
        seen.contains("idle: halted"),
        "guest never went idle:\n{seen}"
    );
    assert!(seen.contains("received=10"), "{seen}");
    // wait=intr: the guest reads its used rings only after an interrupt, so every completion
    // it waited for came with one (with wait=irq its polling loop can consume a completion
    // before the device reads used_event, and the device then rightly raises nothing).
    assert!(seen.contains("wait=intr"), "{seen}");
    std::thread::spawn(move || for _ in out.lines() {});

    // /stats: the device, its queues' kicks, interrupts per vector, its counters.
    let stats = request(&sock, "GET", "/stats").unwrap();
    let dev = stats["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"].as_str().unwrap().starts_with("virtio-net@"))
        .unwrap_or_else(|| panic!("no virtio-net in {stats}"));
    assert_eq!(dev["own_threads"], true, "{dev}");
    let c = &dev["counters"];
    assert!(c["tx0.frames"].as_u64().unwrap() >= 10, "{c}");
    assert!(c["rx0.frames"].as_u64().unwrap() >= 10, "{c}");
    assert!(c["tx0.wakeups"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["pair0.tap_wakeups"].as_u64().unwrap() >= 1, "{c}");
    let held = c["tx0.irq_held"].as_u64().unwrap();
    // Every interrupt the device raised went out through some vector, by irqfd.
    let raised = c["tx0.interrupts"].as_u64().unwrap() + c["rx0.interrupts"].as_u64().unwrap();
    let vectors = dev["interrupts"].as_array().unwrap();
    let delivered: u64 = vectors
        .iter()
        .map(|v| v["delivered"].as_u64().unwrap())
        .sum();
    let pending = vectors.iter().filter(|v| v["pending"] == true).count() as u64;
    assert!(raised >= 1, "{dev}");
    assert!(delivered + pending >= raised, "{dev}");
    assert!(
        vectors
            .iter()
            .all(|v| v["path"] == "irqfd" && v["gsi"].is_u64()),
        "{dev}"
    );
    // With notify=ioeventfd no queue kick reached the transport as an exit.
    for q in dev["queues"].as_array().unwrap() {
        assert_eq!(q["kicks_exit"], 0, "{q}");
    }
    let table = format_stats(&stats);
    assert!(
        table.contains("virtio-net@00:") && table.contains("tx0.frames="),
        "{table}"
    );

    // /map: an ioeventfd per enabled queue, at its notify address; the MSI-X routes.
    let map = request(&sock, "GET", "/map").unwrap();
    let evts = map["ioeventfds"].as_array().unwrap();
    let enabled = dev["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["enabled"] == true)
        .count();
    assert_eq!(evts.len(), enabled, "{map}");
    for e in evts {
        let q = e["queue"].as_u64().unwrap() as usize;
        assert_eq!(e["addr"], dev["queues"][q]["ioeventfd"], "{e}");
        assert_eq!(e["waiter"], "device worker", "{e}");
    }
    let routes = map["msix_routes"].as_array().unwrap();
    assert!(
        routes.iter().any(|r| r["armed"] == true
            && r["gsi"].is_u64()
            && r["used_by"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u == "queue 0")),
        "{map}"
    );
    let table = format_map(&map);
    assert!(
        table.contains("ioeventfds") && table.contains("msi-x vectors"),
        "{table}"
    );

    request(&sock, "PUT", "/vm/shutdown").unwrap();
    let done = common::wait(child, Duration::from_secs(30));
    assert_eq!(done.code, Some(0), "{}", done.dump());

    // The timeline: chains on the worker thread ("net0-tv0").
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let chains = chains(&json);
    // A ping's request ends at its used ring: its interrupt is held behind the reply's
    // (`txhold`), and the guest takes the completion with the reply.
    assert!(
        has_flow(
            &chains,
            "net0-",
            &["ioeventfd wakeup", "queue pop", "tap write", "used ring"],
            false
        ),
        "no TX chain kick → used ring on the worker: {chains:?}"
    );
    // Each hold is on the timeline, the request's flow going on to it.
    if held > 0 {
        assert!(
            has_flow(
                &chains,
                "net0-",
                &[
                    "ioeventfd wakeup",
                    "tap write",
                    "used ring",
                    "interrupt held"
                ],
                false
            ),
            "{held} holds, none on the timeline: {chains:?}"
        );
    }
    assert!(
        has_chain(
            &chains,
            "net0-",
            &["tap ready", "tap read", "used ring", "interrupt"]
        ),
        "no RX chain TAP → interrupt on the worker: {chains:?}"
    );
    let summary = common::run(&["trace-summary", trace.to_str().unwrap()]);
    assert_eq!(summary.code, Some(0), "{}", summary.dump());
    assert!(
        summary.stdout.contains("tap writev") || summary.stdout.contains("tap readv"),
        "{}",
        summary.stdout
    );
    std::fs::remove_file(&trace).unwrap();
}
