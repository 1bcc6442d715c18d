//! Issue #9: trapvisor under a real KVM. The host's /dev/kvm here is PVM, which cannot run a
//! stock Linux; so `scripts/nested/run.sh` boots one L1 Linux under QEMU's TCG (which emulates
//! AMD SVM, giving L1 a real /dev/kvm) and runs every scenario of `scripts/nested/scenarios.sh`
//! inside it: Debian's stock kernel as L2 from bzImage and vmlinux, two vCPUs, kvm-clock,
//! poweroff, reboot, panics reported through pvpanic, Linux's virtio_net on trapvisor's
//! virtio-net (MSI-X, ping, iperf3 both ways with and without offloads, two queue pairs),
//! virtio-rng, the built-in guest's tests including its own NIC driver.
//! One L1 boot for all of them; this test then asserts per scenario. See docs/nested.md.
//!
//! Needs qemu-system-x86 and kmod (the kit script installs them with apt-get when run as root)
//! and Debian's package registry for the first run (the kit is cached in .cache/nested/).
//! `TRAPVISOR_NESTED=0` skips it.
#[path = "common/nested.rs"]
mod nested;

use std::path::PathBuf;
use std::time::Duration;

/// Bound on the harness's L1 (it also bounds each scenario); this test waits a little longer.
/// A normal run takes 8–12 minutes on 2 cores (debug binary, NIC scenarios included); a hung
/// L1 must not eat CI's time.
const L1_LIMIT: Duration = Duration::from_secs(900);

#[test]
fn nested_linux_scenarios() {
    if std::env::var("TRAPVISOR_NESTED").is_ok_and(|v| v == "0") {
        nested::show("nested_linux: skipped (TRAPVISOR_NESTED=0)\n");
        return;
    }
    nested::Harness {
        arch: "x86_64",
        trapvisor: PathBuf::from(env!("CARGO_BIN_EXE_trapvisor")),
        results: "test-results",
        results_again: "test-results-again",
        limit: L1_LIMIT,
        tag: "nested_linux",
    }
    .run();
}
