//! pvpanic, as QEMU's ISA `pvpanic` device: one I/O port (`layout::PVPANIC_PORT`, 0x505),
//! described in the DSDT as `QEMU0001` (Linux's `pvpanic-mmio` driver binds it, I/O resource
//! included).
//!
//! A read returns the events the device supports (`PANICKED | CRASH_LOADED`); the guest driver
//! keeps only those. A write reports events: `PANICKED` stops the VM with
//! `StopReason::GuestPanic` (trapvisor prints "guest kernel panicked" and exits 1), as QEMU's
//! `-action panic=exit-failure`; the guest has printed its panic message by then (Linux calls
//! its panic notifiers after the "Kernel panic - not syncing" line and the backtrace), and
//! whatever it would do next (reset with `panic=-1`, spin forever with `panic=0`) no longer
//! hides the panic. `CRASH_LOADED` (a kdump kernel is about to take over) is recorded and the
//! guest runs on. Other bits are ignored, as QEMU does.
use crate::bus::{BusDevice, DeviceEvent};

/// The guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest kernel panicked and loads a crash kernel (kdump).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// What a read of the port returns.
pub const SUPPORTED_EVENTS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

#[derive(Debug, Default)]
pub struct PvPanic {
    /// Every supported event the guest has reported (bitwise or).
    reported: u8,
}

impl PvPanic {
    /// The supported events the guest has written so far.
    pub fn reported(&self) -> u8 {
        self.reported
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = SUPPORTED_EVENTS;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        let (0, Some(&v)) = (offset, data.first()) else {
            return DeviceEvent::None;
        };
        let events = v & SUPPORTED_EVENTS;
        self.reported |= events;
        if events & PVPANIC_PANICKED != 0 {
            DeviceEvent::GuestPanic
        } else {
            DeviceEvent::None
        }
    }

    fn region_name(&self, offset: u64) -> &'static str {
        match offset {
            0 => "events",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(d: &mut PvPanic, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0xaa; len];
        d.read(offset, &mut b);
        b
    }

    #[test]
    fn a_read_returns_the_supported_events() {
        let mut d = PvPanic::default();
        assert_eq!(read(&mut d, 0, 1), [SUPPORTED_EVENTS]);
        assert_eq!(SUPPORTED_EVENTS, 3);
        // A wider read: the events in the first byte, zeros after.
        assert_eq!(read(&mut d, 0, 4), [SUPPORTED_EVENTS, 0, 0, 0]);
        // Reads change nothing.
        assert_eq!(d.reported(), 0);
        d.read(0, &mut []);
    }

    #[test]
    fn panicked_stops_the_vm() {
        let mut d = PvPanic::default();
        assert_eq!(d.write(0, &[PVPANIC_PANICKED]), DeviceEvent::GuestPanic);
        assert_eq!(d.reported(), PVPANIC_PANICKED);
        // Together with other bits, known or not.
        let mut d = PvPanic::default();
        assert_eq!(d.write(0, &[0xff]), DeviceEvent::GuestPanic);
        assert_eq!(d.reported(), SUPPORTED_EVENTS);
    }

    #[test]
    fn crash_loaded_is_recorded_and_the_guest_runs_on() {
        let mut d = PvPanic::default();
        assert_eq!(d.write(0, &[PVPANIC_CRASH_LOADED]), DeviceEvent::None);
        assert_eq!(d.reported(), PVPANIC_CRASH_LOADED);
        // The kdump kernel may panic in turn.
        assert_eq!(d.write(0, &[PVPANIC_PANICKED]), DeviceEvent::GuestPanic);
        assert_eq!(d.reported(), SUPPORTED_EVENTS);
    }

    #[test]
    fn unknown_bits_empty_and_stray_writes_do_nothing() {
        let mut d = PvPanic::default();
        // PVPANIC_SHUTDOWN (4, newer QEMU) and the other bits: not supported here.
        for v in [0u8, 4, 0x80, 0xfc] {
            assert_eq!(d.write(0, &[v]), DeviceEvent::None, "{v:#x}");
        }
        assert_eq!(d.write(0, &[]), DeviceEvent::None);
        // Only offset 0 exists; the bus never sends others, the device ignores them anyway.
        assert_eq!(d.write(1, &[PVPANIC_PANICKED]), DeviceEvent::None);
        assert_eq!(read(&mut d, 1, 1), [0]);
        assert_eq!(d.reported(), 0);
        // A wider write: the event byte is the first.
        assert_eq!(d.write(0, &[0, PVPANIC_PANICKED]), DeviceEvent::None);
        assert_eq!(d.write(0, &[PVPANIC_PANICKED, 0]), DeviceEvent::GuestPanic);
    }
}
