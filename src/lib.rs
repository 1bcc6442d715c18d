//! trapvisor: a KVM virtual machine monitor whose trap path is complete, fast and visible.
//!
//! The modules follow the trap path: `kvm` (VM, vCPUs, exit dispatch) → `bus` (PIO and MMIO
//! address spaces) → `devices` (legacy devices), with `arch` (x86_64 boot) and `guest` (the
//! built-in guest image) beside them.
pub mod arch;
pub mod bus;
pub mod kvm;
pub mod devices;
