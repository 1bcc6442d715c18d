//! trapvisor: a KVM virtual machine monitor whose trap path is complete, fast and visible.
//!
//! The modules follow the trap path: `kvm` (VM, vCPUs, exit dispatch) → `bus` (PIO and MMIO
//! address spaces) → `devices` (legacy devices), with `arch` (x86_64 boot), `guest` (the
//! built-in guest image), `console` and `vmm` (putting a VM together) beside them.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod arch;
pub mod block;
pub mod bus;
pub mod cli;
pub mod console;
pub mod devices;
pub mod event_loop;
pub mod guest;
pub mod kvm;
pub mod net;
pub mod pci;
pub mod seccomp;
pub mod sys;
pub mod trace;
pub mod userfile;
pub mod virtio;
pub mod vmm;
