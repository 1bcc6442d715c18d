//! The workloads of the `net.*` commands, run at CPL3 (see `net`): ping, UDP send, UDP
//! receive, echo. Output goes through the task log (`ulog!`), one `net: key=value ...` summary
//! line per command.
use super::proto::{self, Ip, MacFmt};
use super::stack::{echo_frame, send, udp_frame, Dest, Event, PING_ID};
use super::{hostile, Job, Net, NetCommand, Wait, MAX_PING_COUNT};
use crate::arch::time::ticks;
use crate::arch::{cpu, irq};
use crate::drivers::net::{NetDev, MAX_PAIRS};
use crate::sync::Global;
use crate::task;
use crate::ulog;
use core::sync::atomic::Ordering;

/// Round-trip times of one `net.ping`, in tenths of a microsecond.
#[link_section = ".noinit.net"]
static RTTS: Global<[u32; MAX_PING_COUNT as usize]> = Global::new([0; MAX_PING_COUNT as usize]);
/// Frames queued before a kick when sending as fast as possible.
const TX_BATCH: u32 = 32;
/// How long a command waits for its last frames to leave.
const DRAIN_MS: u64 = 200;
/// Source port of `net.udp-tx`'s first flow ("tv"); flow f uses this + f.
const TX_SPORT: u16 = 0x7476;

/// Runs the job's command (CPL3).
pub fn run(net: &mut Net, job: &mut Job) -> Result<(), &'static str> {
    match job.cmd {
        NetCommand::Ping {
            dst,
            count,
            interval_ms,
            size,
            timeout_ms,
            quiet,
            ..
        } => ping(
            net,
            dst,
            count,
            (interval_ms, timeout_ms),
            size as usize,
            quiet,
        ),
        NetCommand::UdpTx {
            dst,
            port,
            pps,
            seconds,
            size,
            count,
            flows,
            ..
        } => udp_tx(net, dst, port, (pps, seconds, count), size as usize, flows),
        NetCommand::UdpRx {
            port,
            seconds,
            stall_ms,
            stall_at_ms,
            ..
        } => udp_rx(net, port, seconds, (stall_ms, stall_at_ms)),
        NetCommand::Echo { seconds, .. } => echo(net, seconds),
        NetCommand::Hostile { peer, .. } => {
            job.outcome = hostile::case(net, peer, job.case)?;
            Ok(())
        }
        NetCommand::Ip { .. } | NetCommand::Pairs(_) | NetCommand::Info => Ok(()),
    }
}

/// `irqs=rx:N,tx:N` since `before` (from [`NetDev::irqs`]).
struct Irqs((u64, u64, u64));

impl core::fmt::Display for Irqs {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let now = NetDev::irqs();
        write!(
            f,
            "irqs=rx:{},tx:{},config:{}",
            now.0 - self.0 .0,
            now.1 - self.0 .1,
            now.2 - self.0 .2
        )
    }
}

/// Frames per pair since `before` (from [`NetDev`]'s `rx_by_pair`/`tx_by_pair`), with the
/// interrupts taken on each pair's vectors: `pairs=2 by_pair=F0/F1 pair_irqs=rx:R0/R1,tx:T0/T1`.
struct ByPair {
    npairs: usize,
    frames: [u64; MAX_PAIRS],
    irqs: [(u64, u64); MAX_PAIRS],
}

impl ByPair {
    fn start(npairs: usize, frames: [u64; MAX_PAIRS]) -> ByPair {
        ByPair {
            npairs,
            frames,
            irqs: core::array::from_fn(NetDev::pair_irqs),
        }
    }

    /// The deltas up to `now` (the same counter as given to `start`).
    fn line(&self, now: [u64; MAX_PAIRS]) -> ByPairLine {
        let irqs = core::array::from_fn(|p| {
            let (r, t) = NetDev::pair_irqs(p);
            (r - self.irqs[p].0, t - self.irqs[p].1)
        });
        ByPairLine {
            npairs: self.npairs,
            frames: core::array::from_fn(|p| now[p] - self.frames[p]),
            irqs,
        }
    }
}

struct ByPairLine {
    npairs: usize,
    frames: [u64; MAX_PAIRS],
    irqs: [(u64, u64); MAX_PAIRS],
}

impl core::fmt::Display for ByPairLine {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let n = self.npairs.clamp(1, MAX_PAIRS);
        write!(f, "pairs={} by_pair=", n)?;
        for p in 0..n {
            write!(f, "{}{}", if p > 0 { "/" } else { "" }, self.frames[p])?;
        }
        write!(f, " pair_irqs=rx:")?;
        for p in 0..n {
            write!(f, "{}{}", if p > 0 { "/" } else { "" }, self.irqs[p].0)?;
        }
        write!(f, ",tx:")?;
        for p in 0..n {
            write!(f, "{}{}", if p > 0 { "/" } else { "" }, self.irqs[p].1)?;
        }
        Ok(())
    }
}

/// A duration in tenths of a microsecond, printed as `12.3`.
struct Tenths(u64);

impl core::fmt::Display for Tenths {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

/// Polls until `deadline`, the stack answering what comes (ARP, pings) meanwhile.
fn pass_time(net: &mut Net, deadline: u64) -> Result<(), &'static str> {
    while ticks() < deadline {
        if net.poll(|_, _, _, _| Ok(()))? == 0 {
            net.idle(deadline);
        }
    }
    Ok(())
}

/// Waits (bounded) until the device has taken back every frame sent.
fn drain_tx(net: &mut Net) -> Result<(), &'static str> {
    let deadline = ticks() + net.ms(DRAIN_MS);
    net.dev.kick_tx();
    while net.dev.tx_outstanding() != 0 && ticks() < deadline {
        if net.poll(|_, _, _, _| Ok(()))? == 0 && !net.dev.tx_pending() {
            net.idle(deadline);
        }
    }
    Ok(())
}

/// The nearest-rank percentile `pct` of sorted `v`.
fn percentile(v: &[u32], pct: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (v.len() * pct).div_ceil(100).max(1);
    u64::from(v[rank - 1])
}

fn ping(
    net: &mut Net,
    dst: u32,
    count: u32,
    (interval_ms, timeout_ms): (u32, u32),
    size: usize,
    quiet: bool,
) -> Result<(), &'static str> {
    let to = Dest {
        mac: net.resolve(dst)?,
        ip: dst,
    };
    // SAFETY: RTTS is this task's alone while it runs.
    let rtts = unsafe { &mut *RTTS.get() };
    let irqs = Irqs(NetDev::irqs());
    let (kicks0, halts0) = (net.dev.stats.tx_kicks, net.halts);
    let (mut received, mut bad, mut stray) = (0usize, 0u32, 0u32);
    let mut data = [0u8; proto::MAX_ICMP_PAYLOAD];
    for seq in 0..count {
        let seq16 = seq as u16;
        for (k, b) in data[..size].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_add(k as u8);
        }
        let expect = &data[..size];
        let timeout = net.ms(u64::from(timeout_ms));
        let mut deadline = ticks() + timeout;
        while !send(&mut net.dev, |b| {
            echo_frame(
                b,
                &mut net.stack,
                &to,
                proto::ICMP_ECHO_REQUEST,
                PING_ID,
                seq16,
                expect,
            )
        })? {
            // Every transmit buffer is out (a device that stopped returning them).
            if ticks() >= deadline {
                return Err("ping: no free transmit buffer");
            }
            net.poll(|_, _, _, _| Ok(()))?;
            net.idle(deadline);
        }
        let t0 = ticks();
        net.dev.kick_tx();
        deadline = t0 + timeout;
        let mut got = None;
        while got.is_none() {
            net.poll(|_, _, ev, seen| {
                if let Event::EchoReply { src, id, seq, data } = ev {
                    if src == dst && id == PING_ID && seq == seq16 {
                        if data == expect {
                            got = Some(seen);
                        } else {
                            bad += 1;
                        }
                    } else {
                        stray += 1;
                    }
                }
                Ok(())
            })?;
            if got.is_some() || ticks() >= deadline {
                break;
            }
            net.idle(deadline);
        }
        match got {
            Some(t1) => {
                let tenths = net.tenth_us(t1.saturating_sub(t0));
                rtts[received] = tenths.min(u64::from(u32::MAX)) as u32;
                received += 1;
                if !quiet {
                    ulog!(
                        "net: reply from {} seq={} time={} us",
                        Ip(dst),
                        seq,
                        Tenths(tenths)
                    );
                }
            }
            None if quiet => {}
            None => ulog!("net: timeout from {} seq={}", Ip(dst), seq),
        }
        if interval_ms > 0 {
            pass_time(net, t0 + net.ms(u64::from(interval_ms)))?;
        }
    }
    let v = &mut rtts[..received];
    v.sort_unstable();
    let lost = count as usize - received;
    let loss_tenths = lost * 1000 / count as usize;
    ulog!(
        "net: ping dst={} sent={} received={} loss={}.{}% min_us={} median_us={} p99_us={} max_us={} size={} bad={} stray={} kicks={} {} halts={} wait={}",
        Ip(dst),
        count,
        received,
        loss_tenths / 10,
        loss_tenths % 10,
        Tenths(percentile(v, 0)),
        Tenths(percentile(v, 50)),
        Tenths(percentile(v, 99)),
        Tenths(percentile(v, 100)),
        size,
        bad,
        stray,
        net.dev.stats.tx_kicks - kicks0,
        irqs,
        net.halts - halts0,
        net.wait.name()
    );
    if lost > 0 || bad > 0 {
        return Err("ping: replies missing or wrong");
    }
    Ok(())
}

fn udp_tx(
    net: &mut Net,
    dst: u32,
    port: u16,
    (pps, seconds, count): (u32, u32, u32),
    size: usize,
    flows: u32,
) -> Result<(), &'static str> {
    let to = Dest {
        mac: net.resolve(dst)?,
        ip: dst,
    };
    // The body of a test payload depends only on seq mod 256: its CRCs, computed once.
    let mut crcs = [0u32; 256];
    for (s, c) in crcs.iter_mut().enumerate() {
        *c = proto::test_body_crc(s as u32, size);
    }
    let irqs = Irqs(NetDev::irqs());
    let by_pair = ByPair::start(net.dev.npairs, net.dev.stats.tx_by_pair);
    let (kicks0, full0, halts0) = (net.dev.stats.tx_kicks, net.dev.stats.tx_full, net.halts);
    let flows = flows.max(1);
    let interval = if pps > 0 {
        net.ms(1000) / u64::from(pps)
    } else {
        0
    };
    let start = ticks();
    let end = start + net.ms(u64::from(seconds) * 1000);
    let mut next = start;
    let mut seq = 0u32;
    let mut queued = 0;
    let mut full = false;
    loop {
        let t = ticks();
        if t >= end || (count > 0 && seq >= count) {
            break;
        }
        if pps > 0 && t < next {
            net.poll(|_, _, _, _| Ok(()))?;
            net.idle(next.min(end));
            continue;
        }
        let stack = &mut net.stack;
        let crc = crcs[(seq & 0xff) as usize];
        let flow = seq % flows;
        let sport = TX_SPORT + flow as u16;
        net.dev.tx_pair = flow as usize % net.dev.npairs;
        let sent = send(&mut net.dev, |b| {
            udp_frame(b, stack, &to, sport, port, size, |p| {
                proto::test_payload(p, seq, crc)
            })
        })?;
        if !sent {
            // Ring full: let the device catch up.
            if !full {
                net.dev.stats.tx_full += 1;
                full = true;
            }
            net.dev.kick_tx();
            queued = 0;
            net.poll(|_, _, _, _| Ok(()))?;
            let tx = &net.dev.pairs[net.dev.tx_pair].tx;
            if tx.num_free() == 0 && tx.used_pending() == 0 {
                net.idle(end);
            }
            continue;
        }
        full = false;
        seq = seq.wrapping_add(1);
        queued += 1;
        if pps > 0 {
            next += interval;
            // Far behind (a long preemption): do not burst to catch up.
            if next + 64 * interval < t {
                next = t;
            }
        }
        if pps > 0 || queued >= TX_BATCH {
            net.poll(|_, _, _, _| Ok(()))?; // kicks too
            queued = 0;
        }
    }
    let sending = ticks() - start;
    drain_tx(net)?;
    let achieved = u64::from(seq) * net.ms(1000) / sending.max(1);
    ulog!(
        "net: udp-tx dst={}:{} size={} sent={} seconds={} pps={} target_pps={} kicks={} tx_full={} {} flows={} {} halts={} wait={}",
        Ip(dst),
        port,
        size,
        seq,
        seconds,
        achieved,
        pps,
        net.dev.stats.tx_kicks - kicks0,
        net.dev.stats.tx_full - full0,
        irqs,
        flows,
        by_pair.line(net.dev.stats.tx_by_pair),
        net.halts - halts0,
        net.wait.name()
    );
    if seq == 0 {
        return Err("udp-tx: nothing sent");
    }
    Ok(())
}

/// What `udp_rx` counts.
#[derive(Default)]
struct RxCount {
    received: u64,
    bytes: u64,
    bad: u64,
    lost: u64,
    late: u64,
    expected: u32,
    first: u64,
    last: u64,
}

/// Stops taking received frames (no buffer is reposted, the used rings are left alone) until
/// `until`, with every interrupt request off: the device runs out of buffers. Transmit
/// completions are still taken back. Waits at CPL3 (`irq`, `intr`, `poll`) or halted (`halt`).
fn stall_rx(net: &mut Net, until: u64) -> Result<(), &'static str> {
    net.dev.interrupts(false);
    loop {
        net.dev.tx_reclaim()?;
        if ticks() >= until {
            break;
        }
        if net.wait == Wait::Halt {
            let seen = irq::INTERRUPTS.load(Ordering::Relaxed);
            task::wait(until, seen);
            net.halts += 1;
        } else {
            cpu::pause();
        }
    }
    net.dev.interrupts(net.wait.wants_interrupts());
    // wait=intr: what came in during the stall raised nothing; read the rings once more.
    net.recheck = true;
    Ok(())
}

fn udp_rx(
    net: &mut Net,
    port: u16,
    seconds: u32,
    (stall_ms, stall_at_ms): (u32, u32),
) -> Result<(), &'static str> {
    ulog!(
        "net: udp-rx listening ip={} port={} seconds={}",
        Ip(net.stack.ip),
        port,
        seconds
    );
    task::flush();
    let irqs = Irqs(NetDev::irqs());
    let by_pair = ByPair::start(net.dev.npairs, net.dev.stats.rx_by_pair);
    let (halts0, csum0) = (net.halts, net.stack.counters.bad_udp_csum);
    let end = ticks() + net.ms(u64::from(seconds) * 1000);
    let mut c = RxCount::default();
    // With `stall`: how long it lasted (TSC ticks), once it happened.
    let mut stalled: Option<u64> = None;
    let mut after_stall = 0u64;
    while ticks() < end {
        let now = ticks();
        if stall_ms > 0
            && stalled.is_none()
            && c.first != 0
            && now >= c.first + net.ms(u64::from(stall_at_ms))
        {
            let until = (now + net.ms(u64::from(stall_ms))).min(end);
            stall_rx(net, until)?;
            stalled = Some(ticks() - now);
        }
        let counting = stalled.is_some();
        let n = net.poll(|_, _, ev, seen| {
            if let Event::Udp { dport, data, .. } = ev {
                if dport != port {
                    return Ok(());
                }
                match proto::check_test_payload(data) {
                    Some(seq) => {
                        c.received += 1;
                        after_stall += u64::from(counting);
                        c.bytes += data.len() as u64;
                        if c.first == 0 {
                            c.first = seen;
                        }
                        c.last = seen;
                        if seq >= c.expected {
                            c.lost += u64::from(seq - c.expected);
                            c.expected = seq.wrapping_add(1);
                        } else {
                            c.late += 1;
                            c.lost = c.lost.saturating_sub(1);
                        }
                    }
                    None => c.bad += 1,
                }
            }
            Ok(())
        })?;
        if n == 0 {
            net.idle(end);
        }
    }
    c.bad += net.stack.counters.bad_udp_csum - csum0;
    let span = c.last.saturating_sub(c.first);
    let pps = if c.received > 1 && span > 0 {
        (c.received - 1) * net.ms(1000) / span
    } else {
        0
    };
    ulog!(
        "net: udp-rx port={} seconds={} received={} lost={} late={} bad={} bytes={} pps={} {} {} stall_ms={} stalled_us={} received_after_stall={} halts={} wait={}",
        port,
        seconds,
        c.received,
        c.lost,
        c.late,
        c.bad,
        c.bytes,
        pps,
        irqs,
        by_pair.line(net.dev.stats.rx_by_pair),
        stall_ms,
        stalled.map_or(0, |t| net.tenth_us(t) / 10),
        after_stall,
        net.halts - halts0,
        net.wait.name()
    );
    if c.bad > 0 {
        return Err("udp-rx: bad datagrams");
    }
    if c.received == 0 {
        return Err("udp-rx: nothing received");
    }
    if stall_ms > 0 && stalled.is_none() {
        return Err("udp-rx: the stall never began (too few datagrams, or too late)");
    }
    Ok(())
}

fn echo(net: &mut Net, seconds: u32) -> Result<(), &'static str> {
    ulog!(
        "net: echo listening ip={} mac={} seconds={}",
        Ip(net.stack.ip),
        MacFmt(net.stack.mac),
        seconds
    );
    task::flush();
    let irqs = Irqs(NetDev::irqs());
    let (icmp0, halts0) = (net.stack.counters.icmp_answered, net.halts);
    let start = ticks();
    let end = if seconds == 0 {
        u64::MAX
    } else {
        start + net.ms(u64::from(seconds) * 1000)
    };
    let (mut udp, mut dropped) = (0u64, 0u64);
    loop {
        let t = ticks();
        if t >= end {
            break;
        }
        let n = net.poll(|dev, stack, ev, _| {
            if let Event::Udp {
                src_mac,
                src,
                sport,
                dport,
                data,
            } = ev
            {
                let to = Dest {
                    mac: src_mac,
                    ip: src,
                };
                let sent = send(dev, |b| {
                    udp_frame(b, stack, &to, dport, sport, data.len(), |p| {
                        p.copy_from_slice(data)
                    })
                })?;
                if sent {
                    udp += 1;
                } else {
                    dropped += 1;
                }
            }
            Ok(())
        })?;
        if n == 0 {
            net.idle(end.min(t.saturating_add(net.ms(1000))));
        }
    }
    drain_tx(net)?;
    ulog!(
        "net: echo seconds={} icmp={} udp={} dropped={} {} halts={} wait={}",
        seconds,
        net.stack.counters.icmp_answered - icmp0,
        udp,
        dropped,
        irqs,
        net.halts - halts0,
        net.wait.name()
    );
    Ok(())
}
