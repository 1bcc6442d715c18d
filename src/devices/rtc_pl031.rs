//! The ARM PL031 real-time clock (vm-superio's `Rtc`), behind the bus trait: the guest's wall
//! time on aarch64 (Linux's `rtc-pl031` driver, an AMBA primecell).
//!
//! The registers are 32 bits wide at 4-byte aligned offsets (RTCDR at 0x0 counts seconds since
//! the epoch from the host's clock; the AMBA peripheral and cell ids at 0xfe0..0xfff). An
//! access of another width or alignment reads as zero and writes nothing: the guest gets a
//! defined answer and the counter stays whole.
use vm_superio::rtc_pl031::NoEvents;
use vm_superio::Rtc;

use crate::bus::{BusDevice, DeviceEvent};

/// The register window: 4 KiB, as the AMBA primecell convention and the FDT node say.
pub const MMIO_LEN: u64 = 0x1000;

pub struct RtcPl031 {
    rtc: Rtc<NoEvents>,
    /// Accesses that were not 4 bytes at a 4-byte aligned offset.
    bad_accesses: u64,
}

impl Default for RtcPl031 {
    fn default() -> Self {
        RtcPl031 {
            rtc: Rtc::new(),
            bad_accesses: 0,
        }
    }
}

impl RtcPl031 {
    pub fn bad_accesses(&self) -> u64 {
        self.bad_accesses
    }

    fn register(offset: u64, len: usize) -> Option<u16> {
        (len == 4 && offset.is_multiple_of(4) && offset < MMIO_LEN).then_some(offset as u16)
    }
}

impl BusDevice for RtcPl031 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::register(offset, data.len()) {
            Some(reg) => {
                let mut v = [0u8; 4];
                self.rtc.read(reg, &mut v);
                data.copy_from_slice(&v);
            }
            None => {
                data.fill(0);
                self.bad_accesses += 1;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        match (
            Self::register(offset, data.len()),
            <[u8; 4]>::try_from(data),
        ) {
            (Some(reg), Ok(v)) => self.rtc.write(reg, &v),
            _ => self.bad_accesses += 1,
        }
        DeviceEvent::None
    }

    fn region_name(&self, offset: u64) -> &'static str {
        match offset {
            0x00 => "RTCDR",
            0x04 => "RTCMR",
            0x08 => "RTCLR",
            0x0c => "RTCCR",
            0x10 => "RTCIMSC",
            0x14 => "RTCRIS",
            0x18 => "RTCMIS",
            0x1c => "RTCICR",
            0xfe0..=0xfff => "id",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(d: &mut RtcPl031, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn now() -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32
    }

    #[test]
    fn the_data_register_is_the_host_wall_clock() {
        let mut d = RtcPl031::default();
        let before = now();
        let t = read32(&mut d, 0);
        assert!(t >= before && t <= now() + 1, "{t} vs {before}");
        // The load register moves the clock: an hour back.
        d.write(8, &(t - 3600).to_le_bytes());
        let t2 = read32(&mut d, 0);
        assert!(t2 + 3600 >= t && t2 + 3590 <= t, "{t2} vs {t}");
    }

    #[test]
    fn amba_ids_say_pl031() {
        let mut d = RtcPl031::default();
        let ids: Vec<u8> = (0..8)
            .map(|i| read32(&mut d, 0xfe0 + 4 * i) as u8)
            .collect();
        // Peripheral id 0x00041031 (part 0x031, designer ARM), cell id 0xb105f00d.
        assert_eq!(ids, [0x31, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(d.region_name(0xfe0), "id");
        assert_eq!(d.region_name(0), "RTCDR");
    }

    #[test]
    fn odd_widths_and_offsets_are_counted_and_harmless() {
        let mut d = RtcPl031::default();
        let mut b = [0xffu8; 2];
        d.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        d.read(2, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(d.write(8, &[1]), DeviceEvent::None);
        assert_eq!(d.write(9, &[1, 2, 3, 4]), DeviceEvent::None);
        d.read(0x1000, &mut b);
        assert_eq!(d.bad_accesses(), 5);
        // The clock was not moved by any of them.
        assert!(read32(&mut d, 0) + 5 >= now());
    }
}
