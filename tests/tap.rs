//! The TAP backend against real TAP devices, each test in a network namespace of its own: the
//! kernel answers ARP and ping through the TAP's fd, offloads and multiqueue are accepted, and
//! bad names, non-TAP devices and missing privileges give the right errors.
//!
//! Frames go only to addresses inside the test's namespace. Without root (no namespace) or
//! without /dev/net/tun, each test prints "skipped: ..." and passes.
#[path = "common/netns.rs"]
mod netns;

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netns::NetNs;
use trapvisor::net::tap::{mac_from_name, offload_from_features, Tap, TapError, VNET_HDR_LEN};

const HOST_IP: [u8; 4] = [10, 0, 2, 1];
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
/// virtio_net_hdr flags / gso_type values.
const HDR_F_NEEDS_CSUM: u8 = 1;
const HDR_GSO_NONE: u8 = 0;
/// How long to wait for the kernel's answer.
const REPLY_WAIT: Duration = Duration::from_secs(5);

fn setup(tag: &str) -> Option<NetNs> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: /dev/net/tun does not exist");
        return None;
    }
    NetNs::new(tag)
}

/// Brings `dev` up in `ns` with the host address and a fixed MAC, and tells the kernel the
/// guest's MAC so it need not ARP for it.
fn configure(ns: &NetNs, dev: &str) {
    let host_mac = mac_text(&HOST_MAC);
    let guest_mac = mac_text(&mac_from_name(dev));
    ns.ip(&["link", "set", "dev", dev, "address", &host_mac])
        .unwrap();
    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", dev]).unwrap();
    ns.ip(&["link", "set", "dev", dev, "up"]).unwrap();
    ns.ip(&[
        "neigh",
        "replace",
        "10.0.2.15",
        "lladdr",
        &guest_mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
    .unwrap();
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The Internet checksum of `data` (0 when `data` already holds a correct checksum).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp_request(src_mac: [u8; 6]) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&src_mac);
    arp.extend_from_slice(&GUEST_IP);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&HOST_IP);
    ethernet([0xff; 6], src_mac, ETH_ARP, &arp)
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

fn icmp_echo_request(src_mac: [u8; 6], id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ethernet(
        HOST_MAC,
        src_mac,
        ETH_IPV4,
        &ipv4(1, GUEST_IP, HOST_IP, &icmp),
    )
}

/// Reads frames (vnet header first) from any of `taps` until `want` accepts one, or
/// REPLY_WAIT passes. Other traffic (IPv6 router solicitations and the like) is skipped.
fn wait_frame(taps: &[&Tap], mut want: impl FnMut(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + REPLY_WAIT;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut fds: Vec<libc::pollfd> = taps
            .iter()
            .map(|t| libc::pollfd {
                fd: t.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live array of fds.len() pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        for tap in taps {
            while let Some(n) = tap.read(&mut buf).expect("read from the TAP") {
                if n >= VNET_HDR_LEN + 14 && want(&buf[..n]) {
                    return Some(buf[..n].to_vec());
                }
            }
        }
    }
    None
}

fn is_arp_reply_to(frame: &[u8], mac: [u8; 6]) -> bool {
    let eth = &frame[VNET_HDR_LEN..];
    eth.len() >= 42
        && eth[0..6] == mac
        && be16(eth, 12) == ETH_ARP
        && be16(eth, 20) == 2
        && eth[28..32] == HOST_IP
        && eth[32..38] == mac
        && eth[38..42] == GUEST_IP
}

/// Writes an ARP request for the host address through `tap` and waits for the reply on any
/// of `rx`.
fn arp_round_trip(tap: &Tap, rx: &[&Tap], mac: [u8; 6]) -> Vec<u8> {
    let frame = arp_request(mac);
    let hdr = [0u8; VNET_HDR_LEN];
    let n = tap
        .writev(&[IoSlice::new(&hdr), IoSlice::new(&frame)])
        .expect("write ARP request")
        .expect("TAP queue full");
    assert_eq!(n, VNET_HDR_LEN + frame.len());
    wait_frame(rx, |f| is_arp_reply_to(f, mac)).expect("no ARP reply from the kernel")
}

#[test]
fn arp_request_gets_the_kernel_reply() {
    let Some(ns) = setup("arp") else { return };
    let tap = ns.exec(|| Tap::open("tvtap0")).expect("open TAP");
    assert_eq!(tap.name(), "tvtap0");
    assert!(tap.created());
    assert!(!tap.is_multi_queue());
    assert_eq!(tap.queue_index(), 0);
    // Nothing to read yet: the non-blocking read says so.
    let mut buf = [0u8; 2048];
    assert!(matches!(tap.read(&mut buf), Ok(None)));
    // The index is the kernel's, in the namespace.
    let link = ns.ip(&["-o", "link", "show", "dev", "tvtap0"]).unwrap();
    assert!(
        link.starts_with(&format!("{}: tvtap0:", tap.if_index())),
        "index {} vs {link}",
        tap.if_index()
    );
    configure(&ns, "tvtap0");

    let mac = mac_from_name("tvtap0");
    let reply = arp_round_trip(&tap, &[&tap], mac);
    // The vnet header: no offload asked, so no partial checksum and no GSO.
    assert_eq!(reply[0] & HDR_F_NEEDS_CSUM, 0);
    assert_eq!(reply[1], HDR_GSO_NONE);
    let eth = &reply[VNET_HDR_LEN..];
    assert_eq!(eth[6..12], HOST_MAC, "reply from the TAP's MAC");
    assert_eq!(eth[22..28], HOST_MAC, "sender hardware address");

    // readv scatters the header and the frame into separate buffers.
    tap.write(&[&[0u8; VNET_HDR_LEN][..], &arp_request(mac)].concat())
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let mut hdr = [0xaau8; VNET_HDR_LEN];
        let mut frame = [0u8; 1514];
        let got = tap
            .readv(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(&mut frame)])
            .unwrap();
        match got {
            Some(n) if is_arp_reply_to(&[&hdr[..], &frame[..n - VNET_HDR_LEN]].concat(), mac) => {
                assert_eq!(hdr[..2], [0, HDR_GSO_NONE]);
                break;
            }
            _ => {
                assert!(Instant::now() < deadline, "no ARP reply through readv");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn ping_gets_an_echo_reply() {
    let Some(ns) = setup("ping") else { return };
    let tap = ns.exec(|| Tap::open("tvping0")).expect("open TAP");
    configure(&ns, "tvping0");
    let mac = mac_from_name("tvping0");
    let data: Vec<u8> = (0..56).collect();
    let frame = icmp_echo_request(mac, 0x7476, 1, &data);
    tap.write(&[&[0u8; VNET_HDR_LEN][..], &frame].concat())
        .unwrap()
        .expect("TAP queue full");

    let reply = wait_frame(&[&tap], |f| {
        let eth = &f[VNET_HDR_LEN..];
        eth.len() >= 42 && be16(eth, 12) == ETH_IPV4 && eth[23] == 1 && eth[34] == 0
    })
    .expect("no ICMP echo reply from the kernel");
    assert_eq!(reply[0] & HDR_F_NEEDS_CSUM, 0);
    assert_eq!(reply[1], HDR_GSO_NONE);
    let eth = &reply[VNET_HDR_LEN..];
    assert_eq!(eth[0..6], mac);
    assert_eq!(eth[6..12], HOST_MAC);
    let ip = &eth[14..];
    assert_eq!(ip[12..16], HOST_IP);
    assert_eq!(ip[16..20], GUEST_IP);
    assert_eq!(checksum(&ip[..20]), 0, "IP header checksum");
    let total = usize::from(be16(ip, 2));
    let icmp = &ip[20..total];
    assert_eq!(checksum(icmp), 0, "ICMP checksum");
    assert_eq!(be16(icmp, 4), 0x7476, "id");
    assert_eq!(be16(icmp, 6), 1, "seq");
    assert_eq!(&icmp[8..], &data[..]);
}

#[test]
fn multiqueue_opens_one_fd_per_queue() {
    let Some(ns) = setup("mq") else { return };
    let queues = ns
        .exec(|| Tap::open_queues("tvmq0", 2))
        .expect("open 2 queues");
    assert_eq!(queues.len(), 2);
    assert_ne!(queues[0].as_raw_fd(), queues[1].as_raw_fd());
    for (i, q) in queues.iter().enumerate() {
        assert_eq!(q.name(), "tvmq0");
        assert_eq!(q.queue_index(), i);
        assert!(q.is_multi_queue());
        assert!(q.created());
        assert_eq!(q.if_index(), queues[0].if_index());
        // Each queue's socket has no send-buffer limit (as QEMU sets it).
        let mut sndbuf: libc::c_int = 0;
        // SAFETY: TUNGETSNDBUF writes one int, which `sndbuf` is.
        let r = unsafe { libc::ioctl(q.as_raw_fd(), libc::TUNGETSNDBUF, &mut sndbuf) };
        assert_eq!(r, 0, "TUNGETSNDBUF: {}", std::io::Error::last_os_error());
        assert_eq!(sndbuf, libc::c_int::MAX);
    }
    let details = ns.ip(&["-d", "link", "show", "dev", "tvmq0"]).unwrap();
    assert!(details.contains("multi_queue"), "{details}");

    // A single open joins the multi-queue TAP as a third queue.
    let third = ns
        .exec(|| Tap::open("tvmq0"))
        .expect("join as a third queue");
    assert!(third.is_multi_queue());
    assert!(!third.created());

    // Traffic written on queue 1 is answered (on whichever queue the kernel picks).
    configure(&ns, "tvmq0");
    let mac = mac_from_name("tvmq0");
    arp_round_trip(&queues[1], &[&queues[0], &queues[1], &third], mac);
}

#[test]
fn offloads_are_accepted() {
    let Some(ns) = setup("offload") else { return };
    let tap = ns.exec(|| Tap::open("tvoff0")).expect("open TAP");
    let sets = [
        0,
        libc::TUN_F_CSUM,
        libc::TUN_F_CSUM | libc::TUN_F_TSO4,
        libc::TUN_F_CSUM | libc::TUN_F_TSO6,
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN,
        libc::TUN_F_CSUM | libc::TUN_F_UFO,
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO,
    ];
    for flags in sets {
        tap.set_offload(flags)
            .unwrap_or_else(|e| panic!("flags {flags:#x}: {e}"));
    }
    // Every combination of the five guest offload features maps to flags the kernel takes.
    for mask in 0u64..32 {
        let bits = [1u64, 7, 8, 9, 10]; // GUEST_CSUM, _TSO4, _TSO6, _ECN, _UFO
        let features = (0..5)
            .filter(|i| mask & (1 << i) != 0)
            .fold(0, |f, i| f | 1 << bits[i]);
        let flags = offload_from_features(features);
        tap.set_offload(flags)
            .unwrap_or_else(|e| panic!("features {features:#x} -> {flags:#x}: {e}"));
    }
    // TSO without checksum offload is refused by the kernel, and said so.
    let err = tap.set_offload(libc::TUN_F_TSO4).unwrap_err();
    assert!(matches!(err, TapError::Offload { .. }), "{err}");
    assert!(err.to_string().contains("TUNSETOFFLOAD"), "{err}");
}

/// With checksum offload on, the kernel hands over UDP with a partial checksum and says where
/// to finish it; with it off, the checksum is complete.
#[test]
fn checksum_offload_reaches_the_vnet_header() {
    let Some(ns) = setup("csum") else { return };
    let tap = ns.exec(|| Tap::open("tvcsum0")).expect("open TAP");
    configure(&ns, "tvcsum0");
    let is_udp = |f: &[u8]| {
        let eth = &f[VNET_HDR_LEN..];
        eth.len() >= 42 && be16(eth, 12) == ETH_IPV4 && eth[23] == 17 && be16(eth, 36) == 9
    };
    let send = || {
        ns.exec(|| {
            let sock = std::net::UdpSocket::bind("10.0.2.1:0").expect("bind");
            sock.send_to(b"partial checksum", "10.0.2.15:9")
                .expect("send");
        })
    };

    tap.set_offload(libc::TUN_F_CSUM).unwrap();
    send();
    let frame = wait_frame(&[&tap], is_udp).expect("no UDP frame with offload on");
    assert_eq!(frame[0] & HDR_F_NEEDS_CSUM, HDR_F_NEEDS_CSUM, "flags");
    assert_eq!(frame[1], HDR_GSO_NONE);
    let csum_start = u16::from_le_bytes([frame[6], frame[7]]);
    let csum_offset = u16::from_le_bytes([frame[8], frame[9]]);
    assert_eq!((csum_start, csum_offset), (14 + 20, 6));

    tap.set_offload(0).unwrap();
    send();
    let frame = wait_frame(&[&tap], is_udp).expect("no UDP frame with offload off");
    assert_eq!(frame[0] & HDR_F_NEEDS_CSUM, 0, "flags");
    let ip = &frame[VNET_HDR_LEN + 14..];
    let udp = &ip[20..usize::from(be16(ip, 2))];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    assert_eq!(checksum(&pseudo), 0, "UDP checksum");
}

/// Runs `open` again while it says the queue is busy, for up to 2 s. A queue we closed can stay
/// attached a moment longer: a process that another test thread forks (`ip`) holds a copy of
/// every fd until it execs (they are close-on-exec).
fn until_not_busy<T>(mut open: impl FnMut() -> Result<T, TapError>) -> Result<T, TapError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open() {
            Err(TapError::Busy { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

#[test]
fn attaches_to_an_existing_tap() {
    let Some(ns) = setup("attach") else { return };
    ns.ip(&["tuntap", "add", "dev", "tvpers0", "mode", "tap"])
        .unwrap();
    let tap = ns.exec(|| Tap::open("tvpers0")).expect("attach");
    assert!(!tap.created());
    assert_eq!(tap.name(), "tvpers0");
    configure(&ns, "tvpers0");
    arp_round_trip(&tap, &[&tap], mac_from_name("tvpers0"));
    drop(tap);
    assert!(ns.has_link("tvpers0"), "a persistent TAP outlives our fd");

    // Its single queue is taken while we hold it.
    let tap = until_not_busy(|| ns.exec(|| Tap::open("tvpers0"))).unwrap();
    let err = ns.exec(|| Tap::open("tvpers0")).unwrap_err();
    assert!(matches!(err, TapError::Busy { .. }), "{err}");
    // And a single-queue TAP cannot give two queues.
    drop(tap);
    let err = until_not_busy(|| ns.exec(|| Tap::open_queues("tvpers0", 2))).unwrap_err();
    assert!(
        matches!(err, TapError::SingleQueue { queues: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("multi_queue"), "{err}");

    ns.ip(&[
        "tuntap",
        "add",
        "dev",
        "tvpmq0",
        "mode",
        "tap",
        "multi_queue",
    ])
    .unwrap();
    let queues = ns.exec(|| Tap::open_queues("tvpmq0", 2)).expect("attach 2");
    assert!(queues.iter().all(|q| !q.created() && q.is_multi_queue()));
}

#[test]
fn bad_names_and_devices_are_refused() {
    let Some(ns) = setup("names") else { return };
    let err = ns.exec(|| Tap::open("tv0123456789abcd")).unwrap_err();
    assert!(
        matches!(err, TapError::NameTooLong { len: 16, .. }),
        "{err}"
    );
    let err = ns.exec(|| Tap::open("tv/0")).unwrap_err();
    assert!(matches!(err, TapError::BadName { .. }), "{err}");

    let err = ns.exec(|| Tap::open("lo")).unwrap_err();
    assert!(matches!(err, TapError::NotTap { .. }), "{err}");
    assert!(err.to_string().contains("not a TAP"), "{err}");

    ns.ip(&["tuntap", "add", "dev", "tvtun0", "mode", "tun"])
        .unwrap();
    let err = ns.exec(|| Tap::open("tvtun0")).unwrap_err();
    assert!(
        matches!(&err, TapError::NotTap { what, .. } if what.contains("TUN")),
        "{err}"
    );
}

/// capget/capset's header and one of the two data words (linux/capability.h, version 3).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;
const CAP_NET_ADMIN: u32 = 12;

/// Drops CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread).
fn drop_net_admin_on_this_thread() {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and two data words, which `hdr` and `data` are.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    assert_eq!(ret, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: capset reads the same header and two data words.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    assert_eq!(ret, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn without_cap_net_admin_the_error_says_so() {
    let Some(ns) = setup("nocap") else { return };
    let err = ns
        .exec(|| {
            drop_net_admin_on_this_thread();
            Tap::open("tvnocap0")
        })
        .unwrap_err();
    assert!(matches!(err, TapError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("need CAP_NET_ADMIN"), "{err}");
    assert!(!ns.has_link("tvnocap0"));
}

#[test]
fn a_created_tap_disappears_when_its_fds_close() {
    let Some(ns) = setup("gone") else { return };
    let queues = ns.exec(|| Tap::open_queues("tvgone0", 2)).unwrap();
    assert!(ns.has_link("tvgone0"));
    let mut queues = queues.into_iter();
    drop(queues.next());
    assert!(ns.has_link("tvgone0"), "one queue still open");
    drop(queues);
    let deadline = Instant::now() + Duration::from_secs(2);
    while ns.has_link("tvgone0") {
        assert!(Instant::now() < deadline, "TAP still there after close");
        std::thread::sleep(Duration::from_millis(10));
    }
}
