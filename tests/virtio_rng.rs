//! virtio-rng end to end: the built-in guest's `rng` command (PCI enumeration, BAR and virtio
//! capability walk, negotiation, one queue, MSI-X) against `--rng` in all four notify × irq
//! combinations, through the `trapvisor` binary on /dev/kvm.
mod common;

use common::{assert_usage_error, run};

/// Runs `rng` with `--rng OPTS` and checks the guest's report.
fn rng_run(opts: Option<&str>) -> common::Output {
    let mut args = vec!["run", "--rng"];
    if let Some(o) = opts {
        args.push(o);
    }
    args.extend(["--cmdline", "rng", "--stats"]);
    let out = run(&args);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    // --stats ends with KVM's own table too (read after seccomp locked the main thread).
    assert!(
        out.stderr.contains("kernel (KVM's own statistics") && out.stderr.contains("exits: "),
        "{}",
        out.dump()
    );
    for line in [
        "pci: 00:01.0 1af4:1044",
        "virtio-cap: notify bar 0",
        "rng: 00:01.0 device features",
        "rng: ok",
        "trapvisor-guest: PASS",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing '{line}': {}",
            out.dump()
        );
    }
    // The guest posted 4 × 64-byte buffers: all of them came back filled.
    assert!(
        out.stdout.contains("rng: got 256 bytes: "),
        "{}",
        out.dump()
    );
    // At least one MSI-X interrupt (several sends may merge into one, never zero).
    let irqs: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("rng: interrupts="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no interrupt count: {}", out.dump()));
    assert!(irqs >= 1, "{}", out.dump());
    out
}

/// Whether the exit statistics show a notify-region write (a kick that exited).
fn notify_exited(out: &common::Output) -> bool {
    out.stderr
        .lines()
        .any(|l| l.contains("mmio virtio-rng notify"))
}

#[test]
fn ioeventfd_and_irqfd_by_default() {
    let out = rng_run(None);
    assert!(!notify_exited(&out), "a kick exited: {}", out.dump());
}

#[test]
fn ioeventfd_and_signal_msi() {
    let out = rng_run(Some("irq=msi"));
    assert!(!notify_exited(&out), "a kick exited: {}", out.dump());
}

#[test]
fn exit_and_irqfd() {
    let out = rng_run(Some("notify=exit"));
    assert!(notify_exited(&out), "no notify exit: {}", out.dump());
}

#[test]
fn exit_and_signal_msi() {
    let out = rng_run(Some("notify=exit,irq=msi"));
    assert!(notify_exited(&out), "no notify exit: {}", out.dump());
}

#[test]
fn print_map_shows_the_pci_windows_and_bar_regions() {
    let out = run(&["run", "--rng", "--print-map", "--cmdline", "exit=0"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    for s in [
        "pci-conf1",
        "pci-ecam",
        "mmio32 window 0xc0000000-0xdfffffff",
        "00:01.0 1af4:1044",
        "virtio-rng notify=ioeventfd,irq=irqfd",
        "bar0 mem32",
    ] {
        assert!(out.stdout.contains(s), "missing '{s}': {}", out.dump());
    }
    for region in [
        "common",
        "isr",
        "device",
        "notify",
        "msix-table",
        "msix-pba",
    ] {
        assert!(
            out.stdout.contains(&format!("virtio-rng bar0 {region}")),
            "missing region {region}: {}",
            out.dump()
        );
    }
}

#[test]
fn without_rng_the_bus_has_only_the_host_bridge() {
    let out = run(&["run", "--print-map", "--cmdline", "exit=0"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(out.stdout.contains("00:00.0 1b36:0008"), "{}", out.dump());
    assert!(!out.stdout.contains("virtio-rng"), "{}", out.dump());
}

#[test]
fn bad_rng_options_are_a_usage_error() {
    let out = run(&["run", "--rng", "notify=sometimes"]);
    assert_usage_error(&out, "notify");
    let out = run(&["run", "--rng", "irq=msi,irq=irqfd"]);
    assert_usage_error(&out, "irq");
}
