use std::io::Write;

use super::*;

const NAME: usize = 16;

/// A statistics file as KVM lays it out: header, id, descriptors, data.
fn layout(id: &str, descs: &[(u32, i16, u16, u32, &str)], data: &[u64]) -> Vec<u8> {
    let id_offset = HEADER_LEN;
    let desc_offset = id_offset + NAME;
    let data_offset = desc_offset + descs.len() * (DESC_LEN + NAME);
    let mut b = Vec::new();
    for v in [
        0u32,
        NAME as u32,
        descs.len() as u32,
        id_offset as u32,
        desc_offset as u32,
        data_offset as u32,
    ] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    let name = |s: &str| {
        let mut n = [0u8; NAME];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    };
    b.extend_from_slice(&name(id));
    for &(flags, exp, size, offset, n) in descs {
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&exp.to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&offset.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&name(n));
    }
    for v in data {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

fn file_of(bytes: &[u8]) -> File {
    let path = std::env::temp_dir().join(format!(
        "trapvisor-kvmstats-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    let f = File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

#[test]
fn parses_names_types_units_and_histograms() {
    let ns = KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_SECONDS;
    let hist = KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS;
    let bytes = layout(
        "kvm-7/vcpu-0",
        &[
            (KVM_STATS_TYPE_CUMULATIVE, 0, 1, 0, "exits"),
            (ns, -9, 1, 8, "halt_poll_ns"),
            (hist, -9, 3, 16, "halt_wait_hist"),
            (
                KVM_STATS_TYPE_PEAK | KVM_STATS_UNIT_BOOLEAN,
                0,
                1,
                40,
                "guest_mode",
            ),
        ],
        &[1002, 77, 1, 2, 3, 1],
    );
    let s = KvmStats::from_file(file_of(&bytes)).unwrap();
    assert_eq!(s.id, "kvm-7/vcpu-0");
    assert_eq!(s.descs.len(), 4);
    assert_eq!(s.descs[0].name, "exits");
    assert_eq!(s.descs[0].kind, StatKind::Cumulative);
    assert_eq!(s.descs[1].unit_suffix(), "ns");
    assert_eq!(s.descs[2].kind, StatKind::LogHist);
    assert_eq!(s.descs[3].unit, "boolean");
    let v = s.read().unwrap();
    assert_eq!(v[0], StatValue::Scalar(1002));
    assert_eq!(v[1], StatValue::Scalar(77));
    assert_eq!(v[2], StatValue::Hist(vec![1, 2, 3]));
    assert_eq!(v[2].total(), 6);
    assert_eq!(v[2].to_json(), serde_json::json!([1, 2, 3]));
}

#[test]
fn odd_layouts_are_errors_not_panics() {
    assert!(parse_header(&[0u8; 10]).is_err());
    // name_size 0, then one far too large, then too many descriptors.
    for (name_size, num) in [(0u32, 1u32), (1 << 20, 1), (16, 1 << 30)] {
        let mut h = vec![0u8; HEADER_LEN];
        h[4..8].copy_from_slice(&name_size.to_ne_bytes());
        h[8..12].copy_from_slice(&num.to_ne_bytes());
        assert!(parse_header(&h).is_err(), "{name_size} {num}");
    }
    let good = (KVM_STATS_TYPE_CUMULATIVE, 0, 1, 0, "exits");
    // A descriptor block shorter than announced.
    let bytes = layout("x", &[good], &[1]);
    assert!(parse_descriptors(&bytes[HEADER_LEN + NAME..][..20], 1, NAME as u32, None).is_err());
    // A value outside the data block; zero values; no name.
    let block = |d| layout("x", &[d], &[])[HEADER_LEN + NAME..].to_vec();
    assert!(parse_descriptors(&block((0, 0, 1, 64, "far")), 1, 16, Some(8)).is_err());
    assert!(parse_descriptors(&block((0, 0, 0, 0, "none")), 1, 16, Some(8)).is_err());
    assert!(parse_descriptors(&block((0, 0, 1, 0, "")), 1, 16, Some(8)).is_err());
    // A name with no NUL in its 16 bytes is taken whole; an unknown type is kept as such.
    let d = parse_descriptors(&block((9, 0, 1, 0, "sixteen_chars_xx")), 1, 16, Some(8)).unwrap();
    assert_eq!(d[0].name, "sixteen_chars_xx");
    assert_eq!(d[0].kind, StatKind::Unknown(9));
    // A file that ends inside the descriptors.
    let bytes = layout("x", &[good, good], &[1]);
    assert!(KvmStats::from_file(file_of(&bytes[..HEADER_LEN + NAME + 10])).is_err());
    // Values read from a short block are 0, never out of bounds.
    let descs = parse_descriptors(&block(good), 1, 16, None).unwrap();
    assert_eq!(values(&descs, &[1, 2]), vec![StatValue::Scalar(0)]);
}

#[test]
fn a_real_vm_and_vcpu_have_exits_and_kvm_ids() {
    let Ok(vm) = crate::kvm::vm::Vm::new(16 << 20) else {
        eprintln!("no usable /dev/kvm: the real-fd half of this test is skipped");
        return;
    };
    let vcpu = vm.create_vcpu(0).unwrap();
    let s = KvmStats::open(vm.fd()).unwrap();
    assert!(s.id.starts_with("kvm-"), "{}", s.id);
    assert!(!s.descs.is_empty());
    let v = KvmStats::open(&vcpu).unwrap();
    assert!(v.id.ends_with("/vcpu-0"), "{}", v.id);
    let named = v.read_named().unwrap();
    let exits = named
        .iter()
        .find(|(d, _)| d.name == "exits")
        .expect("no exits stat");
    assert_eq!(exits.0.kind, StatKind::Cumulative);
    assert!(
        named.iter().any(|(d, _)| d.kind.is_histogram()),
        "no histogram"
    );
    // Not a KVM fd.
    let f = File::open("/dev/null").unwrap();
    assert!(matches!(KvmStats::open(&f), Err(StatsError::Ioctl(_))));
}
