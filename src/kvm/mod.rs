//! The KVM side of the trap path: the VM, its vCPU threads and the exit dispatch.
pub mod exit;
pub mod report;
pub mod vcpu;
pub mod vm;
