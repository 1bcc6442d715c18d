//! The legacy and platform device set every VM has, registered on its buses.
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::Trigger;

use super::acpi_pm::AcpiPm;
use super::i8042::I8042;
use super::pvpanic::PvPanic;
use super::serial::SerialDevice;
use super::testdev::{self, DebugExit, TestDev};
use crate::arch::x86_64::layout;
use crate::bus::{Bus, BusError, SharedDevice};

/// Handles to the devices the VMM talks to after registration.
pub struct LegacyDevices<T: Trigger> {
    pub serial: Arc<Mutex<SerialDevice<T>>>,
    pub testdev: Arc<Mutex<TestDev>>,
}

/// Registers COM1, the i8042, the debug-exit port, the test device (PIO window and MMIO page),
/// the ACPI PM registers and pvpanic. `console` receives serial and test-device output;
/// `kbd_irq` is the i8042's keyboard interrupt (IRQ 1).
pub fn register<T>(
    pio: &Bus,
    mmio: &Bus,
    serial_irq: T,
    kbd_irq: T,
    console: Box<dyn Write + Send>,
    testdev_console: Box<dyn Write + Send>,
) -> Result<LegacyDevices<T>, BusError>
where
    T: Trigger + Send + 'static,
    T::E: std::fmt::Debug,
{
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, console)));
    let testdev = Arc::new(Mutex::new(TestDev::new(testdev_console)));
    let serial_dev: SharedDevice = serial.clone();
    let testdev_dev: SharedDevice = testdev.clone();
    pio.insert(layout::COM1_PORT.into(), 8, "serial0", "16550", serial_dev)?;
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
    mmio.insert(
        layout::TESTDEV_MMIO_START,
        testdev::MMIO_LEN,
        "testdev",
        "exit+sink+console",
        testdev_dev,
    )?;
    Ok(LegacyDevices { serial, testdev })
}
