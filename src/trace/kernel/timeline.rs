//! The kernel half on the `--trace` timeline: when the VM stops, KVM's events join trapvisor's
//! spans on the same tracks.
//!
//! On a vCPU's track: `guest` from `kvm_entry` to the next `kvm_exit`; each exit as a span
//! named by its hardware reason, from `kvm_exit` to `kvm_entry`, with trapvisor's handler span
//! inside it when it went to userspace; accesses, MSRs, returns and injections as instants.
//! Where KVM fires no `kvm_exit` (PVM), each KVM_RUN is one span from `kvm_fpu` load to unload,
//! named by what it returned with. On a thread that injects interrupts: a span per injection
//! (`kvm_msi_set_irq`/`kvm_set_irq` to the APIC's `kvm_apic_accept_irq`).
//!
//! The packet flows that ran from a worker's wakeup to its interrupt are joined to both ends:
//! before, the guest's write to the queue's notify address as KVM saw it (the exit that
//! signalled the ioeventfd); after, the injection on the worker, `kvm_inj_virq` on the target
//! vCPU and the `kvm_entry` that delivers it.
use std::collections::HashMap;

use serde_json::{json, Value};

use super::events::{Event, Kind};
use super::exits::{kvm_exit_name, returned_with};
use super::TracedThread;
use crate::trace::timeline::{Flow, FlowStep, Timeline};

/// A kick is looked for this long before the wakeup it caused; an injection this long after
/// the interrupt span that made it; a delivery this long after the injection.
const KICK_WINDOW_NS: u64 = 50_000_000;
const INJECT_WINDOW_NS: u64 = 2_000_000;
const DELIVERY_WINDOW_NS: u64 = 100_000_000;
/// How far apart the two halves' clocks may read the same moment (both CLOCK_MONOTONIC, read
/// by the kernel and by the vDSO: under emulation they were seen 12 µs apart).
const SKEW_NS: u64 = 20_000;

/// Flow step names the kernel half adds (`trace-summary` counts their time as the kernel's).
pub const KERNEL_STEPS: [&str; 6] = [
    "guest kick",
    "kvm_msi_set_irq",
    "kvm_set_irq",
    "kvm_inj_virq",
    "kvm_entry",
    "KVM_RUN re-entry",
];

/// What the summary says per vCPU.
#[derive(Default)]
struct VcpuTotals {
    exits: u64,
    in_kernel: u64,
    to_trapvisor: u64,
    guest_ns: u64,
    kernel_ns: u64,
    trapvisor_ns: u64,
    kvm_run_ns: u64,
    runs: u64,
}

/// An event with its time on the timeline.
#[derive(Clone, Copy)]
struct At {
    t: u64,
    kind: Kind,
}

fn access_args(kind: &Kind) -> Value {
    match *kind {
        Kind::Pio {
            write, port, size, ..
        } => json!({"port": format!("{port:#x}"), "write": write, "size": size}),
        Kind::Mmio { op, len, gpa } => {
            json!({"gpa": format!("{gpa:#x}"), "write": op == 2, "len": len})
        }
        Kind::FastMmio { gpa } => json!({"gpa": format!("{gpa:#x}"), "write": true}),
        Kind::Msr { write, ecx } => json!({"msr": format!("{ecx:#x}"), "write": write}),
        Kind::UserspaceExit { reason, errno } => {
            json!({"reason": kvm_exit_name(reason), "errno": errno})
        }
        Kind::InjVirq { vector } => json!({"vector": format!("{vector:#x}")}),
        Kind::MsiSetIrq { address, data } => json!({
            "address": format!("{address:#x}"), "data": format!("{data:#x}"),
            "vector": format!("{:#x}", data & 0xff), "dest_apic": (address >> 12) & 0xff,
        }),
        Kind::SetIrq { gsi, level } => json!({"gsi": gsi, "level": level}),
        Kind::ApicAcceptIrq { apic, vector } => {
            json!({"apic": apic, "vector": format!("{vector:#x}")})
        }
        _ => json!({}),
    }
}

/// Draws one vCPU's events on `track`.
fn vcpu_track(tl: &Timeline, track: u32, ev: &[At], hw: bool) -> VcpuTotals {
    let mark = |cat: &'static str, e: &At| {
        tl.add_instant(track, e.kind.name().into(), cat, e.t, access_args(&e.kind));
    };
    let mut tot = VcpuTotals::default();
    let mut exit: Option<(u64, Kind, Option<Kind>, bool)> = None;
    let mut last_entry: Option<u64> = None;
    let mut run: Option<u64> = None;
    let mut ran: Option<(u64, u64)> = None;
    let mut user: Option<u64> = None;
    for e in ev {
        match e.kind {
            Kind::Exit { .. } => {
                if let Some(te) = last_entry.take() {
                    tl.add_span(track, "guest".into(), "guest", te, e.t, json!({}));
                    tot.guest_ns += e.t.saturating_sub(te);
                }
                exit = Some((e.t, e.kind, None, false));
            }
            Kind::Entry => {
                if let Some((
                    t0,
                    Kind::Exit {
                        reason,
                        info1,
                        info2,
                    },
                    access,
                    to_user,
                )) = exit.take()
                {
                    let mut args = json!({
                        "isa": reason.isa.name(), "code": format!("{:#x}", reason.code),
                        "info1": format!("{info1:#x}"), "info2": format!("{info2:#x}"),
                        "handled": if to_user { "trapvisor" } else { "kernel" },
                    });
                    if let Some(a) = access {
                        args["access"] = access_args(&a);
                    }
                    tl.add_span(track, reason.name(), "kernel", t0, e.t, args);
                    tot.exits += 1;
                    if to_user {
                        tot.to_trapvisor += 1;
                    } else {
                        tot.in_kernel += 1;
                    }
                    tot.kernel_ns += e.t.saturating_sub(t0);
                }
                last_entry = Some(e.t);
            }
            Kind::Pio { .. } | Kind::Mmio { .. } | Kind::FastMmio { .. } | Kind::Msr { .. } => {
                if let Some(x) = exit.as_mut() {
                    if !matches!(e.kind, Kind::Msr { .. }) {
                        x.2 = Some(e.kind);
                    }
                }
                mark("kernel", e);
            }
            Kind::UserspaceExit { reason, errno } => {
                if let Some(x) = exit.as_mut() {
                    x.3 = true;
                }
                if let Some((t0, t1)) = ran.take() {
                    let name = format!("KVM_RUN -> {}", returned_with(reason, errno));
                    tl.add_span(track, name, "kernel", t0, t1, access_args(&e.kind));
                }
                mark("kernel", e);
                user = Some(e.t);
            }
            Kind::Fpu { load: true } => {
                if let Some(u) = user.take() {
                    tot.trapvisor_ns += e.t.saturating_sub(u);
                }
                run = Some(e.t);
            }
            Kind::Fpu { load: false } => {
                if let Some(t0) = run.take() {
                    tot.runs += 1;
                    tot.kvm_run_ns += e.t.saturating_sub(t0);
                    if !hw {
                        ran = Some((t0, e.t));
                    }
                }
            }
            Kind::InjVirq { .. }
            | Kind::MsiSetIrq { .. }
            | Kind::SetIrq { .. }
            | Kind::ApicAcceptIrq { .. } => {
                mark("irq", e);
            }
        }
    }
    if let Some((t0, t1)) = ran {
        tl.add_span(track, "KVM_RUN".into(), "kernel", t0, t1, json!({}));
    }
    // The kernel's share of an exit that went to trapvisor excludes trapvisor's own time.
    tot.kernel_ns = tot.kernel_ns.saturating_sub(tot.trapvisor_ns);
    tot
}

/// Draws an injecting thread's events on `track`: a span per injection.
fn injector_track(tl: &Timeline, track: u32, ev: &[At]) -> u64 {
    let mark = |cat: &'static str, e: &At| {
        tl.add_instant(track, e.kind.name().into(), cat, e.t, access_args(&e.kind));
    };
    let mut n = 0;
    for (i, e) in ev.iter().enumerate() {
        let name = match e.kind {
            Kind::MsiSetIrq { data, .. } => format!("kvm_msi_set_irq vector {:#x}", data & 0xff),
            Kind::SetIrq { gsi, .. } => format!("kvm_set_irq gsi {gsi}"),
            Kind::ApicAcceptIrq { .. } => continue,
            _ => {
                mark("irq", e);
                continue;
            }
        };
        // Until the APIC took it (within the same write), so that it nests in the span of the
        // write that caused it.
        let end = ev[i + 1..]
            .iter()
            .take(4)
            .find(|x| matches!(x.kind, Kind::ApicAcceptIrq { .. }))
            .map_or(e.t + 1, |x| x.t.max(e.t + 1));
        let mut args = access_args(&e.kind);
        if let Some(a) = ev[i + 1..]
            .iter()
            .take(4)
            .find(|x| matches!(x.kind, Kind::ApicAcceptIrq { .. }))
        {
            args["accepted"] = access_args(&a.kind);
        }
        tl.add_span(track, name, "irq", e.t, end, args);
        n += 1;
    }
    n
}

/// Whether a vCPU was inside KVM_RUN at `t` (its last `kvm_fpu` before `t` was a load).
fn in_kvm_run(ev: &[At], t: u64) -> bool {
    ev.iter()
        .rev()
        .filter(|e| e.t <= t)
        .find_map(|e| match e.kind {
            Kind::Fpu { load } => Some(load),
            _ => None,
        })
        .unwrap_or(false)
}

/// Joins the packet flows to the kernel's events at both ends; returns (kicks, interrupts)
/// joined.
fn join_flows(
    tl: &Timeline,
    by_track: &HashMap<u32, Vec<At>>,
    vcpu_tracks: &HashMap<u8, u32>,
    notify: &[u64],
    msix: &[(u16, u8)],
) -> (u64, u64) {
    let mut flows: HashMap<u64, Vec<FlowStep>> = HashMap::new();
    for s in tl.flow_steps() {
        flows.entry(s.id).or_default().push(s);
    }
    let mut used_kicks: Vec<(u32, u64)> = Vec::new();
    let (mut kicks, mut irqs) = (0, 0);
    let mut ids: Vec<u64> = flows.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let steps = &mut flows.get_mut(&id).expect("listed id");
        steps.sort_by_key(|s| s.at_ns);
        let (first, last) = (steps[0].clone(), steps[steps.len() - 1].clone());
        // Before: the latest write to a notify address on any vCPU, before the wakeup.
        if first.flow == Flow::Start {
            let mut best: Option<(u32, u64)> = None;
            for &track in vcpu_tracks.values() {
                for e in by_track.get(&track).into_iter().flatten() {
                    if e.t >= first.at_ns || e.t + KICK_WINDOW_NS < first.at_ns {
                        continue;
                    }
                    let addr = match e.kind {
                        Kind::Mmio { op: 2, gpa, .. } | Kind::FastMmio { gpa } => gpa,
                        Kind::Pio {
                            write: true, port, ..
                        } => u64::from(port),
                        _ => continue,
                    };
                    if notify.contains(&addr)
                        && !used_kicks.contains(&(track, e.t))
                        && best.is_none_or(|b| e.t > b.1)
                    {
                        best = Some((track, e.t));
                    }
                }
            }
            if let Some((track, t)) = best {
                used_kicks.push((track, t));
                tl.add_flow(track, id, "guest kick", Flow::Start, t);
                tl.set_flow(first.index, Flow::Step);
                kicks += 1;
            }
        }
        // After: the injection on the thread that raised the interrupt, then the vCPU.
        if last.flow != Flow::End || last.name != "interrupt" {
            continue;
        }
        let Some(ev) = by_track.get(&last.track) else {
            continue;
        };
        // The APIC vectors the interrupt's MSI-X vector may carry (its message data).
        let msix_vector = tl
            .span_args_at(last.track, "irq", last.at_ns)
            .and_then(|a| a["vector"].as_u64());
        let wanted: Vec<u8> = msix
            .iter()
            .filter(|(i, _)| msix_vector == Some(u64::from(*i)))
            .map(|(_, v)| *v)
            .collect();
        let fits = |v: u8| wanted.is_empty() || wanted.contains(&v);
        // The injection on this thread (irqfd's fast path, KVM_SIGNAL_MSI). When KVM cannot
        // inject from here it hands the irqfd to a kernel worker, which is not traced: then
        // the flow goes from the interrupt straight to the vCPU.
        let pos = ev.iter().position(|e| {
            e.t + SKEW_NS >= last.at_ns
                && e.t <= last.at_ns + INJECT_WINDOW_NS
                && match e.kind {
                    Kind::MsiSetIrq { data, .. } => fits((data & 0xff) as u8),
                    Kind::SetIrq { .. } => wanted.is_empty(),
                    _ => false,
                }
        });
        if pos.is_none() && wanted.is_empty() {
            continue;
        }
        let inj = pos.map(|p| ev[p]);
        // Not before the interrupt step it follows (the clocks' skew could put it there).
        let t_inj = inj.map_or(last.at_ns, |i| i.t.max(last.at_ns));
        // The steps after the interrupt, the last of which ends the flow.
        let mut after_irq: Vec<(u32, &'static str, u64)> = Vec::new();
        if let Some(i) = inj {
            after_irq.push((last.track, i.kind.name(), t_inj));
        }
        let apic = pos
            .and_then(|p| {
                ev[p + 1..].iter().take(4).find_map(|e| match e.kind {
                    Kind::ApicAcceptIrq { apic, .. } => Some(apic),
                    _ => None,
                })
            })
            .or(match inj.map(|i| i.kind) {
                Some(Kind::MsiSetIrq { address, .. }) => Some(((address >> 12) & 0xff) as u32),
                _ => None,
            });
        let vector = match inj.map(|i| i.kind) {
            Some(Kind::MsiSetIrq { data, .. }) => Some((data & 0xff) as u8),
            _ => None,
        };
        let target = apic
            .and_then(|a| u8::try_from(a).ok())
            .and_then(|a| vcpu_tracks.get(&a))
            .or_else(|| {
                (vcpu_tracks.len() == 1)
                    .then(|| vcpu_tracks.values().next())
                    .flatten()
            });
        if let Some(&vt) = target {
            let vev = by_track.get(&vt).map_or(&[][..], |v| v.as_slice());
            let after: Vec<&At> = vev
                .iter()
                .filter(|e| e.t >= t_inj && e.t <= t_inj + DELIVERY_WINDOW_NS)
                .collect();
            let injected = after.iter().find(|e| {
                matches!(e.kind, Kind::InjVirq { vector: v } if vector.map_or(fits(v), |w| w == v))
            });
            let from = injected.map_or(t_inj, |e| e.t);
            if let Some(e) = injected {
                after_irq.push((vt, "kvm_inj_virq", e.t));
            }
            // The entry that delivers it. Where KVM fires none (PVM): a vCPU inside KVM_RUN
            // takes it there (no event marks the moment: the flow ends at the injection); one
            // in trapvisor takes it when it enters KVM_RUN again.
            if let Some(e) = after
                .iter()
                .find(|e| e.t >= from && matches!(e.kind, Kind::Entry))
            {
                after_irq.push((vt, "kvm_entry", e.t));
            } else if !in_kvm_run(vev, t_inj) {
                if let Some(e) = after
                    .iter()
                    .find(|e| matches!(e.kind, Kind::Fpu { load: true }))
                {
                    after_irq.push((vt, "KVM_RUN re-entry", e.t));
                }
            }
        }
        if after_irq.is_empty() {
            continue;
        }
        tl.set_flow(last.index, Flow::Step);
        let n = after_irq.len();
        for (i, (track, name, t)) in after_irq.into_iter().enumerate() {
            let flow = if i + 1 == n { Flow::End } else { Flow::Step };
            tl.add_flow(track, id, name, flow, t);
        }
        irqs += 1;
    }
    (kicks, irqs)
}

/// Adds the kernel's events to `tl` (see the module doc) and returns the summary kept in the
/// trace's `otherData.kernel`. `notify`: the queues' notify addresses (ioeventfds); `msix`:
/// each MSI-X vector in use with the APIC vector its message carries.
pub fn merge(
    tl: &Timeline,
    events: Vec<Event>,
    threads: &[TracedThread],
    notify: &[u64],
    msix: &[(u16, u8)],
    host: (&[&str], &[&str]),
) -> Value {
    let hw = events.iter().any(|e| matches!(e.kind, Kind::Exit { .. }));
    let mut fired: Vec<(&str, u64)> = Vec::new();
    for e in &events {
        match fired.iter_mut().find(|f| f.0 == e.kind.name()) {
            Some(f) => f.1 += 1,
            None => fired.push((e.kind.name(), 1)),
        }
    }
    fired.sort();
    let silent: Vec<&str> = host
        .0
        .iter()
        .copied()
        .filter(|n| !fired.iter().any(|f| f.0 == *n))
        .collect();
    let mut by_tid: HashMap<u32, Vec<At>> = HashMap::new();
    for e in &events {
        by_tid.entry(e.tid).or_default().push(At {
            t: tl.from_monotonic(e.time_ns),
            kind: e.kind,
        });
    }
    let mut by_track: HashMap<u32, Vec<At>> = HashMap::new();
    let mut vcpu_tracks: HashMap<u8, u32> = HashMap::new();
    let mut vcpus = Vec::new();
    let mut injections = 0;
    let mut order: Vec<&TracedThread> = threads.iter().collect();
    order.sort_by_key(|t| (t.vcpu.is_none(), t.vcpu, t.tid));
    for t in order {
        let track = tl.track(t.tid, &t.name);
        let mut ev = by_tid.remove(&t.tid).unwrap_or_default();
        ev.sort_by_key(|e| e.t);
        match t.vcpu {
            Some(id) => {
                vcpu_tracks.insert(id, track);
                let tot = vcpu_track(tl, track, &ev, hw);
                vcpus.push(json!({
                    "name": t.name, "vcpu": id, "track": track,
                    "exits": tot.exits, "in_kernel": tot.in_kernel, "to_trapvisor": tot.to_trapvisor,
                    "guest_ns": tot.guest_ns, "kernel_ns": tot.kernel_ns,
                    "trapvisor_ns": tot.trapvisor_ns, "kvm_run_ns": tot.kvm_run_ns, "runs": tot.runs,
                }));
            }
            None => injections += injector_track(tl, track, &ev),
        }
        by_track.insert(track, ev);
    }
    let (kicks, irqs) = join_flows(tl, &by_track, &vcpu_tracks, notify, msix);
    let summary = json!({
        "mode": if hw { "exits" } else { "kvm_run" },
        "host_events": host.0,
        "host_lacks": host.1,
        "fired": fired.iter().map(|(n, c)| (n.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "silent": silent,
        "events": events.len(),
        "vcpus": vcpus,
        "injections": injections,
        "flows_joined": {"kicks": kicks, "interrupts": irqs},
    });
    tl.set_other("kernel", summary.clone());
    summary
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The kernel half of `trace-summary`: which events the host provides and, per vCPU, the
/// exits and the time in each half. Empty when the trace has no kernel half.
pub fn summary_text(other: &Value) -> String {
    let k = &other["kernel"];
    if !k.is_object() {
        return String::new();
    }
    let list = |v: &Value| -> String {
        let items: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if items.is_empty() {
            "-".into()
        } else {
            items.join(", ")
        }
    };
    let fired: Vec<String> = k["fired"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, c)| format!("{n} x{c}"))
        .collect();
    let mut s = format!(
        "kernel half (--trace-kernel): {} events; fired: {}; present but silent: {}; \
         absent on this host: {}\n",
        k["events"].as_u64().unwrap_or(0),
        if fired.is_empty() {
            "none".to_string()
        } else {
            fired.join(", ")
        },
        list(&k["silent"]),
        list(&k["host_lacks"])
    );
    let hw = k["mode"] == "exits";
    if !hw {
        s.push_str(
            "  no kvm_exit/kvm_entry fired: each KVM_RUN is one span, kvm_fpu load to unload (guest \
             and KVM together), named by what it returned with\n",
        );
    }
    for v in k["vcpus"].as_array().into_iter().flatten() {
        let g = |n: &str| v[n].as_u64().unwrap_or(0);
        let name = v["name"].as_str().unwrap_or("vcpu");
        if hw {
            let total = g("guest_ns") + g("kernel_ns") + g("trapvisor_ns");
            s.push_str(&format!(
                "  {name}: {} exits, {} ({:.1}%) handled in the kernel, {} went to trapvisor; \
                 time: guest {:.1} ms ({:.1}%), kernel {:.1} ms ({:.1}%), trapvisor {:.1} ms ({:.1}%)\n",
                g("exits"),
                g("in_kernel"),
                pct(g("in_kernel"), g("exits")),
                g("to_trapvisor"),
                ms(g("guest_ns")),
                pct(g("guest_ns"), total),
                ms(g("kernel_ns")),
                pct(g("kernel_ns"), total),
                ms(g("trapvisor_ns")),
                pct(g("trapvisor_ns"), total),
            ));
        } else {
            let total = g("kvm_run_ns") + g("trapvisor_ns");
            s.push_str(&format!(
                "  {name}: {} KVM_RUNs; time: in KVM_RUN (guest and KVM) {:.1} ms ({:.1}%), \
                 in trapvisor {:.1} ms ({:.1}%)\n",
                g("runs"),
                ms(g("kvm_run_ns")),
                pct(g("kvm_run_ns"), total),
                ms(g("trapvisor_ns")),
                pct(g("trapvisor_ns"), total),
            ));
        }
    }
    s.push_str(&format!(
        "  packet flows joined to the kernel: {} at the guest's kick, {} at the interrupt's \
         injection; {} injections on interrupting threads\n",
        k["flows_joined"]["kicks"].as_u64().unwrap_or(0),
        k["flows_joined"]["interrupts"].as_u64().unwrap_or(0),
        k["injections"].as_u64().unwrap_or(0),
    ));
    s
}

#[cfg(test)]
mod tests;
