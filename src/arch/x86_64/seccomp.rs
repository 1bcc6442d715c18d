//! What the seccomp filters need to know of x86_64: the audit architecture the filters check,
//! and the older syscalls that exist only here (aarch64 has only their newer forms, which the
//! common lists allow on both).
use seccompiler::TargetArch;

use crate::seccomp::ThreadKind;

/// The architecture the BPF programs are built for (they check `seccomp_data.arch`).
pub const TARGET: TargetArch = TargetArch::x86_64;

/// The x86_64-only syscalls a thread of `kind` makes (std's and libc's older forms:
/// `poll` next to `ppoll`, `epoll_wait` next to `epoll_pwait`, `unlink` next to `unlinkat`).
pub fn extra(kind: ThreadKind) -> &'static [libc::c_long] {
    match kind {
        ThreadKind::Vcpu => &[],
        ThreadKind::Worker => &[libc::SYS_epoll_wait, libc::SYS_poll],
        ThreadKind::BlockWorker => &[libc::SYS_epoll_wait],
        ThreadKind::BlockIo => &[],
        ThreadKind::Api => &[libc::SYS_poll],
        ThreadKind::Main => &[libc::SYS_poll, libc::SYS_unlink],
        ThreadKind::Collector => &[],
    }
}
