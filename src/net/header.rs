//! The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes, little-endian) in front of
//! every frame, and the checks a transmitted one must pass before it reaches the TAP.
//!
//! A guest-written header is untrusted: unknown flags or GSO types, GSO for an offload the
//! driver did not negotiate, GSO without a segment size, or checksum and header offsets past
//! the end of the frame make the frame be dropped (and counted) instead of handed to the kernel.
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};

/// Header bytes (VERSION_1: always with `num_buffers`).
pub const HDR_LEN: usize = 12;
/// Where `num_buffers` sits in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// An Ethernet header: the shortest frame the TAP takes.
pub const ETH_HLEN: usize = 14;
/// The longest frame (after the vnet header) a TX chain may carry: the largest IP packet in an
/// Ethernet frame with a VLAN tag. Longer chains are dropped as oversize.
pub const MAX_FRAME_LEN: usize = 65_535 + ETH_HLEN + 4;
/// The buffer a receive chain must offer for one frame without MRG_RXBUF (virtio 1.2 §5.1.6.3.1):
/// 65 562 bytes with any GUEST_TSO/UFO negotiated, else a 1514-byte frame plus the header.
pub const RX_BIG_LEN: usize = 65_562;
pub const RX_SMALL_LEN: usize = 1_514 + HDR_LEN;

pub const F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
pub const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_UDP: u8 = VIRTIO_NET_HDR_GSO_UDP as u8;
pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
pub const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHeader {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// Why a transmitted header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("flags {0:#04x}: only NEEDS_CSUM may be set on transmit")]
    Flags(u8),
    #[error("unknown gso_type {0:#04x}")]
    UnknownGso(u8),
    #[error("gso_type {0:#04x} needs a HOST_ offload feature the driver did not negotiate")]
    GsoNotNegotiated(u8),
    #[error("gso_type {0:#04x} with gso_size 0")]
    GsoSizeZero(u8),
    #[error("gso_type {0:#04x} without NEEDS_CSUM")]
    GsoWithoutCsum(u8),
    #[error("NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated")]
    CsumNotNegotiated,
    #[error("checksum at {start}+{offset} is past the {len}-byte frame")]
    CsumPastFrame { start: u16, offset: u16, len: usize },
    #[error("hdr_len {hdr_len} is past the {len}-byte frame")]
    HdrLenPastFrame { hdr_len: u16, len: usize },
}

/// Checks the header of a frame of `frame_len` bytes (after the header) the driver wants sent,
/// against the features it negotiated (`acked`).
pub fn validate_tx(h: &VnetHeader, frame_len: usize, acked: u64) -> Result<(), HeaderError> {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if h.flags & !F_NEEDS_CSUM != 0 {
        return Err(HeaderError::Flags(h.flags));
    }
    let needs_csum = h.flags & F_NEEDS_CSUM != 0;
    if needs_csum {
        if !has(VIRTIO_NET_F_CSUM) {
            return Err(HeaderError::CsumNotNegotiated);
        }
        // The 2-byte checksum field must lie inside the frame.
        let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
        if end > frame_len {
            return Err(HeaderError::CsumPastFrame {
                start: h.csum_start,
                offset: h.csum_offset,
                len: frame_len,
            });
        }
    }
    if h.gso_type != GSO_NONE {
        // ECN needs HOST_ECN, which is not offered.
        let feature = match h.gso_type {
            GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
            GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
            GSO_UDP => VIRTIO_NET_F_HOST_UFO,
            t => return Err(HeaderError::UnknownGso(t)),
        };
        if !has(feature) {
            return Err(HeaderError::GsoNotNegotiated(h.gso_type));
        }
        if h.gso_size == 0 {
            return Err(HeaderError::GsoSizeZero(h.gso_type));
        }
        // virtio 1.2 §5.1.6.2.1: GSO implies a partial checksum.
        if !needs_csum {
            return Err(HeaderError::GsoWithoutCsum(h.gso_type));
        }
    }
    if usize::from(h.hdr_len) > frame_len {
        return Err(HeaderError::HdrLenPastFrame {
            hdr_len: h.hdr_len,
            len: frame_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_HOST: u64 = (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_HOST_TSO4)
        | (1 << VIRTIO_NET_F_HOST_TSO6)
        | (1 << VIRTIO_NET_F_HOST_UFO);

    fn tso4() -> VnetHeader {
        VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn bytes_round_trip() {
        let h = VnetHeader {
            num_buffers: 3,
            ..tso4()
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 3, 0]);
        assert_eq!(VnetHeader::from_bytes(&b), h);
    }

    #[test]
    fn good_headers_pass() {
        assert_eq!(validate_tx(&VnetHeader::default(), 60, 0), Ok(()));
        assert_eq!(validate_tx(&tso4(), 60_054, ALL_HOST), Ok(()));
        for t in [GSO_TCPV6, GSO_UDP] {
            let h = VnetHeader {
                gso_type: t,
                ..tso4()
            };
            assert_eq!(validate_tx(&h, 9000, ALL_HOST), Ok(()));
        }
        // The checksum field may end exactly at the end of the frame.
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        assert_eq!(validate_tx(&h, 42, ALL_HOST), Ok(()));
        assert!(validate_tx(&h, 41, ALL_HOST).is_err());
    }

    #[test]
    fn bad_headers_are_refused() {
        let cases = [
            (
                VnetHeader {
                    flags: 2,
                    ..Default::default()
                },
                ALL_HOST,
                HeaderError::Flags(2),
            ),
            (
                VnetHeader {
                    gso_type: 5,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::UnknownGso(5),
            ),
            (
                VnetHeader {
                    gso_type: 0x42,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::UnknownGso(0x42),
            ),
            (
                VnetHeader {
                    gso_type: GSO_TCPV4 | GSO_ECN,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::UnknownGso(GSO_TCPV4 | GSO_ECN),
            ),
            (
                VnetHeader {
                    gso_type: GSO_ECN,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::UnknownGso(GSO_ECN),
            ),
            (
                tso4(),
                1 << VIRTIO_NET_F_CSUM,
                HeaderError::GsoNotNegotiated(GSO_TCPV4),
            ),
            (
                VnetHeader {
                    gso_size: 0,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::GsoSizeZero(GSO_TCPV4),
            ),
            (
                VnetHeader { flags: 0, ..tso4() },
                ALL_HOST,
                HeaderError::GsoWithoutCsum(GSO_TCPV4),
            ),
            (tso4(), 0, HeaderError::CsumNotNegotiated),
            (
                VnetHeader {
                    csum_start: 60_040,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::CsumPastFrame {
                    start: 60_040,
                    offset: 16,
                    len: 60_054,
                },
            ),
            (
                VnetHeader {
                    csum_start: u16::MAX,
                    csum_offset: u16::MAX,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::CsumPastFrame {
                    start: u16::MAX,
                    offset: u16::MAX,
                    len: 60_054,
                },
            ),
            (
                VnetHeader {
                    hdr_len: 60_055,
                    ..tso4()
                },
                ALL_HOST,
                HeaderError::HdrLenPastFrame {
                    hdr_len: 60_055,
                    len: 60_054,
                },
            ),
        ];
        for (h, acked, want) in cases {
            assert_eq!(validate_tx(&h, 60_054, acked), Err(want), "{h:?}");
        }
    }
}
