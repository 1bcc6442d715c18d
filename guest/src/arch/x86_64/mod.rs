//! x86_64: a PVH-bootable kernel (`boot`: 32-bit entry, long mode, identity map), COM1 for
//! output (`serial`), the IDT and the local APIC for interrupts, the debug-exit port and
//! trapvisor's test device for the verdict (`testdev`), ACPI (MADT, MCFG) for the machine's
//! shape, INIT-SIPI-SIPI for `smp`, ring 3 for the unprivileged loop and tasks (`user`).
pub mod acpi;
pub mod apic;
pub mod boot;
pub mod commands;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod irq;
pub mod msi;
pub mod paging;
pub mod pci;
pub mod pvh;
pub mod serial;
pub mod smp;
pub mod testdev;
pub mod time;
pub mod user;

pub use pvh::BootInfo;

/// Called by the boot stub in long mode, on the boot stack, interrupts off.
#[no_mangle]
extern "C" fn rust_main(start_info_paddr: u64) -> ! {
    serial::init();
    gdt::init();
    idt::init();
    let info = match pvh::read(start_info_paddr) {
        Ok(info) => info,
        Err(e) => crate::fail!("{} (start info at {:#x})", e, start_info_paddr),
    };
    apic::init_bsp();
    crate::commands::run_all(info)
}
