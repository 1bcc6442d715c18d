//! The platform devices every aarch64 VM has, all on MMIO (arm64 has no port I/O), each in its
//! 4 KiB page of `layout` and described in the FDT: a 16550 UART with SPI 1, a PL031 RTC,
//! the test device (EXIT, SINK, CONSOLE: also the debug-exit) and pvpanic's MMIO form.
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::Trigger;

use super::layout::{
    PLATFORM_PAGE, PVPANIC_START, RTC_START, TESTDEV_MMIO_START, UART_SPI, UART_START,
};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::devices::pvpanic::PvPanic;
use crate::devices::rtc_pl031::RtcPl031;
use crate::devices::serial::SerialDevice;
use crate::devices::testdev::TestDev;
use crate::devices::PlatformDevices;
use crate::pci::root::PciRoot;

/// Registers the UART, the RTC, the test device and pvpanic on `mmio` (`pio` stays empty;
/// nothing here is a legacy device: `legacy` changes nothing).
/// `irq(n)` makes the trigger of SPI `n` (GSI n): the UART's.
pub fn register_devices<T, E>(
    _pio: &Bus,
    mmio: &Bus,
    mut irq: impl FnMut(u32) -> Result<T, E>,
    console: Box<dyn Write + Send>,
    testdev_console: Box<dyn Write + Send>,
    _legacy: bool,
) -> Result<PlatformDevices<T>, E>
where
    T: Trigger + Send + 'static,
    T::E: std::fmt::Debug,
    E: From<BusError>,
{
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq(UART_SPI)?, console)));
    let testdev = Arc::new(Mutex::new(TestDev::new(testdev_console)));
    let serial_dev: SharedDevice = serial.clone();
    let testdev_dev: SharedDevice = testdev.clone();
    mmio.insert(UART_START, PLATFORM_PAGE, "serial0", "16550", serial_dev)?;
    mmio.insert(
        RTC_START,
        PLATFORM_PAGE,
        "rtc",
        "pl031",
        Arc::new(Mutex::new(RtcPl031::default())),
    )?;
    mmio.insert(
        TESTDEV_MMIO_START,
        PLATFORM_PAGE,
        "testdev",
        "exit+sink+console",
        testdev_dev,
    )?;
    mmio.insert(
        PVPANIC_START,
        PLATFORM_PAGE,
        "pvpanic",
        "events",
        Arc::new(Mutex::new(PvPanic::default())),
    )?;
    Ok(PlatformDevices { serial, testdev })
}

/// Nothing: PCI config space is reached through ECAM only (no conf1 ports on arm64).
pub fn attach_pci(_pio: &Bus, _root: &Arc<PciRoot>) -> Result<(), BusError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{BusKind, DeviceEvent};
    use crate::devices::testdev::{EXIT_OFFSET, SINK_OFFSET};

    struct NoIrq;
    impl Trigger for NoIrq {
        type E = std::io::Error;
        fn trigger(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn buses() -> (Bus, Bus, PlatformDevices<NoIrq>, Vec<u32>) {
        let pio = Bus::new(BusKind::Pio);
        let mmio = Bus::new(BusKind::Mmio);
        let mut lines = Vec::new();
        let devs = register_devices(
            &pio,
            &mmio,
            |n| {
                lines.push(n);
                Ok::<_, BusError>(NoIrq)
            },
            Box::new(std::io::sink()),
            Box::new(std::io::sink()),
            true,
        )
        .unwrap();
        (pio, mmio, devs, lines)
    }

    #[test]
    fn everything_is_mmio_where_the_fdt_says() {
        let (pio, mmio, _, lines) = buses();
        assert!(pio.map().is_empty(), "no port I/O on arm64");
        assert_eq!(lines, [UART_SPI]);
        let map: Vec<(u64, u64, String)> = mmio
            .map()
            .into_iter()
            .map(|e| (e.base, e.len, e.device))
            .collect();
        assert_eq!(
            map,
            [
                (UART_START, PLATFORM_PAGE, "serial0".to_string()),
                (RTC_START, PLATFORM_PAGE, "rtc".to_string()),
                (TESTDEV_MMIO_START, PLATFORM_PAGE, "testdev".to_string()),
                (PVPANIC_START, PLATFORM_PAGE, "pvpanic".to_string()),
            ]
        );
    }

    #[test]
    fn exit_sink_and_panic_by_mmio() {
        let (_, mmio, devs, _) = buses();
        let (_, e) = mmio.write(TESTDEV_MMIO_START + EXIT_OFFSET, &7u32.to_le_bytes());
        assert_eq!(e, DeviceEvent::DebugExit(7));
        let (_, e) = mmio.write(TESTDEV_MMIO_START + SINK_OFFSET, &[1, 0, 0, 0]);
        assert_eq!(e, DeviceEvent::None);
        assert_eq!(devs.testdev.lock().unwrap().sink_count(), 1);
        let (_, e) = mmio.write(PVPANIC_START, &[1]);
        assert_eq!(e, DeviceEvent::GuestPanic);
        // The RTC reads the host's wall clock.
        let mut t = [0u8; 4];
        mmio.read(RTC_START, &mut t);
        assert!(u32::from_le_bytes(t) > 1_700_000_000);
    }
}
