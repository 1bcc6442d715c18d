//! PCI config space (any width, any offset, BAR sizing and programming) and the MSI-X table,
//! PBA and message control, in random order. Invariants: no panic; identity registers never
//! change; a BAR's address is always aligned to its size; a fired vector is delivered exactly
//! when MSI-X is enabled and neither the function nor the vector is masked, and is otherwise
//! pending (or dropped when MSI-X is off); a pending vector is delivered once unmasked.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trapvisor::kvm::irq::{IrqError, MsiMessage};
use trapvisor::pci::config::{BarInfo, BarKind, PciConfig, PciHeader};
use trapvisor::pci::msix::{Fired, MsiDelivery, Msix};

/// Counts deliveries per vector.
struct Count(Arc<Mutex<Vec<u64>>>);

impl MsiDelivery for Count {
    fn arm(&mut self, _: u16, _: MsiMessage) -> Result<(), IrqError> {
        Ok(())
    }
    fn disarm(&mut self, _: u16) -> Result<(), IrqError> {
        Ok(())
    }
    fn deliver(&mut self, vector: u16, _: MsiMessage) -> Result<(), IrqError> {
        self.0.lock().unwrap()[usize::from(vector)] += 1;
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
#[allow(dead_code)] // read through Debug when a crash is reported
enum Op {
    CfgRead { offset: u16, width: u8 },
    CfgWrite { offset: u16, data: Vec<u8> },
    /// The BAR sizing protocol on a BAR register, then an address.
    Size { bar: u8, addr: u32 },
    TableWrite { offset: u16, data: Vec<u8> },
    TableRead { offset: u16, width: u8 },
    PbaRead { offset: u16, width: u8 },
    Control { enable: bool, mask: bool },
    Fire { vector: u8 },
}

const NR_VECTORS: u16 = 4;

fuzz_target!(|ops: Vec<Op>| {
    let header = PciHeader {
        vendor_id: 0x1af4,
        device_id: 0x1041,
        revision_id: 1,
        class: 2,
        ..Default::default()
    };
    let mut cfg = PciConfig::new(&header);
    let bars = [
        (0usize, BarInfo { kind: BarKind::Mem32, size: 0x8000, prefetchable: false }),
        (2usize, BarInfo { kind: BarKind::Mem64, size: 0x4000, prefetchable: true }),
    ];
    for (i, b) in bars {
        cfg.add_bar(i, b).unwrap();
    }
    let counts = Arc::new(Mutex::new(vec![0u64; usize::from(NR_VECTORS)]));
    let mut msix = Msix::new(NR_VECTORS, Box::new(Count(counts.clone())));
    let (cap, mask) = msix.capability((0, 0x4000), (0, 0x5000));
    cfg.add_capability(&cap, &mask).unwrap();
    msix.set_in_use(&[0, 1, 2, 3]);
    let (mut enabled, mut fmask) = (false, false);

    for op in ops.into_iter().take(512) {
        match op {
            Op::CfgRead { offset, width } => {
                let mut d = vec![0u8; [1, 2, 4, 8][usize::from(width % 4)]];
                cfg.read(usize::from(offset), &mut d);
            }
            Op::CfgWrite { offset, mut data } => {
                data.truncate(8);
                cfg.write(usize::from(offset), &data);
            }
            Op::Size { bar, addr } => {
                let off = 0x10 + 4 * usize::from(bar % 6);
                cfg.write(off, &u32::MAX.to_le_bytes());
                let mut d = [0u8; 4];
                cfg.read(off, &mut d);
                cfg.write(off, &addr.to_le_bytes());
            }
            Op::TableWrite { offset, mut data } => {
                data.truncate(8);
                msix.write_table(u64::from(offset % 0x80), &data);
            }
            Op::TableRead { offset, width } => {
                let mut d = vec![0u8; [1, 2, 4, 8][usize::from(width % 4)]];
                msix.read_table(u64::from(offset % 0x80), &mut d);
            }
            Op::PbaRead { offset, width } => {
                let mut d = vec![0u8; [1, 2, 4, 8][usize::from(width % 4)]];
                msix.read_pba(u64::from(offset % 0x10), &mut d);
            }
            Op::Control { enable, mask } => {
                let before: Vec<bool> = (0..NR_VECTORS).map(|v| msix.pending(v)).collect();
                let delivered_before = counts.lock().unwrap().clone();
                msix.set_control(
                    (u16::from(enable) << 15) | (u16::from(mask) << 14) | (NR_VECTORS - 1),
                );
                enabled = enable;
                fmask = mask;
                // Unmasking delivers what was pending on vectors now open.
                for v in 0..NR_VECTORS {
                    let vi = usize::from(v);
                    if before[vi] && !msix.pending(v) {
                        assert!(counts.lock().unwrap()[vi] > delivered_before[vi]);
                    }
                }
            }
            Op::Fire { vector } => {
                let v = u16::from(vector % 6);
                let before = counts.lock().unwrap().get(usize::from(v)).copied();
                let fired = msix.fire(v);
                if v >= NR_VECTORS || !enabled {
                    assert_eq!(fired, Fired::Dropped, "vector {v}");
                    continue;
                }
                let after = counts.lock().unwrap()[usize::from(v)];
                match fired {
                    Fired::Delivered => assert_eq!(after, before.unwrap() + 1),
                    Fired::Pending => {
                        assert!(msix.pending(v));
                        assert_eq!(after, before.unwrap());
                    }
                    other => panic!("vector {v} fired as {other:?}"),
                }
                if fmask {
                    assert_eq!(fired, Fired::Pending);
                }
            }
        }
        assert_eq!(cfg.vendor_id(), 0x1af4);
        assert_eq!(cfg.device_id(), 0x1041);
        for (i, b) in bars {
            let a = cfg.bar_addr(i).unwrap();
            assert_eq!(a % b.size, 0, "bar{i} at {a:#x}");
        }
    }
});
