//! PCI config space and BAR programming through the real PCI root: conf1 (address and data
//! ports, any width and offset), ECAM (any offset, other buses included), the BAR sizing
//! protocol, BAR moves to interesting places (the windows, guest RAM, the ECAM window, the
//! LAPIC/IOAPIC, another device's BAR, wrapping addresses), memory-decode toggles, and MMIO
//! accesses to wherever the BARs are, on a bus 0 with the host bridge and two virtio-pci
//! (rng) functions.
//!
//! Invariants after every step: no panic; a mapped BAR is aligned to its size, decodes only
//! with memory decode on, overlaps no reserved range (RAM, ECAM, IOAPIC, LAPIC/MSI, KVM's
//! pages) and no other mapped BAR, and answers on the MMIO bus; every MMIO registration lies
//! inside a mapped BAR (nothing stale left after moves); each function's capability list
//! (walked from 0x34) stays what it was, inside the standard space, dword-aligned and
//! acyclic; vendor and device IDs never change.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trapvisor::bus::{Bus, BusDevice, BusKind};
use trapvisor::kvm::ioevent::FakeIoEvents;
use trapvisor::kvm::irq::FakeIrqRouting;
use trapvisor::pci::root::{Conf1, Ecam, PciRoot};
use trapvisor::pci::SharedPciDevice;
use trapvisor::virtio::rng::Rng;
use trapvisor::virtio::transport::VirtioPciDevice;
use trapvisor::virtio::DeviceOptions;
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Arbitrary, Debug)]
enum Op {
    Conf1 {
        offset: u8,
        width: u8,
        value: u32,
        write: bool,
    },
    Ecam {
        offset: u32,
        width: u8,
        value: u32,
        write: bool,
    },
    /// Write all-ones to a BAR register, read it back, write `value`.
    Size {
        dev: u8,
        bar: u8,
        value: u32,
    },
    /// Program a BAR (both halves of a 64-bit one) with a chosen kind of address.
    Move {
        dev: u8,
        bar: u8,
        place: u8,
        offset: u64,
    },
    Command {
        dev: u8,
        value: u16,
    },
    /// An access at a mapped BAR (or near it).
    Mmio {
        dev: u8,
        bar: u8,
        offset: u16,
        width: u8,
        write: bool,
    },
}

fn width(w: u8) -> usize {
    [1, 2, 4, 8][usize::from(w % 4)]
}

const DEVS: u8 = 3;

struct Rig {
    mem_size: u64,
    mmio: Arc<Bus>,
    root: Arc<PciRoot>,
    conf1: Conf1,
    ecam: Ecam,
    devs: Vec<SharedPciDevice>,
    caps: Vec<Vec<(usize, u8)>>,
    ids: Vec<[u8; 4]>,
}

impl Rig {
    fn cfg_u32(&self, dev: u8, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.root.config_read(dev, 0, off, &mut b);
        u32::from_le_bytes(b)
    }

    /// The capability list: (offset, id) from 0x34 on.
    fn caps(&self, dev: u8) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        self.root.config_read(dev, 0, 0x34, &mut b);
        let mut ptr = usize::from(b[0]);
        while ptr != 0 {
            assert!(
                out.len() < 48,
                "device {dev}: capability list loops: {out:?}"
            );
            assert!(
                (0x40..0x100).contains(&ptr) && ptr % 4 == 0,
                "device {dev}: capability at {ptr:#x}"
            );
            let mut h = [0u8; 2];
            self.root.config_read(dev, 0, ptr, &mut h);
            out.push((ptr, h[0]));
            ptr = usize::from(h[1]);
        }
        out
    }

    /// Guest-physical ranges no BAR may take.
    fn reserved(&self) -> Vec<(u64, u64)> {
        let r: Vec<(u64, u64)> = self
            .root
            .layout()
            .reserved
            .iter()
            .map(|r| (r.start, r.end))
            .collect();
        r
    }

    /// Every mapped BAR: (device, bar, address, size).
    fn mapped(&self) -> Vec<(u8, usize, u64, u64)> {
        let mut v = Vec::new();
        for (i, d) in self.devs.iter().enumerate() {
            let dev = i as u8;
            for bar in 0..6 {
                if let Some(addr) = self.root.bar_mapping(dev, bar) {
                    let d = d.lock().unwrap();
                    let size = d.config().bar(bar).expect("a mapped BAR exists").size;
                    assert!(
                        d.config().memory_enabled(),
                        "device {dev} BAR{bar} decodes with memory off"
                    );
                    v.push((dev, bar, addr, size));
                }
            }
        }
        v
    }

    fn check(&self) {
        let mapped = self.mapped();
        let reserved = self.reserved();
        for (i, &(dev, bar, addr, size)) in mapped.iter().enumerate() {
            assert_eq!(
                addr % size,
                0,
                "device {dev} BAR{bar} at {addr:#x}, size {size:#x}"
            );
            let end = addr.checked_add(size).expect("a mapped BAR wraps");
            for &(s, e) in &reserved {
                assert!(
                    end <= s || e <= addr,
                    "device {dev} BAR{bar} at {addr:#x} overlaps {s:#x}..{e:#x}"
                );
            }
            for &(d2, b2, a2, s2) in &mapped[i + 1..] {
                assert!(
                    end <= a2 || a2 + s2 <= addr,
                    "BARs {dev}/{bar} and {d2}/{b2} overlap at {addr:#x}"
                );
            }
            let mut b = [0u8; 4];
            assert!(
                self.mmio.read(addr, &mut b).is_some(),
                "device {dev} BAR{bar} at {addr:#x} does not answer"
            );
        }
        for e in self.mmio.map() {
            assert!(
                mapped
                    .iter()
                    .any(|&(_, _, a, s)| a <= e.base && e.base + e.len <= a + s),
                "a registration outside every mapped BAR: {e:?}"
            );
        }
        for dev in 0..self.devs.len() as u8 {
            assert_eq!(
                self.caps(dev),
                self.caps[usize::from(dev)],
                "device {dev}: capability list changed"
            );
            assert_eq!(
                self.cfg_u32(dev, 0).to_le_bytes(),
                self.ids[usize::from(dev)],
                "device {dev}: IDs changed"
            );
        }
    }

    fn place(&self, dev: u8, bar: usize, place: u8, offset: u64) -> u64 {
        let l = self.root.layout();
        match place % 8 {
            0 => l.mmio32_start + offset % l.mmio32_size,
            1 => l.mmio64_start + offset % l.mmio64_size,
            2 => l.reserved[0].start + offset % self.mem_size.max(1),
            3 => l.ecam_start + offset % l.ecam_size,
            4 => {
                // Around the start of a reserved range (the interrupt controller, ...).
                let r = &l.reserved[(offset as usize / 7) % l.reserved.len()];
                r.start.wrapping_sub(0x1000).wrapping_add(offset % 0x20_0000)
            }
            5 => {
                // On top of another device's BAR, or next to it.
                let other = (dev + 1) % DEVS;
                let a = self
                    .root
                    .bar_mapping(other, bar)
                    .unwrap_or(l.mmio32_start);
                a.wrapping_add(offset % 0x1_0000)
            }
            6 => u64::MAX - offset % 0x10_0000,
            _ => offset,
        }
    }
}

fuzz_target!(|input: (u8, Vec<Op>)| {
    let (ram, ops) = input;
    let mem_size = [256 << 20, 3584 << 20, 6 << 30][usize::from(ram % 3)];
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let root = PciRoot::new(mmio.clone(), mem_size).unwrap();
    let mut devs: Vec<SharedPciDevice> = Vec::new();
    devs.push(Arc::new(
        Mutex::new(trapvisor::pci::root::HostBridge::new()),
    ));
    for _ in 1..DEVS {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let dev = VirtioPciDevice::new(
            Box::new(Rng::new()),
            DeviceOptions::default(),
            mem,
            FakeIrqRouting::new(),
            FakeIoEvents::new(),
        )
        .unwrap();
        let dev: SharedPciDevice = Arc::new(Mutex::new(dev));
        root.add_device(dev.clone()).unwrap();
        devs.push(dev);
    }
    let mut rig = Rig {
        mem_size,
        conf1: Conf1::new(root.clone()),
        ecam: Ecam::new(root.clone()),
        mmio,
        root,
        devs,
        caps: Vec::new(),
        ids: Vec::new(),
    };
    rig.caps = (0..DEVS).map(|d| rig.caps(d)).collect();
    rig.ids = (0..DEVS).map(|d| rig.cfg_u32(d, 0).to_le_bytes()).collect();
    rig.check();
    for op in ops.into_iter().take(256) {
        match op {
            Op::Conf1 {
                offset,
                width: w,
                value,
                write,
            } => {
                let (off, n) = (u64::from(offset % 8), width(w).min(4));
                let bytes = &value.to_le_bytes()[..n];
                if write {
                    rig.conf1.write(off, bytes);
                } else {
                    let mut d = vec![0u8; n];
                    rig.conf1.read(off, &mut d);
                }
            }
            Op::Ecam {
                offset,
                width: w,
                value,
                write,
            } => {
                let n = width(w);
                let off = u64::from(offset) % (rig.root.layout().ecam_size * 4);
                let mut d = (u64::from(value) | u64::from(value) << 32).to_le_bytes()[..n].to_vec();
                if write {
                    rig.ecam.write(off, &d);
                } else {
                    rig.ecam.read(off, &mut d);
                }
            }
            Op::Size { dev, bar, value } => {
                let (dev, off) = (dev % DEVS, 0x10 + 4 * usize::from(bar % 6));
                rig.root.config_write(dev, 0, off, &u32::MAX.to_le_bytes());
                let _ = rig.cfg_u32(dev, off);
                rig.root.config_write(dev, 0, off, &value.to_le_bytes());
            }
            Op::Move {
                dev,
                bar,
                place,
                offset,
            } => {
                let (dev, bar) = (dev % DEVS, usize::from(bar % 6));
                let addr = rig.place(dev, bar, place, offset);
                let off = 0x10 + 4 * bar;
                rig.root
                    .config_write(dev, 0, off, &(addr as u32).to_le_bytes());
                if bar < 5 {
                    rig.root
                        .config_write(dev, 0, off + 4, &((addr >> 32) as u32).to_le_bytes());
                }
            }
            Op::Command { dev, value } => {
                rig.root
                    .config_write(dev % DEVS, 0, 4, &value.to_le_bytes());
            }
            Op::Mmio {
                dev,
                bar,
                offset,
                width: w,
                write,
            } => {
                let Some(addr) = rig.root.bar_mapping(dev % DEVS, usize::from(bar % 6)) else {
                    continue;
                };
                let at = addr + u64::from(offset);
                let mut d = vec![0u8; width(w)];
                if write {
                    let _ = rig.mmio.write(at, &d);
                } else {
                    let _ = rig.mmio.read(at, &mut d);
                }
            }
        }
        rig.check();
    }
});
