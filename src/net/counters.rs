//! The device's counters: per queue, frames and bytes, every drop by its cause, TAP `EAGAIN`,
//! interrupts sent and suppressed, kicks; and the control queue's. Owned by the queue pair's
//! state (updated under its lock); read as a [`NetCounters`] snapshot, which serializes for
//! the API and flattens to `("tx0.drops.bad_header", 3)` pairs.
use serde::Serialize;

/// Why a transmitted frame did not reach the TAP (its chain went back with length 0).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TxDrops {
    /// Loops, over-long chains, buffers or indirect tables outside RAM, write-only descriptors.
    pub bad_chain: u64,
    /// Head index past the queue size (cannot even be returned).
    pub bad_head: u64,
    /// Unknown flags or GSO type, GSO not negotiated or with size 0, offsets past the frame.
    pub bad_header: u64,
    /// More than the vnet header plus `MAX_FRAME_LEN` bytes.
    pub oversize: u64,
    /// Shorter than the vnet header plus an Ethernet header.
    pub runt: u64,
    /// The TAP is down (`EIO`).
    pub tap_down: u64,
    /// The TAP is gone or this queue is detached (`EBADFD`).
    pub tap_gone: u64,
    /// Any other write error.
    pub tap_error: u64,
}

/// Why a receive chain went back empty, or a frame read from the TAP was not delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RxDrops {
    /// Chains with read-only descriptors, loops, buffers outside RAM (returned with length 0).
    pub bad_chain: u64,
    /// Head index past the queue size.
    pub bad_head: u64,
    /// Chains smaller than one frame needs without MRG_RXBUF (returned with length 0).
    pub small_buffer: u64,
    /// Frames longer than the buffers offered for them (dropped; the buffers are reused).
    pub truncated: u64,
    /// Frames shorter than a vnet and an Ethernet header.
    pub runt: u64,
    /// Read errors other than `EAGAIN` (`EBADFD` when the TAP is gone).
    pub tap_error: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TxCounters {
    pub frames: u64,
    pub bytes: u64,
    /// Notifications received (ioeventfd counts, exits), plus one per activation.
    pub kicks: u64,
    /// Times the queue's kick woke its handler (several kicks may coalesce into one).
    pub wakeups: u64,
    /// Interrupts raised after a batch.
    pub interrupts: u64,
    /// Batches the driver did not want an interrupt for (EVENT_IDX or NO_INTERRUPT).
    pub interrupts_suppressed: u64,
    pub interrupt_errors: u64,
    /// writev said `EAGAIN`: the queue waits for the TAP to become writable.
    pub tap_eagain: u64,
    /// Bytes copied by the device (the 12-byte header it checks; frames are not copied).
    pub copied_bytes: u64,
    /// Passes over the available ring (a wakeup drains it in one or more passes).
    pub passes: u64,
    /// Stores of the used index (one per chain completed).
    pub publications: u64,
    /// Interrupts held behind a receive interrupt (`txhold`), then found no longer wanted
    /// (the driver took the completions with the received frames), or sent when the hold
    /// expired.
    pub irq_held: u64,
    pub irq_held_avoided: u64,
    pub irq_held_expired: u64,
    pub drops: TxDrops,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RxCounters {
    pub frames: u64,
    pub bytes: u64,
    pub kicks: u64,
    pub wakeups: u64,
    pub interrupts: u64,
    pub interrupts_suppressed: u64,
    pub interrupt_errors: u64,
    /// Reads that found nothing waiting.
    pub tap_eagain: u64,
    /// Times the driver had no buffers for the next frame: the TAP is not polled until it
    /// adds some (frames wait in the TAP's queue meanwhile).
    pub no_buffers: u64,
    /// Frames spread over more than one chain (MRG_RXBUF).
    pub merged: u64,
    /// Chains used.
    pub buffers: u64,
    /// Bytes copied by the device (the 2-byte `num_buffers`; frames are not copied).
    pub copied_bytes: u64,
    pub drops: RxDrops,
}

/// `vhost=on`: the pair's vhost-net instance. While it runs, the pair's frames, kicks and
/// interrupts go through the kernel and none of the counters above move.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VhostCounters {
    /// 1 while vhost-net serves the pair.
    pub running: u64,
    pub starts: u64,
    pub stops: u64,
    /// The rings' next available index, read back (VHOST_GET_VRING_BASE) at the last stop.
    pub rx_base: u64,
    pub tx_base: u64,
}

/// One queue pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PairCounters {
    pub rx: RxCounters,
    pub tx: TxCounters,
    /// Guest memory or ring errors while processing (the queue is then left alone).
    pub queue_errors: u64,
    /// Times the TAP fd woke the pair (readable, writable after `EAGAIN`, error).
    pub tap_wakeups: u64,
    pub vhost: VhostCounters,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CtrlCounters {
    pub kicks: u64,
    /// Commands answered VIRTIO_NET_OK.
    pub ok: u64,
    /// Commands answered VIRTIO_NET_ERR (unknown, not negotiated, bad value, TAP refused).
    pub err: u64,
    /// Chains too malformed to answer (returned with length 0).
    pub bad_chain: u64,
    pub interrupts: u64,
    pub interrupts_suppressed: u64,
}

/// Everything, for the API.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct NetCounters {
    pub pairs: Vec<PairCounters>,
    pub ctrl: CtrlCounters,
    /// Times the TAP was found deleted (`EPOLLERR` on an attached queue).
    pub tap_gone: u64,
    /// TUNSETOFFLOAD / TUNSETQUEUE failures.
    pub tap_config_errors: u64,
    /// Kicks for queues the negotiated features do not use.
    pub stray_kicks: u64,
}

impl NetCounters {
    /// Totals over the pairs.
    pub fn total(&self) -> PairCounters {
        let mut t = PairCounters::default();
        for p in &self.pairs {
            add_rx(&mut t.rx, &p.rx);
            add_tx(&mut t.tx, &p.tx);
            t.queue_errors += p.queue_errors;
            t.tap_wakeups += p.tap_wakeups;
        }
        t
    }

    /// `("rx0.frames", n)`, `("tx1.drops.bad_header", n)`, `("ctrl.ok", n)`, ...
    pub fn list(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (i, p) in self.pairs.iter().enumerate() {
            for (k, v) in p.rx.list() {
                out.push((format!("rx{i}.{k}"), v));
            }
            for (k, v) in p.tx.list() {
                out.push((format!("tx{i}.{k}"), v));
            }
            out.push((format!("pair{i}.queue_errors"), p.queue_errors));
            out.push((format!("pair{i}.tap_wakeups"), p.tap_wakeups));
            let v = &p.vhost;
            for (k, n) in [
                ("running", v.running),
                ("starts", v.starts),
                ("stops", v.stops),
                ("rx_base", v.rx_base),
                ("tx_base", v.tx_base),
            ] {
                out.push((format!("pair{i}.vhost.{k}"), n));
            }
        }
        let c = &self.ctrl;
        for (k, v) in [
            ("kicks", c.kicks),
            ("ok", c.ok),
            ("err", c.err),
            ("bad_chain", c.bad_chain),
            ("interrupts", c.interrupts),
            ("interrupts_suppressed", c.interrupts_suppressed),
        ] {
            out.push((format!("ctrl.{k}"), v));
        }
        out.push(("tap_gone".into(), self.tap_gone));
        out.push(("tap_config_errors".into(), self.tap_config_errors));
        out.push(("stray_kicks".into(), self.stray_kicks));
        out
    }
}

fn add_rx(t: &mut RxCounters, p: &RxCounters) {
    let d = &mut t.drops;
    let pd = &p.drops;
    t.frames += p.frames;
    t.bytes += p.bytes;
    t.kicks += p.kicks;
    t.wakeups += p.wakeups;
    t.interrupts += p.interrupts;
    t.interrupts_suppressed += p.interrupts_suppressed;
    t.interrupt_errors += p.interrupt_errors;
    t.tap_eagain += p.tap_eagain;
    t.no_buffers += p.no_buffers;
    t.merged += p.merged;
    t.buffers += p.buffers;
    t.copied_bytes += p.copied_bytes;
    d.bad_chain += pd.bad_chain;
    d.bad_head += pd.bad_head;
    d.small_buffer += pd.small_buffer;
    d.truncated += pd.truncated;
    d.runt += pd.runt;
    d.tap_error += pd.tap_error;
}

fn add_tx(t: &mut TxCounters, p: &TxCounters) {
    let d = &mut t.drops;
    let pd = &p.drops;
    t.frames += p.frames;
    t.bytes += p.bytes;
    t.kicks += p.kicks;
    t.wakeups += p.wakeups;
    t.interrupts += p.interrupts;
    t.interrupts_suppressed += p.interrupts_suppressed;
    t.interrupt_errors += p.interrupt_errors;
    t.tap_eagain += p.tap_eagain;
    t.copied_bytes += p.copied_bytes;
    t.passes += p.passes;
    t.publications += p.publications;
    t.irq_held += p.irq_held;
    t.irq_held_avoided += p.irq_held_avoided;
    t.irq_held_expired += p.irq_held_expired;
    d.bad_chain += pd.bad_chain;
    d.bad_head += pd.bad_head;
    d.bad_header += pd.bad_header;
    d.oversize += pd.oversize;
    d.runt += pd.runt;
    d.tap_down += pd.tap_down;
    d.tap_gone += pd.tap_gone;
    d.tap_error += pd.tap_error;
}

impl RxDrops {
    pub fn total(&self) -> u64 {
        self.bad_chain
            + self.bad_head
            + self.small_buffer
            + self.truncated
            + self.runt
            + self.tap_error
    }
}

impl TxDrops {
    pub fn total(&self) -> u64 {
        self.bad_chain
            + self.bad_head
            + self.bad_header
            + self.oversize
            + self.runt
            + self.tap_down
            + self.tap_gone
            + self.tap_error
    }
}

impl RxCounters {
    pub fn list(&self) -> Vec<(&'static str, u64)> {
        let d = &self.drops;
        vec![
            ("frames", self.frames),
            ("bytes", self.bytes),
            ("kicks", self.kicks),
            ("wakeups", self.wakeups),
            ("interrupts", self.interrupts),
            ("interrupts_suppressed", self.interrupts_suppressed),
            ("interrupt_errors", self.interrupt_errors),
            ("tap_eagain", self.tap_eagain),
            ("no_buffers", self.no_buffers),
            ("merged", self.merged),
            ("buffers", self.buffers),
            ("copied_bytes", self.copied_bytes),
            ("drops.bad_chain", d.bad_chain),
            ("drops.bad_head", d.bad_head),
            ("drops.small_buffer", d.small_buffer),
            ("drops.truncated", d.truncated),
            ("drops.runt", d.runt),
            ("drops.tap_error", d.tap_error),
        ]
    }
}

impl TxCounters {
    pub fn list(&self) -> Vec<(&'static str, u64)> {
        let d = &self.drops;
        vec![
            ("frames", self.frames),
            ("bytes", self.bytes),
            ("kicks", self.kicks),
            ("wakeups", self.wakeups),
            ("interrupts", self.interrupts),
            ("interrupts_suppressed", self.interrupts_suppressed),
            ("interrupt_errors", self.interrupt_errors),
            ("tap_eagain", self.tap_eagain),
            ("copied_bytes", self.copied_bytes),
            ("passes", self.passes),
            ("publications", self.publications),
            ("irq_held", self.irq_held),
            ("irq_held_avoided", self.irq_held_avoided),
            ("irq_held_expired", self.irq_held_expired),
            ("drops.bad_chain", d.bad_chain),
            ("drops.bad_head", d.bad_head),
            ("drops.bad_header", d.bad_header),
            ("drops.oversize", d.oversize),
            ("drops.runt", d.runt),
            ("drops.tap_down", d.tap_down),
            ("drops.tap_gone", d.tap_gone),
            ("drops.tap_error", d.tap_error),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_total() {
        let mut c = NetCounters {
            pairs: vec![PairCounters::default(); 2],
            ..Default::default()
        };
        c.pairs[0].tx.frames = 3;
        c.pairs[1].tx.frames = 4;
        c.pairs[1].tx.drops.bad_header = 2;
        c.pairs[0].rx.drops.truncated = 1;
        c.ctrl.ok = 1;
        let l = c.list();
        assert!(l.contains(&("tx1.drops.bad_header".to_string(), 2)));
        assert!(l.contains(&("rx0.drops.truncated".to_string(), 1)));
        assert!(l.contains(&("ctrl.ok".to_string(), 1)));
        let names: std::collections::HashSet<_> = l.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names.len(), l.len(), "names are unique");
        let t = c.total();
        assert_eq!(
            (t.tx.frames, t.tx.drops.total(), t.rx.drops.total()),
            (7, 2, 1)
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["pairs"][1]["tx"]["drops"]["bad_header"], 2);
    }
}
