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
//! Each frame's chains are published together as soon as the frame is in, and the interrupt
//! is decided right then against the driver's `used_event` (the completion rule of `tx.rs`):
//! a NAPI driver asks for the first one and polls the rest.
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
use super::pair::{signal, ActivePair, IrqCounters, PairState};
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
            // The frame's chains are published together as soon as it is in, and the
            // interrupt decided against used_event: the same rule as transmit (tx.rs).
            let irq = IrqCounters::rx(c);
            let intr = a.interrupt.as_ref();
            signal(&mut a.rx_used, &a.mem, intr, a.rx_index, irq, &tr)?;
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::{Arc, Mutex};

    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use crate::net::backend::NetBackend;
    use crate::net::ctrl::tests::{queue, rings, NoIrq, SIZE};
    use crate::net::{Net, NetConfig};
    use crate::virtio::{feature, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

    /// A TAP with `left` frames that records, at each read, the receive queue's used index.
    struct Frames {
        evt: EventFd,
        mem: GuestMemoryMmap,
        left: Mutex<(u16, Vec<u16>)>,
    }

    impl NetBackend for Frames {
        fn fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
            let mut l = self.left.lock().unwrap();
            if l.0 == 0 {
                return Ok(None);
            }
            l.0 -= 1;
            let used: u16 = self.mem.read_obj(GuestAddress(rings(0).2 + 2)).unwrap();
            l.1.push(used);
            Ok(Some(72.min(iovs.iter().map(|v| v.iov_len).sum())))
        }
        unsafe fn writev_raw(&self, _: &[libc::iovec]) -> io::Result<Option<usize>> {
            Ok(None)
        }
        fn set_offload(&self, _: u32) -> io::Result<()> {
            Ok(())
        }
        fn set_queue_enabled(&self, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "frames".into()
        }
    }

    /// Each received frame is published before the next is read (a NAPI driver polling the
    /// ring sees it at once), and the interrupt is decided per frame against used_event.
    #[test]
    fn each_frame_is_published_before_the_next_read() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let tap = Arc::new(Frames {
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            mem: mem.clone(),
            left: Mutex::new((5, Vec::new())),
        });
        struct Shared(Arc<Frames>);
        impl NetBackend for Shared {
            fn fd(&self) -> RawFd {
                self.0.fd()
            }
            unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
                // SAFETY: the caller's guarantee, passed on.
                unsafe { self.0.readv_raw(iovs) }
            }
            unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
                // SAFETY: as above.
                unsafe { self.0.writev_raw(iovs) }
            }
            fn set_offload(&self, f: u32) -> io::Result<()> {
                self.0.set_offload(f)
            }
            fn set_queue_enabled(&self, e: bool) -> io::Result<()> {
                self.0.set_queue_enabled(e)
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
        }
        let mut net =
            Net::with_backends(&NetConfig::new("rx0"), vec![Box::new(Shared(tap.clone()))])
                .unwrap();
        net.ack_features(feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX));
        let (desc, avail, _) = rings(0);
        for i in 0..SIZE {
            let d = desc + 16 * u64::from(i);
            mem.write_obj(0x4_0000 + 0x1000 * u64::from(i), GuestAddress(d))
                .unwrap();
            mem.write_obj(2048u32, GuestAddress(d + 8)).unwrap();
            mem.write_obj(2u16, GuestAddress(d + 12)).unwrap(); // WRITE
            mem.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
                .unwrap();
        }
        mem.write_obj(SIZE, GuestAddress(avail + 2)).unwrap();
        // used_event far ahead: no interrupt wanted (a NAPI poll in progress).
        mem.write_obj(0x8000u16, GuestAddress(avail + 4 + 2 * u64::from(SIZE)))
            .unwrap();
        let queues = (0..3)
            .map(|q| {
                let mut q = queue(q);
                q.set_event_idx(true);
                q
            })
            .collect();
        net.activate(mem.clone(), queues, Arc::new(NoIrq)).unwrap();
        net.process_queue(0).unwrap();
        let seen = tap.left.lock().unwrap().1.clone();
        assert_eq!(seen, [0, 1, 2, 3, 4], "used index at each read");
        let c = net.counters().pairs[0].rx;
        assert_eq!((c.frames, c.interrupts, c.interrupts_suppressed), (5, 0, 5));
    }
}
