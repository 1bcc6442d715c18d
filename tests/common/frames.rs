//! Ethernet frames for network tests: ARP, IPv4, ICMP echo, UDP, TCP, checksums.
#![allow(dead_code)]

pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV4: u16 = 0x0800;
/// IEEE local experimental ethertype: frames the kernel ignores (reflector tests).
pub const ETH_EXPERIMENTAL: u16 = 0x88b5;

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The Internet checksum (0 over data that holds a correct one).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

fn sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn arp_request(src_mac: [u8; 6], src_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&src_mac);
    arp.extend_from_slice(&src_ip);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target_ip);
    ethernet([0xff; 6], src_mac, ETH_ARP, &arp)
}

/// An IPv4 header (valid checksum) and `payload`.
pub fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

pub fn icmp_echo(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ethernet(dst_mac, src_mac, ETH_IPV4, &ipv4(1, src, dst, &icmp))
}

/// The pseudo-header sum for a TCP/UDP checksum over `len` bytes of `proto`, folded, not
/// inverted: what a driver puts in the checksum field with NEEDS_CSUM.
pub fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    fold(sum(&p))
}

/// A UDP datagram in an Ethernet frame. `partial`: the checksum field holds only the
/// pseudo-header sum (NEEDS_CSUM at 34+6); else it is complete.
#[allow(clippy::too_many_arguments)]
pub fn udp(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    data: &[u8],
    partial: bool,
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = if partial {
        pseudo_sum(src, dst, 17, len)
    } else {
        let mut p = Vec::new();
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0, 17]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        p.extend_from_slice(&u);
        checksum(&p)
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ethernet(dst_mac, src_mac, ETH_IPV4, &ipv4(17, src, dst, &u))
}

/// One TCP segment (ACK) carrying `data`, with a partial checksum (pseudo-header sum), for
/// TSO: the driver's header says NEEDS_CSUM at 34+16 and GSO TCPV4.
pub fn tcp_tso(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    data: &[u8],
) -> Vec<u8> {
    let len = 20 + data.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(&4000u16.to_be_bytes());
    t.extend_from_slice(&5000u16.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    let c = pseudo_sum(src, dst, 6, len);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t.extend_from_slice(data);
    ethernet(dst_mac, src_mac, ETH_IPV4, &ipv4(6, src, dst, &t))
}
