use std::sync::{Arc, Mutex};

use super::*;
use crate::bus::{Bus, BusKind};
use crate::pci::config::{BarInfo, BAR0, COMMAND};

/// A function with a 32-bit BAR0 (two regions) and a 64-bit BAR2 that records what the root
/// tells it and what reaches its BARs.
struct TestFn {
    config: PciConfig,
    mapped: Vec<(usize, Option<u64>)>,
    writes: Vec<(usize, u64, Vec<u8>)>,
}

impl TestFn {
    fn new() -> Self {
        let mut config = PciConfig::new(&PciHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            class: 0xff,
            ..Default::default()
        });
        config
            .add_bar(
                0,
                BarInfo {
                    kind: BarKind::Mem32,
                    size: 0x2000,
                    prefetchable: false,
                },
            )
            .unwrap();
        config
            .add_bar(
                2,
                BarInfo {
                    kind: BarKind::Mem64,
                    size: 0x4000,
                    prefetchable: true,
                },
            )
            .unwrap();
        TestFn {
            config,
            mapped: Vec::new(),
            writes: Vec::new(),
        }
    }
}

impl PciDevice for TestFn {
    fn name(&self) -> &str {
        "testfn"
    }
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_regions(&self, bar: usize) -> Vec<BarRegion> {
        match bar {
            0 => vec![
                BarRegion {
                    offset: 0,
                    len: 0x1000,
                    name: "first",
                },
                BarRegion {
                    offset: 0x1000,
                    len: 0x1000,
                    name: "second",
                },
            ],
            2 => vec![BarRegion {
                offset: 0,
                len: 0x4000,
                name: "big",
            }],
            _ => vec![],
        }
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(bar as u8 + offset as u8);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.writes.push((bar, offset, data.to_vec()));
    }
    fn bar_mapped(&mut self, bar: usize, addr: Option<u64>) {
        self.mapped.push((bar, addr));
    }
}

struct Rig {
    mmio: Arc<Bus>,
    root: Arc<PciRoot>,
    conf1: Conf1,
    ecam: Ecam,
    dev: Arc<Mutex<TestFn>>,
}

const MEM: u64 = 256 << 20;
const ECAM: u64 = 0xe000_0000;
const MMIO32: u64 = 0xc000_0000;
const MMIO64: u64 = 0x1_0000_0000;
const LAPIC: u64 = 0xfee0_0000;

/// The windows of these tests (x86_64's numbers, fixed here so that the tests read the same
/// on every architecture).
fn test_layout() -> PciLayout {
    let r = |start, end, what| Reserved { start, end, what };
    PciLayout {
        ecam_start: ECAM,
        ecam_size: 0x10_0000,
        mmio32_start: MMIO32,
        mmio32_size: 0x2000_0000,
        mmio64_start: MMIO64,
        mmio64_size: 0x40_0000_0000,
        reserved: vec![
            r(0, MEM, "guest RAM"),
            r(ECAM, ECAM + 0x10_0000, "the ECAM window"),
            r(LAPIC, LAPIC + 0x10_0000, "the LAPIC/MSI range"),
        ],
    }
}

fn rig() -> Rig {
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let root = PciRoot::with_layout(mmio.clone(), test_layout()).unwrap();
    let dev = Arc::new(Mutex::new(TestFn::new()));
    assert_eq!(root.add_device(dev.clone()).unwrap(), 1);
    Rig {
        conf1: Conf1::new(root.clone()),
        ecam: Ecam::new(root.clone()),
        mmio,
        root,
        dev,
    }
}

fn addr(dev: u8, reg: u8) -> u32 {
    0x8000_0000 | (u32::from(dev) << 11) | u32::from(reg)
}

impl Rig {
    fn cfg_read32(&mut self, dev: u8, reg: u8) -> u32 {
        self.conf1.write(0, &addr(dev, reg & 0xfc).to_le_bytes());
        let mut b = [0; 4];
        self.conf1.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg_write32(&mut self, dev: u8, reg: u8, v: u32) {
        self.conf1.write(0, &addr(dev, reg & 0xfc).to_le_bytes());
        self.conf1.write(4, &v.to_le_bytes());
    }

    fn mmio_regions(&self) -> Vec<(u64, String)> {
        self.mmio
            .map()
            .into_iter()
            .filter(|e| e.device == "testfn")
            .map(|e| (e.base, e.region))
            .collect()
    }

    fn last_mapped(&self, bar: usize) -> Option<Option<u64>> {
        self.dev
            .lock()
            .unwrap()
            .mapped
            .iter()
            .rev()
            .find(|m| m.0 == bar)
            .map(|m| m.1)
    }
}

#[test]
fn conf1_enumerates_the_host_bridge_and_the_device() {
    let mut r = rig();
    assert_eq!(r.cfg_read32(0, 0), 0x0008_1b36);
    assert_eq!(r.cfg_read32(0, 8) >> 8, 0x06_0000);
    assert_eq!(r.cfg_read32(1, 0), 0x5678_1234);
    // Absent devices, functions and buses read all-ones.
    assert_eq!(r.cfg_read32(2, 0), 0xffff_ffff);
    assert_eq!(r.cfg_read32(31, 0), 0xffff_ffff);
    r.conf1.write(0, &(addr(1, 0) | 1 << 8).to_le_bytes());
    let mut b = [0; 4];
    r.conf1.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
    r.conf1.write(0, &(addr(1, 0) | 1 << 16).to_le_bytes());
    r.conf1.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
    // Enable bit clear: nothing.
    r.conf1.write(0, &0x0000_0800u32.to_le_bytes());
    r.conf1.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
    assert!(r.root.stats().absent >= 3);
}

#[test]
fn conf1_byte_and_word_accesses_at_every_data_port() {
    let mut r = rig();
    r.conf1.write(0, &addr(1, 0).to_le_bytes());
    for (port, want) in [(4u64, 0x34u8), (5, 0x12), (6, 0x78), (7, 0x56)] {
        let mut b = [0; 1];
        r.conf1.read(port, &mut b);
        assert_eq!(b[0], want, "port 0xcf{}", 8 + port);
    }
    let mut w = [0; 2];
    r.conf1.read(6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x5678);
    // Byte write to the interrupt line through 0xcfc + 0.
    r.conf1.write(0, &addr(1, 0x3c).to_le_bytes());
    r.conf1.write(4, &[0x0a]);
    assert_eq!(r.cfg_read32(1, 0x3c) & 0xff, 0x0a);
    // Linux's conf1 probe: a byte to 0xcfb, then 0x80000000 reads back.
    r.conf1.write(3, &[1]);
    r.conf1.write(0, &0x8000_0000u32.to_le_bytes());
    let mut a = [0; 4];
    r.conf1.read(0, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
    // Straddling address and data is not a config access.
    r.conf1.read(2, &mut a);
    assert_eq!(a, [0xff; 4]);
}

#[test]
fn ecam_reaches_the_same_config_space() {
    let mut r = rig();
    let mut b = [0; 4];
    r.ecam.read(1 << 15, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
    r.ecam.read((1 << 15) + 1, &mut b[..2]);
    assert_eq!(&b[..2], &[0x12, 0x78]);
    r.ecam.write((1 << 15) + 0x3c, &[0x0b]);
    assert_eq!(r.cfg_read32(1, 0x3c) & 0xff, 0x0b);
    // Extended space reads 0; a read straddling two functions and other functions: all-ones.
    r.ecam.read((1 << 15) + 0x100, &mut b);
    assert_eq!(b, [0; 4]);
    r.ecam.read((1 << 15) + 0xffe, &mut b);
    assert_eq!(b, [0xff; 4]);
    r.ecam.read((1 << 15) + (1 << 12), &mut b);
    assert_eq!(b, [0xff; 4]);
    let mut q = [0; 8];
    r.ecam.read(1 << 15, &mut q);
    assert_eq!(u32::from_le_bytes(q[..4].try_into().unwrap()), 0x5678_1234);
}

#[test]
fn bars_are_placed_in_their_windows_and_decoded() {
    let mut r = rig();
    let bar0 = r.cfg_read32(1, 0x10);
    assert_eq!(bar0, MMIO32 as u32);
    let lo = r.cfg_read32(1, 0x18);
    let hi = r.cfg_read32(1, 0x1c);
    assert_eq!(lo & 0xf, 0b1100);
    let bar2 = u64::from(hi) << 32 | u64::from(lo & !0xf);
    assert_eq!(bar2, MMIO64);
    assert_ne!(r.cfg_read32(1, COMMAND as u8) & 2, 0, "memory decode on");
    let regions = r.mmio_regions();
    assert_eq!(
        regions,
        vec![
            (0xc000_0000, "bar0 first".to_string()),
            (0xc000_1000, "bar0 second".to_string()),
            (bar2, "bar2 big".to_string()),
        ]
    );
    // Accesses reach the device with the offset inside the BAR.
    let mut b = [0; 1];
    let _ = r.mmio.read(0xc000_1004, &mut b);
    assert_eq!(b[0], 0x04);
    let _ = r.mmio.write(0xc000_1008, &[7, 7]);
    assert_eq!(r.dev.lock().unwrap().writes, vec![(0, 0x1008, vec![7, 7])]);
    let map = r.root.format_map();
    assert!(map.contains("00:01.0 1234:5678"), "{map}");
    assert!(
        map.contains("bar0 mem32 00000000c0000000-00000000c0001fff"),
        "{map}"
    );
    assert!(map.contains("first@+0x0 second@+0x1000"), "{map}");
    assert!(map.contains("bar2 mem64"), "{map}");
}

#[test]
fn sizing_then_moving_a_bar_moves_its_bus_ranges() {
    let mut r = rig();
    r.cfg_write32(1, 0x10, 0xffff_ffff);
    assert_eq!(r.cfg_read32(1, 0x10), 0xffff_e000);
    // While it holds the sizing pattern it decodes nowhere.
    assert_eq!(r.last_mapped(0), Some(None));
    assert!(r.mmio_regions().iter().all(|(_, n)| !n.starts_with("bar0")));
    r.cfg_write32(1, 0x10, 0xc010_0000);
    assert_eq!(r.last_mapped(0), Some(Some(0xc010_0000)));
    assert_eq!(r.root.bar_mapping(1, 0), Some(0xc010_0000));
    let regions = r.mmio_regions();
    assert!(regions.contains(&(0xc010_0000, "bar0 first".into())));
    assert!(regions.contains(&(0xc010_1000, "bar0 second".into())));
    assert!(!regions.iter().any(|(a, _)| *a == 0xc000_0000));
    // 64-bit: moves when the upper half is written.
    let new64 = 0x20_0000_0000u64;
    r.cfg_write32(1, 0x18, new64 as u32);
    assert_ne!(r.root.bar_mapping(1, 2), Some(new64));
    r.cfg_write32(1, 0x1c, (new64 >> 32) as u32);
    assert_eq!(r.root.bar_mapping(1, 2), Some(new64));
    assert!(r.mmio_regions().contains(&(new64, "bar2 big".into())));
}

#[test]
fn memory_decode_off_unmaps_and_on_remaps() {
    let mut r = rig();
    let cmd = r.cfg_read32(1, 4) & 0xffff;
    r.cfg_write32(1, 4, cmd & !2);
    assert!(r.mmio_regions().is_empty());
    assert_eq!(r.last_mapped(0), Some(None));
    assert_eq!(r.last_mapped(2), Some(None));
    let mut b = [0; 4];
    let _ = r.mmio.read(0xc000_0000, &mut b);
    assert_eq!(b, [0xff; 4], "unowned while decode is off");
    // Moving a BAR while decode is off only takes effect when decode is turned on.
    r.cfg_write32(1, 0x10, 0xc020_0000);
    assert!(r.mmio_regions().is_empty());
    r.cfg_write32(1, 4, cmd | 2);
    assert_eq!(r.root.bar_mapping(1, 0), Some(0xc020_0000));
    assert_eq!(r.mmio_regions().len(), 3);
    assert!(r.root.stats().bar_unmaps >= 2);
}

#[test]
fn overlapping_bar_places_are_refused_and_the_vm_runs_on() {
    let mut r = rig();
    let before = r.root.stats().bar_conflicts;
    // Over guest RAM.
    r.cfg_write32(1, 0x10, 0x0010_0000);
    assert_eq!(r.root.bar_mapping(1, 0), None);
    assert_eq!(r.last_mapped(0), Some(None));
    // Over the ECAM window (a range on the bus).
    r.cfg_write32(1, 0x10, ECAM as u32);
    assert_eq!(r.root.bar_mapping(1, 0), None);
    // Over the LAPIC.
    r.cfg_write32(1, 0x10, LAPIC as u32);
    assert_eq!(r.root.bar_mapping(1, 0), None);
    // Over another BAR: move BAR2 (64-bit) onto BAR0's place after BAR0 is back.
    r.cfg_write32(1, 0x10, 0xc000_0000);
    assert_eq!(r.root.bar_mapping(1, 0), Some(0xc000_0000));
    r.cfg_write32(1, 0x18, 0xc000_0000);
    r.cfg_write32(1, 0x1c, 0);
    assert_eq!(r.root.bar_mapping(1, 2), None);
    assert_eq!(r.root.stats().bar_conflicts, before + 4);
    // No region of the refused BAR is left behind, BAR0 still works.
    assert_eq!(
        r.mmio_regions(),
        vec![
            (0xc000_0000, "bar0 first".into()),
            (0xc000_1000, "bar0 second".into())
        ]
    );
    let map = r.root.format_map();
    assert!(map.contains("(not decoded)"), "{map}");
    // And a good place works again.
    r.cfg_write32(1, 0x18, 0xd000_0000);
    r.cfg_write32(1, 0x1c, 0);
    assert_eq!(r.root.bar_mapping(1, 2), Some(0xd000_0000));
}

#[test]
fn garbage_config_accesses_never_panic() {
    let mut r = rig();
    for dev in [0u8, 1, 2] {
        for off in (0..0x104u16).step_by(1) {
            for len in [1usize, 2, 4] {
                let mut b = vec![0; len];
                r.root.config_read(dev, 0, usize::from(off), &mut b);
                r.root
                    .config_write(dev, 0, usize::from(off), &vec![0xffu8; len]);
            }
        }
    }
    r.root.config_read(1, 0, 4095, &mut [0; 4]);
    r.root.config_write(1, 0, usize::MAX - 2, &[0; 4]);
    // Everything read-only survived.
    assert_eq!(r.cfg_read32(1, 0), 0x5678_1234);
    assert_eq!(r.cfg_read32(0, 0), 0x0008_1b36);
    let _ = BAR0;
}
