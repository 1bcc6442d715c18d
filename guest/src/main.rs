//! trapvisor-guest: the built-in test guest of trapvisor.
//!
//! A small kernel for x86_64 (a PVH ELF) and aarch64 (an arm64 `Image`) that reads commands
//! from its command line (`cmdline`, `commands`) and reports through the console and the
//! VMM's exit device (`report`). Everything that differs between the two is under `arch/`;
//! the rest (commands, PCI, MSI-X, virtio and its drivers, the IPv4 stack and its workloads) is
//! shared. See trapvisor's `docs/builtin-guest.md`.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

mod arch;
mod blk;
mod cmdline;
mod commands;
mod crc32;
mod drivers;
mod msix;
mod net;
mod pci;
mod report;
mod sync;
mod task;
mod virtio;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if arch::user::in_user() {
        // No console access unprivileged: the message goes through the task's log.
        task::panic_in_user(info)
    }
    report::fail_unlocked(format_args!("panic: {}", info))
}
