//! Exit decoding and dispatch: one function over a decoded exit.
//!
//! `kvm::vcpu` turns each `VcpuExit` into an [`Exit`] and calls [`handle_exit`]; unit tests call
//! it with fake exits. The function routes port and MMIO accesses to the buses, turns device
//! events and fatal exits into an [`ExitAction`], and never panics on guest input.
use std::cell::RefCell;
use std::fmt;

use crate::bus::{Bus, BusKind, DeviceEvent, Hit, LookupCache};

/// A decoded vCPU exit. Access data borrows the vCPU's `kvm_run` page (or a test buffer).
#[derive(Debug)]
pub enum Exit<'a> {
    /// `in`: `size` bytes per element; `data.len()` is `size * count` for string I/O.
    IoIn {
        port: u16,
        size: usize,
        data: &'a mut [u8],
    },
    /// `out`: as for `IoIn`.
    IoOut {
        port: u16,
        size: usize,
        data: &'a [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    Hlt,
    /// KVM_EXIT_SHUTDOWN: a triple fault (the CPU's shutdown state).
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT with its type (KVM_SYSTEM_EVENT_*) and flags (`data[0]`, 0 when
    /// KVM gives none).
    SystemEvent {
        kind: u32,
        flags: u64,
    },
    FailEntry {
        reason: u64,
        cpu: u32,
    },
    InternalError {
        suberror: u32,
    },
    /// KVM_RUN returned EINTR/EAGAIN, or KVM_EXIT_INTR: someone kicked this vCPU.
    Interrupted,
    /// Anything else, by name.
    Other(String),
}

/// Why the VM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// ACPI poweroff or a system-event shutdown.
    Poweroff,
    /// A reset request (i8042, ACPI reset, system event reset).
    Reset,
    /// The guest reported through the debug-exit port: 0 is pass.
    DebugExit(u32),
    /// The guest triple-faulted.
    TripleFault,
    /// The guest crashed (system event crash).
    GuestCrash,
    /// The guest kernel reported a panic through pvpanic.
    GuestPanic,
    /// The guest kernel reset the machine with PSCI SYSTEM_RESET2's warm reset: how arm64
    /// Linux restarts after a panic when booted with `reboot=panic_warm` (a plain reboot is
    /// SYSTEM_RESET).
    PanicReset,
    /// KVM could not run the guest: the vCPU report says why.
    Fatal(String),
    /// The VMM asked the vCPUs to stop (signal, API).
    Requested,
}

impl StopReason {
    /// Whether the guest or KVM failed (as opposed to a requested stop or a test verdict).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            StopReason::TripleFault
                | StopReason::GuestCrash
                | StopReason::GuestPanic
                | StopReason::PanicReset
                | StopReason::Fatal(_)
        )
    }
}

impl StopReason {
    /// Whether the stopping vCPU's registers say something about the failure: not for a
    /// kernel panic, which the guest reported itself (its console has the backtrace).
    pub fn wants_vcpu_report(&self) -> bool {
        self.is_failure() && !matches!(self, StopReason::GuestPanic | StopReason::PanicReset)
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Poweroff => write!(f, "guest powered off"),
            StopReason::Reset => write!(f, "guest requested a reset"),
            StopReason::DebugExit(0) => write!(f, "guest reported PASS"),
            StopReason::DebugExit(c) => write!(f, "guest reported FAIL (code {c})"),
            StopReason::TripleFault => write!(f, "guest triple-faulted (KVM_EXIT_SHUTDOWN)"),
            StopReason::GuestCrash => write!(f, "guest crashed (KVM_SYSTEM_EVENT_CRASH)"),
            StopReason::GuestPanic => write!(f, "guest kernel panicked (pvpanic)"),
            StopReason::PanicReset => write!(
                f,
                "guest kernel panicked (PSCI SYSTEM_RESET2 warm reset, as reboot=panic_warm asks)"
            ),
            StopReason::Fatal(why) => write!(f, "{why}"),
            StopReason::Requested => write!(f, "stopped by the VMM"),
        }
    }
}

/// `KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2` (arm64, api.rst): the reset came from PSCI
/// SYSTEM_RESET2 (which Linux uses for a warm reset), not SYSTEM_RESET.
pub const SYSTEM_EVENT_RESET_PSCI_RESET2: u64 = 1;

/// What the vCPU loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// Stop the VM. For `Fatal`, the vCPU loop adds the register report.
    Stop(StopReason),
}

/// The kind of an exit, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    Shutdown,
    SystemEvent,
    FailEntry,
    InternalError,
    Interrupted,
    Other,
}

impl ExitKind {
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// The KVM name of the exit.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io-in",
            ExitKind::IoOut => "io-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system-event",
            ExitKind::FailEntry => "fail-entry",
            ExitKind::InternalError => "internal-error",
            ExitKind::Interrupted => "intr",
            ExitKind::Other => "other",
        }
    }
}

impl Exit<'_> {
    pub fn kind(&self) -> ExitKind {
        match self {
            Exit::IoIn { .. } => ExitKind::IoIn,
            Exit::IoOut { .. } => ExitKind::IoOut,
            Exit::MmioRead { .. } => ExitKind::MmioRead,
            Exit::MmioWrite { .. } => ExitKind::MmioWrite,
            Exit::Hlt => ExitKind::Hlt,
            Exit::Shutdown => ExitKind::Shutdown,
            Exit::SystemEvent { .. } => ExitKind::SystemEvent,
            Exit::FailEntry { .. } => ExitKind::FailEntry,
            Exit::InternalError { .. } => ExitKind::InternalError,
            Exit::Interrupted => ExitKind::Interrupted,
            Exit::Other(_) => ExitKind::Other,
        }
    }
}

/// Where a port or MMIO exit went: the address space, and the device and region that handled
/// it (`None`: nobody owns the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub bus: BusKind,
    pub hit: Option<Hit>,
}

/// The outcome of one exit: what to do next, and what it was for the statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub action: ExitAction,
    pub kind: ExitKind,
    pub target: Option<Target>,
}

/// The two address spaces an exit can reach, with the calling vCPU's lookup caches.
pub struct Buses<'a> {
    pub pio: &'a Bus,
    pub mmio: &'a Bus,
    /// The range the last access hit on each bus (PIO, MMIO).
    cache: RefCell<(LookupCache, LookupCache)>,
}

impl<'a> Buses<'a> {
    /// One vCPU's view of both buses (one per vCPU thread: the caches are its own).
    pub fn new(pio: &'a Bus, mmio: &'a Bus) -> Self {
        Buses {
            pio,
            mmio,
            cache: RefCell::default(),
        }
    }
}

fn event_action(event: DeviceEvent) -> ExitAction {
    match event {
        DeviceEvent::None => ExitAction::Continue,
        DeviceEvent::Reset => ExitAction::Stop(StopReason::Reset),
        DeviceEvent::Poweroff => ExitAction::Stop(StopReason::Poweroff),
        DeviceEvent::DebugExit(code) => ExitAction::Stop(StopReason::DebugExit(code)),
        DeviceEvent::GuestPanic => ExitAction::Stop(StopReason::GuestPanic),
    }
}

/// Splits a (possibly string) port access into elements of `size` bytes. A size KVM would never
/// report (0, or not dividing the data) is treated as one access of the whole buffer.
fn elements(len: usize, size: usize) -> usize {
    if size == 0 || !len.is_multiple_of(size) {
        1
    } else {
        // At least one: an empty access is one (empty) access, never a division by zero.
        (len / size).max(1)
    }
}

/// Handles one decoded exit.
pub fn handle_exit(exit: Exit<'_>, buses: &Buses<'_>) -> Handled {
    let kind = exit.kind();
    let io = |hit| {
        Some(Target {
            bus: BusKind::Pio,
            hit,
        })
    };
    let mmio = |hit| {
        Some(Target {
            bus: BusKind::Mmio,
            hit,
        })
    };
    let mut cache = buses.cache.borrow_mut();
    let (pio_cache, mmio_cache) = &mut *cache;
    let (action, target) = match exit {
        Exit::IoIn { port, size, data } => {
            let step = data.len() / elements(data.len(), size);
            let mut hit = None;
            for chunk in data.chunks_mut(step.max(1)) {
                hit = buses.pio.read_cached(pio_cache, u64::from(port), chunk);
            }
            (ExitAction::Continue, io(hit))
        }
        Exit::IoOut { port, size, data } => {
            let step = data.len() / elements(data.len(), size);
            let mut hit = None;
            let mut action = ExitAction::Continue;
            for chunk in data.chunks(step.max(1)) {
                let (h, event) = buses.pio.write_cached(pio_cache, u64::from(port), chunk);
                hit = h;
                action = event_action(event);
                if action != ExitAction::Continue {
                    break;
                }
            }
            (action, io(hit))
        }
        Exit::MmioRead { addr, data } => (
            ExitAction::Continue,
            mmio(buses.mmio.read_cached(mmio_cache, addr, data)),
        ),
        Exit::MmioWrite { addr, data } => {
            let (hit, event) = buses.mmio.write_cached(mmio_cache, addr, data);
            (event_action(event), mmio(hit))
        }
        other => (handle_other(other), None),
    };
    Handled {
        action,
        kind,
        target,
    }
}

/// Everything that is not a port or MMIO access.
fn handle_other(exit: Exit<'_>) -> ExitAction {
    match exit {
        // With the in-kernel irqchip KVM handles HLT itself; a HLT exit means the guest stopped
        // for good (interrupts off), which is how a bare guest ends.
        Exit::Hlt => ExitAction::Stop(StopReason::Fatal(
            "guest halted with no in-kernel irqchip to wake it (KVM_EXIT_HLT)".into(),
        )),
        Exit::Shutdown => ExitAction::Stop(StopReason::TripleFault),
        Exit::SystemEvent { kind, flags } => ExitAction::Stop(match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::Poweroff,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET if flags & SYSTEM_EVENT_RESET_PSCI_RESET2 != 0 => {
                StopReason::PanicReset
            }
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => StopReason::GuestCrash,
            other => StopReason::Fatal(format!("unknown KVM_EXIT_SYSTEM_EVENT type {other}")),
        }),
        Exit::FailEntry { reason, cpu } => ExitAction::Stop(StopReason::Fatal(format!(
            "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host cpu {cpu}"
        ))),
        Exit::InternalError { suberror } => ExitAction::Stop(StopReason::Fatal(format!(
            "KVM_EXIT_INTERNAL_ERROR: suberror {suberror} ({})",
            internal_error_name(suberror)
        ))),
        Exit::Interrupted => ExitAction::Continue,
        Exit::Other(name) => ExitAction::Stop(StopReason::Fatal(format!("unhandled exit {name}"))),
        // Port and MMIO accesses are handled by `handle_exit`.
        Exit::IoIn { .. } | Exit::IoOut { .. } | Exit::MmioRead { .. } | Exit::MmioWrite { .. } => {
            ExitAction::Continue
        }
    }
}

/// KVM_INTERNAL_ERROR_* names.
pub fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
