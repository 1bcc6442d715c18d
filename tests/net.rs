//! virtio-net end to end on a real TAP, each test in a network namespace of its own: a mock
//! driver (in-memory guest RAM, virtio-queue's MockSplitQueue layout) sends frames that the
//! kernel answers (ARP, ICMP, UDP to a socket), TSO and checksum offload frames go out and come
//! back through a hairpin bridge, MRG_RXBUF spreads frames over chains, EVENT_IDX suppresses
//! interrupts and kicks, two queue pairs carry traffic at once, and `trapvisor run --net`
//! puts the device on the guest's PCI bus.
//!
//! Frames go only to addresses inside the test's namespace. Without root (no namespace) each
//! test prints "skipped: ..." and passes.
mod common;
#[path = "common/frames.rs"]
mod frames;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/netrig.rs"]
mod netrig;
#[path = "common/virtq.rs"]
mod virtq;

use std::time::Duration;

use frames::*;
use netrig::*;
use trapvisor::net::header::{VnetHeader, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, HDR_LEN};
use trapvisor::virtio::VirtioDevice;
use virtio_bindings::virtio_net::*;
use virtq::Buf;
use vm_memory::{Bytes, GuestAddress};

fn is_arp_reply(fr: &Frame, mac: [u8; 6]) -> bool {
    let e = &fr.data;
    e.len() >= 42 && e[0..6] == mac && be16(e, 12) == ETH_ARP && be16(e, 20) == 2
}

fn is_echo_reply(fr: &Frame, seq: u16) -> bool {
    let e = &fr.data;
    e.len() >= 42 && be16(e, 12) == ETH_IPV4 && e[23] == 1 && e[34] == 0 && be16(e, 40) == seq
}

fn ping(rig: &mut Rig, p: usize, seq: u16, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let frame = icmp_echo(HOST_MAC, rig.mac, GUEST_IP, HOST_IP, 0x7476, seq, &data);
    rig.send(p, plain(), &frame);
}

/// Sends a control command; returns the ack byte.
fn ctrl(rig: &mut Rig, class: u32, cmd: u32, data: &[u8]) -> u8 {
    let q = rig.ctrl_index();
    let a = rig.arena.alloc(2 + data.len() as u64);
    let mut out = vec![class as u8, cmd as u8];
    out.extend_from_slice(data);
    rig.mem.write_slice(&out, GuestAddress(a)).unwrap();
    let ack = rig.arena.alloc(1);
    rig.mem.write_obj(0xeeu8, GuestAddress(ack)).unwrap();
    rig.queues[q].add(&[Buf::read(a, out.len() as u32), Buf::write(ack, 1)]);
    rig.queues[q].publish();
    rig.kick(q);
    let mut used = Vec::new();
    assert!(wait_for(|| {
        used.extend(rig.queues[q].take_used());
        !used.is_empty()
    }));
    assert_eq!(used[0].1, 1, "one ack byte written");
    rig.mem.read_obj(GuestAddress(ack)).unwrap()
}

#[test]
fn arp_and_ping_round_trip() {
    let Some(mut rig) = Rig::tap("net-arp", "tvn0", Opts::default()) else {
        return;
    };
    rig.post_rx(0, 32, 2048);
    let mac = rig.mac;
    rig.send(0, plain(), &arp_request(mac, GUEST_IP, HOST_IP));
    let (_, reply) = rig
        .recv_any(|f| is_arp_reply(f, mac))
        .expect("no ARP reply");
    assert_eq!(reply.hdr.num_buffers, 1);
    assert_eq!((reply.hdr.flags, reply.hdr.gso_type), (0, GSO_NONE));
    assert_eq!(reply.data[6..12], HOST_MAC);
    assert_eq!(reply.data[28..32], HOST_IP);

    ping(&mut rig, 0, 1, 56);
    let (_, reply) = rig
        .recv_any(|f| is_echo_reply(f, 1))
        .expect("no echo reply");
    let ip = &reply.data[14..];
    assert_eq!(checksum(&ip[..20]), 0);
    assert_eq!(checksum(&ip[20..usize::from(be16(ip, 2))]), 0);
    assert_eq!(ip[16..20], GUEST_IP);

    // The TX chains came back (length 0), and the counters saw it all.
    assert!(wait_for(|| rig.queues[1].used_idx() == 2));
    let c = rig.counters();
    let (rx, tx) = (c.pairs[0].rx, c.pairs[0].tx);
    assert_eq!(tx.frames, 2);
    assert_eq!(tx.bytes, 42 + 98);
    assert!(rx.frames >= 2, "{rx:?}");
    assert_eq!(tx.drops.total() + rx.drops.total(), 0);
    assert!(tx.kicks >= 2 && rx.kicks >= 1);
    assert!(rx.interrupts >= 1 && tx.interrupts >= 1);
    assert_eq!(
        tx.copied_bytes,
        2 * HDR_LEN as u64,
        "only headers are copied"
    );
    // The device's map line and the named list.
    let d = rig.net.describe();
    assert!(d.contains("tap=tvn0") && d.contains("link=up"), "{d}");
    assert!(rig
        .net
        .counters()
        .list()
        .contains(&("tx0.frames".to_string(), 2)));
}

#[test]
fn mrg_rxbuf_spreads_frames_over_chains() {
    let Some(mut rig) = Rig::tap("net-mrg", "tvn1", Opts::default()) else {
        return;
    };
    // 512-byte buffers: a 1442-byte echo reply (+12) takes three.
    rig.post_rx(0, 32, 512);
    ping(&mut rig, 0, 7, 1400);
    let (_, reply) = rig
        .recv_any(|f| is_echo_reply(f, 7))
        .expect("no echo reply");
    assert_eq!(reply.hdr.num_buffers, 3);
    assert_eq!(reply.chains, 3);
    assert_eq!(reply.data.len(), 14 + 20 + 8 + 1400);
    assert_eq!(
        &reply.data[42..],
        &(0..1400).map(|i| i as u8).collect::<Vec<_>>()[..]
    );
    assert!(rig.wait_counters(|c| c.pairs[0].rx.merged >= 1));
}

#[test]
fn without_mrg_rxbuf_small_chains_go_back_empty() {
    let opts = Opts {
        features: base_features() | event_idx(),
        ..Opts::default()
    };
    let Some(mut rig) = Rig::tap("net-nomrg", "tvn2", opts) else {
        return;
    };
    // Chains below 1526 bytes cannot take a frame without MRG_RXBUF: returned with length 0.
    rig.post_rx(0, 4, 1000);
    assert!(rig.wait_counters(|c| c.pairs[0].rx.drops.small_buffer == 4));
    let used = rig.queues[0].take_used();
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), [0; 4]);
    rig.post_rx(0, 8, 1526);
    ping(&mut rig, 0, 3, 1400);
    let (_, reply) = rig
        .recv_any(|f| is_echo_reply(f, 3))
        .expect("no echo reply");
    assert_eq!((reply.hdr.num_buffers, reply.chains), (1, 1));
}

/// A TAP in a bridge with hairpin on: every frame the guest sends with its own MAC as the
/// destination comes straight back, TSO frames included.
fn reflector(tag: &str, name: &str, opts: Opts) -> Option<Rig> {
    let ns = netns(tag)?;
    let mut cfg = trapvisor::net::NetConfig::new(name);
    cfg.offload = opts.offload;
    let net = ns
        .exec(|| trapvisor::net::Net::new(&cfg))
        .expect("open the TAP");
    ns.ip(&["link", "add", "tvbr0", "type", "bridge"]).unwrap();
    ns.ip(&["link", "set", name, "master", "tvbr0"]).unwrap();
    ns.ip(&[
        "link",
        "set",
        "dev",
        name,
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])
    .unwrap();
    ns.ip(&["link", "set", "tvbr0", "up"]).unwrap();
    ns.ip(&["link", "set", name, "up"]).unwrap();
    Some(Rig::start(net, Some(ns), opts))
}

#[test]
fn tso_frames_go_out_and_come_back_whole() {
    let opts = Opts {
        features: base_features() | event_idx() | f(VIRTIO_NET_F_MRG_RXBUF) | offload_features(),
        ..Opts::default()
    };
    let Some(mut rig) = reflector("net-tso", "tvn3", opts) else {
        return;
    };
    rig.post_rx(0, 128, 1536);
    let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let (a, b) = ([10, 0, 9, 1], [10, 0, 9, 2]);
    let frame = tcp_tso(rig.mac, rig.mac, a, b, &data);
    let hdr = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    rig.send(0, hdr, &frame);
    let (_, back) = rig
        .recv_any(|f| f.data.len() > 1000 && be16(&f.data, 12) == ETH_IPV4 && f.data[23] == 6)
        .expect("the TSO frame did not come back");
    // One 60 054-byte frame, still GSO, spread over 40 chains of 1536 bytes.
    assert_eq!(back.data.len(), frame.len());
    assert_eq!(back.hdr.gso_type, GSO_TCPV4);
    assert_eq!(back.hdr.gso_size, 1448);
    assert_eq!(back.hdr.flags & F_NEEDS_CSUM, F_NEEDS_CSUM);
    assert_eq!((back.hdr.csum_start, back.hdr.csum_offset), (34, 16));
    assert_eq!(
        usize::from(back.hdr.num_buffers),
        (frame.len() + HDR_LEN).div_ceil(1536)
    );
    assert_eq!(&back.data[54..], &data[..]);
    let c = rig.counters();
    assert_eq!(c.pairs[0].tx.bytes, frame.len() as u64);
    assert!(c.pairs[0].rx.merged >= 1);

    // With the guest's TSO turned off (GUEST_OFFLOADS_SET: checksum only), the kernel
    // segments what it hands over: MSS-sized frames, no GSO.
    let only_csum = 1u64 << VIRTIO_NET_F_GUEST_CSUM;
    let ack = ctrl(
        &mut rig,
        VIRTIO_NET_CTRL_GUEST_OFFLOADS,
        VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
        &only_csum.to_le_bytes(),
    );
    assert_eq!(ack, VIRTIO_NET_OK as u8);
    let small = &data[..10_000];
    rig.send(0, hdr, &tcp_tso(rig.mac, rig.mac, a, b, small));
    let mut got = 0;
    let mut segments = 0;
    while got < small.len() {
        let tcp = |f: &Frame| be16(&f.data, 12) == ETH_IPV4 && f.data[23] == 6;
        let Some((_, seg)) = rig.recv_any(tcp) else {
            panic!("segments missing after {got} bytes: {:?}", rig.counters());
        };
        assert_eq!(seg.hdr.gso_type, GSO_NONE);
        assert!(seg.data.len() <= 1514);
        got += seg.data.len() - 54;
        segments += 1;
    }
    assert_eq!(segments, small.len().div_ceil(1448));
    // Offloads the driver did not negotiate are refused.
    let tso6 = 1u64 << VIRTIO_NET_F_GUEST_ECN;
    let ack = ctrl(
        &mut rig,
        VIRTIO_NET_CTRL_GUEST_OFFLOADS,
        VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
        &tso6.to_le_bytes(),
    );
    assert_eq!(ack, VIRTIO_NET_ERR as u8);
}

#[test]
fn checksum_offload_both_ways() {
    let opts = Opts {
        features: base_features() | event_idx() | f(VIRTIO_NET_F_MRG_RXBUF) | offload_features(),
        ..Opts::default()
    };
    let Some(mut rig) = Rig::tap("net-csum", "tvn4", opts) else {
        return;
    };
    // With guest TSO a frame may be 64 KiB: the device waits for that much buffer space.
    rig.post_rx(0, 40, 2048);
    let ns = rig.ns.as_ref().unwrap();
    // Host → guest: the kernel leaves the UDP checksum to the guest and says where.
    ns.exec(|| {
        let s = std::net::UdpSocket::bind("10.0.2.1:0").unwrap();
        s.send_to(b"partial checksum", "10.0.2.15:9").unwrap();
    });
    let (_, fr) = rig
        .recv_any(|f| be16(&f.data, 12) == ETH_IPV4 && f.data[23] == 17)
        .expect("no UDP frame");
    assert_eq!(fr.hdr.flags & F_NEEDS_CSUM, F_NEEDS_CSUM);
    assert_eq!((fr.hdr.csum_start, fr.hdr.csum_offset), (34, 6));

    // Guest → host: a partial checksum the kernel completes (the socket gets the data).
    let ns = rig.ns.as_ref().unwrap();
    let sock = ns.exec(|| std::net::UdpSocket::bind("10.0.2.1:7777").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = udp(
        HOST_MAC,
        rig.mac,
        GUEST_IP,
        HOST_IP,
        5555,
        7777,
        b"from the guest",
        true,
    );
    let hdr = VnetHeader {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHeader::default()
    };
    rig.send(0, hdr, &frame);
    let mut buf = [0u8; 64];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("the datagram did not arrive");
    assert_eq!(&buf[..n], b"from the guest");
    assert_eq!(from.port(), 5555);
}

#[test]
fn offload_off_withdraws_the_offloads() {
    let opts = Opts {
        features: !0,
        offload: false,
        ..Opts::default()
    };
    let Some(mut rig) = Rig::tap("net-nooff", "tvn5", opts) else {
        return;
    };
    let offered = rig.net.features();
    assert_eq!(offered & offload_features(), 0);
    assert_ne!(offered & f(VIRTIO_NET_F_MRG_RXBUF), 0);
    rig.post_rx(0, 32, 2048);
    // A partial checksum was not negotiated: dropped, counted.
    let frame = udp(HOST_MAC, rig.mac, GUEST_IP, HOST_IP, 1, 2, b"x", true);
    let hdr = VnetHeader {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHeader::default()
    };
    rig.send(0, hdr, &frame);
    assert!(rig.wait_counters(|c| c.pairs[0].tx.drops.bad_header == 1));
    // The kernel completes checksums for a guest without GUEST_CSUM.
    rig.ns.as_ref().unwrap().exec(|| {
        let s = std::net::UdpSocket::bind("10.0.2.1:0").unwrap();
        s.send_to(b"complete", "10.0.2.15:9").unwrap();
    });
    let (_, fr) = rig
        .recv_any(|f| be16(&f.data, 12) == ETH_IPV4 && f.data[23] == 17)
        .expect("no UDP frame");
    assert_eq!(fr.hdr.flags, 0);
}

#[test]
fn event_idx_suppresses_interrupts_and_kicks() {
    let Some(mut rig) = Rig::tap("net-evidx", "tvn6", Opts::default()) else {
        return;
    };
    // The driver wants a TX interrupt only after the used index passes 100.
    rig.queues[1].set_used_event(100);
    for seq in 0..10 {
        ping(&mut rig, 0, seq, 16);
    }
    assert!(wait_for(|| rig.queues[1].used_idx() == 10));
    let tx = rig.counters().pairs[0].tx;
    assert_eq!(tx.interrupts, 0);
    assert!(tx.interrupts_suppressed >= 1);
    assert_eq!(rig.irqs.queue(1), 0);
    // The device asks for a kick for the next chain only (avail_event = its next index).
    assert_eq!(rig.queues[1].avail_event(), 10);
    // Now after entry 10: the next completion interrupts.
    rig.queues[1].set_used_event(10);
    ping(&mut rig, 0, 10, 16);
    assert!(wait_for(|| rig.irqs.queue(1) == 1));
    assert_eq!(rig.counters().pairs[0].tx.interrupts, 1);
}

#[test]
fn without_event_idx_the_no_interrupt_flag_is_obeyed() {
    let opts = Opts {
        features: base_features() | f(VIRTIO_NET_F_MRG_RXBUF),
        ..Opts::default()
    };
    let Some(mut rig) = Rig::tap("net-noint", "tvn7", opts) else {
        return;
    };
    rig.queues[1].set_avail_flags(1); // VRING_AVAIL_F_NO_INTERRUPT
    for seq in 0..5 {
        ping(&mut rig, 0, seq, 16);
    }
    assert!(wait_for(|| rig.queues[1].used_idx() == 5));
    assert_eq!(rig.irqs.queue(1), 0);
    assert!(rig.counters().pairs[0].tx.interrupts_suppressed >= 1);
    rig.queues[1].set_avail_flags(0);
    ping(&mut rig, 0, 5, 16);
    assert!(wait_for(|| rig.irqs.queue(1) >= 1));
}

#[test]
fn two_queue_pairs_carry_traffic_at_once() {
    let opts = Opts {
        queues: 2,
        features: Opts::default().features | f(VIRTIO_NET_F_MQ),
        ..Opts::default()
    };
    let Some(mut rig) = Rig::tap("net-mq", "tvn8", opts) else {
        return;
    };
    assert_eq!(rig.net.queue_max_sizes().len(), 5);
    // Only pair 0 until the driver says otherwise; 0 and 3 pairs are refused.
    for bad in [0u16, 3] {
        let ack = ctrl(
            &mut rig,
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &bad.to_le_bytes(),
        );
        assert_eq!(ack, VIRTIO_NET_ERR as u8);
    }
    let ack = ctrl(
        &mut rig,
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        &2u16.to_le_bytes(),
    );
    assert_eq!(ack, VIRTIO_NET_OK as u8);
    // Unknown commands: ERR.
    assert_eq!(ctrl(&mut rig, 0, 0, &[1]), VIRTIO_NET_ERR as u8);
    let c = rig.counters().ctrl;
    assert_eq!((c.ok, c.err), (1, 3));

    rig.post_rx(0, 128, 2048);
    rig.post_rx(1, 128, 2048);
    const N: u16 = 50;
    for seq in 0..N {
        ping(&mut rig, 0, seq, 32);
        ping(&mut rig, 1, 1000 + seq, 32);
    }
    let mut seen = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + WAIT;
    while seen.len() < 2 * usize::from(N) && std::time::Instant::now() < deadline {
        for p in 0..2 {
            for fr in rig.received(p) {
                if fr.data.len() >= 42 && be16(&fr.data, 12) == ETH_IPV4 && fr.data[34] == 0 {
                    seen.insert(be16(&fr.data, 40));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen.len(), 2 * usize::from(N), "replies missing");
    let c = rig.counters();
    assert_eq!(
        (c.pairs[0].tx.frames, c.pairs[1].tx.frames),
        (u64::from(N), u64::from(N))
    );
    assert!(c.pairs[0].rx.frames + c.pairs[1].rx.frames >= 2 * u64::from(N));
    assert_eq!(rig.handle.workers(), 2);
}

#[test]
fn notify_exit_runs_the_queue_on_the_calling_thread() {
    let opts = Opts {
        ioeventfd: false,
        ..Opts::default()
    };
    let Some(mut rig) = Rig::tap("net-exit", "tvn9", opts) else {
        return;
    };
    rig.post_rx(0, 16, 2048);
    ping(&mut rig, 0, 1, 56);
    // process_queue returned: the frame is already on the TAP and its chain back.
    assert_eq!(rig.queues[1].used_idx(), 1);
    assert_eq!(rig.counters().pairs[0].tx.frames, 1);
    // The worker still reads the TAP.
    rig.recv_any(|f| is_echo_reply(f, 1))
        .expect("no echo reply");
}

#[test]
fn reset_quiesces_and_stop_joins() {
    let Some(mut rig) = Rig::tap("net-reset", "tvn10", Opts::default()) else {
        return;
    };
    rig.post_rx(0, 16, 2048);
    ping(&mut rig, 0, 1, 56);
    rig.recv_any(|f| is_echo_reply(f, 1))
        .expect("no echo reply");
    rig.net.reset();
    // Kicks after the reset touch nothing.
    ping(&mut rig, 0, 2, 56);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.queues[1].used_idx(), 1);
    assert!(rig.net.process_queue(1).is_err());
    assert_eq!(
        rig.handle.workers(),
        1,
        "the worker waits for the next activation"
    );
    // The VM stops: the workers end; stop() joins them.
    rig.stop.write(1).unwrap();
    rig.handle.stop();
    assert_eq!(rig.handle.workers(), 0);
}

#[test]
fn the_vmm_puts_the_device_on_the_guests_pci_bus() {
    let Some(ns) = netns("net-vmm") else {
        return;
    };
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_trapvisor")])
        .args(["run", "--net", "tap=tv0", "--cmdline", "pci"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // 1af4:1041 is virtio-net (0x1040 + 1), class 02 (network).
    assert!(stdout.contains("1af4:1041"), "{stdout}");
    assert!(stdout.contains("class 020000"), "{stdout}");
}

#[test]
fn bad_net_options_exit_2_with_one_line() {
    for (arg, needle) in [
        ("tap=tv0123456789abcd", "IFNAMSIZ"),
        ("tap=tv0,queues=0", "queue pairs"),
        ("tap=tv0,mac=01:00:00:00:00:01", "multicast"),
        ("tap=tv0,offload=fast", "on or off"),
        ("mac=52:54:00:00:00:01", "tap=NAME"),
    ] {
        let out = common::run(&["run", "--net", arg, "--cmdline", "exit=0"]);
        common::assert_usage_error(&out, needle);
    }
}
