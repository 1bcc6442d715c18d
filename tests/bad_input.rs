//! Bad user input: each gets a one-line error and exit status 2, and nothing is left behind.
mod common;

use std::path::PathBuf;

use common::{assert_usage_error, run};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trapvisor-bad-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn missing_kernel() {
    let out = run(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_usage_error(&out, "cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn unreadable_kernel_is_a_directory() {
    let out = run(&["run", "--kernel", "/"]);
    assert_usage_error(&out, "kernel / is a directory");
}

#[test]
fn initrd_that_is_a_directory() {
    let out = run(&["run", "--initrd", "/"]);
    assert_usage_error(&out, "initrd / is a directory");
    assert!(
        !out.stderr.contains("9223372036854775807"),
        "{}",
        out.dump()
    );
}

#[test]
fn kernel_or_initrd_that_is_not_a_file() {
    let out = run(&["run", "--kernel", "/dev/null"]);
    assert_usage_error(&out, "not a regular file or a block device");
    let out = run(&["run", "--initrd", "/dev/zero"]);
    assert_usage_error(&out, "initrd /dev/zero is not a regular file");
}

#[test]
fn empty_kernel() {
    let dir = scratch("emptykernel");
    let k = dir.join("kernel");
    std::fs::write(&k, b"").unwrap();
    let out = run(&["run", "--kernel", k.to_str().unwrap()]);
    assert_usage_error(&out, "is empty");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A bzImage whose setup header claims 3 MiB of protected-mode code behind a file of 64 KiB
/// (as the first bytes of a real one would be).
#[test]
fn truncated_bzimage() {
    let dir = scratch("truncbz");
    let k = dir.join("bzImage");
    let mut img = vec![0u8; 64 << 10];
    img[0x1f1] = 27;
    img[0x1f4..0x1f8].copy_from_slice(&((3u32 << 20) / 16).to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    std::fs::write(&k, &img).unwrap();
    let out = run(&["run", "--kernel", k.to_str().unwrap()]);
    assert_usage_error(
        &out,
        "bzImage kernel is truncated: the file has 65536 bytes",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_elf() {
    let dir = scratch("truncelf");
    let k = dir.join("guest.elf");
    let img = trapvisor::guest::GUEST_ELF;
    std::fs::write(&k, &img[..img.len() / 2]).unwrap();
    let out = run(&["run", "--kernel", k.to_str().unwrap()]);
    assert_usage_error(&out, "ELF kernel is truncated");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let dir = scratch("notkernel");
    let k = dir.join("kernel");
    std::fs::write(&k, vec![0x42u8; 8192]).unwrap();
    let out = run(&["run", "--kernel", k.to_str().unwrap()]);
    assert_usage_error(&out, "kernel");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The first 64 bytes of an arm64 `Image` (booting.rst: MZ for the EFI stub, text_offset 0,
/// image_size, flags, the magic "ARM\x64" at 56), then padding.
fn arm64_image() -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0..2].copy_from_slice(b"MZ");
    b[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes());
    b[24..32].copy_from_slice(&0xau64.to_le_bytes());
    b[56..60].copy_from_slice(b"ARM\x64");
    b
}

/// The start of an x86 bzImage: the setup header's "HdrS" at 0x202, boot protocol 2.15.
fn bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b
}

#[test]
fn kernel_of_the_other_architecture_is_named() {
    // An arm64 Image given to the x86_64 build, an x86 bzImage to the aarch64 build.
    let (image, kind) = match trapvisor::arch::NAME {
        "x86_64" => (arm64_image(), "arm64 Image"),
        _ => (bzimage(), "x86 bzImage"),
    };
    let dir = scratch("foreign");
    let k = dir.join("kernel");
    std::fs::write(&k, image).unwrap();
    let out = run(&["run", "--kernel", k.to_str().unwrap()]);
    assert_usage_error(&out, kind);
    assert!(
        out.stderr
            .contains(&format!("runs {} guests", trapvisor::arch::NAME)),
        "{}",
        out.dump()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_initrd() {
    let out = run(&["run", "--initrd", "/nonexistent/initrd"]);
    assert_usage_error(&out, "cannot open initrd /nonexistent/initrd");
}

#[test]
fn initrd_larger_than_ram() {
    let dir = scratch("bigrd");
    let rd = dir.join("initrd");
    // Sparse: 80 MiB of holes for a 64 MiB guest.
    let f = std::fs::File::create(&rd).unwrap();
    f.set_len(80 << 20).unwrap();
    let img = dir.join("guest.elf");
    std::fs::write(&img, trapvisor::guest::GUEST_ELF).unwrap();
    let out = run(&[
        "run",
        "--kernel",
        img.to_str().unwrap(),
        "--initrd",
        rd.to_str().unwrap(),
        "--memory",
        "64M",
    ]);
    assert_usage_error(&out, "initrd");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn memory_zero_unparsable_or_too_large() {
    for (mem, needle) in [
        ("0", "larger than 0"),
        ("lots", "not a size"),
        ("12X", "unknown unit"),
        ("64T", "more than the host"),
    ] {
        let out = run(&["run", "--memory", mem]);
        assert_usage_error(&out, needle);
    }
}

#[test]
fn cpus_zero() {
    let out = run(&["run", "--cpus", "0"]);
    assert_usage_error(&out, "cpus");
}

#[test]
fn no_permission_on_dev_kvm_says_how_to_fix() {
    // Run as 'nobody' with no groups: /dev/kvm (root-only here) is then not accessible.
    let Ok(status) = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: setpriv not installed");
        return;
    };
    assert!(status.status.success());
    let out = common::wait(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_trapvisor"))
            .arg("run")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        std::time::Duration::from_secs(30),
    );
    if out.stderr.contains("Permission denied") && !out.stderr.contains("kvm") {
        eprintln!("skipped: the binary itself is not executable by nobody");
        return;
    }
    common::assert_usage_error(&out, "permission denied");
    assert!(out.stderr.contains("kvm' group"), "{}", out.dump());
}

/// `vhost=on` on a host without `/dev/vhost-net` (this PVM host): exit 2, one line that says
/// how to get it, and no TAP made (the check comes first).
#[test]
fn vhost_without_dev_vhost_net() {
    if std::path::Path::new("/dev/vhost-net").exists() {
        eprintln!("skipped: this host has /dev/vhost-net (the nested vhost scenarios cover it)");
        return;
    }
    let out = run(&[
        "run",
        "--net",
        "tap=tvnovhost0,vhost=on",
        "--cmdline",
        "exit=0",
    ]);
    assert_usage_error(&out, "modprobe vhost_net");
    assert!(out.stderr.contains("/dev/vhost-net"), "{}", out.dump());
    assert!(
        !std::path::Path::new("/sys/class/net/tvnovhost0").exists(),
        "a TAP was left behind"
    );
}

/// The options vhost-net cannot work with are refused when parsed.
#[test]
fn vhost_with_exit_notify_or_msi() {
    for (net, needle) in [
        ("tap=tv0,vhost=on,notify=exit", "needs notify=ioeventfd"),
        ("tap=tv0,vhost=on,irq=msi", "needs irq=irqfd"),
    ] {
        let out = run(&["run", "--net", net]);
        assert_usage_error(&out, needle);
    }
}

#[test]
fn a_missing_argument_is_named_on_the_one_line() {
    let out = run(&["guest-image"]);
    assert_usage_error(&out, "not provided: <PATH>");
}
