//! Platform devices: plain state machines behind `bus::BusDevice`. Where each one sits (port
//! or MMIO address, interrupt line) is the architecture's choice (`arch::register_devices`).
use std::sync::{Arc, Mutex};

pub mod acpi_pm;
pub mod i8042;
pub mod pvpanic;
pub mod rtc;
pub mod rtc_pl031;
pub mod serial;
pub mod testdev;

/// Handles to the platform devices the VMM talks to after registration.
pub struct PlatformDevices<T: vm_superio::Trigger> {
    pub serial: Arc<Mutex<serial::SerialDevice<T>>>,
    pub testdev: Arc<Mutex<testdev::TestDev>>,
}
