//! `--trace` instrumentation of the data path: what a queue pair's run records on the
//! timeline, on whichever thread runs it (the pair's worker, or a vCPU with notify=exit).
//!
//! A run serves one flow: the worker starts it when a kick's eventfd or the TAP wakes it (or
//! the transport started it at the MMIO exit); the run adds a span for each chain popped and
//! checked, each TAP `writev`/`readv` and each used-ring publication, with a flow step at each;
//! the completion interrupt ends the flow (`VirtioInterrupt::trigger_in_flow`). Nothing is
//! recorded, and no clock read, when the VM is not traced.
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::trace::timeline::{Flow, Timeline};

/// A traced run: the timeline and the flow it serves (0: none).
pub(crate) struct Tracer<'a> {
    tl: &'a Timeline,
    flow: u64,
}

/// The tracer of a run, when tracing.
pub(crate) fn tracer(tl: &Option<Arc<Timeline>>, flow: u64) -> Option<Tracer<'_>> {
    tl.as_deref().map(|tl| Tracer { tl, flow })
}

/// Now, when tracing (the start of a span to come).
pub(crate) fn now(t: &Option<Tracer<'_>>) -> Option<Instant> {
    t.as_ref().map(|_| Instant::now())
}

impl Tracer<'_> {
    pub fn flow(&self) -> u64 {
        self.flow
    }

    /// A span from `start` to now, with a flow step named `step` at its start.
    pub fn span(&self, start: Option<Instant>, name: String, step: &str, args: Value) {
        let Some(start) = start else { return };
        self.tl.span(&name, "net", start, Instant::now(), args);
        if self.flow != 0 {
            self.tl.flow(self.flow, step, Flow::Step, start);
        }
    }

    /// The decision on a transmit interrupt held since `since`: a span from `start` (the
    /// decision's) to now, with the flow's step at its start: `sent` or no longer wanted, and
    /// what decided it (`how`).
    pub fn held(&self, since: Instant, start: Instant, queue: u16, sent: bool, how: &str) {
        let outcome = if sent { "sent" } else { "not wanted" };
        let held_us = start.saturating_duration_since(since).as_secs_f64() * 1e6;
        self.span(
            Some(start),
            format!("queue {queue}: tx interrupt held {held_us:.1} us, {outcome}"),
            "interrupt held",
            serde_json::json!({
                "queue": queue, "held_us": held_us, "outcome": outcome, "decided_by": how
            }),
        );
    }
}

/// A transmit interrupt left to the worker (module `hold`) as the timeline sees it: the flow of
/// the run whose completion wants it, and when a receive interrupt began holding it. Kept only
/// when tracing; the decision is a span in that flow (how long the interrupt was held, and
/// what came of it), and an interrupt sent then ends the flow.
#[derive(Debug, Default)]
pub(crate) struct HoldTrace {
    pub flow: u64,
    pub since: Option<Instant>,
}

impl HoldTrace {
    /// The interrupt is being decided: the tracer whose flow it ends if sent, and when its
    /// hold began (if it was held); both cleared.
    pub fn take<'a>(
        &mut self,
        tl: &'a Option<Arc<Timeline>>,
    ) -> (Option<Tracer<'a>>, Option<Instant>) {
        let since = self.since.take();
        (tracer(tl, std::mem::take(&mut self.flow)), since)
    }
}

/// A worker's wakeup as the timeline sees it: a span for the wakeup, and a flow that starts
/// there if the run it served did anything (a frame, a used entry, an interrupt).
pub(crate) struct Wakeup<'a> {
    tl: &'a Timeline,
    at: Instant,
    mark: usize,
    pub flow: u64,
}

impl<'a> Wakeup<'a> {
    pub fn new(tl: Option<&'a Arc<Timeline>>) -> Option<Self> {
        let tl = tl?;
        Some(Wakeup {
            tl,
            at: Instant::now(),
            mark: tl.len().0,
            flow: tl.new_flow(),
        })
    }

    /// Records the wakeup span (`name`, `args`) and, if the run continued the flow, its start
    /// (`how`).
    pub fn end(self, name: &str, how: &str, args: Value) {
        if self.tl.flow_since(self.mark, self.flow) {
            self.tl.flow(self.flow, how, Flow::Start, self.at);
        }
        self.tl.span(name, "queue", self.at, Instant::now(), args);
    }
}
