//! The kernel's side of the exit statistics: KVM's binary statistics for the VM and each vCPU
//! ([`crate::kvm::stats`]) next to what reached trapvisor, as `/stats`'s `kernel` object and the
//! kernel table of `ctl stats`, `ctl top` and `--stats`.
//!
//! KVM counts every exit it takes (`exits`) whether it handled it itself or returned to us, so
//! `exits` against trapvisor's own count says how many stayed in the kernel. Some hosts do not
//! keep every counter: PVM (a paravirtualized KVM) counts `exits` but leaves the per-type ones
//! (`io_exits`, `mmio_exits`, ...) at 0, because its emulator path does not pass through the
//! vendor handlers that count them. The view checks that against trapvisor's own counts and says
//! so in a note, with the counters that are meaningful on that host: a table is never silently
//! empty.
use std::fmt::Write;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::kvm::stats::{KvmStats, StatKind, StatsError};

/// The kernel modules that provide /dev/kvm, by name under /sys/module.
const MODULES: [&str; 4] = ["kvm_pvm", "kvm_intel", "kvm_amd", "kvm"];

/// Per-type exit counters that count exits by cause (x86 names).
const PER_TYPE: [&str; 8] = [
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "request_irq_exits",
    "signal_exits",
    "nmi_window_exits",
];

/// What trapvisor itself counted on one vCPU, to set beside KVM's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserspaceCounts {
    /// Exits KVM returned to trapvisor (EINTR returns from a kick excluded).
    pub exits: u64,
    /// Of those, port exits.
    pub io: u64,
    /// Of those, MMIO exits.
    pub mmio: u64,
}

/// KVM's statistics fds of one VM.
pub struct KernelStats {
    vm: Result<KvmStats, StatsError>,
    vcpus: Vec<Result<KvmStats, StatsError>>,
    started: Instant,
    module: String,
}

/// The module that provides /dev/kvm here: the first of kvm_pvm, kvm_intel, kvm_amd loaded.
fn kvm_module() -> String {
    MODULES
        .iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists())
        .unwrap_or(&"unknown")
        .to_string()
}

impl KernelStats {
    /// Opens the statistics fd of the VM and of each vCPU (a failure is kept and reported in
    /// the view, never fatal: the VM runs without it).
    pub fn open(vm: &impl std::os::fd::AsRawFd, vcpus: &[&impl std::os::fd::AsRawFd]) -> Self {
        KernelStats {
            vm: KvmStats::open(vm),
            vcpus: vcpus.iter().map(|v| KvmStats::open(*v)).collect(),
            started: Instant::now(),
            module: kvm_module(),
        }
    }

    /// The `kernel` object of `/stats`: KVM's names and values (histograms as arrays), per vCPU
    /// with trapvisor's own count beside, the share of exits that reached trapvisor, and notes.
    pub fn to_json(&self, user: &[UserspaceCounts]) -> Value {
        let mut units = Map::new();
        let mut kinds = Map::new();
        let mut read =
            |s: &Result<KvmStats, StatsError>| -> Result<(String, Map<String, Value>), String> {
                let s = s.as_ref().map_err(|e| e.to_string())?;
                let mut m = Map::new();
                for (d, v) in s.read_named().map_err(|e| e.to_string())? {
                    let suffix = d.unit_suffix();
                    if !suffix.is_empty() {
                        units.insert(d.name.clone(), json!(suffix));
                    }
                    if d.kind != StatKind::Cumulative {
                        kinds.insert(d.name.clone(), json!(d.kind.name()));
                    }
                    m.insert(d.name.clone(), v.to_json());
                }
                Ok((s.id.clone(), m))
            };
        let vm = read(&self.vm);
        let mut vcpus = Vec::new();
        let mut errors = Vec::new();
        let (mut kernel_exits, mut user_exits) = (0u64, 0u64);
        let mut sums: Map<String, Value> = Map::new();
        for (id, s) in self.vcpus.iter().enumerate() {
            let u = user.get(id).copied().unwrap_or_default();
            match read(s) {
                Ok((kvm_id, stats)) => {
                    let exits = stats.get("exits").and_then(Value::as_u64).unwrap_or(0);
                    kernel_exits += exits;
                    user_exits += u.exits;
                    for (k, v) in &stats {
                        if let Some(n) = v.as_u64() {
                            let old = sums.get(k).and_then(Value::as_u64).unwrap_or(0);
                            sums.insert(k.clone(), json!(old.saturating_add(n)));
                        }
                    }
                    vcpus.push(json!({"id": id, "kvm_id": kvm_id, "stats": stats,
                                      "userspace_exits": u.exits}));
                }
                Err(e) => {
                    errors.push(format!("vcpu{id}: {e}"));
                    vcpus.push(json!({"id": id, "error": e, "userspace_exits": u.exits}));
                }
            }
        }
        let user_io: u64 = user.iter().map(|u| u.io).sum();
        let user_mmio: u64 = user.iter().map(|u| u.mmio).sum();
        let notes = notes(&sums, user_io, user_mmio, &self.module);
        let mut out = json!({
            "source": "KVM_GET_STATS_FD",
            "module": self.module,
            "elapsed_s": self.started.elapsed().as_secs_f64(),
            "vcpus": vcpus,
            "units": units,
            "types": kinds,
            "exits": {
                "kernel": kernel_exits,
                "userspace": user_exits,
                "in_kernel": kernel_exits.saturating_sub(user_exits),
                "share_to_userspace": if kernel_exits > 0 {
                    json!(user_exits as f64 / kernel_exits as f64)
                } else {
                    Value::Null
                },
            },
            "notes": notes,
        });
        match vm {
            Ok((id, m)) => {
                out["vm"] = Value::Object(m);
                out["vm_id"] = json!(id);
            }
            Err(e) => {
                out["vm"] = json!({});
                errors.insert(0, format!("vm: {e}"));
            }
        }
        if !errors.is_empty() {
            out["errors"] = json!(errors);
        }
        out
    }
}

/// What the numbers mean on this host: per-type counters that stay 0 although trapvisor saw
/// such exits are named, and the counters that are meaningful here (non-zero) are listed.
fn notes(sums: &Map<String, Value>, user_io: u64, user_mmio: u64, module: &str) -> Vec<String> {
    let get = |k: &str| sums.get(k).and_then(Value::as_u64);
    let mut notes = Vec::new();
    let mut unkept = Vec::new();
    if get("io_exits") == Some(0) && user_io > 0 {
        unkept.push(format!(
            "io_exits=0 although {user_io} port exits reached trapvisor"
        ));
    }
    if get("mmio_exits") == Some(0) && user_mmio > 0 {
        unkept.push(format!(
            "mmio_exits=0 although {user_mmio} MMIO exits reached trapvisor"
        ));
    }
    if !unkept.is_empty() {
        let all_zero = PER_TYPE.iter().all(|k| get(k).unwrap_or(0) == 0);
        let mut meaningful: Vec<&str> = sums
            .iter()
            .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
            .map(|(k, _)| k.as_str())
            .collect();
        meaningful.sort_unstable();
        notes.push(format!(
            "this host's KVM ({module}) does not keep every per-type exit counter ({}){}; \
             meaningful here: {} (exits minus trapvisor's count is what KVM handled itself)",
            unkept.join(", "),
            if all_zero {
                "; every per-type exit counter is 0"
            } else {
                ""
            },
            if meaningful.is_empty() {
                "none yet".to_string()
            } else {
                meaningful.join(", ")
            }
        ));
    }
    if get("exits") == Some(0) && user_io + user_mmio > 0 {
        notes.push(format!(
            "this host's KVM ({module}) reports exits=0 although trapvisor handled exits: its \
             statistics are not kept here"
        ));
    }
    notes
}

/// The kernel table: per counter, all vCPUs together, with a rate (against `prev`, an earlier
/// `kernel` object, or else since the VM started) and the share of exits that reached trapvisor.
pub fn format_table(kernel: &Value, prev: Option<&Value>) -> String {
    let mut s = String::new();
    if kernel.is_null() {
        return s;
    }
    let vcpus = kernel["vcpus"].as_array().map_or(&[][..], |v| v.as_slice());
    let _ = writeln!(
        s,
        "kernel (KVM's own statistics, {}; {} vCPU(s), module {}):",
        kernel["source"].as_str().unwrap_or("?"),
        vcpus.len(),
        kernel["module"].as_str().unwrap_or("?")
    );
    for e in kernel["errors"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "  unavailable: {}", e.as_str().unwrap_or(""));
    }
    let exits = &kernel["exits"];
    let (k, u) = (
        exits["kernel"].as_u64().unwrap_or(0),
        exits["userspace"].as_u64().unwrap_or(0),
    );
    match exits["share_to_userspace"].as_f64() {
        Some(share) => {
            let _ = writeln!(
                s,
                "  exits: {k} taken by KVM, {u} reached trapvisor ({:.1}%), {} handled in the kernel",
                share * 100.0,
                k.saturating_sub(u)
            );
        }
        None => {
            let _ = writeln!(s, "  exits: {k} taken by KVM, {u} reached trapvisor");
        }
    }
    // Per counter, summed over the vCPUs; histograms by their total count.
    let sum = |kernel: &Value| -> Vec<(String, u64, bool)> {
        let mut names: Vec<(String, u64, bool)> = Vec::new();
        for v in kernel["vcpus"].as_array().into_iter().flatten() {
            for (name, val) in v["stats"].as_object().into_iter().flatten() {
                let (n, hist) = match val {
                    Value::Array(b) => (b.iter().filter_map(Value::as_u64).sum(), true),
                    other => (other.as_u64().unwrap_or(0), false),
                };
                match names.iter_mut().find(|e| e.0 == *name) {
                    Some(e) => e.1 = e.1.saturating_add(n),
                    None => names.push((name.clone(), n, hist)),
                }
            }
        }
        names
    };
    let now = sum(kernel);
    let before = prev.map(sum);
    let dt = match prev {
        Some(p) => {
            kernel["elapsed_s"].as_f64().unwrap_or(0.0) - p["elapsed_s"].as_f64().unwrap_or(0.0)
        }
        None => kernel["elapsed_s"].as_f64().unwrap_or(0.0),
    };
    let _ = writeln!(
        s,
        "  {:<28} {:>14} {:>12} {:>8}",
        "COUNTER (all vCPUs)",
        "VALUE",
        if prev.is_some() { "RATE/s" } else { "AVG/s" },
        "UNIT"
    );
    let kinds = &kernel["types"];
    for (name, n, hist) in now.iter().filter(|e| e.1 > 0) {
        let kind = kinds[name.as_str()].as_str().unwrap_or("cumulative");
        let rate = if kind == "cumulative" || *hist {
            let old = before
                .as_ref()
                .and_then(|b| b.iter().find(|e| e.0 == *name))
                .map_or(0, |e| e.1);
            if dt > 0.0 {
                format!("{:.1}", n.saturating_sub(old) as f64 / dt)
            } else {
                "-".into()
            }
        } else {
            format!("({kind})")
        };
        let unit = kernel["units"][name.as_str()].as_str().unwrap_or("");
        let label = if *hist {
            format!("{name} (samples)")
        } else {
            name.clone()
        };
        let _ = writeln!(s, "  {label:<28} {n:>14} {rate:>12} {unit:>8}");
    }
    let zero = now.iter().filter(|e| e.1 == 0).count();
    if zero > 0 {
        let _ = writeln!(s, "  ({zero} more counters are 0)");
    }
    for (name, v) in kernel["vm"].as_object().into_iter().flatten() {
        if let Some(n) = v.as_u64().filter(|&n| n > 0) {
            let label = format!("vm.{name}");
            let _ = writeln!(s, "  {label:<28} {n:>14}");
        }
    }
    for n in kernel["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "  note: {}", n.as_str().unwrap_or(""));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(pairs: &[(&str, u64)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect()
    }

    #[test]
    fn notes_name_unkept_counters_and_what_is_meaningful() {
        let pvm = sums(&[
            ("exits", 1002),
            ("io_exits", 0),
            ("mmio_exits", 0),
            ("fpu_reload", 1001),
            ("halt_exits", 0),
        ]);
        let n = notes(&pvm, 1000, 0, "kvm_pvm");
        assert_eq!(n.len(), 1, "{n:?}");
        assert!(
            n[0].contains("io_exits=0 although 1000 port exits"),
            "{}",
            n[0]
        );
        assert!(
            n[0].contains("meaningful here: exits, fpu_reload"),
            "{}",
            n[0]
        );
        assert!(
            n[0].contains("every per-type exit counter is 0"),
            "{}",
            n[0]
        );
        // A KVM that keeps them: no note.
        let real = sums(&[("exits", 5000), ("io_exits", 1200), ("mmio_exits", 300)]);
        assert!(notes(&real, 1000, 300, "kvm_amd").is_empty());
        // No counters at all while trapvisor saw exits.
        assert_eq!(notes(&sums(&[("exits", 0)]), 5, 0, "kvm").len(), 1);
    }

    #[test]
    fn table_shows_share_rates_and_notes() {
        let k = json!({
            "source": "KVM_GET_STATS_FD", "module": "kvm_pvm", "elapsed_s": 2.0,
            "vcpus": [{"id": 0, "stats": {"exits": 100, "io_exits": 0, "halt_wait_hist": [1, 2],
                                          "guest_mode": 1}}],
            "units": {}, "types": {"guest_mode": "instant", "halt_wait_hist": "log-hist"},
            "exits": {"kernel": 100, "userspace": 40, "share_to_userspace": 0.4},
            "vm": {"pages_4k": 12},
            "notes": ["a note"],
        });
        let t = format_table(&k, None);
        assert!(
            t.contains("100 taken by KVM, 40 reached trapvisor (40.0%), 60 handled in the kernel"),
            "{t}"
        );
        assert!(t.contains("exits") && t.contains("50.0"), "{t}");
        assert!(t.contains("halt_wait_hist (samples)"), "{t}");
        assert!(t.contains("(instant)"), "{t}");
        assert!(t.contains("(1 more counters are 0)"), "{t}");
        assert!(t.contains("vm.pages_4k"), "{t}");
        assert!(t.contains("note: a note"), "{t}");
        let mut later = k.clone();
        later["elapsed_s"] = json!(3.0);
        later["vcpus"][0]["stats"]["exits"] = json!(130);
        assert!(format_table(&later, Some(&k)).contains("30.0"));
        assert_eq!(format_table(&Value::Null, None), "");
    }

    #[test]
    fn a_real_vm_view_has_exits_per_vcpu() {
        let Ok(vm) = crate::kvm::vm::Vm::new(16 << 20) else {
            eprintln!("no usable /dev/kvm: skipped");
            return;
        };
        let vcpu = vm.create_vcpu(0).unwrap();
        let ks = KernelStats::open(vm.fd(), &[&vcpu]);
        let j = ks.to_json(&[UserspaceCounts::default()]);
        assert!(j["vcpus"][0]["stats"]["exits"].is_u64(), "{j}");
        assert!(j["vm_id"].as_str().unwrap().starts_with("kvm-"), "{j}");
        assert!(j.get("errors").is_none(), "{j}");
    }
}
