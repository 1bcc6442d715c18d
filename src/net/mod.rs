//! Host networking for the guest: virtio-net over a TAP.
//!
//! * [`tap`]: a Linux TAP device through `/dev/net/tun` with the 12-byte virtio 1.x header in
//!   front of every frame, one non-blocking fd per queue, so descriptor chains move to and from
//!   the host with one `readv`/`writev` each.
//! * [`device`]: the virtio-net device ([`Net`]): features, config space, queue roles, and the
//!   worker threads ([`NetHandle`]). Its parts: [`chain`] (checking untrusted descriptor
//!   chains), [`used`] (the used ring and interrupt suppression), [`header`] (the vnet header and its checks), `tx`, `rx`, `ctrl`
//!   (the three queue kinds), `pair` and `worker` (a queue pair and its thread), `hold` (a
//!   transmit interrupt held behind a receive interrupt), [`counters`], `trace` (what a run
//!   records on the `--trace` timeline).
//! * [`config`]: `--net tap=NAME,...`; [`backend`]: what a pair needs from its TAP queue;
//!   [`vhost`]: `vhost=on`, the kernel's vhost-net as a pair's bottom half.
pub mod backend;
pub mod chain;
pub mod config;
pub mod counters;
mod ctrl;
pub mod device;
#[cfg(test)]
mod exit_tests;
pub mod header;
mod hold;
#[cfg(test)]
mod hold_tests;
mod pair;
mod rx;
pub mod tap;
mod trace;
mod tx;
pub mod used;
pub mod vhost;
mod worker;

pub use backend::NetBackend;
pub use config::NetConfig;
pub use counters::NetCounters;
pub use device::{Net, NetError, NetHandle};
