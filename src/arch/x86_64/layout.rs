//! The guest physical memory layout.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA
//! 0x0000_0500  GDT (boot), 0x0000_0520 IDT (boot)
//! 0x0000_6000  PVH hvm_start_info, then its memory map
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_9000  boot page tables (PML4, PDPT, PDs)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table / EBDA
//! 0x000e_0000  ACPI RSDP and tables
//! 0x0010_0000  kernel / built-in guest load address
//! ...          RAM up to min(size, MMIO_HOLE_START)
//! 0xc000_0000  32-bit MMIO hole: PCI BARs, then ECAM, then platform MMIO
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC
//! 0x1_0000_0000 RAM above 4 GiB when size > 3 GiB
//! ```
use vm_memory::GuestAddress;

use crate::arch::{PciLayout, Reserved};

pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the 56-byte hvm_start_info.
pub const PVH_MODLIST_START: u64 = PVH_INFO_START + 0x40;
pub const MEMMAP_START: u64 = 0x7000 - 0x400;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Page directories at PDE_START.. (2 MiB pages): the boot page tables map the first 4 GiB.
pub const BOOT_PD_COUNT: u64 = 4;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's boot protocol caps the command line; keep ours the same for every protocol.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const RSDP_START: u64 = 0xe0000;
pub const ACPI_TABLES_START: u64 = 0xe0100;
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// 32-bit PCI BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI ECAM (MMCONFIG) window, one bus.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// Platform MMIO devices (test device, ...).
pub const PLATFORM_MMIO_START: u64 = 0xf000_0000;
/// The test device's MMIO page (see `devices::testdev`).
pub const TESTDEV_MMIO_START: u64 = PLATFORM_MMIO_START;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) and identity-map page, just below the 4 GiB BIOS area.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// 64-bit PCI BAR window, placed above RAM (see `pci_mmio64_start`).
pub const PCI_MMIO64_SIZE: u64 = 0x40_0000_0000;
/// Alignment of the 64-bit PCI BAR window's start.
pub const PCI_MMIO64_ALIGN: u64 = 1 << 30;

/// Serial COM1.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// i8042 controller.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_CMD_PORT: u16 = 0x64;
/// The i8042's keyboard interrupt (ISA IRQ 1: IOAPIC pin 1, as the DSDT's PS2K says).
pub const I8042_KBD_IRQ: u32 = 1;
/// The CMOS RTC (MC146818): index and data ports, ISA IRQ 8.
pub const RTC_PORT: u16 = 0x70;
pub const RTC_IRQ: u32 = 8;
/// pvpanic (QEMU's ISA `pvpanic` device, ACPI `QEMU0001`): one byte.
pub const PVPANIC_PORT: u16 = 0x505;
/// Debug-exit port (same place as QEMU's usual `isa-debug-exit,iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Test device port window (see `devices::testdev`).
pub const TESTDEV_PORT: u16 = 0x510;
/// ACPI PM1a event/control and reset registers (hardware-reduced style, as Cloud Hypervisor).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
pub const ACPI_RESET_PORT: u16 = 0x3c1;

/// The RAM ranges for `size` bytes of guest memory, split around the 32-bit MMIO hole.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (
                GuestAddress(MMIO_HOLE_END),
                (size - MMIO_HOLE_START) as usize,
            ),
        ]
    }
}

/// First guest address after the end of RAM.
pub fn ram_end(size: u64) -> u64 {
    if size <= MMIO_HOLE_START {
        size
    } else {
        MMIO_HOLE_END + (size - MMIO_HOLE_START)
    }
}

/// Start of the 64-bit PCI BAR window for `size` bytes of RAM: the first 1 GiB boundary at or
/// above both the end of RAM and 4 GiB. The window is `PCI_MMIO64_SIZE` bytes long.
pub fn pci_mmio64_start(size: u64) -> u64 {
    ram_end(size)
        .max(MMIO_HOLE_END)
        .next_multiple_of(PCI_MMIO64_ALIGN)
}

/// Where PCI lives for `size` bytes of RAM, and what its BARs may not overlap: guest RAM, the
/// ECAM window, the in-kernel IOAPIC, the LAPIC page with the MSI address range, and KVM's TSS
/// and identity-map pages.
pub fn pci_layout(size: u64) -> PciLayout {
    let mut reserved: Vec<Reserved> = ram_regions(size)
        .into_iter()
        .map(|(start, len)| Reserved {
            start: start.0,
            end: start.0 + len as u64,
            what: "guest RAM",
        })
        .collect();
    reserved.extend([
        Reserved {
            start: PCI_ECAM_START,
            end: PCI_ECAM_START + PCI_ECAM_SIZE,
            what: "the ECAM window",
        },
        Reserved {
            start: IOAPIC_START,
            end: IOAPIC_START + 0x1000,
            what: "the in-kernel IOAPIC",
        },
        Reserved {
            // The LAPIC page and the MSI address range.
            start: LAPIC_START,
            end: LAPIC_START + 0x10_0000,
            what: "the LAPIC/MSI range",
        },
        Reserved {
            start: KVM_IDENTITY_MAP_ADDRESS,
            end: KVM_TSS_ADDRESS + 3 * 0x1000,
            what: "KVM's identity map and TSS",
        },
    ]);
    PciLayout {
        ecam_start: PCI_ECAM_START,
        ecam_size: PCI_ECAM_SIZE,
        mmio32_start: PCI_MMIO32_START,
        mmio32_size: PCI_MMIO32_SIZE,
        mmio64_start: pci_mmio64_start(size),
        mmio64_size: PCI_MMIO64_SIZE,
        reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_ram_skips_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), 0xc000_0000),
                (GuestAddress(0x1_0000_0000), 0x4000_0000)
            ]
        );
        assert_eq!(ram_end(4 << 30), 0x1_4000_0000);
    }

    #[test]
    fn pci_windows_are_clear_of_every_reserved_range() {
        for size in [256 << 20, 3 << 30, 4 << 30, 6 << 30] {
            let l = pci_layout(size);
            let windows = [
                (l.ecam_start, l.ecam_size, "ecam"),
                (l.mmio32_start, l.mmio32_size, "mmio32"),
                (l.mmio64_start, l.mmio64_size, "mmio64"),
            ];
            for (start, len, name) in windows {
                for r in l.reserved.iter().filter(|r| r.what != "the ECAM window") {
                    assert!(
                        start + len <= r.start || r.end <= start,
                        "{name} window overlaps {} with {size:#x} bytes of RAM",
                        r.what
                    );
                }
            }
        }
    }

    #[test]
    fn mmio64_window_is_above_ram_and_4g() {
        assert_eq!(pci_mmio64_start(256 << 20), 0x1_0000_0000);
        assert_eq!(pci_mmio64_start(4 << 30), 0x1_4000_0000);
        assert_eq!(pci_mmio64_start((4 << 30) + 4096), 0x1_8000_0000);
    }
}
