//! seccomp filters, one per thread kind, installed by each thread before it touches guest
//! input (`--seccomp on|log|off`, default on).
//!
//! * `on`: a syscall outside the list raises SIGSYS; the handler prints which thread made which
//!   syscall, in one line on stderr, and ends the process (exit status 159, 128 + SIGSYS).
//! * `log`: the syscall is allowed and the kernel logs it (`audit: type=1326` in dmesg).
//! * `off`: no filter.
//!
//! A filter is inherited by the threads its thread creates (tiny_http's connection threads
//! get the API filter that way).
use std::collections::BTreeMap;
use std::io;
use std::str::FromStr;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    #[error("cannot install the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, String),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(io::Error),
}

/// How strictly filters are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    Off,
    Log,
    #[default]
    On,
}

impl FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(SeccompMode::Off),
            "log" => Ok(SeccompMode::Log),
            "on" => Ok(SeccompMode::On),
            _ => Err(format!("'{s}': use on, log or off")),
        }
    }
}

/// The kinds of thread trapvisor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// KVM_RUN and exit handling (device registers, notify=exit queue work).
    Vcpu,
    /// The event loop and queue workers: eventfds, epoll, TAP reads and writes, interrupts.
    Worker,
    /// A disk queue's worker: eventfds, epoll, io_uring submissions, interrupts.
    BlockWorker,
    /// A disk's thread-pool helpers (no io_uring): blocking reads, writes, syncs, fallocate.
    BlockIo,
    /// The API server and its connection threads.
    Api,
    /// The main thread once the VM runs: waits, kicks vCPUs, stops and reports.
    Main,
    /// The kernel trace's collector (`--trace-kernel`): waits on the perf rings and reads them
    /// (plain memory); it handles no guest input.
    Collector,
}

/// Every thread: memory, locks, signals, thread exit, the SIGSYS report.
const COMMON: &[libc::c_long] = &[
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_prctl,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
];

fn allowed(kind: ThreadKind) -> Vec<libc::c_long> {
    let extra: &[libc::c_long] = match kind {
        ThreadKind::Vcpu => &[
            libc::SYS_ioctl,    // KVM_RUN, registers, MSI routes, ioeventfds on BAR moves
            libc::SYS_eventfd2, // irqfds and ioeventfds made when the driver enables a device
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_epoll_ctl,
            libc::SYS_tgkill,
            libc::SYS_tkill, // musl's pthread_kill (the static aarch64 build)
            // virtio-blk notify=exit: the kick's requests are submitted inside the exit.
            libc::SYS_io_uring_enter,
        ],
        ThreadKind::Worker => &[
            libc::SYS_ioctl, // KVM_SIGNAL_MSI, TUNSETOFFLOAD
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_ppoll,
            libc::SYS_timerfd_settime, // txhold's timer
        ],
        ThreadKind::BlockWorker => &[
            libc::SYS_ioctl, // KVM_SIGNAL_MSI (irq=msi)
            libc::SYS_read,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_io_uring_enter,
        ],
        ThreadKind::BlockIo => &[
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
        ],
        ThreadKind::Api => &[
            libc::SYS_accept4,
            libc::SYS_accept,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_shutdown,
            libc::SYS_fcntl,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ppoll,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_openat, // glibc reads /proc/sys/... when sizing thread stacks
            libc::SYS_pread64,
            libc::SYS_lseek,
        ],
        ThreadKind::Main => &[
            libc::SYS_ioctl, // terminal mode restore, KVM teardown
            libc::SYS_read,
            libc::SYS_ppoll,
            libc::SYS_tgkill,
            libc::SYS_tkill, // musl's pthread_kill (the static aarch64 build): vCPU kicks
            libc::SYS_openat,
            libc::SYS_unlinkat,
            libc::SYS_lseek,
            libc::SYS_fcntl,
            libc::SYS_shutdown,
            libc::SYS_connect,
            libc::SYS_socket,
            libc::SYS_sendto,
            libc::SYS_rt_sigaction,
            libc::SYS_wait4,
            libc::SYS_pread64, // KVM's statistics fds (--stats)
        ],
        ThreadKind::Collector => &[
            libc::SYS_ppoll,
            // glibc's malloc reads /proc/sys/vm/overcommit_memory (read-only) the first time
            // it shrinks a thread's heap, which this thread's growing buffers cause.
            libc::SYS_openat,
            libc::SYS_read,
        ],
    };
    let arch_only = crate::arch::seccomp::extra(kind);
    let mut v: Vec<libc::c_long> = COMMON
        .iter()
        .chain(extra)
        .chain(arch_only)
        .copied()
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Builds the BPF program for `kind`.
pub fn build(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed(kind).into_iter().map(|n| (n, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        crate::arch::seccomp::TARGET,
    )
    .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string()))
}

/// Installs the filter for `kind` on the calling thread (nothing when `mode` is off).
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let program = build(kind, mode)?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind, e.to_string()))
}

/// Offset of `si_syscall` in a SIGSYS siginfo_t (the same on x86_64 and aarch64): signo, errno,
/// code (12 bytes, padded to 16), then `_call_addr` (8), then `_syscall`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here, and only syscalls every filter allows.
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; the field read is inside it.
    let nr = unsafe { *(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer given.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let mut msg = [0u8; 160];
    let mut len = 0;
    let mut put = |b: &[u8]| {
        let n = b.len().min(msg.len() - len);
        msg[len..len + n].copy_from_slice(&b[..n]);
        len += n;
    };
    put(b"trapvisor: seccomp: thread '");
    put(&name[..name.iter().position(|&c| c == 0).unwrap_or(16)]);
    put(b"' made forbidden syscall ");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b"; stopping (see --seccomp)\n");
    // SAFETY: write(2) of an initialized buffer, then _exit: both async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), len);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// Installs the SIGSYS handler that reports forbidden syscalls in `on` mode.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(|e| SeccompError::Handler(io::Error::from_raw_os_error(e.errno())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("on".parse(), Ok(SeccompMode::On));
        assert_eq!("log".parse(), Ok(SeccompMode::Log));
        assert_eq!("off".parse(), Ok(SeccompMode::Off));
        assert!("maybe".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn every_kind_builds_and_keeps_what_the_sigsys_report_needs() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Worker,
            ThreadKind::BlockWorker,
            ThreadKind::BlockIo,
            ThreadKind::Api,
            ThreadKind::Main,
            ThreadKind::Collector,
        ] {
            for mode in [SeccompMode::On, SeccompMode::Log] {
                assert!(!build(kind, mode).unwrap().is_empty());
            }
            let a = allowed(kind);
            for needed in [libc::SYS_write, libc::SYS_prctl, libc::SYS_exit_group] {
                assert!(a.contains(&needed), "{kind:?} lacks {needed}");
            }
        }
        // Only a disk worker and a vCPU (a disk's notify=exit kick) enter io_uring, and neither
        // can set one up or register with it.
        for kind in [ThreadKind::Worker, ThreadKind::BlockIo] {
            assert!(
                !allowed(kind).contains(&libc::SYS_io_uring_enter),
                "{kind:?}"
            );
        }
        for kind in [
            ThreadKind::BlockWorker,
            ThreadKind::BlockIo,
            ThreadKind::Vcpu,
        ] {
            let a = allowed(kind);
            for forbidden in [
                libc::SYS_io_uring_setup,
                libc::SYS_io_uring_register,
                libc::SYS_openat,
                libc::SYS_clone,
                libc::SYS_socket,
            ] {
                assert!(!a.contains(&forbidden), "{kind:?} allows {forbidden}");
            }
        }
        // The vCPU thread cannot open files, make sockets or start processes.
        let v = allowed(ThreadKind::Vcpu);
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
        ] {
            assert!(!v.contains(&forbidden));
        }
    }

    #[test]
    fn a_filtered_thread_runs_allowed_syscalls_and_gets_an_error_for_others() {
        // Errno instead of Trap, so the test process survives: same allow-list.
        let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(ThreadKind::Vcpu)
            .into_iter()
            .map(|n| (n, Vec::new()))
            .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            crate::arch::seccomp::TARGET,
        )
        .unwrap();
        let program: BpfProgram = filter.try_into().unwrap();
        let (pid_ok, open_err) = std::thread::spawn(move || {
            seccompiler::apply_filter(&program).unwrap();
            // SAFETY: plain syscalls with valid arguments.
            let pid = unsafe { libc::getpid() };
            // SAFETY: as above; the path is a valid NUL-terminated string.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
            (
                pid > 0,
                fd == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM),
            )
        })
        .join()
        .unwrap();
        assert!(pid_ok);
        assert!(open_err, "open was not refused");
    }
}
