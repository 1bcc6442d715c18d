//! Builds the built-in guest (`guest/`, a separate no_std crate) for the architecture trapvisor is
//! being built for, with a nested cargo, and leaves it at `$OUT_DIR/trapvisor-guest.img` for
//! `src/guest.rs` to embed: on x86_64 the PVH ELF (`x86_64-unknown-none`), on aarch64 the arm64
//! Image made from the ELF (`aarch64-unknown-none`; see [`elf_to_image`]).
use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest's target for the architecture being built.
fn guest_target() -> &'static str {
    match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-unknown-none",
        Ok("x86_64") => "x86_64-unknown-none",
        other => panic!("the built-in guest exists for x86_64 and aarch64, not {other:?}"),
    }
}

fn main() {
    let target = guest_target();
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    for path in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
    let dest = out_dir.join("trapvisor-guest.img");

    // A guest built elsewhere (packaging, or working on the VMM while guest/ is mid-change).
    println!("cargo:rerun-if-env-changed=TRAPVISOR_GUEST_ELF");
    if let Some(prebuilt) = env::var_os("TRAPVISOR_GUEST_ELF") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        let bytes = fs::read(&prebuilt).unwrap_or_else(|e| {
            panic!("TRAPVISOR_GUEST_ELF: cannot read {prebuilt:?}: {e}");
        });
        write_guest(target, &bytes, &dest);
        return;
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    ensure_target(&rustc, target);

    let target_dir = out_dir.join("guest-target");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&guest_dir)
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(target)
        .arg("--target-dir")
        .arg(&target_dir);
    clean_env(&mut cmd);
    // The nested cargo's stdout would be read as build-script directives: send it to stderr.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build the built-in guest: {e}"));
    if !status.success() {
        panic!("building the built-in guest (guest/) failed: {status}; see the output above");
    }

    let built = target_dir
        .join(target)
        .join("release")
        .join("trapvisor-guest");
    let bytes = fs::read(&built).unwrap_or_else(|e| panic!("cannot read {}: {e}", built.display()));
    write_guest(target, &bytes, &dest);
}

/// Writes the guest as the architecture boots it: the ELF itself on x86_64, the arm64 Image on
/// aarch64 (an ELF given is converted; an Image is taken as is).
fn write_guest(target: &str, bytes: &[u8], dest: &Path) {
    let out = if target.starts_with("aarch64") && bytes.starts_with(b"\x7fELF") {
        elf_to_image(bytes).unwrap_or_else(|e| panic!("the aarch64 built-in guest: {e}"))
    } else {
        bytes.to_vec()
    };
    fs::write(dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}

/// The flat arm64 Image of the guest's ELF: the bytes of its loadable segments laid out from
/// the lowest load address, where the 64-byte Image header is (`guest/elf2image.py` does the
/// same for QEMU runs). `.bss` and `.noinit` are not in the file; the header's `image_size`
/// covers them.
fn elf_to_image(elf: &[u8]) -> Result<Vec<u8>, String> {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(4) != Some(&2) || u16_at(18) != Some(183) {
        return Err("not a 64-bit aarch64 ELF".into());
    }
    let bad = || "truncated ELF".to_string();
    let phoff = u64_at(32).ok_or_else(bad)? as usize;
    let (phentsize, phnum) = (
        u16_at(54).ok_or_else(bad)? as usize,
        u16_at(56).ok_or_else(bad)? as usize,
    );
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (kind, offset, vaddr, filesz) = (
            u32_at(ph).ok_or_else(bad)?,
            u64_at(ph + 8).ok_or_else(bad)? as usize,
            u64_at(ph + 16).ok_or_else(bad)?,
            u64_at(ph + 32).ok_or_else(bad)? as usize,
        );
        if kind == 1 && filesz > 0 {
            loads.push((vaddr, elf.get(offset..offset + filesz).ok_or_else(bad)?));
        }
    }
    let base = loads
        .iter()
        .map(|l| l.0)
        .min()
        .ok_or("no loadable segment")?;
    let end = loads
        .iter()
        .map(|l| l.0 + l.1.len() as u64)
        .max()
        .unwrap_or(base);
    if end - base > 64 << 20 {
        return Err("loadable segments spread over more than 64 MiB".into());
    }
    let mut image = vec![0u8; (end - base) as usize];
    for (vaddr, bytes) in loads {
        let at = (vaddr - base) as usize;
        image[at..at + bytes.len()].copy_from_slice(bytes);
    }
    if image.get(56..60) != Some(b"ARM\x64".as_slice()) {
        return Err("no arm64 Image header at the lowest load address".into());
    }
    Ok(image)
}

/// Strips what the outer build set for itself and would mislead the nested one: flags, wrappers
/// (clippy's driver), target and target dir, the outer package's and profile's variables, and
/// build-script variables. Rustflags are set to none explicitly, which also beats any
/// `build.rustflags` in a config file above `guest/`.
fn clean_env(cmd: &mut Command) {
    const KEEP_PREFIXES: [&str; 7] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "CARGO_MAKEFLAGS", // the jobserver: the nested build shares the outer one's job slots
    ];
    const REMOVE: [&str; 16] = [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "OUT_DIR",
        "RUSTC_BOOTSTRAP",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
        "LLVM_PROFILE_FILE",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = key.starts_with("CARGO_") || key.starts_with("__CARGO");
        if (cargo_var && !KEEP_PREFIXES.iter().any(|p| key.starts_with(p))) || REMOVE.contains(&key)
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "");
}

/// Makes sure the toolchain has the guest's target: tries `rustup target add` once, then gives
/// up with the command to run.
fn ensure_target(rustc: &OsString, target: &str) {
    if target_installed(rustc, target) {
        return;
    }
    println!("cargo:warning=the {target} target is missing; trying `rustup target add {target}`");
    let _ = Command::new("rustup")
        .args(["target", "add", target])
        .stdout(Stdio::from(std::io::stderr()))
        .status();
    if !target_installed(rustc, target) {
        panic!(
            "the built-in guest needs the {target} target, which this Rust toolchain lacks; \
             install it with `rustup target add {target}`"
        );
    }
}

fn target_installed(rustc: &OsString, target: &str) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .join("lib");
    fs::read_dir(&lib).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
    })
}
