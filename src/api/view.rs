//! The VM as the API sees it: shared handles to its control, buses and statistics.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::VmApi;
use crate::bus::Bus;
use crate::event_loop::SourceCounter;
use crate::kvm::control::VmControl;
use crate::kvm::exit::ExitKind;
use crate::kvm::exit::StopReason;
use crate::trace::exits::{self, ExitStats, Row};
use crate::trace::kstats::{KernelStats, UserspaceCounts};
use crate::virtio::transport::{DeviceReport, VirtioPciDevice};

/// How long a pause may take before the API gives up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct VmView {
    pub control: Arc<VmControl>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit_stats: Vec<Arc<Mutex<ExitStats>>>,
    /// KVM's own statistics (the stats fds).
    pub kernel: Arc<KernelStats>,
    /// KVM's tracepoints, with `--trace-kernel`.
    pub kernel_trace: Option<Arc<crate::trace::kernel::KernelTrace>>,
    /// The virtio functions: PCI slot and device.
    pub devices: Vec<(u8, Arc<Mutex<VirtioPciDevice>>)>,
    /// The event loop's sources and their dispatch counters.
    pub event_loop: Vec<SourceCounter>,
    /// The guest physical map outside the buses (`arch::map_lines`: on aarch64 the GIC's
    /// frames and ITS, the kernel and the FDT).
    pub system: Vec<crate::arch::MapLine>,
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
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).snapshot())
            .collect()
    }

    fn reports(&self) -> Vec<(u8, DeviceReport)> {
        self.devices
            .iter()
            .map(|(slot, d)| (*slot, d.lock().unwrap_or_else(|e| e.into_inner()).report()))
            .collect()
    }
}

/// "virtio-net@00:02.0"
fn device_id(slot: u8, r: &DeviceReport) -> String {
    format!("{}@00:{slot:02x}.0", r.name)
}

/// Each device's queues, vectors and counters, for `/stats`.
fn devices_json(reports: &[(u8, DeviceReport)]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|(slot, r)| {
                let counters: serde_json::Map<String, Value> = r
                    .counters
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                json!({
                    "device": device_id(*slot, r),
                    "options": r.options,
                    "status": r.status,
                    "own_threads": r.own_threads,
                    "queues": r.queues,
                    "interrupts": r.vectors.iter().map(|v| json!({
                        "vector": v.vector, "gsi": v.gsi, "path": v.path,
                        "delivered": v.delivered, "pending": v.pending,
                    })).collect::<Vec<_>>(),
                    "msix": r.msix,
                    "transport": r.transport,
                    "counters": counters,
                })
            })
            .collect(),
    )
}

/// Every registered ioeventfd, for `/map`.
fn ioeventfds_json(reports: &[(u8, DeviceReport)]) -> Value {
    Value::Array(
        reports
            .iter()
            .flat_map(|(slot, r)| {
                r.queues.iter().filter_map(move |q| {
                    q.ioeventfd.map(|addr| {
                        // Registered without a length or datamatch (kvm-ioctls' NoDatamatch: len 0):
                        // a write of any width at the address signals it.
                        json!({"addr": addr, "size": 0, "device": device_id(*slot, r),
                               "queue": q.queue, "datamatch": null,
                               "waiter": q.waiter.unwrap_or(if r.own_threads { "device worker" } else { "event loop" })})
                    })
                })
            })
            .collect(),
    )
}

/// Every MSI-X vector in use, with its route, for `/map`: its message, the requester id it is
/// sent with (the ITS's device id on aarch64) and what its address reaches.
fn msix_json(reports: &[(u8, DeviceReport)], system: &[crate::arch::MapLine]) -> Value {
    Value::Array(
        reports
            .iter()
            .flat_map(|(slot, r)| {
                let id = device_id(*slot, r);
                let users = |v: u16| -> Vec<String> {
                    let mut u: Vec<String> = r
                        .queues
                        .iter()
                        .filter(|q| q.vector == Some(v))
                        .map(|q| format!("queue {}", q.queue))
                        .collect();
                    if r.config_vector == Some(v) {
                        u.push("config".into());
                    }
                    u
                };
                let devid = crate::kvm::irq::requester_id(0, *slot, 0);
                r.vectors
                    .iter()
                    .map(|v| {
                        let target = system
                            .iter()
                            .find(|l| (l.base..l.base + l.size).contains(&v.address))
                            .map(|l| l.name.clone());
                        json!({"device": id, "vector": v.vector, "used_by": users(v.vector),
                               "address": v.address, "data": v.data, "devid": devid,
                               "target": target, "gsi": v.gsi,
                               "path": v.path, "armed": v.armed, "masked": v.masked})
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
    )
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
        let event_loop: Vec<Value> = self
            .event_loop
            .iter()
            .map(|(name, n)| json!({"source": name, "dispatches": n.load(Ordering::Relaxed)}))
            .collect();
        let user: Vec<UserspaceCounts> = per_vcpu
            .iter()
            .map(|s| UserspaceCounts {
                exits: s.total() - s.count(ExitKind::Interrupted),
                io: s.count(ExitKind::IoIn) + s.count(ExitKind::IoOut),
                mmio: s.count(ExitKind::MmioRead) + s.count(ExitKind::MmioWrite),
            })
            .collect();
        json!({
            "vcpus": vcpus,
            "kernel": self.kernel.to_json(&user),
            "kernel_trace": self
                .kernel_trace
                .as_ref()
                .map_or(Value::Null, |k| k.to_json(&self.pio, &self.mmio)),
            "all": rows_json(exits::rows(&all, &self.pio, &self.mmio)),
            "unowned": {"pio": unowned_json(&self.pio), "mmio": unowned_json(&self.mmio)},
            "devices": devices_json(&self.reports()),
            "event_loop": event_loop,
        })
    }

    fn map(&self) -> Value {
        let reports = self.reports();
        json!({
            "pio": map_json(&self.pio),
            "mmio": map_json(&self.mmio),
            "ioeventfds": ioeventfds_json(&reports),
            "msix_routes": msix_json(&reports, &self.system),
            "devices": reports
                .iter()
                .map(|(slot, r)| json!({"device": device_id(*slot, r), "options": r.options,
                                        "describe": r.describe}))
                .collect::<Vec<_>>(),
            "system": self.system,
        })
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
