//! Turning an untrusted descriptor chain into checked buffers, and the used ring.
//!
//! [`walk`] follows a chain (direct or through an indirect table) and returns its buffers as
//! [`Seg`]s: guest address, host address in our mapping of guest RAM, length. It refuses
//! (without touching anything) chains that break off (a loop, more descriptors than the queue
//! size, a `next` out of range, a descriptor or indirect table outside RAM or overflowing the
//! address space), buffers outside RAM, and descriptors of the wrong direction. Only then are
//! the host addresses handed to the kernel as iovecs: frames never pass through a copy here.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

/// Most iovecs one readv/writev takes (`UIO_MAXIOV`).
pub const MAX_SEGS: usize = 1024;

/// One buffer of a chain, checked to lie inside guest RAM (split where RAM regions meet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub guest: u64,
    /// Where those bytes are in this process (inside the guest RAM mapping).
    pub host: usize,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// Which descriptors a chain may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device-readable only (transmit).
    Read,
    /// Device-writable only (receive).
    Write,
    /// Readable ones, then writable ones (control).
    ReadThenWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("head index {head} is not below the queue size {size}")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error("no descriptors (head past the table, or an empty or misaligned indirect table)")]
    Empty,
    #[error("the chain breaks off after {0} descriptors (a loop, longer than the queue, a next index out of range, or a descriptor or indirect table outside RAM)")]
    Broken(usize),
    #[error("more than {0} descriptors")]
    TooManyDescriptors(usize),
    #[error("descriptor {index} is device-{}, which this queue does not take", if *.writable { "writable" } else { "readable" })]
    Direction { index: usize, writable: bool },
    #[error("buffer {addr:#x}+{len:#x} is not inside guest RAM")]
    OutsideRam { addr: u64, len: u32 },
    #[error("more than {0} bytes")]
    TooLong(u64),
    #[error("more than {MAX_SEGS} buffers")]
    TooManySegments,
}

/// Guest RAM as (guest start, length, host address) per region, sorted: translating a buffer
/// is a short scan instead of a generic region lookup per descriptor.
#[derive(Debug, Clone, Default)]
pub struct RamMap(Vec<(u64, u64, usize)>);

impl RamMap {
    /// The regions of `mem`, which must outlive the map's use (their host addresses are kept).
    pub fn new(mem: &GuestMemoryMmap) -> Self {
        let mut v: Vec<(u64, u64, usize)> = mem
            .iter()
            .filter_map(|r| {
                let start = r.start_addr().0;
                let host = mem.get_host_address(GuestAddress(start)).ok()?;
                Some((start, r.len(), host as usize))
            })
            .collect();
        v.sort_unstable();
        RamMap(v)
    }

    /// Calls `f(guest, host, len)` for each piece of `addr..addr+len` (one per region it
    /// crosses). False, and nothing more called, where a byte lies outside RAM.
    fn pieces(&self, addr: u64, len: u64, mut f: impl FnMut(u64, usize, u64) -> bool) -> bool {
        let (mut at, mut left) = (addr, len);
        while left > 0 {
            let Some(&(start, rlen, host)) = self.0.iter().find(|r| at >= r.0 && at - r.0 < r.1)
            else {
                return false;
            };
            let n = left.min(rlen - (at - start));
            if !f(at, host + (at - start) as usize, n) {
                return false;
            }
            at += n;
            left -= n;
        }
        true
    }
}

/// What [`walk`] found: bytes the device may read, then bytes it may write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walked {
    pub readable: u64,
    pub writable: u64,
    /// Descriptors the chain took (the indirect one not counted).
    pub descriptors: usize,
}

/// Follows `chain` and appends its buffers to `segs` (cleared first). `max_descriptors` is
/// the queue size (virtio 1.2 §2.7.5.3.1: no chain is longer, indirect tables included);
/// `max_bytes` caps the total length.
pub fn walk<M>(
    chain: DescriptorChain<M>,
    ram: &RamMap,
    dir: Direction,
    max_descriptors: usize,
    max_bytes: u64,
    segs: &mut Vec<Seg>,
) -> Result<Walked, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    segs.clear();
    let mut w = Walked::default();
    let mut count = 0usize;
    let mut last_has_next = false;
    let mut seen_writable = false;
    for desc in chain {
        if count == max_descriptors {
            return Err(ChainError::TooManyDescriptors(max_descriptors));
        }
        let index = count;
        count += 1;
        last_has_next = desc.has_next();
        let writable = desc.is_write_only();
        let ok = match dir {
            Direction::Read => !writable,
            Direction::Write => writable,
            Direction::ReadThenWrite => writable || !seen_writable,
        };
        if !ok {
            return Err(ChainError::Direction { index, writable });
        }
        seen_writable |= writable;
        let (addr, len) = (desc.addr().0, desc.len());
        if len == 0 {
            continue;
        }
        if addr.checked_add(u64::from(len)).is_none() {
            return Err(ChainError::OutsideRam { addr, len });
        }
        let total = w.readable + w.writable + u64::from(len);
        if total > max_bytes {
            return Err(ChainError::TooLong(max_bytes));
        }
        let mut too_many = false;
        let inside = ram.pieces(addr, u64::from(len), |guest, host, n| {
            if segs.len() == MAX_SEGS {
                too_many = true;
                return false;
            }
            segs.push(Seg {
                guest,
                host,
                len: n as u32,
                write: writable,
            });
            true
        });
        if too_many {
            return Err(ChainError::TooManySegments);
        }
        if !inside {
            return Err(ChainError::OutsideRam { addr, len });
        }
        if writable {
            w.writable += u64::from(len);
        } else {
            w.readable += u64::from(len);
        }
    }
    if count == 0 {
        return Err(ChainError::Empty);
    }
    // The iterator stops early, without an error, on anything it cannot follow: a chain whose
    // last descriptor still says NEXT did not end where the driver said it would.
    if last_has_next {
        return Err(ChainError::Broken(count));
    }
    w.descriptors = count;
    Ok(w)
}

/// Walks the bytes `offset..offset + len` of a chain's buffers: for each segment piece, `f` gets
/// the segment, the offset inside it and the matching range of the caller's buffer, and says
/// whether the access worked. False if an access failed or the buffers are shorter.
fn for_each_piece(
    segs: &[Seg],
    offset: usize,
    len: usize,
    mut f: impl FnMut(&Seg, usize, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut skip = offset;
    let mut done = 0;
    for s in segs {
        if done == len {
            break;
        }
        let seg_len = s.len as usize;
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len - done);
        if !f(s, skip, done..done + n) {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == len
}

/// Copies `buf.len()` bytes starting `offset` bytes into the chain's buffers (those of `segs`)
/// out of guest memory. Returns false if the buffers are shorter.
pub fn read_at(mem: &GuestMemoryMmap, segs: &[Seg], offset: usize, buf: &mut [u8]) -> bool {
    for_each_piece(segs, offset, buf.len(), |s, skip, r| {
        mem.read_slice(&mut buf[r], GuestAddress(s.guest + skip as u64))
            .is_ok()
    })
}

/// Writes `data` starting `offset` bytes into the chain's buffers. Returns false if they are
/// shorter.
pub fn write_at(mem: &GuestMemoryMmap, segs: &[Seg], offset: usize, data: &[u8]) -> bool {
    for_each_piece(segs, offset, data.len(), |s, skip, r| {
        mem.write_slice(&data[r], GuestAddress(s.guest + skip as u64))
            .is_ok()
    })
}

/// [`read_at`] through the segments' host addresses (no region lookup).
///
/// The segments must come from [`walk`] over `mem` that the caller still holds.
pub fn read_host(segs: &[Seg], offset: usize, buf: &mut [u8]) -> bool {
    for_each_piece(segs, offset, buf.len(), |s, skip, r| {
        for (i, b) in buf[r].iter_mut().enumerate() {
            // SAFETY: byte `skip + i` < `s.len` of a segment `walk` found inside guest RAM,
            // which the caller keeps mapped. Volatile: the guest may write it concurrently.
            *b = unsafe { std::ptr::read_volatile((s.host + skip + i) as *const u8) };
        }
        true
    })
}

/// [`write_at`] through the segments' host addresses (same conditions as [`read_host`]).
pub fn write_host(segs: &[Seg], offset: usize, data: &[u8]) -> bool {
    for_each_piece(segs, offset, data.len(), |s, skip, r| {
        for (i, &b) in data[r].iter().enumerate() {
            // SAFETY: as in `read_host`; the segment is device-writable guest RAM.
            unsafe { std::ptr::write_volatile((s.host + skip + i) as *mut u8, b) };
        }
        true
    })
}

/// A reusable iovec array built from [`Seg`]s.
#[derive(Default)]
pub struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs are plain addresses into guest RAM (or a buffer of ours); they are only
// dereferenced by the kernel inside one readv/writev made by the thread holding the lock
// around this value, while the guest memory mapping they point into is held alive.
unsafe impl Send for IoVecs {}

impl IoVecs {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn push(&mut self, base: usize, len: usize) {
        self.0.push(libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        });
    }

    pub fn push_segs(&mut self, segs: &[Seg]) {
        for s in segs {
            self.push(s.host, s.len as usize);
        }
    }

    /// Appends `segs`, merging a segment into the last iovec when it continues it in memory.
    pub fn push_segs_merged(&mut self, segs: &[Seg], from: usize) {
        for s in segs {
            if self.0.len() > from {
                if let Some(last) = self.0.last_mut() {
                    if last.iov_base as usize + last.iov_len == s.host {
                        last.iov_len += s.len as usize;
                        continue;
                    }
                }
            }
            self.push(s.host, s.len as usize);
        }
    }

    /// Drops `bytes` from the front of the iovecs starting at `*start` (advancing it).
    pub fn advance(&mut self, start: &mut usize, mut bytes: usize) {
        while bytes > 0 && *start < self.0.len() {
            let e = &mut self.0[*start];
            if e.iov_len <= bytes {
                bytes -= e.iov_len;
                *start += 1;
            } else {
                e.iov_base = (e.iov_base as usize + bytes) as *mut libc::c_void;
                e.iov_len -= bytes;
                bytes = 0;
            }
        }
        if *start == self.0.len() || *start > 256 {
            self.0.drain(..*start);
            *start = 0;
        }
    }

    /// Runs `f` on iovecs `start..end` followed by one more, `tail` (in place of entry `end`
    /// for the call).
    pub fn with_tail<R>(
        &mut self,
        start: usize,
        end: usize,
        tail: (usize, usize),
        f: impl FnOnce(&[libc::iovec]) -> R,
    ) -> R {
        let tail = libc::iovec {
            iov_base: tail.0 as *mut libc::c_void,
            iov_len: tail.1,
        };
        if end == self.0.len() {
            self.0.push(tail);
            let r = f(&self.0[start..]);
            self.0.pop();
            r
        } else {
            let saved = std::mem::replace(&mut self.0[end], tail);
            let r = f(&self.0[start..=end]);
            self.0[end] = saved;
            r
        }
    }

    /// The end of the shortest run of iovecs from `start` holding at least `bytes`, and the
    /// bytes they hold.
    pub fn prefix(&self, start: usize, bytes: usize) -> (usize, usize) {
        let mut total = 0;
        for (i, e) in self.0.iter().enumerate().skip(start) {
            total += e.iov_len;
            if total >= bytes {
                return (i + 1, total);
            }
        }
        (self.0.len(), total)
    }

    pub fn as_slice(&self) -> &[libc::iovec] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as D, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};

    use super::*;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
    const RAM: u64 = 0x100_0000;

    fn mem() -> GuestMemoryMmap {
        // Two regions that meet at 8 MiB, so a buffer may straddle them.
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x80_0000),
            (GuestAddress(0x80_0000), 0x80_0000),
        ])
        .unwrap()
    }

    /// Puts `descs` in the table at 0 and makes descriptor 0 the next available head; walks it.
    fn walk_descs(
        descs: &[RawDescriptor],
        dir: Direction,
    ) -> (Result<Walked, ChainError>, Vec<Seg>) {
        walk_in(&mem(), descs, dir)
    }

    fn walk_in(
        m: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        dir: Direction,
    ) -> (Result<Walked, ChainError>, Vec<Seg>) {
        let m = m.clone();
        let vq = MockSplitQueue::new(&m, 16);
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        let mut segs = Vec::new();
        let r = walk(chain, &RamMap::new(&m), dir, 16, 1 << 20, &mut segs);
        (r, segs)
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(D::new(addr, len, flags, next))
    }

    #[test]
    fn good_chains() {
        let (r, segs) = walk_descs(
            &[d(0x10_0000, 12, NEXT, 1), d(0x20_0000, 100, 0, 0)],
            Direction::Read,
        );
        assert_eq!(
            r,
            Ok(Walked {
                readable: 112,
                writable: 0,
                descriptors: 2
            })
        );
        assert_eq!(segs.len(), 2);
        assert_eq!(
            (segs[1].guest, segs[1].len, segs[1].write),
            (0x20_0000, 100, false)
        );
        // A buffer across the region boundary becomes two segments.
        let (r, segs) = walk_descs(&[d(0x7f_fff0, 0x20, WRITE, 0)], Direction::Write);
        assert_eq!(r.unwrap().writable, 0x20);
        assert_eq!(segs.iter().map(|s| s.len).collect::<Vec<_>>(), [0x10, 0x10]);
        // Control: readable then writable; zero-length descriptors are skipped.
        let (r, segs) = walk_descs(
            &[
                d(0x10_0000, 2, NEXT, 1),
                d(0x10_1000, 0, NEXT, 2),
                d(0x10_2000, 1, WRITE, 0),
            ],
            Direction::ReadThenWrite,
        );
        assert_eq!(
            r,
            Ok(Walked {
                readable: 2,
                writable: 1,
                descriptors: 3
            })
        );
        assert_eq!(segs.len(), 2);
    }

    #[test]
    fn indirect_tables() {
        let m = mem();
        let table = 0x40_0000;
        m.write_obj(d(0x10_0000, 12, NEXT, 1), GuestAddress(table))
            .unwrap();
        m.write_obj(d(0x11_0000, 50, 0, 0), GuestAddress(table + 16))
            .unwrap();
        let (r, _) = walk_in(&m, &[d(table, 32, INDIRECT, 0)], Direction::Read);
        assert_eq!(r.unwrap().readable, 62);
        // Outside RAM, misaligned length, empty.
        for bad in [
            d(RAM + 0x1000, 32, INDIRECT, 0),
            d(table, 24, INDIRECT, 0),
            d(table, 0, INDIRECT, 0),
        ] {
            let (r, _) = walk_in(&m, &[bad], Direction::Read);
            assert_eq!(r, Err(ChainError::Empty));
        }
        // An indirect table that overflows the address space.
        let (r, _) = walk_descs(&[d(u64::MAX - 15, 32, INDIRECT, 0)], Direction::Read);
        assert!(r.is_err());
    }

    #[test]
    fn bad_chains_are_refused() {
        // A loop: 0 → 1 → 0.
        let (r, _) = walk_descs(
            &[d(0x10_0000, 8, NEXT, 1), d(0x10_1000, 8, NEXT, 0)],
            Direction::Read,
        );
        assert_eq!(r, Err(ChainError::Broken(16)));
        // next out of range.
        let (r, _) = walk_descs(&[d(0x10_0000, 8, NEXT, 99)], Direction::Read);
        assert_eq!(r, Err(ChainError::Broken(1)));
        // Outside RAM, straddling its end, overflowing the address space.
        for (addr, len) in [(RAM, 8), (RAM - 4, 8), (u64::MAX - 3, 8), (0xc000_0000, 1)] {
            let (r, _) = walk_descs(&[d(addr, len, 0, 0)], Direction::Read);
            assert_eq!(r, Err(ChainError::OutsideRam { addr, len }), "{addr:#x}");
        }
        // Direction.
        let (r, _) = walk_descs(
            &[d(0x10_0000, 8, NEXT, 1), d(0x10_1000, 8, WRITE, 0)],
            Direction::Read,
        );
        assert_eq!(
            r,
            Err(ChainError::Direction {
                index: 1,
                writable: true
            })
        );
        let (r, _) = walk_descs(&[d(0x10_0000, 8, 0, 0)], Direction::Write);
        assert_eq!(
            r,
            Err(ChainError::Direction {
                index: 0,
                writable: false
            })
        );
        let (r, _) = walk_descs(
            &[d(0x10_0000, 8, WRITE | NEXT, 1), d(0x10_1000, 8, 0, 0)],
            Direction::ReadThenWrite,
        );
        assert_eq!(
            r,
            Err(ChainError::Direction {
                index: 1,
                writable: false
            })
        );
        // Too long in bytes.
        let (r, _) = walk_descs(&[d(0x10_0000, 0x20_0000, 0, 0)], Direction::Read);
        assert_eq!(r, Err(ChainError::TooLong(1 << 20)));
    }

    #[test]
    fn indirect_chain_longer_than_the_queue() {
        let m = mem();
        let table = 0x40_0000;
        for i in 0..32u16 {
            let next = if i < 31 { NEXT } else { 0 };
            m.write_obj(
                d(0x10_0000, 4, next, i + 1),
                GuestAddress(table + 16 * u64::from(i)),
            )
            .unwrap();
        }
        let (r, _) = walk_in(&m, &[d(table, 32 * 16, INDIRECT, 0)], Direction::Read);
        assert_eq!(r, Err(ChainError::TooManyDescriptors(16)));
    }

    #[test]
    fn read_and_write_across_segments() {
        let m = mem();
        let segs = [
            Seg {
                guest: 0x1000,
                host: 0,
                len: 3,
                write: true,
            },
            Seg {
                guest: 0x2000,
                host: 0,
                len: 10,
                write: true,
            },
        ];
        assert!(write_at(&m, &segs, 2, &[1, 2, 3]));
        let mut b = [0u8; 4];
        assert!(read_at(&m, &segs, 1, &mut b));
        assert_eq!(b, [0, 1, 2, 3]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x2001)).unwrap(), 3);
        assert!(!write_at(&m, &segs, 12, &[1, 2]));
        assert!(!read_at(&m, &segs, 13, &mut b[..1]));
    }
}
