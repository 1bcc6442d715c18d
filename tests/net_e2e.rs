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

#[test]
fn guest_pings_host_over_ioeventfd_and_irqfd() {
    guest_pings_host("ping-default", "");
}

#[test]
fn guest_pings_host_over_exit_and_signal_msi() {
    guest_pings_host("ping-exit-msi", ",notify=exit,irq=msi");
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
    let mut recv = host_tool(
        &ns,
        &["recv", "9000", "--seconds", "20", "--expect", "2000"],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let child = trapvisor(
        &ns,
        "tap=tv0",
        "net.udp-tx=10.0.2.1:9000,pps=1000,seconds=2,size=512",
        &[],
    );
    let out = common::wait(child, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = summary(&out.stdout, "net: udp-tx ");
    assert_eq!(field(line, "sent"), Some("2000"), "{line}");
    let host = recv.wait().unwrap();
    let mut text = String::new();
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
    let host = host_tool(
        &ns,
        &[
            "send", GUEST_IP, "9000", "--count", "2000", "--pps", "1000", "--size", "512",
        ],
    )
    .output()
    .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
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
