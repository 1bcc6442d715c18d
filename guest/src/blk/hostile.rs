//! `blk.hostile`: every malformed request shape, one at a time on queue 0, each answer checked
//! against what the device must do (see `docs/builtin-guest.md`); then good requests.
use super::{data, ms, write_verify, Blk};
use crate::arch::time;
use crate::drivers::blk::{
    HDR_AT, STATUS_AT, S_IOERR, S_OK, S_UNSET, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN,
};
use crate::ulog;
use crate::virtio::queue::{RawDesc, DESC_F_NEXT, DESC_F_WRITE};

/// How long a case waits for its answer (a loaded host may take long to run the worker).
const CASE_WAIT_MS: u64 = 5_000;

/// What the device did with a hostile request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Back with this status byte.
    Status(u8),
    /// Back with used length 0 and the status untouched (no status could be written).
    Dropped,
    /// Not back.
    Ignored,
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Status(S_OK) => "ok",
        Outcome::Status(S_IOERR) => "ioerr",
        Outcome::Status(S_UNSUPP) => "unsupp",
        Outcome::Status(_) => "bad-status",
        Outcome::Dropped => "dropped",
        Outcome::Ignored => "ignored",
    }
}

fn hdr(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&t.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
        raw_next: false,
    }
}

/// `blk.hostile`: each case posts one malformed request and checks the answer.
pub(super) fn run(blk: &mut Blk) -> Result<(), &'static str> {
    const R: u16 = 0;
    const W: u16 = DESC_F_WRITE;
    const N: u16 = DESC_F_NEXT;
    let cap = blk.dev.capacity;
    let buf = data();
    let seg = data() + 4096;
    // A discard segment at sector 0, 8 sectors, flags 1 (unmap: not for DISCARD).
    // SAFETY: the data area is this task's.
    unsafe {
        (seg as *mut u64).write_volatile(0);
        ((seg + 8) as *mut u32).write_volatile(8);
        ((seg + 12) as *mut u32).write_volatile(1);
        ((seg + 16) as *mut u64).write_volatile(0);
        ((seg + 24) as *mut u32).write_volatile(8);
        ((seg + 28) as *mut u32).write_volatile(2);
    }
    let io = Outcome::Status(S_IOERR);
    let un = Outcome::Status(S_UNSUPP);
    let writable = !blk.dev.readonly();
    // A read-only disk offers no DISCARD: any discard is UNSUPP there.
    let discard_io = if writable { io } else { un };
    #[allow(clippy::type_complexity)]
    let cases: [(&str, [u8; 16], &[RawDesc], Outcome); 17] = [
        (
            "no-status",
            hdr(T_IN, 0),
            &[d(HDR_AT, 16, R, 0)],
            Outcome::Dropped,
        ),
        (
            "status-readable",
            hdr(T_FLUSH, 0),
            &[d(HDR_AT, 16, N, 1), d(STATUS_AT, 1, R, 0)],
            Outcome::Dropped,
        ),
        (
            "short-header",
            hdr(T_IN, 0),
            &[d(HDR_AT, 8, N, 1), d(STATUS_AT, 1, W, 0)],
            io,
        ),
        (
            "header-writable",
            hdr(T_IN, 0),
            &[d(HDR_AT, 16, W | N, 1), d(STATUS_AT, 1, W, 0)],
            io,
        ),
        (
            "odd-length",
            hdr(T_IN, 0),
            &[
                d(HDR_AT, 16, N, 1),
                d(buf, 100, W | N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            io,
        ),
        (
            "past-the-end",
            hdr(T_IN, cap),
            &[
                d(HDR_AT, 16, N, 1),
                d(buf, 512, W | N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            io,
        ),
        (
            "straddles-the-end",
            hdr(T_IN, cap - 1),
            &[
                d(HDR_AT, 16, N, 1),
                d(buf, 1024, W | N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            io,
        ),
        (
            "sector-overflow",
            hdr(T_IN, u64::MAX),
            &[
                d(HDR_AT, 16, N, 1),
                d(buf, 512, W | N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            io,
        ),
        (
            "read-data-readable",
            hdr(T_IN, 0),
            &[
                d(HDR_AT, 16, N, 1),
                d(buf, 512, N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            io,
        ),
        (
            "flush-with-data",
            hdr(T_FLUSH, 0),
            &[
                d(HDR_AT, 16, N, 1),
                d(buf, 512, W | N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            io,
        ),
        (
            "get-id-no-buffer",
            hdr(T_GET_ID, 0),
            &[d(HDR_AT, 16, N, 1), d(STATUS_AT, 1, W, 0)],
            io,
        ),
        (
            "unknown-type",
            hdr(99, 0),
            &[d(HDR_AT, 16, N, 1), d(STATUS_AT, 1, W, 0)],
            un,
        ),
        (
            "get-lifetime",
            hdr(10, 0),
            &[
                d(HDR_AT, 16, N, 1),
                d(buf, 16, W | N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            un,
        ),
        (
            "discard-unmap-flag",
            hdr(T_DISCARD, 0),
            &[d(HDR_AT, 16, N, 1), d(seg, 16, N, 2), d(STATUS_AT, 1, W, 0)],
            un,
        ),
        (
            "two-discard-segments",
            hdr(T_DISCARD, 0),
            &[d(HDR_AT, 16, N, 1), d(seg, 32, N, 2), d(STATUS_AT, 1, W, 0)],
            discard_io,
        ),
        (
            "desc-loop",
            hdr(T_IN, 0),
            &[d(HDR_AT, 16, N, 1), d(buf, 512, W | N, 0)],
            Outcome::Dropped,
        ),
        (
            "addr-beyond-ram",
            hdr(T_IN, 0),
            &[
                d(HDR_AT, 16, N, 1),
                d(1 << 46, 512, W | N, 2),
                d(STATUS_AT, 1, W, 0),
            ],
            Outcome::Dropped,
        ),
    ];
    let mut failed = 0;
    for (name, h, descs, want) in cases {
        let mut raw = [d(0, 0, 0, 0); 4];
        raw[..descs.len()].copy_from_slice(descs);
        // SAFETY: every address is the request's slot, the data area, or (addr-beyond-ram)
        // one outside RAM that the device must refuse.
        let head = unsafe { blk.dev.post_raw(0, h, &mut raw[..descs.len()]) }
            .ok_or("request queue full")?;
        blk.dev.kick_always(0);
        let deadline = time::ticks() + ms(blk, CASE_WAIT_MS);
        let got = loop {
            if let Some((id, len, status)) = blk.dev.reap(0)? {
                if id != head {
                    return Err("the device returned a request never posted");
                }
                break if status == S_UNSET && len == 0 {
                    Outcome::Dropped
                } else {
                    Outcome::Status(status)
                };
            }
            if time::ticks() > deadline {
                break Outcome::Ignored;
            }
        };
        let ok = got == want;
        failed += usize::from(!ok);
        ulog!(
            "blk: hostile case={} outcome={} expected={} {}",
            name,
            outcome_name(got),
            outcome_name(want),
            if ok { "ok" } else { "WRONG" }
        );
        if got == Outcome::Ignored {
            return Err("a hostile request was never answered (the queue is stuck)");
        }
    }
    // Good requests afterwards, at the end of the disk.
    let start = cap.saturating_sub(16);
    if writable {
        write_verify(blk, true, start, 16, 77)?;
    }
    write_verify(blk, false, start, 16, if writable { 77 } else { 0 }).or_else(|e| {
        // A read-only disk holds whatever it holds: reading it back is what counts.
        if writable {
            Err(e)
        } else {
            Ok(())
        }
    })?;
    ulog!("blk: hostile cases={} wrong={}", 17, failed);
    if failed > 0 {
        return Err("the device answered a hostile request wrongly");
    }
    Ok(())
}
