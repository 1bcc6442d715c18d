//! The CMOS real-time clock, an MC146818 as every PC has: an index port (`0x70`, bit 7 the NMI
//! mask, ignored) and a data port (`0x71`) in front of 128 bytes of CMOS, whose first 14 are the
//! clock. Described in the DSDT as `PNP0B00` with IRQ 8, and the FADT's `century` field points
//! at register `0x32`, so Linux reads the host's date at boot (`mach_get_cmos_time`) and its
//! `rtc_cmos` driver gives `/dev/rtc0`.
//!
//! The time is the host's (a [`Clock`]) plus an offset the guest sets by writing the time
//! registers while register B's SET bit is on (the clock stops counting until SET is cleared,
//! as the chip does). Register B picks BCD or binary (DM) and 12- or 24-hour (24/12) format;
//! register A's UIP bit is set during the last 244 µs of every second (an update is about to
//! change the registers: Linux waits for it to clear); register D's VRT says the RAM is valid.
//! No interrupts: the alarm, periodic and update-ended interrupts stay off (their enable bits
//! are kept and read back, register C reads 0), which Linux handles (it then polls UIP).
//!
//! A pure state machine: unit tests drive it with plain reads and writes and a fixed clock.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bus::{BusDevice, DeviceEvent};

/// Registers of the clock.
pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_WEEKDAY: u8 = 0x06;
pub const REG_DAY: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0a;
pub const REG_B: u8 = 0x0b;
pub const REG_C: u8 = 0x0c;
pub const REG_D: u8 = 0x0d;
/// The century (BCD or binary as the rest), where the FADT says (as PCs and QEMU have it).
pub const REG_CENTURY: u8 = 0x32;

/// Register A: update in progress.
pub const A_UIP: u8 = 0x80;
/// Register A after reset: 32.768 kHz time base (DV = 010), 1024 Hz rate (RS = 0110).
const A_DEFAULT: u8 = 0x26;
/// Register B: SET (updates stopped), DM (binary, else BCD), 24/12 (24-hour).
pub const B_SET: u8 = 0x80;
pub const B_DM_BINARY: u8 = 0x04;
pub const B_24H: u8 = 0x02;
/// Register B after reset: BCD, 24-hour (as PC firmware leaves it).
const B_DEFAULT: u8 = B_24H;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;
/// UIP is set this long before each second ends (the update cycle's 244 µs warning).
pub const UIP_WINDOW: Duration = Duration::from_micros(244);
/// Bytes of CMOS.
const CMOS_LEN: usize = 128;

/// Where the time comes from.
pub trait Clock: Send {
    /// The time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The host's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A calendar time (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A civil date to days since 1970-01-01 (`days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    /// The calendar time of `secs` seconds since the epoch.
    pub fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    /// Seconds since the epoch.
    pub fn to_unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4).min(9) * 10 + (v & 0x0f).min(9)
}

/// The MC146818 behind ports 0x70 and 0x71.
pub struct Rtc {
    clock: Box<dyn Clock>,
    index: u8,
    cmos: [u8; CMOS_LEN],
    /// Guest time minus host time, in seconds (set by the guest).
    offset: i64,
    /// While SET is on: the time registers as the guest wrote them (seconds since the epoch).
    frozen: Option<i64>,
}

impl Rtc {
    pub fn new(clock: Box<dyn Clock>) -> Rtc {
        let mut cmos = [0u8; CMOS_LEN];
        cmos[usize::from(REG_A)] = A_DEFAULT;
        cmos[usize::from(REG_B)] = B_DEFAULT;
        cmos[usize::from(REG_D)] = D_VRT;
        Rtc {
            clock,
            index: 0,
            cmos,
            offset: 0,
            frozen: None,
        }
    }

    /// On the host's clock.
    pub fn host() -> Rtc {
        Rtc::new(Box::new(HostClock))
    }

    fn reg_b(&self) -> u8 {
        self.cmos[usize::from(REG_B)]
    }

    /// The guest's time now (seconds since the epoch) and how far into the second.
    fn guest_now(&self) -> (i64, Duration) {
        if let Some(t) = self.frozen {
            return (t, Duration::ZERO);
        }
        let now = self.clock.now();
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        (
            secs.saturating_add(self.offset),
            Duration::from_nanos(u64::from(now.subsec_nanos())),
        )
    }

    /// A binary value in the format register B asks for.
    fn encode(&self, v: u8) -> u8 {
        if self.reg_b() & B_DM_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.reg_b() & B_DM_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u32) -> u8 {
        if self.reg_b() & B_24H != 0 {
            return self.encode(h as u8);
        }
        // 12-hour: 12, 1..11 with bit 7 for PM.
        let pm = h >= 12;
        let h12 = match h % 12 {
            0 => 12,
            n => n,
        };
        self.encode(h12 as u8) | if pm { 0x80 } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.reg_b() & B_24H != 0 {
            return u32::from(self.decode(v)).min(23);
        }
        let h12 = u32::from(self.decode(v & 0x7f)).clamp(1, 12) % 12;
        h12 + if v & 0x80 != 0 { 12 } else { 0 }
    }

    /// The value of clock register `reg` now.
    fn read_reg(&self, reg: u8) -> u8 {
        let (secs, into) = self.guest_now();
        let t = DateTime::from_unix(secs);
        let year = t.year.rem_euclid(100) as u8;
        let century = t.year.div_euclid(100).clamp(0, 99) as u8;
        match reg {
            REG_SECONDS => self.encode(t.second as u8),
            REG_MINUTES => self.encode(t.minute as u8),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday as u8 + 1),
            REG_DAY => self.encode(t.day as u8),
            REG_MONTH => self.encode(t.month as u8),
            REG_YEAR => self.encode(year),
            REG_CENTURY => self.encode(century),
            REG_A => {
                let uip = self.frozen.is_none() && into >= Duration::from_secs(1) - UIP_WINDOW;
                (self.cmos[usize::from(REG_A)] & !A_UIP) | if uip { A_UIP } else { 0 }
            }
            // No interrupt is ever pending (and reading clears nothing then).
            REG_C => 0,
            REG_D => D_VRT,
            _ => self.cmos[usize::from(reg) % CMOS_LEN],
        }
    }

    /// Writes a time register while SET is on: changes the frozen time.
    fn write_time(&mut self, reg: u8, v: u8) {
        let Some(secs) = self.frozen else { return };
        let mut t = DateTime::from_unix(secs);
        let century = t.year.div_euclid(100);
        let year = t.year.rem_euclid(100);
        match reg {
            REG_SECONDS => t.second = u32::from(self.decode(v)).min(59),
            REG_MINUTES => t.minute = u32::from(self.decode(v)).min(59),
            REG_HOURS => t.hour = self.decode_hour(v),
            REG_DAY => t.day = u32::from(self.decode(v)).clamp(1, 31),
            REG_MONTH => t.month = u32::from(self.decode(v)).clamp(1, 12),
            REG_YEAR => t.year = century * 100 + i64::from(self.decode(v).min(99)),
            REG_CENTURY => t.year = i64::from(self.decode(v).min(99)) * 100 + year,
            // The day of the week follows from the date.
            _ => return,
        }
        self.frozen = Some(t.to_unix());
    }

    fn write_reg(&mut self, reg: u8, v: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => self.write_time(reg, v),
            // UIP is read-only.
            REG_A => self.cmos[usize::from(REG_A)] = v & !A_UIP,
            REG_B => {
                let was_set = self.reg_b() & B_SET != 0;
                let set = v & B_SET != 0;
                if set && !was_set {
                    // Updates stop: the registers hold the time they show now.
                    self.frozen = Some(self.guest_now().0);
                } else if !set && was_set {
                    // Updates resume from what the guest wrote.
                    if let Some(t) = self.frozen.take() {
                        let host = i64::try_from(self.clock.now().as_secs()).unwrap_or(0);
                        self.offset = t - host;
                    }
                }
                self.cmos[usize::from(REG_B)] = v;
            }
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(reg) % CMOS_LEN] = v,
        }
    }

    /// The register the index port selects.
    pub fn index(&self) -> u8 {
        self.index
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            // The index port reads back as on most chipsets: not at all.
            0 => 0xff,
            1 => self.read_reg(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        let Some(&v) = data.first() else {
            return DeviceEvent::None;
        };
        match offset {
            // Bit 7 masks NMIs on real hardware; only the index matters here.
            0 => self.index = v & 0x7f,
            1 => self.write_reg(self.index, v),
            _ => {}
        }
        DeviceEvent::None
    }

    fn region_name(&self, offset: u64) -> &'static str {
        match offset {
            0 => "index",
            1 => "data",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A clock the test moves (nanoseconds since the epoch).
    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    impl FakeClock {
        fn set(&self, secs: u64, nanos: u64) {
            self.0.store(secs * 1_000_000_000 + nanos, Ordering::SeqCst);
        }
    }

    /// 2026-03-07 21:04:05 UTC, a Saturday.
    const T: u64 = 1_772_917_445;

    fn rtc() -> (Rtc, FakeClock) {
        let c = FakeClock::default();
        c.set(T, 0);
        (Rtc::new(Box::new(c.clone())), c)
    }

    fn rd(r: &mut Rtc, reg: u8) -> u8 {
        r.write(0, &[reg]);
        let mut b = [0u8];
        r.read(1, &mut b);
        b[0]
    }

    fn wr(r: &mut Rtc, reg: u8, v: u8) {
        r.write(0, &[reg]);
        r.write(1, &[v]);
    }

    #[test]
    fn calendar_round_trips() {
        let t = DateTime::from_unix(T as i64);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2026, 3, 7, 21, 4, 5, 6)
        );
        assert_eq!(t.to_unix(), T as i64);
        for secs in [0i64, 951_782_400, 4_107_542_399, 86_399, 1_709_164_800] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        // 2000-02-29 (a leap day of a century year divisible by 400), a Tuesday.
        let leap = DateTime::from_unix(951_782_400);
        assert_eq!((leap.month, leap.day, leap.weekday), (2, 29, 2));
    }

    #[test]
    fn bcd_24_hour_by_default() {
        let (mut r, _) = rtc();
        assert_eq!(rd(&mut r, REG_SECONDS), 0x05);
        assert_eq!(rd(&mut r, REG_MINUTES), 0x04);
        assert_eq!(rd(&mut r, REG_HOURS), 0x21);
        assert_eq!(rd(&mut r, REG_WEEKDAY), 0x07);
        assert_eq!(rd(&mut r, REG_DAY), 0x07);
        assert_eq!(rd(&mut r, REG_MONTH), 0x03);
        assert_eq!(rd(&mut r, REG_YEAR), 0x26);
        assert_eq!(rd(&mut r, REG_CENTURY), 0x20);
        assert_eq!(rd(&mut r, REG_B), B_24H);
        assert_eq!(rd(&mut r, REG_D), 0x80);
        assert_eq!(rd(&mut r, REG_C), 0);
        // The NMI-mask bit of the index is not part of the register number.
        assert_eq!(rd(&mut r, 0x80 | REG_HOURS), 0x21);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut r, _) = rtc();
        wr(&mut r, REG_B, B_DM_BINARY | B_24H);
        assert_eq!(rd(&mut r, REG_HOURS), 21);
        assert_eq!(rd(&mut r, REG_YEAR), 26);
        assert_eq!(rd(&mut r, REG_CENTURY), 20);
        wr(&mut r, REG_B, B_DM_BINARY);
        assert_eq!(rd(&mut r, REG_HOURS), 0x80 | 9, "9 PM");
        wr(&mut r, REG_B, 0);
        assert_eq!(rd(&mut r, REG_HOURS), 0x80 | 0x09, "9 PM in BCD");
    }

    #[test]
    fn the_clock_follows_the_host_and_uip_warns_of_the_update() {
        let (mut r, c) = rtc();
        assert_eq!(rd(&mut r, REG_A) & A_UIP, 0);
        c.set(T, 999_800_000);
        assert_eq!(rd(&mut r, REG_A), A_UIP | A_DEFAULT);
        c.set(T + 1, 0);
        assert_eq!(rd(&mut r, REG_A), A_DEFAULT);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x06);
        c.set(T + 3600, 0);
        assert_eq!(rd(&mut r, REG_HOURS), 0x22);
    }

    #[test]
    fn the_guest_sets_the_time_with_set() {
        let (mut r, c) = rtc();
        wr(&mut r, REG_B, B_SET | B_24H);
        // Frozen: the host clock moves, the registers do not; no update in progress.
        c.set(T + 10, 999_900_000);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x05);
        assert_eq!(rd(&mut r, REG_A) & A_UIP, 0);
        // 1999-12-31 23:59:58.
        wr(&mut r, REG_CENTURY, 0x19);
        wr(&mut r, REG_YEAR, 0x99);
        wr(&mut r, REG_MONTH, 0x12);
        wr(&mut r, REG_DAY, 0x31);
        wr(&mut r, REG_HOURS, 0x23);
        wr(&mut r, REG_MINUTES, 0x59);
        wr(&mut r, REG_SECONDS, 0x58);
        wr(&mut r, REG_B, B_24H);
        c.set(T + 12, 0);
        // Two seconds later: the new millennium.
        assert_eq!(rd(&mut r, REG_SECONDS), 0x00);
        assert_eq!(rd(&mut r, REG_YEAR), 0x00);
        assert_eq!(rd(&mut r, REG_CENTURY), 0x20);
        assert_eq!(rd(&mut r, REG_MONTH), 0x01);
        assert_eq!(rd(&mut r, REG_WEEKDAY), 0x07, "2000-01-01 was a Saturday");
    }

    #[test]
    fn ram_alarms_and_read_only_registers() {
        let (mut r, _) = rtc();
        wr(&mut r, 0x40, 0xab);
        assert_eq!(rd(&mut r, 0x40), 0xab);
        wr(&mut r, REG_HOURS_ALARM, 0x07);
        assert_eq!(rd(&mut r, REG_HOURS_ALARM), 0x07);
        // Interrupt enables are kept, but nothing is ever pending.
        wr(&mut r, REG_B, B_24H | 0x70);
        assert_eq!(rd(&mut r, REG_B), B_24H | 0x70);
        assert_eq!(rd(&mut r, REG_C), 0);
        wr(&mut r, REG_C, 0xff);
        wr(&mut r, REG_D, 0);
        assert_eq!((rd(&mut r, REG_C), rd(&mut r, REG_D)), (0, 0x80));
        // UIP cannot be written; the rest of register A can.
        wr(&mut r, REG_A, 0xa6);
        assert_eq!(rd(&mut r, REG_A), 0x26);
        // Without SET, time writes are ignored.
        wr(&mut r, REG_SECONDS, 0x30);
        assert_eq!(rd(&mut r, REG_SECONDS), 0x05);
        // Odd widths and offsets: nothing breaks.
        let mut b = [0u8; 4];
        r.read(0, &mut b);
        r.read(7, &mut b);
        r.write(3, &[1, 2]);
        r.write(1, &[]);
        assert_eq!(r.region_name(1), "data");
    }
}
