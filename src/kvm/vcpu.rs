//! vCPU threads: KVM_RUN, decode the exit, dispatch (QEMU's `kvm_cpu_exec`).
//!
//! Stopping: the VMM sets `immediate_exit` in the vCPU's `kvm_run` page and sends it
//! `SIGRTMIN`. A vCPU inside KVM_RUN returns with EINTR; one about to enter returns at once
//! because of `immediate_exit`. Either way the loop sees the stop and the thread ends.
use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::exit::{handle_exit, Buses, Exit, ExitAction, ExitKind, Handled, StopReason};
use crate::bus::Bus;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::trace::clock::TickSource;
use crate::trace::exits::{self, ExitStats};
use crate::trace::kernel::KernelTrace;
use crate::trace::timeline::Timeline;

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; without one the signal would kill the process.
pub fn install_kick_handler() -> io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

pub use super::control::VmControl;

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VmControl>,
    pub memory: GuestMemoryMmap,
    /// When tracing (`--trace`), every exit becomes a span on this vCPU's track.
    pub timeline: Option<Arc<Timeline>>,
    /// The seccomp mode for the vCPU filter, installed before the first KVM_RUN.
    pub seccomp: SeccompMode,
    /// Test hook: make one forbidden syscall right after the filter is in place.
    pub seccomp_selftest: bool,
    /// Record each exit's count and handling time (on by default; off only to measure what
    /// recording costs).
    pub exit_stats: bool,
    /// The counter the exit statistics are recorded in (their `ExitStats::ticked` epoch's).
    pub ticks: TickSource,
    /// KVM's tracepoints (`--trace-kernel`): the thread opens its own before its filter.
    pub ktrace: Option<Arc<KernelTrace>>,
}

/// Where to reach a running vCPU from another thread.
struct Kicker {
    run: *mut kvm_run,
    thread: libc::pthread_t,
}

// SAFETY: `run` points into the vCPU's kvm_run mmap, which lives as long as the VcpuFd. The
// vCPU thread hands its VcpuFd back as its result, so the fd (and the mapping) is dropped only
// in `VcpuHandle::join`, after which the handle no longer kicks: the pointer is valid whenever
// it is used.
unsafe impl Send for Kicker {}
// SAFETY: see above; the only access is a single-byte volatile write.
unsafe impl Sync for Kicker {}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    kicker: Kicker,
    thread: Option<JoinHandle<VcpuFd>>,
}

impl VcpuHandle {
    /// Makes the vCPU leave KVM_RUN now (or not enter it again).
    pub fn kick(&self) {
        if self.thread.is_none() {
            return;
        }
        // SAFETY: `run` is valid while the thread runs (see `Kicker`); `immediate_exit` is the
        // field KVM documents for this, written with one volatile byte store.
        unsafe { std::ptr::addr_of_mut!((*self.kicker.run).immediate_exit).write_volatile(1) };
        // SAFETY: `thread` has not been joined (checked just above), so its id is still valid
        // even if it has finished; the signal then has no effect.
        unsafe { libc::pthread_kill(self.kicker.thread, kick_signal()) };
    }

    /// Waits for the thread to end; its VcpuFd (and kvm_run mapping) is dropped here.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            drop(t.join());
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.kick();
        self.join();
    }
}

/// Starts vCPU `id` on its own thread; it records every exit into `stats`.
pub fn spawn(
    mut fd: VcpuFd,
    id: u8,
    ctx: VcpuContext,
    stats: Arc<Mutex<ExitStats>>,
) -> io::Result<VcpuHandle> {
    let run: *mut kvm_run = fd.get_kvm_run();
    let run_addr = run as usize;
    let control = ctx.control.clone();
    control.vcpu_running(true);
    let spawned = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let run = run_addr as *mut kvm_run;
            // KVM's events of this thread, from its first exit (perf_event_open is not in the
            // filter that follows).
            if let Some(kt) = &ctx.ktrace {
                kt.attach(id);
            }
            // Confined before the guest runs: everything after this handles guest input.
            if let Err(e) = seccomp::install(ThreadKind::Vcpu, ctx.seccomp) {
                ctx.control.request_stop(StopReason::Fatal(e.to_string()));
                ctx.control.vcpu_running(false);
                return fd;
            }
            if ctx.seccomp_selftest && id == 0 {
                // SAFETY: getppid has no arguments and no side effects; it is not in the
                // vCPU allow-list, which is the point of this hook.
                unsafe { libc::getppid() };
            }
            // A panic must not unwind past here: that would unmap kvm_run under the kicker.
            let loop_result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_loop(&mut fd, id, run, &ctx, &stats)
            }));
            if loop_result.is_err() {
                ctx.control
                    .request_stop(StopReason::Fatal(format!("vcpu{id} thread panicked")));
            }
            ctx.control.vcpu_running(false);
            // Returned, not dropped: the kicker may still write into its kvm_run page.
            fd
        });
    let thread = match spawned {
        Ok(t) => t,
        Err(e) => {
            control.vcpu_running(false);
            return Err(e);
        }
    };
    let pthread = thread.as_pthread_t();
    Ok(VcpuHandle {
        id,
        kicker: Kicker {
            run,
            // std's raw pthread is a u64; libc's is a pointer on musl (the aarch64 build).
            thread: pthread as libc::pthread_t,
        },
        thread: Some(thread),
    })
}

/// Copies the parts of a `VcpuExit` the dispatcher needs. `run` is the vCPU's kvm_run page,
/// used for the fields `VcpuExit` leaves out (the port access size).
fn decode<'a>(exit: VcpuExit<'a>, run: *const kvm_run) -> Exit<'a> {
    match exit {
        VcpuExit::IoIn(port, data) => Exit::IoIn {
            port,
            // SAFETY: for KVM_EXIT_IO the kernel filled the `io` member; `run` is the live
            // kvm_run page and `io` does not overlap the data area `data` borrows.
            size: usize::from(unsafe { (*run).__bindgen_anon_1.io.size }),
            data,
        },
        VcpuExit::IoOut(port, data) => Exit::IoOut {
            port,
            // SAFETY: as for IoIn.
            size: usize::from(unsafe { (*run).__bindgen_anon_1.io.size }),
            data,
        },
        VcpuExit::MmioRead(addr, data) => Exit::MmioRead { addr, data },
        VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite { addr, data },
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::SystemEvent(kind, data) => Exit::SystemEvent {
            kind,
            flags: data.first().copied().unwrap_or(0),
        },
        VcpuExit::FailEntry(reason, cpu) => Exit::FailEntry { reason, cpu },
        VcpuExit::InternalError => Exit::InternalError {
            // SAFETY: for KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member.
            suberror: unsafe { (*run).__bindgen_anon_1.internal.suberror },
        },
        VcpuExit::Intr => Exit::Interrupted,
        other => Exit::Other(format!("{other:?}")),
    }
}

/// When an exit came back from KVM_RUN: in ticks for the statistics, as an `Instant` for the
/// timeline (each only when recorded).
struct Exited {
    ticks: Option<u64>,
    at: Option<Instant>,
}

/// Records one handled exit: its count and handling time, and a timeline span when tracing.
fn record(ctx: &VcpuContext, stats: &Mutex<ExitStats>, handled: &Handled, exited: Exited) {
    if let Some(t0) = exited.ticks {
        let ticks = ctx.ticks.now().saturating_sub(t0);
        stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(handled.kind, handled.target, ticks);
    }
    if let (Some(tl), Some(exited)) = (&ctx.timeline, exited.at) {
        let done = Instant::now();
        let place = handled
            .target
            .map(|t| exits::place(&t, &ctx.pio, &ctx.mmio))
            .unwrap_or_default();
        tl.span(
            handled.kind.name(),
            "exit",
            exited,
            done,
            serde_json::json!({ "where": place }),
        );
    }
}

/// Whether a kick left `immediate_exit` set in the vCPU's kvm_run page.
fn immediate_exit_set(run: *const kvm_run) -> bool {
    // SAFETY: `run` is this vCPU's live kvm_run page; the kicker writes the byte with a
    // volatile store, so it is read the same way.
    unsafe { std::ptr::addr_of!((*run).immediate_exit).read_volatile() != 0 }
}

fn run_loop(
    fd: &mut VcpuFd,
    id: u8,
    run: *mut kvm_run,
    ctx: &VcpuContext,
    stats: &Mutex<ExitStats>,
) {
    let buses = Buses::new(&ctx.pio, &ctx.mmio);
    ctx.control.note_first_run();
    loop {
        if ctx.control.is_stopping() {
            return;
        }
        // A pause (API) parks the vCPU here, outside KVM_RUN, until resumed or stopped.
        ctx.control.park_if_paused();
        if immediate_exit_set(run) {
            // A kick that did not stop the VM must not keep the vCPU out of the guest. Cleared
            // before the flags are looked at again: a pause or stop sets its flag before it
            // kicks, so one that comes after this look kicks again and finds the byte clear.
            fd.set_kvm_immediate_exit(0);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            continue;
        }
        let result = fd.run();
        let exited = Exited {
            ticks: ctx.exit_stats.then(|| ctx.ticks.now()),
            at: ctx.timeline.as_ref().map(|_| Instant::now()),
        };
        let handled = match result {
            Ok(exit) => handle_exit(decode(exit, run), &buses),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Handled {
                action: ExitAction::Continue,
                kind: ExitKind::Interrupted,
                target: None,
            },
            Err(e) => Handled {
                action: ExitAction::Stop(StopReason::Fatal(format!("KVM_RUN failed: {e}"))),
                kind: ExitKind::Other,
                target: None,
            },
        };
        record(ctx, stats, &handled, exited);
        match handled.action {
            ExitAction::Continue => {}
            ExitAction::Stop(reason) => {
                if reason.wants_vcpu_report() {
                    let report = fatal_report(fd, id, &reason.to_string(), &ctx.memory);
                    ctx.control.set_report(report);
                }
                ctx.control.request_stop(reason);
                return;
            }
        }
    }
}

fn fatal_report(fd: &VcpuFd, id: u8, why: &str, mem: &GuestMemoryMmap) -> String {
    crate::arch::vcpu_report(fd, id, why, mem)
}
