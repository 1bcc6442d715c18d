//! Device drivers built on `pci` and `virtio`.
pub mod blk;
pub mod net;
pub mod rng;
