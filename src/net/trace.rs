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
