//! KVM's binary statistics (`KVM_GET_STATS_FD`, Linux 5.14): the kernel's own counters for the
//! VM and each vCPU — every exit KVM took (`exits`), the ones it handled itself and the ones it
//! sent to us, halts and halt polling, page faults, emulated instructions, injected interrupts.
//!
//! The fd is KVM's, opened by this process (KVM refuses the ioctl from another one); no
//! privilege is needed. Layout (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"): a header
//! (`kvm_stats_header`), an id string, `num_desc` descriptors of `16 + name_size` bytes each
//! (`kvm_stats_desc` and a NUL-terminated name), and a data block of u64 values, one per
//! descriptor (`size` of them for a histogram) at the descriptor's `offset`. The descriptors
//! are read once; [`KvmStats::read`] reads the data block with one `pread`.
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_BASE_MASK, KVM_STATS_BASE_POW2, KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT,
    KVM_STATS_TYPE_LINEAR_HIST, KVM_STATS_TYPE_LOG_HIST, KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK,
    KVM_STATS_UNIT_BOOLEAN, KVM_STATS_UNIT_BYTES, KVM_STATS_UNIT_CYCLES, KVM_STATS_UNIT_MASK,
    KVM_STATS_UNIT_NONE, KVM_STATS_UNIT_SECONDS,
};

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`, on a VM or a vCPU fd.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAE << 8 | 0xce;
/// `sizeof(struct kvm_stats_header)`.
const HEADER_LEN: usize = 24;
/// `sizeof(struct kvm_stats_desc)` without its name.
const DESC_LEN: usize = 16;
/// Bounds that no kernel comes near (about 50 stats, names under 48 bytes, histograms of 32
/// buckets); past them the fd is refused rather than trusted with an allocation.
const MAX_DESCS: u32 = 4096;
const MAX_NAME: u32 = 1024;
const MAX_VALUES: u32 = 1 << 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatsError {
    #[error("KVM_GET_STATS_FD failed: {0} (KVM's binary statistics need Linux 5.14 or later)")]
    Ioctl(String),
    #[error("cannot read KVM's statistics: {0}")]
    Read(String),
    #[error("KVM's statistics are malformed: {0}")]
    Format(String),
}

/// What a value means over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// Only grows (a count of events, a sum of times).
    Cumulative,
    /// A value now (pages mapped).
    Instant,
    /// The largest value seen.
    Peak,
    /// A histogram with buckets `bucket_size` wide.
    LinearHist,
    /// A histogram whose bucket `i` holds values in `[2^(i-1), 2^i)`.
    LogHist,
    /// A type this code does not know; the value is still shown.
    Unknown(u32),
}

impl StatKind {
    pub fn name(self) -> &'static str {
        match self {
            StatKind::Cumulative => "cumulative",
            StatKind::Instant => "instant",
            StatKind::Peak => "peak",
            StatKind::LinearHist => "linear-hist",
            StatKind::LogHist => "log-hist",
            StatKind::Unknown(_) => "unknown",
        }
    }

    pub fn is_histogram(self) -> bool {
        matches!(self, StatKind::LinearHist | StatKind::LogHist)
    }
}

/// One statistic as its descriptor gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDesc {
    /// KVM's name: `exits`, `halt_poll_success_ns`, `halt_wait_hist`, ...
    pub name: String,
    pub kind: StatKind,
    /// `none`, `bytes`, `seconds`, `cycles`, `boolean`.
    pub unit: &'static str,
    /// The value is `v * base^exponent` of the unit (`seconds` with -9: nanoseconds).
    pub base: u32,
    pub exponent: i16,
    /// Number of u64 values (1, or the buckets of a histogram).
    pub size: u16,
    /// Offset of the first value in the data block.
    pub offset: u32,
    /// Width of a linear histogram's bucket.
    pub bucket_size: u32,
}

impl StatDesc {
    /// `ns`, `us`, `bytes`, `cycles`, or empty.
    pub fn unit_suffix(&self) -> String {
        match (self.unit, self.base, self.exponent) {
            ("seconds", 10, -9) => "ns".into(),
            ("seconds", 10, -6) => "us".into(),
            ("seconds", 10, 0) => "s".into(),
            ("none" | "boolean", _, 0) => String::new(),
            (u, _, 0) => u.into(),
            (u, b, e) => format!("{u}*{b}^{e}"),
        }
    }
}

/// A value: one number, or a histogram's buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatValue {
    Scalar(u64),
    Hist(Vec<u64>),
}

impl StatValue {
    /// The number, or the histogram's total count.
    pub fn total(&self) -> u64 {
        match self {
            StatValue::Scalar(v) => *v,
            StatValue::Hist(b) => b.iter().fold(0u64, |a, v| a.saturating_add(*v)),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            StatValue::Scalar(v) => serde_json::json!(v),
            StatValue::Hist(b) => serde_json::json!(b),
        }
    }
}

/// The header fields this reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub name_size: u32,
    pub num_desc: u32,
    pub id_offset: u32,
    pub desc_offset: u32,
    pub data_offset: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(x)
}

/// Parses a `kvm_stats_header`.
pub fn parse_header(b: &[u8]) -> Result<Header, StatsError> {
    if b.len() < HEADER_LEN {
        return Err(StatsError::Format(format!(
            "header of {} bytes, need {HEADER_LEN}",
            b.len()
        )));
    }
    let h = Header {
        name_size: u32_at(b, 4),
        num_desc: u32_at(b, 8),
        id_offset: u32_at(b, 12),
        desc_offset: u32_at(b, 16),
        data_offset: u32_at(b, 20),
    };
    if h.name_size == 0 || h.name_size > MAX_NAME {
        return Err(StatsError::Format(format!("name size {}", h.name_size)));
    }
    if h.num_desc > MAX_DESCS {
        return Err(StatsError::Format(format!("{} descriptors", h.num_desc)));
    }
    Ok(h)
}

fn kind_of(flags: u32) -> StatKind {
    match flags & KVM_STATS_TYPE_MASK {
        KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
        KVM_STATS_TYPE_INSTANT => StatKind::Instant,
        KVM_STATS_TYPE_PEAK => StatKind::Peak,
        KVM_STATS_TYPE_LINEAR_HIST => StatKind::LinearHist,
        KVM_STATS_TYPE_LOG_HIST => StatKind::LogHist,
        other => StatKind::Unknown(other),
    }
}

fn unit_of(flags: u32) -> &'static str {
    match flags & KVM_STATS_UNIT_MASK {
        KVM_STATS_UNIT_NONE => "none",
        KVM_STATS_UNIT_BYTES => "bytes",
        KVM_STATS_UNIT_SECONDS => "seconds",
        KVM_STATS_UNIT_CYCLES => "cycles",
        KVM_STATS_UNIT_BOOLEAN => "boolean",
        _ => "unknown",
    }
}

/// Parses `num` descriptors of `16 + name_size` bytes each. Every value must lie inside a data
/// block of `data_len` bytes (`None`: not checked here).
pub fn parse_descriptors(
    b: &[u8],
    num: u32,
    name_size: u32,
    data_len: Option<usize>,
) -> Result<Vec<StatDesc>, StatsError> {
    let stride = DESC_LEN + name_size as usize;
    let need = stride
        .checked_mul(num as usize)
        .ok_or_else(|| StatsError::Format("descriptor block too large".into()))?;
    if b.len() < need {
        return Err(StatsError::Format(format!(
            "descriptor block of {} bytes, need {need}",
            b.len()
        )));
    }
    let mut out = Vec::with_capacity(num as usize);
    for i in 0..num as usize {
        let d = &b[i * stride..(i + 1) * stride];
        let flags = u32_at(d, 0);
        let exponent = i16::from_ne_bytes([d[4], d[5]]);
        let size = u16::from_ne_bytes([d[6], d[7]]);
        let offset = u32_at(d, 8);
        let bucket_size = u32_at(d, 12);
        let raw = &d[DESC_LEN..];
        let name_len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        let name = String::from_utf8_lossy(&raw[..name_len]).into_owned();
        if name.is_empty() {
            return Err(StatsError::Format(format!("descriptor {i} has no name")));
        }
        if size == 0 || u32::from(size) > MAX_VALUES {
            return Err(StatsError::Format(format!("{name}: {size} values")));
        }
        let end = u64::from(offset) + u64::from(size) * 8;
        if let Some(len) = data_len {
            if end > len as u64 {
                return Err(StatsError::Format(format!(
                    "{name}: values at {offset}..{end} outside the {len}-byte data block"
                )));
            }
        }
        out.push(StatDesc {
            name,
            kind: kind_of(flags),
            unit: unit_of(flags),
            base: if flags & KVM_STATS_BASE_MASK == KVM_STATS_BASE_POW2 {
                2
            } else {
                10
            },
            exponent,
            size,
            offset,
            bucket_size,
        });
    }
    Ok(out)
}

/// The values of `descs` from a data block (a value past the block reads as 0: the
/// descriptors were checked against it, so only a shorter read can cause that).
pub fn values(descs: &[StatDesc], data: &[u8]) -> Vec<StatValue> {
    let at = |i: usize| -> u64 {
        data.get(i..i + 8).map_or(0, |b| {
            let mut x = [0u8; 8];
            x.copy_from_slice(b);
            u64::from_ne_bytes(x)
        })
    };
    descs
        .iter()
        .map(|d| {
            let base = d.offset as usize;
            if d.kind.is_histogram() || d.size > 1 {
                StatValue::Hist((0..d.size as usize).map(|k| at(base + 8 * k)).collect())
            } else {
                StatValue::Scalar(at(base))
            }
        })
        .collect()
}

/// One VM's or vCPU's statistics fd with its descriptors.
#[derive(Debug)]
pub struct KvmStats {
    file: File,
    /// KVM's id: `kvm-1234` or `kvm-1234/vcpu-0`.
    pub id: String,
    pub descs: Vec<StatDesc>,
    data_offset: u64,
    data_len: usize,
}

impl KvmStats {
    /// Asks KVM for the statistics fd of the VM or vCPU `fd` and reads its descriptors.
    pub fn open(fd: &impl AsRawFd) -> Result<KvmStats, StatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; `fd` is a
        // live KVM VM or vCPU descriptor borrowed for the call.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as libc::Ioctl, 0) };
        if raw < 0 {
            return Err(StatsError::Ioctl(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        Self::from_file(file)
    }

    /// Reads the header, id and descriptors of an open statistics fd (or a file laid out the
    /// same way).
    pub fn from_file(file: File) -> Result<KvmStats, StatsError> {
        let read = |at: u64, len: usize| -> Result<Vec<u8>, StatsError> {
            let mut b = vec![0u8; len];
            file.read_exact_at(&mut b, at)
                .map_err(|e| StatsError::Read(format!("{len} bytes at {at}: {e}")))?;
            Ok(b)
        };
        let h = parse_header(&read(0, HEADER_LEN)?)?;
        let id_raw = read(u64::from(h.id_offset), h.name_size as usize)?;
        let id_len = id_raw.iter().position(|&c| c == 0).unwrap_or(id_raw.len());
        let id = String::from_utf8_lossy(&id_raw[..id_len]).into_owned();
        let stride = DESC_LEN + h.name_size as usize;
        let block = read(u64::from(h.desc_offset), stride * h.num_desc as usize)?;
        let descs = parse_descriptors(&block, h.num_desc, h.name_size, None)?;
        let data_len = descs
            .iter()
            .map(|d| d.offset as usize + 8 * d.size as usize)
            .max()
            .unwrap_or(0);
        Ok(KvmStats {
            file,
            id,
            descs,
            data_offset: u64::from(h.data_offset),
            data_len,
        })
    }

    /// The values now, in descriptor order.
    pub fn read(&self) -> Result<Vec<StatValue>, StatsError> {
        let mut data = vec![0u8; self.data_len];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(|e| StatsError::Read(e.to_string()))?;
        Ok(values(&self.descs, &data))
    }

    /// The values now, by name.
    pub fn read_named(&self) -> Result<Vec<(&StatDesc, StatValue)>, StatsError> {
        Ok(self.descs.iter().zip(self.read()?).collect())
    }
}

#[cfg(test)]
mod tests;
