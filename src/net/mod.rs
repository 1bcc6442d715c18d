//! Host networking backends for virtio-net.
//!
//! [`tap`] opens a Linux TAP device through `/dev/net/tun` with the 12-byte virtio 1.x
//! header in front of every frame, one non-blocking fd per queue, so a virtio-net device can
//! move its descriptor chains to and from the host with one `readv`/`writev` each.
pub mod tap;
