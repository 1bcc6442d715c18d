//! The transport driven as a driver would: a mock driver over config space and BAR0, with a
//! `MockSplitQueue` in in-memory guest RAM, fake KVM routing and fake ioeventfds.
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::*;
use super::*;
use crate::kvm::ioevent::FakeIoEvents;
use crate::kvm::irq::{FakeIrqRouting, MsiMessage};
use crate::pci::config::{CAPABILITIES_POINTER, COMMAND};
use crate::pci::msix::{MSIX_CAP_ID, MSIX_ENABLE, MSIX_FUNCTION_MASK};
use crate::virtio::rng::Rng;
use crate::virtio::{
    feature, VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRV,
    VIRTIO_CONFIG_S_DRIVER_OK as DOK, VIRTIO_CONFIG_S_FEATURES_OK as FOK,
    VIRTIO_CONFIG_S_NEEDS_RESET as NRS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

const BAR_ADDR: u64 = 0xc000_0000;
const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const QSIZE: u16 = 16;

// Common config offsets.
const DFSEL: u64 = 0x00;
const DF: u64 = 0x04;
const GFSEL: u64 = 0x08;
const GF: u64 = 0x0c;
const MSIX_CONFIG: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const STATUS: u64 = 0x14;
const GENERATION: u64 = 0x15;
const Q_SELECT: u64 = 0x16;
const Q_SIZE: u64 = 0x18;
const Q_MSIX: u64 = 0x1a;
const Q_ENABLE: u64 = 0x1c;
const Q_NOTIFY_OFF: u64 = 0x1e;
const Q_DESC: u64 = 0x20;
const Q_DRIVER: u64 = 0x28;
const Q_DEVICE: u64 = 0x30;

struct Driver {
    dev: VirtioPciDevice,
    router: Arc<FakeIrqRouting>,
    ioevents: Arc<FakeIoEvents>,
    mem: GuestMemoryMmap,
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

fn driver(notify: NotifyMode, irq: IrqMode) -> Driver {
    let mem = mem();
    let router = FakeIrqRouting::new();
    let ioevents = FakeIoEvents::new();
    let mut dev = VirtioPciDevice::new(
        Box::new(Rng::new()),
        DeviceOptions { notify, irq },
        mem.clone(),
        router.clone(),
        ioevents.clone(),
    )
    .unwrap();
    dev.bar_mapped(BAR, Some(BAR_ADDR));
    Driver {
        dev,
        router,
        ioevents,
        mem,
    }
}

fn le(v: u64, len: usize) -> Vec<u8> {
    v.to_le_bytes()[..len].to_vec()
}

fn from_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(a)
}

impl Driver {
    fn cfg_read(&mut self, off: usize, len: usize) -> u64 {
        let mut b = vec![0; len];
        self.dev.config_read(off, &mut b);
        from_le(&b)
    }

    fn cfg_write(&mut self, off: usize, v: u64, len: usize) {
        self.dev.config_write(off, &le(v, len));
    }

    fn read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = vec![0; len];
        self.dev.bar_read(BAR, COMMON.offset + off, &mut b);
        from_le(&b)
    }

    fn write(&mut self, off: u64, v: u64, len: usize) {
        self.dev.bar_write(BAR, COMMON.offset + off, &le(v, len));
    }

    fn status(&mut self) -> u32 {
        self.read(STATUS, 1) as u32
    }

    fn set_status(&mut self, s: u32) {
        self.write(STATUS, u64::from(s), 1);
    }

    /// (offset, id, virtio cfg_type or 0) of every capability.
    fn caps(&mut self) -> Vec<(usize, u8, u8)> {
        let mut v = Vec::new();
        let mut p = self.cfg_read(CAPABILITIES_POINTER, 1) as usize;
        while p != 0 && v.len() < 48 {
            let id = self.cfg_read(p, 1) as u8;
            let t = if id == PCI_CAP_ID_VENDOR {
                self.cfg_read(p + 3, 1) as u8
            } else {
                0
            };
            v.push((p, id, t));
            p = self.cfg_read(p + 1, 1) as usize;
        }
        v
    }

    fn cap(&mut self, id: u8, cfg_type: u8) -> usize {
        self.caps()
            .into_iter()
            .find(|&(_, i, t)| i == id && t == cfg_type)
            .unwrap()
            .0
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; whether FEATURES_OK stuck.
    fn negotiate(&mut self, features: u64) -> bool {
        self.set_status(0);
        assert_eq!(self.status(), 0);
        self.set_status(ACK);
        self.set_status(ACK | DRV);
        for sel in 0..2 {
            self.write(GFSEL, sel, 4);
            self.write(GF, (features >> (32 * sel)) & 0xffff_ffff, 4);
        }
        self.set_status(ACK | DRV | FOK);
        self.status() & FOK != 0
    }

    /// MSI-X on, vector 0 for config (data 0x40) and 1 for queue 0 (data 0x41), unmasked.
    fn setup_msix(&mut self) {
        let cap = self.cap(MSIX_CAP_ID, 0);
        for v in 0..2u64 {
            let e = MSIX_TABLE.offset + 16 * v;
            self.dev.bar_write(BAR, e, &0xfee0_0000u32.to_le_bytes());
            self.dev.bar_write(BAR, e + 4, &0u32.to_le_bytes());
            self.dev
                .bar_write(BAR, e + 8, &(0x40 + v as u32).to_le_bytes());
            self.dev.bar_write(BAR, e + 12, &0u32.to_le_bytes());
        }
        self.cfg_write(cap + 2, u64::from(MSIX_ENABLE), 2);
        self.write(MSIX_CONFIG, 0, 2);
        assert_eq!(self.read(MSIX_CONFIG, 2), 0);
    }

    fn setup_queue(&mut self, vq: &MockSplitQueue<GuestMemoryMmap>) {
        self.write(Q_SELECT, 0, 2);
        assert_eq!(self.read(Q_SIZE, 2), 256);
        self.write(Q_SIZE, u64::from(QSIZE), 2);
        self.write(Q_MSIX, 1, 2);
        assert_eq!(self.read(Q_MSIX, 2), 1);
        self.write(Q_DESC, vq.desc_table_addr().0, 8);
        // The driver ring as two 32-bit halves, as Linux writes 64-bit fields.
        self.write(Q_DRIVER, vq.avail_addr().0 & 0xffff_ffff, 4);
        self.write(Q_DRIVER + 4, vq.avail_addr().0 >> 32, 4);
        self.write(Q_DEVICE, vq.used_addr().0, 8);
        self.write(Q_ENABLE, 1, 2);
        assert_eq!(self.read(Q_ENABLE, 2), 1);
    }

    /// The whole sequence up to DRIVER_OK.
    fn bring_up(&mut self, vq: &MockSplitQueue<GuestMemoryMmap>) {
        assert!(self.negotiate(feature(VIRTIO_F_VERSION_1)));
        self.setup_msix();
        self.setup_queue(vq);
        self.set_status(ACK | DRV | FOK | DOK);
        assert_eq!(self.status(), ACK | DRV | FOK | DOK);
    }

    fn kick_by_exit(&mut self, q: u16) {
        self.dev.bar_write(
            BAR,
            NOTIFY.offset + u64::from(q) * u64::from(NOTIFY_OFF_MULTIPLIER),
            &q.to_le_bytes(),
        );
    }
}

fn add_buffer(vq: &MockSplitQueue<GuestMemoryMmap>, index: u16, addr: u64, len: u32) {
    vq.add_desc_chains(
        &[RawDescriptor::from(SplitDescriptor::new(
            addr, len, F_WRITE, 0,
        ))],
        index,
    )
    .unwrap();
}

fn msg(data: u32) -> MsiMessage {
    MsiMessage {
        address: 0xfee0_0000,
        data,
        devid: 0,
    }
}

#[test]
fn identity_and_capabilities_are_what_linux_expects() {
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    assert_eq!(d.cfg_read(0, 4), 0x1044_1af4);
    assert_eq!(d.cfg_read(8, 1), 1, "revision 1");
    assert_eq!(d.cfg_read(0x2c, 4), 0x1100_1af4);
    assert_eq!(d.cfg_read(0x0b, 1), 0xff);
    assert_eq!(d.cfg_read(0x3d, 1), 0, "no INTx pin");
    let caps = d.caps();
    let types: Vec<u8> = caps.iter().map(|c| c.2).collect();
    assert_eq!(caps[0].1, MSIX_CAP_ID);
    assert_eq!(
        types[1..],
        [
            CAP_COMMON_CFG,
            CAP_ISR_CFG,
            CAP_DEVICE_CFG,
            CAP_NOTIFY_CFG,
            CAP_PCI_CFG
        ]
    );
    for &(p, id, t) in &caps[1..5] {
        assert_eq!(id, PCI_CAP_ID_VENDOR);
        assert_eq!(d.cfg_read(p + CAP_BAR, 1), 0);
        let off = d.cfg_read(p + CAP_OFFSET, 4);
        let len = d.cfg_read(p + CAP_LENGTH, 4);
        let want = match t {
            CAP_COMMON_CFG => COMMON,
            CAP_ISR_CFG => ISR,
            CAP_DEVICE_CFG => DEVICE,
            _ => NOTIFY,
        };
        assert_eq!((off, len), (want.offset, want.len));
    }
    let notify = d.cap(PCI_CAP_ID_VENDOR, CAP_NOTIFY_CFG);
    assert_eq!(d.cfg_read(notify + 2, 1), 20, "cap_len");
    assert_eq!(d.cfg_read(notify + 16, 4), 4, "notify_off_multiplier");
    let msix = caps[0].0;
    assert_eq!(d.cfg_read(msix + 2, 2), 1, "2 vectors");
    assert_eq!(d.cfg_read(msix + 4, 4), MSIX_TABLE.offset);
    assert_eq!(d.cfg_read(msix + 8, 4), MSIX_PBA.offset);
    // Common config as the driver first sees it.
    assert_eq!(d.read(NUM_QUEUES, 2), 1);
    assert_eq!(d.read(DF, 4), feature(VIRTIO_RING_F_EVENT_IDX) | 1 << 28);
    d.write(DFSEL, 1, 4);
    assert_eq!(d.read(DF, 4), 1, "VERSION_1 is bit 32");
    d.write(DFSEL, 2, 4);
    assert_eq!(d.read(DF, 4), 0);
    assert_eq!(d.read(Q_NOTIFY_OFF, 2), 0);
    // The BAR is 32-bit memory, 32 KiB.
    assert_eq!(
        d.dev.config().bar(0).map(|b| (b.kind, b.size)),
        Some((BarKind::Mem32, 0x8000))
    );
}

#[test]
fn ioeventfd_and_irqfd_full_sequence() {
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    d.bring_up(&vq);
    // One ioeventfd, at queue 0's notify address; routes and irqfds for vectors 0 and 1.
    assert_eq!(d.ioevents.addresses(), vec![BAR_ADDR + NOTIFY.offset]);
    {
        let r = d.router.lock();
        let mut datas: Vec<u32> = r.routes.values().map(|m| m.data).collect();
        datas.sort_unstable();
        assert_eq!(datas, vec![0x40, 0x41]);
        assert_eq!(r.irqfds.len(), 2);
    }
    add_buffer(&vq, 0, 0x10_0000, 32);
    // KVM signalled the eventfd; the event loop calls:
    d.dev.queue_notified(0);
    assert_eq!(vq.used().idx().load(), 1);
    let e = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((e.id(), e.len()), (0, 32));
    assert_eq!(d.dev.interrupt().stats().delivered, 1);
    assert_eq!(d.dev.interrupt().lock_msix().stats().delivered, 1);
    // ISR is read-to-clear.
    let mut isr = [0u8; 1];
    d.dev.bar_read(BAR, ISR.offset, &mut isr);
    assert_eq!(isr[0], 1);
    d.dev.bar_read(BAR, ISR.offset, &mut isr);
    assert_eq!(isr[0], 0);
    assert_eq!(d.dev.stats().ioeventfd_kicks, 1);
    assert_eq!(d.dev.stats().activations, 1);
}

#[test]
fn notify_exit_and_signal_msi() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    d.bring_up(&vq);
    assert!(
        d.ioevents.addresses().is_empty(),
        "notify=exit: no ioeventfd"
    );
    assert!(d.dev.notify_events().unwrap().is_empty());
    assert!(d.router.lock().irqfds.is_empty(), "irq=msi: no irqfd");
    add_buffer(&vq, 0, 0x10_0000, 8);
    // A 16-bit write of the queue index: the device runs right here.
    d.kick_by_exit(0);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(d.router.lock().signalled, vec![msg(0x41)]);
    assert_eq!(d.dev.stats().exit_kicks, 1);
}

#[test]
fn event_idx_negotiated_and_used() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    assert!(d.negotiate(feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX)));
    d.setup_msix();
    d.setup_queue(&vq);
    d.set_status(ACK | DRV | FOK | DOK);
    add_buffer(&vq, 0, 0x10_0000, 8);
    d.kick_by_exit(0);
    assert_eq!(vq.used().idx().load(), 1);
    // used_event (0) was crossed: one interrupt.
    assert_eq!(d.router.lock().signalled.len(), 1);
}

#[test]
fn exit_kick_in_ioeventfd_mode_goes_to_the_event_loop() {
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let evts = d.dev.notify_events().unwrap();
    d.bring_up(&vq);
    add_buffer(&vq, 0, 0x10_0000, 8);
    d.kick_by_exit(0);
    // Not processed on the vCPU thread: the eventfd is signalled instead.
    assert_eq!(vq.used().idx().load(), 0);
    assert_eq!(evts[0].1.read().unwrap(), 1);
    d.dev.queue_notified(0);
    assert_eq!(vq.used().idx().load(), 1);
}

#[test]
fn kicks_before_driver_ok_are_served_at_activation() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    assert!(d.negotiate(feature(VIRTIO_F_VERSION_1)));
    d.setup_msix();
    d.setup_queue(&vq);
    add_buffer(&vq, 0, 0x10_0000, 8);
    d.kick_by_exit(0);
    assert_eq!(vq.used().idx().load(), 0);
    assert_eq!(d.dev.stats().early_kicks, 1);
    d.set_status(ACK | DRV | FOK | DOK);
    assert_eq!(vq.used().idx().load(), 1);
}

#[test]
fn reset_unregisters_ioeventfds_irqfds_and_routes() {
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    d.bring_up(&vq);
    assert_eq!(d.ioevents.addresses().len(), 1);
    d.set_status(0);
    assert_eq!(d.status(), 0);
    assert!(d.ioevents.addresses().is_empty());
    assert!(d.router.lock().irqfds.is_empty());
    assert!(d.router.lock().routes.is_empty());
    assert_eq!(d.read(MSIX_CONFIG, 2), u64::from(NO_VECTOR));
    assert_eq!(d.read(Q_SIZE, 2), 256);
    assert_eq!(d.read(Q_ENABLE, 2), 0);
    assert_eq!(d.read(Q_DESC, 8), 0);
    assert_eq!(d.read(GF, 4), 0);
    // The device is back to its initial state: a kick is only counted.
    add_buffer(&vq, 0, 0x10_0000, 8);
    d.dev.queue_notified(0);
    assert_eq!(vq.used().idx().load(), 0);
    // And it comes up again (the MSI-X table survived the reset).
    let vq2 = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), QSIZE);
    assert!(d.negotiate(feature(VIRTIO_F_VERSION_1)));
    d.write(MSIX_CONFIG, 0, 2);
    d.setup_queue(&vq2);
    d.set_status(ACK | DRV | FOK | DOK);
    add_buffer(&vq2, 0, 0x10_0000, 8);
    d.dev.queue_notified(0);
    assert_eq!(vq2.used().idx().load(), 1);
    assert_eq!(d.router.lock().irqfds.len(), 2);
    assert_eq!(d.dev.stats().resets, 3);
}

#[test]
fn features_not_offered_leave_features_ok_clear() {
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    assert!(!d.negotiate(feature(VIRTIO_F_VERSION_1) | 1 << 5));
    assert!(
        !d.negotiate(feature(VIRTIO_RING_F_EVENT_IDX)),
        "no VERSION_1"
    );
    assert!(!d.negotiate(feature(VIRTIO_F_VERSION_1) | 1 << 63));
    assert_eq!(d.dev.stats().bad_features, 3);
    // Once FEATURES_OK is set, feature writes are ignored.
    assert!(d.negotiate(feature(VIRTIO_F_VERSION_1)));
    d.write(GFSEL, 0, 4);
    d.write(GF, 1 << 29, 4);
    assert_eq!(d.read(GF, 4), 0);
    assert_eq!(d.dev.stats().read_only_writes, 1);
    // Selects past the two words read 0 and ignore writes.
    d.write(GFSEL, 7, 4);
    assert_eq!(d.read(GF, 4), 0);
}

#[test]
fn driver_ok_without_features_ok_needs_reset() {
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    d.set_status(ACK);
    d.set_status(ACK | DRV);
    d.set_status(ACK | DRV | DOK);
    assert_eq!(d.status(), ACK | DRV | NRS);
    assert_eq!(d.dev.stats().driver_ok_without_features, 1);
    assert_eq!(d.dev.stats().activations, 0);
    // Clearing bits without a reset is refused and counted.
    d.set_status(ACK);
    assert_eq!(d.status(), ACK | DRV | NRS);
    assert_eq!(d.dev.stats().bad_status, 1);
    d.set_status(0);
    assert_eq!(d.status(), 0);
}

#[test]
fn bad_queue_setups_need_reset() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    type Setup = fn(&mut Driver, &MockSplitQueue<GuestMemoryMmap>);
    let cases: [(&str, Setup); 7] = [
        ("size 0", |d, _| d.write(Q_SIZE, 0, 2)),
        ("size 3", |d, _| d.write(Q_SIZE, 3, 2)),
        ("size above max", |d, _| d.write(Q_SIZE, 512, 2)),
        ("desc outside RAM", |d, _| d.write(Q_DESC, 0xc000_0000, 8)),
        ("used past RAM end", |d, _| d.write(Q_DEVICE, 0xff_fff0, 8)),
        ("desc misaligned", |d, vq| {
            d.write(Q_DESC, vq.desc_table_addr().0 + 8, 8)
        }),
        ("used misaligned", |d, vq| {
            d.write(Q_DEVICE, vq.used_addr().0 + 2, 8)
        }),
    ];
    for (what, bad) in cases {
        let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
        assert!(d.negotiate(feature(VIRTIO_F_VERSION_1)));
        d.write(Q_SELECT, 0, 2);
        d.write(Q_SIZE, u64::from(QSIZE), 2);
        d.write(Q_DESC, vq.desc_table_addr().0, 8);
        d.write(Q_DRIVER, vq.avail_addr().0, 8);
        d.write(Q_DEVICE, vq.used_addr().0, 8);
        bad(&mut d, &vq);
        d.write(Q_ENABLE, 1, 2);
        assert_eq!(d.read(Q_ENABLE, 2), 0, "{what}");
        assert_ne!(d.status() & NRS, 0, "{what}");
        assert_eq!(d.dev.stats().bad_queues, 1, "{what}");
        // DRIVER_OK is not taken while the device needs a reset.
        d.set_status(ACK | DRV | FOK | DOK);
        assert_eq!(d.status() & DOK, 0, "{what}");
        d.set_status(0);
        assert_eq!(d.status(), 0, "{what}");
    }
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    d.write(Q_SIZE, 0, 2);
    d.write(Q_SIZE, 100, 2);
    assert_eq!(d.dev.stats().bad_queue_sizes, 2);
}

#[test]
fn read_only_fields_and_locked_queues() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    d.write(NUM_QUEUES, 9, 2);
    d.write(DF, 0xffff_ffff, 4);
    d.write(GENERATION, 5, 1);
    d.write(Q_NOTIFY_OFF, 3, 2);
    assert_eq!(d.read(NUM_QUEUES, 2), 1);
    assert_eq!(d.read(GENERATION, 1), 0);
    assert_eq!(d.read(Q_NOTIFY_OFF, 2), 0);
    assert_eq!(d.dev.stats().read_only_writes, 4);
    // ISR writes are dropped.
    d.dev.bar_write(BAR, ISR.offset, &[1]);
    assert_eq!(d.dev.stats().read_only_writes, 5);
    // An enabled queue's registers are locked.
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    assert!(d.negotiate(feature(VIRTIO_F_VERSION_1)));
    d.setup_msix();
    d.setup_queue(&vq);
    d.write(Q_SIZE, 32, 2);
    d.write(Q_DESC, 0x9000, 8);
    assert_eq!(d.read(Q_SIZE, 2), u64::from(QSIZE));
    assert_eq!(d.read(Q_DESC, 8), vq.desc_table_addr().0);
    // A queue that does not exist reads size 0 and NO_VECTOR, and ignores writes.
    d.write(Q_SELECT, 5, 2);
    assert_eq!(d.read(Q_SIZE, 2), 0);
    assert_eq!(d.read(Q_MSIX, 2), u64::from(NO_VECTOR));
    d.write(Q_ENABLE, 1, 2);
    d.write(Q_SIZE, 8, 2);
    assert_eq!(d.read(Q_ENABLE, 2), 0);
    assert_eq!(d.status() & NRS, 0);
}

#[test]
fn vectors_past_the_table_read_back_no_vector() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    d.write(MSIX_CONFIG, 2, 2);
    assert_eq!(d.read(MSIX_CONFIG, 2), u64::from(NO_VECTOR));
    d.write(Q_MSIX, 0x7ff, 2);
    assert_eq!(d.read(Q_MSIX, 2), u64::from(NO_VECTOR));
    assert_eq!(d.dev.stats().bad_vectors, 2);
    d.write(Q_MSIX, 1, 2);
    assert_eq!(d.read(Q_MSIX, 2), 1);
}

#[test]
fn msix_out_of_range_and_masked_vectors() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    d.bring_up(&vq);
    // Two entries: 32 bytes of table; past it is out of range.
    d.dev.bar_write(BAR, MSIX_TABLE.offset + 32, &[0xff; 4]);
    d.dev
        .bar_write(BAR, MSIX_TABLE.offset + 0xffc, &0u32.to_le_bytes());
    let mut b = [0xaa; 4];
    d.dev.bar_read(BAR, MSIX_TABLE.offset + 0x40, &mut b);
    assert_eq!(b, [0; 4]);
    d.dev.bar_write(BAR, MSIX_PBA.offset, &[0xff; 8]);
    assert_eq!(d.dev.interrupt().lock_msix().stats().bad_accesses, 4);
    // Mask vector 1, kick: pending, not sent.
    d.dev
        .bar_write(BAR, MSIX_TABLE.offset + 16 + 12, &1u32.to_le_bytes());
    add_buffer(&vq, 0, 0x10_0000, 8);
    d.kick_by_exit(0);
    assert_eq!(vq.used().idx().load(), 1);
    assert!(d.router.lock().signalled.is_empty());
    let mut pba = [0u8; 8];
    d.dev.bar_read(BAR, MSIX_PBA.offset, &mut pba);
    assert_eq!(pba[0], 0b10);
    // Unmask: delivered now, pending bit clear.
    d.dev
        .bar_write(BAR, MSIX_TABLE.offset + 16 + 12, &0u32.to_le_bytes());
    assert_eq!(d.router.lock().signalled, vec![msg(0x41)]);
    d.dev.bar_read(BAR, MSIX_PBA.offset, &mut pba);
    assert_eq!(pba[0], 0);
    // Function mask through the capability, then off.
    let cap = d.cap(MSIX_CAP_ID, 0);
    d.cfg_write(cap + 2, u64::from(MSIX_ENABLE | MSIX_FUNCTION_MASK), 2);
    add_buffer(&vq, 1, 0x10_1000, 8);
    d.kick_by_exit(0);
    assert_eq!(d.router.lock().signalled.len(), 1);
    d.cfg_write(cap + 2, u64::from(MSIX_ENABLE), 2);
    assert_eq!(d.router.lock().signalled.len(), 2);
}

#[test]
fn bad_notifies_are_counted() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    d.kick_by_exit(1);
    d.kick_by_exit(500);
    d.dev.bar_write(BAR, NOTIFY.offset + 2, &[0, 0]);
    d.dev.queue_notified(9);
    assert_eq!(d.dev.stats().bad_notifies, 4);
}

#[test]
fn pci_cfg_window_reaches_bar0() {
    let mut d = driver(NotifyMode::Exit, IrqMode::Msi);
    let cap = d.cap(PCI_CAP_ID_VENDOR, CAP_PCI_CFG);
    // num_queues through the window.
    d.cfg_write(cap + CAP_BAR, 0, 1);
    d.cfg_write(cap + CAP_OFFSET, COMMON.offset + NUM_QUEUES, 4);
    d.cfg_write(cap + CAP_LENGTH, 2, 4);
    assert_eq!(d.cfg_read(cap + PCI_CFG_DATA, 2), 1);
    // A status write through the window.
    d.cfg_write(cap + CAP_OFFSET, COMMON.offset + STATUS, 4);
    d.cfg_write(cap + CAP_LENGTH, 1, 4);
    d.cfg_write(cap + PCI_CFG_DATA, u64::from(ACK), 1);
    assert_eq!(d.status(), ACK);
    // Bad windows: misaligned, wrong length, past the BAR, another BAR.
    for (bar, off, len) in [(0u64, 0x13u64, 2u64), (0, 0, 3), (0, 0x8000, 4), (2, 0, 4)] {
        d.cfg_write(cap + CAP_BAR, bar, 1);
        d.cfg_write(cap + CAP_OFFSET, off, 4);
        d.cfg_write(cap + CAP_LENGTH, len, 4);
        d.cfg_read(cap + PCI_CFG_DATA, 4);
        d.cfg_write(cap + PCI_CFG_DATA, 0xffff_ffff, 4);
    }
    assert_eq!(d.dev.stats().bad_pci_cfg, 8);
    assert_eq!(d.status(), ACK);
}

#[test]
fn any_width_at_any_offset_never_panics() {
    let mut d = driver(NotifyMode::Ioeventfd, IrqMode::Irqfd);
    let mem = d.mem.clone();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    d.bring_up(&vq);
    for off in 0..BAR_SIZE + 16 {
        for len in [1usize, 2, 4, 8] {
            let mut b = vec![0; len];
            d.dev.bar_read(BAR, off, &mut b);
            // Skip the status byte so the run does not just reset over and over.
            if !(COMMON.offset..COMMON.offset + 0x40).contains(&off) {
                d.dev.bar_write(BAR, off, &vec![0xa5; len]);
            }
        }
    }
    for off in 0..0x1010 {
        for len in [1usize, 2, 4] {
            let mut b = vec![0; len];
            d.dev.config_read(off, &mut b);
            if off != COMMAND {
                d.dev.config_write(off, &vec![0x5a; len]);
            }
        }
    }
    for off in 0..0x40u64 {
        for len in [1usize, 2, 4, 8] {
            d.dev.bar_write(BAR, COMMON.offset + off, &vec![0xff; len]);
            d.dev.bar_write(BAR, COMMON.offset + off, &vec![0; len]);
        }
    }
    d.dev.bar_read(7, 0, &mut [0; 4]);
    d.dev.bar_write(7, 0, &[0; 4]);
    // Still a virtio device with its identity.
    assert_eq!(d.cfg_read(0, 4), 0x1044_1af4);
}

#[test]
fn bar_moves_move_the_ioeventfds() {
    use crate::bus::{Bus, BusKind};
    use crate::pci::root::PciRoot;
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let mem = mem();
    let root = PciRoot::new(mmio.clone(), 0x100_0000).unwrap();
    let router = FakeIrqRouting::new();
    let ioevents = FakeIoEvents::new();
    let dev = Arc::new(std::sync::Mutex::new(
        VirtioPciDevice::new(
            Box::new(Rng::new()),
            DeviceOptions::default(),
            mem.clone(),
            router,
            ioevents.clone(),
        )
        .unwrap(),
    ));
    let slot = root.add_device(dev.clone()).unwrap();
    let base = root.bar_mapping(slot, 0).unwrap();
    assert_eq!(base, root.layout().mmio32_start);
    let regions: Vec<String> = mmio.map().into_iter().map(|e| e.region).collect();
    for r in [
        "common",
        "isr",
        "device",
        "notify",
        "msix-table",
        "msix-pba",
    ] {
        assert!(regions.contains(&format!("bar0 {r}")), "{regions:?}");
    }
    // Bring it up through the MMIO bus, as the guest would.
    let w = |off: u64, v: u64, len: usize| {
        let _ = mmio.write(base + off, &le(v, len));
    };
    let vq = MockSplitQueue::new(&mem, QSIZE);
    w(STATUS, u64::from(ACK | DRV), 1);
    w(GFSEL, 1, 4);
    w(GF, 1, 4);
    w(STATUS, u64::from(ACK | DRV | FOK), 1);
    w(Q_SIZE, u64::from(QSIZE), 2);
    w(Q_DESC, vq.desc_table_addr().0, 8);
    w(Q_DRIVER, vq.avail_addr().0, 8);
    w(Q_DEVICE, vq.used_addr().0, 8);
    w(Q_ENABLE, 1, 2);
    w(STATUS, u64::from(ACK | DRV | FOK | DOK), 1);
    assert_eq!(ioevents.addresses(), vec![base + NOTIFY.offset]);
    // The guest moves BAR0: bus ranges and the ioeventfd follow.
    root.config_write(slot, 0, 0x10, &0xd000_0000u32.to_le_bytes());
    assert_eq!(ioevents.addresses(), vec![0xd000_0000 + NOTIFY.offset]);
    assert!(mmio.map().iter().any(|e| e.base == 0xd000_3000));
    // Memory decode off: no ioeventfd; on: back.
    root.config_write(slot, 0, COMMAND, &0u16.to_le_bytes());
    assert!(ioevents.addresses().is_empty());
    root.config_write(slot, 0, COMMAND, &2u16.to_le_bytes());
    assert_eq!(ioevents.addresses(), vec![0xd000_0000 + NOTIFY.offset]);
    // A refused place (over RAM) leaves no ioeventfd behind.
    root.config_write(slot, 0, 0x10, &0x0010_0000u32.to_le_bytes());
    assert!(ioevents.addresses().is_empty());
    assert_eq!(root.stats().bar_conflicts, 1);
    let map = root.format_map();
    assert!(
        map.contains("virtio-rng notify=ioeventfd,irq=irqfd"),
        "{map}"
    );
}
