//! aarch64: an arm64 `Image` entered at EL1 with the MMU off and X0 = the FDT (`boot`), which
//! describes the machine (`fdt`, `machine`); a 16550 or PL011 for output (`serial`), the GICv3
//! with its ITS for interrupts and MSIs (`gic`, `irq`, `msi`), the generic timer for time,
//! PSCI for CPUs and power (`psci`, `smp`), trapvisor's test device for the verdict
//! (`testdev`), EL0 for the unprivileged loop and tasks (`user`).
pub mod boot;
pub mod commands;
pub mod cpu;
pub mod exceptions;
pub mod fdt;
pub mod gic;
pub mod irq;
pub mod machine;
pub mod msi;
pub mod paging;
pub mod pci;
pub mod psci;
pub mod serial;
pub mod smp;
pub mod testdev;
pub mod time;
pub mod user;

pub use machine::BootInfo;

use crate::sync::Global;

/// Filled once by `rust_main`, read-only afterwards.
#[link_section = ".noinit.bootinfo"]
static INFO: Global<BootInfo> = Global::new(machine::EMPTY);

/// Called by the boot code with the MMU on, on the boot stack, interrupts masked.
#[no_mangle]
extern "C" fn rust_main(fdt_paddr: u64, image_paddr: u64) -> ! {
    // SAFETY: the FDT is in RAM, identity-mapped (as device memory: only aligned reads, which
    // the parser's byte and word reads are), and nothing writes it.
    let fdt = match unsafe { fdt::Fdt::from_addr(fdt_paddr) } {
        Ok(f) => f,
        // No console without the FDT: the verdict is all there is.
        Err(_) => testdev::power(false),
    };
    serial::init(machine::find_uart(&fdt));
    // SAFETY: one CPU, before any command: INFO is written here only.
    let info = unsafe {
        core::ptr::write(INFO.get(), machine::EMPTY);
        &mut *INFO.get()
    };
    psci::init(None);
    if let Err(e) = machine::read(&fdt, fdt_paddr, image_paddr, info) {
        crate::fail!("fdt: {} (fdt at {:#x})", e, fdt_paddr);
    }
    psci::init(info.psci_method);
    testdev::init(info.testdev);
    time::init();
    irq::init(info.timer_intid);
    if let Err(e) = gic::init(info.gic_dist, info.gic_redist, info.timer_intid) {
        crate::fail!("gic: {}", e);
    }
    let host = info.pci.unwrap_or_default();
    msi::init(info.its, host.first_bus, host.msi_map);
    crate::commands::run_all(info)
}
