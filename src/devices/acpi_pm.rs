//! ACPI power management for a hardware-reduced platform: the FADT's sleep control register
//! (S5 = poweroff) and reset register, one byte each.
use crate::bus::{BusDevice, DeviceEvent};

/// Offset of the sleep control register inside the device's two-byte range.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 1;
/// SLP_TYP for S5 as the DSDT's `\_S5_` package announces it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value the FADT's RESET_VALUE announces.
pub const RESET_VALUE: u8 = 1;
const SLP_EN: u8 = 1 << 5;

#[derive(Debug, Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: the wake status bit is never set.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        let Some(&v) = data.first() else {
            return DeviceEvent::None;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if v & SLP_EN != 0 && (v >> 2) & 7 == S5_SLEEP_TYPE => {
                DeviceEvent::Poweroff
            }
            RESET_OFFSET if v == RESET_VALUE => DeviceEvent::Reset,
            _ => DeviceEvent::None,
        }
    }

    fn region_name(&self, offset: u64) -> &'static str {
        match offset {
            SLEEP_CONTROL_OFFSET => "sleep-control",
            RESET_OFFSET => "reset",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut d = AcpiPm;
        assert_eq!(d.write(0, &[(5 << 2) | SLP_EN]), DeviceEvent::Poweroff);
        // S5 without SLP_EN, or another sleep type, does nothing.
        assert_eq!(d.write(0, &[5 << 2]), DeviceEvent::None);
        assert_eq!(d.write(0, &[(3 << 2) | SLP_EN]), DeviceEvent::None);
    }

    #[test]
    fn reset_value_resets() {
        let mut d = AcpiPm;
        assert_eq!(d.write(1, &[RESET_VALUE]), DeviceEvent::Reset);
        assert_eq!(d.write(1, &[0]), DeviceEvent::None);
        assert_eq!(d.write(1, &[]), DeviceEvent::None);
    }
}
