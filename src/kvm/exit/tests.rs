use std::sync::{Arc, Mutex};

use super::*;
use crate::bus::{BusDevice, BusKind, SharedDevice};
use crate::devices::testdev::DebugExit;

/// Remembers every access as (offset, bytes).
#[derive(Default)]
struct Log(Vec<(u64, Vec<u8>)>);

impl BusDevice for Log {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
        self.0.push((offset, vec![]));
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        self.0.push((offset, data.to_vec()));
        DeviceEvent::None
    }
}

struct Fixture {
    pio: Bus,
    mmio: Bus,
    log: Arc<Mutex<Log>>,
}

impl Fixture {
    fn new() -> Self {
        let pio = Bus::new(BusKind::Pio);
        let mmio = Bus::new(BusKind::Mmio);
        let log = Arc::new(Mutex::new(Log::default()));
        let dev: SharedDevice = log.clone();
        pio.insert(0x3f8, 8, "serial0", "", dev.clone()).unwrap();
        mmio.insert(0xf000_0000, 0x1000, "testdev", "", dev)
            .unwrap();
        pio.insert(0xf4, 4, "debug-exit", "", Arc::new(Mutex::new(DebugExit)))
            .unwrap();
        Fixture { pio, mmio, log }
    }
    fn run(&self, exit: Exit<'_>) -> ExitAction {
        self.handle(exit).action
    }
    fn handle(&self, exit: Exit<'_>) -> Handled {
        handle_exit(exit, &Buses::new(&self.pio, &self.mmio))
    }
    fn log(&self) -> Vec<(u64, Vec<u8>)> {
        self.log.lock().unwrap().0.clone()
    }
}

#[test]
fn port_out_reaches_the_owner_with_offset() {
    let f = Fixture::new();
    let a = f.run(Exit::IoOut {
        port: 0x3fd,
        size: 1,
        data: b"x",
    });
    assert_eq!(a, ExitAction::Continue);
    assert_eq!(f.log(), vec![(5, vec![b'x'])]);
}

#[test]
fn string_port_io_is_replayed_per_element() {
    let f = Fixture::new();
    // `rep outsw` of three words.
    f.run(Exit::IoOut {
        port: 0x3f8,
        size: 2,
        data: &[1, 2, 3, 4, 5, 6],
    });
    assert_eq!(
        f.log(),
        vec![(0, vec![1, 2]), (0, vec![3, 4]), (0, vec![5, 6])]
    );
    let mut buf = [0u8; 4];
    f.run(Exit::IoIn {
        port: 0x3f8,
        size: 1,
        data: &mut buf,
    });
    assert_eq!(buf, [0x5a; 4]);
    assert_eq!(f.log().len(), 3 + 4);
}

#[test]
fn port_in_fills_data() {
    let f = Fixture::new();
    let mut data = [0u8; 1];
    assert_eq!(
        f.run(Exit::IoIn {
            port: 0x3f9,
            size: 1,
            data: &mut data
        }),
        ExitAction::Continue
    );
    assert_eq!(data, [0x5a]);
}

#[test]
fn unowned_port_and_mmio_read_all_ones_and_continue() {
    let f = Fixture::new();
    let mut data = [0u8; 4];
    assert_eq!(
        f.run(Exit::IoIn {
            port: 0x80,
            size: 4,
            data: &mut data
        }),
        ExitAction::Continue
    );
    assert_eq!(data, [0xff; 4]);
    let mut data = [0u8; 8];
    assert_eq!(
        f.run(Exit::MmioRead {
            addr: 0x1234_5678,
            data: &mut data
        }),
        ExitAction::Continue
    );
    assert_eq!(data, [0xff; 8]);
    assert_eq!(
        f.run(Exit::MmioWrite {
            addr: 0x1234_5678,
            data: &[1, 2]
        }),
        ExitAction::Continue
    );
    assert_eq!(f.pio.unowned_counts(), vec![(0x80, 1)]);
    assert_eq!(f.mmio.unowned_counts(), vec![(0x1234_5678, 2)]);
}

#[test]
fn mmio_dispatch_uses_offset_inside_range() {
    let f = Fixture::new();
    f.run(Exit::MmioWrite {
        addr: 0xf000_0004,
        data: &[1, 0, 0, 0],
    });
    let mut d = [0u8; 2];
    f.run(Exit::MmioRead {
        addr: 0xf000_0ffe,
        data: &mut d,
    });
    assert_eq!(f.log(), vec![(4, vec![1, 0, 0, 0]), (0xffe, vec![])]);
}

#[test]
fn debug_exit_stops_with_the_code() {
    let f = Fixture::new();
    assert_eq!(
        f.run(Exit::IoOut {
            port: 0xf4,
            size: 1,
            data: &[0]
        }),
        ExitAction::Stop(StopReason::DebugExit(0))
    );
    assert_eq!(
        f.run(Exit::IoOut {
            port: 0xf4,
            size: 4,
            data: &[3, 0, 0, 0]
        }),
        ExitAction::Stop(StopReason::DebugExit(3))
    );
}

#[test]
fn fatal_exits_stop_with_a_reason() {
    let f = Fixture::new();
    assert_eq!(
        f.run(Exit::Shutdown),
        ExitAction::Stop(StopReason::TripleFault)
    );
    match f.run(Exit::InternalError { suberror: 1 }) {
        ExitAction::Stop(StopReason::Fatal(why)) => {
            assert!(
                why.contains("INTERNAL_ERROR") && why.contains("emulation failure"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    match f.run(Exit::FailEntry {
        reason: 0x80000021,
        cpu: 1,
    }) {
        ExitAction::Stop(StopReason::Fatal(why)) => assert!(why.contains("0x80000021"), "{why}"),
        other => panic!("{other:?}"),
    }
    match f.run(Exit::Other("KVM_EXIT_DCR".into())) {
        ExitAction::Stop(StopReason::Fatal(why)) => assert!(why.contains("KVM_EXIT_DCR")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn system_events_map_to_stop_reasons() {
    let f = Fixture::new();
    let cases = [
        (
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN,
            StopReason::Poweroff,
        ),
        (kvm_bindings::KVM_SYSTEM_EVENT_RESET, StopReason::Reset),
        (kvm_bindings::KVM_SYSTEM_EVENT_CRASH, StopReason::GuestCrash),
    ];
    for (kind, reason) in cases {
        assert_eq!(
            f.run(Exit::SystemEvent { kind, flags: 0 }),
            ExitAction::Stop(reason)
        );
    }
    assert!(matches!(
        f.run(Exit::SystemEvent { kind: 99, flags: 0 }),
        ExitAction::Stop(StopReason::Fatal(_))
    ));
    // PSCI SYSTEM_RESET2 (arm64 Linux's warm reset: its panic reboot with reboot=panic_warm)
    // is a failure without a register report; other flags do not change a reset.
    let reset = |flags| {
        f.run(Exit::SystemEvent {
            kind: kvm_bindings::KVM_SYSTEM_EVENT_RESET,
            flags,
        })
    };
    assert_eq!(reset(1), ExitAction::Stop(StopReason::PanicReset));
    assert_eq!(reset(2), ExitAction::Stop(StopReason::Reset));
    assert!(StopReason::PanicReset.is_failure());
    assert!(!StopReason::PanicReset.wants_vcpu_report());
    assert!(StopReason::PanicReset
        .to_string()
        .contains("reboot=panic_warm"));
}

#[test]
fn kicks_continue() {
    let f = Fixture::new();
    assert_eq!(f.run(Exit::Interrupted), ExitAction::Continue);
}

#[test]
fn odd_sizes_never_panic() {
    let f = Fixture::new();
    // A size that does not divide the data, and size 0: one access of the whole buffer.
    f.run(Exit::IoOut {
        port: 0x3f8,
        size: 4,
        data: &[1, 2, 3],
    });
    let mut empty: [u8; 0] = [];
    f.run(Exit::IoIn {
        port: 0x3f8,
        size: 0,
        data: &mut empty,
    });
    f.run(Exit::MmioWrite {
        addr: u64::MAX,
        data: &[1, 2, 3, 4, 5, 6, 7, 8],
    });
    assert_eq!(f.log()[0], (0, vec![1, 2, 3]));
}

#[test]
fn exits_are_attributed_to_bus_device_and_region() {
    let f = Fixture::new();
    let h = f.handle(Exit::IoOut {
        port: 0xf4,
        size: 1,
        data: &[0],
    });
    assert_eq!(h.kind, ExitKind::IoOut);
    let t = h.target.unwrap();
    assert_eq!(t.bus, BusKind::Pio);
    let hit = t.hit.unwrap();
    assert_eq!(f.pio.device_name(hit.id), "debug-exit");
    assert_eq!(hit.region, "exit");

    let mut d = [0u8; 4];
    let h = f.handle(Exit::MmioRead {
        addr: 0xf000_0004,
        data: &mut d,
    });
    assert_eq!(h.kind, ExitKind::MmioRead);
    let t = h.target.unwrap();
    assert_eq!(t.bus, BusKind::Mmio);
    assert_eq!(f.mmio.device_name(t.hit.unwrap().id), "testdev");

    // Unowned: the address space is known, the device is not.
    let h = f.handle(Exit::MmioWrite {
        addr: 0x10,
        data: &[1],
    });
    assert_eq!(
        h.target,
        Some(Target {
            bus: BusKind::Mmio,
            hit: None
        })
    );
    let h = f.handle(Exit::Interrupted);
    assert_eq!((h.kind, h.target), (ExitKind::Interrupted, None));
}

/// Fuzz finding (bus_dispatch): an empty port read with a non-zero size divided by zero.
#[test]
fn empty_port_access_with_a_size_is_harmless() {
    let f = Fixture::new();
    let mut empty: [u8; 0] = [];
    let h = f.handle(Exit::IoIn {
        port: 0x3f8,
        size: 1,
        data: &mut empty,
    });
    assert_eq!(h.action, ExitAction::Continue);
    // An empty write carries nothing: no device sees it.
    assert_eq!(
        f.run(Exit::IoOut {
            port: 0xf4,
            size: 4,
            data: &[]
        }),
        ExitAction::Continue
    );
}

#[test]
fn a_pvpanic_panicked_write_stops_the_vm_as_a_guest_panic() {
    use crate::devices::pvpanic::{PvPanic, PVPANIC_CRASH_LOADED, PVPANIC_PANICKED};
    let f = Fixture::new();
    f.pio
        .insert(
            0x505,
            1,
            "pvpanic",
            "",
            Arc::new(Mutex::new(PvPanic::default())),
        )
        .unwrap();
    let mut events = [0u8];
    let io_in = Exit::IoIn {
        port: 0x505,
        size: 1,
        data: &mut events,
    };
    assert_eq!(f.run(io_in), ExitAction::Continue);
    assert_eq!(events, [3]);
    let out = |v: &'static [u8]| Exit::IoOut {
        port: 0x505,
        size: 1,
        data: v,
    };
    assert_eq!(f.run(out(&[PVPANIC_CRASH_LOADED])), ExitAction::Continue);
    let stop = f.run(out(&[PVPANIC_PANICKED]));
    assert_eq!(stop, ExitAction::Stop(StopReason::GuestPanic));
    assert!(StopReason::GuestPanic.is_failure());
    assert!(!StopReason::GuestPanic.wants_vcpu_report());
    assert!(StopReason::TripleFault.wants_vcpu_report());
    assert_eq!(
        StopReason::GuestPanic.to_string(),
        "guest kernel panicked (pvpanic)"
    );
}
