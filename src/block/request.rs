//! A virtio-blk request (virtio 1.2 §5.2.6), checked before anything touches the image.
//!
//! A request is one descriptor chain: device-readable bytes (the 16-byte header `type`,
//! `reserved`, `sector`, then for OUT the data, for DISCARD/WRITE_ZEROES 16-byte segments), then
//! device-writable bytes (for IN and GET_ID the data, then the one status byte, always last).
//! The layout is read by bytes, not by descriptors (VERSION_1 implies ANY_LAYOUT), so a header
//! split over two descriptors is fine; what is not: no device-writable byte for the status
//! ([`Parsed::Unanswerable`]), a header shorter than 16 bytes, data where the type has none or
//! none where it needs some, a data length that is not a multiple of 512, a sector range past
//! the capacity (or overflowing), a write to a read-only disk (all [`S_IOERR`]); unknown types,
//! and DISCARD/WRITE_ZEROES with flags they do not take ([`S_UNSUPP`]). [`parse`] only reads
//! the request's bytes through a closure, so it is fuzzed on its own.

/// Bytes of a sector; capacities and offsets are in sectors.
pub const SECTOR_SIZE: u64 = 512;
/// The request header: le32 type, le32 reserved (ioprio), le64 sector.
pub const HEADER_LEN: usize = 16;
/// A DISCARD / WRITE_ZEROES segment: le64 sector, le32 num_sectors, le32 flags.
pub const SEGMENT_LEN: usize = 16;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_GET_LIFETIME: u32 = 10;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const T_SECURE_ERASE: u32 = 14;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// WRITE_ZEROES may deallocate.
pub const WZ_UNMAP: u32 = 1;

/// What a disk takes, from its image and the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sectors.
    pub capacity: u64,
    pub readonly: bool,
    /// DISCARD and WRITE_ZEROES were negotiated.
    pub discard: bool,
    pub write_zeroes: bool,
    /// Sectors one DISCARD / WRITE_ZEROES segment may cover.
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    /// Segments one DISCARD / WRITE_ZEROES request may have.
    pub max_segments: u32,
}

/// Which request it is, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    /// Any other type (answered UNSUPP), or a chain whose type could not be read.
    Other,
}

impl Kind {
    pub fn of(t: u32) -> Kind {
        match t {
            T_IN => Kind::In,
            T_OUT => Kind::Out,
            T_FLUSH => Kind::Flush,
            T_GET_ID => Kind::GetId,
            T_DISCARD => Kind::Discard,
            T_WRITE_ZEROES => Kind::WriteZeroes,
            _ => Kind::Other,
        }
    }

    pub const ALL: [Kind; 7] = [
        Kind::In,
        Kind::Out,
        Kind::Flush,
        Kind::GetId,
        Kind::Discard,
        Kind::WriteZeroes,
        Kind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::In => "read",
            Kind::Out => "write",
            Kind::Flush => "flush",
            Kind::GetId => "get_id",
            Kind::Discard => "discard",
            Kind::WriteZeroes => "write_zeroes",
            Kind::Other => "other",
        }
    }
}

/// Why a request was refused (counted per cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No device-writable byte to put the status in.
    NoStatus,
    /// Fewer than 16 readable bytes.
    ShortHeader,
    /// Readable or writable bytes where the type has none, or none where it needs some.
    BadLayout,
    /// A data length that is not a multiple of 512, or segments not a multiple of 16.
    BadLength,
    /// Past the capacity, overflowing, or more than a segment may cover.
    OutOfRange,
    /// A write, discard or write-zeroes on a read-only disk.
    ReadOnly,
    /// An unknown type, a feature not negotiated, or flags the type does not take.
    Unsupported,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::NoStatus,
        Refusal::ShortHeader,
        Refusal::BadLayout,
        Refusal::BadLength,
        Refusal::OutOfRange,
        Refusal::ReadOnly,
        Refusal::Unsupported,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoStatus => "no_status",
            Refusal::ShortHeader => "short_header",
            Refusal::BadLayout => "bad_layout",
            Refusal::BadLength => "bad_length",
            Refusal::OutOfRange => "out_of_range",
            Refusal::ReadOnly => "read_only",
            Refusal::Unsupported => "unsupported",
        }
    }

    /// The status byte the driver gets.
    pub fn status(self) -> u8 {
        match self {
            Refusal::Unsupported => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Read `len` bytes at byte `offset` into the first `len` writable bytes.
    Read { offset: u64, len: u64 },
    /// Write the `len` readable bytes after the header to byte `offset`.
    Write { offset: u64, len: u64 },
    /// Make what was written durable.
    Flush,
    /// Write the serial (up to `len` bytes) into the writable bytes before the status.
    GetId { len: usize },
    /// Deallocate `len` bytes at `offset` (reads as zeros afterwards).
    Discard { offset: u64, len: u64 },
    /// Zero `len` bytes at `offset` (deallocating if `unmap`).
    WriteZeroes { offset: u64, len: u64, unmap: bool },
    /// Nothing to do: answer OK at once (a read-only disk's flush, a zero-length request).
    Done,
    /// Answer with the refusal's status at once.
    Refused(Refusal),
    /// Not even a status can be written: the chain goes back with length 0.
    Unanswerable,
}

/// A request's shape: bytes the device may read and write, and how to read them.
pub struct Shape<R: FnMut(usize, &mut [u8]) -> bool> {
    pub readable: u64,
    pub writable: u64,
    /// Copies readable bytes from an offset; false when they are not there.
    pub read: R,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | u64::from(u32_at(b, o + 4)) << 32
}

/// The byte range of `sectors` sectors from `sector`, if inside `capacity`.
fn range(sector: u64, sectors: u64, capacity: u64) -> Option<(u64, u64)> {
    let end = sector.checked_add(sectors)?;
    (end <= capacity).then(|| (sector * SECTOR_SIZE, sectors * SECTOR_SIZE))
}

/// Checks one request; returns its type (for counters; [`Kind::Other`] when unreadable) and
/// what to do.
pub fn parse<R: FnMut(usize, &mut [u8]) -> bool>(
    mut shape: Shape<R>,
    limits: &Limits,
) -> (Kind, Parsed) {
    use Parsed::Refused;
    if shape.writable == 0 {
        return (Kind::Other, Parsed::Unanswerable);
    }
    let mut hdr = [0u8; HEADER_LEN];
    if shape.readable < HEADER_LEN as u64 || !(shape.read)(0, &mut hdr) {
        return (Kind::Other, Refused(Refusal::ShortHeader));
    }
    let t = u32_at(&hdr, 0);
    let sector = u64_at(&hdr, 8);
    let kind = Kind::of(t);
    // Bytes after the header, and writable bytes before the status.
    let data_out = shape.readable - HEADER_LEN as u64;
    let data_in = shape.writable - 1;
    let parsed = match t {
        T_IN | T_OUT => {
            let (len, other) = if t == T_IN {
                (data_in, data_out)
            } else {
                (data_out, data_in)
            };
            if other != 0 {
                Refused(Refusal::BadLayout)
            } else if len % SECTOR_SIZE != 0 {
                Refused(Refusal::BadLength)
            } else if t == T_OUT && limits.readonly {
                Refused(Refusal::ReadOnly)
            } else {
                match range(sector, len / SECTOR_SIZE, limits.capacity) {
                    None => Refused(Refusal::OutOfRange),
                    Some(_) if len == 0 => Parsed::Done,
                    Some((offset, len)) if t == T_IN => Parsed::Read { offset, len },
                    Some((offset, len)) => Parsed::Write { offset, len },
                }
            }
        }
        T_FLUSH => {
            if data_in != 0 || data_out != 0 {
                Refused(Refusal::BadLayout)
            } else if limits.readonly {
                Parsed::Done
            } else {
                Parsed::Flush
            }
        }
        T_GET_ID => {
            if data_out != 0 || data_in == 0 {
                Refused(Refusal::BadLayout)
            } else {
                Parsed::GetId {
                    len: data_in.min(super::config::SERIAL_LEN as u64) as usize,
                }
            }
        }
        T_DISCARD | T_WRITE_ZEROES => discard(t, data_out, data_in, &mut shape.read, limits),
        _ => Refused(Refusal::Unsupported),
    };
    (kind, parsed)
}

/// DISCARD and WRITE_ZEROES: one or more 16-byte segments after the header.
fn discard(
    t: u32,
    data_out: u64,
    data_in: u64,
    read: &mut impl FnMut(usize, &mut [u8]) -> bool,
    limits: &Limits,
) -> Parsed {
    use Parsed::Refused;
    let zeroes = t == T_WRITE_ZEROES;
    let (negotiated, max_sectors) = if zeroes {
        (limits.write_zeroes, limits.max_write_zeroes_sectors)
    } else {
        (limits.discard, limits.max_discard_sectors)
    };
    if !negotiated {
        return Refused(Refusal::Unsupported);
    }
    if data_in != 0 || data_out == 0 {
        return Refused(Refusal::BadLayout);
    }
    if !data_out.is_multiple_of(SEGMENT_LEN as u64) {
        return Refused(Refusal::BadLength);
    }
    if data_out / SEGMENT_LEN as u64 > u64::from(limits.max_segments) {
        return Refused(Refusal::OutOfRange);
    }
    if limits.readonly {
        return Refused(Refusal::ReadOnly);
    }
    // One segment at most (max_segments is 1): its range is the request.
    let mut seg = [0u8; SEGMENT_LEN];
    if !read(HEADER_LEN, &mut seg) {
        return Refused(Refusal::ShortHeader);
    }
    let (sector, sectors, flags) = (u64_at(&seg, 0), u32_at(&seg, 8), u32_at(&seg, 12));
    let allowed = if zeroes { WZ_UNMAP } else { 0 };
    if flags & !allowed != 0 {
        return Refused(Refusal::Unsupported);
    }
    if sectors > max_sectors {
        return Refused(Refusal::OutOfRange);
    }
    match range(sector, u64::from(sectors), limits.capacity) {
        None => Refused(Refusal::OutOfRange),
        Some(_) if sectors == 0 => Parsed::Done,
        Some((offset, len)) if zeroes => Parsed::WriteZeroes {
            offset,
            len,
            unmap: flags & WZ_UNMAP != 0,
        },
        Some((offset, len)) => Parsed::Discard { offset, len },
    }
}

/// The status byte's offset in the writable bytes and the used length of a finished request
/// (`data_written`: bytes of data the device wrote before the status).
pub fn used_len(data_written: u64) -> u32 {
    u32::try_from(data_written.saturating_add(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        capacity: 100,
        readonly: false,
        discard: true,
        write_zeroes: true,
        max_discard_sectors: 64,
        max_write_zeroes_sectors: 64,
        max_segments: 1,
    };

    fn req(t: u32, sector: u64, extra: &[u8], writable: u64, limits: &Limits) -> Parsed {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&t.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&sector.to_le_bytes());
        bytes.extend_from_slice(extra);
        raw(&bytes, writable, limits)
    }

    fn raw(bytes: &[u8], writable: u64, limits: &Limits) -> Parsed {
        let shape = Shape {
            readable: bytes.len() as u64,
            writable,
            read: |off: usize, buf: &mut [u8]| match bytes.get(off..off + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            },
        };
        parse(shape, limits).1
    }

    fn seg(sector: u64, n: u32, flags: u32) -> Vec<u8> {
        let mut v = sector.to_le_bytes().to_vec();
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v
    }

    #[test]
    fn good_requests() {
        let l = &LIMITS;
        assert_eq!(
            req(T_IN, 2, &[], 1025, l),
            Parsed::Read {
                offset: 1024,
                len: 1024
            }
        );
        assert_eq!(
            req(T_OUT, 99, &[7; 512], 1, l),
            Parsed::Write {
                offset: 99 * 512,
                len: 512
            }
        );
        assert_eq!(req(T_FLUSH, 0, &[], 1, l), Parsed::Flush);
        assert_eq!(req(T_GET_ID, 0, &[], 21, l), Parsed::GetId { len: 20 });
        assert_eq!(req(T_GET_ID, 0, &[], 5, l), Parsed::GetId { len: 4 });
        assert_eq!(
            req(T_DISCARD, 0, &seg(10, 8, 0), 1, l),
            Parsed::Discard {
                offset: 5120,
                len: 4096
            }
        );
        assert_eq!(
            req(T_WRITE_ZEROES, 0, &seg(92, 8, WZ_UNMAP), 1, l),
            Parsed::WriteZeroes {
                offset: 92 * 512,
                len: 4096,
                unmap: true
            }
        );
        assert_eq!(
            req(T_IN, 100, &[], 1, l),
            Parsed::Done,
            "zero-length at the end"
        );
        let ro = Limits {
            readonly: true,
            ..LIMITS
        };
        assert_eq!(req(T_FLUSH, 0, &[], 1, &ro), Parsed::Done);
        assert!(matches!(req(T_IN, 0, &[], 513, &ro), Parsed::Read { .. }));
    }

    #[test]
    fn bad_requests_get_a_status_and_touch_nothing() {
        use Parsed::Refused;
        let l = &LIMITS;
        assert_eq!(req(T_IN, 0, &[], 0, l), Parsed::Unanswerable);
        assert_eq!(raw(&[0; 15], 513, l), Refused(Refusal::ShortHeader));
        assert_eq!(req(T_IN, 0, &[1], 513, l), Refused(Refusal::BadLayout));
        assert_eq!(req(T_OUT, 0, &[1; 512], 2, l), Refused(Refusal::BadLayout));
        assert_eq!(req(T_IN, 0, &[], 512, l), Refused(Refusal::BadLength));
        assert_eq!(req(T_OUT, 0, &[1; 100], 1, l), Refused(Refusal::BadLength));
        assert_eq!(req(T_IN, 100, &[], 513, l), Refused(Refusal::OutOfRange));
        assert_eq!(req(T_IN, 99, &[], 1025, l), Refused(Refusal::OutOfRange));
        assert_eq!(
            req(T_IN, u64::MAX, &[], 513, l),
            Refused(Refusal::OutOfRange)
        );
        assert_eq!(
            req(T_IN, u64::MAX / 512 + 1, &[], 513, l),
            Refused(Refusal::OutOfRange)
        );
        assert_eq!(req(T_FLUSH, 0, &[1], 1, l), Refused(Refusal::BadLayout));
        assert_eq!(req(T_GET_ID, 0, &[], 1, l), Refused(Refusal::BadLayout));
        for t in [T_GET_LIFETIME, T_SECURE_ERASE, 2, 3, 99, u32::MAX] {
            assert_eq!(req(t, 0, &[], 1, l), Refused(Refusal::Unsupported), "{t}");
        }
        // Discard and write-zeroes.
        assert_eq!(
            req(T_DISCARD, 0, &seg(0, 8, 1), 1, l),
            Refused(Refusal::Unsupported),
            "unmap flag on a discard"
        );
        assert_eq!(
            req(T_WRITE_ZEROES, 0, &seg(0, 8, 2), 1, l),
            Refused(Refusal::Unsupported)
        );
        assert_eq!(
            req(T_DISCARD, 0, &seg(96, 8, 0), 1, l),
            Refused(Refusal::OutOfRange)
        );
        assert_eq!(
            req(T_DISCARD, 0, &seg(u64::MAX - 2, 8, 0), 1, l),
            Refused(Refusal::OutOfRange)
        );
        assert_eq!(
            req(T_DISCARD, 0, &seg(0, 65, 0), 1, l),
            Refused(Refusal::OutOfRange)
        );
        let two = [seg(0, 1, 0), seg(2, 1, 0)].concat();
        assert_eq!(req(T_DISCARD, 0, &two, 1, l), Refused(Refusal::OutOfRange));
        assert_eq!(
            req(T_DISCARD, 0, &[0; 10], 1, l),
            Refused(Refusal::BadLength)
        );
        assert_eq!(req(T_DISCARD, 0, &[], 1, l), Refused(Refusal::BadLayout));
        let none = Limits {
            discard: false,
            write_zeroes: false,
            ..LIMITS
        };
        assert_eq!(
            req(T_DISCARD, 0, &seg(0, 8, 0), 1, &none),
            Refused(Refusal::Unsupported)
        );
        // Read-only: every write kind.
        let ro = Limits {
            readonly: true,
            ..LIMITS
        };
        assert_eq!(req(T_OUT, 0, &[1; 512], 1, &ro), Refused(Refusal::ReadOnly));
        assert_eq!(
            req(T_DISCARD, 0, &seg(0, 8, 0), 1, &ro),
            Refused(Refusal::ReadOnly)
        );
        assert_eq!(
            req(T_WRITE_ZEROES, 0, &seg(0, 8, 0), 1, &ro),
            Refused(Refusal::ReadOnly)
        );
        assert_eq!(Refusal::Unsupported.status(), S_UNSUPP);
        assert_eq!(Refusal::OutOfRange.status(), S_IOERR);
    }
}
