//! virtio-net throughput: frames from a mock driver through the device to a TAP and back,
//! against a bare `writev`/`readv` loop on the same TAP in the same run.
//!
//! The bench makes a network namespace with a persistent TAP in a bridge whose port has
//! hairpin on, so the kernel sends every frame written to the TAP straight back out of it (TSO
//! frames stay whole). A round trip is: frame written to the TAP, reflected, read back.
//!
//! * **bare**: per TAP queue, one thread keeps `--window` frames in flight: `writev` (vnet
//!   header + frame) and `readv` them back, polling when it must wait. The floor: two syscalls
//!   and the kernel's two copies per frame.
//! * **trapvisor**: the same TAP through `Net` (one worker per queue pair, kicks by eventfd as
//!   ioeventfds would deliver them, interrupts to an eventfd as an irqfd would). Per pair, a
//!   driver thread over in-memory guest RAM keeps the same window of TX chains in flight,
//!   keeps the RX ring full (MRG_RXBUF, 2 KiB buffers; 4 KiB for TSO), kicks only when
//!   EVENT_IDX says so, and sleeps on its interrupt eventfd (asking for one via used_event)
//!   only when there is nothing to do, as a NAPI driver would.
//!
//! Cases: 64-byte and 1514-byte UDP frames, and 64 KiB TCP TSO frames (GSO TCPV4, MSS 1448),
//! for 1 and 2 queue pairs. Printed: round trips per second, Gbit/s (one way, Ethernet
//! bytes), the ratio to bare, payload copies the device made per frame, header bytes it
//! copied, and kicks and interrupts per round trip.
//!
//! `cargo bench --bench net` (as root; options `-- --secs S --window W`).
#[path = "../tests/common/frames.rs"]
mod frames;
#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/virtq.rs"]
mod virtq;

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use frames::{tcp_tso, udp};
use netns::NetNs;
use trapvisor::net::header::{VnetHeader, F_NEEDS_CSUM, GSO_TCPV4, HDR_LEN};
use trapvisor::net::tap::Tap;
use trapvisor::net::{Net, NetConfig, NetCounters};
use trapvisor::seccomp::SeccompMode;
use trapvisor::virtio::{
    InterruptError, VirtioDevice, VirtioInterrupt, VirtioInterruptType, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use virtio_bindings::virtio_net::*;
use virtq::{Buf, DriverQueue, QUEUE_SPAN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const RAM: u64 = 128 << 20;
const QUEUES_BASE: u64 = 0x10_0000;
const RING: u16 = 256;

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    /// Ethernet frame bytes.
    len: usize,
    tso: bool,
}

const CASES: [Case; 3] = [
    Case {
        name: "64 B",
        len: 64,
        tso: false,
    },
    Case {
        name: "1514 B",
        len: 1514,
        tso: false,
    },
    Case {
        name: "64 KiB TSO",
        // The kernel segments GSO frames of 65 536 bytes and more (gso_max_size) on the way
        // back; this stays whole.
        len: 65_520,
        tso: true,
    },
];

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The frame pair `p` sends: to its own MAC (the bridge learns it on the TAP port and hairpins
/// it back), a flow of its own (so the TAP steers it back to the same queue).
fn frame(case: Case, p: usize) -> (VnetHeader, Vec<u8>) {
    let mac = [0x52, 0x54, 0, 0xbe, 0, p as u8 + 1];
    let (src, dst) = ([10, 9, 0, 1], [10, 9, 0, 2]);
    if case.tso {
        let data = vec![0x5a; case.len - 14 - 40];
        let f = tcp_tso(mac, mac, src, dst, &data);
        let hdr = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        (hdr, f)
    } else {
        let data = vec![0x5a; case.len - 14 - 28];
        let port = 4000 + p as u16;
        (
            VnetHeader::default(),
            udp(mac, mac, src, dst, port, port, &data, false),
        )
    }
}

struct Sample {
    round_trips: u64,
    secs: f64,
    counters: Option<NetCounters>,
    kicks: u64,
    /// CPU time of the threads moving frames (bare loops; the device's workers).
    cpu_ns: u64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.round_trips as f64 / self.secs
    }

    /// CPU microseconds per round trip.
    fn cpu_us(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / self.round_trips.max(1) as f64
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The driver's receive buffer size for `case`.
fn rx_buf(case: Case) -> usize {
    if case.tso {
        4096
    } else {
        2048
    }
}

fn poll_in(fd: i32, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}

// ---------------------------------------------------------------------------------------------
// Bare loop.

fn in_flight(sent: &AtomicU64, got: &AtomicU64) -> u64 {
    sent.load(Ordering::Relaxed)
        .saturating_sub(got.load(Ordering::Relaxed))
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
fn cpu_secs(prefix: &str) -> f64 {
    let tick = 100.0; // USER_HZ
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
        total += ticks / tick;
    }
    total
}

fn debug(msg: &str) {
    if std::env::var_os("NETBENCH_DEBUG").is_some() {
        eprintln!("{msg}");
    }
}

/// One frame there and back (bridge port forwarding, flows learnt) before timing.
fn warm_up(taps: &[Tap], case: Case) {
    let (hdr, f) = frame(case, 0);
    let mut buf = vec![0u8; 70_000];
    for _ in 0..50 {
        let _ = taps[0].writev(&[IoSlice::new(&hdr.to_bytes()), IoSlice::new(&f)]);
        std::thread::sleep(Duration::from_millis(20));
        let mut back = false;
        for t in taps {
            while let Ok(Some(n)) = t.readv(&mut [IoSliceMut::new(&mut buf)]) {
                back |= n == HDR_LEN + f.len();
            }
        }
        if back {
            return;
        }
    }
    println!("warning: the reflector did not answer within a second");
}

/// The bare loop. `ring`: with the device's memory footprint (frames sent from `window`
/// buffers in turn, read into a ring the size of the device's receive ring), so its copies
/// hit caches as the device's do, rather than one hot buffer each way.
fn bare(
    ns: &NetNs,
    tap: &str,
    queues: usize,
    case: Case,
    secs: f64,
    window: u64,
    ring: bool,
) -> Sample {
    let taps = ns.exec(|| Tap::open_queues(tap, queues)).expect("attach");
    if case.tso {
        taps[0]
            .set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
            .unwrap();
    }
    warm_up(&taps, case);
    let barrier = Barrier::new(queues);
    // The kernel may hand a reflected frame to any queue: the window is over all of them.
    let window = window * queues as u64;
    let (sent, got) = (AtomicU64::new(0), AtomicU64::new(0));
    let cpu = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (p, t) in taps.iter().enumerate() {
            let (barrier, sent, got, cpu) = (&barrier, &sent, &got, &cpu);
            s.spawn(move || {
                let (hdr, f) = frame(case, p);
                let mut one = hdr.to_bytes().to_vec();
                one.extend_from_slice(&f);
                let copies = if ring { window as usize } else { 1 };
                let tx: Vec<Vec<u8>> = (0..copies).map(|_| one.clone()).collect();
                let slot = rx_buf(case);
                let rx_len = if ring {
                    usize::from(RING) * slot
                } else {
                    70_000
                };
                let mut rx = vec![0u8; rx_len + 70_000];
                let (mut next_tx, mut rx_at) = (0usize, 0usize);
                barrier.wait();
                let cpu0 = thread_cpu();
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    while in_flight(sent, got) < window {
                        next_tx = (next_tx + 1) % copies;
                        match t.writev(&[IoSlice::new(&tx[next_tx])]) {
                            Ok(Some(_)) => sent.fetch_add(1, Ordering::Relaxed),
                            _ => break,
                        };
                    }
                    let mut read_any = false;
                    loop {
                        let buf = &mut rx[rx_at..rx_at + 70_000];
                        let Ok(Some(n)) = t.readv(&mut [IoSliceMut::new(buf)]) else {
                            break;
                        };
                        if n == HDR_LEN + f.len() && buf[HDR_LEN + 12..HDR_LEN + 14] == f[12..14] {
                            got.fetch_add(1, Ordering::Relaxed);
                            read_any = true;
                        }
                        if ring {
                            // As merged receive buffers are used: whole slots, in turn.
                            rx_at = (rx_at + n.div_ceil(slot) * slot) % rx_len;
                        }
                    }
                    if !read_any {
                        poll_in(t.as_raw_fd(), 1);
                    }
                }
                cpu.fetch_add((thread_cpu() - cpu0).as_nanos() as u64, Ordering::Relaxed);
            });
        }
    });
    debug(&format!("bare: sent {sent:?} got {got:?}"));
    Sample {
        round_trips: got.load(Ordering::Relaxed),
        secs: t0.elapsed().as_secs_f64(),
        counters: None,
        kicks: 0,
        cpu_ns: cpu.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------------
// Through the device.

/// Interrupts: per pair an eventfd (as an irqfd would be), counted.
struct PairIrqs(Vec<EventFd>);

impl VirtioInterrupt for PairIrqs {
    fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError> {
        if let VirtioInterruptType::Queue(q) = kind {
            if let Some(e) = self.0.get(usize::from(q) / 2) {
                let _ = e.write(1);
            }
        }
        Ok(())
    }
}

fn device(
    ns: &NetNs,
    tap: &str,
    queues: usize,
    case: Case,
    secs: f64,
    window: u64,
    spin: Duration,
) -> Sample {
    let mut cfg = NetConfig::new(tap);
    cfg.queues = queues as u16;
    let mut net = ns.exec(|| Net::new(&cfg)).expect("attach");
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
    ));
    let nq = 2 * queues + 1;
    let base = |q: usize| QUEUES_BASE + QUEUE_SPAN * q as u64;
    let kicks: Vec<EventFd> = (0..nq)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    assert!(net.take_notify_events(&kicks));
    let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let handle = net.handle();
    handle.start(&stop, SeccompMode::Off).unwrap();
    let f = |b: u32| 1u64 << b;
    let features = f(VIRTIO_F_VERSION_1)
        | f(VIRTIO_RING_F_EVENT_IDX)
        | f(VIRTIO_NET_F_MRG_RXBUF)
        | f(VIRTIO_NET_F_CTRL_VQ)
        | f(VIRTIO_NET_F_MQ)
        | f(VIRTIO_NET_F_CSUM)
        | f(VIRTIO_NET_F_GUEST_CSUM)
        | f(VIRTIO_NET_F_GUEST_TSO4)
        | f(VIRTIO_NET_F_HOST_TSO4);
    net.ack_features(features & net.features());
    let irq_evts: Vec<EventFd> = (0..queues)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irqs = Arc::new(PairIrqs(
        irq_evts.iter().map(|e| e.try_clone().unwrap()).collect(),
    ));
    let ready = Barrier::new(queues + 1);
    let go = Barrier::new(queues + 1);
    let (sent, got) = (AtomicU64::new(0), AtomicU64::new(0));
    let window = window * queues as u64;
    let kicked = AtomicU64::new(0);
    let rxbuf = rx_buf(case) as u32;
    let mut worker_cpu = 0.0;
    std::thread::scope(|s| {
        for p in 0..queues {
            let (ready, go, sent, got, kicked) = (&ready, &go, &sent, &got, &kicked);
            let (kick_rx, kick_tx) = (
                kicks[2 * p].try_clone().unwrap(),
                kicks[2 * p + 1].try_clone().unwrap(),
            );
            let irq = irq_evts[p].try_clone().unwrap();
            s.spawn(move || {
                let mut rxq = DriverQueue::new(mem, base(2 * p), RING);
                let mut txq = DriverQueue::new(mem, base(2 * p + 1), RING);
                // Guest buffers of this pair.
                let area = 0x100_0000 + p as u64 * 0x200_0000;
                let (hdr, fr) = frame(case, p);
                let tx_len = HDR_LEN + fr.len();
                let tx_bufs: Vec<u64> = (0..window).map(|i| area + i * 0x1_1000).collect();
                for &a in &tx_bufs {
                    mem.write_slice(&hdr.to_bytes(), GuestAddress(a)).unwrap();
                    mem.write_slice(&fr, GuestAddress(a + HDR_LEN as u64))
                        .unwrap();
                }
                let rx_area = area + 0x150_0000;
                ready.wait();
                go.wait();
                for i in 0..u64::from(RING) {
                    rxq.add_single(Buf::write(rx_area + i * u64::from(rxbuf), rxbuf));
                }
                rxq.publish();
                let _ = kick_rx.write(1);
                let mut free_tx = tx_bufs.clone();
                let mut n_kicks = 0u64;
                let mut idle_since: Option<Instant> = None;
                let mut used = Vec::with_capacity(usize::from(RING));
                let (mut sleeps, mut timeouts, mut slept) = (0u64, 0u64, Duration::ZERO);
                // Frames of other traffic (IPv6 neighbour discovery) do not count.
                let want = (HDR_LEN + fr.len()) as u32;
                let (mut frame_left, mut frame_bytes) = (0u16, 0u32);
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    let mut progress = false;
                    used.clear();
                    txq.take_used_singles(&mut used);
                    for (_, b) in used.drain(..) {
                        free_tx.push(b.addr);
                        progress = true;
                    }
                    rxq.take_used_singles(&mut used);
                    if !used.is_empty() {
                        progress = true;
                        for (len, b) in used.drain(..) {
                            let a = b.addr;
                            if len > 0 && frame_left == 0 {
                                let k: u16 = mem.read_obj(GuestAddress(a + 10)).unwrap();
                                frame_left = k.max(1);
                                frame_bytes = 0;
                            }
                            frame_bytes += len;
                            frame_left = frame_left.saturating_sub(1);
                            if frame_left == 0 && frame_bytes == want {
                                got.fetch_add(1, Ordering::Relaxed);
                            }
                            rxq.add_single(Buf::write(a, rxbuf));
                        }
                        rxq.publish();
                        if rxq.needs_kick(true) {
                            let _ = kick_rx.write(1);
                            n_kicks += 1;
                        }
                    }
                    let mut added = false;
                    while in_flight(sent, got) < window {
                        let Some(a) = free_tx.pop() else { break };
                        txq.add_single(Buf::read(a, tx_len as u32));
                        sent.fetch_add(1, Ordering::Relaxed);
                        added = true;
                    }
                    if added {
                        progress = true;
                        txq.publish();
                        if txq.needs_kick(true) {
                            let _ = kick_tx.write(1);
                            n_kicks += 1;
                        }
                    }
                    if progress {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(Instant::now).elapsed() < spin {
                        // Busy: look again for a while before sleeping (as NAPI does while
                        // work keeps coming).
                        std::hint::spin_loop();
                    } else {
                        // Interrupts on, look once more, then sleep until one comes.
                        rxq.set_used_event(rxq.last_used());
                        txq.set_used_event(txq.last_used());
                        if rxq.used_idx() == rxq.last_used() && txq.used_idx() == txq.last_used() {
                            let t = Instant::now();
                            poll_in(irq.as_raw_fd(), 1);
                            sleeps += 1;
                            slept += t.elapsed();
                            if irq.read().is_err() {
                                timeouts += 1;
                            }
                        }
                    }
                }
                kicked.fetch_add(n_kicks, Ordering::Relaxed);
                debug(&format!(
                    "driver {p}: {sleeps} sleeps, {timeouts} timeouts, slept {slept:?}"
                ));
            });
        }
        ready.wait();
        let queues_for_device = (0..nq)
            .map(|q| {
                let size = if q == nq - 1 { 64 } else { RING };
                DriverQueue::queue_at(base(q), size, true)
            })
            .collect();
        // The control queue ring (not used by the drivers) needs its memory initialized.
        let mut ctrl = DriverQueue::new(mem, base(nq - 1), 64);
        net.activate(mem.clone(), queues_for_device, irqs.clone())
            .unwrap();
        if queues > 1 {
            let cmd = 0x80_0000u64;
            let mut c = vec![
                VIRTIO_NET_CTRL_MQ as u8,
                VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
            ];
            c.extend_from_slice(&(queues as u16).to_le_bytes());
            mem.write_slice(&c, GuestAddress(cmd)).unwrap();
            ctrl.add(&[Buf::read(cmd, 4), Buf::write(cmd + 16, 1)]);
            ctrl.publish();
            kicks[nq - 1].write(1).unwrap();
            let t = Instant::now();
            while ctrl.used_idx() == 0 && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let ack: u8 = mem.read_obj(GuestAddress(cmd + 16)).unwrap();
            assert_eq!(ack, VIRTIO_NET_OK as u8, "VQ_PAIRS_SET refused");
        }
        let w0 = cpu_secs("net0-") + cpu_secs("net1-");
        go.wait();
        std::thread::sleep(Duration::from_secs_f64(secs));
        worker_cpu = cpu_secs("net0-") + cpu_secs("net1-") - w0;
    });
    let counters = net.counters();
    debug(&format!("device: sent {sent:?} got {got:?}\n{counters:?}"));
    handle.stop();
    drop(net);
    Sample {
        round_trips: got.load(Ordering::Relaxed),
        // Each driver runs for `secs` from the common start.
        secs,
        counters: Some(counters),
        kicks: kicked.load(Ordering::Relaxed),
        cpu_ns: (worker_cpu * 1e9) as u64,
    }
}

// ---------------------------------------------------------------------------------------------

/// A namespace with persistent TAP `tap` (multi-queue if `queues` > 1) in a hairpin bridge.
fn reflector(queues: usize) -> Option<(NetNs, String)> {
    let ns = NetNs::new("bench")?;
    let tap = format!("tvbench{queues}");
    let mut add = vec!["tuntap", "add", "dev", &tap, "mode", "tap"];
    if queues > 1 {
        add.push("multi_queue");
    }
    ns.ip(&add).unwrap();
    ns.ip(&[
        "link",
        "add",
        "tvbr0",
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])
    .unwrap();
    ns.ip(&["link", "set", &tap, "master", "tvbr0"]).unwrap();
    ns.ip(&[
        "link",
        "set",
        "dev",
        &tap,
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])
    .unwrap();
    ns.ip(&["link", "set", "tvbr0", "up"]).unwrap();
    ns.ip(&["link", "set", &tap, "up"]).unwrap();
    Some((ns, tap))
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = v.len() / 2;
    v.swap_remove(mid)
}

fn main() {
    let secs = arg("--secs", 1.0);
    let window = arg("--window", 64.0) as u64;
    let spin = Duration::from_micros(arg("--spin-us", 50.0) as u64);
    let rounds = arg("--rounds", 3.0).max(1.0) as usize;
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun does not exist");
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "virtio-net round trips through a hairpin-bridged TAP: {secs} s per run, medians of {rounds} interleaved rounds, {window} frames in flight per queue, driver polls {spin:?} before sleeping, {cpus} CPUs"
    );
    println!(
        "{:<10} {:>2} | {:>9} {:>7} {:>6} | {:>9} {:>6} | {:>9} {:>7} {:>6} | {:>5} {:>6} | {:>4} {:>5} {:>6} {:>6}",
        "frame", "qp", "bare rt/s", "Gb/s", "us/rt", "ring rt/s", "us/rt", "dev rt/s", "Gb/s", "us/rt",
        "ratio", "ratio*", "cp/p", "hdrB", "kick/rt", "irq/rt"
    );
    // `--pairs N` and `--case I` (0: 64 B, 1: 1514 B, 2: TSO) pick one; `--only device|bare`.
    let only_pairs = arg("--pairs", 0.0) as usize;
    let only_case = arg("--case", -1.0);
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    for queues in [1usize, 2] {
        if only_pairs != 0 && only_pairs != queues {
            continue;
        }
        let Some((ns, tap)) = reflector(queues) else {
            println!("skipped: cannot create a network namespace (needs root)");
            return;
        };
        for (i, case) in CASES.into_iter().enumerate() {
            if only_case >= 0.0 && only_case as usize != i {
                continue;
            }
            let skip = |what: &str| only.as_deref().is_some_and(|o| o != what);
            let empty = || Sample {
                round_trips: 0,
                secs,
                counters: Some(NetCounters::default()),
                kicks: 0,
                cpu_ns: 0,
            };
            // Rounds interleaved (other load on the machine comes and goes); medians.
            let (mut bs, mut rs, mut ds) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                bs.push(if skip("bare") {
                    empty()
                } else {
                    bare(&ns, &tap, queues, case, secs, window, false)
                });
                rs.push(if skip("bare") {
                    empty()
                } else {
                    bare(&ns, &tap, queues, case, secs, window, true)
                });
                ds.push(if skip("device") {
                    empty()
                } else {
                    device(&ns, &tap, queues, case, secs, window, spin)
                });
            }
            let b = median(bs);
            let r = median(rs);
            let d = median(ds);
            let gbit = |s: &Sample| s.rate() * case.len as f64 * 8.0 / 1e9;
            let c = d.counters.as_ref().unwrap().total();
            let rts = d.round_trips.max(1) as f64;
            // The device never copies frame bytes: only the header it checks (TX) and
            // num_buffers (RX); the kernel's copies are the same as the bare loop's.
            let hdr_bytes = (c.tx.copied_bytes + c.rx.copied_bytes) as f64 / rts;
            let irqs = (c.tx.interrupts + c.rx.interrupts) as f64 / rts;
            let drops = c.tx.drops.total() + c.rx.drops.total();
            println!(
                "{:<10} {:>2} | {:>9.0} {:>7.2} {:>6.2} | {:>9.0} {:>6.2} | {:>9.0} {:>7.2} {:>6.2} | {:>5.2} {:>6.2} | {:>4} {:>5.1} {:>6.3} {:>6.3}{}",
                case.name,
                queues,
                b.rate(),
                gbit(&b),
                b.cpu_us(),
                r.rate(),
                r.cpu_us(),
                d.rate(),
                gbit(&d),
                d.cpu_us(),
                d.rate() / b.rate().max(1.0),
                d.rate() / r.rate().max(1.0),
                0,
                hdr_bytes,
                d.kicks as f64 / rts,
                irqs,
                if drops > 0 { format!("  ({drops} drops)") } else { String::new() }
            );
        }
    }
    println!(
        "rt: round trip (driver -> device -> TAP -> bridge -> TAP -> device -> driver, or the \
         bare loop's writev + readv). us/rt: CPU of the loop threads / the device's workers \
         (the mock driver's CPU not counted). ring: the bare loop with the device's memory \
         footprint. ratio = device / bare (target >= 0.80), ratio* = device / ring. cp/p: \
         payload copies per frame made by the device (the kernel's are the same in all three). \
         hdrB: header bytes the device copied per round trip."
    );
}
