//! The KVM side of the trap path: the VM, its vCPU threads and the exit dispatch.
pub mod control;
pub mod exit;
pub mod ioevent;
pub mod irq;
pub mod ram;
pub mod stats;
pub mod vcpu;
pub mod vm;
