//! What the seccomp filters need to know of aarch64: the audit architecture the filters check.
//! Its syscall table has only the newer forms (`ppoll`, `epoll_pwait`, `unlinkat`), which the
//! common lists allow on every architecture; the numbers come from libc for this target.
use seccompiler::TargetArch;

use crate::seccomp::ThreadKind;

/// The architecture the BPF programs are built for (they check `seccomp_data.arch`).
pub const TARGET: TargetArch = TargetArch::aarch64;

/// No aarch64-only syscalls.
pub fn extra(_kind: ThreadKind) -> &'static [libc::c_long] {
    &[]
}
