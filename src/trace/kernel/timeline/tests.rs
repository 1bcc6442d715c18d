use std::time::{Duration, Instant};

use super::*;
use crate::trace::clock::monotonic_ns;
use crate::trace::kernel::reasons::{ExitReason, Isa};
use crate::trace::timeline::summary;

const US: u64 = 1000;

fn svm(code: u64) -> Kind {
    Kind::Exit {
        reason: ExitReason {
            isa: Isa::Svm,
            code,
        },
        info1: 0,
        info2: 0,
    }
}

#[test]
fn a_packet_flow_runs_from_the_guest_kick_to_kvm_entry() {
    let tl = Timeline::new(1000);
    // Instants and monotonic nanoseconds taken together: the two clocks of the two halves.
    let base = Instant::now();
    let mono = monotonic_ns();
    let at = |us: u64| base + Duration::from_micros(us);
    let flow = tl.new_flow();
    let worker_tid = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("net0-tv0".into())
            .spawn_scoped(s, || {
                tl.span(
                    "tv0: queue 1 ioeventfd wakeup",
                    "queue",
                    at(200),
                    at(220),
                    json!({}),
                );
                tl.flow(flow, "ioeventfd wakeup", Flow::Start, at(200));
                tl.span(
                    "msi-x vector 2: Delivered",
                    "irq",
                    at(400),
                    at(450),
                    json!({"vector": 2}),
                );
                tl.flow(flow, "interrupt", Flow::End, at(400));
                super::super::ring::gettid()
            })
            .unwrap()
            .join()
            .unwrap()
    });
    let vcpu_tid = 1_000_000;
    let ev = |tid, us: u64, kind| Event {
        tid,
        time_ns: mono + us * US,
        kind,
    };
    let events = vec![
        ev(vcpu_tid, 100, svm(0x400)),
        ev(
            vcpu_tid,
            101,
            Kind::Mmio {
                op: 2,
                len: 2,
                gpa: 0xc000_3004,
            },
        ),
        ev(vcpu_tid, 103, Kind::Entry),
        ev(vcpu_tid, 150, svm(0x78)),
        ev(
            worker_tid,
            405,
            // Another vector's injection first: not this flow's (MSI-X vector 2 carries 0x42).
            Kind::MsiSetIrq {
                address: 0xfee0_0000,
                data: 0x41,
            },
        ),
        ev(
            worker_tid,
            410,
            Kind::MsiSetIrq {
                address: 0xfee0_0000,
                data: 0x42,
            },
        ),
        ev(
            worker_tid,
            411,
            Kind::ApicAcceptIrq {
                apic: 0,
                vector: 0x42,
            },
        ),
        ev(vcpu_tid, 500, Kind::InjVirq { vector: 0x42 }),
        ev(vcpu_tid, 502, Kind::Entry),
    ];
    let threads = [
        TracedThread {
            tid: vcpu_tid,
            name: "vcpu0".into(),
            vcpu: Some(0),
        },
        TracedThread {
            tid: worker_tid,
            name: "net0-tv0".into(),
            vcpu: None,
        },
    ];
    let s = merge(
        &tl,
        events,
        &threads,
        &[0xc000_3000, 0xc000_3004],
        &[(1, 0x41), (2, 0x42)],
        (&["kvm_exit"], &["kvm_fast_mmio"]),
    );
    assert_eq!(s["mode"], "exits");
    assert_eq!(s["flows_joined"]["kicks"], 1, "{s}");
    assert_eq!(s["flows_joined"]["interrupts"], 1, "{s}");
    assert_eq!(s["vcpus"][0]["exits"], 2);
    assert_eq!(s["vcpus"][0]["in_kernel"], 2);
    assert_eq!(s["injections"], 2);
    let json = tl.to_json();
    let events = json["traceEvents"].as_array().unwrap();
    let steps: Vec<(&str, &str)> = {
        let mut v: Vec<&Value> = events.iter().filter(|e| e["id"] == flow).collect();
        v.sort_by(|a, b| {
            a["ts"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["ts"].as_f64().unwrap())
        });
        v.iter()
            .map(|e| (e["name"].as_str().unwrap(), e["ph"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(
        steps,
        [
            ("guest kick", "s"),
            ("ioeventfd wakeup", "t"),
            ("interrupt", "t"),
            ("kvm_msi_set_irq", "t"),
            ("kvm_inj_virq", "t"),
            ("kvm_entry", "f"),
        ]
    );
    for name in ["npf", "hlt", "guest", "kvm_msi_set_irq vector 0x42"] {
        assert!(
            events.iter().any(|e| e["ph"] == "X" && e["name"] == name),
            "no span {name}"
        );
    }
    let text = summary(&serde_json::from_str(&json.to_string()).unwrap(), 5).unwrap();
    assert!(
        text.contains("kernel half (--trace-kernel): 9 events"),
        "{text}"
    );
    assert!(
        text.contains("vcpu0: 2 exits, 2 (100.0%) handled in the kernel"),
        "{text}"
    );
    assert!(
        text.contains("guest kick") && text.contains("kvm_entry"),
        "{text}"
    );
    assert!(text.contains("in npf"), "{text}");
    assert!(text.contains("in the kernel:"), "{text}");
}

#[test]
fn without_kvm_exit_each_kvm_run_is_one_span() {
    let tl = Timeline::new(100);
    let mono = monotonic_ns();
    let ev = |us: u64, kind| Event {
        tid: 5,
        time_ns: mono + us * US,
        kind,
    };
    let events = vec![
        ev(10, Kind::Fpu { load: true }),
        ev(
            12,
            Kind::Pio {
                write: true,
                port: 0x514,
                size: 4,
                count: 1,
            },
        ),
        ev(18, Kind::Fpu { load: false }),
        ev(
            19,
            Kind::UserspaceExit {
                reason: 2,
                errno: 0,
            },
        ),
        ev(30, Kind::Fpu { load: true }),
        ev(35, Kind::Fpu { load: false }),
        ev(
            36,
            Kind::UserspaceExit {
                reason: 10,
                errno: -4,
            },
        ),
    ];
    let threads = [TracedThread {
        tid: 5,
        name: "vcpu0".into(),
        vcpu: Some(0),
    }];
    let s = merge(
        &tl,
        events,
        &threads,
        &[],
        &[],
        (&["kvm_fpu"], &["kvm_exit", "kvm_entry"]),
    );
    assert_eq!(s["mode"], "kvm_run");
    assert_eq!(s["vcpus"][0]["runs"], 2);
    assert_eq!(s["vcpus"][0]["kvm_run_ns"], 13 * US);
    assert_eq!(s["vcpus"][0]["trapvisor_ns"], 11 * US);
    let json = tl.to_json();
    let names: Vec<&str> = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["KVM_RUN -> IO", "KVM_RUN -> restart (EINTR)"]);
    let text = summary_text(&json["otherData"]);
    assert!(
        text.contains("absent on this host: kvm_exit, kvm_entry"),
        "{text}"
    );
    assert!(
        text.contains("fired: kvm_fpu x4, kvm_pio x1, kvm_userspace_exit x2"),
        "{text}"
    );
    assert!(text.contains("vcpu0: 2 KVM_RUNs"), "{text}");
    assert!(summary_text(&json!({})).is_empty());
}
