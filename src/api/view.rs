//! The VM as the API sees it: shared handles to its control, buses and statistics.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::VmApi;
use crate::bus::Bus;
use crate::kvm::control::VmControl;
use crate::kvm::exit::StopReason;
use crate::trace::exits::{self, ExitStats, Row};

/// How long a pause may take before the API gives up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct VmView {
    pub control: Arc<VmControl>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit_stats: Vec<Arc<Mutex<ExitStats>>>,
    /// The configuration as JSON (memory, cpus, kernel, cmdline, devices).
    pub config: Value,
}

fn rows_json(rows: Vec<Row>) -> Value {
    Value::Array(
        rows.into_iter()
            .map(|r| {
                json!({
                    "reason": r.reason,
                    "where": r.place,
                    "count": r.count,
                    "p50_us": r.p50_us,
                    "p99_us": r.p99_us,
                    "max_us": r.max_us,
                    "percentiles": r.percentiles,
                })
            })
            .collect(),
    )
}

fn unowned_json(bus: &Bus) -> Value {
    Value::Array(
        bus.unowned_counts()
            .into_iter()
            .map(|(addr, count)| json!({"addr": addr, "count": count}))
            .collect(),
    )
}

fn map_json(bus: &Bus) -> Value {
    Value::Array(
        bus.map()
            .into_iter()
            .map(|e| json!({"base": e.base, "size": e.len, "device": e.device, "region": e.region}))
            .collect(),
    )
}

impl VmView {
    fn snapshot(&self) -> Vec<ExitStats> {
        self.exit_stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

impl VmApi for VmView {
    fn info(&self) -> Value {
        let state = if self.control.is_stopping() {
            "stopping"
        } else if self.control.is_paused() {
            "paused"
        } else {
            "running"
        };
        json!({"state": state, "config": self.config})
    }

    fn stats(&self) -> Value {
        let per_vcpu = self.snapshot();
        let mut all = ExitStats::default();
        let vcpus: Vec<Value> = per_vcpu
            .iter()
            .enumerate()
            .map(|(id, s)| {
                all.merge(s);
                json!({
                    "id": id,
                    "exits": s.total(),
                    "rows": rows_json(exits::rows(s, &self.pio, &self.mmio)),
                })
            })
            .collect();
        json!({
            "vcpus": vcpus,
            "all": rows_json(exits::rows(&all, &self.pio, &self.mmio)),
            "unowned": {"pio": unowned_json(&self.pio), "mmio": unowned_json(&self.mmio)},
        })
    }

    fn map(&self) -> Value {
        json!({"pio": map_json(&self.pio), "mmio": map_json(&self.mmio)})
    }

    fn pause(&self) -> Result<(), String> {
        self.control.pause(PAUSE_TIMEOUT).map_err(|e| e.to_string())
    }

    fn resume(&self) -> Result<(), String> {
        self.control.resume().map_err(|e| e.to_string())
    }

    fn shutdown(&self) {
        self.control.request_stop(StopReason::Requested);
    }
}
