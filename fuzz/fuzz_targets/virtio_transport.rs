//! The virtio-pci transport's register file driven by random sequences: common-config fields
//! (feature select/words, status, queue select/size/vector/enable/addresses), ISR, device
//! config, notify, the MSI-X table, and config space (including the PCI-config-access
//! window), with virtio-rng behind it and guest RAM in memory. Invariants: no panic; guest
//! memory is only touched through vm-memory (so never outside RAM); DRIVER_OK is never seen
//! without FEATURES_OK unless the device asks for a reset; the status reads back 0 after a
//! reset.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trapvisor::kvm::ioevent::FakeIoEvents;
use trapvisor::kvm::irq::FakeIrqRouting;
use trapvisor::pci::PciDevice;
use trapvisor::virtio::rng::Rng;
use trapvisor::virtio::transport::VirtioPciDevice;
use trapvisor::virtio::{DeviceOptions, IrqMode, NotifyMode};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const STATUS: u64 = 0x14;
const FEATURES_OK: u8 = 8;
const DRIVER_OK: u8 = 4;
const NEEDS_RESET: u8 = 0x40;

#[derive(Arbitrary, Debug)]
#[allow(dead_code)] // read through Debug when a crash is reported
enum Op {
    /// A common-config field by index (offsets 0x00..0x38), any width.
    Common { field: u8, width: u8, value: u64, write: bool },
    /// Anywhere in BAR0 (common, isr, device, notify, msix table/pba).
    Bar { offset: u16, data: Vec<u8>, write: bool },
    /// Config space, any offset and width.
    Config { offset: u16, data: Vec<u8>, write: bool },
    /// A driver-like bring-up with chosen ring addresses (often in RAM, sometimes not).
    BringUp { size: u16, desc: u32, avail: u32, used: u32 },
    Kick { queue: u8 },
    Reset,
}

const COMMON_OFFSETS: [u64; 17] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x12, 0x14, 0x15, 0x16, 0x18, 0x1a, 0x1c, 0x1e, 0x20, 0x28,
    0x30, 0x38,
];

fn width(w: u8) -> usize {
    [1, 2, 4, 8][usize::from(w % 4)]
}

fuzz_target!(|input: (bool, bool, Vec<Op>)| {
    let (exit, msi, ops) = input;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let options = DeviceOptions {
        notify: if exit { NotifyMode::Exit } else { NotifyMode::Ioeventfd },
        irq: if msi { IrqMode::Msi } else { IrqMode::Irqfd },
    };
    let mut dev = VirtioPciDevice::new(
        Box::new(Rng::new()),
        options,
        mem,
        FakeIrqRouting::new(),
        FakeIoEvents::new(),
    )
    .unwrap();
    dev.bar_mapped(0, Some(0xc000_0000));
    let status = |dev: &mut VirtioPciDevice| {
        let mut s = [0u8; 1];
        dev.bar_read(0, STATUS, &mut s);
        s[0]
    };
    for op in ops.into_iter().take(256) {
        match op {
            Op::Common { field, width: w, value, write } => {
                let off = COMMON_OFFSETS[usize::from(field) % COMMON_OFFSETS.len()];
                let n = width(w);
                if write {
                    dev.bar_write(0, off, &value.to_le_bytes()[..n]);
                } else {
                    let mut d = vec![0u8; n];
                    dev.bar_read(0, off, &mut d);
                }
            }
            Op::Bar { offset, mut data, write } => {
                data.truncate(8);
                if write {
                    dev.bar_write(0, u64::from(offset), &data);
                } else {
                    dev.bar_read(0, u64::from(offset), &mut data);
                }
            }
            Op::Config { offset, mut data, write } => {
                data.truncate(8);
                let off = usize::from(offset % 0x1000);
                if write {
                    dev.config_write(off, &data);
                } else {
                    dev.config_read(off, &mut data);
                }
            }
            Op::BringUp { size, desc, avail, used } => {
                let w = |dev: &mut VirtioPciDevice, off: u64, v: &[u8]| dev.bar_write(0, off, v);
                w(&mut dev, STATUS, &[0]);
                w(&mut dev, STATUS, &[1]);
                w(&mut dev, STATUS, &[3]);
                w(&mut dev, 0x08, &1u32.to_le_bytes());
                w(&mut dev, 0x0c, &1u32.to_le_bytes()); // VERSION_1
                w(&mut dev, STATUS, &[3 | FEATURES_OK]);
                w(&mut dev, 0x16, &0u16.to_le_bytes());
                w(&mut dev, 0x18, &size.to_le_bytes());
                w(&mut dev, 0x1a, &0u16.to_le_bytes());
                w(&mut dev, 0x20, &u64::from(desc % 0x12_0000).to_le_bytes());
                w(&mut dev, 0x28, &u64::from(avail % 0x12_0000).to_le_bytes());
                w(&mut dev, 0x30, &u64::from(used % 0x12_0000).to_le_bytes());
                w(&mut dev, 0x1c, &1u16.to_le_bytes());
                w(&mut dev, STATUS, &[3 | FEATURES_OK | DRIVER_OK]);
            }
            Op::Kick { queue } => {
                if exit {
                    dev.bar_write(0, 0x3000 + 4 * u64::from(queue % 3), &u16::from(queue).to_le_bytes());
                } else {
                    dev.queue_notified(u16::from(queue % 3));
                }
            }
            Op::Reset => {
                dev.bar_write(0, STATUS, &[0]);
                assert_eq!(status(&mut dev), 0, "status after reset");
            }
        }
        let s = status(&mut dev);
        if s & DRIVER_OK != 0 && s & NEEDS_RESET == 0 {
            assert!(s & FEATURES_OK != 0, "DRIVER_OK without FEATURES_OK: {s:#x}");
        }
    }
});
