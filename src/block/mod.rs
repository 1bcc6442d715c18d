//! The guest's disks: virtio-blk on a raw image file or block device, I/O through io_uring.
//!
//! * [`config`]: `--disk path=IMG[,readonly=on][,direct=on][,queues=N][,serial=STR]...`.
//! * [`image`]: opening, checking and locking the image (`flock`: shared for a read-only disk,
//!   exclusive otherwise).
//! * [`request`]: checking one request (header, layout, lengths, sector range, type) before
//!   anything touches the image; fuzzed on its own.
//! * [`device`]: the virtio-blk device ([`Blk`]): features, config space, activation, and its
//!   queues' worker threads ([`BlkHandle`]). Its parts: `queue` (a queue's data path: pop,
//!   check, submit; complete, used ring, interrupt), `worker` (a queue's thread), [`counters`].
//! * [`engine`]: what carries requests to the image: io_uring (`uring`), a thread pool
//!   (`pool`, the fallback when the kernel refuses io_uring), or memory ([`MemEngine`]).
//!
//! The data path of one request: the driver's kick (an ioeventfd) wakes the queue's worker,
//! which pops the chain, checks it, and submits a `readv`/`writev` whose iovecs point straight
//! into guest RAM (no copy; O_DIRECT with unaligned buffers goes through an aligned bounce
//! buffer), with many requests in flight; the engine's completion eventfd wakes the worker
//! again, which writes the status byte and the used entry and, if the driver asked
//! (EVENT_IDX `used_event`), fires the queue's MSI-X vector through its irqfd.
pub mod config;
pub mod counters;
pub mod device;
pub mod engine;
pub mod image;
mod pool;
mod queue;
pub mod request;
mod uring;
mod worker;

pub use config::DiskConfig;
pub use device::{Blk, BlkError, BlkHandle};
pub use engine::{Engine, MemEngine};
pub use uring::DISABLE_ENV as NO_IO_URING_ENV;

#[cfg(test)]
mod tests;
