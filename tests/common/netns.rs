//! A throwaway network namespace for tests that need real network devices (TAPs, addresses,
//! routes) without touching the host's network.
//!
//! Use it from a test file with `#[path = "common/netns.rs"] mod netns;`.
//!
//! `NetNs::new` runs `ip netns add`, `Drop` runs `ip netns del`. Code runs inside with
//! [`NetNs::exec`], on a thread of its own: `setns(CLONE_NEWNET)` moves only the calling
//! thread, so the test thread itself never changes namespace. Fds opened inside (a TAP's, a
//! socket's) keep their namespace and may be used from any thread afterwards.
#![allow(dead_code)]
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named after `tag`, the pid and a counter, so tests in parallel (and
    /// test binaries in parallel) never share one. Its loopback is up. `None`, with a
    /// "skipped: ..." line on stderr, when no namespace can be made (not root, no `ip`).
    pub fn new(tag: &str) -> Option<NetNs> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tv-{tag}-{}-{n}", std::process::id());
        let out = match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipped: cannot run `ip` to create a network namespace: {e}");
                return None;
            }
        };
        if !out.status.success() {
            eprintln!(
                "skipped: `ip netns add {name}` failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])
            .expect("bring up loopback in the new namespace");
        Some(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread inside the namespace and returns its result. A panic in `f`
    /// is passed on to the caller.
    pub fn exec<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        std::thread::scope(|s| {
            let thread = s.spawn(move || {
                // SAFETY: setns takes an fd we own (alive for the call) and a flag; it changes
                // the namespace of this thread only, which ends when `f` returns.
                let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns({path}): {}", std::io::Error::last_os_error());
                drop(file);
                f()
            });
            match thread.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs `ip -n NAME args...`: its stdout, or a one-line error with the command and its
    /// stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .map_err(|e| format!("ip -n {} {}: {e}", self.name, args.join(" ")))?;
        if !out.status.success() {
            return Err(format!(
                "ip -n {} {}: {}: {}",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether a network device `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        self.ip(&["link", "show", "dev", dev]).is_ok()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run `ip netns del {}`: {e}", self.name),
        }
    }
}
