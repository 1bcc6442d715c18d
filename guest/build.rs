//! Links the guest with `link.ld` (load address 1 MiB, PVH note) as a non-PIE executable.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let script = dir.join("link.ld");
    println!("cargo:rustc-link-arg=-T{}", script.display());
    // x86_64-unknown-none links static-PIE by default; the guest runs where it is linked, and
    // absolute addresses in its data (IDT stubs, GDT pointer, trampoline) must be final.
    println!("cargo:rustc-link-arg=--no-pie");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
