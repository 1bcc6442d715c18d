//! A Perfetto / Chrome trace-event timeline (`--trace PATH`): per-thread spans (exit handling,
//! ioeventfd wakeups, queue work, interrupt injection) linked by flow events, so that one
//! packet's path from the guest's kick to its completion interrupt reads as one chain.
//!
//! Recording is off unless a `Timeline` exists; each event takes one short lock. The buffer is
//! bounded: events past [`Timeline::capacity`] are counted, not kept.
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Instant;

use serde_json::{json, Value};

/// How a flow event joins the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The first step of a chain (e.g. the guest's kick as seen by the VMM).
    Start,
    /// A step in between.
    Step,
    /// The last step (e.g. the completion interrupt).
    End,
}

impl Flow {
    fn phase(self) -> &'static str {
        match self {
            Flow::Start => "s",
            Flow::Step => "t",
            Flow::End => "f",
        }
    }
}

#[derive(Debug, Clone)]
enum Event {
    /// A point in time on a track (`ph: i`).
    Instant {
        tid: u32,
        name: String,
        cat: &'static str,
        at_ns: u64,
        args: Value,
    },
    Span {
        tid: u32,
        name: String,
        cat: &'static str,
        start_ns: u64,
        dur_ns: u64,
        args: Value,
    },
    Flow {
        tid: u32,
        id: u64,
        name: String,
        flow: Flow,
        at_ns: u64,
    },
}

struct Inner {
    events: Vec<Event>,
    dropped: u64,
    threads: HashMap<ThreadId, u32>,
    names: Vec<String>,
    /// Track by the OS thread id of the thread that recorded on it.
    os_tids: HashMap<u32, u32>,
    /// Added to `otherData` (the kernel half's summary).
    other: serde_json::Map<String, Value>,
}

/// One step of a flow, as [`Timeline::flow_steps`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowStep {
    /// Position in the event list (for [`Timeline::set_flow`]).
    pub index: usize,
    pub id: u64,
    pub track: u32,
    pub name: String,
    pub flow: Flow,
    /// Nanoseconds since the timeline's origin.
    pub at_ns: u64,
}

/// The event buffer.
pub struct Timeline {
    origin: Instant,
    /// CLOCK_MONOTONIC at `origin` (the clock of `Instant` and of perf's timestamps), in ns.
    origin_mono_ns: u64,
    next_flow: AtomicU64,
    capacity: usize,
    inner: Mutex<Inner>,
}

/// The origin on both clocks: an `Instant` bracketed by two CLOCK_MONOTONIC readings, taken
/// with the middle of the bracket as its monotonic time. A thread preempted inside the bracket
/// (an emulated L1's vCPU under load: 200 µs) would shift every kernel event against
/// trapvisor's own by half the gap, which the flow joining cannot absorb: of several tries
/// the narrowest bracket is kept.
fn origin_on_both_clocks() -> (Instant, u64) {
    let mut best: Option<(u64, Instant, u64)> = None;
    for _ in 0..16 {
        let before = crate::trace::clock::monotonic_ns();
        let origin = Instant::now();
        let after = crate::trace::clock::monotonic_ns();
        let gap = after.saturating_sub(before);
        if best.is_none_or(|(g, _, _)| gap < g) {
            best = Some((gap, origin, before + gap / 2));
        }
        if gap < 1_000 {
            break;
        }
    }
    let (_, origin, mono) = best.expect("at least one try");
    (origin, mono)
}

impl Timeline {
    pub fn new(capacity: usize) -> Self {
        let (origin, origin_mono_ns) = origin_on_both_clocks();
        Timeline {
            origin,
            origin_mono_ns,
            next_flow: AtomicU64::new(1),
            capacity,
            inner: Mutex::new(Inner {
                events: Vec::new(),
                dropped: 0,
                threads: HashMap::new(),
                names: Vec::new(),
                os_tids: HashMap::new(),
                other: serde_json::Map::new(),
            }),
        }
    }

    /// A new flow id (never 0).
    pub fn new_flow(&self) -> u64 {
        self.next_flow.fetch_add(1, Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }

    fn push(&self, make: impl FnOnce(u32) -> Event) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.events.len() >= self.capacity {
            inner.dropped += 1;
            return;
        }
        let current = std::thread::current();
        let tid = match inner.threads.get(&current.id()) {
            Some(&tid) => tid,
            None => {
                let tid = inner.names.len() as u32 + 1;
                inner.threads.insert(current.id(), tid);
                let name = current.name().unwrap_or("thread").to_string();
                inner.names.push(name);
                let os_tid = crate::sys::gettid();
                inner.os_tids.insert(os_tid, tid);
                tid
            }
        };
        let event = make(tid);
        inner.events.push(event);
    }

    /// A span on the calling thread from `start` to `end`.
    pub fn span(&self, name: &str, cat: &'static str, start: Instant, end: Instant, args: Value) {
        let (start_ns, end_ns) = (self.ns(start), self.ns(end));
        self.push(|tid| Event::Span {
            tid,
            name: name.to_string(),
            cat,
            start_ns,
            dur_ns: end_ns.saturating_sub(start_ns),
            args,
        });
    }

    /// A flow event at `at`, bound to the calling thread's span enclosing that time.
    pub fn flow(&self, id: u64, name: &str, flow: Flow, at: Instant) {
        let at_ns = self.ns(at);
        self.push(|tid| Event::Flow {
            tid,
            id,
            name: name.to_string(),
            flow,
            at_ns,
        });
    }

    /// Whether an event of flow `id` was kept at or after position `mark` (a `len().0` taken
    /// earlier): a flow is started only once it has a step, so idle wakeups leave no chain.
    pub fn flow_since(&self, mark: usize, id: u64) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.events.get(mark..).is_some_and(|tail| {
            tail.iter()
                .any(|e| matches!(e, Event::Flow { id: i, .. } if *i == id))
        })
    }

    /// Nanoseconds since the origin of a CLOCK_MONOTONIC time (perf's timestamps).
    pub fn from_monotonic(&self, mono_ns: u64) -> u64 {
        mono_ns.saturating_sub(self.origin_mono_ns)
    }

    /// The track of OS thread `os_tid`: the one its own spans are on, else a new track
    /// named `name`.
    pub fn track(&self, os_tid: u32, name: &str) -> u32 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&t) = inner.os_tids.get(&os_tid) {
            return t;
        }
        inner.names.push(name.to_string());
        let t = inner.names.len() as u32;
        inner.os_tids.insert(os_tid, t);
        t
    }

    /// Adds events made elsewhere (the kernel half), in origin-relative ns on given tracks;
    /// not bounded by the capacity (their producer bounds them).
    pub fn add_span(
        &self,
        track: u32,
        name: String,
        cat: &'static str,
        start_ns: u64,
        end_ns: u64,
        args: Value,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.events.push(Event::Span {
            tid: track,
            name,
            cat,
            start_ns,
            dur_ns: end_ns.saturating_sub(start_ns),
            args,
        });
    }

    /// As `add_span`, a point in time.
    pub fn add_instant(
        &self,
        track: u32,
        name: String,
        cat: &'static str,
        at_ns: u64,
        args: Value,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.events.push(Event::Instant {
            tid: track,
            name,
            cat,
            at_ns,
            args,
        });
    }

    /// As `add_span`, a flow step.
    pub fn add_flow(&self, track: u32, id: u64, name: &str, flow: Flow, at_ns: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.events.push(Event::Flow {
            tid: track,
            id,
            name: name.to_string(),
            flow,
            at_ns,
        });
    }

    /// Every flow step recorded, in recording order.
    pub fn flow_steps(&self) -> Vec<FlowStep> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .events
            .iter()
            .enumerate()
            .filter_map(|(index, e)| match e {
                Event::Flow {
                    tid,
                    id,
                    name,
                    flow,
                    at_ns,
                } => Some(FlowStep {
                    index,
                    id: *id,
                    track: *tid,
                    name: name.clone(),
                    flow: *flow,
                    at_ns: *at_ns,
                }),
                _ => None,
            })
            .collect()
    }

    /// Changes how the flow step at `index` joins its chain (a start that gets a step before
    /// it, an end that gets one after it).
    pub fn set_flow(&self, index: usize, flow: Flow) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Event::Flow { flow: f, .. }) = inner.events.get_mut(index) {
            *f = flow;
        }
    }

    /// The arguments of the innermost span of category `cat` on `track` that encloses `at_ns`.
    pub fn span_args_at(&self, track: u32, cat: &str, at_ns: u64) -> Option<Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Span {
                    tid,
                    cat: c,
                    start_ns,
                    dur_ns,
                    args,
                    ..
                } if *tid == track
                    && *c == cat
                    && *start_ns <= at_ns
                    && at_ns <= start_ns + dur_ns =>
                {
                    Some((*dur_ns, args))
                }
                _ => None,
            })
            .min_by_key(|(d, _)| *d)
            .map(|(_, a)| a.clone())
    }

    /// Sets `otherData[key]`.
    pub fn set_other(&self, key: &str, value: Value) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.other.insert(key.to_string(), value);
    }

    /// Events kept and events dropped for lack of room.
    pub fn len(&self) -> (usize, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.events.len(), inner.dropped)
    }

    pub fn is_empty(&self) -> bool {
        self.len().0 == 0
    }

    /// The trace as Chrome trace-event JSON (Perfetto and chrome://tracing open it).
    pub fn to_json(&self) -> Value {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut events: Vec<Value> = inner
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": i + 1,
                       "args": {"name": name}})
            })
            .collect();
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": 1, "tid": 0,
                           "args": {"name": "trapvisor"}}),
        );
        for e in &inner.events {
            events.push(match e {
                Event::Instant {
                    tid,
                    name,
                    cat,
                    at_ns,
                    args,
                } => json!({"ph": "i", "s": "t", "pid": 1, "tid": tid, "name": name, "cat": cat,
                            "ts": us(*at_ns), "args": args}),
                Event::Span {
                    tid,
                    name,
                    cat,
                    start_ns,
                    dur_ns,
                    args,
                } => json!({"ph": "X", "pid": 1, "tid": tid, "name": name, "cat": cat,
                            "ts": us(*start_ns), "dur": us(*dur_ns), "args": args}),
                Event::Flow {
                    tid,
                    id,
                    name,
                    flow,
                    at_ns,
                } => json!({"ph": flow.phase(), "pid": 1, "tid": tid, "name": name,
                            "cat": "flow", "id": id, "ts": us(*at_ns), "bp": "e"}),
            });
        }
        let mut other = inner.other.clone();
        other.insert("dropped_events".into(), json!(inner.dropped));
        json!({
            "traceEvents": events,
            "displayTimeUnit": "ns",
            "otherData": other,
        })
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut f = io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer(&mut f, &self.to_json())?;
        f.flush()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("cannot read {0}")]
    Read(#[from] io::Error),
    #[error("not a trace-event JSON file: {0}")]
    Parse(String),
}

/// One step of a chain, for the summary.
struct Step {
    ts: f64,
    thread: String,
    name: String,
    span: Option<(String, Value)>,
}

/// Describes, in words, the last `last` chains (flows) of a trace: which handler ran on which
/// thread, what woke it, and what completed it, with times relative to the chain's start.
pub fn summary(json: &Value, last: usize) -> Result<String, SummaryError> {
    let events = json["traceEvents"]
        .as_array()
        .ok_or_else(|| SummaryError::Parse("no traceEvents array".into()))?;
    let mut threads: HashMap<u64, String> = HashMap::new();
    let mut spans: HashMap<u64, Vec<(f64, f64, String, Value)>> = HashMap::new();
    let mut flows: HashMap<u64, Vec<(f64, u64, String)>> = HashMap::new();
    for e in events {
        let tid = e["tid"].as_u64().unwrap_or(0);
        match e["ph"].as_str() {
            Some("M") if e["name"] == "thread_name" => {
                threads.insert(tid, e["args"]["name"].as_str().unwrap_or("").to_string());
            }
            Some("X") => spans.entry(tid).or_default().push((
                e["ts"].as_f64().unwrap_or(0.0),
                e["dur"].as_f64().unwrap_or(0.0),
                e["name"].as_str().unwrap_or("").to_string(),
                e["args"].clone(),
            )),
            Some("s" | "t" | "f") => {
                let id = e["id"]
                    .as_u64()
                    .ok_or_else(|| SummaryError::Parse("flow event without a numeric id".into()))?;
                flows.entry(id).or_default().push((
                    e["ts"].as_f64().unwrap_or(0.0),
                    tid,
                    e["name"].as_str().unwrap_or("").to_string(),
                ));
            }
            _ => {}
        }
    }
    let mut chains: Vec<(u64, Vec<Step>)> = flows
        .into_iter()
        .map(|(id, mut steps)| {
            steps.sort_by(|a, b| a.0.total_cmp(&b.0));
            let steps = steps
                .into_iter()
                .map(|(ts, tid, name)| {
                    // The span this flow event binds to: the innermost one enclosing it.
                    let span = spans
                        .get(&tid)
                        .into_iter()
                        .flatten()
                        .filter(|(s, d, _, _)| *s <= ts && ts <= s + d)
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                        .map(|(_, _, n, a)| (n.clone(), a.clone()));
                    Step {
                        ts,
                        thread: threads
                            .get(&tid)
                            .cloned()
                            .unwrap_or_else(|| format!("tid {tid}")),
                        name,
                        span,
                    }
                })
                .collect();
            (id, steps)
        })
        .collect();
    chains.sort_by(|a, b| {
        let first = |c: &[Step]| c.first().map_or(0.0, |s| s.ts);
        first(&a.1).total_cmp(&first(&b.1))
    });
    let skip = chains.len().saturating_sub(last);
    let mut out = crate::trace::kernel::timeline::summary_text(&json["otherData"]);
    if chains.is_empty() {
        out.push_str("no flows in this trace (nothing was kicked and completed while tracing)\n");
    }
    for (id, steps) in chains.into_iter().skip(skip) {
        let t0 = steps.first().map_or(0.0, |s| s.ts);
        let total = steps.last().map_or(0.0, |s| s.ts) - t0;
        out.push_str(&format!(
            "chain {id}: {} steps, {total:.1} us\n",
            steps.len()
        ));
        for s in &steps {
            let what = match &s.span {
                Some((name, args)) if args.as_object().is_some_and(|o| !o.is_empty()) => {
                    format!("{name} {args}")
                }
                Some((name, _)) => name.clone(),
                None => "(no enclosing span)".to_string(),
            };
            out.push_str(&format!(
                "  +{:>9.1} us  {:<12} {:<16} in {what}\n",
                s.ts - t0,
                s.thread,
                s.name
            ));
        }
        out.push_str(&halves(&steps));
        let ends_in_kernel = steps.last().is_some_and(|s| {
            crate::trace::kernel::timeline::KERNEL_STEPS.contains(&s.name.as_str())
        });
        let last = steps.last().map(|s| s.name.as_str());
        if last == Some("interrupt held") {
            out.push_str(
                "  (the transmit interrupt was held behind a receive interrupt (txhold) and the driver no longer wanted it)\n",
            );
        } else if !ends_in_kernel && last.is_some_and(|s| s != "interrupt") {
            out.push_str(
                "  (no interrupt: the driver did not want one (EVENT_IDX / NO_INTERRUPT), or a later run sent it)\n",
            );
        }
    }
    Ok(out)
}

/// A chain's time in each half: the kernel's steps (the guest's kick as KVM saw it, up to the
/// first step of trapvisor's; the injection up to the entry that delivers it) and trapvisor's.
fn halves(steps: &[Step]) -> String {
    let kernel = |s: &Step| crate::trace::kernel::timeline::KERNEL_STEPS.contains(&s.name.as_str());
    if !steps.iter().any(kernel) {
        return String::new();
    }
    let (mut k, mut u) = (0.0, 0.0);
    for w in steps.windows(2) {
        let dt = w[1].ts - w[0].ts;
        // An interval belongs to the kernel when it starts at a kernel step, or when it ends at
        // one after trapvisor's part (the injection that follows the interrupt).
        if kernel(&w[0]) || (kernel(&w[1]) && w[0].name == "interrupt") {
            k += dt;
        } else {
            u += dt;
        }
    }
    format!("  in the kernel: {k:.1} us, in trapvisor: {u:.1} us\n")
}

/// A trace file's JSON.
pub fn read_trace(path: &Path) -> Result<Value, SummaryError> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| SummaryError::Parse(e.to_string()))
}

/// Reads a trace file and summarizes its last `last` chains.
pub fn summarize_file(path: &Path, last: usize) -> Result<String, SummaryError> {
    summary(&read_trace(path)?, last)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn spans_and_flows_make_valid_json_and_a_summary() {
        let tl = Timeline::new(100);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_micros(n);
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn_scoped(scope, || {
                    tl.span(
                        "mmio-write",
                        "exit",
                        ms(10),
                        ms(20),
                        json!({"where": "notify q1"}),
                    );
                    tl.flow(7, "kick", Flow::Start, ms(15));
                })
                .unwrap()
                .join()
                .unwrap();
        });
        tl.span("tx queue 1", "queue", ms(30), ms(50), json!({}));
        tl.flow(7, "pop", Flow::Step, ms(31));
        tl.span("irqfd vector 2", "irq", ms(48), ms(49), json!({}));
        tl.flow(7, "interrupt", Flow::End, ms(48));
        let json = tl.to_json();
        let events = json["traceEvents"].as_array().unwrap();
        assert!(events
            .iter()
            .any(|e| e["ph"] == "M" && e["args"]["name"] == "vcpu0"));
        assert_eq!(events.iter().filter(|e| e["ph"] == "X").count(), 3);
        assert_eq!(events.iter().filter(|e| e["id"] == 7).count(), 3);
        // Round trip through text, as a file would be.
        let parsed: Value = serde_json::from_str(&json.to_string()).unwrap();
        let text = summary(&parsed, 5).unwrap();
        assert!(text.contains("chain 7: 3 steps"), "{text}");
        assert!(
            text.contains("vcpu0") && text.contains("mmio-write"),
            "{text}"
        );
        assert!(
            text.contains("interrupt") && text.contains("irqfd vector 2"),
            "{text}"
        );
    }

    #[test]
    fn a_flow_that_ends_at_a_held_interrupt_says_so() {
        let tl = Timeline::new(16);
        let t0 = Instant::now();
        let us = |n| t0 + Duration::from_micros(n);
        tl.span(
            "queue 1 ioeventfd wakeup",
            "queue",
            us(0),
            us(10),
            json!({}),
        );
        tl.flow(3, "ioeventfd wakeup", Flow::Start, us(0));
        tl.span("queue 1: used ring +1", "net", us(8), us(9), json!({}));
        tl.flow(3, "used ring", Flow::Step, us(8));
        let held = "queue 1: tx interrupt held 190.0 us, not wanted";
        tl.span(held, "net", us(200), us(201), json!({}));
        tl.flow(3, "interrupt held", Flow::Step, us(200));
        let text = summary(&tl.to_json(), 5).unwrap();
        assert!(text.contains(held), "{text}");
        assert!(
            text.contains("held behind a receive interrupt (txhold)"),
            "{text}"
        );
        assert!(!text.contains("(no interrupt:"), "{text}");
    }

    #[test]
    fn capacity_bounds_the_buffer() {
        let tl = Timeline::new(2);
        let t = Instant::now();
        for _ in 0..5 {
            tl.span("x", "exit", t, t, json!({}));
        }
        assert_eq!(tl.len(), (2, 3));
        assert_eq!(tl.to_json()["otherData"]["dropped_events"], 3);
    }

    #[test]
    fn summary_rejects_what_is_not_a_trace() {
        assert!(summary(&json!({"foo": 1}), 3).is_err());
        assert!(summary(&json!({"traceEvents": [{"ph": "s", "id": "x"}]}), 3).is_err());
        let empty = summary(&json!({"traceEvents": []}), 3).unwrap();
        assert!(empty.contains("no flows"));
    }

    #[test]
    fn a_kernel_time_and_the_same_moment_on_the_instant_clock_land_together() {
        // The two clocks are one (CLOCK_MONOTONIC): a reading of each, taken back to back,
        // must map to the same moment on the timeline. The bound is loose (2 ms) so that a
        // test thread preempted between the two reads does not fail it; the 100 µs offset of
        // a badly chosen origin is caught by the nested builtin-ktrace flow checks instead.
        let tl = Timeline::new(4);
        for _ in 0..100 {
            let mono = crate::trace::clock::monotonic_ns();
            let instant = Instant::now();
            let k = tl.from_monotonic(mono) as i64;
            let u = tl.ns(instant) as i64;
            assert!(
                (u - k).abs() < 2_000_000,
                "kernel {k} ns vs trapvisor {u} ns"
            );
        }
        let (origin, mono) = origin_on_both_clocks();
        let after = crate::trace::clock::monotonic_ns();
        assert!(mono <= after && origin <= Instant::now());
    }
}
