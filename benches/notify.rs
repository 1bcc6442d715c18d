//! Notify and interrupt benchmark: trapvisor's virtio-pci paths against bare kvm-ioctls /
//! epoll floors, measured in the same run (rounds interleaved, medians).
//!
//! 1. **Kick → device handler entry, guest-free** (notify=ioeventfd's bottom half): a host
//!    thread writes a queue's eventfd, as KVM does when it matches an ioeventfd, and waits for
//!    the handler; the time from the write to the entry of `VirtioDevice::process_queue`
//!    through trapvisor's event loop and virtio-pci transport, against a bare thread in
//!    `epoll_wait` + `read`. Ping-pong, so nothing coalesces.
//! 2. **Kick cost on a real vCPU**: a real-mode guest (1 MiB of RAM, so that the notify
//!    address just above it is reachable from real mode) writes its queue's notify address N
//!    times; the virtio BAR is moved there through the PCI root. Per kick, from the vCPU:
//!    * notify=exit: every write exits; trapvisor dispatches it (`handle_exit` → MMIO bus →
//!      transport → virtio-rng's `process_queue`) against a bare loop that ignores the exit;
//!    * notify=ioeventfd: no exit; trapvisor's transport registers the ioeventfd and its event
//!      loop runs the device, against a raw `KVM_IOEVENTFD` and a bare epoll thread.
//! 3. **Interrupt injection**: `VirtioInterrupt::trigger` (ISR, vector lookup, MSI-X state,
//!    then an irqfd write or KVM_SIGNAL_MSI) against a raw irqfd write on an MSI route and a
//!    raw KVM_SIGNAL_MSI ioctl.
//!
//! `cargo bench --bench notify` (options: `-- --kicks N --irqs M --rounds R`).
use std::hint::spin_loop;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_msi;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VcpuExit, VcpuFd};
use trapvisor::arch::{self, BootConfig, KernelSource};
use trapvisor::bus::{Bus, BusKind};
use trapvisor::event_loop::EventLoop;
use trapvisor::kvm::exit::{handle_exit, Buses, Exit};
use trapvisor::kvm::ioevent::FakeIoEvents;
use trapvisor::kvm::irq::{FakeIrqRouting, IrqRouting, KvmIrqRouter, MsiMessage};
use trapvisor::kvm::vm::Vm;
use trapvisor::pci::platform::PciPlatform;
use trapvisor::pci::PciDevice;
use trapvisor::virtio::rng::Rng;
use trapvisor::virtio::transport::VirtioPciDevice;
use trapvisor::virtio::{
    feature, ActivateError, DeviceError, DeviceOptions, IrqMode, NotifyMode, VirtioDevice,
    VirtioInterrupt, VirtioInterruptType, VIRTIO_F_VERSION_1,
};
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM for the real-mode guest: the BAR goes right above it.
const RAM: u64 = 1 << 20;
const BAR_GPA: u64 = RAM;
const NOTIFY_GPA: u64 = BAR_GPA + 0x3000;
const MSI: MsiMessage = MsiMessage {
    address: 0xfee0_0000,
    data: 0x30,
    devid: 0,
};

// ---------------------------------------------------------------------------------------------
// A driver's bring-up, through BAR0 and config writes.

/// ACK, DRIVER, VERSION_1, FEATURES_OK, MSI-X entry 0 → MSI, queue 0 (16 entries at 0x8000)
/// on vector 0, DRIVER_OK.
fn bring_up(bar: &mut dyn FnMut(u64, &[u8]), cfg: &mut dyn FnMut(usize, &[u8])) {
    let mut w = |off: u64, v: u64, len: usize| bar(off, &v.to_le_bytes()[..len]);
    w(0x14, 1, 1);
    w(0x14, 3, 1);
    w(0x08, 1, 4);
    w(0x0c, 1, 4);
    w(0x14, 0xb, 1);
    w(0x4000, MSI.address, 4);
    w(0x4004, 0, 4);
    w(0x4008, u64::from(MSI.data), 4);
    w(0x400c, 0, 4);
    w(0x10, 0xffff, 2);
    w(0x16, 0, 2);
    w(0x18, 16, 2);
    w(0x1a, 0, 2);
    w(0x20, 0x8000, 8);
    w(0x28, 0x8100, 8);
    w(0x30, 0x8200, 8);
    w(0x1c, 1, 2);
    // MSI-X enable: message control of the first capability (0x40).
    cfg(0x42, &0x8000u16.to_le_bytes());
    w(0x14, 0xf, 1);
}

// ---------------------------------------------------------------------------------------------
// 1. Kick → handler entry, guest-free.

/// Records when its queue handler is entered.
struct Probe {
    epoch: Instant,
    stamp: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        4
    }
    fn name(&self) -> &'static str {
        "probe"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }
    fn activate(
        &mut self,
        _: GuestMemoryMmap,
        _: Vec<Queue>,
        _: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
    fn process_queue(&mut self, _: usize) -> Result<(), DeviceError> {
        self.stamp
            .store(self.epoch.elapsed().as_nanos() as u64, Ordering::Release);
        self.count.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Writes `evt`, waits until `count` moves, takes `stamp - write time`; `n` times.
fn ping_pong(
    evt: &EventFd,
    epoch: Instant,
    stamp: &AtomicU64,
    count: &AtomicU64,
    n: usize,
) -> Vec<u64> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let before = count.load(Ordering::Acquire);
        let t0 = epoch.elapsed().as_nanos() as u64;
        evt.write(1).unwrap();
        while count.load(Ordering::Acquire) == before {
            spin_loop();
        }
        lat.push(stamp.load(Ordering::Acquire).saturating_sub(t0));
    }
    lat
}

/// The floor: a thread in epoll_wait, reading the eventfd and stamping.
fn wake_bare(n: usize) -> Vec<u64> {
    let epoch = Instant::now();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let stamp = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let (e, s, st, c) = (
        evt.try_clone().unwrap(),
        stop.try_clone().unwrap(),
        stamp.clone(),
        count.clone(),
    );
    let t = std::thread::spawn(move || {
        let ep = Epoll::new().unwrap();
        ep.ctl(
            ControlOperation::Add,
            e.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
        ep.ctl(
            ControlOperation::Add,
            s.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .unwrap();
        let mut evs = [EpollEvent::default(); 2];
        loop {
            let k = ep.wait(-1, &mut evs).unwrap_or(0);
            if evs[..k].iter().any(|x| x.data() == 1) {
                return;
            }
            if e.read().is_ok() {
                st.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                c.fetch_add(1, Ordering::AcqRel);
            }
        }
    });
    let lat = ping_pong(&evt, epoch, &stamp, &count, n);
    stop.write(1).unwrap();
    t.join().unwrap();
    lat
}

/// trapvisor: the event loop, the transport (lock, queue_notified, kick) and the device.
fn wake_trapvisor(n: usize) -> Vec<u64> {
    let epoch = Instant::now();
    let stamp = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let mut t = VirtioPciDevice::new(
        Box::new(Probe {
            epoch,
            stamp: stamp.clone(),
            count: count.clone(),
        }),
        DeviceOptions::default(),
        mem,
        FakeIrqRouting::new(),
        FakeIoEvents::new(),
    )
    .unwrap();
    t.bar_mapped(0, Some(0xc000_0000));
    let events = t.notify_events().unwrap();
    let dev = Arc::new(Mutex::new(t));
    {
        let mut d = dev.lock().unwrap();
        let d = &mut *d;
        let mut bar = |off: u64, data: &[u8]| d.bar_write(0, off, data);
        let mut cfg_writes: Vec<(usize, Vec<u8>)> = Vec::new();
        bring_up(&mut bar, &mut |off, data| {
            cfg_writes.push((off, data.to_vec()))
        });
        for (off, data) in cfg_writes {
            d.config_write(off, &data);
        }
    }
    count.store(0, Ordering::Release);
    let mut lp = EventLoop::new().unwrap();
    let kick = events[0].1.try_clone().unwrap();
    for (q, evt) in events {
        let d = dev.clone();
        lp.add(
            "probe",
            evt,
            Box::new(move |_| d.lock().unwrap().queue_notified(q)),
        )
        .unwrap();
    }
    let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let h = lp.start(stop.clone()).unwrap();
    let lat = ping_pong(&kick, epoch, &stamp, &count, n);
    stop.write(1).unwrap();
    h.join();
    lat
}

// ---------------------------------------------------------------------------------------------
// 2. Kicks from a real vCPU.

/// Real mode: ES = 0xffff, then N 16-bit writes of queue index 0 to ES:0x3010 (= 1 MiB +
/// 0x3000, queue 0's notify address), bracketed by `out 0x80` and `out 0xf4`.
fn kick_guest(n: u32) -> Vec<u8> {
    let mut c = vec![0xb8, 0xff, 0xff, 0x8e, 0xc0, 0x66, 0xb9];
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[
        0xb0, 0x00, // mov al, 0
        0xe6, 0x80, // out 0x80, al          (start)
        0x26, 0xc7, 0x06, 0x10, 0x30, 0x00, 0x00, // mov word es:[0x3010], 0
        0x66, 0x49, // dec ecx
        0x75, 0xf5, // jnz -11
        0xe6, 0xf4, // out 0xf4, al          (end, pass)
        0xf4, // hlt
    ]);
    c
}

fn kick_vm(n: u32) -> (Vm, VcpuFd) {
    let mut vm = Vm::new(RAM).unwrap();
    let (mut vcpus, machine) = vm.create_vcpus(1).unwrap();
    let image = kick_guest(n);
    let entry = arch::load_kernel(
        vm.memory(),
        BootConfig {
            kernel: KernelSource::RealMode {
                image: &image,
                load_addr: 0x7c00,
                cs: 0,
                ip: 0x7c00,
            },
            initrd: None,
            cmdline: "",
            mem_size: RAM,
            machine: &machine,
        },
    )
    .unwrap();
    let vcpu = vcpus.remove(0);
    arch::configure_vcpu(vm.kvm(), &vcpu, 0, 1, &entry, vm.memory()).unwrap();
    (vm, vcpu)
}

/// Runs the kick guest; `on_mmio` sees each MMIO write. Returns (time per kick, exits).
fn run_kicks(vcpu: &mut VcpuFd, n: u32, mut on_mmio: impl FnMut(u64, &[u8])) -> (Duration, u64) {
    let mut start = None;
    let mut exits = 0;
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x80, _) => start = Some(Instant::now()),
            VcpuExit::IoOut(0xf4, _) => break,
            VcpuExit::MmioWrite(addr, data) => {
                exits += 1;
                on_mmio(addr, data);
            }
            VcpuExit::MmioRead(_, d) | VcpuExit::IoIn(_, d) => d.fill(0xff),
            VcpuExit::IoOut(..) => {}
            other => panic!("kick guest: unexpected exit {other:?}"),
        }
    }
    (start.expect("no start marker").elapsed() / n, exits)
}

/// A VM with the kick guest and trapvisor's PCI platform: virtio-rng with `notify`, its BAR
/// moved to 1 MiB and brought up.
fn trapvisor_vm(
    n: u32,
    notify: NotifyMode,
    irq: IrqMode,
) -> (Vm, VcpuFd, Bus, Arc<Bus>, PciPlatform) {
    let (vm, vcpu) = kick_vm(n);
    let pio = Bus::new(BusKind::Pio);
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let mut pci = PciPlatform::new(&vm, &pio, &mmio).unwrap();
    let slot = pci
        .add_virtio(Box::new(Rng::new()), DeviceOptions { notify, irq })
        .unwrap();
    pci.root()
        .config_write(slot, 0, 0x10, &(BAR_GPA as u32).to_le_bytes());
    assert_eq!(pci.root().bar_mapping(slot, 0), Some(BAR_GPA));
    let root = pci.root().clone();
    let m = mmio.clone();
    bring_up(
        &mut |off, data| {
            let _ = m.write(BAR_GPA + off, data);
        },
        &mut |off, data| root.config_write(slot, 0, off, data),
    );
    assert_eq!(pci.virtio()[0].dev.lock().unwrap().status(), 0xf);
    (vm, vcpu, pio, mmio, pci)
}

fn exit_bare(n: u32) -> Duration {
    let (_vm, mut vcpu) = kick_vm(n);
    let (per, exits) = run_kicks(&mut vcpu, n, |_, _| {});
    assert_eq!(exits, u64::from(n));
    per
}

fn exit_trapvisor(n: u32) -> Duration {
    let (_vm, mut vcpu, pio, mmio, pci) = trapvisor_vm(n, NotifyMode::Exit, IrqMode::Irqfd);
    let buses = Buses {
        pio: &pio,
        mmio: &mmio,
    };
    let (per, exits) = run_kicks(&mut vcpu, n, |addr, data| {
        handle_exit(Exit::MmioWrite { addr, data }, &buses);
    });
    assert_eq!(exits, u64::from(n));
    let kicks = pci.virtio()[0].dev.lock().unwrap().stats().exit_kicks;
    assert_eq!(kicks, u64::from(n), "every kick reached the device");
    per
}

/// (per kick, event-loop handler runs).
fn ioeventfd_bare(n: u32) -> (Duration, u64) {
    let (vm, mut vcpu) = kick_vm(n);
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.fd()
        .register_ioevent(&evt, &IoEventAddress::Mmio(NOTIFY_GPA), NoDatamatch)
        .unwrap();
    let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (e, s) = (evt.try_clone().unwrap(), stop.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let ep = Epoll::new().unwrap();
        ep.ctl(
            ControlOperation::Add,
            e.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
        ep.ctl(
            ControlOperation::Add,
            s.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .unwrap();
        let mut evs = [EpollEvent::default(); 2];
        let mut wakeups = 0;
        loop {
            let k = ep.wait(-1, &mut evs).unwrap_or(0);
            if evs[..k].iter().any(|x| x.data() == 1) {
                return wakeups;
            }
            if e.read().is_ok() {
                wakeups += 1;
            }
        }
    });
    let (per, exits) = run_kicks(&mut vcpu, n, |_, _| {});
    assert_eq!(exits, 0, "the ioeventfd took every kick");
    stop.write(1).unwrap();
    (per, t.join().unwrap())
}

fn ioeventfd_trapvisor(n: u32) -> (Duration, u64) {
    let (_vm, mut vcpu, _pio, _mmio, mut pci) =
        trapvisor_vm(n, NotifyMode::Ioeventfd, IrqMode::Irqfd);
    let dev = pci.virtio()[0].dev.clone();
    assert_eq!(dev.lock().unwrap().ioevent_address(0), Some(NOTIFY_GPA));
    let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let h = pci.start(stop.clone()).unwrap().expect("event loop");
    let (per, exits) = run_kicks(&mut vcpu, n, |_, _| {});
    assert_eq!(exits, 0, "the ioeventfd took every kick");
    // Let the loop catch up with the last kick before stopping it.
    std::thread::sleep(Duration::from_millis(20));
    stop.write(1).unwrap();
    h.join();
    let handled = dev.lock().unwrap().stats().ioeventfd_kicks;
    (per, handled)
}

// ---------------------------------------------------------------------------------------------
// 3. Interrupt injection.

fn per_op(m: u32, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..m {
        f();
    }
    t.elapsed() / m
}

fn irq_vm() -> (Vm, VcpuFd) {
    let vm = Vm::new(RAM).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    (vm, vcpu)
}

fn irqfd_bare(m: u32) -> Duration {
    let (vm, _vcpu) = irq_vm();
    let router = KvmIrqRouter::new(vm.shared_fd());
    let gsi = router.allocate_gsi().unwrap();
    router.set_msi_route(gsi, MSI).unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    router.register_irqfd(&evt, gsi).unwrap();
    per_op(m, || evt.write(1).unwrap())
}

fn signal_msi_bare(m: u32) -> Duration {
    let (vm, _vcpu) = irq_vm();
    let msi = kvm_msi {
        address_lo: MSI.address as u32,
        data: MSI.data,
        ..Default::default()
    };
    per_op(m, || {
        vm.fd().signal_msi(msi).unwrap();
    })
}

fn trigger_trapvisor(m: u32, irq: IrqMode) -> Duration {
    let (_vm, _vcpu, _pio, _mmio, pci) = trapvisor_vm(1, NotifyMode::Exit, irq);
    let intr = pci.virtio()[0].dev.lock().unwrap().interrupt().clone();
    let per = per_op(m, || intr.trigger(VirtioInterruptType::Queue(0)).unwrap());
    assert_eq!(intr.stats().delivered, u64::from(m));
    per
}

// ---------------------------------------------------------------------------------------------

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row(name: &str, bare: Duration, tv: Duration) {
    println!(
        "{:<34} {:>12.3} {:>14.3} {:>8.2}",
        name,
        bare.as_secs_f64() * 1e6,
        tv.as_secs_f64() * 1e6,
        tv.as_secs_f64() / bare.as_secs_f64()
    );
}

fn main() {
    let kicks = arg("--kicks", 20000);
    let irqs = arg("--irqs", 100_000);
    let rounds = arg("--rounds", 5).max(1);
    println!("notify and interrupt paths: {rounds} rounds interleaved, medians");
    println!(
        "{:<34} {:>12} {:>14} {:>8}",
        "path", "bare (us)", "trapvisor (us)", "ratio"
    );

    // 1. Guest-free wake → handler entry.
    let (mut b, mut t) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        b.extend(wake_bare(kicks as usize));
        t.extend(wake_trapvisor(kicks as usize));
    }
    let ns = |x: u64| Duration::from_nanos(x);
    let (b50, t50) = (pct(&mut b, 0.5), pct(&mut t, 0.5));
    let (b99, t99) = (pct(&mut b, 0.99), pct(&mut t, 0.99));
    row("ioeventfd wake->handler p50", ns(b50), ns(t50));
    row("ioeventfd wake->handler p99", ns(b99), ns(t99));

    // 2. Kicks from a real vCPU.
    let (mut eb, mut et, mut ib, mut it) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ib_w, mut it_w) = (0, 0);
    for _ in 0..rounds {
        eb.push(exit_bare(kicks));
        et.push(exit_trapvisor(kicks));
        let (p, w) = ioeventfd_bare(kicks);
        ib.push(p);
        ib_w += w;
        let (p, w) = ioeventfd_trapvisor(kicks);
        it.push(p);
        it_w += w;
    }
    let (eb, et) = (median(&mut eb), median(&mut et));
    let (ib, it) = (median(&mut ib), median(&mut it));
    row("notify=exit, per kick (vCPU)", eb, et);
    row("notify=ioeventfd, per kick (vCPU)", ib, it);
    println!(
        "  notify=exit / notify=ioeventfd per kick: bare {:.2}, trapvisor {:.2}",
        eb.as_secs_f64() / ib.as_secs_f64(),
        et.as_secs_f64() / it.as_secs_f64()
    );
    let total = u64::from(kicks) * u64::from(rounds);
    println!(
        "  ioeventfd handler runs per {} kicks: bare {}, trapvisor {} (kicks coalesce)",
        total, ib_w, it_w
    );

    // 3. Interrupt injection.
    let (mut fb, mut ft, mut mb, mut mt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        fb.push(irqfd_bare(irqs));
        ft.push(trigger_trapvisor(irqs, IrqMode::Irqfd));
        mb.push(signal_msi_bare(irqs));
        mt.push(trigger_trapvisor(irqs, IrqMode::Msi));
    }
    let (fb, ft, mb, mt) = (
        median(&mut fb),
        median(&mut ft),
        median(&mut mb),
        median(&mut mt),
    );
    row("irq=irqfd, per interrupt", fb, ft);
    row("irq=msi (KVM_SIGNAL_MSI), per int.", mb, mt);
    println!(
        "  irq=msi / irq=irqfd (trapvisor): {:.2}",
        mt.as_secs_f64() / ft.as_secs_f64()
    );
}
