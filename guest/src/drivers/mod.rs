//! Device drivers built on `pci` and `virtio`.
pub mod net;
pub mod rng;
