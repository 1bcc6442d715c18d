//! One perf ring buffer per traced thread (perf-event2): every wanted tracepoint is opened for
//! the calling thread only (pid 0, any CPU, not inherited), sampled on every hit with its
//! thread id, a CLOCK_MONOTONIC timestamp (the clock of `Instant`) and its raw record; the
//! first one owns the ring and the others write into it (`PERF_EVENT_IOC_SET_OUTPUT`: allowed
//! between per-task events of the same task).
use std::io;
use std::os::fd::AsRawFd;

use perf_event::events::Tracepoint;
use perf_event::{Builder, Clock, Counter, SampleFlag, Sampler};

/// `PERF_EVENT_IOC_SET_OUTPUT`: `_IO('$', 5)`.
const PERF_EVENT_IOC_SET_OUTPUT: libc::c_ulong = 0x2405;
/// `PERF_RECORD_LOST` and `PERF_RECORD_SAMPLE`.
const RECORD_LOST: u32 = 2;
const RECORD_SAMPLE: u32 = 9;

/// A thread's ring and the events that write into it.
pub struct ThreadRing {
    pub tid: u32,
    sampler: Sampler,
    /// The other tracepoints, kept open (they write into `sampler`'s ring).
    _others: Vec<Counter>,
    /// Records the kernel dropped because the ring was full.
    pub lost: u64,
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    crate::sys::gettid()
}

fn builder(id: u64, tid: Option<u32>) -> Builder<'static> {
    let mut b = Builder::new(Tracepoint::with_id(id));
    match tid {
        Some(t) => b.observe_pid(t as libc::pid_t),
        None => b.observe_self(),
    };
    b.any_cpu()
        .include_kernel()
        .sample_period(1)
        .sample(SampleFlag::TID | SampleFlag::TIME | SampleFlag::RAW)
        .clockid(Clock::MONOTONIC)
        .enabled(true);
    b
}

impl ThreadRing {
    /// Opens tracepoints `ids` for thread `tid` of this process (`None`: the calling thread)
    /// into one ring of `ring_bytes` (a power of two) that wakes a poller once `watermark`
    /// bytes are in it.
    pub fn open(
        tid: Option<u32>,
        ids: &[u64],
        ring_bytes: usize,
        watermark: usize,
    ) -> io::Result<Self> {
        let (&first, rest) = ids
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no tracepoints"))?;
        let sampler = builder(first, tid)
            .wakeup_watermark(watermark)
            .build()?
            .sampled(ring_bytes)?;
        let mut others = Vec::with_capacity(rest.len());
        for &id in rest {
            let c = builder(id, tid).build()?;
            // SAFETY: both descriptors are perf events we own; the ioctl takes the target fd.
            let rc = unsafe {
                libc::ioctl(
                    c.as_raw_fd(),
                    // The request's C type differs between libcs (glibc: unsigned long).
                    PERF_EVENT_IOC_SET_OUTPUT as _,
                    sampler.as_raw_fd(),
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            others.push(c);
        }
        Ok(ThreadRing {
            tid: tid.unwrap_or_else(gettid),
            sampler,
            _others: others,
            lost: 0,
        })
    }

    /// The ring's fd (readable once the watermark is reached).
    pub fn fd(&self) -> i32 {
        self.sampler.as_raw_fd()
    }

    /// Takes every record out of the ring, in order: `on(Some((tid, time_ns, raw)))` for each
    /// sample, `on(None)` where the kernel dropped records (the ring was full): what came
    /// before and after that point do not pair up.
    pub fn drain(&mut self, mut on: impl FnMut(Option<(u32, u64, &[u8])>)) {
        while let Some(rec) = self.sampler.next_record() {
            let ty = rec.ty();
            let bytes = rec.to_contiguous();
            match ty {
                RECORD_SAMPLE => {
                    if let Some(s) = parse_sample(&bytes) {
                        on(Some(s));
                    }
                }
                RECORD_LOST => {
                    if let Some(n) = bytes.get(8..16) {
                        let mut x = [0u8; 8];
                        x.copy_from_slice(n);
                        self.lost += u64::from_ne_bytes(x);
                    }
                    on(None);
                }
                _ => {}
            }
        }
    }
}

/// A PERF_RECORD_SAMPLE body with sample_type TID | TIME | RAW: pid, tid, time, raw size,
/// raw bytes.
pub fn parse_sample(b: &[u8]) -> Option<(u32, u64, &[u8])> {
    let u32_at = |i: usize| -> Option<u32> {
        let s = b.get(i..i + 4)?;
        Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let tid = u32_at(4)?;
    let mut t = [0u8; 8];
    t.copy_from_slice(b.get(8..16)?);
    let size = u32_at(16)? as usize;
    let raw = b.get(20..20usize.checked_add(size)?)?;
    Some((tid, u64::from_ne_bytes(t), raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_and_short_ones_are_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&9u32.to_ne_bytes());
        b.extend_from_slice(&123456789u64.to_ne_bytes());
        b.extend_from_slice(&4u32.to_ne_bytes());
        b.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(parse_sample(&b), Some((9, 123456789, &[1u8, 2, 3, 4][..])));
        assert_eq!(parse_sample(&b[..22]), None);
        assert_eq!(parse_sample(&[]), None);
        let mut huge = b.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse_sample(&huge), None);
    }
}
