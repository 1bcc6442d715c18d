//! Issue 13: trapvisor on arm64 KVM. This machine is x86_64; `scripts/nested/run.sh --arch
//! aarch64` boots one arm64 L1 (Debian's cloud kernel at EL2 under qemu-system-aarch64 TCG with
//! `virtualization=on,gic-version=3`: a real arm64 /dev/kvm with a GICv3 and its ITS) and runs
//! `scripts/nested/scenarios-aarch64.sh` in it: the aarch64 built-in guest's commands (hello,
//! mmio-loop, el0, smp with 4 vCPUs, pci, rng on every notify/irq path, net.ping over a TAP, the
//! two exits) and Debian's arm64 kernel as L2 (1 and 2 vCPUs, virtio_net with MSI-X through the
//! ITS, ping, iperf3 both ways, virtio-rng, the PL031's date, poweroff, reboot, panic).
//!
//! The test cross-builds the aarch64 trapvisor first (`cargo build --target
//! aarch64-unknown-linux-musl`: a debug build without debug info, as `nested_linux` tests the
//! debug binary; linked by rust-lld; in `target/nested-aarch64`). While that
//! build fails (the arm64 VMM is being written), only the harness's own L1 checks run and the
//! trapvisor scenarios are reported SKIP, with the build's first error; scenarios the VMM cannot
//! pass yet are marked xfail in the scenario file. Failed scenarios run once more on a fresh L1,
//! as in `nested_linux`. See docs/nested-aarch64.md. `TRAPVISOR_NESTED=0` skips it.
#[path = "common/nested.rs"]
mod nested;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bound on L1: about 2 s of L1 boot (10 s when the machine is loaded) and the scenarios.
const L1_LIMIT: Duration = Duration::from_secs(900);
const TARGET: &str = "aarch64-unknown-linux-musl";

/// Whether the toolchain has `target`'s standard library.
fn target_installed(target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::read_dir(
        Path::new(&sysroot)
            .join("lib/rustlib")
            .join(target)
            .join("lib"),
    )
    .is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
    })
}

/// Cross-builds trapvisor for aarch64: the binary, or why not (the build's first error).
fn build(root: &Path) -> Result<PathBuf, String> {
    if !target_installed(TARGET) {
        let _ = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        if !target_installed(TARGET) {
            return Err(format!(
                "the {TARGET} target is not installed (rustup target add {TARGET})"
            ));
        }
    }
    let target_dir = root.join("target/nested-aarch64");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--bin", "trapvisor", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        // Smaller and quicker to link; the binary travels in L1's initramfs.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let first = log
            .lines()
            .skip_while(|l| !l.starts_with("error"))
            .take(6)
            .collect::<Vec<_>>()
            .join("\n");
        return Err(format!(
            "cargo build --target {TARGET} failed ({}):\n{first}",
            out.status
        ));
    }
    Ok(target_dir.join(TARGET).join("debug/trapvisor"))
}

#[test]
fn nested_aarch64_scenarios() {
    if std::env::var("TRAPVISOR_NESTED").is_ok_and(|v| v == "0") {
        nested::show("nested_aarch64: skipped (TRAPVISOR_NESTED=0)\n");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let start = Instant::now();
    let trapvisor = match build(&root) {
        Ok(bin) => {
            nested::show(&format!(
                "nested_aarch64: built {} in {:.0} s\n",
                bin.display(),
                start.elapsed().as_secs_f64()
            ));
            bin
        }
        Err(why) => {
            nested::show(&format!(
                "nested_aarch64: NO aarch64 trapvisor: {why}\nnested_aarch64: only the harness's \
                 own L1 checks run; every trapvisor scenario is SKIP until the build works\n"
            ));
            PathBuf::from("none")
        }
    };
    let rows = nested::Harness {
        arch: "aarch64",
        trapvisor,
        results: "test-results-aarch64",
        results_again: "test-results-aarch64-again",
        limit: L1_LIMIT,
        tag: "nested_aarch64",
    }
    .run();
    assert!(
        rows.iter()
            .any(|r| r.name == "l1-kvm" && r.verdict == "PASS"),
        "the arm64 L1 did not show /dev/kvm with VHE and a GICv3 ITS"
    );
}
