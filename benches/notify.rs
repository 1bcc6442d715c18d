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
//! Method (steady to within a few percent on a shared 2-core machine): the measuring thread
//! (the vCPU, the interrupt raiser) is pinned to one CPU and every thread it waits on (the bare
//! epoll thread, trapvisor's event loop) to another; floor and trapvisor alternate within each
//! round (which goes first alternates too), and each ratio is the **median of the per-round
//! ratios**, so load that comes and goes hits both sides of a round alike. The spread printed
//! is the middle half of those per-round ratios. Kick and interrupt costs are the measuring
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, the guest's time in KVM_RUN included), not the
//! wall clock, which also counts whatever else ran on that CPU meanwhile. Each fresh VM waits
//! 50 ms before its kicks are measured ([`SETTLE`]): the kernel's leftovers from setting it up
//! are not what a running guest's kicks cost.
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
    let t = on_helper_cpu(|| {
        std::thread::spawn(move || {
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
        })
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
    let h = on_helper_cpu(|| lp.start(stop.clone()).unwrap());
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
            legacy: true,
            phases: None,
        },
    )
    .unwrap();
    let vcpu = vcpus.remove(0);
    arch::configure_vcpu(vm.kvm(), &vcpu, 0, 1, &entry, vm.memory()).unwrap();
    (vm, vcpu)
}

/// How long a fresh VM waits before its kicks are measured. Setting a VM up (and tearing the
/// last one down) leaves work that the kernel finishes shortly after, some of it charged to the
/// thread then running on the measuring CPU; trapvisor's VM has more of it (the PCI platform,
/// MSI-X routes, irqfds, ioeventfds). Without the pause the ratio followed the order of the
/// measurements before it (1.12–1.17 for notify=ioeventfd with the rounds as they are, 1.01
/// with no exit measurements before it); with it, 1.00–1.04. The steady state is what a
/// running guest pays.
const SETTLE: Duration = Duration::from_millis(50);

/// Runs the kick guest after [`SETTLE`]; `on_mmio` sees each MMIO write. Returns (the vCPU
/// thread's CPU time per kick, exits).
fn run_kicks(vcpu: &mut VcpuFd, n: u32, mut on_mmio: impl FnMut(u64, &[u8])) -> (Duration, u64) {
    std::thread::sleep(SETTLE);
    let mut start = None;
    let mut exits = 0;
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x80, _) => start = Some(thread_cpu()),
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
    ((thread_cpu() - start.expect("no start marker")) / n, exits)
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
    let buses = Buses::new(&pio, &mmio);
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
    let t = on_helper_cpu(|| {
        std::thread::spawn(move || {
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
        })
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
    let h = on_helper_cpu(|| pci.start(stop.clone()).unwrap().expect("event loop"));
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

/// The calling thread's CPU time (guest time in KVM_RUN included): unlike the wall clock, it
/// does not grow while other processes on a busy machine have the CPU.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time per call of `f`, over `m` calls.
fn per_op(m: u32, f: &mut dyn FnMut()) -> Duration {
    let t = thread_cpu();
    for _ in 0..m {
        f();
    }
    (thread_cpu() - t) / m
}

/// The floor's VM: set up as trapvisor's (the same vCPU and LAPIC state, so a message is
/// delivered to the same kind of target).
fn irq_vm() -> (Vm, VcpuFd) {
    kick_vm(1)
}

/// A raw irqfd on an MSI route: `f()` raises one interrupt. Keep the VM alive while it is used.
fn irqfd_bare() -> (Vm, VcpuFd, Box<dyn FnMut()>) {
    let (vm, vcpu) = irq_vm();
    let router = KvmIrqRouter::new(vm.shared_fd());
    let gsi = router.allocate_gsi().unwrap();
    router.set_msi_route(gsi, MSI).unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    router.register_irqfd(&evt, gsi).unwrap();
    (vm, vcpu, Box::new(move || evt.write(1).unwrap()))
}

fn signal_msi_bare() -> (Vm, VcpuFd, Box<dyn FnMut()>) {
    let (vm, vcpu) = irq_vm();
    let msi = kvm_msi {
        address_lo: MSI.address as u32,
        data: MSI.data,
        ..Default::default()
    };
    let fd = vm.shared_fd();
    (
        vm,
        vcpu,
        Box::new(move || {
            fd.signal_msi(msi).unwrap();
        }),
    )
}

type TrapvisorIrq = (Vm, VcpuFd, Bus, Arc<Bus>, PciPlatform, Box<dyn FnMut()>);

fn trigger_trapvisor(irq: IrqMode) -> TrapvisorIrq {
    let (vm, vcpu, pio, mmio, pci) = trapvisor_vm(1, NotifyMode::Exit, irq);
    let intr = pci.virtio()[0].dev.lock().unwrap().interrupt().clone();
    let f = Box::new(move || intr.trigger(VirtioInterruptType::Queue(0)).unwrap());
    (vm, vcpu, pio, mmio, pci, f)
}

// ---------------------------------------------------------------------------------------------
// Method: pinning and paired rounds.

/// The CPUs to use: the measuring thread on the first, the threads it waits on on the second
/// (None on a 1-CPU machine: no pinning).
fn cpus() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads `set` within its size.
    let mine: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    (mine.len() >= 2).then(|| (mine[0], mine[1]))
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

/// Runs `f` (which starts threads: they inherit the affinity) with this thread on the helper
/// CPU, then moves this thread back to the measuring CPU.
fn on_helper_cpu<T>(f: impl FnOnce() -> T) -> T {
    let Some((main, helper)) = cpus_now() else {
        return f();
    };
    pin(helper);
    let r = f();
    pin(main);
    r
}

static CPUS: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();

fn cpus_now() -> Option<(usize, usize)> {
    *CPUS.get_or_init(cpus)
}

/// Per-round (bare, trapvisor) pairs → (median bare, median trapvisor, median of the
/// per-round ratios, (25th, 75th) percentile of those ratios).
fn paired(pairs: &[(f64, f64)]) -> (f64, f64, f64, (f64, f64)) {
    let med = |mut v: Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let b: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let t: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let r: Vec<f64> = pairs.iter().map(|p| p.1 / p.0).collect();
    (
        med(b, 0.5),
        med(t, 0.5),
        med(r.clone(), 0.5),
        (med(r.clone(), 0.25), med(r, 0.75)),
    )
}

/// One round of `bare` and `tv`, in the order `round` says.
fn pair_round(
    round: u32,
    bare: &mut dyn FnMut() -> f64,
    tv: &mut dyn FnMut() -> f64,
) -> (f64, f64) {
    if round.is_multiple_of(2) {
        let b = bare();
        (b, tv())
    } else {
        let t = tv();
        (bare(), t)
    }
}

// ---------------------------------------------------------------------------------------------

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

fn ratio_row(name: &str, pairs: &[(f64, f64)]) {
    let (b, t, r, (lo, hi)) = paired(pairs);
    println!(
        "{:<34} {:>12.3} {:>14.3} {:>8.3}   {:.3}-{:.3}",
        name,
        b * 1e6,
        t * 1e6,
        r,
        lo,
        hi
    );
}

fn main() {
    // The kick guest is a real-mode x86 program.
    if arch::NAME != "x86_64" {
        println!(
            "notify: the real-mode kick guest runs on x86_64 only; skipped on {}",
            arch::NAME
        );
        return;
    }
    let kicks = arg("--kicks", 20000);
    let irqs = arg("--irqs", 20_000);
    let rounds = arg("--rounds", 15).max(1);
    let pinned = match cpus_now() {
        Some((main, helper)) => {
            pin(main);
            format!("measuring thread on CPU {main}, the threads it waits on on CPU {helper}")
        }
        None => "not pinned (one CPU)".into(),
    };
    println!("notify and interrupt paths: {rounds} rounds, floor and trapvisor alternating in each; {pinned}");
    println!(
        "{:<34} {:>12} {:>14} {:>8}   middle half of the round ratios",
        "path", "bare (us)", "trapvisor (us)", "ratio"
    );

    // 1. Guest-free wake → handler entry (percentiles over every kick of every round).
    let (mut b, mut t) = (Vec::new(), Vec::new());
    for _ in 0..rounds.min(5) {
        b.extend(wake_bare(kicks as usize));
        t.extend(wake_trapvisor(kicks as usize));
    }
    let ns = |x: u64| Duration::from_nanos(x);
    let (b50, t50) = (pct(&mut b, 0.5), pct(&mut t, 0.5));
    let (b99, t99) = (pct(&mut b, 0.99), pct(&mut t, 0.99));
    row("ioeventfd wake->handler p50", ns(b50), ns(t50));
    row("ioeventfd wake->handler p99", ns(b99), ns(t99));

    // 2. Kicks from a real vCPU: a fresh VM per measurement, floor and trapvisor paired.
    let (mut exit, mut evt) = (Vec::new(), Vec::new());
    let (mut ib_w, mut it_w) = (0, 0);
    for r in 0..rounds {
        exit.push(pair_round(
            r,
            &mut || exit_bare(kicks).as_secs_f64(),
            &mut || exit_trapvisor(kicks).as_secs_f64(),
        ));
        evt.push(pair_round(
            r,
            &mut || {
                let (p, w) = ioeventfd_bare(kicks);
                ib_w += w;
                p.as_secs_f64()
            },
            &mut || {
                let (p, w) = ioeventfd_trapvisor(kicks);
                it_w += w;
                p.as_secs_f64()
            },
        ));
    }
    ratio_row("notify=exit, per kick (vCPU)", &exit);
    ratio_row("notify=ioeventfd, per kick (vCPU)", &evt);
    let total = u64::from(kicks) * u64::from(rounds);
    println!(
        "  ioeventfd handler runs per {} kicks: bare {}, trapvisor {} (kicks coalesce)",
        total, ib_w, it_w
    );

    // 3. Interrupt injection: each path set up once, then `rounds` paired runs of `irqs`.
    let (_v1, _c1, mut fb) = irqfd_bare();
    let (_v2, _c2, mut mb) = signal_msi_bare();
    let (_v3, _c3, _p3, _m3, _pci3, mut ft) = trigger_trapvisor(IrqMode::Irqfd);
    let (_v4, _c4, _p4, _m4, _pci4, mut mt) = trigger_trapvisor(IrqMode::Msi);
    let (mut f, mut m) = (Vec::new(), Vec::new());
    // Warm up each path once.
    for g in [&mut fb, &mut ft, &mut mb, &mut mt] {
        per_op(irqs / 4 + 1, g.as_mut());
    }
    for r in 0..rounds * 2 {
        f.push(pair_round(
            r,
            &mut || per_op(irqs, fb.as_mut()).as_secs_f64(),
            &mut || per_op(irqs, ft.as_mut()).as_secs_f64(),
        ));
        m.push(pair_round(
            r,
            &mut || per_op(irqs, mb.as_mut()).as_secs_f64(),
            &mut || per_op(irqs, mt.as_mut()).as_secs_f64(),
        ));
    }
    ratio_row("irq=irqfd, per interrupt", &f);
    ratio_row("irq=msi (KVM_SIGNAL_MSI), per int.", &m);
    let (_, ftv, _, _) = paired(&f);
    let (_, mtv, _, _) = paired(&m);
    println!("  irq=msi / irq=irqfd (trapvisor): {:.2}", mtv / ftv);
}
