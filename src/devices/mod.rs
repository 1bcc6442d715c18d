//! Legacy and platform devices: plain state machines behind `bus::BusDevice`.
pub mod testdev;
