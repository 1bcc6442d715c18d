//! The debug-exit port and the test device the built-in guest talks to.
//!
//! **Debug-exit** (PIO `0xf4`, 1–4 bytes): the guest writes its result; `0` is pass, anything
//! else is fail with that code. `trapvisor run` exits 0 on pass and 1 on fail.
//!
//! **Test device**, the same registers in a PIO window at `0x510` and an MMIO page at
//! `0xf000_0000` (MMIO is what CPL3 code uses: IOPL is lost on the way to CPL3 under PVM):
//!
//! | offset | access | meaning |
//! |--------|--------|---------|
//! | 0x0    | write  | EXIT: same as the debug-exit port |
//! | 0x4    | write  | SINK: counted and dropped (the exit loops of the benchmark) |
//! | 0x4    | read   | SINK count, low 32 bits |
//! | 0x8    | write  | CONSOLE: one byte to the VMM's output |
use std::io::Write;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::bus::{BusDevice, DeviceEvent};

pub const EXIT_OFFSET: u64 = 0x0;
pub const SINK_OFFSET: u64 = 0x4;
pub const CONSOLE_OFFSET: u64 = 0x8;
/// Size of the PIO window and of the register block in the MMIO page.
pub const PIO_LEN: u64 = 0x10;
pub const MMIO_LEN: u64 = 0x1000;

fn le_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

/// The debug-exit port.
#[derive(Default)]
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceEvent {
        DeviceEvent::DebugExit(le_value(data))
    }
    fn region_name(&self, _offset: u64) -> &'static str {
        "exit"
    }
}

/// The test device.
pub struct TestDev {
    sink_count: u64,
    /// When the first and the latest SINK writes arrived (the exit benchmark's window).
    sink_window: Option<(Instant, Instant)>,
    /// The time between consecutive SINK writes: one guest round trip each in an exit loop
    /// (its median is what the exit benchmark compares: a preempted round trip moves it little).
    /// Made at the first SINK write: a guest that never uses SINK pays no memory for it.
    sink_gaps: Option<Histogram<u32>>,
    out: Box<dyn Write + Send>,
}

/// A histogram of round trips from 1 ns to 1 s, 3 significant digits (8 ns steps at 8 µs:
/// fine enough for a ratio of 1.01; about 70 KiB).
pub fn gap_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 1_000_000_000, 3).expect("constant histogram bounds are valid")
}

impl TestDev {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        TestDev {
            sink_count: 0,
            sink_window: None,
            sink_gaps: None,
            out,
        }
    }

    /// The times of the first and the latest SINK write.
    pub fn sink_window(&self) -> Option<(Instant, Instant)> {
        self.sink_window
    }

    /// The times between consecutive SINK writes, in nanoseconds.
    pub fn sink_gaps(&self) -> Option<&Histogram<u32>> {
        self.sink_gaps.as_ref()
    }

    /// Writes seen by the SINK register.
    pub fn sink_count(&self) -> u64 {
        self.sink_count
    }
}

impl BusDevice for TestDev {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == SINK_OFFSET {
            let v = (self.sink_count as u32).to_le_bytes();
            let n = data.len().min(4);
            data[..n].copy_from_slice(&v[..n]);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        match offset {
            EXIT_OFFSET => return DeviceEvent::DebugExit(le_value(data)),
            SINK_OFFSET => {
                self.sink_count += 1;
                let now = Instant::now();
                let (first, last) = self.sink_window.unwrap_or((now, now));
                if self.sink_count > 1 {
                    let gap = now.saturating_duration_since(last).as_nanos() as u64;
                    self.sink_gaps
                        .get_or_insert_with(gap_histogram)
                        .saturating_record(gap.max(1));
                }
                self.sink_window = Some((first, now));
            }
            CONSOLE_OFFSET => {
                // Console output is best effort: a closed stdout must not stop the guest.
                let _ = self.out.write_all(&data[..1]);
                if data[0] == b'\n' {
                    let _ = self.out.flush();
                }
            }
            _ => {}
        }
        DeviceEvent::None
    }

    fn region_name(&self, offset: u64) -> &'static str {
        match offset {
            EXIT_OFFSET => "exit",
            SINK_OFFSET => "sink",
            CONSOLE_OFFSET => "console",
            _ => "reserved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn debug_exit_reports_the_written_value() {
        let mut d = DebugExit;
        assert_eq!(d.write(0, &[0]), DeviceEvent::DebugExit(0));
        assert_eq!(d.write(0, &[3, 1]), DeviceEvent::DebugExit(0x103));
        assert_eq!(d.write(0, &[1, 0, 0, 0]), DeviceEvent::DebugExit(1));
    }

    #[test]
    fn testdev_counts_sink_writes_and_prints_console_bytes() {
        let out = Shared::default();
        let mut t = TestDev::new(Box::new(out.clone()));
        for _ in 0..5 {
            assert_eq!(t.write(SINK_OFFSET, &[1, 0, 0, 0]), DeviceEvent::None);
        }
        let mut v = [0u8; 4];
        t.read(SINK_OFFSET, &mut v);
        assert_eq!(u32::from_le_bytes(v), 5);
        assert_eq!(t.sink_count(), 5);
        let (first, last) = t.sink_window().unwrap();
        assert!(last >= first);
        assert_eq!(t.sink_gaps().map(|h| h.len()), Some(4));
        for b in b"hi\n" {
            t.write(CONSOLE_OFFSET, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        assert_eq!(
            t.write(EXIT_OFFSET, &[7, 0, 0, 0]),
            DeviceEvent::DebugExit(7)
        );
        // Reserved offsets read zero and ignore writes.
        t.read(0xc, &mut v);
        assert_eq!(v, [0; 4]);
        assert_eq!(t.write(0xc, &[1]), DeviceEvent::None);
    }
}
