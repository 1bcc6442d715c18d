//! The host-side floors of the e2e bench's UDP streams: the same TAP, the same datagrams and
//! the same host end, with no VM. What a VMM's rate is measured against shows here: a bare
//! loop that does nothing but the TAP's syscalls is as fast as any bottom half can be.
//!
//! * **tx**: one thread `writev`s the guest's frames (vnet header, Ethernet, IPv4, UDP with
//!   its checksum, the test payload; as `net.udp-tx` builds them) into the TAP as fast as it
//!   takes them. The host's stack receives each inside the `writev` and drops it at the sink
//!   socket, as it does for a guest's.
//! * **rx**: the bench's sender (`blast`, the same as for a guest) sends to the guest's
//!   address, which a permanent neighbour entry maps to a made-up MAC; one thread reads the
//!   TAP and counts the test datagrams (no checks, no ring: less than any VMM does).
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trapvisor::net::config::parse_mac;
use trapvisor::net::tap::Tap;

use crate::frames;
use crate::netns::NetNs;

/// The vnet header the TAP is opened with (trapvisor's `Tap`: 12 bytes, all zero for a frame
/// with no offload, which is what the built-in guest sends).
const VNET_HDR: usize = 12;
const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
/// The MAC the rx floor's neighbour entry gives the guest's address.
const FAKE_MAC: &str = "02:00:00:00:00:99";

/// One frame as the TAP takes it: a zero vnet header, then Ethernet to `dst_mac`, IPv4
/// `src` → `dst`, UDP `ports` (checksum filled in) around `payload`.
fn frame(
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR];
    let (sport, dport) = ports;
    f.extend(frames::udp(
        dst_mac,
        parse_mac(FAKE_MAC).expect("FAKE_MAC is a unicast MAC"),
        src,
        dst,
        sport,
        dport,
        payload,
        false,
    ));
    f
}

/// The TAP's MAC address (its host end, which the guest's frames are sent to).
fn tap_mac(ns: &NetNs, tap: &str) -> Result<[u8; 6], String> {
    let json = ns.ip(&["-j", "link", "show", tap])?;
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    let addr = v[0]["address"].as_str().ok_or("no address for the TAP")?;
    parse_mac(addr)
}

fn open(ns: &NetNs, tap: &str) -> Result<Tap, String> {
    ns.exec(|| Tap::open(tap))
        .map_err(|e| format!("open TAP {tap}: {e}"))
}

/// Writes `payload(seq)` datagrams (256 distinct frames, in turn) from `src` to `dst`:`port`
/// into `tap` for `secs`; returns how many the TAP took and the seconds it took them in.
pub fn tx(
    ns: &NetNs,
    tap: &str,
    (src, dst, port): ([u8; 4], [u8; 4], u16),
    secs: u32,
    payload: impl Fn(u32) -> Vec<u8>,
) -> Result<(u64, f64), String> {
    let t = open(ns, tap)?;
    let dst_mac = tap_mac(ns, tap)?;
    let frames: Vec<Vec<u8>> = (0..256u32)
        .map(|seq| frame(dst_mac, src, dst, (0x7476, port), &payload(seq)))
        .collect();
    let mut sent = 0u64;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(u64::from(secs));
    while Instant::now() < end {
        for f in &frames {
            if let Ok(Some(_)) = t.writev(&[IoSlice::new(f)]) {
                sent += 1;
            }
        }
    }
    Ok((sent, t0.elapsed().as_secs_f64()))
}

/// The rx floor's reading end: a thread reading `tap` and counting UDP datagrams to `port`
/// of `size` bytes of payload, until [`Reader::finish`].
pub struct Reader {
    ns_name: String,
    guest_ip: String,
    tap: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Reader {
    /// Opens the TAP and maps `guest_ip` to a made-up MAC (no guest answers ARP here).
    pub fn start(
        ns: &NetNs,
        tap: &str,
        guest_ip: &str,
        port: u16,
        size: usize,
    ) -> Result<Reader, String> {
        let t = open(ns, tap)?;
        let neigh = ["neigh", "replace", guest_ip, "lladdr", FAKE_MAC];
        ns.ip(&[&neigh[..], &["nud", "permanent", "dev", tap]].concat())?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let want = VNET_HDR + ETH + IP + UDP + size;
            let mut buf = vec![0u8; 65_536];
            let mut got = 0u64;
            let mut idle_since: Option<Instant> = None;
            loop {
                match t.readv(&mut [IoSliceMut::new(&mut buf)]) {
                    Ok(Some(n)) => {
                        idle_since = None;
                        let at = VNET_HDR + ETH + IP + 2;
                        if n == want && buf[at..at + 2] == port.to_be_bytes() {
                            got += 1;
                        }
                    }
                    _ => {
                        // Stop once asked and the TAP has been empty for 100 ms.
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if s.load(Ordering::Relaxed) && since.elapsed() > Duration::from_millis(100)
                        {
                            return got;
                        }
                        let mut p = libc::pollfd {
                            fd: t.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd for the call's duration.
                        unsafe { libc::poll(&mut p, 1, 10) };
                    }
                }
            }
        });
        Ok(Reader {
            ns_name: ns.name().to_string(),
            guest_ip: guest_ip.to_string(),
            tap: tap.to_string(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the reader (after the TAP ran empty) and removes the neighbour entry; the
    /// datagrams read.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::process::Command::new("ip")
            .args([
                "-n",
                &self.ns_name,
                "neigh",
                "del",
                &self.guest_ip,
                "dev",
                &self.tap,
            ])
            .output();
    }
}
