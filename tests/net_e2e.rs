//! End to end: the built-in guest drives trapvisor's virtio-net through real KVM exits, a real
//! TAP (in a network namespace this test creates) and real interrupts. The host side is the
//! namespace's kernel (ARP, ICMP) and guest/net-host.py (ICMP over a raw socket, UDP).
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netns::NetNs;

const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.15";

/// A namespace with a TAP `tv0` at 10.0.2.1/24, up. `None` (test skipped) without netns.
fn setup(tag: &str) -> Option<NetNs> {
    let ns = NetNs::new(tag)?;
    ns.ip(&["tuntap", "add", "tv0", "mode", "tap"]).unwrap();
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "tv0"])
        .unwrap();
    ns.ip(&["link", "set", "tv0", "up"]).unwrap();
    Some(ns)
}

fn in_ns(ns: &NetNs, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name(), program]);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn trapvisor(ns: &NetNs, net: &str, cmdline: &str, extra: &[&str]) -> Child {
    in_ns(ns, env!("CARGO_BIN_EXE_trapvisor"))
        .args(["run", "--net", net])
        .args(extra)
        .args(["--cmdline", cmdline])
        .spawn()
        .unwrap()
}

fn host_tool(ns: &NetNs, args: &[&str]) -> Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/guest/net-host.py");
    let mut c = in_ns(ns, "python3");
    c.arg(script).args(args);
    c
}

/// Runs the host tool to its end; fails the test with its stderr unless it succeeded.
fn host_ok(ns: &NetNs, args: &[&str]) {
    let host = host_tool(ns, args).output().unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
}

/// Reads the child's stdout until a line contains `needle`; returns what was read. The rest
/// of the output is drained on a thread and comes back from `finish`.
struct Guest {
    child: Child,
    seen: String,
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Guest {
    fn start(child: Child) -> Guest {
        Guest {
            child,
            seen: String::new(),
            rest: None,
        }
    }

    fn wait_for(&mut self, needle: &str) {
        let mut out = BufReader::new(self.child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut line = String::new();
        while Instant::now() < deadline && out.read_line(&mut line).unwrap_or(0) > 0 {
            self.seen.push_str(&line);
            if line.contains(needle) {
                break;
            }
            line.clear();
        }
        assert!(
            self.seen.contains(needle),
            "guest never printed {needle}:\n{}",
            self.seen
        );
        self.rest = Some(std::thread::spawn(move || {
            let mut s = String::new();
            for l in out.lines().map_while(Result::ok) {
                s.push_str(&l);
                s.push('\n');
            }
            s
        }));
    }

    fn finish(mut self) -> common::Output {
        let rest = self.rest.take();
        let mut out = common::wait(self.child, Duration::from_secs(120));
        if let Some(r) = rest {
            out.stdout = r.join().unwrap();
        }
        out.stdout.insert_str(0, &self.seen);
        out
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn summary<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .rev()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{out}"))
}

/// Starts `net-host.py recv ARGS` and waits until its socket is bound (its first line, which
/// comes back with the rest of its output to read later).
fn host_recv(ns: &NetNs, args: &[&str]) -> (Child, String) {
    let mut child = host_tool(ns, &[&["recv"], args].concat()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(&mut out, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let first = String::from_utf8_lossy(&first).to_string();
    assert!(first.contains("host: recv listening"), "host recv: {first}");
    child.stdout = Some(out);
    (child, first + "\n")
}

fn guest_pings_host(tag: &str, options: &str) {
    let Some(ns) = setup(tag) else { return };
    let net = format!("tap=tv0{options}");
    let child = trapvisor(&ns, &net, "net.ping=10.0.2.1,count=20", &["--stats"]);
    let out = common::wait(child, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = summary(&out.stdout, "net: ping ");
    assert_eq!(field(line, "sent"), Some("20"), "{line}");
    assert_eq!(field(line, "received"), Some("20"), "{line}");
    assert_eq!(field(line, "loss"), Some("0.0%"), "{line}");
    // The kick path: with ioeventfd no notify write exits to the VMM; with exit, they do.
    let notify_exits = out
        .stderr
        .lines()
        .any(|l| l.contains("mmio virtio-net notify"));
    assert_eq!(
        notify_exits,
        options.contains("notify=exit"),
        "{}",
        out.stderr
    );
}

/// A device counter from `--stats` (`name=value` in its counter lines; absent: 0).
fn counter(stderr: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    stderr
        .split([' ', ',', '\n'])
        .find_map(|w| w.strip_prefix(key.as_str()))
        .map_or(0, |v| v.parse().unwrap())
}

#[test]
fn guest_pings_host_over_ioeventfd_and_irqfd() {
    guest_pings_host("ping-default", "");
}

#[test]
fn guest_pings_host_over_exit_and_signal_msi() {
    guest_pings_host("ping-exit-msi", ",notify=exit,irq=msi");
}

/// notify=exit: each request is sent inside its kick's exit and the TAP read right after, so
/// the host's reply (its stack answers inside the `writev`) is in the receive ring before the
/// guest runs again. A guest that arms its interrupt only when it is about to halt
/// (`wait=halt`) then never halts for a reply: no receive interrupts.
#[test]
fn exit_kick_puts_the_reply_in_the_ring_before_the_guest_runs() {
    let Some(ns) = setup("ping-exit-halt") else {
        return;
    };
    let ping = "net.ping=10.0.2.1,count=20,wait=halt";
    let child = trapvisor(&ns, "tap=tv0,notify=exit", ping, &["--stats"]);
    let out = common::wait(child, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = summary(&out.stdout, "net: ping ");
    assert_eq!(field(line, "received"), Some("20"), "{line}");
    let irqs = counter(&out.stderr, "rx0.interrupts");
    assert!(
        irqs < 3,
        "{irqs} receive interrupts for 20 replies\n{}",
        out.stderr
    );
}

#[test]
fn host_pings_guest() {
    let Some(ns) = setup("echo") else { return };
    let mut g = Guest::start(trapvisor(&ns, "tap=tv0", "net.echo,seconds=15", &[]));
    g.wait_for("net: echo listening");
    let host = host_tool(&ns, &["ping", GUEST_IP, "--count", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&host.stdout);
    assert!(
        host.status.success(),
        "host ping failed: {text}{}",
        String::from_utf8_lossy(&host.stderr)
    );
    assert!(text.contains("received=20"), "{text}");
    // UDP echo through the same guest.
    let host = host_tool(&ns, &["echo", GUEST_IP, "7", "--count", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&host.stdout);
    assert!(host.status.success(), "host udp echo failed: {text}");
    let out = g.finish();
    assert_eq!(out.code, Some(0), "{}", out.dump());
}

#[test]
fn udp_guest_to_host_without_loss() {
    let Some(ns) = setup("udp-tx") else { return };
    let (mut recv, mut text) = host_recv(&ns, &["9000", "--seconds", "20", "--expect", "2000"]);
    let child = trapvisor(
        &ns,
        "tap=tv0",
        "net.udp-tx=10.0.2.1:9000,pps=1000,seconds=10,count=2000,size=512",
        &[],
    );
    let out = common::wait(child, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = summary(&out.stdout, "net: udp-tx ");
    assert_eq!(field(line, "sent"), Some("2000"), "{line}");
    let host = recv.wait().unwrap();
    std::io::Read::read_to_string(recv.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(host.success(), "host recv: {text}");
    assert!(
        text.contains("received=2000") && text.contains("lost=0") && text.contains("bad=0"),
        "{text}"
    );
}

#[test]
fn udp_host_to_guest_without_loss() {
    let Some(ns) = setup("udp-rx") else { return };
    let mut g = Guest::start(trapvisor(&ns, "tap=tv0", "net.udp-rx=9000,seconds=6", &[]));
    g.wait_for("net: udp-rx listening");
    host_ok(
        &ns,
        &[
            "send", GUEST_IP, "9000", "--count", "2000", "--pps", "1000", "--size", "512",
        ],
    );
    let out = g.finish();
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = summary(&out.stdout, "net: udp-rx port=");
    assert_eq!(field(line, "received"), Some("2000"), "{line}");
    assert_eq!(field(line, "lost"), Some("0"), "{line}");
    assert_eq!(field(line, "bad"), Some("0"), "{line}");
}

#[test]
fn hostile_chains_do_not_stop_the_device() {
    let Some(ns) = setup("hostile") else { return };
    let child = trapvisor(&ns, "tap=tv0", "net.hostile", &[]);
    let out = common::wait(child, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = summary(&out.stdout, "net: hostile peer=");
    assert!(line.ends_with("then ping ok"), "{line}");
}

/// A namespace with a multiqueue TAP `tv0` at 10.0.2.1/24, up, IPv6 off (so that nothing but
/// the test's own frames goes to the TAP and its drop counter counts only those).
fn setup_mq(tag: &str) -> Option<NetNs> {
    let ns = NetNs::new(tag)?;
    ns.ip(&["tuntap", "add", "tv0", "mode", "tap", "multi_queue"])
        .unwrap();
    let off = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sysctl", "-qw"])
        .arg("net.ipv6.conf.tv0.disable_ipv6=1")
        .status()
        .unwrap();
    assert!(off.success(), "sysctl disable_ipv6 in the namespace");
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "tv0"])
        .unwrap();
    ns.ip(&["link", "set", "tv0", "up"]).unwrap();
    Some(ns)
}

/// Frames the host kernel dropped on the way into the TAP (its queue to the reader full): the
/// TAP's TX `dropped` counter.
fn tap_tx_dropped(ns: &NetNs) -> u64 {
    let json = ns.ip(&["-s", "-j", "link", "show", "tv0"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats64.tx.dropped in {json}"))
}

/// One of trapvisor's virtio-net counters ("rx1.frames"), from the device report `--stats`
/// prints at exit (its non-zero counters as `key=value` words; a counter not there is 0).
fn device_counter(stderr: &str, key: &str) -> u64 {
    assert!(
        stderr.contains("virtio-net@"),
        "no virtio-net report in:\n{stderr}"
    );
    let found: Vec<u64> = stderr
        .split_whitespace()
        .filter_map(|w| {
            let v = w.strip_prefix(key)?.strip_prefix('=')?;
            v.trim_end_matches(',').parse().ok()
        })
        .collect();
    assert!(found.len() <= 1, "{key} twice in:\n{stderr}");
    found.first().copied().unwrap_or(0)
}

fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
}

/// `A/B` of a per-pair field.
fn per_pair(line: &str, key: &str) -> Vec<u64> {
    field(line, key)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .split('/')
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn two_queue_pairs_carry_udp_both_ways() {
    let Some(ns) = setup_mq("mq") else { return };
    let (mut recv, mut text) = host_recv(&ns, &["9000", "--seconds", "30", "--expect", "2000"]);
    // The guest sends from 4 source ports spread over both pairs, then listens.
    let mut g = Guest::start(trapvisor(
        &ns,
        "tap=tv0,queues=2",
        "net.pairs=2 net.udp-tx=10.0.2.1:9000,pps=1000,seconds=10,count=2000,size=512,flows=4 \
         net.udp-rx=9001,seconds=6",
        &["--stats"],
    ));
    g.wait_for("net: udp-rx listening");
    // 16 source ports: the TAP spreads them over its two queues by flow hash.
    host_ok(
        &ns,
        &[
            "send", GUEST_IP, "9001", "--count", "2000", "--pps", "1000", "--size", "512",
            "--flows", "16",
        ],
    );
    let out = g.finish();
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(out.stdout.contains(" pairs=2"), "{}", out.stdout);

    let tx = summary(&out.stdout, "net: udp-tx ");
    assert_eq!(num(tx, "sent"), 2000, "{tx}");
    assert_eq!(per_pair(tx, "by_pair"), [1000, 1000], "{tx}");
    let host_rx = recv.wait().unwrap();
    std::io::Read::read_to_string(recv.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(host_rx.success(), "host recv: {text}");
    assert!(
        text.contains("received=2000") && text.contains("lost=0") && text.contains("bad=0"),
        "{text}"
    );

    let rx = summary(&out.stdout, "net: udp-rx port=");
    assert_eq!(num(rx, "received"), 2000, "{rx}");
    assert_eq!(num(rx, "lost"), 0, "{rx}");
    assert_eq!(num(rx, "bad"), 0, "{rx}");
    let by_pair = per_pair(rx, "by_pair");
    assert!(by_pair.iter().all(|&n| n > 0), "{rx}");

    // The device's own counters: both pairs carried frames each way, the control queue took
    // VQ_PAIRS_SET.
    let e = &out.stderr;
    for key in ["rx0.frames", "rx1.frames", "tx0.frames", "tx1.frames"] {
        assert!(device_counter(e, key) > 0, "{key} is 0:\n{e}");
    }
    assert!(device_counter(e, "tx0.frames") >= 1000, "{e}");
    assert!(device_counter(e, "tx1.frames") >= 1000, "{e}");
    assert!(
        device_counter(e, "rx0.frames") + device_counter(e, "rx1.frames") >= 2000,
        "{e}"
    );
    assert_eq!(device_counter(e, "ctrl.ok"), 1, "{e}");
    assert_eq!(device_counter(e, "ctrl.err"), 0, "{e}");
}

/// The guest stops reposting receive buffers for 2 s while the host keeps sending: the device
/// stops reading the TAP (counted: `rx0.no_buffers`), the host kernel drops what overflows the
/// TAP's queue (counted: the TAP's TX `dropped`), and afterwards the guest receives again. Every
/// datagram is accounted for: received by the guest, or dropped at the TAP.
#[test]
fn rx_stall_counts_drops_and_recovers() {
    let Some(ns) = setup_mq("stall") else { return };
    let mut g = Guest::start(trapvisor(
        &ns,
        "tap=tv0",
        "net.udp-rx=9000,seconds=10,stall=2000,stall_at=1000,wait=halt",
        &["--stats"],
    ));
    g.wait_for("net: udp-rx listening");
    let dropped0 = tap_tx_dropped(&ns);
    let count = 10_000u64;
    let host = host_tool(
        &ns,
        &[
            "send",
            GUEST_IP,
            "9000",
            "--count",
            &count.to_string(),
            "--pps",
            "2000",
            "--size",
            "256",
        ],
    )
    .output()
    .unwrap();
    let host_text = String::from_utf8_lossy(&host.stdout).to_string();
    assert!(host.status.success(), "{host_text}");
    assert!(
        host_text.contains(&format!("sent={count}")),
        "{host_text}{}",
        String::from_utf8_lossy(&host.stderr)
    );
    let out = g.finish();
    let dropped = tap_tx_dropped(&ns) - dropped0;
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let rx = summary(&out.stdout, "net: udp-rx port=");
    let (received, lost) = (num(rx, "received"), num(rx, "lost"));
    assert_eq!(num(rx, "bad"), 0, "{rx}");
    assert_eq!(num(rx, "late"), 0, "{rx}");
    assert!(num(rx, "stalled_us") >= 1_900_000, "{rx}");
    // 2 s at 2000/s is far more than the ring (256) and the TAP's queue (500) hold.
    assert!(lost > 0, "nothing lost during the stall: {rx}");
    assert!(
        num(rx, "received_after_stall") > 0,
        "nothing after the stall: {rx}"
    );
    // Honest accounting: each datagram arrived, or the kernel dropped it at the full TAP.
    assert_eq!(received + lost, count, "{rx}");
    assert_eq!(
        lost, dropped,
        "guest lost {lost}, TAP dropped {dropped}: {rx}"
    );
    // trapvisor saw the driver run out of buffers and stopped reading meanwhile.
    let e = &out.stderr;
    assert!(device_counter(e, "rx0.no_buffers") >= 1, "{e}");
    assert!(device_counter(e, "rx0.frames") >= received, "{e}");
    assert_eq!(device_counter(e, "rx0.drops.truncated"), 0, "{e}");
}
