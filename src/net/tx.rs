//! Transmit: the bottom half of a TX kick.
//!
//! Pop each chain, check it (only device-readable buffers, inside RAM, no loops, at most the
//! queue size of descriptors, 14 to `MAX_FRAME_LEN` bytes after the header) and its vnet header,
//! and `writev` it to the TAP straight from guest memory. Used entries are published in
//! batches, and the driver is interrupted only if it asked (EVENT_IDX `used_event`, or
//! `VRING_AVAIL_F_NO_INTERRUPT`). A bad frame's chain goes back with length 0, counted by
//! cause. If the TAP says `EAGAIN`, the chain is put back, kicks stay off, and the pair waits
//! for `EPOLLOUT` on the TAP.
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::backend::NetBackend;
use super::chain::{read_host, walk, ChainError, Direction, IoVecs, RamMap, Seg};
use super::counters::TxCounters;
use super::header::{validate_tx, VnetHeader, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN};
use super::pair::{signal, IrqCounters, PairState, BATCH, PUBLISH_BATCH};
use super::trace::{self, Tracer};
use crate::virtio::queue::DrainPasses;

/// What became of one chain.
enum Sent {
    /// Frame bytes (after the header) the TAP took.
    Frame(usize),
    Drop(Cause),
    /// The TAP is full.
    Again,
}

#[derive(Debug, Clone, Copy)]
enum Cause {
    BadChain,
    BadHeader,
    Oversize,
    Runt,
    TapDown,
    TapGone,
    TapError,
}

impl Cause {
    fn count(self, c: &mut TxCounters) {
        let d = &mut c.drops;
        match self {
            Cause::BadChain => d.bad_chain += 1,
            Cause::BadHeader => d.bad_header += 1,
            Cause::Oversize => d.oversize += 1,
            Cause::Runt => d.runt += 1,
            Cause::TapDown => d.tap_down += 1,
            Cause::TapGone => d.tap_gone += 1,
            Cause::TapError => d.tap_error += 1,
        }
    }
}

impl PairState {
    /// Sends what the driver queued, until the queue is empty or the TAP is full.
    pub(crate) fn process_tx(
        &mut self,
        backend: &dyn NetBackend,
    ) -> Result<(), virtio_queue::Error> {
        let PairState {
            active,
            counters,
            iov,
            segs,
            timeline,
            flow,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        let tr = trace::tracer(timeline, *flow);
        if !a.txq.ready() || a.tx_blocked {
            return Ok(());
        }
        let c = &mut counters.tx;
        let mem = &a.mem;
        let max_desc = usize::from(a.txq.size());
        let mut blocked = false;
        let mut passes = DrainPasses::default();
        loop {
            a.txq.disable_notification(mem)?;
            // One read of the available index per pass (it is the driver's hottest line).
            let mut chains = a.txq.iter(mem)?;
            let mut popped = trace::now(&tr);
            let mut found = false;
            while let Some(chain) = chains.next() {
                found = true;
                let head = chain.head_index();
                if usize::from(head) >= max_desc {
                    // Not a chain we can even give back.
                    c.drops.bad_head += 1;
                    continue;
                }
                let checked = prepare(chain, &a.ram, a.acked, max_desc, segs, iov);
                let sent = match checked {
                    Ok(total) => {
                        note(&tr, popped, head, total);
                        let start = trace::now(&tr);
                        let sent = write(backend, iov, total);
                        if let Some(t) = &tr {
                            let what = format!("tap writev {} B", total - HDR_LEN);
                            t.span(start, what, "tap write", serde_json::json!({"head": head}));
                        }
                        sent
                    }
                    Err(cause) => Sent::Drop(cause),
                };
                match sent {
                    Sent::Frame(n) => {
                        c.frames += 1;
                        c.bytes += n as u64;
                        c.copied_bytes += HDR_LEN as u64;
                    }
                    Sent::Drop(cause) => {
                        log::debug!("{}: tx frame dropped: {cause:?}", backend.describe());
                        cause.count(c);
                    }
                    Sent::Again => {
                        // Give the chain back to the ring and wait for EPOLLOUT; kicks stay off.
                        chains.go_to_previous_position();
                        c.tap_eagain += 1;
                        blocked = true;
                        break;
                    }
                }
                // Published every few frames (a polling driver sees them soon, and the used
                // index's cache line does not bounce for each); the interrupt waits for more.
                a.tx_used.add(mem, head, 0)?;
                if a.tx_used.pending() >= PUBLISH_BATCH {
                    a.tx_used.publish(mem)?;
                }
                if a.tx_used.unsignalled() >= BATCH {
                    let (irq, intr) = (IrqCounters::tx(c), a.interrupt.as_ref());
                    signal(&mut a.tx_used, mem, intr, a.tx_index, irq, &tr)?;
                }
                popped = trace::now(&tr);
            }
            // Kicks back on, then look once more: a chain added in between would wait.
            if blocked || !passes.again(a.txq.enable_notification(mem)?, found) {
                break;
            }
        }
        iov.clear();
        a.tx_blocked = blocked;
        a.txq.set_next_used(a.tx_used.next_used());
        let (irq, intr) = (IrqCounters::tx(c), a.interrupt.as_ref());
        signal(&mut a.tx_used, mem, intr, a.tx_index, irq, &tr)
    }
}

/// The trace span of popping and checking one chain.
fn note(tr: &Option<Tracer<'_>>, popped: Option<std::time::Instant>, head: u16, total: usize) {
    if let Some(t) = tr {
        let what = format!("pop tx chain {head}");
        let args = serde_json::json!({"head": head, "bytes": total});
        t.span(popped, what, "queue pop", args);
    }
}

/// Checks one chain and its vnet header, and gathers it into `iov`; its length, header
/// included.
fn prepare(
    chain: DescriptorChain<&GuestMemoryMmap>,
    ram: &RamMap,
    acked: u64,
    max_desc: usize,
    segs: &mut Vec<Seg>,
    iov: &mut IoVecs,
) -> Result<usize, Cause> {
    let limit = (HDR_LEN + MAX_FRAME_LEN) as u64;
    let total = match walk(chain, ram, Direction::Read, max_desc, limit, segs) {
        Ok(w) => w.readable as usize,
        Err(ChainError::TooLong(_)) => return Err(Cause::Oversize),
        Err(_) => return Err(Cause::BadChain),
    };
    if total < HDR_LEN + ETH_HLEN {
        return Err(Cause::Runt);
    }
    let mut raw = [0u8; HDR_LEN];
    if !read_host(segs, 0, &mut raw) {
        return Err(Cause::BadChain);
    }
    if validate_tx(&VnetHeader::from_bytes(&raw), total - HDR_LEN, acked).is_err() {
        return Err(Cause::BadHeader);
    }
    iov.clear();
    iov.push_segs(segs);
    Ok(total)
}

/// Writes a checked chain (`iov`, `total` bytes) to the TAP.
fn write(backend: &dyn NetBackend, iov: &IoVecs, total: usize) -> Sent {
    // SAFETY: each iovec is a segment `walk` found inside guest RAM (`prepare`); the active
    // pair's `mem` keeps that mapping alive for the whole call, and the kernel only reads
    // through them.
    match unsafe { backend.writev_raw(iov.as_slice()) } {
        Ok(Some(_)) => Sent::Frame(total - HDR_LEN),
        Ok(None) => Sent::Again,
        Err(e) => match e.raw_os_error() {
            Some(libc::EIO) => Sent::Drop(Cause::TapDown),
            Some(libc::EBADFD) => Sent::Drop(Cause::TapGone),
            _ => Sent::Drop(Cause::TapError),
        },
    }
}
