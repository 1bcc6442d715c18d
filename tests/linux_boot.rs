//! Debian's stock kernel, booted from its vmlinux (PVH), prints its banner and command line
//! over trapvisor's serial port. On this machine's PVM /dev/kvm a stock kernel cannot finish
//! booting (it stops later with KVM_EXIT_INTERNAL_ERROR); this test stops it once the command
//! line is printed, and checks the failure report if the kernel got that far first.
mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn fetch_kernel() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/fetch-debian-kernel.sh"))
        .output()
        .expect("run scripts/fetch-debian-kernel.sh");
    assert!(
        out.status.success(),
        "fetch-debian-kernel.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vmlinux = root.join(".cache/kernel/vmlinux");
    assert!(vmlinux.exists());
    vmlinux
}

#[test]
fn stock_vmlinux_prints_banner_and_command_line() {
    let vmlinux = fetch_kernel();
    let marker = "trapvisor.test=banner";
    let mut child = common::trapvisor()
        .args(["run", "--memory", "512M", "--kernel"])
        .arg(&vmlinux)
        .args([
            "--cmdline",
            &format!("earlyprintk=ttyS0 console=ttyS0 panic=-1 {marker}"),
        ])
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Serial output arrives byte by byte; read until the command line line is complete.
    while start.elapsed() < Duration::from_secs(120) {
        let n = stdout.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if text
            .lines()
            .any(|l| l.contains("Command line:") && l.contains(marker))
        {
            break;
        }
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut out = common::wait(child, Duration::from_secs(30));
    out.stdout.insert_str(0, &String::from_utf8_lossy(&seen));
    assert!(
        out.stdout.contains("Linux version 6.1"),
        "no banner: {}",
        out.dump()
    );
    assert!(
        out.stdout.contains(&format!(
            // trapvisor's hint for Linux (arch::x86_64::linux_cmdline) comes first.
            "Command line: pci=noearly earlyprintk=ttyS0 console=ttyS0 panic=-1 {marker}"
        )),
        "{}",
        out.dump()
    );
    match out.code {
        Some(0) => assert!(out.stderr.contains("stopped by the VMM"), "{}", out.dump()),
        // The kernel failed before the signal arrived: then the report must be there.
        Some(1) => assert!(out.stderr.contains("code at"), "{}", out.dump()),
        other => panic!("unexpected exit {other:?}: {}", out.dump()),
    }
}
