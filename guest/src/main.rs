//! trapvisor-guest: the built-in test guest of trapvisor.
//!
//! A PVH-bootable x86_64 kernel (`boot`) that reads commands from its command line
//! (`cmdline`, `commands`) and reports through the serial port and the debug-exit port. See
//! trapvisor's `docs/builtin-guest.md`.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

mod acpi;
mod apic;
mod boot;
mod cmdline;
mod commands;
mod cpu;
mod drivers;
mod gdt;
mod idt;
mod msix;
mod net;
mod paging;
mod pci;
mod pvh;
mod serial;
mod smp;
mod sync;
mod testdev;
mod time;
mod user;
mod virtio;

/// Called by the boot stub in long mode, on the boot stack, interrupts off.
#[no_mangle]
extern "C" fn rust_main(start_info_paddr: u64) -> ! {
    serial::init();
    gdt::init();
    idt::init();
    let info = match pvh::read(start_info_paddr) {
        Ok(info) => info,
        Err(e) => fail!("{} (start info at {:#x})", e, start_info_paddr),
    };
    apic::init_bsp();
    commands::run_all(info)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if user::at_cpl3() {
        // No port I/O at CPL3: the message goes through the task's log.
        user::panic_at_cpl3(info)
    }
    testdev::fail_unlocked(format_args!("panic: {}", info))
}
