//! `net.hostile`: malformed transmit chains posted at the device through real kicks, one case
//! at a time, then a ping to show that normal frames still flow.
//!
//! Each case is a CPL3 task: it builds a valid UDP frame (to the peer's discard port 9) behind
//! a `virtio_net_hdr_v1` in a scratch page, posts the case's chain with `SplitQueue::add_raw`,
//! kicks, and watches for up to [`CASE_WAIT_MS`] what the device does: returns the chain in the
//! used ring (`used`), sets NEEDS_RESET (`needs-reset`: CPL0 then resets and sets the device up
//! again, as a driver must), neither (`ignored`: the descriptors stay with the device), or
//! writes a used entry the driver never posted (`bad-used`, a device bug: FAIL; after
//! `avail-idx-jump` that is `stale-entries`: the slots past the real index held old heads, and
//! a device that does not check the jump takes them). The driver's
//! bookkeeping never follows the descriptors it wrote (see `virtio::queue`), so loops cannot
//! hurt it. Receive-side cases are not covered.
use super::proto::Ip;
use super::stack::{udp_frame, Dest};
use super::{reinit, run_job, Net, NetCommand, Wait};
use crate::arch::time::ticks;
use crate::drivers::net::{NetDev, BUF_LEN, HDR_LEN};
use crate::println;
use crate::sync::Global;
use crate::virtio::queue::{RawDesc, DESC_F_NEXT, DESC_F_WRITE};

/// How long a case waits for the device's answer.
const CASE_WAIT_MS: u64 = 100;
const DESC_F_INDIRECT: u16 = 4;
const VNET_F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
/// Pings after the cases, all of which must be answered.
const PINGS: u32 = 5;

/// What the device did with a malformed chain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Used,
    NeedsReset,
    Ignored,
    BadUsed,
    /// `avail-idx-jump` only: the device took the stale ring slots as chains and returned them.
    Stale,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Used => "used",
            Outcome::NeedsReset => "needs-reset",
            Outcome::Ignored => "ignored",
            Outcome::BadUsed => "bad-used",
            Outcome::Stale => "stale-entries",
        }
    }
}

/// The cases, in order. The last (`avail-idx-jump`) leaves the ring in a state no driver can
/// go on from: the device is always reset after it.
const CASES: [&str; 21] = [
    "desc-loop",
    "self-loop",
    "next-out-of-range",
    "addr-beyond-ram",
    "addr-wraps",
    "len-past-ram-end",
    "huge-len",
    "oversize-frame",
    "write-only-desc-in-tx",
    "only-write-desc",
    "short-vnet-header",
    "zero-len",
    "header-only",
    "gso-unknown-type",
    "gso-size-zero",
    "gso-tcpv4-unnegotiated",
    "csum-start-past-frame",
    "csum-offset-past-frame",
    "indirect-unnegotiated",
    "indirect-loop-unnegotiated",
    "avail-idx-jump",
];

/// Scratch: header + frame at 0, a device-writable target at 2048, an indirect table at 3072.
#[repr(C, align(4096))]
struct Scratch([u8; 4096]);

#[link_section = ".noinit.net"]
static SCRATCH: Global<Scratch> = Global::new(Scratch([0; 4096]));
const WRITE_AT: u64 = 2048;
const TABLE_AT: u64 = 3072;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
        raw_next: false,
    }
}

/// The first address of the subnet, as the default peer.
fn default_peer(net: &Net) -> u32 {
    let mask = u32::MAX << (32 - u32::from(net.stack.prefix));
    (net.stack.ip & mask) | 1
}

/// Runs case `k` (CPL3): see the module comment.
pub fn case(net: &mut Net, peer: u32, k: usize) -> Result<Outcome, &'static str> {
    let name = CASES[k];
    let to = Dest {
        mac: net.resolve(peer)?,
        ip: peer,
    };
    let base = SCRATCH.get() as u64;
    // SAFETY: the scratch page is this task's; the device only reads it (and may write the
    // WRITE_AT part through the cases that hand it a device-writable descriptor).
    let page = unsafe { &mut (*SCRATCH.get()).0 };
    page.fill(0);
    let frame_len = {
        let mut msg = [0u8; 48];
        let text = b"trapvisor net.hostile case ";
        msg[..text.len()].copy_from_slice(text);
        let n = name.len().min(msg.len() - text.len());
        msg[text.len()..text.len() + n].copy_from_slice(&name.as_bytes()[..n]);
        let len = text.len() + n;
        udp_frame(
            &mut page[HDR_LEN..BUF_LEN],
            &mut net.stack,
            &to,
            0x7476,
            9,
            len,
            |p| p.copy_from_slice(&msg[..len]),
        )
    };
    let total = (HDR_LEN + frame_len) as u32;
    // virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
    let mut hdr = |flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16| {
        page[0] = flags;
        page[1] = gso_type;
        page[2..4].copy_from_slice(&42u16.to_le_bytes());
        page[4..6].copy_from_slice(&gso_size.to_le_bytes());
        page[6..8].copy_from_slice(&csum_start.to_le_bytes());
        page[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    };
    let mut chain = [desc(base, total, 0, 0); 2];
    let mut n = 1;
    match name {
        "desc-loop" => {
            chain[0] = desc(base, total, DESC_F_NEXT, 1);
            chain[1] = desc(base, total, DESC_F_NEXT, 0);
            n = 2;
        }
        "self-loop" => chain[0] = desc(base, total, DESC_F_NEXT, 0),
        "next-out-of-range" => {
            chain[0] = RawDesc {
                next: 0xffff,
                raw_next: true,
                ..desc(base, total, DESC_F_NEXT, 0)
            }
        }
        "addr-beyond-ram" => chain[0] = desc(0xff_ffff_f000, total, 0, 0),
        "addr-wraps" => chain[0] = desc(u64::MAX - 15, total, 0, 0),
        "len-past-ram-end" => {
            let top = if net.ram_top > 4096 {
                net.ram_top
            } else {
                0x1000_0000
            };
            chain[0] = desc(top - 32, 4096, 0, 0);
        }
        "huge-len" => chain[0] = desc(base, u32::MAX, 0, 0),
        "oversize-frame" => chain[0] = desc(NetDev::tx_buf_addr(0), 128 * 1024, 0, 0),
        "write-only-desc-in-tx" => {
            chain[0] = desc(base, total, DESC_F_NEXT, 1);
            chain[1] = desc(base + WRITE_AT, 64, DESC_F_WRITE, 0);
            n = 2;
        }
        "only-write-desc" => chain[0] = desc(base + WRITE_AT, 64, DESC_F_WRITE, 0),
        "short-vnet-header" => chain[0] = desc(base, 4, 0, 0),
        "zero-len" => chain[0] = desc(base, 0, 0, 0),
        "header-only" => chain[0] = desc(base, HDR_LEN as u32, 0, 0),
        "gso-unknown-type" => hdr(0, 0x7f, 1000, 0, 0),
        "gso-size-zero" => hdr(0, GSO_TCPV4, 0, 0, 0),
        "gso-tcpv4-unnegotiated" => hdr(0, GSO_TCPV4, 1400, 0, 0),
        "csum-start-past-frame" => hdr(VNET_F_NEEDS_CSUM, 0, 0, 4000, 6),
        "csum-offset-past-frame" => hdr(VNET_F_NEEDS_CSUM, 0, 0, 34, 4000),
        "indirect-unnegotiated" | "indirect-loop-unnegotiated" => {
            // A table of two descriptors: header+frame, then (loop case) back to itself.
            let loop_case = name == "indirect-loop-unnegotiated";
            let table = &mut page[TABLE_AT as usize..TABLE_AT as usize + 32];
            table[0..8].copy_from_slice(&base.to_le_bytes());
            table[8..12].copy_from_slice(&total.to_le_bytes());
            let flags: u16 = if loop_case { DESC_F_NEXT } else { 0 };
            table[12..14].copy_from_slice(&flags.to_le_bytes());
            table[14..16].copy_from_slice(&0u16.to_le_bytes());
            chain[0] = desc(base + TABLE_AT, 16, DESC_F_INDIRECT, 0);
        }
        "avail-idx-jump" => {}
        _ => return Err("hostile: unknown case"),
    }

    let before = NetDev::irqs();
    net.dev.tx_pair = 0;
    let head = if name == "avail-idx-jump" {
        // Publish an index a ring and a half beyond what was added: no chain behind it.
        let idx = net.dev.pairs[0]
            .tx
            .avail_idx()
            .wrapping_add(net.dev.pairs[0].tx.size() * 3 / 2);
        net.dev.pairs[0].tx.publish_raw_idx(idx);
        net.dev.notify_tx();
        None
    } else {
        // SAFETY: the addresses are this page, the transmit buffers (read only), or addresses
        // outside RAM on purpose; device-writable descriptors point only into this page.
        let head =
            unsafe { net.dev.pairs[0].tx.add_raw(&chain[..n]) }.ok_or("hostile: queue full")?;
        net.dev.kick_tx_always();
        Some(head)
    };
    let deadline = ticks() + net.ms(CASE_WAIT_MS);
    let outcome = loop {
        if net.poll(|_, _, _, _| Ok(())).is_err() {
            break if head.is_none() {
                Outcome::Stale
            } else {
                Outcome::BadUsed
            };
        }
        if let Some(h) = head {
            if !net.dev.pairs[0].tx.is_outstanding(h) {
                break Outcome::Used;
            }
        }
        if net.dev.needs_reset() {
            break Outcome::NeedsReset;
        }
        if ticks() >= deadline {
            break Outcome::Ignored;
        }
        net.idle(deadline);
    };
    let after = NetDev::irqs();
    crate::ulog!(
        "net: hostile case={} result={} status={:#04x} config_irqs={}",
        name,
        outcome.name(),
        net.dev.t.status(),
        after.2 - before.2
    );
    Ok(outcome)
}

/// `net.hostile[=PEER][,jump=0|1]` (CPL0): every case (`avail-idx-jump` only with `jump`), a
/// reset where the device asked for one (or after `avail-idx-jump`), then [`PINGS`] pings to the
/// peer.
pub fn run(net: &mut Net, peer: u32, jump: bool) {
    let peer = if peer == 0 { default_peer(net) } else { peer };
    let mut counts = [0u32; 5];
    let cases = if jump { CASES.len() } else { CASES.len() - 1 };
    for (k, name) in CASES.iter().enumerate().take(cases) {
        let outcome = run_job(net, NetCommand::Hostile { peer, jump }, k, true).outcome;
        counts[outcome as usize] += 1;
        if !matches!(outcome, Outcome::Used | Outcome::Ignored)
            || *name == "avail-idx-jump"
            || net.dev.needs_reset()
        {
            reinit(net);
        }
    }
    let ping = NetCommand::Ping {
        dst: peer,
        count: PINGS,
        interval_ms: 0,
        size: 56,
        timeout_ms: 1000,
        quiet: false,
        wait: Wait::Irq,
    };
    let ok = run_job(net, ping, 0, false).error.is_none();
    println!(
        "net: hostile peer={} sent={} used={} needs_reset={} ignored={} stale={} bad_used={} then ping {}",
        Ip(peer),
        cases,
        counts[Outcome::Used as usize],
        counts[Outcome::NeedsReset as usize],
        counts[Outcome::Ignored as usize],
        counts[Outcome::Stale as usize],
        counts[Outcome::BadUsed as usize],
        if ok { "ok" } else { "FAIL" }
    );
    if counts[Outcome::BadUsed as usize] > 0 {
        crate::fail!("net: hostile: the device wrote used entries for chains never posted");
    }
    if !ok {
        crate::fail!("net: hostile: ping after the malformed chains failed");
    }
}
