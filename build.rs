//! Builds the built-in guest (`guest/`, a separate no_std crate for `x86_64-unknown-none`) with a
//! nested cargo and leaves it at `$OUT_DIR/trapvisor-guest.elf` for `src/guest.rs` to embed.
use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GUEST_TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    for path in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
    let dest = out_dir.join("trapvisor-guest.elf");

    // A guest built elsewhere (packaging, or working on the VMM while guest/ is mid-change).
    println!("cargo:rerun-if-env-changed=TRAPVISOR_GUEST_ELF");
    if let Some(prebuilt) = env::var_os("TRAPVISOR_GUEST_ELF") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        fs::copy(&prebuilt, &dest).unwrap_or_else(|e| {
            panic!("TRAPVISOR_GUEST_ELF: cannot copy {prebuilt:?}: {e}");
        });
        return;
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    ensure_target(&rustc);

    let target_dir = out_dir.join("guest-target");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&guest_dir)
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(GUEST_TARGET)
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
        .join(GUEST_TARGET)
        .join("release")
        .join("trapvisor-guest");
    fs::copy(&built, &dest)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", built.display(), dest.display()));
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
fn ensure_target(rustc: &OsString) {
    if target_installed(rustc) {
        return;
    }
    println!("cargo:warning=the {GUEST_TARGET} target is missing; trying `rustup target add {GUEST_TARGET}`");
    let _ = Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .stdout(Stdio::from(std::io::stderr()))
        .status();
    if !target_installed(rustc) {
        panic!(
            "the built-in guest needs the {GUEST_TARGET} target, which this Rust toolchain lacks; \
             install it with `rustup target add {GUEST_TARGET}`"
        );
    }
}

fn target_installed(rustc: &OsString) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(GUEST_TARGET)
        .join("lib");
    fs::read_dir(&lib).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
    })
}
