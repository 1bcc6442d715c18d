//! End to end, trapvisor against QEMU: the built-in guest (the same ELF and the same command
//! line for both) drives a virtio-net PCI device over the same TAP, in a network namespace
//! this bench makes. One run prints a table; the VMMs take turns for every workload, in an
//! order that rotates every round (the host-side floor's turn with them).
//!
//! Workloads (every one with `wait=halt`, the guest halting when it has nothing to do, unless
//! `--wait irq|poll`):
//! * **ping**: `net.ping` to the TAP's host end, 2000 requests one at a time; median and p99
//!   round trip as the guest measured it (TSC, from before its kick to the reply seen).
//! * **udp-tx 64 B / 1472 B**: `net.udp-tx` unpaced for `--secs`; packets/s the guest queued,
//!   scaled by the share the TAP really received (its RX packet counter).
//! * **udp-rx 64 B / 1472 B**: a host thread sends test datagrams unpaced for `--secs` to the
//!   guest's `net.udp-rx`, which checks every one (CRC); packets/s received.
//!
//! Per packet (per round trip for ping), over the workload's window (from the guest's `net: up`
//! or `listening` line to its summary line): **exits** = KVM_RUN returns to the VMM, counted
//! by the `kvm:kvm_userspace_exit` tracepoint (`perf stat -I 10` on the VMM process, the same
//! for both; this PVM host never fires `kvm:kvm_exit`, and has no KVM debugfs), **irqs** = the
//! interrupts the guest took on its virtio-net vectors (it counts them itself), **cpu** = the
//! VMM process's on-CPU time (every thread's `schedstat`, so the vCPU thread's time in the
//! guest counts too), in µs.
//!
//! Then the UDP streams against their **host-side floor**, measured in the same rounds
//! (`e2e/floor.rs`): the same TAP, datagrams and host end with no VM, a bare thread that only
//! `writev`s the guest's frames (udp-tx) or reads what the bench's sender sends (udp-rx). A
//! VMM's rate ÷ the floor says how much of the host's ceiling it reaches, and floor ÷ QEMU is
//! the most that trapvisor ÷ QEMU could be with a bottom half that cost nothing.
//!
//! Then trapvisor alone with `notify=exit` and with `irq=msi` against its defaults
//! (ioeventfd, irqfd), and `notify=exit` against QEMU.
//!
//! `cargo bench --bench e2e` as root, with `qemu-system-x86_64` and `/dev/kvm` (skipped with a
//! message otherwise); options `-- --secs S --rounds N` (defaults 2 and 3: each value is the
//! median of N runs; `--only ping,udp-tx-1472,...` runs a subset). Ratios are trapvisor / QEMU oriented so that **> 1 means trapvisor is
//! better** (higher packets/s, lower latency, exits, interrupts, CPU).
#[path = "e2e/floor.rs"]
mod floor;
#[path = "../tests/common/frames.rs"]
mod frames;
#[path = "../tests/common/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use netns::NetNs;

const TAP: &str = "tvb0";
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.15";
const PING_COUNT: u32 = 2000;

#[derive(Clone, Copy, PartialEq)]
enum Vmm {
    /// trapvisor with these `--net` options after `tap=...`.
    Trapvisor(&'static str),
    Qemu,
}

impl Vmm {
    fn name(self) -> String {
        match self {
            Vmm::Trapvisor("") => "trapvisor".into(),
            Vmm::Trapvisor(o) => format!("trapvisor{o}"),
            Vmm::Qemu => "qemu".into(),
        }
    }
}

#[derive(Clone, Copy)]
enum Work {
    Ping,
    Tx(u32),
    Rx(u32),
}

impl Work {
    fn name(self) -> String {
        match self {
            Work::Ping => "ping".into(),
            Work::Tx(s) => format!("udp-tx {s} B"),
            Work::Rx(s) => format!("udp-rx {s} B"),
        }
    }

    /// The guest's command line: the workload, then `idle` (halted until the VMM is stopped,
    /// so that its CPU time can be read after the summary).
    fn cmdline(self, secs: u32, wait: &str) -> String {
        let work = match self {
            Work::Ping => {
                format!("net.ping={HOST_IP},count={PING_COUNT},quiet=1,wait={wait}")
            }
            Work::Tx(size) => {
                format!("net.udp-tx={HOST_IP}:9000,pps=0,seconds={secs},size={size},wait={wait}")
            }
            Work::Rx(_) => format!("net.udp-rx=9000,seconds={},wait={wait}", secs + 2),
        };
        format!("{work} idle")
    }

    /// The line after which the workload runs, and its summary line.
    fn markers(self) -> (&'static str, &'static str) {
        match self {
            Work::Ping => ("net: up ", "net: ping dst="),
            Work::Tx(_) => ("net: up ", "net: udp-tx dst="),
            Work::Rx(_) => ("net: udp-rx listening", "net: udp-rx port="),
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// Packets (round trips for ping) in the window.
    packets: f64,
    pps: f64,
    median_us: f64,
    p99_us: f64,
    exits: Option<f64>,
    irqs: f64,
    cpu_us: f64,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn num(line: &str, key: &str) -> f64 {
    field(line, key)
        .and_then(|v| v.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no number {key}= in: {line}"))
}

/// `irqs=rx:R,tx:T,config:C` → R + T.
fn irqs(line: &str) -> f64 {
    let v = field(line, "irqs").unwrap_or_else(|| panic!("no irqs= in: {line}"));
    v.split(',')
        .filter(|p| !p.starts_with("config"))
        .filter_map(|p| p.split(':').nth(1)?.parse::<f64>().ok())
        .sum()
}

/// On-CPU nanoseconds of every thread of `pid` (schedstat's first field).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The TAP's counter (`rx`/`tx`, `packets`/`dropped`) in the namespace.
fn tap_stat(ns: &NetNs, dir: &str, what: &str) -> u64 {
    let json = ns.ip(&["-s", "-j", "link", "show", TAP]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["stats64"][dir][what].as_u64().unwrap_or(0)
}

/// The process `perf` runs (its only child).
fn child_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// zlib's CRC-32.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// A test datagram's payload (guest/net-host.py's format) of `size` bytes for `seq`: magic,
/// sequence number, size, the CRC-32 of the body, the body.
fn test_datagram(seq: u32, size: usize) -> Vec<u8> {
    let body: Vec<u8> = (16..size).map(|k| (seq as usize + k) as u8).collect();
    let mut d = Vec::with_capacity(size);
    d.extend_from_slice(b"TVN1");
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&(size as u32).to_be_bytes());
    d.extend_from_slice(&crc32(&body).to_be_bytes());
    d.extend_from_slice(&body);
    d
}

/// Sends test datagrams of `size` bytes to the guest as fast as the socket takes them for
/// `secs`; returns how many went out.
fn blast(ns: &NetNs, size: usize, secs: u32) -> u64 {
    ns.exec(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((GUEST_IP, 9000)).unwrap();
        // The body depends on seq mod 256 only: 256 templates, the sequence number patched in.
        let templates: Vec<Vec<u8>> = (0..256u32).map(|seq| test_datagram(seq, size)).collect();
        let mut buf = vec![0u8; size];
        let end = Instant::now() + Duration::from_secs(u64::from(secs));
        let mut seq = 0u32;
        while Instant::now() < end {
            for _ in 0..64 {
                buf.copy_from_slice(&templates[(seq & 0xff) as usize]);
                buf[4..8].copy_from_slice(&seq.to_be_bytes());
                if s.send(&buf).is_ok() {
                    seq += 1;
                }
            }
        }
        u64::from(seq)
    })
}

struct Bench {
    ns: NetNs,
    elf: PathBuf,
    perf: bool,
    secs: u32,
    /// The workloads' `wait=` (halt, irq, poll).
    wait: String,
    out_dir: PathBuf,
}

impl Bench {
    fn spawn(&self, vmm: Vmm, cmdline: &str, perf_out: &Path) -> Child {
        let mut c = if self.perf {
            let mut c = Command::new("perf");
            c.args([
                "stat",
                "-x",
                ",",
                "-I",
                "10",
                "-e",
                "kvm:kvm_userspace_exit",
                "-o",
            ])
            .arg(perf_out)
            .arg("--")
            .arg("ip");
            c
        } else {
            Command::new("ip")
        };
        c.args(["netns", "exec", self.ns.name()]);
        match vmm {
            Vmm::Trapvisor(opts) => {
                c.arg(env!("CARGO_BIN_EXE_trapvisor"))
                    .args(["run", "--kernel"])
                    .arg(&self.elf)
                    .args(["--net", &format!("tap={TAP}{opts}"), "--cmdline", cmdline]);
            }
            Vmm::Qemu => {
                c.args(["qemu-system-x86_64", "-accel", "kvm", "-M", "q35"])
                    .args(["-cpu", "max,-arch-capabilities", "-m", "256", "-smp", "1"])
                    .args(["-nographic", "-no-reboot", "-monitor", "none"])
                    .args(["-serial", "stdio", "-kernel"])
                    .arg(&self.elf)
                    .args(["-append", cmdline])
                    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
                    .arg("-netdev")
                    .arg(format!(
                        "tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off"
                    ))
                    .args([
                        "-device",
                        "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
                    ]);
            }
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", vmm.name()))
    }

    /// One VM running one workload.
    fn run(&self, vmm: Vmm, work: Work) -> Result<Sample, String> {
        let perf_out = self.out_dir.join("perf.csv");
        let _ = std::fs::remove_file(&perf_out);
        let t0 = Instant::now();
        let mut child = self.spawn(vmm, &work.cmdline(self.secs, &self.wait), &perf_out);
        let lines = lines(&mut child);
        let result = self.measure(vmm, work, &child, &lines, t0, &perf_out);
        // The guest idles after its summary: stop the VMM (perf then exits too).
        if let Ok((.., pid)) = &result {
            // SAFETY: kill has no memory preconditions; `pid` is the VMM we started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let (start, end, mut s, _) = result?;
        if self.perf {
            s.exits = Some(perf_sum(&perf_out, start, end + 0.011)?);
        }
        Ok(s)
    }

    /// The host-side floor of a UDP stream (`floor.rs`): packets/s with no VM. `None` for
    /// ping, or (with a line saying why) when the TAP could not be used.
    fn floor(&self, work: Work) -> Option<f64> {
        let pps = match work {
            Work::Ping => return None,
            Work::Tx(size) => {
                let tap0 = tap_stat(&self.ns, "rx", "packets");
                floor::tx(
                    &self.ns,
                    TAP,
                    (ip4(GUEST_IP), ip4(HOST_IP), 9000),
                    self.secs,
                    |seq| test_datagram(seq, size as usize),
                )
                .map(|(sent, secs)| {
                    let tap = tap_stat(&self.ns, "rx", "packets").saturating_sub(tap0);
                    sent.min(tap) as f64 / secs
                })
            }
            Work::Rx(size) => floor::Reader::start(&self.ns, TAP, GUEST_IP, 9000, size as usize)
                .map(|r| {
                    blast(&self.ns, size as usize, self.secs);
                    r.finish() as f64 / f64::from(self.secs)
                }),
        };
        pps.map_err(|e| eprintln!("e2e: {} floor: {e}", work.name()))
            .ok()
    }

    /// Waits for the markers and collects the sample: (window start and end in seconds after
    /// `t0`, the sample without exits, the VMM's pid).
    fn measure(
        &self,
        vmm: Vmm,
        work: Work,
        child: &Child,
        lines: &Receiver<(String, Instant)>,
        t0: Instant,
        perf_out: &Path,
    ) -> Result<(f64, f64, Sample, u32), String> {
        let (start_mark, end_mark) = work.markers();
        let wait = Duration::from_secs(u64::from(self.secs) + 30);
        let mut seen = String::new();
        let mut next = |mark: &str| -> Result<(String, Instant), String> {
            loop {
                match lines.recv_timeout(wait) {
                    Ok((l, at)) => {
                        seen.push_str(&l);
                        seen.push('\n');
                        // QEMU's first line starts with SeaBIOS's output.
                        if l.contains(mark) {
                            return Ok((l, at));
                        }
                    }
                    Err(_) => {
                        return Err(format!("{}: no '{mark}' line; output:\n{seen}", vmm.name()))
                    }
                }
            }
        };
        // The VMM itself (perf's child), for its CPU time.
        let mut pid = child.id();
        if self.perf {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(p) = child_of(pid) {
                    pid = p;
                    break;
                }
                if Instant::now() > end {
                    return Err(format!("no process under perf ({})", perf_out.display()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let (_, at0) = next(start_mark)?;
        let cpu0 = cpu_ns(pid);
        let tap0 = tap_stat(&self.ns, "rx", "packets");
        let sent = match work {
            Work::Rx(size) => Some(blast(&self.ns, size as usize, self.secs)),
            _ => None,
        };
        let (line, at1) = next(end_mark)?;
        let cpu = cpu_ns(pid).saturating_sub(cpu0);
        let tap = tap_stat(&self.ns, "rx", "packets").saturating_sub(tap0);
        let mut s = Sample {
            irqs: irqs(&line),
            ..Sample::default()
        };
        match work {
            Work::Ping => {
                s.packets = num(&line, "received");
                s.median_us = num(&line, "median_us");
                s.p99_us = num(&line, "p99_us");
            }
            Work::Tx(_) => {
                s.packets = num(&line, "sent");
                let delivered = (tap as f64 / s.packets.max(1.0)).min(1.0);
                s.pps = num(&line, "pps") * delivered;
            }
            Work::Rx(_) => {
                s.packets = num(&line, "received");
                s.pps = num(&line, "pps");
                if num(&line, "bad") > 0.0 {
                    return Err(format!("{}: bad datagrams: {line}", vmm.name()));
                }
                let _ = sent;
            }
        }
        s.cpu_us = cpu as f64 / 1000.0;
        let secs = |at: Instant| at.duration_since(t0).as_secs_f64();
        Ok((secs(at0), secs(at1), s, pid))
    }
}

/// The child's stdout, line by line with the time each arrived, on a thread.
fn lines(child: &mut Child) -> Receiver<(String, Instant)> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((l.trim_end().to_string(), Instant::now())).is_err() {
                break;
            }
        }
    });
    rx
}

/// Exits counted by `perf stat -I 10` in the intervals ending in `(from, to]` (seconds after
/// the VMM started).
fn perf_sum(path: &Path, from: f64, to: f64) -> Result<f64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("perf output: {e}"))?;
    let mut sum = 0.0;
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(t), Some(n)) = (f.first(), f.get(1)) else {
            continue;
        };
        let (Ok(t), Ok(n)) = (t.trim().parse::<f64>(), n.trim().parse::<f64>()) else {
            continue;
        };
        if t > from && t <= to {
            sum += n;
        }
    }
    Ok(sum)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians over the rounds of one (VMM, workload).
#[derive(Default, Clone)]
struct Agg(Vec<Sample>);

impl Agg {
    fn get(&self, f: impl Fn(&Sample) -> Option<f64>) -> f64 {
        median(self.0.iter().filter_map(f).collect())
    }
    fn per_packet(&self, f: impl Fn(&Sample) -> Option<f64>) -> f64 {
        self.get(|s| Some(f(s)? / s.packets.max(1.0)))
    }
}

/// One metric of a workload: name, value, whether higher is better.
fn metrics(work: Work, a: &Agg) -> Vec<(String, f64, bool)> {
    let w = work.name();
    let mut m = match work {
        Work::Ping => vec![
            (
                format!("{w} median us"),
                a.get(|s| Some(s.median_us)),
                false,
            ),
            (format!("{w} p99 us"), a.get(|s| Some(s.p99_us)), false),
        ],
        Work::Tx(_) | Work::Rx(_) => {
            vec![(format!("{w} kpps"), a.get(|s| Some(s.pps / 1000.0)), true)]
        }
    };
    let unit = if matches!(work, Work::Ping) {
        "ping"
    } else {
        "pkt"
    };
    m.push((
        format!("{w} exits/{unit}"),
        a.per_packet(|s| s.exits),
        false,
    ));
    m.push((
        format!("{w} irqs/{unit}"),
        a.per_packet(|s| Some(s.irqs)),
        false,
    ));
    m.push((
        format!("{w} VMM cpu us/{unit}"),
        a.per_packet(|s| Some(s.cpu_us)),
        false,
    ));
    m
}

/// `base / other` oriented so that > 1 means `base` is better.
fn ratio(base: f64, other: f64, higher_better: bool) -> String {
    if base.is_nan() || other.is_nan() {
        return "n/a".into();
    }
    let r = if higher_better {
        base / other
    } else {
        other / base
    };
    if r.is_finite() {
        format!("{r:.2}")
    } else if base == other {
        "=".into()
    } else {
        "inf".into()
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The UDP streams against their host-side floor (no VM: a bare loop on the same TAP and the
/// same host end, `floor.rs`), medians of the rounds. floor/qemu is the most that
/// trapvisor/qemu could be with a bottom half that cost nothing.
fn print_floors(works: &[Work], results: &[Vec<Agg>], floors: Vec<Vec<f64>>) {
    if floors.iter().all(Vec::is_empty) {
        return;
    }
    println!(
        "\n{:<28} {:>12} {:>12} {:>12} {:>12}   (floor: no VM, a bare loop on the same TAP)",
        "host-side floor", "floor kpps", "tv/floor", "qemu/floor", "floor/qemu"
    );
    for ((wi, &w), f) in works.iter().enumerate().zip(floors) {
        if f.is_empty() {
            continue;
        }
        let floor = median(f) / 1000.0;
        let tv = results[0][wi].get(|s| Some(s.pps / 1000.0));
        let qm = results[1][wi].get(|s| Some(s.pps / 1000.0));
        println!(
            "{:<28} {:>12} {:>12} {:>12} {:>12}",
            format!("{} kpps", w.name()),
            fmt(floor),
            format!("{:.2}", tv / floor),
            format!("{:.2}", qm / floor),
            format!("{:.2}", floor / qm)
        );
    }
}

fn skip(why: &str) -> ! {
    println!("e2e bench skipped: {why}");
    std::process::exit(0)
}

fn arg(args: &[String], name: &str, default: u32) -> u32 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = arg(&args, "--secs", 2).max(1);
    let rounds = arg(&args, "--rounds", 3).max(1);
    let wait = args
        .iter()
        .position(|a| a == "--wait")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "halt".into());
    if !["halt", "irq", "poll"].contains(&wait.as_str()) {
        skip("--wait takes halt, irq or poll");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root (network namespace, TAP, perf tracepoints)");
    }
    if !Path::new("/dev/kvm").exists() {
        skip("no /dev/kvm");
    }
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu {
        skip("no qemu-system-x86_64");
    }
    let perf = Command::new("perf")
        .args(["stat", "-e", "kvm:kvm_userspace_exit", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let Some(ns) = NetNs::new("e2e-bench") else {
        skip("cannot make a network namespace");
    };
    ns.ip(&["tuntap", "add", TAP, "mode", "tap"]).unwrap();
    let _ = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sysctl", "-qw"])
        .arg(format!("net.ipv6.conf.{TAP}.disable_ipv6=1"))
        .status();
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP])
        .unwrap();
    ns.ip(&["link", "set", TAP, "up"]).unwrap();
    // Datagrams to port 9000 on the host side: a socket that never reads, so that the kernel
    // drops them quietly (no ICMP port unreachable back to the guest).
    let _sink = ns.exec(|| UdpSocket::bind("0.0.0.0:9000").unwrap());
    let out_dir = std::env::temp_dir().join(format!("trapvisor-e2e-bench-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let elf = out_dir.join("guest.elf");
    std::fs::write(&elf, trapvisor::guest::GUEST_ELF).unwrap();
    let b = Bench {
        ns,
        elf,
        perf,
        secs,
        wait: wait.clone(),
        out_dir: out_dir.clone(),
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "e2e: built-in guest over virtio-net on TAP {TAP}, wait={wait}, {secs} s per workload, \
         median of {rounds} rounds, VMMs interleaved; load average at start: {}",
        load.trim()
    );
    if !perf {
        println!("e2e: perf with kvm tracepoints unavailable: no exit counts");
    }

    let all = [
        Work::Ping,
        Work::Tx(64),
        Work::Tx(1472),
        Work::Rx(64),
        Work::Rx(1472),
    ];
    // `--only NAME,...`: a subset ("ping", "udp-tx-64", "udp-rx-1472", ...).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let works: Vec<Work> = all
        .into_iter()
        .filter(|w| {
            only.is_none_or(|o| {
                o.split(',')
                    .any(|n| n == w.name().replace(" B", "").replace(' ', "-"))
            })
        })
        .collect();
    let vmms = [
        Vmm::Trapvisor(""),
        Vmm::Qemu,
        Vmm::Trapvisor(",notify=exit"),
        Vmm::Trapvisor(",irq=msi"),
    ];
    let mut results = vec![vec![Agg::default(); works.len()]; vmms.len()];
    let mut floors = vec![Vec::new(); works.len()];
    for round in 0..rounds {
        for (wi, &w) in works.iter().enumerate() {
            // The order rotates every round, the floor's turn with it: no VMM always runs
            // right after the same one.
            let turns = vmms.len() + 1;
            for t in 0..turns {
                let vi = (t + round as usize) % turns;
                let Some(&v) = vmms.get(vi) else {
                    floors[wi].extend(b.floor(w));
                    continue;
                };
                match b.run(v, w) {
                    Ok(s) => results[vi][wi].0.push(s),
                    Err(e) => eprintln!("e2e: round {round} {} {}: {e}", v.name(), w.name()),
                }
            }
        }
    }

    println!(
        "\n{:<28} {:>12} {:>12} {:>10}   (ratio > 1: trapvisor better)",
        "metric", "trapvisor", "qemu", "tv/qemu"
    );
    for (wi, &w) in works.iter().enumerate() {
        let tv = metrics(w, &results[0][wi]);
        let qm = metrics(w, &results[1][wi]);
        for ((name, a, hb), (_, q, _)) in tv.iter().zip(&qm) {
            println!(
                "{name:<28} {:>12} {:>12} {:>10}",
                fmt(*a),
                fmt(*q),
                ratio(*a, *q, *hb)
            );
        }
    }
    print_floors(&works, &results, floors);
    println!(
        "\n{:<28} {:>12} {:>12} {:>12}   (ratio > 1: the default better; exit/qemu > 1: notify=exit better than QEMU)",
        "trapvisor alone", "default", "notify=exit", "irq=msi"
    );
    for (wi, &w) in works.iter().enumerate() {
        let d = metrics(w, &results[0][wi]);
        let q = metrics(w, &results[1][wi]);
        let e = metrics(w, &results[2][wi]);
        let m = metrics(w, &results[3][wi]);
        for ((((name, dv, hb), (_, ev, _)), (_, mv, _)), (_, qv, _)) in
            d.iter().zip(&e).zip(&m).zip(&q)
        {
            println!(
                "{name:<28} {:>12} {:>12} {:>12}   exit {} msi {} exit/qemu {}",
                fmt(*dv),
                fmt(*ev),
                fmt(*mv),
                ratio(*dv, *ev, *hb),
                ratio(*dv, *mv, *hb),
                ratio(*ev, *qv, *hb)
            );
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("e2e: load average at the end: {}", load.trim());
    let _ = std::fs::remove_dir_all(&out_dir);
}
