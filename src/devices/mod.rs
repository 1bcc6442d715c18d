//! Legacy and platform devices: plain state machines behind `bus::BusDevice`.
pub mod acpi_pm;
pub mod i8042;
pub mod legacy;
pub mod pvpanic;
pub mod serial;
pub mod testdev;
