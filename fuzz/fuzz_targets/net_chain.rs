//! virtio-net's handling of guest-built chains: a descriptor table (direct and indirect
//! descriptors) and an available ring written from the fuzz input into guest RAM, popped with
//! virtio-queue and walked by `net::chain::walk` in each direction, then the vnet header of a
//! transmit chain read and validated. Invariants: no panic; every segment lies inside guest RAM
//! and has the direction asked for; no chain has more descriptors than the queue size or more
//! bytes than the cap; a header that validates keeps its checksum field inside the frame.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trapvisor::net::chain::{self, Direction, RamMap, Seg};
use trapvisor::net::header::{validate_tx, VnetHeader, HDR_LEN};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RAM: u64 = 0x10_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x8000;
const USED: u64 = 0x9000;
const MAX_BYTES: u64 = 65_535 + 18 + HDR_LEN as u64;

#[derive(Arbitrary, Debug)]
#[allow(dead_code)] // read through Debug when a crash is reported
struct Desc {
    addr: u32,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
#[allow(dead_code)]
struct Input {
    size_log2: u8,
    descs: Vec<Desc>,
    heads: Vec<u16>,
    avail_idx: u16,
    dir: u8,
    acked: u64,
    /// Bytes written at a few guest addresses (headers, indirect tables).
    blobs: Vec<(u32, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let size = 1u16 << (input.size_log2 % 9); // 1..=256
    for (addr, bytes) in input.blobs.iter().take(8) {
        let a = u64::from(*addr) % RAM;
        let n = bytes.len().min((RAM - a) as usize).min(4096);
        let _ = mem.write_slice(&bytes[..n], GuestAddress(a));
    }
    for (i, d) in input.descs.iter().take(usize::from(size)).enumerate() {
        let at = GuestAddress(DESC + 16 * i as u64);
        // Addresses often near RAM's end, sometimes far outside.
        let addr = if d.flags & 0x8000 != 0 { u64::from(d.addr) << 8 } else { u64::from(d.addr) % (RAM + 0x1000) };
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(d.len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(d.flags & 0x7, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(d.next, GuestAddress(at.0 + 14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    for (i, h) in input.heads.iter().take(usize::from(size)).enumerate() {
        mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * i as u64)).unwrap();
    }
    mem.write_obj(input.avail_idx, GuestAddress(AVAIL + 2)).unwrap();

    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let ram = RamMap::new(&mem);
    let dir = [Direction::Read, Direction::Write, Direction::ReadThenWrite][usize::from(input.dir % 3)];
    let mut segs: Vec<Seg> = Vec::new();
    let Ok(iter) = q.iter(&mem) else { return };
    for c in iter.take(usize::from(size) * 2) {
        let Ok(w) = chain::walk(c, &ram, dir, usize::from(size), MAX_BYTES, &mut segs) else {
            continue;
        };
        assert!(w.descriptors <= usize::from(size), "{} descriptors", w.descriptors);
        assert!(w.readable + w.writable <= MAX_BYTES);
        let mut seen_write = false;
        for s in &segs {
            assert!(s.guest + u64::from(s.len) <= RAM, "segment outside RAM: {s:?}");
            match dir {
                Direction::Read => assert!(!s.write),
                Direction::Write => assert!(s.write),
                Direction::ReadThenWrite => {
                    assert!(!(seen_write && !s.write), "readable after writable");
                    seen_write |= s.write;
                }
            }
        }
        if dir == Direction::Read && w.readable >= HDR_LEN as u64 {
            let mut hb = [0u8; HDR_LEN];
            assert!(chain::read_at(&mem, &segs, 0, &mut hb));
            let h = VnetHeader::from_bytes(&hb);
            let frame_len = (w.readable - HDR_LEN as u64) as usize;
            if validate_tx(&h, frame_len, input.acked).is_ok() && h.flags & 1 != 0 {
                let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
                assert!(end <= frame_len, "checksum at {end} past a {frame_len}-byte frame");
            }
        }
    }
});
