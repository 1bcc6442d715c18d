//! Transmit kicks served on the vCPU thread (notify=exit, `Pair::kick_tx_exit`): one small
//! chain is sent there and the reply read before the kick returns; a stream or a large chain
//! is left to the worker. The rig (a TAP that answers every frame) serves `hold_tests` too.
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::net::backend::NetBackend;
use crate::net::ctrl::tests::{queues, rings, NoIrq, SIZE};
use crate::net::header::HDR_LEN;
use crate::net::{Net, NetConfig};
use crate::seccomp::SeccompMode;
use crate::virtio::{
    feature, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

pub(super) const RXQ: u64 = 0;
pub(super) const TXQ: u64 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// A TAP whose host answers every frame at once, inside the `writev` (as the kernel's stack
/// answers a ping): the frame comes back to be read. Its fd never polls ready, so only a
/// kick can make the device read it.
struct Echo {
    evt: EventFd,
    queued: Arc<Mutex<VecDeque<Vec<u8>>>>,
    written: Arc<Mutex<usize>>,
}

impl NetBackend for Echo {
    fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
    unsafe fn readv_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        let Some(frame) = self.queued.lock().unwrap().pop_front() else {
            return Ok(None);
        };
        let mut done = 0;
        for v in iovs {
            let n = v.iov_len.min(frame.len() - done);
            // SAFETY: the caller guarantees each iovec is writable for its length.
            unsafe { std::ptr::copy_nonoverlapping(frame[done..].as_ptr(), v.iov_base.cast(), n) };
            done += n;
        }
        Ok(Some(done))
    }
    unsafe fn writev_raw(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        let mut frame = Vec::new();
        for v in iovs {
            // SAFETY: the caller guarantees each iovec is readable for its length.
            let s = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            frame.extend_from_slice(s);
        }
        *self.written.lock().unwrap() += 1;
        let n = frame.len();
        self.queued.lock().unwrap().push_back(frame);
        Ok(Some(n))
    }
    fn set_offload(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
    fn set_queue_enabled(&self, _: bool) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "echo".into()
    }
}

pub(super) struct Rig {
    pub mem: GuestMemoryMmap,
    pub net: Net,
    written: Arc<Mutex<usize>>,
    avail: [u16; 2],
}

impl Rig {
    /// An active device with two receive buffers posted.
    fn new() -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let features = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MRG_RXBUF);
        Rig::with(mem, features, Arc::new(NoIrq), NetConfig::new("echo0"))
    }

    /// An active device `cfg` (its `tap` only names it) on `mem` (1 MiB from 0) with
    /// `features` accepted, interrupting through `irq`, with two receive buffers posted.
    pub fn with(
        mem: GuestMemoryMmap,
        features: u64,
        irq: Arc<dyn VirtioInterrupt>,
        cfg: NetConfig,
    ) -> Rig {
        let written = Arc::new(Mutex::new(0));
        let echo = Echo {
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            queued: Arc::default(),
            written: written.clone(),
        };
        let mut net = Net::with_backends(&cfg, vec![Box::new(echo)]).unwrap();
        net.ack_features(features);
        let mut rig = Rig {
            mem: mem.clone(),
            net,
            written,
            avail: [0; 2],
        };
        for i in 0..2u64 {
            rig.add(RXQ, 0x8_0000 + 0x1000 * i, 2048, VRING_DESC_F_WRITE);
        }
        let event_idx = features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        rig.net.activate(mem, queues(event_idx), irq).unwrap();
        rig
    }

    /// Makes one single-descriptor chain of `len` bytes at `addr` available on queue `q`.
    fn add(&mut self, q: u64, addr: u64, len: u32, flags: u16) {
        let (desc, avail, _) = rings(q);
        let idx = &mut self.avail[q as usize];
        let head = *idx % SIZE;
        let d = desc + 16 * u64::from(head);
        self.mem.write_obj(addr, GuestAddress(d)).unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        self.mem.write_obj(0u16, GuestAddress(d + 14)).unwrap();
        let slot = avail + 4 + 2 * u64::from(head);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        *idx = idx.wrapping_add(1);
        self.mem.write_obj(*idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Queues a frame of `len` bytes (header included) to send, filled with `fill`.
    pub fn send(&mut self, n: u64, len: u32, fill: u8) {
        let addr = 0x2_0000 + 0x1_0000 * n;
        let mut frame = vec![fill; len as usize];
        frame[..HDR_LEN].fill(0);
        self.mem.write_slice(&frame, GuestAddress(addr)).unwrap();
        self.add(TXQ, addr, len, 0);
    }

    pub fn used_idx(&self, q: u64) -> u16 {
        self.mem.read_obj(GuestAddress(rings(q).2 + 2)).unwrap()
    }

    pub fn written(&self) -> usize {
        *self.written.lock().unwrap()
    }
}

#[test]
fn one_small_chain_is_sent_and_its_reply_received_inside_the_exit() {
    let mut rig = Rig::new();
    rig.send(0, (HDR_LEN + 60) as u32, 0xab);
    rig.net.process_queue(TXQ as usize).unwrap();
    // No worker runs: the vCPU thread did both before returning.
    assert_eq!(rig.written(), 1);
    assert_eq!(rig.used_idx(TXQ), 1);
    assert_eq!(rig.used_idx(RXQ), 1, "the reply is in the receive ring");
    let len: u32 = rig
        .mem
        .read_obj(GuestAddress(rings(RXQ).2 + 4 + 4))
        .unwrap();
    assert_eq!(len as usize, HDR_LEN + 60);
    let mut got = [0u8; 60];
    rig.mem
        .read_slice(&mut got, GuestAddress(0x8_0000 + HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, [0xab; 60]);
    let c = rig.net.counters().pairs[0];
    assert_eq!(
        (c.tx.kicks, c.tx.wakeups, c.tx.frames, c.rx.frames),
        (1, 1, 1, 1)
    );
}

#[test]
fn a_stream_or_a_large_chain_is_left_to_the_worker() {
    for (chains, len) in [(3, HDR_LEN as u32 + 60), (1, 4000)] {
        let mut rig = Rig::new();
        for n in 0..chains {
            rig.send(n, len, n as u8 + 1);
        }
        rig.net.process_queue(TXQ as usize).unwrap();
        assert_eq!(
            rig.written(),
            0,
            "{chains} x {len} B: nothing sent on the vCPU"
        );
        assert_eq!(rig.used_idx(TXQ), 0);
        assert_eq!(rig.net.counters().pairs[0].tx.kicks, 1);
        // The worker takes it over once it runs.
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let handle = rig.net.handle();
        handle.start(&stop, SeccompMode::Off).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while rig.used_idx(TXQ) != chains as u16 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        handle.stop();
        assert_eq!(rig.written(), chains as usize, "{chains} x {len} B");
        assert_eq!(rig.used_idx(TXQ), chains as u16);
        assert_eq!(rig.net.counters().pairs[0].tx.frames, chains);
    }
}

#[test]
fn a_kick_with_nothing_waiting_is_answered_on_the_vcpu() {
    let mut rig = Rig::new();
    rig.net.process_queue(TXQ as usize).unwrap();
    let c = rig.net.counters().pairs[0].tx;
    assert_eq!((c.kicks, c.wakeups, c.frames), (1, 1, 0));
}
