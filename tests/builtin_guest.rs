//! Boots the built-in guest on /dev/kvm through the `trapvisor` binary.
mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::{run, trapvisor, wait};

#[test]
fn default_run_passes_with_every_section() {
    let out = run(&["run"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    for line in [
        "trapvisor-guest: hello",
        "pio-loop: 1000 exits, sink=1000",
        "mmio-loop: 1000 exits, sink=2000",
        "cpl3: hello from ring 3",
        "cpl3: ok",
        "trapvisor-guest: PASS",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing '{line}': {}",
            out.dump()
        );
    }
    assert!(out.stderr.contains("PASS"), "{}", out.dump());
}

#[test]
fn command_line_reaches_the_guest() {
    let out = run(&["run", "--cmdline", "hello pio-loop=7", "--memory", "64M"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(
        out.stdout.contains("cmdline: hello pio-loop=7"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("pio-loop: 7 exits, sink=7"),
        "{}",
        out.dump()
    );
}

/// Firecracker's default boot arguments plus the `pci=off` it appends: the guest passes over
/// every one of them (saying which, once) and runs its default sequence.
#[test]
fn kernel_parameters_of_other_vmms_are_passed_over() {
    let fc = "console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux \
              i8042.nomux i8042.nopnp i8042.dumbkbd";
    let out = run(&["run", "--cmdline", fc]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let said = format!("trapvisor-guest: ignored kernel parameters: {fc}\n");
    assert_eq!(out.stdout.matches(&said).count(), 1, "{}", out.dump());
    assert_eq!(
        out.stdout.matches("ignored kernel").count(),
        1,
        "{}",
        out.dump()
    );
    for line in [
        "pio-loop: 1000 exits, sink=1000",
        "cpl3: ok",
        "trapvisor-guest: PASS",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing '{line}': {}",
            out.dump()
        );
    }

    // Mixed with commands: only the commands run; a guest command that parses wins over the
    // kernel option of the same name (`idle` would halt; `idle=poll` is Linux's).
    let out = run(&[
        "run",
        "--cmdline",
        "idle=poll hello virtio_mmio.device=4K@0xd0000000:5 pio-loop=3 net.ifnames=0",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(
        out.stdout.contains(
            "trapvisor-guest: ignored kernel parameters: idle=poll \
             virtio_mmio.device=4K@0xd0000000:5 net.ifnames=0\n"
        ),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("pio-loop: 3 exits, sink=3"),
        "{}",
        out.dump()
    );
    assert!(!out.stdout.contains("mmio-loop"), "{}", out.dump());

    // Nothing ignored: no such line.
    let out = run(&["run", "--cmdline", "hello"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(!out.stdout.contains("ignored"), "{}", out.dump());
}

/// A misspelt command of the guest's own still fails, kernel parameters around it or not.
#[test]
fn misspelt_commands_still_fail_among_kernel_parameters() {
    for (cmdline, why) in [
        ("console=ttyS0 helo pci=off", "unknown command: helo"),
        ("pci=off pio-loop=lots", "bad value: pio-loop=lots"),
        ("panic=1 net.pingg=10.0.2.1", "net.pingg=10.0.2.1"),
        ("reboot=k hello=1", "bad value: hello=1"),
        ("=off", "unknown command: =off"),
    ] {
        let out = run(&["run", "--cmdline", cmdline]);
        assert_eq!(out.code, Some(1), "{cmdline}: {}", out.dump());
        assert!(
            out.stdout.contains("trapvisor-guest: FAIL"),
            "{cmdline}: {}",
            out.dump()
        );
        assert!(out.stdout.contains(why), "{cmdline}: {}", out.dump());
        assert!(
            !out.stdout.contains("ignored kernel"),
            "{cmdline}: {}",
            out.dump()
        );
    }
}

/// `--stats` starts with the VMM's start, phase by phase, up to the first KVM_RUN.
#[test]
fn stats_show_the_start_phases() {
    let out = run(&["run", "--stats", "--cmdline", "hello"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("start phases (ms): "))
        .unwrap_or_else(|| panic!("no start phases: {}", out.dump()));
    let (list, total) = line.split_once("; ").expect("phases; total");
    let phases: Vec<(&str, f64)> = list
        .split(", ")
        .map(|p| {
            let (name, ms) = p.rsplit_once(' ').expect("name ms");
            (name, ms.parse().expect("milliseconds"))
        })
        .collect();
    let names: Vec<&str> = phases.iter().map(|p| p.0).collect();
    assert_eq!(
        names,
        [
            "parse",
            "kvm+ram",
            "vcpus+irqchip",
            "devices",
            "kernel",
            "acpi+boot tables",
            "vcpu setup",
            "threads",
            "to KVM_RUN"
        ],
        "{line}"
    );
    let total: f64 = total
        .strip_suffix(" to the first KVM_RUN")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no total: {line}"));
    let sum: f64 = phases.iter().map(|p| p.1).sum();
    assert!(phases.iter().all(|p| p.1 >= 0.0), "{line}");
    // Each phase is rounded to 0.01 ms.
    assert!((sum - total).abs() < 0.1, "{line}");
    assert!(total > 0.0 && total < 10_000.0, "{line}");
}

#[test]
fn fail_verdict_exits_1() {
    let out = run(&["run", "--cmdline", "fail"]);
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(
        out.stdout.contains("trapvisor-guest: FAIL"),
        "{}",
        out.dump()
    );
    let out = run(&["run", "--cmdline", "exit=3"]);
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(out.stderr.contains("code 3"), "{}", out.dump());
}

#[test]
fn triple_fault_is_reported_with_registers() {
    let out = run(&["run", "--cmdline", "triple-fault"]);
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(out.stdout.contains("triple-fault: now"), "{}", out.dump());
    assert!(out.stderr.contains("triple-fault"), "{}", out.dump());
    assert!(out.stderr.contains("rip="), "{}", out.dump());
    assert!(out.stderr.contains("cr3="), "{}", out.dump());
}

#[test]
fn four_vcpus_all_run() {
    let out = run(&["run", "--cpus", "4", "--cmdline", "smp"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    for cpu in 1..4 {
        assert!(
            out.stdout.contains(&format!("smp: cpu {cpu} up")),
            "cpu {cpu} missing: {}",
            out.dump()
        );
    }
    assert!(out.stdout.contains("smp: 4 cpus online"), "{}", out.dump());
}

#[test]
fn cpl3_section_runs_in_ring_3() {
    let out = run(&["run", "--cmdline", "cpl3"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(
        out.stdout.contains("cpl3: hello from ring 3"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("cpl3: ok"), "{}", out.dump());
}

#[test]
fn sigterm_stops_an_idle_guest_cleanly() {
    let mut child = trapvisor()
        .args(["run", "--cmdline", "idle"])
        .spawn()
        .unwrap();
    // Wait for the guest to say it is idle, then ask trapvisor to stop.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains("idle: halted") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("idle: halted"), "{seen}");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait(child, Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(out.stderr.contains("stopped by the VMM"), "{}", out.dump());
}

#[test]
fn print_map_lists_both_address_spaces() {
    let out = run(&["run", "--print-map", "--cmdline", "exit=0"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    for needle in [
        "address-space: pio",
        "03f8-03ff (size 0x8) serial0",
        "0060-0064 (size 0x5) i8042",
        "00f4-00f7 (size 0x4) debug-exit",
        "0510-051f (size 0x10) testdev",
        "address-space: mmio",
        "00000000f0000000-00000000f0000fff (size 0x1000) testdev",
    ] {
        assert!(
            out.stdout.contains(needle),
            "missing '{needle}': {}",
            out.dump()
        );
    }
}

#[test]
fn guest_image_writes_the_pvh_elf() {
    let dir = std::env::temp_dir().join(format!("trapvisor-img-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("guest.elf");
    let out = run(&["guest-image", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(bytes, trapvisor::guest::GUEST_ELF);
    std::fs::remove_dir_all(&dir).unwrap();
}
