//! The `net.*` commands: a virtio-net device (`drivers::net`) and a tiny IPv4 stack (ARP, ICMP
//! echo, UDP) whose workloads run at CPL3.
//!
//! CPL0 finds and sets up the device once (the first `net.*` command that needs it),
//! calibrates the TSC, then runs each command as a CPL3 task (`task::run_task`): the loops that
//! build packets, poll the used rings, compute checksums and kick the device (an MMIO write)
//! run natively there; CPL0 only takes the interrupts, prints the task's log and halts when the
//! task waits with `wait=halt`. See `docs/builtin-guest.md` for the commands and their output.
//!
//! The x86 words in this module and its children stand for both arches: CPL0 and CPL3 are the
//! privileged and the unprivileged level (EL1 and EL0 on aarch64), "the TSC" is the arch's clock
//! (`arch::time::ticks`: the TSC, or the generic timer's virtual counter).
mod hostile;
pub mod proto;
mod stack;
mod work;

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::arch::{time, BootInfo};
use crate::cmdline::ParseError;
use crate::drivers::net::{self as dev, NetDev};
use crate::pci::{self, Function};
use crate::sync::Global;
use crate::task;
use crate::{println, virtio};
use proto::{Ip, MacFmt};
use stack::Stack;

/// How a workload waits for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Spin at CPL3 (IF=1) with completion interrupts requested: a completion raises its
    /// MSI-X vector, taken at CPL0 while the loop polls, unless the loop consumed it (and moved
    /// `used_event` past it) before the device looked.
    Irq,
    /// Spin at CPL3 with completion interrupts requested, but read the used rings only after
    /// an interrupt came in (as an interrupt-driven driver does): a completion the loop waits
    /// for always arrives with its interrupt, since the loop never consumes it first and moves
    /// `used_event` past it. After re-arming it looks once more (an entry published before the
    /// re-arm raises nothing).
    Intr,
    /// Spin at CPL3 with interrupts suppressed (EVENT_IDX `used_event` behind, or
    /// VRING_AVAIL_F_NO_INTERRUPT).
    Poll,
    /// When idle, request interrupts and halt at CPL0 (`sti; hlt`) until one (or the
    /// deadline's one-shot APIC timer) arrives.
    Halt,
}

impl Wait {
    fn name(self) -> &'static str {
        match self {
            Wait::Irq => "irq",
            Wait::Intr => "intr",
            Wait::Poll => "poll",
            Wait::Halt => "halt",
        }
    }

    /// Whether a running workload keeps completion interrupts requested.
    pub fn wants_interrupts(self) -> bool {
        matches!(self, Wait::Irq | Wait::Intr)
    }
}

/// One `net.*` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetCommand {
    /// `net.ip=ADDR/PREFIX`: the stack's address (taken before any command runs).
    Ip { addr: u32, prefix: u8 },
    /// `net.pairs=N`: queue pairs to drive (1 or 2; taken before any command runs).
    Pairs(u8),
    /// `net.info`.
    Info,
    /// `net.ping=DST[,count=N][,interval=MS][,size=B][,timeout=MS][,quiet=0|1][,wait=W]`.
    Ping {
        dst: u32,
        count: u32,
        interval_ms: u32,
        size: u32,
        timeout_ms: u32,
        /// No line per reply, only the summary (no serial output while it runs).
        quiet: bool,
        wait: Wait,
    },
    /// `net.udp-tx=DST:PORT[,pps=N][,seconds=S][,count=N][,size=B][,flows=F][,wait=W]`:
    /// `flows` source ports (30326 + f), datagram k from flow k mod F on pair f mod pairs;
    /// `count` (0: no limit) ends it early after N datagrams.
    UdpTx {
        dst: u32,
        port: u16,
        pps: u32,
        seconds: u32,
        size: u32,
        count: u32,
        flows: u32,
        wait: Wait,
    },
    /// `net.udp-rx=PORT[,seconds=S][,stall=MS][,stall_at=MS][,wait=W]`: with `stall`, no
    /// receive buffer is reposted for MS milliseconds from `stall_at` ms after the first
    /// datagram.
    UdpRx {
        port: u16,
        seconds: u32,
        stall_ms: u32,
        stall_at_ms: u32,
        wait: Wait,
    },
    /// `net.echo[,seconds=S][,wait=W]` (seconds 0: until the VMM stops the guest).
    Echo { seconds: u32, wait: Wait },
    /// `net.hostile[=PEER][,jump=0|1]` (PEER 0: the subnet's first address; jump: include
    /// `avail-idx-jump`).
    Hostile { peer: u32, jump: bool },
}

const DEFAULT_IP: u32 = 0x0a00_020f; // 10.0.2.15
const DEFAULT_PREFIX: u32 = 24;
const MAX_PING_COUNT: u32 = 16384;

static IP: AtomicU32 = AtomicU32::new(DEFAULT_IP);
static PREFIX: AtomicU32 = AtomicU32::new(DEFAULT_PREFIX);
static PAIRS: AtomicU32 = AtomicU32::new(1);

fn number(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x") {
        u32::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn in_range(v: Option<u32>, lo: u32, hi: u32) -> Option<u32> {
    v.filter(|v| (lo..=hi).contains(v))
}

fn parse_wait(s: &str) -> Option<Wait> {
    match s {
        "irq" => Some(Wait::Irq),
        "intr" => Some(Wait::Intr),
        "poll" => Some(Wait::Poll),
        "halt" => Some(Wait::Halt),
        _ => None,
    }
}

/// Parses a `net.*` word: `net.NAME[=VALUE][,KEY=VALUE]...`.
pub fn parse(word: &str) -> Result<NetCommand, ParseError<'_>> {
    let rest = &word[word.len().min(4)..];
    let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
    let name = &rest[..name_end];
    let mut tail = &rest[name_end..];
    let value = if let Some(t) = tail.strip_prefix('=') {
        let end = t.find(',').unwrap_or(t.len());
        tail = &t[end..];
        Some(&t[..end])
    } else {
        None
    };
    let bad = ParseError::BadValue(word);
    let mut cmd = match (name, value) {
        ("ip", Some(v)) => {
            let (a, p) = v.split_once('/').unwrap_or((v, "24"));
            let addr = proto::parse_ip(a).ok_or(bad)?;
            let prefix = in_range(number(p), 1, 31).ok_or(bad)? as u8;
            NetCommand::Ip { addr, prefix }
        }
        ("pairs", Some(v)) => {
            NetCommand::Pairs(in_range(number(v), 1, dev::MAX_PAIRS as u32).ok_or(bad)? as u8)
        }
        ("info", None) => NetCommand::Info,
        ("ping", Some(v)) => NetCommand::Ping {
            dst: proto::parse_ip(v).ok_or(bad)?,
            count: 10,
            interval_ms: 0,
            size: 56,
            timeout_ms: 1000,
            quiet: false,
            wait: Wait::Irq,
        },
        ("udp-tx", Some(v)) => {
            let (a, p) = v.split_once(':').ok_or(bad)?;
            NetCommand::UdpTx {
                dst: proto::parse_ip(a).ok_or(bad)?,
                port: in_range(number(p), 1, 65535).ok_or(bad)? as u16,
                pps: 1000,
                seconds: 1,
                size: 64,
                count: 0,
                flows: 1,
                wait: Wait::Irq,
            }
        }
        ("udp-rx", Some(v)) => NetCommand::UdpRx {
            port: in_range(number(v), 1, 65535).ok_or(bad)? as u16,
            seconds: 10,
            stall_ms: 0,
            stall_at_ms: 1000,
            wait: Wait::Irq,
        },
        ("echo", None) => NetCommand::Echo {
            seconds: 0,
            wait: Wait::Halt,
        },
        ("hostile", v) => NetCommand::Hostile {
            peer: match v {
                Some(v) => proto::parse_ip(v).ok_or(bad)?,
                None => 0,
            },
            jump: true,
        },
        ("ip" | "pairs" | "info" | "ping" | "udp-tx" | "udp-rx" | "echo", _) => return Err(bad),
        _ => return Err(ParseError::Unknown(word)),
    };
    if tail.is_empty() {
        return Ok(cmd);
    }
    for opt in tail[1..].split(',') {
        let (k, v) = opt.split_once('=').ok_or(bad)?;
        let n = number(v);
        match (&mut cmd, k) {
            (NetCommand::Ping { count, .. }, "count") => {
                *count = in_range(n, 1, MAX_PING_COUNT).ok_or(bad)?
            }
            (NetCommand::Ping { interval_ms, .. }, "interval") => {
                *interval_ms = in_range(n, 0, 60_000).ok_or(bad)?
            }
            (NetCommand::Ping { size, .. }, "size") => {
                *size = in_range(n, 0, proto::MAX_ICMP_PAYLOAD as u32).ok_or(bad)?
            }
            (NetCommand::Ping { timeout_ms, .. }, "timeout") => {
                *timeout_ms = in_range(n, 1, 4000).ok_or(bad)?
            }
            (NetCommand::Ping { quiet, .. }, "quiet") => {
                *quiet = in_range(n, 0, 1).ok_or(bad)? == 1
            }
            (NetCommand::UdpTx { pps, .. }, "pps") => {
                *pps = in_range(n, 0, 10_000_000).ok_or(bad)?
            }
            (NetCommand::UdpTx { seconds, .. }, "seconds") => {
                *seconds = in_range(n, 1, 3600).ok_or(bad)?
            }
            (NetCommand::UdpTx { size, .. }, "size") => {
                *size =
                    in_range(n, proto::TEST_HDR as u32, proto::MAX_UDP_PAYLOAD as u32).ok_or(bad)?
            }
            (NetCommand::UdpTx { flows, .. }, "flows") => *flows = in_range(n, 1, 64).ok_or(bad)?,
            (NetCommand::UdpTx { count, .. }, "count") => *count = n.ok_or(bad)?,
            (NetCommand::UdpRx { seconds, .. }, "seconds") => {
                *seconds = in_range(n, 1, 3600).ok_or(bad)?
            }
            (NetCommand::UdpRx { stall_ms, .. }, "stall") => {
                *stall_ms = in_range(n, 0, 600_000).ok_or(bad)?
            }
            (NetCommand::UdpRx { stall_at_ms, .. }, "stall_at") => {
                *stall_at_ms = in_range(n, 0, 600_000).ok_or(bad)?
            }
            (NetCommand::Echo { seconds, .. }, "seconds") => {
                *seconds = in_range(n, 0, 1_000_000).ok_or(bad)?
            }
            (NetCommand::Hostile { jump, .. }, "jump") => {
                *jump = in_range(n, 0, 1).ok_or(bad)? == 1
            }
            (
                NetCommand::Ping { wait, .. }
                | NetCommand::UdpTx { wait, .. }
                | NetCommand::UdpRx { wait, .. }
                | NetCommand::Echo { wait, .. },
                "wait",
            ) => *wait = parse_wait(v).ok_or(bad)?,
            _ => return Err(bad),
        }
    }
    Ok(cmd)
}

/// Applies `net.ip` and `net.pairs` before any command runs, wherever they stand on the
/// command line.
pub fn configure(cmd: &NetCommand) {
    match *cmd {
        NetCommand::Ip { addr, prefix } => {
            IP.store(addr, Ordering::Relaxed);
            PREFIX.store(u32::from(prefix), Ordering::Relaxed);
        }
        NetCommand::Pairs(n) => PAIRS.store(u32::from(n), Ordering::Relaxed),
        _ => {}
    }
}

/// Queue pairs asked for (`net.pairs`).
fn pairs_wanted() -> usize {
    PAIRS.load(Ordering::Relaxed) as usize
}

/// The device and stack, shared by CPL0 and the CPL3 tasks (one runs at a time).
pub struct Net {
    pub dev: NetDev,
    pub stack: Stack,
    pub func: Function,
    /// TSC ticks per millisecond.
    pub khz: u64,
    /// How the running command waits.
    pub wait: Wait,
    /// Halts (`wait=halt` waits at CPL0) so far.
    pub halts: u64,
    /// `wait=intr`: the interrupt count when the used rings were last read, and whether they
    /// must be read again without a new interrupt (an entry seen after re-arming).
    pub irq_seen: u64,
    pub recheck: bool,
    pub ram_top: u64,
}

#[link_section = ".noinit.net"]
static NET: Global<MaybeUninit<Net>> = Global::new(MaybeUninit::uninit());
static UP: AtomicBool = AtomicBool::new(false);

/// What a CPL3 task is asked to do, and its verdict.
pub struct Job {
    pub cmd: NetCommand,
    /// For `net.hostile`: the case to run.
    pub case: usize,
    /// Set by the task: why the command failed.
    pub error: Option<&'static str>,
    /// Set by a hostile case: what the device did.
    pub outcome: hostile::Outcome,
}

static JOB: Global<Job> = Global::new(Job {
    cmd: NetCommand::Info,
    case: 0,
    error: None,
    outcome: hostile::Outcome::Ignored,
});

/// The device, set up on first use. CPL0.
fn up(info: &BootInfo) -> &'static mut Net {
    // SAFETY: CPL0 between tasks: nothing else uses NET; it is initialised once UP is set.
    let net = unsafe { &mut *NET.get() };
    if UP.load(Ordering::Relaxed) {
        // SAFETY: initialised (UP).
        return unsafe { net.assume_init_mut() };
    }
    let bus = match pci::scan(info) {
        Ok(b) => b,
        Err(e) => crate::fail!("net: pci: {}", e),
    };
    let Some(func) = bus.find(virtio::VENDOR, dev::DEVICE_ID).copied() else {
        crate::fail!(
            "net: no virtio-net ({:04x}:{:04x}) on bus 0",
            virtio::VENDOR,
            dev::DEVICE_ID
        );
    };
    time::calibrate();
    let d = match NetDev::init(&func, pairs_wanted()) {
        Ok(d) => d,
        Err(e) => crate::fail!("net: {}: {}", func.bdf, e),
    };
    let (ip, prefix) = (
        IP.load(Ordering::Relaxed),
        PREFIX.load(Ordering::Relaxed) as u8,
    );
    println!(
        "net: up {} mac={} ip={}/{} rx_size={} tx_size={} pairs={}",
        func.bdf,
        MacFmt(d.mac),
        Ip(ip),
        prefix,
        d.pairs[0].rx.size(),
        d.pairs[0].tx.size(),
        d.npairs
    );
    let stack = Stack::new(d.mac, ip, prefix);
    net.write(Net {
        dev: d,
        stack,
        func,
        khz: time::ticks_khz().0,
        wait: Wait::Irq,
        halts: 0,
        irq_seen: 0,
        recheck: false,
        ram_top: info.ram_top,
    });
    UP.store(true, Ordering::Relaxed);
    // SAFETY: just written.
    unsafe { net.assume_init_mut() }
}

/// Sets the device up again after it asked for a reset (or was sent nonsense). CPL0.
fn reinit(net: &mut Net) {
    match NetDev::init(&net.func, pairs_wanted()) {
        Ok(d) => net.dev = d,
        Err(e) => crate::fail!("net: {}: set-up after reset: {}", net.func.bdf, e),
    }
}

/// The CPL3 side of every task: runs the job in JOB on the device in NET.
extern "C" fn task_entry(arg: usize) -> ! {
    // SAFETY: CPL0 hands JOB and NET (initialised) to the task and waits in run_task.
    let (job, net) = unsafe { (&mut *(arg as *mut Job), (*NET.get()).assume_init_mut()) };
    job.error = work::run(net, job).err();
    task::exit(0)
}

/// Runs `cmd` as a CPL3 task; FAILs the guest with its error when `fail` (else the error is in
/// the returned job).
fn run_job(net: &mut Net, cmd: NetCommand, case: usize, fail: bool) -> &'static Job {
    net.wait = match cmd {
        NetCommand::Ping { wait, .. }
        | NetCommand::UdpTx { wait, .. }
        | NetCommand::UdpRx { wait, .. }
        | NetCommand::Echo { wait, .. } => wait,
        _ => Wait::Irq,
    };
    net.dev.interrupts(net.wait.wants_interrupts());
    // wait=intr: the rings are read once at the start.
    net.recheck = true;
    // SAFETY: no task runs; JOB is CPL0's until run_task starts one.
    unsafe {
        let job = &mut *JOB.get();
        job.cmd = cmd;
        job.case = case;
        job.error = None;
        job.outcome = hostile::Outcome::Ignored;
    }
    task::run_task(task_entry, JOB.get() as usize);
    // SAFETY: the task is over.
    let job = unsafe { &*JOB.get() };
    net.dev.interrupts(false);
    if let (Some(e), true) = (job.error, fail) {
        crate::fail!("net: {}", e);
    }
    job
}

/// Runs one `net.*` command. CPL0.
pub fn run(cmd: NetCommand, info: &BootInfo) {
    match cmd {
        NetCommand::Ip { addr, prefix } => println!("net: ip={}/{}", Ip(addr), prefix),
        NetCommand::Pairs(n) => println!("net: pairs={}", n),
        NetCommand::Info => print_info(up(info)),
        NetCommand::Hostile { peer, jump } => hostile::run(up(info), peer, jump),
        _ => {
            run_job(up(info), cmd, 0, true);
        }
    }
}

/// `net.info`.
fn print_info(net: &Net) {
    let d = &net.dev;
    let mut names = [0u8; 160];
    let mut len = 0;
    for (bit, name) in dev::FEATURE_NAMES {
        if d.accepted & bit != 0 && len + name.len() < names.len() {
            if len > 0 {
                names[len] = b',';
                len += 1;
            }
            names[len..len + name.len()].copy_from_slice(name.as_bytes());
            len += name.len();
        }
    }
    let (rx_irqs, tx_irqs, cfg_irqs) = NetDev::irqs();
    println!(
        "net: info bdf={} mac={} ip={}/{} offered={:#x} accepted={:#x} features={} queue_pairs={} max_queue_pairs={} rx_size={} tx_size={} rx_max={} tx_max={} msix_table={} msix_used={} vectors=config:{:#x},rx:{:#x},tx:{:#x} link={} {}_khz={} {}_source={} irqs=rx:{},tx:{},config:{}",
        d.bdf,
        MacFmt(d.mac),
        Ip(net.stack.ip),
        net.stack.prefix,
        d.offered,
        d.accepted,
        core::str::from_utf8(&names[..len]).unwrap_or("?"),
        d.npairs,
        d.max_queue_pairs().unwrap_or(1),
        d.pairs[0].rx.size(),
        d.pairs[0].tx.size(),
        d.rx_max,
        d.tx_max,
        d.msix_table,
        d.msix_used,
        if d.msix_used >= 3 { dev::CONFIG_VECTOR } else { 0 },
        dev::RX_VECTOR,
        if d.msix_used >= 3 { dev::TX_VECTOR } else { dev::RX_VECTOR },
        match d.link_status() {
            Some(s) if s & 1 != 0 => "up",
            Some(_) => "down",
            None => "unknown",
        },
        time::COUNTER,
        net.khz,
        time::COUNTER,
        time::source(),
        rx_irqs,
        tx_irqs,
        cfg_irqs
    );
}
