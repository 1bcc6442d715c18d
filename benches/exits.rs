//! Exit round-trip benchmark: trapvisor's full dispatch against a bare kvm-ioctls loop running
//! the same guest code (the built-in guest's `pio-loop` / `mmio-loop`), interleaved, in one run.
//! Also: start → first serial byte, and peak RSS outside guest RAM.
//!
//! `cargo bench --bench exits` (options: `-- --exits N --rounds R`).
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use trapvisor::arch::x86_64::layout;
use trapvisor::arch::{self, BootConfig, KernelSource};
use trapvisor::devices::testdev;
use trapvisor::kvm::vm::Vm;
use trapvisor::vmm::{VmConfig, Vmm};

const SINK_PORT: u16 = layout::TESTDEV_PORT + testdev::SINK_OFFSET as u16;
const SINK_MMIO: u64 = layout::TESTDEV_MMIO_START + testdev::SINK_OFFSET;
const LSR_PORT: u16 = layout::COM1_PORT + 5;

/// The bare floor: the same VM setup and guest, and a loop that does only what the guest needs
/// (THR-empty LSR, a SINK counter, the debug-exit) straight on `VcpuExit`.
fn bare(cmdline: &str) -> Duration {
    let mut vm = Vm::new(64 << 20).expect("vm");
    let (mut vcpus, machine) = vm.create_vcpus(1).expect("vcpu");
    let entry = arch::load_kernel(
        vm.memory(),
        BootConfig {
            kernel: KernelSource::Builtin(trapvisor::guest::GUEST_ELF),
            initrd: None,
            cmdline,
            mem_size: 64 << 20,
            machine: &machine,
            phases: None,
        },
    )
    .expect("load");
    let mut vcpu = vcpus.remove(0);
    arch::configure_vcpu(vm.kvm(), &vcpu, 0, 1, &entry, vm.memory()).expect("configure");
    let mut count: u32 = 0;
    let mut window: Option<(Instant, Instant)> = None;
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(SINK_PORT, _) | VcpuExit::MmioWrite(SINK_MMIO, _) => {
                count += 1;
                let now = Instant::now();
                window = Some((window.map_or(now, |w| w.0), now));
            }
            VcpuExit::IoIn(LSR_PORT, data) => data.fill(0x60),
            VcpuExit::IoIn(SINK_PORT, data) => {
                let n = data.len().min(4);
                data[..n].copy_from_slice(&count.to_le_bytes()[..n]);
            }
            VcpuExit::MmioRead(SINK_MMIO, data) => {
                let n = data.len().min(4);
                data[..n].copy_from_slice(&count.to_le_bytes()[..n]);
            }
            VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data) => data.fill(0xff),
            VcpuExit::IoOut(port, data) if port == layout::DEBUG_EXIT_PORT => {
                assert_eq!(data[0], 0, "guest failed under the bare loop");
                break;
            }
            VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) => {}
            other => panic!("bare loop: unexpected exit {other:?}"),
        }
    }
    per_exit(window, count)
}

/// trapvisor's full dispatch; `stats`: exit statistics recorded (the default) or not.
fn trapvisor_run(cmdline: &str, stats: bool) -> Duration {
    let mut cfg = VmConfig::builtin(cmdline);
    cfg.mem_size = 64 << 20;
    cfg.console = Box::new(std::io::sink());
    let mut vmm = Vmm::new(cfg).expect("vmm");
    vmm.set_exit_stats(stats);
    let r = vmm.run(None, false).expect("run");
    assert_eq!(r.reason, trapvisor::kvm::exit::StopReason::DebugExit(0));
    per_exit(vmm.sink_window(), vmm.sink_count() as u32)
}

fn per_exit(window: Option<(Instant, Instant)>, count: u32) -> Duration {
    let (first, last) = window.expect("no SINK exits");
    (last - first) / count.saturating_sub(1).max(1)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Start → first byte on stdout, and peak RSS minus resident guest RAM, for the built-in guest.
fn startup_and_rss() -> (Duration, Option<u64>) {
    let exe = env!("CARGO_BIN_EXE_trapvisor");
    let start = Instant::now();
    let mut child = Command::new(exe)
        .args(["run", "--cmdline", "hello idle"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    out.read_exact(&mut b).expect("first byte");
    let first_byte = start.elapsed();
    // Let the guest reach idle, then read the peak RSS and the guest RAM that is resident.
    let mut rest = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&rest).contains("idle:") {
        let n = out.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&buf[..n]);
    }
    let rss = outside_guest_rss(child.id(), 256 << 20);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    (first_byte, rss)
}

/// VmHWM minus the resident part of the guest RAM mapping (the anonymous mapping of exactly
/// `ram` bytes), in bytes.
fn outside_guest_rss(pid: u32, ram: u64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut guest_kb = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            let kb: u64 = size
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .unwrap_or(0);
            in_guest = kb * 1024 == ram;
        } else if let Some(rss) = line.strip_prefix("Rss:") {
            if in_guest {
                guest_kb += rss
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    Some((hwm_kb - guest_kb) * 1024)
}

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let exits = arg("--exits", 20000);
    let rounds = arg("--rounds", 5);
    println!("exit round trip, {exits} exits per run, {rounds} rounds interleaved, medians");
    println!("trapvisor: exit statistics on (the default); stats off: the same, not recording");
    println!(
        "{:<6} {:>10} {:>15} {:>11} {:>14} {:>16}",
        "exit", "bare (us)", "trapvisor (us)", "vs bare", "stats off (us)", "stats cost (on/off)"
    );
    for (name, cmd) in [("pio", "pio-loop"), ("mmio", "mmio-loop")] {
        let cmdline = format!("{cmd}={exits}");
        let (mut b, mut t, mut off) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            b.push(bare(&cmdline));
            t.push(trapvisor_run(&cmdline, true));
            off.push(trapvisor_run(&cmdline, false));
        }
        let (b, t, off) = (median(&mut b), median(&mut t), median(&mut off));
        println!(
            "{:<6} {:>10.3} {:>15.3} {:>11.3} {:>14.3} {:>16.3}",
            name,
            us(b),
            us(t),
            t.as_secs_f64() / b.as_secs_f64(),
            us(off),
            t.as_secs_f64() / off.as_secs_f64()
        );
    }
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..rounds {
        let (s, r) = startup_and_rss();
        starts.push(s);
        rss.extend(r);
    }
    println!(
        "start -> first serial byte: {:.2} ms (median of {rounds})",
        median(&mut starts).as_secs_f64() * 1e3
    );
    rss.sort();
    if let Some(r) = rss.get(rss.len() / 2) {
        println!(
            "peak RSS outside guest RAM: {:.2} MiB",
            *r as f64 / (1 << 20) as f64
        );
    }
}
