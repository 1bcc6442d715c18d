//! The aarch64 built-in guest's FDT reader (`guest/src/arch/aarch64/fdt.rs`, plain `core` Rust),
//! compiled for the host: the lookups the guest makes on a tree shaped like trapvisor's and
//! QEMU's, and blobs that are truncated, inconsistent or mutated at random, which must give an
//! error or `None`, never a panic or a read outside the blob.
#[path = "../guest/src/arch/aarch64/fdt.rs"]
#[allow(dead_code)]
mod fdt;

use fdt::Fdt;

/// A minimal FDT writer (spec v0.4 §5): enough to build test trees.
struct Builder {
    structs: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            structs: Vec::new(),
            strings: Vec::new(),
        }
    }
    fn word(&mut self, w: u32) {
        self.structs.extend_from_slice(&w.to_be_bytes());
    }
    fn pad(&mut self) {
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
    }
    fn begin(&mut self, name: &str) -> &mut Self {
        self.word(1);
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self
    }
    fn end(&mut self) -> &mut Self {
        self.word(2);
        self
    }
    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.word(3);
        self.word(value.len() as u32);
        self.word(off);
        self.structs.extend_from_slice(value);
        self.pad();
        self
    }
    fn u32s(&mut self, name: &str, v: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_be_bytes()).collect();
        self.prop(name, &bytes)
    }
    fn str(&mut self, name: &str, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.prop(name, &b)
    }
    fn finish(&mut self) -> Vec<u8> {
        self.word(9);
        let header = 40usize;
        let rsvmap = 16usize; // one empty reservation entry
        let off_struct = header + rsvmap;
        let off_strings = off_struct + self.structs.len();
        let total = off_strings + self.strings.len();
        let mut blob = Vec::with_capacity(total);
        for w in [
            0xd00d_feed,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            header as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structs.len() as u32,
        ] {
            blob.extend_from_slice(&u32::to_be_bytes(w));
        }
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&self.structs);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

/// A tree like trapvisor's: 2/2 cells at the root, cpus with 1/0, the GIC with an ITS child,
/// an ECAM host bridge, a 16550, the test device.
fn machine() -> Vec<u8> {
    let mut b = Builder::new();
    b.begin("")
        .u32s("#address-cells", &[2])
        .u32s("#size-cells", &[2])
        .str("compatible", "linux,dummy-virt");
    b.begin("chosen")
        .str("bootargs", "hello smp")
        .str("stdout-path", "/uart@40002000:115200n8")
        .end();
    b.begin("aliases").str("serial0", "/uart@40002000").end();
    b.begin("memory@80000000")
        .str("device_type", "memory")
        .u32s("reg", &[0, 0x8000_0000, 0, 0x1000_0000])
        .end();
    b.begin("cpus")
        .u32s("#address-cells", &[1])
        .u32s("#size-cells", &[0]);
    for i in 0..4u32 {
        b.begin(&format!("cpu@{i:x}"))
            .str("device_type", "cpu")
            .str("compatible", "arm,arm-v8")
            .u32s("reg", &[i])
            .end();
    }
    b.end();
    b.begin("intc@3fff0000")
        .prop("compatible", b"arm,gic-v3\0")
        .u32s("#address-cells", &[2])
        .u32s("#size-cells", &[2])
        .u32s(
            "reg",
            &[0, 0x3fff_0000, 0, 0x1_0000, 0, 0x3ff7_0000, 0, 0x8_0000],
        );
    b.begin("its@3ff50000")
        .str("compatible", "arm,gic-v3-its")
        .u32s("reg", &[0, 0x3ff5_0000, 0, 0x2_0000])
        .end();
    b.end();
    b.begin("pcie@40100000")
        .prop("compatible", b"pci-host-ecam-generic\0")
        .u32s("#address-cells", &[3])
        .u32s("#size-cells", &[2])
        .u32s("reg", &[0, 0x4010_0000, 0, 0x1000_0000])
        .u32s("bus-range", &[0, 0])
        .u32s(
            "ranges",
            &[0x0200_0000, 0, 0x5000_0000, 0, 0x5000_0000, 0, 0x1000_0000],
        )
        .u32s("msi-map", &[0, 1, 0, 0x100])
        .end();
    b.begin("uart@40002000")
        .prop("compatible", b"ns16550a\0")
        .u32s("reg", &[0, 0x4000_2000, 0, 0x1000])
        .u32s("reg-shift", &[0])
        .end();
    b.begin("testdev@40003000")
        .str("compatible", "trapvisor,testdev")
        .u32s("reg", &[0, 0x4000_3000, 0, 0x1000])
        .str("status", "okay")
        .end();
    b.end();
    b.finish()
}

#[test]
fn the_guests_lookups_on_a_machine_tree() {
    let blob = machine();
    let f = Fdt::new(&blob).expect("valid blob");
    assert_eq!(f.size, blob.len());

    let chosen = f.find_path("/chosen").expect("/chosen");
    assert_eq!(chosen.prop_str("bootargs"), Some("hello smp"));
    assert_eq!(
        chosen.prop_str("stdout-path"),
        Some("/uart@40002000:115200n8")
    );
    // A unit address may be left out when the name is unique.
    let uart = f.find_path("/uart").expect("/uart matches uart@40002000");
    assert!(uart.is_compatible("ns16550a"));
    assert_eq!(uart.reg(0), Some((0x4000_2000, 0x1000)));
    assert_eq!(uart.prop_u32("reg-shift"), Some(0));
    assert!(f.find_path("/uart@40002001").is_none());
    assert!(f.find_path("/nothing").is_none());
    assert_eq!(
        f.find_path("/aliases").and_then(|a| a.prop_str("serial0")),
        Some("/uart@40002000")
    );

    let mem = f
        .nodes()
        .find(|n| n.prop_str("device_type") == Some("memory"))
        .unwrap();
    assert_eq!(mem.reg(0), Some((0x8000_0000, 0x1000_0000)));
    assert_eq!(mem.reg(1), None);

    let cpus = f.find_path("/cpus").unwrap();
    let mpidrs: Vec<u64> = cpus
        .children()
        .filter_map(|c| c.reg(0).map(|r| r.0))
        .collect();
    assert_eq!(mpidrs, [0, 1, 2, 3], "1 address cell, 0 size cells");

    let gic = f.find_compatible("arm,gic-v3").unwrap();
    assert_eq!(gic.reg(0), Some((0x3fff_0000, 0x1_0000)));
    assert_eq!(gic.reg(1), Some((0x3ff7_0000, 0x8_0000)));
    let its = gic
        .children()
        .find(|c| c.is_compatible("arm,gic-v3-its"))
        .unwrap();
    assert_eq!(its.reg(0), Some((0x3ff5_0000, 0x2_0000)));
    assert_eq!(
        gic.children().count(),
        1,
        "only the ITS; not the nodes after the GIC"
    );

    let pci = f.find_compatible("pci-host-ecam-generic").unwrap();
    assert_eq!(pci.reg(0), Some((0x4010_0000, 0x1000_0000)));
    assert_eq!(pci.parent_cells, (2, 2));
    let ranges: Vec<u32> = fdt::u32s(pci.prop("ranges").unwrap()).collect();
    assert_eq!(ranges.len(), 7);

    let t = f.find_compatible("trapvisor,testdev").unwrap();
    assert!(t.enabled());
    assert_eq!(t.reg(0), Some((0x4000_3000, 0x1000)));
}

#[test]
fn bad_headers_are_errors() {
    let blob = machine();
    assert!(Fdt::new(&blob[..20]).is_err(), "shorter than the header");
    let mut bad = blob.clone();
    bad[0] = 0;
    assert!(Fdt::new(&bad).is_err(), "no magic");
    let mut bad = blob.clone();
    bad[4..8].copy_from_slice(&(blob.len() as u32 + 1).to_be_bytes());
    assert!(Fdt::new(&bad).is_err(), "totalsize past the buffer");
    let mut bad = blob.clone();
    bad[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(Fdt::new(&bad).is_err(), "structure block outside");
    let mut bad = blob.clone();
    bad[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(Fdt::new(&bad).is_err(), "strings block size overflows");
    let mut bad = blob.clone();
    bad[20..24].copy_from_slice(&15u32.to_be_bytes());
    assert!(Fdt::new(&bad).is_err(), "version 15");
}

/// Walks everything the guest would, on any blob.
fn walk(blob: &[u8]) {
    let Ok(f) = Fdt::new(blob) else { return };
    for n in f.nodes() {
        let _ = n.props().count();
        let _ = (n.reg(0), n.reg(1), n.enabled(), n.is_compatible("ns16550a"));
        let _ = n.children().count();
        if let Some(v) = n.prop("ranges") {
            let _ = fdt::u32s(v).count();
        }
    }
    let _ = f.find_path("/chosen").and_then(|c| c.prop_str("bootargs"));
    let _ = f.find_path("/cpus/cpu@1");
    let _ = f.find_compatible("arm,gic-v3");
}

#[test]
fn mutated_and_truncated_blobs_never_panic() {
    let blob = machine();
    for len in 0..blob.len() {
        walk(&blob[..len]);
    }
    // A deterministic xorshift over single-byte and word changes of the structure and strings.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..8_000 {
        let mut b = blob.clone();
        for _ in 0..1 + next() % 4 {
            let at = 40 + (next() as usize) % (b.len() - 40);
            match next() % 3 {
                0 => b[at] = next() as u8,
                1 => {
                    let w = [0u32, 1, 2, 3, 4, 9, 0xffff_ffff, 0x7fff_fff0][next() as usize % 8];
                    let at = at & !3;
                    if at + 4 <= b.len() {
                        b[at..at + 4].copy_from_slice(&w.to_be_bytes());
                    }
                }
                _ => b[at] ^= 0xff,
            }
        }
        walk(&b);
    }
}

#[test]
fn nesting_deeper_than_the_reader_follows_ends_the_walk() {
    let mut b = Builder::new();
    for i in 0..40 {
        b.begin(&format!("n{i}"));
    }
    for _ in 0..40 {
        b.end();
    }
    let blob = b.finish();
    let f = Fdt::new(&blob).unwrap();
    assert!(f.nodes().count() <= 17);
    walk(&blob);
}
