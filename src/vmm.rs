//! Putting a VM together: RAM, buses, devices, the kernel, vCPUs; running it until it stops.
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::arch::{self, ArchError, BootConfig, BootEntry, KernelSource};
use crate::block::{Blk, BlkError, BlkHandle, DiskConfig};
use crate::bus::{format_map, Bus, BusError, BusKind};
use crate::devices::serial::{IrqFdTrigger, SerialDevice};
use crate::devices::testdev::TestDev;
use crate::devices::PlatformDevices;
use crate::kvm::exit::StopReason;
use crate::kvm::vcpu::{self, VcpuContext, VcpuHandle, VmControl};
use crate::kvm::vm::{Vm, VmError};
use crate::net::{Net, NetConfig, NetError, NetHandle};
use crate::pci::platform::{PciPlatform, PlatformError};
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::trace::clock::{Epoch, TickSource};
use crate::trace::exits::{self, ExitStats};
use crate::trace::kernel::KernelTrace;
use crate::trace::kstats::KernelStats;
use crate::trace::phases::StartPhases;
use crate::trace::timeline::Timeline;
use crate::userfile::{self, FileError, Role};
use crate::virtio::rng::{Rng, RngConfig};

/// The most vCPUs a VM may have (the architecture's limit).
pub use crate::arch::MAX_VCPUS;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] ArchError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("--cpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Cpus(u32),
    #[error("{what}: {err}")]
    Io { what: &'static str, err: io::Error },
    #[error(transparent)]
    Pci(#[from] PlatformError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Blk(#[from] BlkError),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmmError {
    move |err| VmmError::Io { what, err }
}

/// What the VM boots.
#[derive(Debug, Clone)]
pub enum Kernel {
    /// The guest embedded in this binary (`crate::guest`).
    Builtin,
    /// A bzImage or ELF vmlinux.
    File(PathBuf),
    /// A flat real-mode image (purpose-made test guests).
    RealMode {
        image: Vec<u8>,
        load_addr: u64,
        cs: u16,
        ip: u16,
    },
}

/// A VM's configuration.
pub struct VmConfig {
    pub kernel: Kernel,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_size: u64,
    pub cpus: u32,
    /// Where serial and test-device output goes.
    pub console: Box<dyn Write + Send>,
    /// A virtio-rng on PCI (`--rng`).
    pub rng: Option<RngConfig>,
    /// virtio-net devices on PCI, one per TAP (`--net`).
    pub net: Vec<NetConfig>,
    /// virtio-blk devices on PCI, one per image (`--disk`).
    pub disks: Vec<DiskConfig>,
    /// The legacy PC devices (x86_64: the i8042, the CMOS RTC and the PIT); `--no-legacy`
    /// drops them.
    pub legacy: bool,
    /// When the process started (`main`): the start phases count from there, the first one
    /// being `parse`. `None`: from `Vmm::new`.
    pub started: Option<std::time::Instant>,
}

impl VmConfig {
    /// The built-in guest with the CLI's defaults, printing to stdout.
    pub fn builtin(cmdline: &str) -> Self {
        VmConfig {
            kernel: Kernel::Builtin,
            initrd: None,
            cmdline: cmdline.to_string(),
            mem_size: 256 << 20,
            cpus: 1,
            console: Box::new(io::stdout()),
            rng: None,
            net: Vec::new(),
            disks: Vec::new(),
            legacy: true,
            started: None,
        }
    }
}

/// One console shared by every device that prints.
#[derive(Clone)]
struct SharedConsole(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedConsole {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// A VM ready to run.
pub struct Vmm {
    /// PCI root, virtio devices and their event loop. Declared before `vm`: the devices hold
    /// the VM fd (irqfds, routes, ioeventfds) and go first.
    pci: PciPlatform,
    /// The virtio-net devices' worker threads (started and joined with the VM).
    nets: Vec<NetHandle>,
    /// The virtio-blk devices' worker threads (likewise).
    disks: Vec<BlkHandle>,
    vm: Vm,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    control: Arc<VmControl>,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    serial: Arc<Mutex<SerialDevice<IrqFdTrigger>>>,
    testdev: Arc<Mutex<TestDev>>,
    /// One per vCPU, recorded by its thread.
    exit_stats: Vec<Arc<Mutex<ExitStats>>>,
    /// The `--trace` timeline, when tracing.
    timeline: Option<Arc<Timeline>>,
    /// KVM's own statistics of the VM and each vCPU.
    kernel_stats: Arc<KernelStats>,
    /// KVM's tracepoints on this VM's threads (`--trace-kernel`).
    ktrace: Option<Arc<KernelTrace>>,
    seccomp: SeccompMode,
    seccomp_selftest: bool,
    /// The counter the exit statistics are recorded in.
    ticks: TickSource,
    /// Exit statistics recorded (on unless `set_exit_stats(false)`).
    exit_stats_on: bool,
    /// The start so far (`new` and `run` add to it).
    phases: StartPhases,
    /// The guest physical map outside the buses (in-kernel interrupt controller, boot tables).
    system_map: Vec<arch::MapLine>,
}

impl Vmm {
    /// Builds the VM: checks the configuration, creates RAM and devices, loads the kernel and
    /// configures every vCPU. Nothing runs yet.
    pub fn new(cfg: VmConfig) -> Result<Vmm, VmmError> {
        if cfg.cpus == 0 || cfg.cpus > u32::from(MAX_VCPUS) {
            return Err(VmmError::Cpus(cfg.cpus));
        }
        let nr_cpus = cfg.cpus as u8;
        let mut phases = StartPhases::new(cfg.started.unwrap_or_else(std::time::Instant::now));
        if cfg.started.is_some() {
            phases.mark("parse");
        }
        // Open the files first: a bad path is reported before any VM exists. Disks are opened
        // and locked here too.
        let mut blks = Vec::new();
        for d in &cfg.disks {
            blks.push((Blk::new(d)?, d.transport));
        }
        let mut kernel_file = match &cfg.kernel {
            Kernel::File(path) => Some(userfile::open(path, Role::Kernel)?.file),
            _ => None,
        };
        let mut initrd_file = match &cfg.initrd {
            Some(path) => Some(userfile::open(path, Role::Initrd)?.file),
            None => None,
        };

        let mut vm = Vm::with_legacy(cfg.mem_size, cfg.legacy)?;
        phases.mark("kvm+ram");
        // Every vCPU and the interrupt controller first: on aarch64 the GIC needs every vCPU,
        // and irqfds (the devices below) and MSI routes with device ids need the GIC and ITS.
        let (vcpus, machine) = vm.create_vcpus(nr_cpus)?;
        phases.mark("vcpus+irqchip");
        let console = SharedConsole(Arc::new(Mutex::new(cfg.console)));
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));

        let PlatformDevices { serial, testdev } = arch::register_devices(
            &pio,
            &mmio,
            |gsi| vm.irqfd(gsi).map(IrqFdTrigger).map_err(VmmError::from),
            Box::new(console.clone()),
            Box::new(console),
            cfg.legacy,
        )?;

        let mut pci = PciPlatform::new(&vm, &pio, &mmio)?;
        if let Some(rng) = cfg.rng {
            pci.add_virtio(Box::new(Rng::new()), rng.transport)?;
        }
        let mut nets = Vec::new();
        for net in &cfg.net {
            // Opens (or creates) the TAP now, while this thread may still open files.
            let dev = Net::open(net, vm.memory())?;
            nets.push(dev.handle());
            pci.add_virtio(Box::new(dev), net.transport)?;
        }
        let mut disks = Vec::new();
        for (dev, transport) in blks {
            disks.push(dev.handle());
            pci.add_virtio(Box::new(dev), transport)?;
        }
        phases.mark("devices");

        let source = match (&cfg.kernel, kernel_file.as_mut()) {
            (Kernel::File(_), Some(f)) => KernelSource::File(f),
            (
                Kernel::RealMode {
                    image,
                    load_addr,
                    cs,
                    ip,
                },
                _,
            ) => KernelSource::RealMode {
                image,
                load_addr: *load_addr,
                cs: *cs,
                ip: *ip,
            },
            _ => KernelSource::Builtin(crate::guest::GUEST_IMAGE),
        };
        let entry: BootEntry = arch::load_kernel(
            vm.memory(),
            BootConfig {
                kernel: source,
                initrd: initrd_file.as_mut(),
                cmdline: &cfg.cmdline,
                mem_size: cfg.mem_size,
                machine: &machine,
                legacy: cfg.legacy,
                phases: Some(&mut phases),
            },
        )?;

        for (id, fd) in vcpus.iter().enumerate() {
            arch::configure_vcpu(vm.kvm(), fd, id as u8, nr_cpus, &entry, vm.memory())?;
        }
        let system_map = arch::map_lines(&machine, &entry);
        let epoch = Epoch::new(TickSource::detect());
        let kernel_stats = Arc::new(KernelStats::open(
            vm.fd(),
            &vcpus.iter().collect::<Vec<_>>(),
        ));
        phases.mark("vcpu setup");
        Ok(Vmm {
            pci,
            nets,
            disks,
            vm,
            pio,
            mmio,
            control: Arc::new(VmControl::new().map_err(io_err("eventfd"))?),
            vcpus,
            serial,
            testdev,
            exit_stats: (0..nr_cpus)
                .map(|_| Arc::new(Mutex::new(ExitStats::ticked(epoch))))
                .collect(),
            ticks: epoch.source(),
            timeline: None,
            kernel_stats,
            ktrace: None,
            seccomp: SeccompMode::Off,
            seccomp_selftest: false,
            exit_stats_on: true,
            phases,
            system_map,
        })
    }

    /// Both address spaces, as `--print-map` shows them, then the PCI side and what is neither
    /// (the in-kernel interrupt controller, the boot tables).
    pub fn format_map(&self) -> String {
        let mut map = format_map(&[&self.pio, &self.mmio]);
        map.push_str(&self.pci.format_map());
        map.push_str(&format_system_map(&self.system_map));
        map
    }

    /// The guest physical map outside the buses (`arch::map_lines`).
    pub fn system_map(&self) -> &[arch::MapLine] {
        &self.system_map
    }

    /// The PCI root and the virtio devices.
    pub fn pci(&self) -> &PciPlatform {
        &self.pci
    }

    /// The virtio-net devices (counters, workers).
    pub fn nets(&self) -> &[NetHandle] {
        &self.nets
    }

    /// The virtio-blk devices (counters, workers).
    pub fn disks(&self) -> &[BlkHandle] {
        &self.disks
    }

    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio
    }

    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// Stops the VM from another thread.
    pub fn control(&self) -> Arc<VmControl> {
        self.control.clone()
    }

    /// Writes seen by the test device's SINK register.
    pub fn sink_count(&self) -> u64 {
        self.testdev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sink_count()
    }

    /// The times of the first and the latest SINK write (the exit benchmark's window).
    pub fn sink_window(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        self.testdev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sink_window()
    }

    /// The median time between consecutive SINK writes (one round trip of an exit loop).
    pub fn sink_gap_median(&self) -> Option<std::time::Duration> {
        let t = self.testdev.lock().unwrap_or_else(|e| e.into_inner());
        let h = t.sink_gaps()?;
        Some(std::time::Duration::from_nanos(h.value_at_quantile(0.5)))
    }

    /// Confines every thread the VM starts (and the calling thread once they run) with the
    /// seccomp filter of its kind. `selftest` makes vcpu0 try one forbidden syscall.
    pub fn set_seccomp(&mut self, mode: SeccompMode, selftest: bool) {
        self.seccomp = mode;
        self.seccomp_selftest = selftest;
    }

    /// Turns the per-exit statistics off (they are on by default): only to measure what they
    /// cost (`cargo bench --bench exits`).
    pub fn set_exit_stats(&mut self, on: bool) {
        self.exit_stats_on = on;
    }

    /// Records a timeline of this VM's work (exits, queue work, interrupts) into `timeline`.
    pub fn set_timeline(&mut self, timeline: Arc<Timeline>) {
        for slot in self.pci.virtio() {
            slot.dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_timeline(timeline.clone());
        }
        self.timeline = Some(timeline);
    }

    /// Traces KVM's events on this VM's threads (`--trace-kernel`); set it before `api_view`.
    pub fn set_kernel_trace(&mut self, kt: Arc<KernelTrace>) {
        self.ktrace = Some(kt);
    }

    /// The notify addresses of every virtio queue with an ioeventfd (where a guest's kick
    /// becomes an eventfd signal inside KVM).
    fn notify_addresses(&self) -> Vec<u64> {
        self.pci
            .virtio()
            .iter()
            .flat_map(|s| {
                let r = s.dev.lock().unwrap_or_else(|e| e.into_inner()).report();
                r.queues
                    .iter()
                    .filter_map(|q| q.ioeventfd)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Each MSI-X vector in use with the APIC vector its message carries (its data's low byte).
    fn msix_vectors(&self) -> Vec<(u16, u8)> {
        self.pci
            .virtio()
            .iter()
            .flat_map(|s| {
                let r = s.dev.lock().unwrap_or_else(|e| e.into_inner()).report();
                r.vectors
                    .iter()
                    .filter(|v| v.in_use)
                    .map(|v| (v.vector, (v.data & 0xff) as u8))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Stops the kernel trace, and with a timeline adds the kernel's events to it.
    fn finish_kernel_trace(&self) {
        let Some(kt) = &self.ktrace else { return };
        kt.finish();
        if let Some(tl) = &self.timeline {
            let (events, dropped) = kt.take_events();
            let (lost, errors) = kt.losses();
            crate::trace::kernel::timeline::merge(
                tl,
                events,
                &kt.threads(),
                &self.notify_addresses(),
                &self.msix_vectors(),
                kt.host_events(),
            );
            tl.set_other(
                "kernel_losses",
                serde_json::json!({"dropped": dropped, "lost_records": lost, "not_traced": errors}),
            );
        }
    }

    /// What the control API sees of this VM.
    pub fn api_view(&self, config: serde_json::Value) -> crate::api::view::VmView {
        crate::api::view::VmView {
            control: self.control.clone(),
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            exit_stats: self.exit_stats.clone(),
            kernel: self.kernel_stats.clone(),
            kernel_trace: self.ktrace.clone(),
            devices: self
                .pci
                .virtio()
                .iter()
                .map(|s| (s.slot, s.dev.clone()))
                .collect(),
            event_loop: self.pci.loop_counters(),
            system: self.system_map.clone(),
            config,
        }
    }

    /// A snapshot of each vCPU's exit statistics.
    pub fn exit_stats(&self) -> Vec<ExitStats> {
        self.exit_stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).snapshot())
            .collect()
    }

    /// The VMM's start phase by phase, up to the first KVM_RUN (one line).
    pub fn format_start_phases(&self) -> String {
        self.phases.format(self.control.first_run())
    }

    /// The start phases so far (the first KVM_RUN is [`VmControl::first_run`]).
    pub fn start_phases(&self) -> &StartPhases {
        &self.phases
    }

    /// The start phases, then the exit table of every vCPU and of all of them together.
    pub fn format_exit_stats(&self) -> String {
        let per_vcpu = self.exit_stats();
        let mut all = ExitStats::default();
        let mut out = self.format_start_phases();
        out.push('\n');
        for (id, s) in per_vcpu.iter().enumerate() {
            all.merge(s);
            if per_vcpu.len() > 1 {
                out.push_str(&exits::format_table(
                    &format!("vcpu{id}"),
                    s,
                    &self.pio,
                    &self.mmio,
                ));
            }
        }
        out.push_str(&exits::format_table(
            "all vcpus",
            &all,
            &self.pio,
            &self.mmio,
        ));
        // The devices' side: kicks per queue, interrupts per vector, device counters.
        use crate::api::VmApi;
        let view = self.api_view(serde_json::Value::Null);
        let stats = view.stats();
        out.push_str(&crate::trace::kstats::format_table(&stats["kernel"], None));
        out.push_str(&crate::trace::kernel::exits::format_table(
            &stats["kernel_trace"],
        ));
        out.push_str(&crate::api::client::format_devices(&stats));
        out
    }

    /// Runs the vCPUs until the VM stops, then kicks and joins every vCPU thread. `signals`,
    /// when given, stops the VM on SIGINT/SIGTERM; with `forward_stdin`, terminal input goes to
    /// the serial port.
    pub fn run(
        &mut self,
        signals: Option<&StopSignals>,
        forward_stdin: bool,
    ) -> Result<RunResult, VmmError> {
        vcpu::install_kick_handler().map_err(io_err("cannot install the vCPU kick handler"))?;
        let ctx = VcpuContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            control: self.control.clone(),
            memory: self.vm.memory().clone(),
            timeline: self.timeline.clone(),
            seccomp: self.seccomp,
            seccomp_selftest: self.seccomp_selftest,
            exit_stats: self.exit_stats_on,
            ticks: self.ticks,
            ktrace: self.ktrace.clone(),
        };
        // virtio-net queue pairs run on worker threads of their own, made here (a vCPU thread
        // may not create threads); they end with the VM and are joined after the vCPUs.
        for (i, net) in self.nets.iter().enumerate() {
            if let Err(e) = net.start(self.control.stop_evt(), self.seccomp) {
                for started in &self.nets[..i] {
                    started.stop();
                }
                return Err(e.into());
            }
        }
        // Each disk queue has a worker too (and its io_uring, made here before any filter).
        for (i, disk) in self.disks.iter().enumerate() {
            if let Err(e) = disk.start(self.control.stop_evt(), self.seccomp) {
                for started in &self.disks[..i] {
                    started.stop();
                }
                for net in &self.nets {
                    net.stop();
                }
                return Err(e.into());
            }
        }
        // Device work (notify=ioeventfd kicks) runs on the event loop, started before any
        // vCPU can kick; it stops with the VM and is joined after the vCPUs.
        let (mode, control) = (self.seccomp, self.control.clone());
        let devices = self.pci.start_with(
            self.control.clone(),
            Box::new(move || {
                if let Err(e) = seccomp::install(ThreadKind::Worker, mode) {
                    control.request_stop(StopReason::Fatal(e.to_string()));
                }
            }),
        )?;
        self.phases.mark("threads");
        // The threads that inject interrupts (workers, event loop) run now: trace them too,
        // before any vCPU thread exists (those open their own).
        if let Some(kt) = &self.ktrace {
            kt.attach_others();
            if let Err(e) = kt.start_collector(self.seccomp) {
                self.control.request_stop(StopReason::Fatal(format!(
                    "cannot start the kernel trace collector: {e}"
                )));
            }
        }
        let mut handles: Vec<VcpuHandle> = Vec::new();
        for (id, fd) in self.vcpus.drain(..).enumerate() {
            let stats = self.exit_stats[id].clone();
            match vcpu::spawn(fd, id as u8, ctx.clone(), stats) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    self.control
                        .request_stop(StopReason::Fatal(format!("cannot start vcpu{id}: {e}")));
                    break;
                }
            }
        }
        let stdin = if forward_stdin {
            crate::console::StdinForwarder::start(
                self.serial.clone(),
                self.control.clone(),
                self.seccomp,
            )
        } else {
            None
        };
        // The calling thread only waits, kicks and reports from here on.
        if let Err(e) = seccomp::install(ThreadKind::Main, self.seccomp) {
            self.control.request_stop(StopReason::Fatal(e.to_string()));
        }
        self.wait(signals, &handles);
        for h in &handles {
            h.kick();
        }
        for h in &mut handles {
            h.join();
        }
        if let Some(d) = devices {
            d.join();
        }
        for net in &self.nets {
            net.stop();
        }
        for disk in &self.disks {
            disk.stop();
        }
        drop(stdin);
        self.finish_kernel_trace();
        Ok(RunResult {
            reason: self.control.reason().unwrap_or(StopReason::Requested),
            report: self.control.report(),
        })
    }

    /// Blocks until a stop is requested (by a vCPU, the API or a signal); kicks the vCPUs when
    /// a pause asks for it.
    fn wait(&self, signals: Option<&StopSignals>, vcpus: &[VcpuHandle]) {
        let pollin = |fd: i32| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = vec![
            pollin(self.control.stop_evt().as_raw_fd()),
            pollin(self.control.kick_evt().as_raw_fd()),
        ];
        if let Some(s) = signals {
            fds.push(pollin(s.fd.as_raw_fd()));
        }
        while !self.control.is_stopping() {
            // SAFETY: `fds` is a valid array of initialized pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.control.request_stop(StopReason::Fatal(format!(
                    "poll failed: {}",
                    io::Error::last_os_error()
                )));
            }
            if fds[1].revents & libc::POLLIN != 0 {
                // Clear the request, then kick: every vCPU leaves KVM_RUN and parks.
                let _ = self.control.kick_evt().read();
                for h in vcpus {
                    h.kick();
                }
            }
            if let Some(s) = signals {
                if fds[2].revents & libc::POLLIN != 0 {
                    let signo = s.read();
                    log::info!("signal {signo}: stopping the VM");
                    self.control.request_stop(StopReason::Requested);
                }
            }
        }
    }
}

/// `--print-map`'s lines for what is in the guest physical map but on no bus.
pub fn format_system_map(lines: &[arch::MapLine]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("system (not on a bus):\n");
    for l in lines {
        let range = if l.size == 0 {
            format!("{:016x}", l.base)
        } else {
            format!("{:016x}-{:016x}", l.base, l.base + l.size - 1)
        };
        out.push_str(&format!(
            "  {range:<33} (size {:#x}) {} {}\n",
            l.size, l.name, l.what
        ));
    }
    out
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub reason: StopReason,
    /// The vCPU's register report when the guest failed.
    pub report: Option<String>,
}

/// SIGINT and SIGTERM, blocked and read through a signalfd so that no handler and no global
/// state is needed. Create it before any other thread so that every thread inherits the mask.
pub struct StopSignals {
    fd: OwnedFd,
}

impl StopSignals {
    pub fn new() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; it is initialized by sigemptyset before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the calls only modify it or the thread's mask.
        let fd = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignals { fd })
    }

    /// Reads one pending signal; returns its number (0 if none).
    fn read(&self) -> u32 {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is a writable buffer of `size` bytes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(info).cast(),
                size,
            )
        };
        if n as usize == size {
            info.ssi_signo
        } else {
            0
        }
    }
}
