//! Per-vCPU exit statistics: counts and latency histograms by exit reason and, for port and
//! MMIO exits, by address space, device and region (`pio serial0 THR/RBR`).
//!
//! The latency is the time the VMM spends on an exit: from KVM_RUN's return to the start of the
//! next KVM_RUN. Each vCPU thread records into its own `ExitStats` behind an uncontended mutex;
//! readers take a snapshot. Values are recorded in the vCPU loop's ticks (`trace::clock`: the
//! TSC where it is steady) and turned into nanoseconds with the snapshot's scale when read.
use std::collections::HashMap;
use std::fmt::Write;

use hdrhistogram::Histogram;

use super::clock::Epoch;
use crate::bus::{Bus, BusKind};
use crate::kvm::exit::{ExitKind, Target};

/// Latencies are recorded in ticks (nanoseconds, or TSC ticks: 60 s at 5 GHz), with 2
/// significant digits; u32 counts (4 billion exits per bucket, saturating) keep each histogram
/// at about 18 KiB.
fn new_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 300_000_000_000, 2).expect("constant histogram bounds are valid")
}

/// A count and a latency histogram.
#[derive(Clone)]
pub struct Series {
    pub count: u64,
    pub latency_ns: Histogram<u32>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            count: 0,
            latency_ns: new_histogram(),
        }
    }
}

impl Series {
    pub(crate) fn record(&mut self, ns: u64) {
        self.count += 1;
        self.latency_ns.saturating_record(ns.max(1));
    }

    pub(crate) fn add(&mut self, other: &Series) {
        self.count += other.count;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
    }
}

/// What one series counts: an exit reason and, for port and MMIO exits, the place.
type Key = (ExitKind, Option<Target>);

/// Whether two keys are the same place. Region names are `&'static str`s from the devices, so
/// the same region is nearly always the same pointer; comparing pointers first keeps the check
/// cheap, and equal text at another address still compares equal.
fn same_key(a: &Key, b: &Key) -> bool {
    match (a.1, b.1) {
        (Some(x), Some(y)) => {
            a.0 == b.0
                && x.bus == y.bus
                && match (x.hit, y.hit) {
                    (Some(h), Some(g)) => {
                        h.id == g.id && (std::ptr::eq(h.region, g.region) || h.region == g.region)
                    }
                    (None, None) => true,
                    _ => false,
                }
        }
        (None, None) => a.0 == b.0,
        _ => false,
    }
}

/// One vCPU's exit statistics: one series per (reason, place); per-reason totals are summed
/// when read. An exit costs one series update: the series of the previous exit is tried
/// first (a loop of exits to one register hits it every time), then a map lookup.
#[derive(Clone)]
pub struct ExitStats {
    series: Vec<(Key, Series)>,
    index: HashMap<Key, usize>,
    last: usize,
    /// Nanoseconds per recorded unit (1.0: recorded in nanoseconds).
    ns_per_unit: f64,
    /// For statistics recorded in ticks: where the ticks-to-nanoseconds scale is measured from.
    epoch: Option<Epoch>,
}

impl Default for ExitStats {
    fn default() -> Self {
        ExitStats {
            series: Vec::new(),
            index: HashMap::new(),
            last: 0,
            ns_per_unit: 1.0,
            epoch: None,
        }
    }
}

impl ExitStats {
    /// Empty statistics recorded in `epoch`'s ticks.
    pub fn ticked(epoch: Epoch) -> Self {
        ExitStats {
            epoch: Some(epoch),
            ..Default::default()
        }
    }

    /// A copy to read: values in nanoseconds via the scale measured now.
    pub fn snapshot(&self) -> Self {
        let mut s = self.clone();
        if let Some(e) = &self.epoch {
            s.ns_per_unit = e.ns_per_tick();
        }
        s
    }

    /// These statistics with values read as `ns_per_unit` nanoseconds each (a snapshot of
    /// statistics recorded in ticks).
    pub fn with_scale(mut self, ns_per_unit: f64) -> Self {
        self.ns_per_unit = ns_per_unit;
        self
    }

    pub fn ns_per_unit(&self) -> f64 {
        self.ns_per_unit
    }

    /// Records one exit that took `ns` units (nanoseconds unless scaled) to handle.
    pub fn record(&mut self, kind: ExitKind, target: Option<Target>, ns: u64) {
        let key = (kind, target);
        let i = match self.series.get(self.last) {
            Some((k, _)) if same_key(k, &key) => self.last,
            _ => match self.index.get(&key) {
                Some(&i) => i,
                None => {
                    self.series.push((key, Series::default()));
                    self.index.insert(key, self.series.len() - 1);
                    self.series.len() - 1
                }
            },
        };
        self.last = i;
        self.series[i].1.record(ns);
    }

    /// Exits of `kind`.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.series
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, s)| s.count)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.series.iter().map(|(_, s)| s.count).sum()
    }

    /// Per reason, all places together.
    pub fn by_kind(&self) -> HashMap<ExitKind, Series> {
        let mut out: HashMap<ExitKind, Series> = HashMap::new();
        for ((k, _), s) in &self.series {
            out.entry(*k).or_default().add(s);
        }
        out
    }

    /// Per reason and place, for port and MMIO exits.
    pub fn by_target(&self) -> impl Iterator<Item = (ExitKind, &Target, &Series)> {
        self.series
            .iter()
            .filter_map(|((k, t), s)| t.as_ref().map(|t| (*k, t, s)))
    }

    /// Adds another vCPU's statistics into these (recorded with the same clock; empty
    /// statistics take the other's scale).
    pub fn merge(&mut self, other: &ExitStats) {
        if self.series.is_empty() {
            self.ns_per_unit = other.ns_per_unit;
        }
        for (k, s) in &other.series {
            match self.index.get(k) {
                Some(&i) => self.series[i].1.add(s),
                None => {
                    self.series.push((*k, s.clone()));
                    self.index.insert(*k, self.series.len() - 1);
                }
            }
        }
    }
}

/// One row of the exit table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub reason: &'static str,
    /// `pio serial0 THR/RBR`, `mmio unowned`, or empty for the per-reason total.
    pub place: String,
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// (quantile, µs) points of the latency distribution, for plots.
    pub percentiles: Vec<(f64, f64)>,
}

/// The quantiles a row's distribution is sampled at.
pub const QUANTILES: [f64; 9] = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0];

fn row(reason: &'static str, place: String, s: &Series, ns_per_unit: f64) -> Row {
    let us = |v: u64| v as f64 * ns_per_unit / 1000.0;
    Row {
        reason,
        place,
        count: s.count,
        p50_us: us(s.latency_ns.value_at_quantile(0.5)),
        p99_us: us(s.latency_ns.value_at_quantile(0.99)),
        max_us: us(s.latency_ns.max()),
        percentiles: QUANTILES
            .iter()
            .map(|&q| (q, us(s.latency_ns.value_at_quantile(q))))
            .collect(),
    }
}

/// Names a target: `pio serial0 THR/RBR`.
pub fn place(target: &Target, pio: &Bus, mmio: &Bus) -> String {
    let bus = match target.bus {
        BusKind::Pio => pio,
        BusKind::Mmio => mmio,
    };
    match target.hit {
        Some(hit) if hit.region.is_empty() => {
            format!("{} {}", target.bus, bus.device_name(hit.id))
        }
        Some(hit) => format!("{} {} {}", target.bus, bus.device_name(hit.id), hit.region),
        None => format!("{} unowned", target.bus),
    }
}

/// The table rows: per reason, its total first and then each place, busiest first.
pub fn rows(stats: &ExitStats, pio: &Bus, mmio: &Bus) -> Vec<Row> {
    let mut out = Vec::new();
    let by_kind = stats.by_kind();
    let mut kinds: Vec<_> = by_kind.iter().collect();
    kinds.sort_by_key(|(k, s)| (std::cmp::Reverse(s.count), **k));
    for (kind, series) in kinds {
        out.push(row(kind.name(), String::new(), series, stats.ns_per_unit));
        let mut places: Vec<_> = stats
            .by_target()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, t, s)| (place(t, pio, mmio), s))
            .collect();
        places.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        for (p, s) in places {
            out.push(row(kind.name(), p, s, stats.ns_per_unit));
        }
    }
    out
}

/// The table a person reads at a glance.
pub fn format_table(title: &str, stats: &ExitStats, pio: &Bus, mmio: &Bus) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{title}: {} exits", stats.total());
    let _ = writeln!(
        s,
        "  {:<14} {:<34} {:>10} {:>9} {:>9} {:>9}",
        "reason", "where", "count", "p50 us", "p99 us", "max us"
    );
    for r in rows(stats, pio, mmio) {
        let label = if r.place.is_empty() {
            "(all)".to_string()
        } else {
            format!("  {}", r.place)
        };
        let _ = writeln!(
            s,
            "  {:<14} {:<34} {:>10} {:>9.2} {:>9.2} {:>9.2}",
            r.reason, label, r.count, r.p50_us, r.p99_us, r.max_us
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::Hit;
    use crate::devices::testdev::DebugExit;

    fn buses() -> (Bus, Bus) {
        let pio = Bus::new(BusKind::Pio);
        let mmio = Bus::new(BusKind::Mmio);
        pio.insert(0xf4, 4, "debug-exit", "", Arc::new(Mutex::new(DebugExit)))
            .unwrap();
        (pio, mmio)
    }

    #[test]
    fn records_by_reason_and_place() {
        let (pio, mmio) = buses();
        let mut st = ExitStats::default();
        let t = Target {
            bus: BusKind::Pio,
            hit: Some(Hit {
                id: 0,
                region: "exit",
            }),
        };
        for ns in [1000, 2000, 3000] {
            st.record(ExitKind::IoOut, Some(t), ns);
        }
        let unowned = Target {
            bus: BusKind::Mmio,
            hit: None,
        };
        st.record(ExitKind::MmioRead, Some(unowned), 500);
        st.record(ExitKind::Interrupted, None, 10);
        assert_eq!(st.count(ExitKind::IoOut), 3);
        assert_eq!(st.total(), 5);
        let rows = rows(&st, &pio, &mmio);
        assert_eq!(rows[0].reason, "io-out");
        assert_eq!(rows[0].place, "");
        assert_eq!(rows[0].count, 3);
        assert!((rows[0].p50_us - 2.0).abs() < 0.05, "{:?}", rows[0]);
        assert!((rows[0].max_us - 3.0).abs() < 0.05, "{:?}", rows[0]);
        assert_eq!(rows[1].place, "pio debug-exit exit");
        assert!(rows
            .iter()
            .any(|r| r.place == "mmio unowned" && r.count == 1));
        let table = format_table("vcpu0", &st, &pio, &mmio);
        assert!(table.starts_with("vcpu0: 5 exits\n"), "{table}");
        assert!(table.contains("pio debug-exit exit"), "{table}");
    }

    #[test]
    fn the_previous_series_is_reused_and_distinct_places_stay_apart() {
        let t = |id, region| Target {
            bus: BusKind::Pio,
            hit: Some(Hit { id, region }),
        };
        let mut st = ExitStats::default();
        // The same text at another address is the same place.
        let owned: &'static str = Box::leak(String::from("exit").into_boxed_str());
        for (kind, target) in [
            (ExitKind::IoOut, Some(t(0, "exit"))),
            (ExitKind::IoOut, Some(t(0, owned))),
            (ExitKind::IoOut, Some(t(0, "sink"))),
            (ExitKind::IoIn, Some(t(0, "sink"))),
            (ExitKind::IoOut, Some(t(1, "sink"))),
            (
                ExitKind::IoOut,
                Some(Target {
                    bus: BusKind::Mmio,
                    hit: Some(Hit {
                        id: 1,
                        region: "sink",
                    }),
                }),
            ),
            (
                ExitKind::IoOut,
                Some(Target {
                    bus: BusKind::Pio,
                    hit: None,
                }),
            ),
            (ExitKind::IoOut, None),
            (ExitKind::Hlt, None),
            (ExitKind::IoOut, Some(t(0, "exit"))),
        ] {
            st.record(kind, target, 10);
        }
        assert_eq!(st.total(), 10);
        assert_eq!(st.series.len(), 8);
        let exit = st
            .series
            .iter()
            .find(|(k, _)| k.1 == Some(t(0, "exit")))
            .unwrap();
        assert_eq!(exit.1.count, 3);
        assert_eq!(st.count(ExitKind::IoOut), 8);
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = ExitStats::default();
        let mut b = ExitStats::default();
        a.record(ExitKind::IoIn, None, 100);
        b.record(ExitKind::IoIn, None, 300);
        b.record(ExitKind::Hlt, None, 1);
        a.merge(&b);
        assert_eq!(a.count(ExitKind::IoIn), 2);
        assert_eq!(a.count(ExitKind::Hlt), 1);
        let by_kind = a.by_kind();
        let h = &by_kind[&ExitKind::IoIn].latency_ns;
        assert!(h.equivalent(h.max(), 300), "max {}", h.max());
        assert!(h.equivalent(h.min(), 100), "min {}", h.min());
    }

    #[test]
    fn ticks_become_microseconds_with_the_snapshot_scale() {
        let (pio, mmio) = buses();
        let mut st = ExitStats::default();
        st.record(ExitKind::Hlt, None, 2600);
        let st = st.with_scale(1.0 / 2.6);
        let r = &rows(&st, &pio, &mmio)[0];
        assert!((r.p50_us - 1.0).abs() < 0.02, "{r:?}");
        let mut all = ExitStats::default();
        all.merge(&st);
        assert_eq!(all.ns_per_unit(), st.ns_per_unit());
    }
}
