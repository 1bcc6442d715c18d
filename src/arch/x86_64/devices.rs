//! The platform devices every x86_64 VM has, registered on its buses: COM1, the i8042 and the
//! CMOS RTC (both only with `legacy`), the debug-exit port, the test device (PIO window and
//! MMIO page), the ACPI PM registers and pvpanic on ports; PCI conf1 at 0xcf8.
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::Trigger;

use super::layout;
use crate::bus::{Bus, BusError, SharedDevice};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::i8042::I8042;
use crate::devices::pvpanic::PvPanic;
use crate::devices::rtc::Rtc;
use crate::devices::serial::SerialDevice;
use crate::devices::testdev::{self, DebugExit, TestDev};
use crate::devices::PlatformDevices;
use crate::pci::root::{Conf1, PciRoot, CONF1_LEN, CONF1_PORT};

/// Registers COM1, the i8042 and the CMOS RTC (on the host's clock; both only with `legacy`),
/// the debug-exit port, the test device, the ACPI PM registers and pvpanic. `irq(n)` makes the
/// trigger of legacy IRQ `n` (4: COM1, 1: the i8042's keyboard); `console` receives serial
/// output, `testdev_console` the test device's.
pub fn register_devices<T, E>(
    pio: &Bus,
    mmio: &Bus,
    mut irq: impl FnMut(u32) -> Result<T, E>,
    console: Box<dyn Write + Send>,
    testdev_console: Box<dyn Write + Send>,
    legacy: bool,
) -> Result<PlatformDevices<T>, E>
where
    T: Trigger + Send + 'static,
    T::E: std::fmt::Debug,
    E: From<BusError>,
{
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        irq(layout::COM1_IRQ)?,
        console,
    )));
    let testdev = Arc::new(Mutex::new(TestDev::new(testdev_console)));
    let serial_dev: SharedDevice = serial.clone();
    let testdev_dev: SharedDevice = testdev.clone();
    pio.insert(layout::COM1_PORT.into(), 8, "serial0", "16550", serial_dev)?;
    if legacy {
        let kbd_irq = irq(layout::I8042_KBD_IRQ)?;
        pio.insert(
            layout::I8042_DATA_PORT.into(),
            5,
            "i8042",
            "data+status/command",
            Arc::new(Mutex::new(I8042::with_irq(Box::new(move || {
                if let Err(e) = kbd_irq.trigger() {
                    log::warn!("i8042: cannot raise IRQ 1: {e:?}");
                }
            })))),
        )?;
    }
    pio.insert(
        layout::DEBUG_EXIT_PORT.into(),
        4,
        "debug-exit",
        "exit",
        Arc::new(Mutex::new(DebugExit)),
    )?;
    pio.insert(
        layout::TESTDEV_PORT.into(),
        testdev::PIO_LEN,
        "testdev",
        "exit+sink+console",
        testdev_dev.clone(),
    )?;
    pio.insert(
        layout::ACPI_SLEEP_CONTROL_PORT.into(),
        2,
        "acpi-pm",
        "sleep-control+reset",
        Arc::new(Mutex::new(AcpiPm)),
    )?;
    pio.insert(
        layout::PVPANIC_PORT.into(),
        1,
        "pvpanic",
        "events",
        Arc::new(Mutex::new(PvPanic::default())),
    )?;
    if legacy {
        // Without it (as on Firecracker's machine) Linux takes the wall clock from kvm-clock.
        pio.insert(
            layout::RTC_PORT.into(),
            2,
            "rtc",
            "index+data",
            Arc::new(Mutex::new(Rtc::host())),
        )?;
    }
    mmio.insert(
        layout::TESTDEV_MMIO_START,
        testdev::MMIO_LEN,
        "testdev",
        "exit+sink+console",
        testdev_dev,
    )?;
    Ok(PlatformDevices { serial, testdev })
}

/// The PCI root's port access: conf1 at 0xcf8/0xcfc on the PIO bus (ECAM is common to all
/// architectures and registered by `pci::platform`).
pub fn attach_pci(pio: &Bus, root: &Arc<PciRoot>) -> Result<(), BusError> {
    pio.insert(
        CONF1_PORT.into(),
        CONF1_LEN,
        "pci-conf1",
        "config-address+data",
        Arc::new(Mutex::new(Conf1::new(root.clone()))),
    )
}
