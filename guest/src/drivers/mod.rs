//! Device drivers built on `pci` and `virtio`.
pub mod rng;
