//! A disk's counters, per queue: requests by type, bytes read and written, refusals by cause,
//! I/O errors, requests in flight (now and at most), interrupts sent and suppressed, kicks, and
//! the latency from the kick that brought a request to its completion in the used ring (p50,
//! p99, max). Owned by the queue's state (updated under its lock), read as a snapshot that
//! flattens to `("q0.read", 12)` pairs for `/stats` and `ctl stats`.
use hdrhistogram::Histogram;

use super::request::{Kind, Refusal};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    /// Requests by [`Kind`] (in `Kind::ALL` order).
    pub requests: [u64; 7],
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Requests refused by cause (in `Refusal::ALL` order): they got IOERR or UNSUPP.
    pub refused: [u64; 7],
    /// Chains that could not even be walked (loops, outside RAM, wrong order): returned with
    /// length 0 and no status.
    pub bad_chains: u64,
    /// Head index past the queue size.
    pub bad_heads: u64,
    /// Operations the image refused (IOERR to the driver), and short reads or writes.
    pub io_errors: u64,
    /// Completions of requests from before a device reset (dropped).
    pub stale: u64,
    /// O_DIRECT requests whose buffers were not aligned: copied through an aligned buffer.
    pub bounced: u64,
    pub inflight: u64,
    pub inflight_max: u64,
    /// Notifications received and the worker wakeups that served them.
    pub kicks: u64,
    pub wakeups: u64,
    /// Times the queue stopped taking requests because a queue's worth was in flight.
    pub throttled: u64,
    pub interrupts: u64,
    pub interrupts_suppressed: u64,
    pub interrupt_errors: u64,
    /// Latency percentiles from kick to completion, microseconds.
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
}

impl QueueCounters {
    pub fn count(&mut self, kind: Kind) {
        if let Some(i) = Kind::ALL.iter().position(|&k| k == kind) {
            self.requests[i] += 1;
        }
    }

    pub fn refuse(&mut self, why: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|&r| r == why) {
            self.refused[i] += 1;
        }
    }

    pub fn of(&self, kind: Kind) -> u64 {
        Kind::ALL
            .iter()
            .position(|&k| k == kind)
            .map_or(0, |i| self.requests[i])
    }

    pub fn refused_for(&self, why: Refusal) -> u64 {
        Refusal::ALL
            .iter()
            .position(|&r| r == why)
            .map_or(0, |i| self.refused[i])
    }

    /// Every request that came in.
    pub fn total(&self) -> u64 {
        self.requests.iter().sum()
    }

    /// Takes the latency percentiles from `h` (nanoseconds).
    pub fn set_latency(&mut self, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        self.latency_p50_us = h.value_at_quantile(0.5) / 1000;
        self.latency_p99_us = h.value_at_quantile(0.99) / 1000;
        self.latency_max_us = h.max() / 1000;
    }

    /// Named values, `q{index}.` first.
    pub fn list(&self, index: usize) -> Vec<(String, u64)> {
        let p = |k: &str| format!("q{index}.{k}");
        let mut v: Vec<(String, u64)> = Kind::ALL
            .iter()
            .zip(self.requests)
            .map(|(k, n)| (p(k.name()), n))
            .collect();
        v.extend(
            Refusal::ALL
                .iter()
                .zip(self.refused)
                .map(|(r, n)| (p(&format!("refused.{}", r.name())), n)),
        );
        for (k, n) in [
            ("read_bytes", self.read_bytes),
            ("written_bytes", self.written_bytes),
            ("bad_chains", self.bad_chains),
            ("bad_heads", self.bad_heads),
            ("io_errors", self.io_errors),
            ("stale", self.stale),
            ("bounced", self.bounced),
            ("inflight", self.inflight),
            ("inflight_max", self.inflight_max),
            ("kicks", self.kicks),
            ("wakeups", self.wakeups),
            ("throttled", self.throttled),
            ("interrupts", self.interrupts),
            ("interrupts_suppressed", self.interrupts_suppressed),
            ("interrupt_errors", self.interrupt_errors),
            ("latency_p50_us", self.latency_p50_us),
            ("latency_p99_us", self.latency_p99_us),
            ("latency_max_us", self.latency_max_us),
        ] {
            v.push((p(k), n));
        }
        v
    }
}

/// Kick-to-completion latencies of one queue, in nanoseconds (1 µs to 100 s, 2 digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1000, 100_000_000_000, 2).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flatten_by_queue() {
        let mut c = QueueCounters::default();
        c.count(Kind::In);
        c.count(Kind::In);
        c.count(Kind::Other);
        c.refuse(Refusal::OutOfRange);
        let mut h = latency_histogram();
        for us in [10u64, 20, 30, 1000] {
            h.record(us * 1000).unwrap();
        }
        c.set_latency(&h);
        assert_eq!((c.of(Kind::In), c.total()), (2, 3));
        assert_eq!(c.refused_for(Refusal::OutOfRange), 1);
        let l = c.list(3);
        let get = |k: &str| l.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("q3.read"), Some(2));
        assert_eq!(get("q3.other"), Some(1));
        assert_eq!(get("q3.refused.out_of_range"), Some(1));
        assert_eq!(get("q3.latency_p50_us"), Some(20));
        assert!(get("q3.latency_max_us").unwrap() >= 999);
    }
}
