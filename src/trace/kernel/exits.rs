//! Exit statistics with both halves, from KVM's tracepoints on each vCPU thread.
//!
//! Where KVM fires `kvm_exit`/`kvm_entry` (VMX, SVM, arm64), every hardware exit is one pair:
//! it is counted by its decoded reason with the time from exit to the next entry, and it was
//! either handled in the kernel or, when a `kvm_userspace_exit` came between, sent to
//! trapvisor; for those the port or address KVM reported (`kvm_pio`, `kvm_mmio`) names the
//! device and region, as in trapvisor's own table.
//!
//! Where it does not (PVM), each KVM_RUN is bracketed instead: `kvm_fpu` load when it starts,
//! `kvm_userspace_exit` when it returns to trapvisor; the time between is the guest's and
//! KVM's together, counted by the KVM_EXIT_* reason it returned with. Accesses KVM reported and
//! handled without returning (`kvm_pio` or `kvm_mmio` not followed by a return) are counted as
//! handled in the kernel. A read that went to userspace is reported twice by KVM: an MMIO read
//! as `kvm_mmio` "unsatisfied-read" before the return and "read" when the next KVM_RUN
//! completes it; a port read only at that completion (`kvm_pio` at the start of the next
//! KVM_RUN) — so a return without an access waits for that completion to be named.
use std::collections::HashMap;

use serde_json::{json, Value};

use super::events::{Event, Kind};
use super::reasons::ExitReason;
use crate::bus::{Bus, BusKind};
use crate::trace::exits::{Series, QUANTILES};

/// The address an exit's access went to (for naming its device and region).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    pub bus: BusKind,
    pub addr: u64,
}

/// What an exit or a KVM_RUN is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonKey {
    /// A hardware exit reason (`kvm_exit`).
    Hardware(ExitReason),
    /// A KVM_RUN that returned with this KVM_EXIT_* reason (the bracket, where no `kvm_exit`).
    Run(String),
}

impl ReasonKey {
    pub fn name(&self) -> String {
        match self {
            ReasonKey::Hardware(r) => r.name(),
            ReasonKey::Run(r) => format!("KVM_RUN -> {r}"),
        }
    }
}

/// A series' row of `/stats`: count and latency in µs.
fn series_json(s: &Series) -> Value {
    let us = |v: u64| v as f64 / 1000.0;
    let h = &s.latency_ns;
    json!({
        "count": s.count,
        "p50_us": us(h.value_at_quantile(0.5)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "max_us": us(h.max()),
        "percentiles": QUANTILES.iter().map(|&q| (q, us(h.value_at_quantile(q)))).collect::<Vec<_>>(),
    })
}

/// One reason's exits.
#[derive(Clone, Default)]
pub struct ReasonStats {
    /// Every exit: exit → next entry (or, bracketed, KVM_RUN's start → its return).
    pub all: Series,
    /// Exits KVM handled itself.
    pub in_kernel: u64,
    /// Exits that went to trapvisor, by the place their access named (`None`: no access).
    pub to_user: HashMap<Option<Place>, Series>,
}

impl ReasonStats {
    pub fn to_userspace(&self) -> u64 {
        self.to_user.values().map(|s| s.count).sum()
    }
}

/// The access of the exit in progress.
fn place_of(kind: &Kind) -> Option<Place> {
    match *kind {
        Kind::Pio { port, .. } => Some(Place {
            bus: BusKind::Pio,
            addr: u64::from(port),
        }),
        Kind::Mmio { gpa, .. } | Kind::FastMmio { gpa } => Some(Place {
            bus: BusKind::Mmio,
            addr: gpa,
        }),
        _ => None,
    }
}

/// One vCPU thread's exit in progress.
#[derive(Default)]
struct VcpuState {
    /// The open `kvm_exit`: when, and why.
    exit: Option<(u64, ExitReason)>,
    /// The open KVM_RUN (`kvm_fpu` load), for the bracket.
    run: Option<u64>,
    /// The last access KVM reported and nobody consumed yet, and its event.
    access: Option<Place>,
    last_access: Option<Kind>,
    /// A `kvm_userspace_exit` came after the open `kvm_exit`.
    to_user: bool,
    /// A bracketed return that named no access yet: a port read, completed (and reported)
    /// at the start of the next KVM_RUN.
    pending: Option<(ReasonKey, u64)>,
    /// The MMIO read that went to userspace: its completion is not another access.
    completing: Option<u64>,
}

/// What a KVM_RUN returned with: its KVM_EXIT_* reason, or its error (EINTR: a restart).
pub fn returned_with(reason: u32, errno: i32) -> String {
    if errno == -libc::EINTR {
        "restart (EINTR)".to_string()
    } else if errno != 0 {
        format!("error {errno}")
    } else {
        kvm_exit_name(reason)
    }
}

/// KVM_EXIT_IO.
const KVM_EXIT_IO: u32 = 2;

/// KVM_EXIT_* names (include/uapi/linux/kvm.h).
pub fn kvm_exit_name(reason: u32) -> String {
    const NAMES: [&str; 40] = [
        "UNKNOWN",
        "EXCEPTION",
        "IO",
        "HYPERCALL",
        "DEBUG",
        "HLT",
        "MMIO",
        "IRQ_WINDOW_OPEN",
        "SHUTDOWN",
        "FAIL_ENTRY",
        "INTR",
        "SET_TPR",
        "TPR_ACCESS",
        "S390_SIEIC",
        "S390_RESET",
        "DCR",
        "NMI",
        "INTERNAL_ERROR",
        "OSI",
        "PAPR_HCALL",
        "S390_UCONTROL",
        "WATCHDOG",
        "S390_TSCH",
        "EPR",
        "SYSTEM_EVENT",
        "S390_STSI",
        "IOAPIC_EOI",
        "HYPERV",
        "ARM_NISV",
        "X86_RDMSR",
        "X86_WRMSR",
        "DIRTY_RING_FULL",
        "AP_RESET_HOLD",
        "X86_BUS_LOCK",
        "XEN",
        "RISCV_SBI",
        "RISCV_CSR",
        "NOTIFY",
        "LOONGARCH_IOCSR",
        "MEMORY_FAULT",
    ];
    NAMES
        .get(reason as usize)
        .map_or_else(|| format!("EXIT_{reason}"), |n| n.to_string())
}

/// The statistics of all vCPU threads of one VM.
#[derive(Default)]
pub struct KernelExits {
    vcpus: HashMap<u32, VcpuState>,
    /// Per reason: hardware exits, or KVM_RUN brackets.
    pub reasons: HashMap<ReasonKey, ReasonStats>,
    /// Accesses KVM handled without returning, seen in the bracket (PVM).
    pub kernel_accesses: HashMap<Place, u64>,
    /// Events seen, by tracepoint.
    pub seen: HashMap<&'static str, u64>,
}

impl KernelExits {
    /// Records a return that waited for its port read's completion without the place (none
    /// came).
    fn flush(reasons: &mut HashMap<ReasonKey, ReasonStats>, st: &mut VcpuState) {
        if let Some((key, ns)) = st.pending.take() {
            reasons
                .entry(key)
                .or_default()
                .to_user
                .entry(None)
                .or_default()
                .record(ns);
        }
    }

    /// Feeds one event of a vCPU thread (`tid`'s events in time order).
    pub fn vcpu_event(&mut self, e: &Event) {
        *self.seen.entry(e.kind.name()).or_default() += 1;
        let st = self.vcpus.entry(e.tid).or_default();
        match e.kind {
            Kind::Exit { reason, .. } => {
                st.exit = Some((e.time_ns, reason));
                st.access = None;
                st.to_user = false;
            }
            Kind::Entry => {
                if let Some((t0, reason)) = st.exit.take() {
                    let ns = e.time_ns.saturating_sub(t0);
                    let r = self.reasons.entry(ReasonKey::Hardware(reason)).or_default();
                    r.all.record(ns);
                    if st.to_user {
                        r.to_user.entry(st.access).or_default().record(ns);
                    } else {
                        r.in_kernel += 1;
                    }
                }
                st.access = None;
                st.to_user = false;
            }
            Kind::Pio { write: false, .. } if st.exit.is_none() && st.pending.is_some() => {
                // The completion of the port read the last return was for.
                if let Some((key, ns)) = st.pending.take() {
                    let r = self.reasons.entry(key).or_default();
                    r.to_user.entry(place_of(&e.kind)).or_default().record(ns);
                }
            }
            Kind::Mmio { op: 1, gpa, .. } if st.exit.is_none() && st.completing == Some(gpa) => {
                st.completing = None;
            }
            Kind::Pio { .. } | Kind::Mmio { .. } | Kind::FastMmio { .. } => {
                Self::flush(&mut self.reasons, st);
                // Without kvm_exit, an access nobody returned for was handled in the kernel.
                if st.exit.is_none() {
                    if let Some(p) = st.access {
                        *self.kernel_accesses.entry(p).or_default() += 1;
                    }
                }
                st.access = place_of(&e.kind);
                st.last_access = Some(e.kind);
            }
            Kind::UserspaceExit { reason, errno } => {
                if st.exit.is_some() {
                    st.to_user = true;
                }
                Self::flush(&mut self.reasons, st);
                if let Some(t0) = st.run.take() {
                    let key = ReasonKey::Run(returned_with(reason, errno));
                    let ns = e.time_ns.saturating_sub(t0);
                    self.reasons.entry(key.clone()).or_default().all.record(ns);
                    st.completing = None;
                    match st.access {
                        // A port return with no access: its read completes next time.
                        None if reason == KVM_EXIT_IO && errno == 0 => {
                            st.pending = Some((key, ns));
                        }
                        place => {
                            if let (Some(p), Some(Kind::Mmio { op: 0, .. })) =
                                (place, st.last_access)
                            {
                                st.completing = Some(p.addr);
                            }
                            let r = self.reasons.entry(key).or_default();
                            r.to_user.entry(place).or_default().record(ns);
                        }
                    }
                }
                if st.exit.is_none() {
                    st.access = None;
                }
            }
            Kind::Fpu { load: true } => {
                if st.exit.is_none() {
                    if let Some(p) = st.access.take() {
                        *self.kernel_accesses.entry(p).or_default() += 1;
                    }
                }
                st.run = Some(e.time_ns);
            }
            _ => {}
        }
    }

    /// The kernel dropped records of thread `tid` here (its ring was full): whatever exit or
    /// KVM_RUN was open on it is forgotten rather than paired with a later event (an exit
    /// whose entry was lost would otherwise take the next return to userspace as its own).
    pub fn lost(&mut self, tid: u32) {
        if let Some(st) = self.vcpus.get_mut(&tid) {
            *st = VcpuState::default();
        }
    }

    /// Counts an event of another thread (interrupt injections).
    pub fn other_event(&mut self, e: &Event) {
        *self.seen.entry(e.kind.name()).or_default() += 1;
    }

    /// Whether hardware exits were seen (else only brackets).
    pub fn has_hardware_exits(&self) -> bool {
        self.reasons
            .keys()
            .any(|k| matches!(k, ReasonKey::Hardware(_)))
    }

    /// The JSON of `/stats`' `kernel_trace.reasons`: hardware reasons if any were seen, else
    /// the brackets; busiest first; places named on `pio`/`mmio`.
    pub fn reasons_json(&self, pio: &Bus, mmio: &Bus) -> Value {
        let hw = self.has_hardware_exits();
        let mut rows: Vec<(&ReasonKey, &ReasonStats)> = self
            .reasons
            .iter()
            .filter(|(k, _)| matches!(k, ReasonKey::Hardware(_)) == hw)
            .collect();
        rows.sort_by(|a, b| b.1.all.count.cmp(&a.1.all.count).then(a.0.cmp(b.0)));
        let name = |p: &Option<Place>| match p {
            Some(p) => describe(p, pio, mmio),
            None => "(no access reported)".to_string(),
        };
        Value::Array(
            rows.into_iter()
                .map(|(k, r)| {
                    // By name: the addresses of one region (a config space, a BAR page) are one
                    // row, as in trapvisor's own table.
                    let mut by_name: Vec<(String, Series)> = Vec::new();
                    for (p, s) in &r.to_user {
                        let n = name(p);
                        match by_name.iter_mut().find(|e| e.0 == n) {
                            Some(e) => e.1.add(s),
                            None => by_name.push((n, s.clone())),
                        }
                    }
                    by_name.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
                    let mut v = series_json(&r.all);
                    v["reason"] = json!(k.name());
                    if let ReasonKey::Hardware(h) = k {
                        v["isa"] = json!(h.isa.name());
                        v["code"] = json!(h.code);
                    }
                    v["in_kernel"] = json!(r.in_kernel);
                    v["to_userspace"] = json!(r.to_userspace());
                    v["places"] = Value::Array(
                        by_name
                            .into_iter()
                            .map(|(n, s)| {
                                let mut row = series_json(&s);
                                row["where"] = json!(n);
                                row
                            })
                            .collect(),
                    );
                    v
                })
                .collect(),
        )
    }

    /// Accesses handled in the kernel (bracket mode), busiest first.
    pub fn kernel_accesses_json(&self, pio: &Bus, mmio: &Bus) -> Value {
        let mut v: Vec<(&Place, &u64)> = self.kernel_accesses.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        Value::Array(
            v.into_iter()
                .map(|(p, n)| json!({"where": describe(p, pio, mmio), "count": n}))
                .collect(),
        )
    }
}

/// The kernel exit table from `/stats`' `kernel_trace` (empty when it is null).
pub fn format_table(kt: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if !kt.is_object() {
        return s;
    }
    let rows = kt["reasons"].as_array().map_or(&[][..], |v| v.as_slice());
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    let total: u64 = rows.iter().map(|r| n(r, "count")).sum();
    let in_kernel: u64 = rows.iter().map(|r| n(r, "in_kernel")).sum();
    if kt["mode"] == "exits" {
        let _ = writeln!(
            s,
            "kernel exits (--trace-kernel, kvm_exit to kvm_entry): {total} exits, {in_kernel} ({:.1}%) \
             handled in the kernel, {} went to trapvisor",
            if total > 0 { in_kernel as f64 * 100.0 / total as f64 } else { 0.0 },
            total - in_kernel
        );
    } else {
        let _ = writeln!(
            s,
            "kernel (--trace-kernel, KVM_RUN from kvm_fpu load to kvm_userspace_exit): {total} returns"
        );
    }
    let _ = writeln!(
        s,
        "  {:<26} {:<34} {:>9} {:>9} {:>10} {:>8} {:>8} {:>9}",
        "REASON", "WHERE", "COUNT", "IN-KERNEL", "TRAPVISOR", "P50 us", "P99 us", "MAX us"
    );
    let line = |s: &mut String, reason: &str, place: &str, r: &Value, k: String, u: String| {
        let _ = writeln!(
            s,
            "  {:<26} {:<34} {:>9} {:>9} {:>10} {:>8.2} {:>8.2} {:>9.2}",
            reason,
            place,
            n(r, "count"),
            k,
            u,
            r["p50_us"].as_f64().unwrap_or(0.0),
            r["p99_us"].as_f64().unwrap_or(0.0),
            r["max_us"].as_f64().unwrap_or(0.0)
        );
    };
    for r in rows {
        let reason = r["reason"].as_str().unwrap_or("");
        let (k, u) = if kt["mode"] == "exits" {
            (
                n(r, "in_kernel").to_string(),
                n(r, "to_userspace").to_string(),
            )
        } else {
            ("-".to_string(), n(r, "to_userspace").to_string())
        };
        line(&mut s, reason, "(all)", r, k, u);
        for p in r["places"].as_array().into_iter().flatten() {
            let place = format!("  {}", p["where"].as_str().unwrap_or(""));
            line(
                &mut s,
                reason,
                &place,
                p,
                String::new(),
                n(p, "count").to_string(),
            );
        }
    }
    let ka: Vec<String> = kt["kernel_accesses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{} x{}", a["where"].as_str().unwrap_or(""), n(a, "count")))
        .collect();
    if !ka.is_empty() {
        let _ = writeln!(
            s,
            "  accesses KVM handled without returning: {}",
            ka.join(", ")
        );
    }
    let list = |v: &Value| -> String {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "  this host provides: {}", list(&kt["host_events"]));
    let lacks = list(&kt["host_lacks"]);
    if !lacks.is_empty() {
        let _ = writeln!(s, "  this host lacks: {lacks}");
    }
    let seen: Vec<String> = kt["seen"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        s,
        "  events seen: {}; records lost: {}",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        },
        n(kt, "lost_records")
    );
    if let Some(note) = kt["note"].as_str() {
        let _ = writeln!(s, "  note: {note}");
    }
    for e in kt["errors"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "  not traced: {}", e.as_str().unwrap_or(""));
    }
    s
}

/// Names a place as trapvisor's own table does (`pio serial0 THR/RBR`), or by its address
/// when no device owns it (in-kernel devices: the PIT, the PIC, the IOAPIC).
pub fn describe(p: &Place, pio: &Bus, mmio: &Bus) -> String {
    let bus = match p.bus {
        BusKind::Pio => pio,
        BusKind::Mmio => mmio,
    };
    match bus.hit_at(p.addr) {
        Some(hit) => crate::trace::exits::place(
            &crate::kvm::exit::Target {
                bus: p.bus,
                hit: Some(hit),
            },
            pio,
            mmio,
        ),
        None => format!("{} {:#x} (no trapvisor device)", p.bus, p.addr),
    }
}

#[cfg(test)]
mod tests;
