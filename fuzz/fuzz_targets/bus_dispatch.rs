//! Random port and MMIO accesses, through the exit dispatcher, against the full platform device
//! set of the architecture it is built for (`arch::register_devices`). Invariants: no panic; an
//! access nobody owns reads as all-ones and stops nothing; a write to an exit register (the
//! debug-exit port, the test device's EXIT) stops with exactly the written value; the SINK
//! count equals the SINK writes that were dispatched.
#![no_main]

use std::io::sink;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trapvisor::bus::{Bus, BusError, BusKind};
use trapvisor::devices::testdev::SINK_OFFSET;
use trapvisor::kvm::exit::{handle_exit, Buses, Exit, ExitAction, StopReason};

#[derive(Debug, Clone, Copy)]
struct NoIrq;
impl vm_superio::Trigger for NoIrq {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
#[allow(dead_code)] // the fields are read through Debug when a crash is reported
enum Access {
    In { port: u16, size: u8, count: u8 },
    Out { port: u16, size: u8, data: Vec<u8> },
    Read { addr: u64, len: u8 },
    Write { addr: u64, data: Vec<u8> },
    /// Aim at the interesting places more often than chance would.
    Near { which: u8, offset: u8, data: Vec<u8>, write: bool },
}

fuzz_target!(|accesses: Vec<Access>| {
    let pio = Bus::new(BusKind::Pio);
    let mmio = Bus::new(BusKind::Mmio);
    let devs = trapvisor::arch::register_devices(
        &pio,
        &mmio,
        |_| Ok::<_, BusError>(NoIrq),
        Box::new(sink()),
        Box::new(sink()),
        true, // the legacy devices too: the larger set
    )
    .unwrap();
    let buses = Buses::new(&pio, &mmio);
    // Every registered range is an interesting place; the test device's SINK is counted.
    let bases: Vec<(bool, u64)> = pio
        .map()
        .into_iter()
        .map(|e| (true, e.base))
        .chain(mmio.map().into_iter().map(|e| (false, e.base)))
        .collect();
    let sinks: Vec<(bool, u64)> = pio
        .map()
        .into_iter()
        .map(|e| (true, e))
        .chain(mmio.map().into_iter().map(|e| (false, e)))
        .filter(|(_, e)| e.device == "testdev")
        .map(|(p, e)| (p, e.base + SINK_OFFSET))
        .collect();
    let mut sink_writes = 0u64;
    for a in accesses.into_iter().take(256) {
        let (is_pio, addr, write, mut data) = match a {
            Access::In { port, size, count } => {
                let size = [1usize, 2, 4][size as usize % 3];
                (true, port as u64, false, vec![0u8; size * (count as usize % 8 + 1)])
            }
            Access::Out { port, size: _, data } => (true, port as u64, true, data),
            Access::Read { addr, len } => (false, addr, false, vec![0u8; len as usize % 9]),
            Access::Write { addr, data } => (false, addr, true, data),
            Access::Near { which, offset, data, write } => {
                let (p, base) = bases[which as usize % bases.len()];
                (p, base + u64::from(offset % 16), write, data)
            }
        };
        data.truncate(8);
        if write && data.is_empty() {
            data.push(0);
        }
        if is_pio && write {
            // Port writes are 1, 2 or 4 bytes wide, as KVM reports them.
            let size = match data.len() {
                0 | 1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
            data.resize(size, 0);
        }
        let exit = match (is_pio, write) {
            (true, false) => Exit::IoIn { port: addr as u16, size: data.len().min(4).max(1), data: &mut data },
            (true, true) => Exit::IoOut { port: addr as u16, size: data.len(), data: &data },
            (false, false) => Exit::MmioRead { addr, data: &mut data },
            (false, true) => Exit::MmioWrite { addr, data: &data },
        };
        let addr = if is_pio { addr as u16 as u64 } else { addr };
        let handled = handle_exit(exit, &buses);
        if write && sinks.contains(&(is_pio, addr)) {
            sink_writes += 1;
        }
        let owned = handled.target.and_then(|t| t.hit).is_some();
        if !owned {
            assert_eq!(handled.action, ExitAction::Continue, "unowned access stopped the VM");
            if !write {
                assert!(data.iter().all(|&b| b == 0xff), "unowned read gave {data:?}");
            }
        }
        let region = handled.target.and_then(|t| t.hit).map(|h| h.region);
        if write && region == Some("exit") {
            let mut v = [0u8; 4];
            let n = data.len().min(4);
            v[..n].copy_from_slice(&data[..n]);
            assert_eq!(
                handled.action,
                ExitAction::Stop(StopReason::DebugExit(u32::from_le_bytes(v)))
            );
        }
    }
    assert_eq!(devs.testdev.lock().unwrap().sink_count(), sink_writes);
});
