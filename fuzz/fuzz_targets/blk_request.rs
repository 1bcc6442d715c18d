//! The virtio-blk request parser (`block::request::parse`) on any bytes, any shape (readable
//! and writable byte counts) and any limits.
//!
//! Invariants: no panic; only readable bytes inside the shape are read; a read or write names
//! a byte range that is a non-empty multiple of 512 inside the capacity (no overflow), with
//! the data where the type puts it (readable after the header for a write, writable before the
//! status for a read) and nothing else; writes, discards and write-zeroes never on a read-only
//! disk; a discard or write-zeroes only when negotiated, within the per-segment limit; a chain
//! with no writable byte is never answered; GET_ID writes at most 20 bytes and at most what
//! the driver gave.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trapvisor::block::request::{parse, Limits, Parsed, Shape, HEADER_LEN, SECTOR_SIZE};

#[derive(Arbitrary, Debug)]
struct Input {
    bytes: Vec<u8>,
    readable: u16,
    writable: u16,
    capacity: u64,
    readonly: bool,
    discard: bool,
    write_zeroes: bool,
    max_sectors: u32,
}

fuzz_target!(|inp: Input| {
    let readable = u64::from(inp.readable);
    let writable = u64::from(inp.writable);
    let limits = Limits {
        capacity: inp.capacity,
        readonly: inp.readonly,
        discard: inp.discard,
        write_zeroes: inp.write_zeroes,
        max_discard_sectors: inp.max_sectors,
        max_write_zeroes_sectors: inp.max_sectors,
        max_segments: 1,
    };
    let bytes = &inp.bytes;
    let shape = Shape {
        readable,
        writable,
        read: |off: usize, buf: &mut [u8]| {
            assert!(
                (off + buf.len()) as u64 <= readable,
                "read past the readable bytes"
            );
            match bytes.get(off..off + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        },
    };
    let (_, parsed) = parse(shape, &limits);
    let cap_bytes = u128::from(inp.capacity) * u128::from(SECTOR_SIZE);
    let inside = |offset: u64, len: u64| {
        len > 0
            && len % SECTOR_SIZE == 0
            && offset % SECTOR_SIZE == 0
            && u128::from(offset) + u128::from(len) <= cap_bytes
    };
    if writable == 0 {
        assert_eq!(parsed, Parsed::Unanswerable);
        return;
    }
    match parsed {
        Parsed::Read { offset, len } => {
            assert!(inside(offset, len));
            assert_eq!(readable, HEADER_LEN as u64);
            assert_eq!(writable, len + 1);
        }
        Parsed::Write { offset, len } => {
            assert!(inside(offset, len) && !inp.readonly);
            assert_eq!(readable, HEADER_LEN as u64 + len);
            assert_eq!(writable, 1);
        }
        Parsed::Discard { offset, len } | Parsed::WriteZeroes { offset, len, .. } => {
            assert!(inside(offset, len) && !inp.readonly);
            assert!(len / SECTOR_SIZE <= u64::from(inp.max_sectors));
            assert!(matches!(parsed, Parsed::Discard { .. }) || inp.write_zeroes);
            assert!(matches!(parsed, Parsed::WriteZeroes { .. }) || inp.discard);
            assert_eq!(readable, HEADER_LEN as u64 + 16);
            assert_eq!(writable, 1);
        }
        Parsed::Flush => assert!(!inp.readonly && readable == 16 && writable == 1),
        Parsed::GetId { len } => {
            assert!(len >= 1 && len <= 20 && len as u64 <= writable - 1);
        }
        Parsed::Unanswerable => panic!("a chain with a writable byte left unanswered"),
        Parsed::Done | Parsed::Refused(_) => {}
    }
});
