//! A TAP device: the host end of a virtio-net device.
//!
//! Every fd is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a vnet header size of
//! [`VNET_HDR_LEN`] (12 bytes, `struct virtio_net_hdr_v1`), so each frame read or written
//! starts with the same header the guest driver uses. With more than one queue the TAP is
//! `IFF_MULTI_QUEUE` and each queue is its own fd ([`Tap::open_queues`]).
//!
//! Opening a name that exists attaches to that TAP (made persistent by `ip tuntap add`, say);
//! a missing name is created, not persistent: the kernel removes it when its last fd closes.
//! The fds are non-blocking: [`Tap::readv`] and friends return `Ok(None)` for `EAGAIN`.
//!
//! On receive the kernel fills the first 10 bytes of the header (`virtio_net_hdr`) and, by
//! kernel version, zeroes or skips the last two: the device must set `num_buffers` itself. On
//! transmit the kernel ignores `num_buffers`. The header is little-endian, as on the host.
use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
};

/// The clone device every TAP is opened through.
pub const TUN_PATH: &str = "/dev/net/tun";
/// Bytes of virtio-net header in front of every frame (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name, in bytes (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// Most queues the kernel lets one TAP have (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// `SIOCETHTOOL` command that returns `struct ethtool_drvinfo`.
const ETHTOOL_GDRVINFO: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "TAP name {name:?} is {len} bytes; the limit is {MAX_NAME_LEN} (IFNAMSIZ 16 with the NUL)"
    )]
    NameTooLong { name: String, len: usize },
    #[error("bad TAP name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("a TAP needs 1 to {MAX_QUEUES} queues, not {0}")]
    Queues(usize),
    #[error("cannot open {path}: it does not exist (load the tun module: modprobe tun)")]
    TunMissing { path: String },
    #[error("cannot open {path}: permission denied (need CAP_NET_ADMIN: run as root)")]
    TunPermission { path: String },
    #[error("cannot open {path}: {err}")]
    TunOpen { path: String, err: io::Error },
    #[error("cannot open TAP {name:?}: permission denied (need CAP_NET_ADMIN: run as root, or create it first with `ip tuntap add {name} mode tap user $USER`)")]
    PermissionDenied { name: String },
    #[error("network device {name:?} exists and is not a TAP device ({what})")]
    NotTap { name: String, what: String },
    #[error("TAP {name:?} is single-queue; {queues} queues need one made with `ip tuntap add {name} mode tap multi_queue`")]
    SingleQueue { name: String, queues: usize },
    #[error("TAP {name:?} is multi-queue; open it with `Tap::open_queues`")]
    MultiQueue { name: String },
    #[error(
        "TAP {name:?} is busy: its only queue is already open (single-queue TAPs take one fd)"
    )]
    Busy { name: String },
    #[error("TAP {name:?}: setting offloads {flags:#x} (TUNSETOFFLOAD) failed: {err}")]
    Offload {
        name: String,
        flags: u32,
        err: io::Error,
    },
    #[error("TAP {name:?}: {op} failed: {err}")]
    Ioctl {
        name: String,
        op: &'static str,
        err: io::Error,
    },
}

/// One queue of a TAP device: a non-blocking fd with a virtio-net header on every frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    if_index: u32,
    queue: usize,
    multi_queue: bool,
    created: bool,
}

impl Tap {
    /// Opens the single queue of TAP `name`, creating it if it does not exist. An existing
    /// multi-queue TAP is accepted too (this fd is then one of its queues).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let mut taps = Tap::open_queues(name, 1)?;
        Ok(taps.remove(0))
    }

    /// Opens `queues` queues of TAP `name`, one fd each, creating the TAP if it does not exist.
    /// More than one queue needs `IFF_MULTI_QUEUE`, which a TAP of ours gets here and an
    /// existing one must have been made with.
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        open_queues_at(Path::new(TUN_PATH), name, queues)
    }

    /// The interface name (as the kernel reports it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index in the network namespace the TAP was opened in.
    pub fn if_index(&self) -> u32 {
        self.if_index
    }

    /// Which queue of the TAP this fd is, from 0.
    pub fn queue_index(&self) -> usize {
        self.queue
    }

    /// Whether the TAP is `IFF_MULTI_QUEUE`.
    pub fn is_multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// Whether this open created the TAP (it then goes away when the last fd closes), rather
    /// than attaching to one that existed.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Sets the offloads the reader of this TAP (the guest) accepts: `TUN_F_*` bits, usually
    /// from [`offload_from_features`]. Offloads belong to the device, so one queue suffices.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                err: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Attaches (`true`) or detaches (`false`) this queue of a multi-queue TAP (TUNSETQUEUE).
    /// The kernel steers no frames to a detached queue, and the fd then reads, writes and
    /// polls as `EBADFD`/`EPOLLERR` until attached again. Asking for the state the queue is
    /// already in, or any change on a single-queue TAP, does nothing.
    pub fn set_queue_enabled(&self, enabled: bool) -> Result<(), TapError> {
        if !self.multi_queue {
            return Ok(());
        }
        let mut req = ifreq_for("");
        let flags = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETQUEUE reads one struct ifreq, which `req` is.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETQUEUE, &mut req) } < 0 {
            let err = io::Error::last_os_error();
            // EINVAL: attaching an attached queue, or detaching a detached one.
            if err.raw_os_error() == Some(libc::EINVAL) {
                return Ok(());
            }
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                op: "TUNSETQUEUE",
                err,
            });
        }
        Ok(())
    }

    /// Reads one frame (header first) into `bufs`. `Ok(None)`: no frame is waiting.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<Option<usize>> {
        // SAFETY: IoSliceMut is ABI-compatible with iovec on Unix, and each one borrows a
        // buffer that is writable and alive for the whole call.
        unsafe {
            let iovs = std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len());
            self.readv_raw(iovs)
        }
    }

    /// Writes one frame (header first) gathered from `bufs`. `Ok(None)`: the queue is full.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<Option<usize>> {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix, and each one borrows a buffer
        // that is readable and alive for the whole call.
        unsafe {
            let iovs = std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len());
            self.writev_raw(iovs)
        }
    }

    /// Reads one frame into a single buffer. `Ok(None)`: no frame is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.readv(&mut [IoSliceMut::new(buf)])
    }

    /// Writes one frame from a single buffer. `Ok(None)`: the queue is full.
    pub fn write(&self, buf: &[u8]) -> io::Result<Option<usize>> {
        self.writev(&[IoSlice::new(buf)])
    }

    /// [`Tap::readv`] on raw iovecs, e.g. built from guest memory.
    ///
    /// # Safety
    ///
    /// Each iovec must describe memory that is valid for writes of its length for the whole
    /// call and that nothing else reads or writes meanwhile in a way Rust could observe.
    pub unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        let count = iov_count(iovs)?;
        let fd = self.file.as_raw_fd();
        // The raw syscall, not glibc's wrapper: that one is a pthread cancellation point and
        // toggles the thread's cancel state around every call (5% of a worker's CPU).
        retry(|| {
            // SAFETY: the caller vouches for the buffers; `iovs` holds `count` iovecs.
            unsafe { raw_iov_syscall(libc::SYS_readv, fd, iovs, count) }
        })
    }

    /// [`Tap::writev`] on raw iovecs, e.g. built from guest memory.
    ///
    /// # Safety
    ///
    /// Each iovec must describe memory that is valid for reads of its length for the whole
    /// call.
    pub unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        let count = iov_count(iovs)?;
        let fd = self.file.as_raw_fd();
        retry(|| {
            // SAFETY: the caller vouches for the buffers; `iovs` holds `count` iovecs.
            unsafe { raw_iov_syscall(libc::SYS_writev, fd, iovs, count) }
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Maps the virtio-net features the guest acked to `TUN_F_*` offload flags: what the guest
/// can receive (partial checksums, TSO, UFO frames). Follows the virtio dependency rules,
/// which the kernel also enforces: nothing without `GUEST_CSUM`, ECN only with TSO.
pub fn offload_from_features(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

/// A stable, locally administered unicast MAC for a TAP's guest end: `52:` and then five
/// bytes of the 64-bit FNV-1a hash of `name`, the same in every run.
pub fn mac_from_name(name: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h = hash.to_le_bytes();
    [0x52, h[0], h[1], h[2], h[3], h[4]]
}

/// Checks an interface name as the kernel's `dev_valid_name` would, and refuses `%` (a
/// template that would let the kernel pick the name).
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let bad = |reason| {
        Err(TapError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err(TapError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not interface names");
    }
    for c in name.chars() {
        let reason = match c {
            '/' => "it contains '/'",
            ':' => "it contains ':'",
            '%' => "it contains '%'",
            c if c.is_whitespace() => "it contains white space",
            c if c.is_control() => "it contains a control character",
            _ => continue,
        };
        return bad(reason);
    }
    Ok(())
}

fn open_queues_at(path: &Path, name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
    validate_name(name)?;
    if queues == 0 || queues > MAX_QUEUES {
        return Err(TapError::Queues(queues));
    }
    let existed = name_to_index(name).is_some();
    let mut multi_queue = queues > 1;
    let mut taps: Vec<Tap> = Vec::with_capacity(queues);
    for queue in 0..queues {
        let (file, actual) = match attach(path, name, queues, multi_queue) {
            // A lone queue may be one queue of an existing multi-queue TAP.
            Err(TapError::MultiQueue { .. }) if queues == 1 && !multi_queue => {
                multi_queue = true;
                attach(path, name, queues, true)?
            }
            r => r?,
        };
        let if_index = name_to_index(&actual).ok_or_else(|| TapError::Ioctl {
            name: actual.clone(),
            op: "if_nametoindex",
            err: io::Error::last_os_error(),
        })?;
        taps.push(Tap {
            file,
            name: actual,
            if_index,
            queue,
            multi_queue,
            created: !existed,
        });
    }
    Ok(taps)
}

/// Opens the clone device and attaches the fd to TAP `name` (TUNSETIFF), with a 12-byte
/// vnet header. Returns the name the kernel reports. `queues` is for error messages.
fn attach(
    path: &Path,
    name: &str,
    queues: usize,
    multi_queue: bool,
) -> Result<(File, String), TapError> {
    let file = open_tun(path)?;
    let mut req = ifreq_for(name);
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    // The kernel's flags field is a short; every flag above fits in 16 bits.
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(attach_error(
            name,
            queues,
            multi_queue,
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel wrote back a NUL-terminated name of at most IFNAMSIZ bytes; the
    // array is IFNAMSIZ long and was zeroed, so a NUL is always inside it.
    let actual = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int, which `hdr_len` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(TapError::Ioctl {
            name: actual,
            op: "TUNSETVNETHDRSZ",
            err: io::Error::last_os_error(),
        });
    }
    // No send-buffer limit, as QEMU sets it (`sndbuf` unset = INT_MAX): the kernel charges
    // each frame written to the TAP's socket until the host frees it, and at the default limit
    // (wmem_default, about three 64 KiB TSO frames) a host that queues the frames (a bridge
    // to a slower NIC, a qdisc) makes writev say EAGAIN and the queue wait for EPOLLOUT.
    // Frames the host's own stack takes are freed inside the writev, so there it changes
    // nothing (tx0.tap_eagain stays 0 either way in the nested benchmark).
    let sndbuf = libc::c_int::MAX;
    // SAFETY: TUNSETSNDBUF reads one int, which `sndbuf` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETSNDBUF, &sndbuf) } < 0 {
        return Err(TapError::Ioctl {
            name: actual,
            op: "TUNSETSNDBUF",
            err: io::Error::last_os_error(),
        });
    }
    Ok((file, actual))
}

fn open_tun(path: &Path) -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| {
            let path = path.display().to_string();
            match err.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::TunMissing { path },
                Some(libc::EACCES | libc::EPERM) => TapError::TunPermission { path },
                _ => TapError::TunOpen { path, err },
            }
        })
}

/// Turns a TUNSETIFF failure into the error a user can act on.
fn attach_error(name: &str, queues: usize, multi_queue: bool, err: io::Error) -> TapError {
    let name_s = name.to_string();
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TapError::PermissionDenied { name: name_s },
        Some(libc::EBUSY) => TapError::Busy { name: name_s },
        // TUNSETIFF on an existing name says EINVAL when it is not a TAP, or is a TAP whose
        // IFF_MULTI_QUEUE differs from ours.
        Some(libc::EINVAL) if name_to_index(name).is_some() => match driver_info(name) {
            Some((driver, bus)) if driver == "tun" && bus == "tap" => {
                if multi_queue {
                    TapError::SingleQueue {
                        name: name_s,
                        queues,
                    }
                } else {
                    // open_queues_at retries a lone queue with IFF_MULTI_QUEUE.
                    TapError::MultiQueue { name: name_s }
                }
            }
            Some((driver, bus)) if driver == "tun" && bus == "tun" => TapError::NotTap {
                name: name_s,
                what: "a TUN device, which carries IP packets, not Ethernet frames".to_string(),
            },
            Some((driver, _)) => TapError::NotTap {
                name: name_s,
                what: format!("driver {driver}"),
            },
            None => TapError::NotTap {
                name: name_s,
                what: "not a tun/tap device".to_string(),
            },
        },
        _ => TapError::Ioctl {
            name: name_s,
            op: "TUNSETIFF",
            err,
        },
    }
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (arrays, integers and a union of them); all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // validate_name keeps the name below IFNAMSIZ, so the last byte stays NUL.
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// The interface index of `name` in this thread's network namespace.
fn name_to_index(name: &str) -> Option<u32> {
    let req = ifreq_for(name);
    // SAFETY: ifr_name is a NUL-terminated string (see ifreq_for); if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(req.ifr_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `struct ethtool_drvinfo` from linux/ethtool.h.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver and bus names ethtool reports for `name` (`tun`/`tap` for a TAP), if any.
fn driver_info(name: &str) -> Option<(String, String)> {
    // SAFETY: socket() takes no pointers; the result is checked and owned just below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return None;
    }
    // SAFETY: `sock` is a fresh fd that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    // SAFETY: EthtoolDrvinfo is plain integers and byte arrays; all zeroes is valid.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast::<libc::c_char>();
    // SAFETY: SIOCETHTOOL reads `req` and writes one ethtool_drvinfo through ifru_data, which
    // points at `info`, alive and of that layout for the whole call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as libc::Ioctl, &mut req) } < 0 {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Some((text(&info.driver), text(&info.bus_info)))
}

fn iov_count(iovs: &[libc::iovec]) -> io::Result<libc::c_int> {
    libc::c_int::try_from(iovs.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many iovecs"))
}

/// readv(2) or writev(2) through syscall(2). Every argument is widened to a full register
/// first: syscall(2) is variadic, and a 32-bit value would leave the upper half of its register
/// undefined for the kernel to read.
///
/// # Safety
///
/// As for readv/writev: the iovecs' buffers must be valid for the call.
unsafe fn raw_iov_syscall(
    nr: libc::c_long,
    fd: RawFd,
    iovs: &[libc::iovec],
    count: libc::c_int,
) -> isize {
    // SAFETY: the caller vouches for the buffers; `iovs` holds at least `count` iovecs.
    unsafe {
        libc::syscall(
            nr,
            libc::c_long::from(fd),
            iovs.as_ptr() as libc::c_long,
            libc::c_long::from(count),
        ) as isize
    }
}

/// Runs a read or write syscall until it is not interrupted; `EAGAIN` becomes `Ok(None)`.
fn retry(mut op: impl FnMut() -> isize) -> io::Result<Option<usize>> {
    loop {
        let n = op();
        if let Ok(n) = usize::try_from(n) {
            return Ok(Some(n));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_GUEST_OFFLOADS: [u32; 5] = [
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
    ];

    fn features(bits: &[u32]) -> u64 {
        bits.iter().fold(0, |f, &b| f | 1 << b)
    }

    #[test]
    fn offload_mapping() {
        assert_eq!(offload_from_features(0), 0);
        assert_eq!(
            offload_from_features(features(&[VIRTIO_NET_F_GUEST_CSUM])),
            libc::TUN_F_CSUM
        );
        assert_eq!(
            offload_from_features(features(&ALL_GUEST_OFFLOADS)),
            libc::TUN_F_CSUM
                | libc::TUN_F_TSO4
                | libc::TUN_F_TSO6
                | libc::TUN_F_TSO_ECN
                | libc::TUN_F_UFO
        );
        assert_eq!(
            offload_from_features(features(&[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_ECN
            ])),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        assert_eq!(
            offload_from_features(features(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_UFO])),
            libc::TUN_F_CSUM | libc::TUN_F_UFO
        );
    }

    #[test]
    fn offload_mapping_follows_dependencies() {
        // TSO without the checksum offload it needs: nothing.
        let no_csum = features(&[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_UFO]);
        assert_eq!(offload_from_features(no_csum), 0);
        // ECN without TSO is dropped.
        let ecn = features(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN]);
        assert_eq!(offload_from_features(ecn), libc::TUN_F_CSUM);
        // Features that are not guest offloads change nothing.
        let others = (1u64 << 5) | (1 << 16) | (1 << 32) | (1 << 0) | (1 << 11);
        assert_eq!(offload_from_features(others), 0);
        assert_eq!(
            offload_from_features(others | features(&[VIRTIO_NET_F_GUEST_CSUM])),
            libc::TUN_F_CSUM
        );
    }

    #[test]
    fn offload_mapping_is_always_valid_for_the_kernel() {
        // Every subset of the five features maps to flags TUNSETOFFLOAD accepts.
        for mask in 0u32..32 {
            let bits: Vec<u32> = (0..5)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| ALL_GUEST_OFFLOADS[i])
                .collect();
            let flags = offload_from_features(features(&bits));
            if flags != 0 {
                assert_ne!(flags & libc::TUN_F_CSUM, 0, "{mask:#b}");
            }
            if flags & libc::TUN_F_TSO_ECN != 0 {
                assert_ne!(
                    flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6),
                    0,
                    "{mask:#b}"
                );
            }
        }
    }

    #[test]
    fn mac_is_local_unicast_and_stable() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(mac_from_name("a"), [0x52, 0x8c, 0xec, 0x01, 0x86, 0x4c]);
        assert_eq!(mac_from_name("tap0"), mac_from_name("tap0"));
        assert_ne!(mac_from_name("tap0"), mac_from_name("tap1"));
        for name in ["", "tap0", "tv-net-123456789", "eth0"] {
            let mac = mac_from_name(name);
            assert_eq!(mac[0] & 1, 0, "multicast bit of {name}");
            assert_eq!(mac[0] & 2, 2, "local bit of {name}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("tap0").is_ok());
        assert!(validate_name("a23456789012345").is_ok());
        assert!(matches!(
            validate_name("a234567890123456"),
            Err(TapError::NameTooLong { len: 16, .. })
        ));
        for bad in [
            "", ".", "..", "a/b", "a:1", "a b", "tap%d", "a\tb", "a\u{7f}",
        ] {
            assert!(
                matches!(validate_name(bad), Err(TapError::BadName { .. })),
                "{bad:?}"
            );
        }
        // Checked before anything is opened.
        assert!(matches!(
            Tap::open("a/b"),
            Err(TapError::BadName { reason, .. }) if reason.contains('/')
        ));
        assert!(matches!(
            Tap::open_queues("tap0", 0),
            Err(TapError::Queues(0))
        ));
        assert!(matches!(
            Tap::open_queues("tap0", MAX_QUEUES + 1),
            Err(TapError::Queues(_))
        ));
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            validate_name("a234567890123456").unwrap_err(),
            validate_name("a/b").unwrap_err(),
            TapError::PermissionDenied {
                name: "tap0".into(),
            },
            TapError::TunMissing {
                path: TUN_PATH.into(),
            },
            TapError::NotTap {
                name: "lo".into(),
                what: "not a tun/tap device".into(),
            },
        ];
        for e in &errors {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text}");
        }
        assert!(errors[0].to_string().contains("IFNAMSIZ 16"));
        assert!(errors[2].to_string().contains("need CAP_NET_ADMIN"));
    }

    #[test]
    fn missing_clone_device() {
        let path = Path::new("/nonexistent/dev/net/tun");
        assert!(matches!(
            open_queues_at(path, "tap0", 1),
            Err(TapError::TunMissing { .. })
        ));
    }

    #[test]
    fn eagain_is_none() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we pass.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        let mut buf = [0u8; 4];
        let r = retry(|| {
            // SAFETY: reads into `buf`, which is alive and 4 bytes long.
            unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) }
        });
        assert!(matches!(r, Ok(None)));
        // SAFETY: closes the two fds pipe2 gave us, once each.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
