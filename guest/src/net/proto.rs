//! Ethernet, ARP, IPv4, ICMP and UDP: building frames into a buffer and checking received ones.
//! Plain byte work, run at CPL3. Addresses are `u32`s in host order (10.0.2.15 = 0x0a00020f).
use core::fmt;

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xff; 6];

pub const ETH_HDR: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ARP_LEN: usize = 28;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const IPV4_HDR: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;
pub const ICMP_HDR: usize = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const UDP_HDR: usize = 8;
/// Largest IPv4 packet (the Ethernet MTU), and so the largest UDP payload.
pub const MTU: usize = 1500;
pub const MAX_UDP_PAYLOAD: usize = MTU - IPV4_HDR - UDP_HDR;
pub const MAX_ICMP_PAYLOAD: usize = MTU - IPV4_HDR - ICMP_HDR;
/// Shortest Ethernet frame without the FCS (shorter ones are padded with zeros).
pub const MIN_FRAME: usize = 60;

/// An IPv4 address for printing.
pub struct Ip(pub u32);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let b = self.0.to_be_bytes();
        write!(f, "{}.{}.{}.{}", b[0], b[1], b[2], b[3])
    }
}

/// A MAC address for printing.
pub struct MacFmt(pub Mac);

impl fmt::Display for MacFmt {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Parses `a.b.c.d`.
pub fn parse_ip(s: &str) -> Option<u32> {
    let mut out = 0u32;
    let mut parts = 0;
    for p in s.split('.') {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: u32 = p.parse().ok()?;
        if v > 255 {
            return None;
        }
        out = (out << 8) | v;
        parts += 1;
    }
    (parts == 4).then_some(out)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum's running sum over `data` (16-bit big-endian words, odd byte padded).
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // Four 16-bit words at once: add the two 32-bit halves (carries kept in the top bits).
        sum += (v >> 32) + (v & 0xffff_ffff);
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        sum += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a running sum to the 16-bit one's-complement checksum (complemented).
pub fn csum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header sum for UDP over IPv4.
fn pseudo_sum(src: u32, dst: u32, proto: u8, len: usize) -> u64 {
    u64::from(src >> 16)
        + u64::from(src & 0xffff)
        + u64::from(dst >> 16)
        + u64::from(dst & 0xffff)
        + u64::from(proto)
        + len as u64
}

/// Writes an Ethernet header; returns its length.
pub fn eth(buf: &mut [u8], dst: Mac, src: Mac, ethertype: u16) -> usize {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    put16(buf, 12, ethertype);
    ETH_HDR
}

/// A whole ARP frame (padded to the minimum frame size); returns its length.
pub fn arp_frame(
    buf: &mut [u8],
    op: u16,
    src_mac: Mac,
    src_ip: u32,
    dst_mac: Mac,
    dst_ip: u32,
) -> usize {
    let eth_dst = if op == ARP_REQUEST {
        BROADCAST
    } else {
        dst_mac
    };
    let at = eth(buf, eth_dst, src_mac, ETHERTYPE_ARP);
    let a = &mut buf[at..at + ARP_LEN];
    put16(a, 0, 1); // Ethernet
    put16(a, 2, ETHERTYPE_IPV4);
    a[4] = 6;
    a[5] = 4;
    put16(a, 6, op);
    a[8..14].copy_from_slice(&src_mac);
    put32(a, 14, src_ip);
    a[18..24].copy_from_slice(if op == ARP_REQUEST { &[0; 6] } else { &dst_mac });
    put32(a, 24, dst_ip);
    let len = at + ARP_LEN;
    buf[len..MIN_FRAME].fill(0);
    MIN_FRAME
}

/// Writes an IPv4 header (no options, DF, TTL 64) for `payload_len` bytes of `proto`, with its
/// checksum; returns its length.
pub fn ipv4(buf: &mut [u8], src: u32, dst: u32, proto: u8, payload_len: usize, id: u16) -> usize {
    let h = &mut buf[..IPV4_HDR];
    h[0] = 0x45;
    h[1] = 0;
    put16(h, 2, (IPV4_HDR + payload_len) as u16);
    put16(h, 4, id);
    put16(h, 6, 0x4000); // DF
    h[8] = 64;
    h[9] = proto;
    put16(h, 10, 0);
    put32(h, 12, src);
    put32(h, 16, dst);
    let c = csum_fold(csum_add(0, h));
    put16(h, 10, c);
    IPV4_HDR
}

/// Fills in an ICMP echo header in front of a payload already in `icmp[ICMP_HDR..]`, with its
/// checksum.
pub fn icmp_echo(icmp: &mut [u8], kind: u8, id: u16, seq: u16) {
    icmp[0] = kind;
    icmp[1] = 0;
    put16(icmp, 2, 0);
    put16(icmp, 4, id);
    put16(icmp, 6, seq);
    let c = csum_fold(csum_add(0, icmp));
    put16(icmp, 2, c);
}

/// Fills in a UDP header in front of a payload already in `udp[UDP_HDR..]`, with its checksum
/// over the pseudo-header (0 is sent as 0xffff).
pub fn udp(udp: &mut [u8], src: u32, dst: u32, sport: u16, dport: u16) {
    let len = udp.len();
    put16(udp, 0, sport);
    put16(udp, 2, dport);
    put16(udp, 4, len as u16);
    put16(udp, 6, 0);
    let c = csum_fold(csum_add(pseudo_sum(src, dst, PROTO_UDP, len), udp));
    put16(udp, 6, if c == 0 { 0xffff } else { c });
}

/// A received Ethernet frame.
pub struct EthFrame<'a> {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
    pub payload: &'a [u8],
}

pub fn parse_eth(f: &[u8]) -> Option<EthFrame<'_>> {
    if f.len() < ETH_HDR {
        return None;
    }
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&f[0..6]);
    src.copy_from_slice(&f[6..12]);
    Some(EthFrame {
        dst,
        src,
        ethertype: be16(f, 12),
        payload: &f[ETH_HDR..],
    })
}

/// An ARP packet (Ethernet/IPv4 only).
pub struct Arp {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: u32,
    pub target_ip: u32,
}

pub fn parse_arp(p: &[u8]) -> Option<Arp> {
    if p.len() < ARP_LEN || be16(p, 0) != 1 || be16(p, 2) != ETHERTYPE_IPV4 || p[4] != 6 {
        return None;
    }
    if p[5] != 4 {
        return None;
    }
    let mut sender_mac = [0; 6];
    sender_mac.copy_from_slice(&p[8..14]);
    Some(Arp {
        op: be16(p, 6),
        sender_mac,
        sender_ip: be32(p, 14),
        target_ip: be32(p, 24),
    })
}

/// Why a received IPv4 packet was not taken.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Malformed header, bad header checksum, or a length beyond the frame.
    Header,
    /// A fragment (not reassembled).
    Fragment,
    /// A transport checksum that does not verify.
    Checksum,
}

/// A received IPv4 packet: header checked (version, length, checksum, no fragments).
pub struct Ipv4<'a> {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub payload: &'a [u8],
}

pub fn parse_ipv4(p: &[u8]) -> Result<Ipv4<'_>, Bad> {
    if p.len() < IPV4_HDR || p[0] >> 4 != 4 {
        return Err(Bad::Header);
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(be16(p, 2));
    if ihl < IPV4_HDR || total < ihl || total > p.len() {
        return Err(Bad::Header);
    }
    if csum_fold(csum_add(0, &p[..ihl])) != 0 {
        return Err(Bad::Header);
    }
    if be16(p, 6) & 0x3fff != 0 {
        return Err(Bad::Fragment);
    }
    Ok(Ipv4 {
        src: be32(p, 12),
        dst: be32(p, 16),
        proto: p[9],
        payload: &p[ihl..total],
    })
}

/// An ICMP echo request or reply, checksum verified.
pub struct Echo<'a> {
    pub kind: u8,
    pub id: u16,
    pub seq: u16,
    pub data: &'a [u8],
}

pub fn parse_icmp_echo(p: &[u8]) -> Result<Option<Echo<'_>>, Bad> {
    if p.len() < ICMP_HDR {
        return Err(Bad::Header);
    }
    if csum_fold(csum_add(0, p)) != 0 {
        return Err(Bad::Checksum);
    }
    if p[0] != ICMP_ECHO_REQUEST && p[0] != ICMP_ECHO_REPLY {
        return Ok(None);
    }
    Ok(Some(Echo {
        kind: p[0],
        id: be16(p, 4),
        seq: be16(p, 6),
        data: &p[ICMP_HDR..],
    }))
}

/// A UDP datagram, checksum verified (when the sender set one).
pub struct Udp<'a> {
    pub sport: u16,
    pub dport: u16,
    pub data: &'a [u8],
}

pub fn parse_udp<'a>(ip: &Ipv4<'a>) -> Result<Udp<'a>, Bad> {
    let p = ip.payload;
    if p.len() < UDP_HDR {
        return Err(Bad::Header);
    }
    let len = usize::from(be16(p, 4));
    if len < UDP_HDR || len > p.len() {
        return Err(Bad::Header);
    }
    let p = &p[..len];
    let no_checksum = be16(p, 6) == 0;
    if !no_checksum && csum_fold(csum_add(pseudo_sum(ip.src, ip.dst, PROTO_UDP, len), p)) != 0 {
        return Err(Bad::Checksum);
    }
    Ok(Udp {
        sport: be16(p, 0),
        dport: be16(p, 2),
        data: &p[UDP_HDR..],
    })
}

// The test payload of `net.udp-tx` / `net.udp-rx` (and `guest/net-host.py`):
//   0..4   "TVN1"
//   4..8   sequence number (big-endian)
//   8..12  payload length (big-endian, all of it, header included)
//   12..16 CRC-32 (zlib) of bytes 16.. (big-endian)
//   16..   byte k = (seq + k) & 0xff
pub const TEST_MAGIC: &[u8; 4] = b"TVN1";
pub const TEST_HDR: usize = 16;

/// Writes the test payload for `seq` into `p` (its whole length); `crc` is the CRC of the body,
/// which depends only on `seq & 0xff` and the length (see [`test_body_crc`]).
pub fn test_payload(p: &mut [u8], seq: u32, crc: u32) {
    p[0..4].copy_from_slice(TEST_MAGIC);
    put32(p, 4, seq);
    put32(p, 8, p.len() as u32);
    put32(p, 12, crc);
    let mut v = (seq as u8).wrapping_add(TEST_HDR as u8);
    for b in &mut p[TEST_HDR..] {
        *b = v;
        v = v.wrapping_add(1);
    }
}

/// The CRC-32 of a test payload body of `len` bytes (header included) for sequence `seq`.
pub fn test_body_crc(seq: u32, len: usize) -> u32 {
    let mut body = [0u8; MAX_UDP_PAYLOAD];
    let mut v = (seq as u8).wrapping_add(TEST_HDR as u8);
    for b in &mut body[..len.saturating_sub(TEST_HDR)] {
        *b = v;
        v = v.wrapping_add(1);
    }
    crate::crc32::crc32(&body[..len.saturating_sub(TEST_HDR)])
}

/// Checks a received test payload: Some(seq) when magic, length and CRC agree.
pub fn check_test_payload(p: &[u8]) -> Option<u32> {
    if p.len() < TEST_HDR || &p[0..4] != TEST_MAGIC || be32(p, 8) as usize != p.len() {
        return None;
    }
    (crate::crc32::crc32(&p[TEST_HDR..]) == be32(p, 12)).then(|| be32(p, 4))
}
