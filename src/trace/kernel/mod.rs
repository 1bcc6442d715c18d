//! The kernel half of the trap path (`--trace-kernel`): KVM's tracepoints on trapvisor's own
//! threads, read live.
//!
//! At start-up the tracepoints' `format` files are read from tracefs (ids and field offsets:
//! never hard-coded) and one test event is opened; without tracefs, or without the privilege
//! (root or CAP_PERFMON), [`KernelTrace::open`] says why in one line and the VM runs without.
//! Each vCPU thread opens its own events before its seccomp filter is installed ([`attach`]),
//! so that every exit is seen; the threads that inject interrupts (virtio workers, the event
//! loop) are opened by the main thread once they run ([`attach_others`]). Each thread has one
//! ring buffer; a collector thread drains the rings (woken by their watermark, at least every
//! 20 ms), decodes each record and feeds the exit statistics ([`exits::KernelExits`]) and, with
//! `--trace`, the list of events the timeline is built from when the VM stops.
//!
//! [`attach`]: KernelTrace::attach
//! [`attach_others`]: KernelTrace::attach_others
pub mod events;
pub mod exits;
pub mod format;
pub mod reasons;
pub mod ring;
pub mod timeline;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use self::events::{Decoder, Event, WANTED};
use self::exits::KernelExits;
use self::ring::{gettid, ThreadRing};
use crate::bus::Bus;
use crate::seccomp::{self, SeccompMode, ThreadKind};

/// Where tracefs may be mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// Ring buffer per thread (smaller when the mlock limit allows no more): a vCPU at 100k
/// exits/s writes about 30 MB/s into it; a Linux boot in a nested L1 about 2 MB/s, so this
/// holds two seconds of it for a collector that a busy host does not schedule.
const RING_BYTES: usize = 4 << 20;
/// The collector wakes when a ring is this full (and at least every 20 ms).
const WATERMARK: usize = RING_BYTES / 4;
/// Events kept for the timeline (about 56 bytes each).
pub const EVENT_CAPACITY: usize = 1_000_000;

/// A traced thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedThread {
    pub tid: u32,
    pub name: String,
    /// The vCPU it runs, if it is a vCPU thread.
    pub vcpu: Option<u8>,
}

#[derive(Default)]
struct State {
    rings: Vec<ThreadRing>,
    threads: Vec<TracedThread>,
    /// Events kept for the timeline (only when asked for).
    events: Vec<Event>,
    dropped: u64,
    exits: KernelExits,
    errors: Vec<String>,
}

/// KVM's tracepoints on this VM's threads.
pub struct KernelTrace {
    decoder: Decoder,
    /// Tracepoint ids in [`WANTED`] order, of those this host has.
    ids: Vec<u64>,
    available: Vec<&'static str>,
    missing: Vec<&'static str>,
    keep_events: bool,
    state: Mutex<State>,
    stop: AtomicBool,
    collector: Mutex<Option<JoinHandle<()>>>,
}

fn read_format(root: &Path, name: &str) -> Result<Option<format::EventFormat>, String> {
    let path = root.join("events/kvm").join(name).join("format");
    match std::fs::read_to_string(&path) {
        Ok(text) => format::parse(&text)
            .map(Some)
            .map_err(|e| format!("cannot parse {}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "cannot read {} (tracefs is readable by root only here): run as root",
            path.display()
        )),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The tracefs directory with KVM's events, or why there is none.
fn tracefs() -> Result<PathBuf, String> {
    let mut denied = None;
    for root in TRACEFS {
        let kvm = Path::new(root).join("events/kvm");
        match std::fs::metadata(&kvm) {
            Ok(_) => return Ok(PathBuf::from(root)),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied = Some(root),
            Err(_) => {}
        }
    }
    if let Some(root) = denied {
        return Err(format!(
            "cannot read {root} (tracefs is readable by root only here): run as root"
        ));
    }
    if TRACEFS.iter().any(|r| Path::new(r).join("events").exists()) {
        return Err("tracefs has no kvm events (is the kvm module loaded?)".into());
    }
    Err("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)".into())
}

/// Why perf_event_open failed, in words.
fn perf_refused(e: &io::Error) -> String {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "perf_event_open was refused ({e}): KVM's tracepoints need root or CAP_PERFMON \
             (kernel.perf_event_paranoid is {paranoid})"
        ),
        _ => format!("perf_event_open failed: {e}"),
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KernelTrace {
    /// Reads the tracepoints' formats and checks that this process may open them. `Err` is one
    /// line saying why not. `keep_events`: keep every event for a timeline (`--trace`).
    pub fn open(keep_events: bool) -> Result<KernelTrace, String> {
        let root = tracefs()?;
        let mut formats = Vec::new();
        let (mut available, mut missing) = (Vec::new(), Vec::new());
        for name in WANTED {
            match read_format(&root, name)? {
                Some(f) => {
                    formats.push(f);
                    available.push(name);
                }
                None => missing.push(name),
            }
        }
        let decoder = Decoder::new(&formats);
        let ids: Vec<u64> = formats.iter().map(|f| f.id).collect();
        if ids.is_empty() {
            return Err("none of KVM's tracepoints exist on this host".into());
        }
        // One event on this thread, opened and dropped: the privilege check.
        ThreadRing::open(None, &ids[..1], 4096, 1).map_err(|e| perf_refused(&e))?;
        // Room for every event to keep, reserved once (address space only until used): the
        // collector never reallocates it.
        let state = State {
            events: Vec::with_capacity(if keep_events { EVENT_CAPACITY } else { 0 }),
            ..State::default()
        };
        Ok(KernelTrace {
            decoder,
            ids,
            available,
            missing,
            keep_events,
            state: Mutex::new(state),
            stop: AtomicBool::new(false),
            collector: Mutex::new(None),
        })
    }

    /// The tracepoints this host has, and those it lacks.
    pub fn host_events(&self) -> (&[&'static str], &[&'static str]) {
        (&self.available, &self.missing)
    }

    fn add(&self, tid: Option<u32>, name: String, vcpu: Option<u8>) {
        // A user with CAP_PERFMON but not CAP_IPC_LOCK may lock only perf_event_mlock_kb
        // (516 KiB by default) of rings: smaller ones then, rather than none.
        let mut result = ThreadRing::open(tid, &self.ids, RING_BYTES, WATERMARK);
        for bytes in [RING_BYTES / 4, RING_BYTES / 16, RING_BYTES / 64] {
            match &result {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOMEM)) => {
                    result = ThreadRing::open(tid, &self.ids, bytes, bytes / 4);
                }
                _ => break,
            }
        }
        let mut st = lock(&self.state);
        match result {
            Ok(r) => {
                st.threads.push(TracedThread {
                    tid: r.tid,
                    name,
                    vcpu,
                });
                st.rings.push(r);
            }
            Err(e) => st.errors.push(format!("{name}: {}", perf_refused(&e))),
        }
    }

    /// Opens the events of the calling thread, vCPU `vcpu` (call it before the thread's seccomp
    /// filter: perf_event_open is not in it). A failure is kept and reported, not fatal.
    pub fn attach(&self, vcpu: u8) {
        self.add(None, format!("vcpu{vcpu}"), Some(vcpu));
    }

    /// Opens the events of every other thread of this process that runs now and is not traced
    /// yet, except the calling one (the virtio workers, the event loop: they inject interrupts).
    /// Call it before the vCPU threads exist: they open their own.
    pub fn attach_others(&self) {
        let me = gettid();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        let known: Vec<u32> = lock(&self.state).threads.iter().map(|t| t.tid).collect();
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if tid == me || known.contains(&tid) {
                continue;
            }
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| format!("tid {tid}"));
            // Not the collector, the API, or KVM's own kernel workers of this VM
            // (kvm-nx-lpage-recovery runs in this thread group).
            if name == "ktrace" || name.starts_with("api") || name.starts_with("kvm-") {
                continue;
            }
            self.add(Some(tid), name, None);
        }
    }

    /// Starts the thread that drains the rings (confined by the collector seccomp filter).
    pub fn start_collector(self: &Arc<Self>, mode: SeccompMode) -> io::Result<()> {
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("ktrace".into())
            .spawn(move || {
                if let Err(e) = seccomp::install(ThreadKind::Collector, mode) {
                    lock(&me.state).errors.push(e.to_string());
                    return;
                }
                while !me.stop.load(Ordering::SeqCst) {
                    me.wait(Duration::from_millis(20));
                    me.drain();
                }
            })?;
        *self.collector.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        Ok(())
    }

    /// Waits until a ring reaches its watermark, or `timeout`.
    fn wait(&self, timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = lock(&self.state)
            .rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(0),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        // SAFETY: `fds` is a valid array of initialized pollfd of the given length and `ts` a
        // valid timespec. A ring that is closed meanwhile only makes ppoll report POLLNVAL.
        unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
    }

    /// Takes every record out of every ring and feeds it on.
    fn drain(&self) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let vcpus: HashMap<u32, bool> = st
            .threads
            .iter()
            .map(|t| (t.tid, t.vcpu.is_some()))
            .collect();
        for ring in &mut st.rings {
            let ring_tid = ring.tid;
            ring.drain(|record| {
                let Some((tid, time_ns, raw)) = record else {
                    // Records lost here: the exit in progress on this thread cannot be paired.
                    st.exits.lost(ring_tid);
                    return;
                };
                let Some(kind) = self.decoder.decode(raw) else {
                    return;
                };
                let e = Event { tid, time_ns, kind };
                if vcpus.get(&tid).copied().unwrap_or(false) {
                    st.exits.vcpu_event(&e);
                } else {
                    st.exits.other_event(&e);
                }
                if self.keep_events {
                    if st.events.len() < EVENT_CAPACITY {
                        st.events.push(e);
                    } else {
                        st.dropped += 1;
                    }
                }
            });
        }
    }

    /// Stops the collector and takes what is left in the rings; the rings are closed.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self
            .collector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = t.join();
        }
        self.drain();
    }

    /// The threads traced.
    pub fn threads(&self) -> Vec<TracedThread> {
        lock(&self.state).threads.clone()
    }

    /// The events kept (each thread's in time order), and how many did not fit.
    pub fn take_events(&self) -> (Vec<Event>, u64) {
        let mut st = lock(&self.state);
        (std::mem::take(&mut st.events), st.dropped)
    }

    /// Records the kernel lost (rings full) and threads that could not be traced.
    pub fn losses(&self) -> (u64, Vec<String>) {
        let st = lock(&self.state);
        (st.rings.iter().map(|r| r.lost).sum(), st.errors.clone())
    }

    /// `/stats`' `kernel_trace`: which events this host provides, the exit reasons with both
    /// halves, accesses handled in the kernel, injections, losses.
    pub fn to_json(&self, pio: &Bus, mmio: &Bus) -> Value {
        let st = lock(&self.state);
        let hw = st.exits.has_hardware_exits();
        let lost: u64 = st.rings.iter().map(|r| r.lost).sum();
        let note = if hw {
            "kvm_exit/kvm_entry pairs: per hardware exit reason, exit to entry; an exit that \
             went to trapvisor (kvm_userspace_exit between) is listed by the device and region \
             its access named"
                .to_string()
        } else if self.missing.contains(&"kvm_exit") || st.exits.seen.contains_key("kvm_fpu") {
            format!(
                "this host's KVM fires no kvm_exit/kvm_entry{}: each KVM_RUN is bracketed by \
                 kvm_fpu (load) and kvm_userspace_exit, so the time shown is the guest's and \
                 KVM's together, by the KVM_EXIT reason it returned with",
                if self.missing.contains(&"kvm_exit") {
                    ""
                } else {
                    " (the tracepoints exist, none fired: a PVM-style host)"
                }
            )
        } else {
            "no exit seen yet".to_string()
        };
        let mut seen: Vec<(&&str, &u64)> = st.exits.seen.iter().collect();
        seen.sort();
        json!({
            "mode": if hw { "exits" } else { "kvm_run" },
            "host_events": self.available,
            "host_lacks": self.missing,
            "seen": seen.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "threads": st.threads.iter().map(|t| json!({"tid": t.tid, "name": t.name, "vcpu": t.vcpu})).collect::<Vec<_>>(),
            "note": note,
            "reasons": st.exits.reasons_json(pio, mmio),
            "kernel_accesses": st.exits.kernel_accesses_json(pio, mmio),
            "lost_records": lost,
            "errors": st.errors,
        })
    }
}
