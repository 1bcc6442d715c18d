use super::*;

/// A device that records what it saw.
#[derive(Default)]
struct Recorder {
    reads: Vec<(u64, usize)>,
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset as u8 + i as u8;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        self.writes.push((offset, data.to_vec()));
        if data == [0xfe] {
            DeviceEvent::Reset
        } else {
            DeviceEvent::None
        }
    }
}

fn recorder() -> (Arc<Mutex<Recorder>>, SharedDevice) {
    let r = Arc::new(Mutex::new(Recorder::default()));
    let shared: SharedDevice = r.clone();
    (r, shared)
}

#[test]
fn overlapping_registration_is_refused() {
    let bus = Bus::new(BusKind::Pio);
    let (_, d) = recorder();
    bus.insert(0x3f8, 8, "serial0", "", d.clone()).unwrap();
    // Same start, inside, straddling below, straddling above.
    for (base, len) in [
        (0x3f8, 1),
        (0x3fa, 2),
        (0x3f0, 9),
        (0x3ff, 4),
        (0x300, 0x200),
    ] {
        let err = bus.insert(base, len, "x", "", d.clone()).unwrap_err();
        assert!(
            matches!(err, BusError::Overlap { ref other, .. } if other == "serial0"),
            "{err}"
        );
    }
    // Neighbours touching either end are fine.
    bus.insert(0x3f0, 8, "below", "", d.clone()).unwrap();
    bus.insert(0x400, 1, "above", "", d.clone()).unwrap();
    assert_eq!(bus.map().len(), 3);
}

#[test]
fn empty_and_wrapping_ranges_are_refused() {
    let bus = Bus::new(BusKind::Mmio);
    let (_, d) = recorder();
    assert!(matches!(
        bus.insert(0x1000, 0, "z", "", d.clone()),
        Err(BusError::BadRange { .. })
    ));
    assert!(matches!(
        bus.insert(u64::MAX, 2, "w", "", d.clone()),
        Err(BusError::BadRange { .. })
    ));
    // The very last byte of the address space is a valid range.
    bus.insert(u64::MAX, 1, "last", "", d).unwrap();
    let mut b = [0u8; 1];
    assert!(bus.read(u64::MAX, &mut b).is_some());
}

#[test]
fn dispatch_passes_offset_and_width() {
    let bus = Bus::new(BusKind::Mmio);
    let (r, d) = recorder();
    bus.insert(0xd000_0000, 0x1000, "dev", "regs", d).unwrap();
    let mut data = [0u8; 4];
    let hit = Some(Hit { id: 0, region: "" });
    assert_eq!(bus.read(0xd000_0010, &mut data), hit);
    assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
    assert_eq!(bus.write(0xd000_0ffe, &[1, 2]), (hit, DeviceEvent::None));
    assert_eq!(bus.write(0xd000_0001, &[0xfe]), (hit, DeviceEvent::Reset));
    assert_eq!(bus.device_name(0), "dev");
    let r = r.lock().unwrap();
    assert_eq!(r.reads, vec![(0x10, 4)]);
    assert_eq!(r.writes, vec![(0xffe, vec![1, 2]), (1, vec![0xfe])]);
}

#[test]
fn unowned_access_reads_all_ones_and_is_counted() {
    let bus = Bus::new(BusKind::Pio);
    let (r, d) = recorder();
    bus.insert(0x60, 1, "i8042", "data", d).unwrap();
    let mut data = [0u8; 2];
    assert_eq!(bus.read(0x80, &mut data), None);
    assert_eq!(data, [0xff, 0xff]);
    assert_eq!(bus.write(0x80, &[1]), (None, DeviceEvent::None));
    assert_eq!(bus.write(0x81, &[1]), (None, DeviceEvent::None));
    // A 2-byte access that starts inside a 1-byte range straddles its end: not owned.
    assert_eq!(bus.read(0x60, &mut data), None);
    assert_eq!(bus.unowned_counts(), vec![(0x60, 1), (0x80, 2), (0x81, 1)]);
    assert!(r.lock().unwrap().reads.is_empty());
}

#[test]
fn remove_frees_the_range() {
    let bus = Bus::new(BusKind::Mmio);
    let (_, d) = recorder();
    bus.insert(0x1000, 0x100, "bar0", "", d.clone()).unwrap();
    assert_eq!(
        bus.remove(0x1010),
        Err(BusError::NotRegistered {
            kind: BusKind::Mmio,
            base: 0x1010
        })
    );
    bus.remove(0x1000).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(bus.read(0x1000, &mut b), None);
    // A new registration gets a new id; the old id still names its device.
    bus.insert(0x1080, 0x100, "bar0-moved", "", d).unwrap();
    assert_eq!(bus.read(0x1080, &mut b).map(|h| h.id), Some(1));
    assert_eq!(bus.device_name(0), "bar0");
    assert_eq!(bus.device_name(1), "bar0-moved");
    assert_eq!(bus.device_name(7), "");
}

#[test]
fn map_is_formatted_per_address_space() {
    let pio = Bus::new(BusKind::Pio);
    let mmio = Bus::new(BusKind::Mmio);
    let (_, d) = recorder();
    pio.insert(0x3f8, 8, "serial0", "16550", d.clone()).unwrap();
    mmio.insert(0xf000_0000, 0x1000, "testdev", "", d).unwrap();
    let text = format_map(&[&pio, &mmio]);
    assert_eq!(
        text,
        "address-space: pio\n  03f8-03ff (size 0x8) serial0 16550\n\
         address-space: mmio\n  00000000f0000000-00000000f0000fff (size 0x1000) testdev\n"
    );
}

#[test]
fn the_lookup_cache_follows_moves_and_never_reaches_past_a_range() {
    let bus = Bus::new(BusKind::Mmio);
    let (a, da) = recorder();
    let (b, db) = recorder();
    let (c, dc) = recorder();
    bus.insert(0x1000, 0x100, "a", "", da).unwrap();
    bus.insert(0x1100, 0x100, "c", "", dc).unwrap();
    let mut cache = LookupCache::default();
    let mut v = [0u8; 4];
    for off in [0u64, 4, 0xfc] {
        assert!(bus.read_cached(&mut cache, 0x1000 + off, &mut v).is_some());
    }
    assert_eq!(a.lock().unwrap().reads.len(), 3);
    // An access that straddles the cached range's end is not owned, cache or not; one just
    // past it goes to the neighbour.
    assert!(bus.read_cached(&mut cache, 0x10fe, &mut v).is_none());
    bus.write_cached(&mut cache, 0x1100, &[1]);
    assert_eq!(c.lock().unwrap().writes.len(), 1);
    // The range moves away and another device takes its place: the cache sees it.
    bus.read_cached(&mut cache, 0x1000, &mut v);
    bus.remove(0x1000).unwrap();
    assert!(bus.read_cached(&mut cache, 0x1000, &mut v).is_none());
    assert_eq!(v, [0xff; 4]);
    bus.insert(0x1000, 0x10, "b", "", db).unwrap();
    assert_eq!(
        bus.write_cached(&mut cache, 0x1004, &[0xfe]).1,
        DeviceEvent::Reset
    );
    assert_eq!(b.lock().unwrap().writes, vec![(4, vec![0xfe])]);
    assert_eq!(a.lock().unwrap().writes.len(), 0);
    // The new range is shorter: its old extent is not reachable through the cache.
    assert!(bus.read_cached(&mut cache, 0x1080, &mut v).is_none());
    assert_eq!(a.lock().unwrap().reads.len(), 4);
}
