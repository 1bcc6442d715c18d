//! Links the guest with its arch's linker script (`src/arch/<arch>/link.ld`) as a non-PIE
//! executable.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let script = dir.join("src/arch").join(&arch).join("link.ld");
    println!("cargo:rustc-link-arg=-T{}", script.display());
    // The -none targets link static-PIE by default; the guest runs where it is linked, and
    // absolute addresses in its data (x86: IDT stubs, GDT pointer, trampoline) must be final.
    println!("cargo:rustc-link-arg=--no-pie");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
}
