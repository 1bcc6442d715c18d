//! The IPv4 stack at CPL3: an ARP cache, the receive path (ARP and ICMP echo requests answered
//! here, whatever command runs), sending, and the poll/idle loop every workload is built on.
use core::sync::atomic::Ordering;

use super::proto::{self, Bad, Mac};
use super::{Net, Wait};
use crate::arch::{cpu, irq, time};
use crate::drivers::net::{NetDev, MAX_FRAME};
use crate::task;

const ARP_ENTRIES: usize = 8;
/// ARP requests sent for one address before giving up, and the wait for each.
const ARP_TRIES: u32 = 5;
const ARP_RETRY_MS: u64 = 200;
/// ICMP echo identifier of `net.ping`.
pub const PING_ID: u16 = 0x7476;

/// Counters of the stack (they only grow; commands report deltas).
#[derive(Clone, Copy, Default)]
pub struct Counters {
    pub arp_answered: u64,
    pub arp_learned: u64,
    pub icmp_answered: u64,
    /// IPv4 frames with a bad header, or fragments.
    pub bad_ip: u64,
    pub bad_icmp: u64,
    pub bad_udp_csum: u64,
    /// Frames not for this stack (other ethertypes, other addresses, other protocols).
    pub ignored: u64,
    /// Replies dropped for want of a free transmit buffer.
    pub tx_dropped: u64,
}

impl Counters {
    /// Counts a reply in `what` when it was queued, else in `tx_dropped`.
    pub fn count_sent(&mut self, sent: bool, what: impl FnOnce(&mut Counters) -> &mut u64) {
        if sent {
            *what(self) += 1;
        } else {
            self.tx_dropped += 1;
        }
    }
}

/// The stack's state.
pub struct Stack {
    pub mac: Mac,
    pub ip: u32,
    pub prefix: u8,
    arp: [(u32, Mac); ARP_ENTRIES],
    arp_next: usize,
    ip_id: u16,
    pub counters: Counters,
}

/// What a received frame means to the running command (ARP and ping requests are handled
/// before this).
pub enum Event<'a> {
    EchoReply {
        src: u32,
        id: u16,
        seq: u16,
        data: &'a [u8],
    },
    Udp {
        src_mac: Mac,
        src: u32,
        sport: u16,
        dport: u16,
        data: &'a [u8],
    },
}

impl Stack {
    pub fn new(mac: Mac, ip: u32, prefix: u8) -> Stack {
        Stack {
            mac,
            ip,
            prefix,
            arp: [(0, [0; 6]); ARP_ENTRIES],
            arp_next: 0,
            ip_id: 1,
            counters: Counters::default(),
        }
    }

    /// Whether `ip` is on this stack's subnet.
    pub fn on_link(&self, ip: u32) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        ip & mask == self.ip & mask
    }

    pub fn lookup(&self, ip: u32) -> Option<Mac> {
        self.arp
            .iter()
            .find(|(a, _)| *a == ip && ip != 0)
            .map(|(_, m)| *m)
    }

    fn learn(&mut self, ip: u32, mac: Mac) {
        if ip == 0 {
            return;
        }
        if let Some(e) = self.arp.iter_mut().find(|(a, _)| *a == ip) {
            e.1 = mac;
            return;
        }
        self.arp[self.arp_next] = (ip, mac);
        self.arp_next = (self.arp_next + 1) % ARP_ENTRIES;
        self.counters.arp_learned += 1;
    }

    fn next_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }
}

/// Queues a frame built by `build` (given the frame space, returns the length); false when no
/// transmit buffer is free. Goes out at the next kick.
pub fn send(
    dev: &mut NetDev,
    build: impl FnOnce(&mut [u8]) -> usize,
) -> Result<bool, &'static str> {
    match dev.tx_buffer()? {
        Some((id, buf)) => {
            let len = build(buf);
            if len < proto::MIN_FRAME {
                buf[len..proto::MIN_FRAME].fill(0);
            }
            dev.tx_queue(id, len.clamp(proto::MIN_FRAME, MAX_FRAME));
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Where a frame goes: link and IPv4 address.
#[derive(Clone, Copy)]
pub struct Dest {
    pub mac: Mac,
    pub ip: u32,
}

/// Builds an IPv4 packet of `proto` around a payload of `len` bytes that `fill` writes (given
/// the transport header + payload space, after the IPv4 header).
fn ip_frame(
    buf: &mut [u8],
    stack: &mut Stack,
    to: &Dest,
    proto_num: u8,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> usize {
    let id = stack.next_id();
    let mut at = proto::eth(buf, to.mac, stack.mac, proto::ETHERTYPE_IPV4);
    at += proto::ipv4(&mut buf[at..], stack.ip, to.ip, proto_num, len, id);
    fill(&mut buf[at..at + len]);
    at + len
}

/// Frame space for a UDP datagram: `fill` writes the payload, the header and checksum follow.
pub fn udp_frame(
    buf: &mut [u8],
    stack: &mut Stack,
    to: &Dest,
    sport: u16,
    dport: u16,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> usize {
    let (src, dst, len) = (stack.ip, to.ip, proto::UDP_HDR + payload_len);
    ip_frame(buf, stack, to, proto::PROTO_UDP, len, |u| {
        fill(&mut u[proto::UDP_HDR..]);
        proto::udp(u, src, dst, sport, dport);
    })
}

/// Frame space for an ICMP echo (request or reply) with `data`.
pub fn echo_frame(
    buf: &mut [u8],
    stack: &mut Stack,
    to: &Dest,
    kind: u8,
    id: u16,
    seq: u16,
    data: &[u8],
) -> usize {
    let len = proto::ICMP_HDR + data.len();
    ip_frame(buf, stack, to, proto::PROTO_ICMP, len, |p| {
        p[proto::ICMP_HDR..].copy_from_slice(data);
        proto::icmp_echo(p, kind, id, seq);
    })
}

/// Handles one received frame: answers ARP and ICMP echo requests for this stack's address,
/// learns ARP entries, checks headers and checksums; returns what is left for the command.
fn handle<'a>(
    dev: &mut NetDev,
    stack: &mut Stack,
    frame: &'a [u8],
) -> Result<Option<Event<'a>>, &'static str> {
    let Some(eth) = proto::parse_eth(frame) else {
        stack.counters.ignored += 1;
        return Ok(None);
    };
    if eth.dst != stack.mac && eth.dst != proto::BROADCAST {
        stack.counters.ignored += 1;
        return Ok(None);
    }
    match eth.ethertype {
        proto::ETHERTYPE_ARP => {
            let Some(arp) = proto::parse_arp(eth.payload) else {
                stack.counters.ignored += 1;
                return Ok(None);
            };
            if arp.target_ip != stack.ip {
                stack.counters.ignored += 1;
                return Ok(None);
            }
            stack.learn(arp.sender_ip, arp.sender_mac);
            if arp.op == proto::ARP_REQUEST {
                let (mac, ip) = (stack.mac, stack.ip);
                let sent = send(dev, |b| {
                    proto::arp_frame(b, proto::ARP_REPLY, mac, ip, arp.sender_mac, arp.sender_ip)
                })?;
                stack.counters.count_sent(sent, |c| &mut c.arp_answered);
            }
            Ok(None)
        }
        proto::ETHERTYPE_IPV4 => {
            let ip = match proto::parse_ipv4(eth.payload) {
                Ok(ip) => ip,
                Err(_) => {
                    stack.counters.bad_ip += 1;
                    return Ok(None);
                }
            };
            if ip.dst != stack.ip {
                stack.counters.ignored += 1;
                return Ok(None);
            }
            match ip.proto {
                proto::PROTO_ICMP => match proto::parse_icmp_echo(ip.payload) {
                    Ok(Some(e)) if e.kind == proto::ICMP_ECHO_REQUEST => {
                        let sent = send(dev, |b| {
                            echo_frame(
                                b,
                                stack,
                                &Dest {
                                    mac: eth.src,
                                    ip: ip.src,
                                },
                                proto::ICMP_ECHO_REPLY,
                                e.id,
                                e.seq,
                                e.data,
                            )
                        })?;
                        stack.counters.count_sent(sent, |c| &mut c.icmp_answered);
                        Ok(None)
                    }
                    Ok(Some(e)) => Ok(Some(Event::EchoReply {
                        src: ip.src,
                        id: e.id,
                        seq: e.seq,
                        data: e.data,
                    })),
                    Ok(None) => {
                        stack.counters.ignored += 1;
                        Ok(None)
                    }
                    Err(_) => {
                        stack.counters.bad_icmp += 1;
                        Ok(None)
                    }
                },
                proto::PROTO_UDP => match proto::parse_udp(&ip) {
                    Ok(u) => Ok(Some(Event::Udp {
                        src_mac: eth.src,
                        src: ip.src,
                        sport: u.sport,
                        dport: u.dport,
                        data: u.data,
                    })),
                    Err(Bad::Checksum) => {
                        stack.counters.bad_udp_csum += 1;
                        Ok(None)
                    }
                    Err(_) => {
                        stack.counters.bad_ip += 1;
                        Ok(None)
                    }
                },
                _ => {
                    stack.counters.ignored += 1;
                    Ok(None)
                }
            }
        }
        _ => {
            stack.counters.ignored += 1;
            Ok(None)
        }
    }
}

impl Net {
    /// Ticks of the TSC in `ms` milliseconds.
    pub fn ms(&self, ms: u64) -> u64 {
        ms.saturating_mul(self.khz)
    }

    /// TSC ticks to tenths of a microsecond.
    pub fn tenth_us(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(10_000) / self.khz.max(1)
    }

    /// Drains every used ring: every received frame is handled (`on_event` gets what the
    /// stack leaves, with the TSC when the batch was seen; replies go out on the pair the frame
    /// came in on), its buffer reposted; sent frames are taken back; then every queue is
    /// published and kicked as the device wants. Returns the frames received.
    pub fn poll(
        &mut self,
        mut on_event: impl FnMut(&mut NetDev, &mut Stack, Event<'_>, u64) -> Result<(), &'static str>,
    ) -> Result<u32, &'static str> {
        let mut n = 0;
        let mut progress = false;
        if self.wait == Wait::Intr {
            let irqs = irq::INTERRUPTS.load(Ordering::Relaxed);
            if irqs == self.irq_seen && !self.recheck {
                self.dev.kick_tx();
                return Ok(0);
            }
            self.irq_seen = irqs;
            self.recheck = false;
        }
        if self.dev.rx_pending() {
            let seen = time::ticks();
            let tx_pair = self.dev.tx_pair;
            while let Some((pair, id, frame)) = self.dev.rx_next()? {
                n += 1;
                self.dev.tx_pair = pair;
                let ev = handle(&mut self.dev, &mut self.stack, frame)?;
                if let Some(ev) = ev {
                    on_event(&mut self.dev, &mut self.stack, ev, seen)?;
                }
                self.dev.rx_done(pair, id);
            }
            self.dev.tx_pair = tx_pair;
            self.dev.kick_rx();
            progress = true;
        }
        if self.dev.tx_pending() {
            self.dev.tx_reclaim()?;
            progress = true;
        }
        self.dev.kick_tx();
        if progress {
            // Re-arm (wait=irq, intr) or push the suppression ahead (EVENT_IDX): both follow
            // the entries just consumed.
            self.dev.interrupts(self.wait.wants_interrupts());
            if self.wait == Wait::Intr {
                self.recheck = self.dev.pending();
            }
        }
        Ok(n)
    }

    /// Nothing to do before `deadline` (TSC): with `wait=irq`, `intr` or `poll`, one spin-loop
    /// pause (the caller polls again); with `halt`, asks for interrupts, checks once more, and
    /// halts at CPL0 until an interrupt or the deadline.
    pub fn idle(&mut self, deadline: u64) {
        if self.wait != Wait::Halt {
            cpu::pause();
            return;
        }
        let seen = irq::INTERRUPTS.load(Ordering::Relaxed);
        self.dev.interrupts(true);
        if !self.dev.pending() {
            task::wait(deadline, seen);
            self.halts += 1;
        }
        self.dev.interrupts(false);
    }

    /// The MAC of `ip` on the local subnet: from the cache, else by ARP (5 requests, 200 ms
    /// apart).
    pub fn resolve(&mut self, ip: u32) -> Result<Mac, &'static str> {
        if !self.stack.on_link(ip) {
            return Err("destination not on the local subnet (no routing)");
        }
        for _ in 0..ARP_TRIES {
            if let Some(m) = self.stack.lookup(ip) {
                return Ok(m);
            }
            let (mac, me) = (self.stack.mac, self.stack.ip);
            let sent = send(&mut self.dev, |b| {
                proto::arp_frame(b, proto::ARP_REQUEST, mac, me, [0; 6], ip)
            })?;
            if !sent {
                self.stack.counters.tx_dropped += 1;
            }
            self.dev.kick_tx();
            let deadline = time::ticks() + self.ms(ARP_RETRY_MS);
            while time::ticks() < deadline {
                self.poll(|_, _, _, _| Ok(()))?;
                if self.stack.lookup(ip).is_some() {
                    break;
                }
                self.idle(deadline);
            }
        }
        self.stack
            .lookup(ip)
            .ok_or("no ARP reply from the destination")
    }
}
