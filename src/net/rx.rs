//! Receive: the TAP is readable, fill the driver's buffers.
//!
//! Receive chains are popped into a small reserve ([`RxBuffers`]) until they can hold the
//! largest frame that may come (`rx_need`: 65 562 bytes with guest TSO/UFO, else 1 526); then
//! one `readv` scatters the next frame straight into them, with a few bytes of our own after
//! them to catch a frame longer than the buffers. Without MRG_RXBUF each frame gets one chain
//! that must hold `rx_need` (smaller ones go back empty, counted); with it, a frame takes as
//! many chains as it needs and `num_buffers` says how many. Chains a frame did not need stay
//! in the reserve for the next one. The kernel writes 10 header bytes; the device sets
//! `num_buffers`.
//!
//! When the driver has no buffers left the pair stops polling the TAP (frames wait in the
//! TAP's queue) and re-enables RX kicks; the kick resumes it. Nothing read is lost unless
//! counted: truncated, runt.
use std::collections::VecDeque;

use virtio_queue::{QueueOwnedT, QueueT};

use super::backend::NetBackend;
use super::chain::{walk, write_host, Direction, IoVecs, Seg};
use super::counters::RxCounters;
use super::header::{ETH_HLEN, HDR_LEN, NUM_BUFFERS_OFFSET};
use super::pair::{signal, ActivePair, IrqCounters, PairState, BATCH, PUBLISH_BATCH};
use super::trace;

/// A receive chain the device holds (popped, not yet used).
pub(crate) struct RxChain {
    head: u16,
    segs: Vec<Seg>,
    cap: usize,
    descriptors: usize,
}

/// The reserve of receive chains.
#[derive(Default)]
pub(crate) struct RxBuffers {
    chains: VecDeque<RxChain>,
    cap: usize,
    descriptors: usize,
    /// The iovecs of all the chains, from `iov_start`, kept as chains come and go (adjacent
    /// buffers merged) rather than rebuilt for every frame.
    iov: IoVecs,
    iov_start: usize,
    /// Segment vectors to reuse.
    spare: Vec<Vec<Seg>>,
}

impl RxBuffers {
    /// Forgets every chain (reset: the driver gets its buffers back by re-initializing).
    pub fn clear(&mut self) {
        while let Some(c) = self.chains.pop_front() {
            self.spare.push(c.segs);
        }
        self.cap = 0;
        self.descriptors = 0;
        self.iov.clear();
        self.iov_start = 0;
    }

    fn pop_front(&mut self) -> Option<RxChain> {
        let c = self.chains.pop_front()?;
        self.cap -= c.cap;
        self.descriptors -= c.descriptors;
        Some(c)
    }
}

/// Beyond what one frame needs, chains popped at once when the reserve runs low: the
/// available ring is then read once per this many frames, not for each.
const REFILL_BYTES: usize = 32 * 1024;
const REFILL_CHAINS: usize = 16;

impl PairState {
    /// Moves frames from the TAP into receive buffers until the TAP is empty or the buffers
    /// run out.
    pub(crate) fn process_rx(
        &mut self,
        backend: &dyn NetBackend,
    ) -> Result<(), virtio_queue::Error> {
        let PairState {
            active,
            counters,
            rx: bufs,
            overflow,
            gone,
            timeline,
            flow,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        let tr = trace::tracer(timeline, *flow);
        if !a.rxq.ready() || !a.rx_enabled || *gone || a.vhost {
            return Ok(());
        }
        let c = &mut counters.rx;
        a.rx_stalled = false;
        a.rxq.disable_notification(&a.mem)?;
        loop {
            if !fill(a, bufs, c)? {
                // Out of buffers: kicks on, then look once more (the driver may have added
                // some meanwhile); else stop polling the TAP until the RX kick.
                if a.rxq.enable_notification(&a.mem)? {
                    continue;
                }
                a.rx_stalled = true;
                c.no_buffers += 1;
                break;
            }
            // The buffers offered for this frame: the first chain without MRG_RXBUF; with it,
            // as many as the largest frame needs. Then our overflow bytes.
            let (end, cap) = if a.mrg {
                bufs.iov.prefix(bufs.iov_start, a.rx_need)
            } else {
                let front = &bufs.chains[0];
                (bufs.iov_start + front.segs.len(), front.cap)
            };
            let tail = (overflow.as_mut_ptr() as usize, overflow.len());
            let start = trace::now(&tr);
            let read = bufs.iov.with_tail(bufs.iov_start, end, tail, |iovs| {
                // SAFETY: the iovecs are held receive chains, which `walk` found
                // device-writable and inside guest RAM (kept mapped by `a.mem` for the call),
                // and our own overflow buffer, which the lock we hold keeps to this thread.
                unsafe { backend.readv_raw(iovs) }
            });
            if let (Some(t), Ok(Some(n))) = (&tr, &read) {
                let what = format!("tap readv {} B", n.saturating_sub(HDR_LEN));
                t.span(
                    start,
                    what,
                    "tap read",
                    serde_json::json!({"queue": a.rx_index}),
                );
            }
            match read {
                Ok(None) => {
                    c.tap_eagain += 1;
                    break;
                }
                // Longer than the buffers: the tail was lost. The buffers are reused.
                Ok(Some(n)) if n > cap => c.drops.truncated += 1,
                Ok(Some(n)) if n < HDR_LEN + ETH_HLEN => c.drops.runt += 1,
                Ok(Some(n)) => deliver(a, bufs, n, c)?,
                Err(e) => {
                    c.drops.tap_error += 1;
                    if e.raw_os_error() == Some(libc::EBADFD) {
                        *gone = true;
                    }
                    // Not polled again until the driver kicks: an error that stays would
                    // otherwise make the TAP readable forever.
                    a.rx_stalled = true;
                    log::debug!("{}: read: {e}", backend.describe());
                    break;
                }
            }
            // Published every few frames, the interrupt decided every few more (see tx.rs).
            if a.rx_used.pending() >= PUBLISH_BATCH {
                a.rx_used.publish(&a.mem)?;
            }
            if a.rx_used.unsignalled() >= BATCH {
                let irq = IrqCounters::rx(c);
                let intr = a.interrupt.as_ref();
                signal(&mut a.rx_used, &a.mem, intr, a.rx_index, irq, &tr)?;
            }
        }
        a.rxq.set_next_used(a.rx_used.next_used());
        let irq = IrqCounters::rx(c);
        let intr = a.interrupt.as_ref();
        signal(&mut a.rx_used, &a.mem, intr, a.rx_index, irq, &tr)
    }
}

/// Whether the reserve can take the next frame.
fn enough(a: &ActivePair, bufs: &RxBuffers) -> bool {
    if a.mrg {
        bufs.cap >= a.rx_need
    } else {
        !bufs.chains.is_empty()
    }
}

/// Makes sure the reserve can take one frame, popping receive chains (and some more, so that
/// the next frames need not look at the ring). False: the driver has no more.
fn fill(
    a: &mut ActivePair,
    bufs: &mut RxBuffers,
    c: &mut RxCounters,
) -> Result<bool, virtio_queue::Error> {
    if enough(a, bufs) {
        return Ok(true);
    }
    let max_desc = usize::from(a.rxq.size());
    let min_cap = if a.mrg { HDR_LEN } else { a.rx_need };
    let (mrg, need) = (a.mrg, a.rx_need);
    let mem = &a.mem;
    // One read of the available index for the whole refill.
    for chain in a.rxq.iter(mem)? {
        let head = chain.head_index();
        if usize::from(head) >= max_desc {
            c.drops.bad_head += 1;
            continue;
        }
        let mut segs = bufs.spare.pop().unwrap_or_default();
        let limit = u64::from(u32::MAX);
        let (cap, descriptors) =
            match walk(chain, &a.ram, Direction::Write, max_desc, limit, &mut segs) {
                Ok(w) => (w.writable as usize, w.descriptors),
                Err(e) => {
                    log::debug!("rx chain {head}: {e}");
                    c.drops.bad_chain += 1;
                    bufs.spare.push(segs);
                    a.rx_used.add(mem, head, 0)?;
                    continue;
                }
            };
        if cap < min_cap {
            c.drops.small_buffer += 1;
            bufs.spare.push(segs);
            a.rx_used.add(mem, head, 0)?;
            continue;
        }
        bufs.cap += cap;
        bufs.descriptors += descriptors;
        if mrg {
            bufs.iov.push_segs_merged(&segs, bufs.iov_start);
        } else {
            // One chain per frame: its iovecs must stay its own.
            bufs.iov.push_segs(&segs);
        }
        bufs.chains.push_back(RxChain {
            head,
            segs,
            cap,
            descriptors,
        });
        let topped_up = if mrg {
            bufs.cap >= need + REFILL_BYTES
        } else {
            bufs.chains.len() >= REFILL_CHAINS
        };
        if topped_up {
            break;
        }
    }
    if enough(a, bufs) {
        return Ok(true);
    }
    // A ring too small for the largest frame: once we hold all of it the driver cannot add
    // more, so take what there is (a longer frame is counted truncated).
    Ok(a.mrg && !bufs.chains.is_empty() && bufs.descriptors >= max_desc)
}

/// A frame of `n` bytes (header included) landed in the first chains of the reserve: set
/// `num_buffers`, and hand those chains to the driver together.
fn deliver(
    a: &mut ActivePair,
    bufs: &mut RxBuffers,
    n: usize,
    c: &mut RxCounters,
) -> Result<(), virtio_queue::Error> {
    let mut k = 0u16;
    let mut left = n;
    for ch in &bufs.chains {
        k += 1;
        if ch.cap >= left {
            break;
        }
        left -= ch.cap;
    }
    // The first chain holds at least the header (`fill` makes sure); the kernel wrote 10
    // header bytes, num_buffers is ours.
    write_host(&bufs.chains[0].segs, NUM_BUFFERS_OFFSET, &k.to_le_bytes());
    let mut left = n;
    let mut consumed = 0;
    for _ in 0..k {
        let Some(ch) = bufs.pop_front() else { break };
        let used = ch.cap.min(left);
        left -= used;
        consumed += ch.cap;
        a.rx_used.add(&a.mem, ch.head, used as u32)?;
        bufs.spare.push(ch.segs);
    }
    bufs.iov.advance(&mut bufs.iov_start, consumed);
    c.frames += 1;
    c.bytes += (n - HDR_LEN) as u64;
    c.buffers += u64::from(k);
    c.merged += u64::from(k > 1);
    c.copied_bytes += 2;
    Ok(())
}
