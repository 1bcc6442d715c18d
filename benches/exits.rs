//! Exit round-trip benchmark: trapvisor's full dispatch against a bare kvm-ioctls loop running
//! the same guest code (the built-in guest's `pio-loop` / `mmio-loop`), interleaved, in one run.
//! Also: start → first serial byte, and peak RSS outside guest RAM.
//!
//! Method: every thread of the benchmark (the bare loop and trapvisor's vCPU) runs on one CPU
//! (`--cpu`, default the last), the variants take turns in each round, and each run's figure is
//! the median of its round trips (the time between consecutive SINK writes), so a round trip
//! that was preempted moves it little; the table shows the median over the rounds.
//!
//! `cargo bench --bench exits` (options: `-- --exits N --rounds R --cpu C`). On aarch64 only MMIO
//! exists; to run it in an arm64 L1 from an x86 machine: `cargo bench --bench exits --no-run
//! --target aarch64-unknown-linux-musl`, copy the bench binary it names and the aarch64
//! trapvisor there, and run `TRAPVISOR_BIN=./trapvisor ./exits-... --exits N`.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use trapvisor::arch::{self, BootConfig, KernelSource};
use trapvisor::bus::{Bus, BusError, BusKind};
use trapvisor::devices::testdev;
use trapvisor::kvm::vm::Vm;
use trapvisor::trace::kernel::KernelTrace;
use trapvisor::vmm::{VmConfig, Vmm};

/// Where the bare loop must answer: learnt from the architecture's own device registration
/// (x86_64: the ports; aarch64: MMIO pages), so the bare loop and trapvisor agree.
struct Places {
    /// The serial port's line status register: (port I/O?, address).
    lsr: (bool, u64),
    /// The test device's SINK register on each bus it is on.
    sinks: Vec<(bool, u64)>,
    /// Writes that end the run with a verdict: (port I/O?, address).
    exits: Vec<(bool, u64)>,
}

fn places() -> Places {
    struct NoIrq;
    impl vm_superio::Trigger for NoIrq {
        type E = std::io::Error;
        fn trigger(&self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (pio, mmio) = (Bus::new(BusKind::Pio), Bus::new(BusKind::Mmio));
    arch::register_devices(
        &pio,
        &mmio,
        |_| Ok::<_, BusError>(NoIrq),
        Box::new(std::io::sink()),
        Box::new(std::io::sink()),
        true,
    )
    .expect("devices");
    let all: Vec<(bool, trapvisor::bus::MapEntry)> = pio
        .map()
        .into_iter()
        .map(|e| (true, e))
        .chain(mmio.map().into_iter().map(|e| (false, e)))
        .collect();
    let find = |name: &str, offset: u64| -> Vec<(bool, u64)> {
        all.iter()
            .filter(|(_, e)| e.device == name)
            .map(|(p, e)| (*p, e.base + offset))
            .collect()
    };
    let mut exits = find("debug-exit", 0);
    exits.extend(find("testdev", testdev::EXIT_OFFSET));
    Places {
        lsr: *find("serial0", 5).first().expect("a serial port"),
        sinks: find("testdev", testdev::SINK_OFFSET),
        exits,
    }
}

/// The bare floor: the same VM setup and guest, and a loop that does only what the guest needs
/// (THR-empty LSR, a SINK counter, the exit) straight on `VcpuExit`.
fn bare(cmdline: &str) -> Duration {
    let p = places();
    let mut vm = Vm::new(64 << 20).expect("vm");
    let (mut vcpus, machine) = vm.create_vcpus(1).expect("vcpu");
    let entry = arch::load_kernel(
        vm.memory(),
        BootConfig {
            kernel: KernelSource::Builtin(trapvisor::guest::GUEST_IMAGE),
            initrd: None,
            cmdline,
            mem_size: 64 << 20,
            machine: &machine,
            legacy: true,
            phases: None,
        },
    )
    .expect("load");
    let mut vcpu = vcpus.remove(0);
    arch::configure_vcpu(vm.kvm(), &vcpu, 0, 1, &entry, vm.memory()).expect("configure");
    let mut count: u32 = 0;
    let mut window: Option<(Instant, Instant)> = None;
    // The same per-SINK work as the test device: a clock read and a histogram record.
    let mut gaps = testdev::gap_histogram();
    loop {
        let (at, data) = match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => ((true, u64::from(port)), data),
            VcpuExit::MmioWrite(addr, data) => ((false, addr), data),
            VcpuExit::IoIn(port, data) => {
                read(&p, (true, u64::from(port)), data, count);
                continue;
            }
            VcpuExit::MmioRead(addr, data) => {
                read(&p, (false, addr), data, count);
                continue;
            }
            // PSCI SYSTEM_OFF (aarch64).
            VcpuExit::SystemEvent(..) => break,
            other => panic!("bare loop: unexpected exit {other:?}"),
        };
        if p.sinks.contains(&at) {
            count += 1;
            let now = Instant::now();
            let (first, last) = window.unwrap_or((now, now));
            if count > 1 {
                gaps.saturating_record((now - last).as_nanos().max(1) as u64);
            }
            window = Some((first, now));
        } else if p.exits.contains(&at) {
            assert_eq!(data[0], 0, "guest failed under the bare loop");
            break;
        }
    }
    assert!(
        window.is_some() && count > 1,
        "no SINK round trips in the bare loop"
    );
    Duration::from_nanos(gaps.value_at_quantile(0.5))
}

/// A read: the SINK count, a THR-empty LSR, all-ones elsewhere.
fn read(p: &Places, at: (bool, u64), data: &mut [u8], count: u32) {
    if p.sinks.contains(&at) {
        let n = data.len().min(4);
        data[..n].copy_from_slice(&count.to_le_bytes()[..n]);
    } else if at == p.lsr {
        data.fill(0x60);
    } else {
        data.fill(0xff);
    }
}

/// trapvisor's full dispatch; `stats`: exit statistics recorded (the default) or not.
/// `ktrace`: with `--trace-kernel`'s tracepoints on the vCPU thread (statistics only, no
/// timeline).
fn trapvisor_run(cmdline: &str, stats: bool, ktrace: bool) -> Duration {
    let mut cfg = VmConfig::builtin(cmdline);
    cfg.mem_size = 64 << 20;
    cfg.console = Box::new(std::io::sink());
    let mut vmm = Vmm::new(cfg).expect("vmm");
    vmm.set_exit_stats(stats);
    if ktrace {
        let kt = KernelTrace::open(false).expect("checked before the rounds");
        vmm.set_kernel_trace(std::sync::Arc::new(kt));
    }
    let r = vmm.run(None, false).expect("run");
    assert_eq!(r.reason, trapvisor::kvm::exit::StopReason::DebugExit(0));
    vmm.sink_gap_median().expect("no SINK round trips")
}

/// Runs this thread, and every thread it starts afterwards, on CPU `cpu` only.
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity only write/read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Start → first byte on stdout, and peak RSS minus resident guest RAM, for the built-in guest.
/// The trapvisor binary; TRAPVISOR_BIN when the bench runs elsewhere (cross-built, in an
/// arm64 L1).
fn trapvisor_bin() -> String {
    std::env::var("TRAPVISOR_BIN").unwrap_or(env!("CARGO_BIN_EXE_trapvisor").into())
}

fn startup_and_rss() -> (Duration, Option<u64>) {
    let exe = trapvisor_bin();
    let start = Instant::now();
    let mut child = Command::new(&exe)
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
    let exits = arg("--exits", 5000);
    let rounds = arg("--rounds", 21);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = arg("--cpu", cpus as u32 - 1) as usize;
    let pinned = if pin(cpu) {
        format!("pinned to CPU {cpu}")
    } else {
        "not pinned (sched_setaffinity failed)".to_string()
    };
    println!(
        "exit round trip, {exits} exits per run, {rounds} rounds interleaved, {pinned}; \
         per run the median round trip; times: the median of the runs"
    );
    println!("trapvisor: exit statistics on (the default); stats off: the same, not recording");
    println!("ratios: the median over the rounds of each round's ratio");
    let ktrace = KernelTrace::open(false).map(|_| ());
    let mut trace_rows = Vec::new();
    println!(
        "{:<6} {:>10} {:>15} {:>11} {:>14} {:>16}",
        "exit", "bare (us)", "trapvisor (us)", "vs bare", "stats off (us)", "stats cost (on/off)"
    );
    // Port I/O exists on x86_64 only.
    let kinds = match arch::NAME {
        "x86_64" => &[("pio", "pio-loop"), ("mmio", "mmio-loop")][..],
        _ => &[("mmio", "mmio-loop")][..],
    };
    for &(name, cmd) in kinds {
        let cmdline = format!("{cmd}={exits}");
        let (v0, v1, v2, v3) = (
            || bare(&cmdline),
            || trapvisor_run(&cmdline, true, false),
            || trapvisor_run(&cmdline, false, false),
            || trapvisor_run(&cmdline, true, true),
        );
        let mut variants: Vec<&dyn Fn() -> Duration> = vec![&v0, &v1, &v2];
        if ktrace.is_ok() {
            variants.push(&v3);
        }
        let mut runs: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds as usize {
            // Each round in another order, so that no variant always goes first.
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                runs[v].push(variants[v]());
            }
        }
        // Ratios within a round (its runs saw the same machine), then their median.
        let ratio = |a: usize, b: usize| -> f64 {
            let mut r: Vec<f64> = runs[a]
                .iter()
                .zip(&runs[b])
                .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
                .collect();
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        };
        let (vs_bare, stats_cost) = (ratio(1, 0), ratio(1, 2));
        let m: Vec<Duration> = runs.iter().map(|r| median(&mut r.clone())).collect();
        println!(
            "{:<6} {:>10.3} {:>15.3} {:>11.3} {:>14.3} {:>16.3}",
            name,
            us(m[0]),
            us(m[1]),
            vs_bare,
            us(m[2]),
            stats_cost
        );
        if variants.len() > 3 {
            trace_rows.push(format!(
                "{:<6} {:>15.3} {:>15.3} {:>10.3} {:>11.3}",
                name,
                us(m[3]),
                us(m[1]),
                us(m[3]) - us(m[1]),
                ratio(3, 1)
            ));
        }
    }
    match &ktrace {
        Ok(()) => {
            println!("--trace-kernel (KVM's tracepoints on the vCPU thread) against trapvisor without it:");
            println!(
                "{:<6} {:>15} {:>15} {:>10} {:>11}",
                "exit", "traced (us)", "untraced (us)", "cost (us)", "traced/not"
            );
            for r in &trace_rows {
                println!("{r}");
            }
        }
        Err(why) => println!("--trace-kernel cost not measured: {why}"),
    }
    if !std::path::Path::new(&trapvisor_bin()).exists() {
        println!(
            "start -> first serial byte: skipped ({} not found; set TRAPVISOR_BIN)",
            trapvisor_bin()
        );
        return;
    }
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    let starts_n = rounds.min(7);
    for _ in 0..starts_n {
        let (s, r) = startup_and_rss();
        starts.push(s);
        rss.extend(r);
    }
    println!(
        "start -> first serial byte: {:.2} ms (median of {starts_n})",
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
