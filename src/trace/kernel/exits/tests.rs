use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::testdev::TestDev;
use crate::trace::kernel::reasons::Isa;

fn buses() -> (Bus, Bus) {
    let pio = Bus::new(BusKind::Pio);
    let mmio = Bus::new(BusKind::Mmio);
    let dev = Arc::new(Mutex::new(TestDev::new(Box::new(std::io::sink()))));
    pio.insert(0x510, 0x10, "testdev", "", dev.clone()).unwrap();
    mmio.insert(0xf000_0000, 0x1000, "testdev", "", dev)
        .unwrap();
    (pio, mmio)
}

fn ev(tid: u32, t: u64, kind: Kind) -> Event {
    Event {
        tid,
        time_ns: t,
        kind,
    }
}

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
fn hardware_exits_split_into_kernel_and_userspace_with_their_places() {
    let (pio, mmio) = buses();
    let mut k = KernelExits::default();
    let pio_out = Kind::Pio {
        write: true,
        port: 0x514,
        size: 4,
        count: 1,
    };
    let events = [
        // npf on an ioeventfd address: handled in the kernel, 2 µs.
        ev(1, 1_000, Kind::Fpu { load: true }),
        ev(1, 2_000, svm(0x400)),
        ev(
            1,
            2_500,
            Kind::Mmio {
                op: 2,
                len: 4,
                gpa: 0xc000_3000,
            },
        ),
        ev(1, 4_000, Kind::Entry),
        // ioio to the test device: sent to trapvisor, 10 µs exit to entry.
        ev(1, 5_000, svm(0x7b)),
        ev(1, 5_100, pio_out),
        ev(1, 6_000, Kind::Fpu { load: false }),
        ev(
            1,
            6_100,
            Kind::UserspaceExit {
                reason: 2,
                errno: 0,
            },
        ),
        ev(1, 14_000, Kind::Fpu { load: true }),
        ev(1, 15_000, Kind::Entry),
        // hlt and an external interrupt, both in the kernel, on another vCPU.
        ev(2, 1_000, svm(0x78)),
        ev(2, 9_000, Kind::Entry),
        ev(2, 10_000, svm(0x60)),
        ev(2, 10_500, Kind::Entry),
        // An entry without an exit (the trace began inside KVM_RUN) counts nothing.
        ev(3, 1, Kind::Entry),
    ];
    for e in &events {
        k.vcpu_event(e);
    }
    assert!(k.has_hardware_exits());
    let npf = &k.reasons[&ReasonKey::Hardware(ExitReason {
        isa: Isa::Svm,
        code: 0x400,
    })];
    assert_eq!(
        (npf.all.count, npf.in_kernel, npf.to_userspace()),
        (1, 1, 0)
    );
    let io = &k.reasons[&ReasonKey::Hardware(ExitReason {
        isa: Isa::Svm,
        code: 0x7b,
    })];
    assert_eq!((io.all.count, io.in_kernel, io.to_userspace()), (1, 0, 1));
    assert!(io
        .all
        .latency_ns
        .equivalent(io.all.latency_ns.max(), 10_000));
    let j = k.reasons_json(&pio, &mmio);
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{j}");
    let io_row = rows.iter().find(|r| r["reason"] == "ioio").unwrap();
    assert_eq!(io_row["places"][0]["where"], "pio testdev sink", "{j}");
    assert_eq!(io_row["isa"], "svm");
    assert!(rows
        .iter()
        .any(|r| r["reason"] == "hlt" && r["in_kernel"] == 1));
    assert_eq!(k.seen["kvm_exit"], 4);
    // The brackets are kept too, but the hardware reasons are what the table shows.
    assert!(k.reasons.contains_key(&ReasonKey::Run("IO".into())));
    assert!(rows
        .iter()
        .all(|r| !r["reason"].as_str().unwrap().starts_with("KVM_RUN")));
}

#[test]
fn without_kvm_exit_each_kvm_run_is_bracketed() {
    let (pio, mmio) = buses();
    let mut k = KernelExits::default();
    let out = |port| Kind::Pio {
        write: true,
        port,
        size: 1,
        count: 1,
    };
    for e in [
        ev(7, 0, Kind::Fpu { load: true }),
        // The PIT (in the kernel), then the test device (to userspace).
        ev(7, 1_000, out(0x43)),
        ev(7, 2_000, out(0x514)),
        ev(7, 3_000, Kind::Fpu { load: false }),
        ev(
            7,
            3_500,
            Kind::UserspaceExit {
                reason: 2,
                errno: 0,
            },
        ),
        ev(7, 9_000, Kind::Fpu { load: true }),
        ev(
            7,
            10_000,
            Kind::Mmio {
                op: 2,
                len: 4,
                gpa: 0xf000_0004,
            },
        ),
        ev(
            7,
            12_000,
            Kind::UserspaceExit {
                reason: 6,
                errno: 0,
            },
        ),
        ev(7, 13_000, Kind::Fpu { load: true }),
        ev(
            7,
            14_000,
            Kind::UserspaceExit {
                reason: 10,
                errno: -4,
            },
        ),
    ] {
        k.vcpu_event(&e);
    }
    assert!(!k.has_hardware_exits());
    let j = k.reasons_json(&pio, &mmio);
    let rows = j.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "KVM_RUN -> IO",
            "KVM_RUN -> MMIO",
            "KVM_RUN -> restart (EINTR)"
        ]
    );
    assert_eq!(rows[0]["places"][0]["where"], "pio testdev sink");
    assert!(
        (rows[0]["p50_us"].as_f64().unwrap() - 3.5).abs() < 0.1,
        "{j}"
    );
    assert_eq!(rows[1]["places"][0]["where"], "mmio testdev sink");
    // Two addresses of one region are one row.
    k.vcpu_event(&ev(7, 20_000, Kind::Fpu { load: true }));
    k.vcpu_event(&ev(
        7,
        20_500,
        Kind::Mmio {
            op: 2,
            len: 4,
            gpa: 0xf000_0010,
        },
    ));
    k.vcpu_event(&ev(
        7,
        21_000,
        Kind::UserspaceExit {
            reason: 6,
            errno: 0,
        },
    ));
    k.vcpu_event(&ev(7, 22_000, Kind::Fpu { load: true }));
    k.vcpu_event(&ev(
        7,
        22_500,
        Kind::Mmio {
            op: 2,
            len: 4,
            gpa: 0xf000_000c,
        },
    ));
    k.vcpu_event(&ev(
        7,
        23_000,
        Kind::UserspaceExit {
            reason: 6,
            errno: 0,
        },
    ));
    let j = k.reasons_json(&pio, &mmio);
    let m = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "KVM_RUN -> MMIO")
        .unwrap();
    let reserved: Vec<&Value> = m["places"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["where"] == "mmio testdev reserved")
        .collect();
    assert_eq!(reserved.len(), 1, "{m}");
    assert_eq!(reserved[0]["count"], 2, "{m}");
    let ka = k.kernel_accesses_json(&pio, &mmio);
    assert_eq!(ka[0]["where"], "pio 0x43 (no trapvisor device)", "{ka}");
    assert_eq!(ka[0]["count"], 1);
    assert_eq!(kvm_exit_name(2), "IO");
    assert_eq!(kvm_exit_name(999), "EXIT_999");
}

#[test]
fn reads_are_named_by_their_completion_and_not_counted_twice() {
    let (pio, mmio) = buses();
    let mut k = KernelExits::default();
    let read = |port| Kind::Pio {
        write: false,
        port,
        size: 4,
        count: 1,
    };
    for e in [
        // A port read goes to userspace with no event, and is reported when completed.
        ev(7, 0, Kind::Fpu { load: true }),
        ev(
            7,
            2_000,
            Kind::UserspaceExit {
                reason: 2,
                errno: 0,
            },
        ),
        ev(7, 5_000, Kind::Fpu { load: true }),
        ev(7, 5_100, read(0x514)),
        // An MMIO read: unsatisfied before the return, read when completed.
        ev(
            7,
            6_000,
            Kind::Mmio {
                op: 0,
                len: 4,
                gpa: 0xf000_0004,
            },
        ),
        ev(
            7,
            7_000,
            Kind::UserspaceExit {
                reason: 6,
                errno: 0,
            },
        ),
        ev(7, 9_000, Kind::Fpu { load: true }),
        ev(
            7,
            9_100,
            Kind::Mmio {
                op: 1,
                len: 4,
                gpa: 0xf000_0004,
            },
        ),
        // A port read with no completion before the next return: no place.
        ev(
            7,
            9_500,
            Kind::UserspaceExit {
                reason: 2,
                errno: 0,
            },
        ),
        ev(7, 9_600, Kind::Fpu { load: true }),
        ev(
            7,
            9_700,
            Kind::UserspaceExit {
                reason: 10,
                errno: -4,
            },
        ),
    ] {
        k.vcpu_event(&e);
    }
    assert!(k.kernel_accesses.is_empty(), "{:?}", k.kernel_accesses);
    let j = k.reasons_json(&pio, &mmio);
    let io = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "KVM_RUN -> IO")
        .unwrap();
    assert_eq!(io["count"], 2);
    let places: Vec<&str> = io["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["where"].as_str().unwrap())
        .collect();
    assert!(
        places.contains(&"pio testdev sink") && places.contains(&"(no access reported)"),
        "{j}"
    );
    let m = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "KVM_RUN -> MMIO")
        .unwrap();
    assert_eq!(m["places"][0]["where"], "mmio testdev sink");
}

#[test]
fn a_loss_forgets_the_open_exit_instead_of_pairing_across_it() {
    let mut k = KernelExits::default();
    let intr = ReasonKey::Hardware(ExitReason {
        isa: Isa::Svm,
        code: 0x60,
    });
    // An external interrupt whose entry was dropped with the records after it; the next
    // records are a return to userspace and an entry: without the loss mark they would make
    // the interrupt look sent to trapvisor.
    k.vcpu_event(&ev(1, 1_000, svm(0x60)));
    k.lost(1);
    k.vcpu_event(&ev(
        1,
        9_000,
        Kind::UserspaceExit {
            reason: 2,
            errno: 0,
        },
    ));
    k.vcpu_event(&ev(1, 10_000, Kind::Entry));
    assert!(!k.reasons.contains_key(&intr));
    // After the loss, pairs count again; a loss on an untraced thread changes nothing.
    k.lost(99);
    k.vcpu_event(&ev(1, 11_000, svm(0x60)));
    k.vcpu_event(&ev(1, 11_500, Kind::Entry));
    let r = &k.reasons[&intr];
    assert_eq!((r.all.count, r.in_kernel, r.to_userspace()), (1, 1, 0));
}
