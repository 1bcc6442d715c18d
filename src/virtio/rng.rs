//! virtio-rng (virtio 1.2 §5.4): one request queue; every device-writable buffer the driver
//! offers is filled with entropy from the host's getrandom(2) and returned in the used ring.
use std::io::{self, Write};
use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::queue::DrainPasses;
use super::{
    feature, ActivateError, DeviceError, DeviceOptions, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

pub const QUEUE_SIZE: u16 = 256;
/// The most bytes given for one request: a guest offering a huge buffer gets this much.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// `--rng [notify=ioeventfd|exit][,irq=irqfd|msi]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RngConfig {
    pub transport: DeviceOptions,
}

impl std::str::FromStr for RngConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeviceOptions::parse(s).map(|transport| RngConfig { transport })
    }
}

/// Where entropy comes from.
pub trait EntropySource: Send {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

/// The host kernel's CSPRNG.
pub struct Getrandom;

impl EntropySource for Getrandom {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            match crate::sys::getrandom(rest, 0) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Counters of the device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngStats {
    /// Descriptor chains completed.
    pub requests: u64,
    pub bytes: u64,
    /// Chains whose buffers are outside guest RAM or malformed (returned with 0 bytes).
    pub bad_chains: u64,
    pub entropy_errors: u64,
    /// Interrupts raised (after a batch, when the driver wants one).
    pub interrupts: u64,
    pub interrupt_errors: u64,
    /// Calls to `process_queue` (kicks, by either notify path).
    pub kicks: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

pub struct Rng {
    entropy: Box<dyn EntropySource>,
    active: Option<Active>,
    buf: Vec<u8>,
    stats: RngStats,
}

impl Rng {
    pub fn new() -> Self {
        Rng::with_source(Box::new(Getrandom))
    }

    pub fn with_source(entropy: Box<dyn EntropySource>) -> Self {
        Rng {
            entropy,
            active: None,
            buf: Vec::new(),
            stats: RngStats::default(),
        }
    }

    pub fn stats(&self) -> RngStats {
        self.stats
    }

    /// Fills one chain; returns the bytes written.
    fn serve(
        entropy: &mut dyn EntropySource,
        buf: &mut Vec<u8>,
        stats: &mut RngStats,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let mut writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(_) => {
                stats.bad_chains += 1;
                return 0;
            }
        };
        let want = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
        buf.resize(want, 0);
        if entropy.fill(&mut buf[..want]).is_err() {
            stats.entropy_errors += 1;
            return 0;
        }
        match writer.write_all(&buf[..want]) {
            Ok(()) => {
                stats.bytes += want as u64;
                want as u32
            }
            Err(_) => {
                stats.bad_chains += 1;
                writer.bytes_written() as u32
            }
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Some(queue) = queues.into_iter().next().filter(|_| got == 1) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoQueue(index));
        }
        let Some(a) = self.active.as_mut() else {
            return Err(DeviceError::NotActivated);
        };
        self.stats.kicks += 1;
        if !a.queue.ready() {
            return Ok(());
        }
        let qerr = |err| DeviceError::Queue { queue: 0, err };
        let mem = &a.mem;
        let mut added = 0u32;
        // At most this many chains per kick: a ring laid over its own used ring (or a driver
        // refilling as fast as we serve) always has more, and the kick would never end. A
        // driver never has more than the queue size outstanding, so a real one never hits it.
        let budget = 4 * u32::from(a.queue.size());
        // Drain, then re-enable kicks and look again: a buffer added between the last pop and
        // re-enabling would otherwise wait for the next kick (virtio 1.2 §2.7.10).
        let mut passes = DrainPasses::default();
        'drain: loop {
            a.queue.disable_notification(mem).map_err(qerr)?;
            let before = added;
            loop {
                if added >= budget {
                    log::debug!("virtio-rng: {budget} chains in one kick; the rest waits");
                    a.queue.enable_notification(mem).map_err(qerr)?;
                    break 'drain;
                }
                // `iter` refuses an available index more than the queue size ahead: an error.
                // (`pop_descriptor_chain` answers None to it, while `enable_notification`
                // below keeps saying there is more: a spin forever.)
                let next = a.queue.iter(mem).map_err(qerr)?.next();
                let Some(chain) = next else { break };
                let head = chain.head_index();
                let len = Rng::serve(
                    self.entropy.as_mut(),
                    &mut self.buf,
                    &mut self.stats,
                    mem,
                    chain,
                );
                a.queue.add_used(mem, head, len).map_err(qerr)?;
                self.stats.requests += 1;
                added += 1;
            }
            let more = a.queue.enable_notification(mem).map_err(qerr)?;
            if !passes.again(more, added > before) {
                break;
            }
        }
        if added > 0
            && wants_interrupt(&a.queue, mem)
            && a.queue.needs_notification(mem).map_err(qerr)?
        {
            self.stats.interrupts += 1;
            if a.interrupt.trigger(VirtioInterruptType::Queue(0)).is_err() {
                self.stats.interrupt_errors += 1;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let s = self.stats;
        format!(
            "requests={} bytes={} bad_chains={}",
            s.requests, s.bytes, s.bad_chains
        )
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let s = self.stats;
        [
            ("requests", s.requests),
            ("bytes", s.bytes),
            ("bad_chains", s.bad_chains),
            ("entropy_errors", s.entropy_errors),
            ("interrupts", s.interrupts),
            ("interrupt_errors", s.interrupt_errors),
            ("kicks", s.kicks),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Without EVENT_IDX, the driver's VRING_AVAIL_F_NO_INTERRUPT flag (virtio-queue leaves it
/// to the device); with EVENT_IDX, `needs_notification` decides.
pub fn wants_interrupt(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    if queue.event_idx_enabled() {
        return true;
    }
    let flags: u16 = mem.read_obj(GuestAddress(queue.avail_ring())).unwrap_or(0);
    u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::virtio::InterruptError;

    /// A counting source: byte i of the stream is i (so tests see what went where).
    struct Counting(u8);
    impl EntropySource for Counting {
        fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
            for b in buf {
                *b = self.0;
                self.0 = self.0.wrapping_add(1);
            }
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<VirtioInterruptType>>);
    impl VirtioInterrupt for Recorder {
        fn trigger(&self, kind: VirtioInterruptType) -> Result<(), InterruptError> {
            self.0.lock().unwrap().push(kind);
            Ok(())
        }
    }

    const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    /// Runs one kick of queue 0 on a thread; fails the test (`what`) if it has not ended
    /// within 10 s (the thread is left spinning). Returns the device and the kick's result.
    fn kick_ends(mut rng: Rng, what: &str) -> (Rng, Result<(), DeviceError>) {
        let (done, wait) = std::sync::mpsc::channel();
        let kick = std::thread::spawn(move || {
            let r = rng.process_queue(0);
            done.send(()).unwrap();
            (rng, r)
        });
        assert!(
            wait.recv_timeout(std::time::Duration::from_secs(10))
                .is_ok(),
            "{what}"
        );
        kick.join().unwrap()
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    #[test]
    fn fills_writable_buffers_and_interrupts() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Chain 0: one 16-byte writable buffer; chain 1: readable 8 + writable 4 + writable 4.
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 16, F_WRITE, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x20_0000, 8, 1, 2)),
            RawDescriptor::from(SplitDescriptor::new(0x30_0000, 4, F_WRITE | 1, 3)),
            RawDescriptor::from(SplitDescriptor::new(0x30_1000, 4, F_WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let irq = Arc::new(Recorder::default());
        let mut rng = Rng::with_source(Box::new(Counting(0)));
        rng.activate(m.clone(), vec![vq.create_queue().unwrap()], irq.clone())
            .unwrap();
        rng.process_queue(0).unwrap();
        assert_eq!(vq.used().idx().load(), 2);
        let e0 = vq.used().ring().ref_at(0).unwrap().load();
        let e1 = vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!((e0.id(), e0.len()), (0, 16));
        assert_eq!((e1.id(), e1.len()), (1, 8));
        let mut b = [0u8; 16];
        m.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(b, core::array::from_fn(|i| i as u8));
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x30_1000)).unwrap();
        assert_eq!(b, [20, 21, 22, 23]);
        // The readable buffer is untouched.
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, [0; 4]);
        assert_eq!(*irq.0.lock().unwrap(), vec![VirtioInterruptType::Queue(0)]);
        let s = rng.stats();
        assert_eq!((s.requests, s.bytes, s.bad_chains), (2, 24, 0));
    }

    /// Found by the virtio_transport fuzz target (fuzz/regressions/virtio_transport/): an
    /// available index more than the queue size ahead made the kick (here: the one at
    /// DRIVER_OK) spin forever. It is an error now, and the queue works once the index is sane.
    #[test]
    fn bogus_available_index_is_an_error_not_a_spin() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0x10_0000, 16, F_WRITE, 0,
        ))];
        vq.add_desc_chains(&descs, 0).unwrap();
        vq.avail().idx().store(0x8000);
        let mut rng = Rng::with_source(Box::new(Counting(0)));
        let irq = Arc::new(Recorder::default());
        rng.activate(m.clone(), vec![vq.create_queue().unwrap()], irq)
            .unwrap();
        let (mut rng, r) = kick_ends(rng, "the queue spins on a bogus available index");
        assert!(
            matches!(r, Err(DeviceError::Queue { queue: 0, .. })),
            "{r:?}"
        );
        assert_eq!(vq.used().idx().load(), 0);
        vq.avail().idx().store(1);
        rng.process_queue(0).unwrap();
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 16);
    }

    /// A driver that makes a chain available again each time one is served (what a ring laid
    /// over its own used ring amounts to; found by the virtio_transport fuzz target, whose
    /// reproducer is in fuzz/regressions/virtio_transport/): the kick ends after its budget.
    #[test]
    fn a_ring_that_never_runs_dry_does_not_hold_the_kick_forever() {
        struct Refill(GuestMemoryMmap, u16);
        const AVAIL: u64 = 0x2000;
        impl EntropySource for Refill {
            fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
                buf.fill(7);
                // Chain 0 again, in the next slot, published.
                let slot = GuestAddress(AVAIL + 4 + 2 * u64::from(self.1 % 16));
                self.0.write_obj(0u16, slot).unwrap();
                self.1 = self.1.wrapping_add(1);
                self.0.write_obj(self.1, GuestAddress(AVAIL + 2)).unwrap();
                Ok(())
            }
        }
        let m = mem();
        // Descriptor 0: 16 writable bytes; slot 0 of the available ring holds it.
        m.write_obj(0x10_0000u64, GuestAddress(0x1000)).unwrap();
        m.write_obj(16u32, GuestAddress(0x1008)).unwrap();
        m.write_obj(F_WRITE, GuestAddress(0x100c)).unwrap();
        m.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(0x3000)).unwrap();
        q.set_ready(true);
        let mut rng = Rng::with_source(Box::new(Refill(m.clone(), 1)));
        rng.activate(m, vec![q], Arc::new(Recorder::default()))
            .unwrap();
        let (rng, r) = kick_ends(rng, "the kick never ends");
        r.unwrap();
        assert_eq!(rng.stats().requests, 4 * 16);
    }

    /// The virtio_transport fuzz target's reproducer (fuzz/regressions/virtio_transport/):
    /// a used ring whose flags lie on the available index. Turning notifications off and on
    /// moves the index itself, so "more to do" never ends though nothing can be popped.
    #[test]
    fn rings_laid_over_each_other_do_not_hold_the_kick_forever() {
        let m = mem();
        let mut q = Queue::new(16).unwrap();
        q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
        // The used ring's flags field is the available ring's index.
        q.try_set_avail_ring_address(GuestAddress(0x2002)).unwrap();
        q.try_set_used_ring_address(GuestAddress(0x2004)).unwrap();
        q.set_ready(true);
        let mut rng = Rng::with_source(Box::new(Counting(0)));
        rng.activate(m, vec![q], Arc::new(Recorder::default()))
            .unwrap();
        // Ending is what counts here; the kick may end in a queue error.
        let _ = kick_ends(rng, "the kick never ends");
    }

    #[test]
    fn buffers_outside_ram_are_returned_empty() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0xc000_0000, 16, F_WRITE, 0)),
            RawDescriptor::from(SplitDescriptor::new(0xff_fff8, 16, F_WRITE, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 4, F_WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut rng = Rng::with_source(Box::new(Counting(0)));
        rng.activate(
            m.clone(),
            vec![vq.create_queue().unwrap()],
            Arc::new(Recorder::default()),
        )
        .unwrap();
        rng.process_queue(0).unwrap();
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(vq.used().ring().ref_at(2).unwrap().load().len(), 4);
        assert!(rng.stats().bad_chains >= 1);
    }

    #[test]
    fn huge_buffers_get_at_most_the_cap() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                0x10_0000, 0x40_0000, F_WRITE, 0,
            ))],
            0,
        )
        .unwrap();
        let mut rng = Rng::new();
        rng.activate(
            m.clone(),
            vec![vq.create_queue().unwrap()],
            Arc::new(Recorder::default()),
        )
        .unwrap();
        rng.process_queue(0).unwrap();
        let e = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(e.len() as usize, MAX_BYTES_PER_REQUEST);
        // getrandom: 64 KiB of zeros would be astonishing.
        let mut b = vec![0u8; 64];
        m.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert!(b.iter().any(|&x| x != 0));
    }

    #[test]
    fn not_activated_and_reset() {
        let mut rng = Rng::new();
        assert!(matches!(
            rng.process_queue(0),
            Err(DeviceError::NotActivated)
        ));
        assert!(matches!(rng.process_queue(1), Err(DeviceError::NoQueue(1))));
        let m = mem();
        assert!(rng
            .activate(m, vec![], Arc::new(Recorder::default()))
            .is_err());
        rng.reset();
        assert!(matches!(
            rng.process_queue(0),
            Err(DeviceError::NotActivated)
        ));
    }
}
