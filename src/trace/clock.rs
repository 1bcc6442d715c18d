//! A cheap timestamp for the exit statistics.
//!
//! Every exit takes two timestamps (KVM_RUN returned, handling done). `Instant::now()` costs
//! about 40 ns on the development host (the vDSO's ordered TSC read, its seqlock and the
//! conversion to nanoseconds), twice per 8 µs exit: 1% of the exit path. The statistics only
//! need differences, so they record raw ticks of the CPU's invariant counter (x86_64: the TSC,
//! about 10 ns to read) and convert to nanoseconds when they are read, with a scale measured
//! against `Instant` between the VM's start ([`Epoch`]) and the read: no calibration wait.
//! Where no such counter is known the ticks are CLOCK_MONOTONIC nanoseconds (scale 1).
use std::time::Instant;

/// The counter's value now.
#[inline]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        monotonic_ns()
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of `Instant` and of perf's `use_clockid`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether the TSC ticks at a constant rate across frequency changes and idle states (what the
/// ticks-to-nanoseconds scale assumes); elsewhere the statistics use CLOCK_MONOTONIC.
pub fn ticks_are_steady() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return true;
    }
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines().find(|l| l.starts_with("flags")).is_some_and(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.contains(&"constant_tsc") && f.contains(&"nonstop_tsc")
        })
    })
}

/// A tick source: the TSC where it is steady, CLOCK_MONOTONIC otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickSource {
    Tsc,
    Monotonic,
}

impl TickSource {
    /// The source this host allows.
    pub fn detect() -> Self {
        if cfg!(target_arch = "x86_64") && ticks_are_steady() {
            TickSource::Tsc
        } else {
            TickSource::Monotonic
        }
    }

    #[inline]
    pub fn now(self) -> u64 {
        match self {
            TickSource::Tsc => ticks(),
            TickSource::Monotonic => monotonic_ns(),
        }
    }
}

/// A tick count and an `Instant` taken together: the scale between them is measured from
/// here to whenever it is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    source: TickSource,
    ticks: u64,
    at: Instant,
}

impl Epoch {
    pub fn new(source: TickSource) -> Self {
        Epoch {
            source,
            ticks: source.now(),
            at: Instant::now(),
        }
    }

    pub fn source(&self) -> TickSource {
        self.source
    }

    /// Nanoseconds per tick, measured since the epoch (1.0 for CLOCK_MONOTONIC). Asked less
    /// than a millisecond after the epoch, it first waits out that millisecond: a shorter
    /// baseline would be too coarse.
    pub fn ns_per_tick(&self) -> f64 {
        if self.source == TickSource::Monotonic {
            return 1.0;
        }
        let min = std::time::Duration::from_millis(1);
        if let Some(left) = min.checked_sub(self.at.elapsed()) {
            std::thread::sleep(left);
        }
        let ns = self.at.elapsed().as_nanos() as f64;
        let ticks = self.source.now().wrapping_sub(self.ticks) as f64;
        if ticks <= 0.0 {
            1.0
        } else {
            ns / ticks
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_turns_ticks_into_nanoseconds() {
        let e = Epoch::new(TickSource::detect());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let s = e.ns_per_tick();
        // Any plausible counter: 10 MHz to 10 GHz.
        assert!((0.1..=100.0).contains(&s), "{s}");
        // A 5 ms sleep measured in ticks comes back as about 5 ms.
        let t0 = e.source().now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let ns = (e.source().now() - t0) as f64 * e.ns_per_tick();
        assert!((4.5e6..60e6).contains(&ns), "{ns}");
        assert_eq!(Epoch::new(TickSource::Monotonic).ns_per_tick(), 1.0);
        let m = monotonic_ns();
        assert!(monotonic_ns() >= m);
    }
}
