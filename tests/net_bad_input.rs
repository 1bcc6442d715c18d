//! virtio-net against a hostile driver and a TAP that misbehaves: every malformed chain or
//! header is dropped, counted and returned with length 0 (or skipped, for a head that cannot be
//! returned) and the queue keeps working; a full TAP (EAGAIN) and a driver out of receive
//! buffers pause the queue without spinning and lose nothing; a TAP taken down or deleted is
//! counted and the device lives on; bad or forbidden TAP names fail at start in one line.
//!
//! Real TAPs live in a namespace per test ("skipped: ..." without root); EAGAIN and the
//! receive stall use a socket pair standing in for the TAP, so the test decides when there is
//! room and what arrives.
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
use trapvisor::net::header::{VnetHeader, F_NEEDS_CSUM, GSO_TCPV4, HDR_LEN};
use trapvisor::net::{Net, NetConfig};
use trapvisor::virtio::VirtioDevice;
use virtio_bindings::virtio_net::*;
use virtio_queue::desc::split::Descriptor;
use virtq::{Buf, NEXT, WRITE};
use vm_memory::{Bytes, GuestAddress};

const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

fn is_echo_reply(fr: &Frame, seq: u16) -> bool {
    let e = &fr.data;
    e.len() >= 42 && be16(e, 12) == ETH_IPV4 && e[23] == 1 && e[34] == 0 && be16(e, 40) == seq
}

fn ping_ok(rig: &mut Rig, seq: u16) {
    let frame = icmp_echo(HOST_MAC, rig.mac, GUEST_IP, HOST_IP, 1, seq, &[7; 32]);
    rig.send(0, plain(), &frame);
    rig.recv_any(|f| is_echo_reply(f, seq))
        .unwrap_or_else(|| panic!("the queue stopped working: {:?}", rig.counters()));
}

/// Puts raw descriptors on TX queue 0 (each `(index offset, descriptor)` among `n` reserved),
/// with the first as head, and kicks.
fn raw_tx(rig: &mut Rig, descs: &[Descriptor]) -> u16 {
    let q = &mut rig.queues[1];
    let idx = q.reserve(descs.len());
    for (i, d) in descs.iter().enumerate() {
        // `next` fields name positions in `descs`; map them to the reserved indexes.
        let next = idx.get(usize::from(d.next())).copied().unwrap_or(d.next());
        q.store_desc(
            idx[i],
            Descriptor::new(d.addr().0, d.len(), d.flags(), next),
        );
    }
    q.push_head(idx[0], idx.clone(), Vec::new());
    q.publish();
    rig.kick(1);
    idx[0]
}

fn used_lens(rig: &mut Rig, q: usize, n: usize) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    assert!(
        wait_for(|| {
            out.extend(rig.queues[q].take_used().into_iter().map(|u| (u.0, u.1)));
            out.len() >= n
        }),
        "only {} of {n} chains came back",
        out.len()
    );
    out
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_queue_goes_on() {
    let Some(mut rig) = Rig::tap("bad-txchain", "tvb0", Opts::default()) else {
        return;
    };
    rig.post_rx(0, 64, 2048);
    let frame = rig.arena.alloc(2048);
    let ram = RAM;
    // An indirect table of 300 descriptors: longer than the 256-entry queue.
    let long = rig.arena.alloc(300 * 16);
    for i in 0..300u16 {
        let flags = if i < 299 { NEXT } else { 0 };
        rig.mem
            .write_obj(
                Descriptor::new(frame, 64, flags, i + 1),
                GuestAddress(long + 16 * u64::from(i)),
            )
            .unwrap();
    }
    // An indirect table holding another indirect descriptor.
    let nested = rig.arena.alloc(32);
    rig.mem
        .write_obj(Descriptor::new(long, 32, INDIRECT, 0), GuestAddress(nested))
        .unwrap();
    let cases: Vec<(&str, Vec<Descriptor>)> = vec![
        (
            "loop",
            vec![
                Descriptor::new(frame, 64, NEXT, 1),
                Descriptor::new(frame, 64, NEXT, 0),
            ],
        ),
        (
            "next out of range",
            vec![Descriptor::new(frame, 64, NEXT, 999)],
        ),
        ("outside RAM", vec![Descriptor::new(ram + 0x1000, 64, 0, 0)]),
        (
            "straddles the end of RAM",
            vec![Descriptor::new(ram - 32, 64, 0, 0)],
        ),
        (
            "overflows the address space",
            vec![Descriptor::new(u64::MAX - 8, 64, 0, 0)],
        ),
        (
            "write-only",
            vec![
                Descriptor::new(frame, 12, NEXT, 1),
                Descriptor::new(frame, 64, WRITE, 0),
            ],
        ),
        (
            "indirect table outside RAM",
            vec![Descriptor::new(ram + 0x10_0000, 32, INDIRECT, 0)],
        ),
        (
            "indirect table overflows",
            vec![Descriptor::new(u64::MAX - 15, 32, INDIRECT, 0)],
        ),
        (
            "indirect table misaligned",
            vec![Descriptor::new(long, 24, INDIRECT, 0)],
        ),
        (
            "longer than the queue",
            vec![Descriptor::new(long, 300 * 16, INDIRECT, 0)],
        ),
        (
            "nested indirect",
            vec![Descriptor::new(nested, 16, INDIRECT, 0)],
        ),
    ];
    let n = cases.len();
    let mut heads = Vec::new();
    for (_, descs) in &cases {
        heads.push(raw_tx(&mut rig, descs));
    }
    // A head past the queue: it cannot be returned, only skipped.
    rig.queues[1].push_head(999, Vec::new(), Vec::new());
    rig.queues[1].publish();
    rig.kick(1);
    let used = used_lens(&mut rig, 1, n);
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
    assert!(used.iter().all(|u| u.1 == 0));
    assert!(rig.wait_counters(|c| c.pairs[0].tx.drops.bad_head == 1));
    let d = rig.counters().pairs[0].tx.drops;
    assert_eq!(d.bad_chain, n as u64, "{d:?}");
    assert_eq!(rig.counters().pairs[0].tx.frames, 0);
    ping_ok(&mut rig, 1);
}

#[test]
fn bad_headers_and_sizes_are_dropped() {
    let opts = Opts {
        features: Opts::default().features | offload_features(),
        ..Opts::default()
    };
    let Some(mut rig) = Rig::tap("bad-hdr", "tvb1", opts) else {
        return;
    };
    rig.post_rx(0, 64, 2048);
    let frame = tcp_tso(HOST_MAC, rig.mac, GUEST_IP, HOST_IP, &[0; 3000]);
    let tso = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    for hdr in [
        VnetHeader { gso_type: 5, ..tso }, // UDP_L4: HOST_USO not offered
        VnetHeader {
            gso_type: 0x42,
            ..tso
        }, // unknown
        VnetHeader { gso_size: 0, ..tso }, // GSO without a segment size
        VnetHeader {
            csum_start: 3040,
            ..tso
        }, // checksum past the frame
        VnetHeader {
            csum_offset: 9000,
            ..tso
        }, // likewise
        VnetHeader {
            hdr_len: 4000,
            ..tso
        }, // header past the frame
        VnetHeader { flags: 0x80, ..tso }, // unknown flag
    ] {
        rig.send(0, hdr, &frame);
    }
    // Above 65 535 bytes of IP (plus Ethernet and VLAN headers), and below an Ethernet header.
    let big = rig.arena.alloc(70_000);
    rig.send_chain(0, &[Buf::read(big, (HDR_LEN + 65_535 + 18 + 1) as u32)]);
    let runt = rig.arena.alloc(64);
    rig.send_chain(0, &[Buf::read(runt, (HDR_LEN + 13) as u32)]);
    let used = used_lens(&mut rig, 1, 9);
    assert!(used.iter().all(|u| u.1 == 0));
    let d = rig.counters().pairs[0].tx.drops;
    assert_eq!((d.bad_header, d.oversize, d.runt), (7, 1, 1), "{d:?}");
    // The same TSO frame with a good header goes through.
    rig.send(0, tso, &frame);
    assert!(rig.wait_counters(|c| c.pairs[0].tx.frames == 1));
    ping_ok(&mut rig, 2);
}

#[test]
fn malformed_rx_chains_go_back_empty() {
    let Some(mut rig) = Rig::tap("bad-rxchain", "tvb2", Opts::default()) else {
        return;
    };
    let buf = rig.arena.alloc(4096);
    let q = &mut rig.queues[0];
    q.add(&[Buf::read(buf, 2048)]); // device-readable in a receive queue
    q.add(&[Buf::write(buf, 1024), Buf::read(buf + 2048, 1024)]);
    q.add(&[Buf::write(RAM + 0x1000, 2048)]); // outside RAM
    q.add(&[Buf::write(u64::MAX - 100, 2048)]); // overflowing
    q.publish();
    rig.kick(0);
    let used = used_lens(&mut rig, 0, 4);
    assert!(used.iter().all(|u| u.1 == 0));
    assert_eq!(rig.counters().pairs[0].rx.drops.bad_chain, 4);
    rig.post_rx(0, 64, 2048);
    ping_ok(&mut rig, 3);
}

#[test]
fn a_full_tap_pauses_transmit_without_spinning() {
    let (mut rig, peers) = Rig::sockets(Opts::default());
    const N: usize = 100;
    // The peer reads nothing yet: its queue fills and the device's writes say EAGAIN.
    for i in 0..N {
        let frame = ethernet(HOST_MAC, rig.mac, ETH_EXPERIMENTAL, &[i as u8; 1000]);
        let hdr = plain();
        let a = rig.arena.alloc((HDR_LEN + frame.len()) as u64);
        rig.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(a))
            .unwrap();
        rig.mem
            .write_slice(&frame, GuestAddress(a + HDR_LEN as u64))
            .unwrap();
        rig.queues[1].add(&[Buf::read(a, (HDR_LEN + frame.len()) as u32)]);
    }
    rig.queues[1].publish();
    rig.kick(1);
    assert!(rig.wait_counters(|c| c.pairs[0].tx.tap_eagain >= 1));
    let before = rig.counters().pairs[0].tx;
    std::thread::sleep(Duration::from_millis(100));
    let after = rig.counters().pairs[0].tx;
    assert_eq!(
        before, after,
        "the device kept trying while the TAP was full"
    );
    assert_eq!(after.tap_eagain, 1);
    assert!((after.frames as usize) < N);
    assert_eq!(usize::from(rig.queues[1].used_idx()), after.frames as usize);
    // Kicks stay off meanwhile: avail_event was not moved past the chain that waits.
    assert!(rig.queues[1].avail_event() <= after.frames as u16);
    // Room again: everything arrives, in order, whole.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    assert!(wait_for(|| {
        while let Ok(n) = peers[0].recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got.len() == N
    }));
    for (i, fr) in got.iter().enumerate() {
        assert_eq!(fr.len(), HDR_LEN + 14 + 1000);
        assert_eq!(fr[HDR_LEN + 14], i as u8, "frame {i} out of order");
    }
    assert!(wait_for(|| usize::from(rig.queues[1].used_idx()) == N));
    assert_eq!(rig.counters().pairs[0].tx.frames as usize, N);
}

#[test]
fn out_of_receive_buffers_the_device_waits_and_loses_nothing() {
    let (mut rig, peers) = Rig::sockets(Opts::default());
    const N: usize = 5;
    for i in 0..N {
        let mut f = VnetHeader::default().to_bytes().to_vec();
        f.extend(ethernet(
            rig.mac,
            HOST_MAC,
            ETH_EXPERIMENTAL,
            &[i as u8; 100],
        ));
        peers[0].send(&f).unwrap();
    }
    // No buffers: the device stops polling the TAP, once.
    assert!(rig.wait_counters(|c| c.pairs[0].rx.no_buffers == 1));
    let before = rig.counters().pairs[0].rx;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        rig.counters().pairs[0].rx,
        before,
        "the device spun without buffers"
    );
    // It asked for a kick at the next buffer (EVENT_IDX avail_event).
    assert_eq!(rig.queues[0].avail_event(), 0);
    rig.post_rx(0, 2, 2048);
    // Two buffers: two frames now; the rest waits again.
    let mut frames = Vec::new();
    assert!(wait_for(|| {
        frames.extend(rig.received(0));
        frames.len() == 2
    }));
    rig.post_rx(0, 8, 2048);
    assert!(wait_for(|| {
        frames.extend(rig.received(0));
        frames.len() == N
    }));
    for (i, fr) in frames.iter().enumerate() {
        assert_eq!(fr.data[14], i as u8, "frame {i}");
        assert_eq!(fr.hdr.num_buffers, 1);
    }
    let rx = rig.counters().pairs[0].rx;
    assert_eq!(rx.drops.total(), 0);
    assert!(rx.no_buffers >= 2);
}

#[test]
fn a_broken_available_index_is_counted_without_spinning() {
    let (mut rig, peers) = Rig::sockets(Opts::default());
    let mut f = VnetHeader::default().to_bytes().to_vec();
    f.extend(ethernet(rig.mac, HOST_MAC, ETH_EXPERIMENTAL, &[1; 100]));
    peers[0].send(&f).unwrap();
    // More chains "available" than the queue has entries.
    rig.queues[0].set_avail_idx(1000);
    rig.kick(0);
    rig.queues[1].set_avail_idx(1000);
    rig.kick(1);
    assert!(rig.wait_counters(|c| c.pairs[0].queue_errors >= 2));
    let before = rig.counters();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.counters(), before, "the device spun on a broken ring");
    // The device lives on: a reset and a fresh activation work.
    rig.net.reset();
    assert!(rig.net.process_queue(0).is_err());
}

#[test]
fn frames_longer_than_the_buffers_are_counted_truncated() {
    // No guest TSO: 1526-byte buffers must do; a 3000-byte frame does not fit.
    let (mut rig, peers) = Rig::sockets(Opts::default());
    let mut big = VnetHeader::default().to_bytes().to_vec();
    big.extend(ethernet(rig.mac, HOST_MAC, ETH_EXPERIMENTAL, &[1; 3000]));
    peers[0].send(&big).unwrap();
    let mut ok = VnetHeader::default().to_bytes().to_vec();
    ok.extend(ethernet(rig.mac, HOST_MAC, ETH_EXPERIMENTAL, &[2; 100]));
    peers[0].send(&ok).unwrap();
    rig.post_rx(0, 1, 2048);
    let (_, fr) = rig
        .recv_any(|_| true)
        .expect("the second frame did not arrive");
    assert_eq!(fr.data[14], 2);
    assert_eq!(rig.counters().pairs[0].rx.drops.truncated, 1);
}

#[test]
fn tap_down_and_deleted_while_running() {
    let Some(mut rig) = Rig::tap("bad-tapgone", "tvb3", Opts::default()) else {
        return;
    };
    rig.post_rx(0, 64, 2048);
    ping_ok(&mut rig, 1);
    let ns = rig.ns.take().unwrap();
    // Down: transmits fail (EIO), counted, chains returned.
    ns.ip(&["link", "set", "tvb3", "down"]).unwrap();
    let frame = icmp_echo(HOST_MAC, rig.mac, GUEST_IP, HOST_IP, 1, 2, &[0; 8]);
    rig.send(0, plain(), &frame);
    assert!(rig.wait_counters(|c| c.pairs[0].tx.drops.tap_down == 1));
    ns.ip(&["link", "set", "tvb3", "up"]).unwrap();
    // Going down flushed the neighbour entry for the guest.
    let gm = mac_text(&rig.mac);
    ns.ip(&[
        "neigh",
        "replace",
        "10.0.2.15",
        "lladdr",
        &gm,
        "dev",
        "tvb3",
        "nud",
        "permanent",
    ])
    .unwrap();
    rig.ns = Some(ns);
    ping_ok(&mut rig, 3);
    // Deleted: the device notices, tells the driver the link is down, and drops what follows.
    rig.ns
        .as_ref()
        .unwrap()
        .ip(&["link", "del", "tvb3"])
        .unwrap();
    assert!(rig.wait_counters(|c| c.tap_gone == 1));
    assert!(wait_for(|| rig
        .irqs
        .config
        .load(std::sync::atomic::Ordering::SeqCst)
        == 1));
    let mut status = [0u8; 2];
    rig.net.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status) & VIRTIO_NET_S_LINK_UP as u16, 0);
    rig.send(0, plain(), &frame);
    assert!(rig.wait_counters(|c| c.pairs[0].tx.drops.tap_gone == 1));
    assert!(rig.net.process_queue(1).is_ok());
    assert!(rig.net.describe().contains("link=down"));
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set.
fn drop_net_admin() {
    #[repr(C)]
    struct Hdr(u32, i32);
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data(u32, u32, u32);
    let mut hdr = Hdr(0x2008_0522, 0);
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes one header and two data words, which `hdr` and `data` are.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) },
        0
    );
    data[0].0 &= !(1 << 12);
    // SAFETY: capset reads the same.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) },
        0
    );
}

#[test]
fn bad_tap_names_and_no_permission_fail_in_one_line() {
    let Some(ns) = netns("bad-name") else {
        return;
    };
    let err = ns
        .exec(|| Net::new(&NetConfig::new("tv0123456789abcdef")))
        .err()
        .unwrap();
    assert!(err.to_string().contains("IFNAMSIZ"), "{err}");
    let err = ns
        .exec(|| {
            drop_net_admin();
            Net::new(&NetConfig::new("tvnocap0"))
        })
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("need CAP_NET_ADMIN") && !text.contains('\n'),
        "{text}"
    );
    // Through the binary: not a TAP, and no permission. Exit 2, one line on stderr.
    for (pre, net, needle) in [
        (&[][..], "tap=lo", "not a TAP"),
        (
            &[
                "setpriv",
                "--inh-caps=-net_admin",
                "--bounding-set=-net_admin",
                "--",
            ][..],
            "tap=tvnp0",
            "CAP_NET_ADMIN",
        ),
    ] {
        if pre.first() == Some(&"setpriv")
            && std::process::Command::new("setpriv")
                .arg("--help")
                .output()
                .is_err()
        {
            eprintln!("skipped: no setpriv");
            continue;
        }
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(pre)
            .args([
                env!("CARGO_BIN_EXE_trapvisor"),
                "run",
                "--net",
                net,
                "--cmdline",
                "exit=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{net}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}
