//! The aarch64 guest physical memory layout (in the style of Firecracker, kvmtool and crosvm:
//! devices below 2 GiB, RAM from 2 GiB).
//!
//! ```text
//! 0x0000_0000  unused (no RAM, no device: an access is an unowned MMIO exit)
//! 0x1000_0000  PCI 32-bit BAR window (512 MiB)
//! 0x3000_0000  PCI ECAM, bus 0 (1 MiB)
//! 0x3f00_0000  GIC: ITS (128 KiB), then one redistributor per vCPU (128 KiB each), then the
//!              distributor (64 KiB) ending at 0x4000_0000
//! 0x4000_0000  platform MMIO, one 4 KiB page each: 16550 UART, PL031 RTC, test device, pvpanic
//! 0x8000_0000  RAM: the kernel at its start (2 MiB aligned), the initrd and the FDT at the
//!              top of the first GiB of RAM (or of RAM, when smaller)
//! RAM end      (1 GiB aligned) PCI 64-bit BAR window (64 GiB)
//! ```
use vm_memory::GuestAddress;

use crate::arch::{PciLayout, Reserved};

/// Guest RAM starts here.
pub const RAM_START: u64 = 0x8000_0000;

/// 32-bit PCI BAR window.
pub const PCI_MMIO32_START: u64 = 0x1000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI ECAM window, one bus.
pub const PCI_ECAM_START: u64 = 0x3000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// 64-bit PCI BAR window, placed above RAM (see `pci_mmio64_start`).
pub const PCI_MMIO64_SIZE: u64 = 0x10_0000_0000;
/// Alignment of the 64-bit PCI BAR window's start.
pub const PCI_MMIO64_ALIGN: u64 = 1 << 30;

/// The GIC's region: the distributor at its top, redistributors and the ITS below.
pub const GIC_REGION_START: u64 = 0x3f00_0000;
pub const GIC_REGION_END: u64 = 0x4000_0000;
/// GICv3 distributor (GICD), 64 KiB.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
pub const GIC_DIST_START: u64 = GIC_REGION_END - GIC_DIST_SIZE;
/// One redistributor (GICR: RD_base and SGI_base frames) per vCPU.
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// The ITS (control frame and GITS_TRANSLATER frame).
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// Where MSI writes land: `GITS_TRANSLATER`, in the ITS's second 64 KiB frame.
pub const GITS_TRANSLATER_OFFSET: u64 = 0x1_0040;

/// Platform devices, one page each.
pub const PLATFORM_MMIO_START: u64 = 0x4000_0000;
pub const PLATFORM_PAGE: u64 = 0x1000;
pub const UART_START: u64 = PLATFORM_MMIO_START;
pub const RTC_START: u64 = PLATFORM_MMIO_START + PLATFORM_PAGE;
/// The test device's page (`devices::testdev`: EXIT, SINK, CONSOLE): also the debug-exit.
pub const TESTDEV_MMIO_START: u64 = PLATFORM_MMIO_START + 2 * PLATFORM_PAGE;
/// pvpanic's MMIO form ("qemu,pvpanic-mmio").
pub const PVPANIC_START: u64 = PLATFORM_MMIO_START + 3 * PLATFORM_PAGE;
pub const PLATFORM_MMIO_END: u64 = PLATFORM_MMIO_START + 4 * PLATFORM_PAGE;

/// The 16550's input clock (Hz), as in the FDT's `clock-frequency`.
pub const UART_CLOCK_HZ: u32 = 1_843_200;
/// The APB clock the PL031 (an AMBA primecell) is given.
pub const APB_CLOCK_HZ: u32 = 24_000_000;

/// SPIs of the platform devices (GSI = SPI number = INTID - 32).
pub const UART_SPI: u32 = 1;
pub const RTC_SPI: u32 = 2;
/// SPIs KVM's GIC gets: the platform devices' lines, rounded up (`KVM_DEV_ARM_VGIC_GRP_NR_IRQS`
/// is 32 private interrupts + this).
pub const NR_SPIS: u32 = 64;

/// PPIs (FDT numbers; INTID = 16 + n).
pub const PPI_VGIC_MAINTENANCE: u32 = 9;
pub const PPI_PMU: u32 = 7;
/// The architected timer's PPIs: secure physical, non-secure physical, virtual, hypervisor.
pub const PPI_TIMERS: [u32; 4] = [13, 14, 11, 10];

/// The boot image's alignment (booting.rst: a 2 MiB aligned base + text_offset).
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// The FDT's size limit and alignment (booting.rst: at most 2 MiB, 8-byte aligned; we give it
/// a 2 MiB aligned slot of its own).
pub const FDT_MAX_SIZE: u64 = 2 << 20;
/// The initrd and the FDT live in the first GiB of RAM (kvmtool keeps them low for old
/// kernels; booting.rst wants the initrd within 32 GiB of the kernel).
pub const BOOT_WINDOW: u64 = 1 << 30;

// Checked when building: everything but the 64-bit window sits below RAM; the platform SPIs
// are distinct and inside the GIC's; KVM takes the interrupt count in multiples of 32.
const _: () = assert!(PLATFORM_MMIO_END <= RAM_START && GIC_REGION_END <= RAM_START);
const _: () = assert!(UART_SPI < NR_SPIS && RTC_SPI < NR_SPIS && UART_SPI != RTC_SPI);
const _: () = assert!((32 + NR_SPIS).is_multiple_of(32));
const _: () = assert!(RAM_START.is_multiple_of(KERNEL_ALIGN));

/// Redistributors for `nr_cpus` vCPUs: one contiguous region right below the distributor.
pub fn gic_redist_start(nr_cpus: u8) -> u64 {
    GIC_DIST_START - GIC_REDIST_SIZE * u64::from(nr_cpus)
}

/// The ITS, right below the redistributors.
pub fn gic_its_start(nr_cpus: u8) -> u64 {
    gic_redist_start(nr_cpus) - GIC_ITS_SIZE
}

/// The RAM range for `size` bytes of guest memory: one region from `RAM_START`.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    vec![(GuestAddress(RAM_START), size as usize)]
}

/// First guest address after the end of RAM.
pub fn ram_end(size: u64) -> u64 {
    RAM_START + size
}

/// Start of the 64-bit PCI BAR window: the first 1 GiB boundary at or above the end of RAM.
pub fn pci_mmio64_start(size: u64) -> u64 {
    ram_end(size).next_multiple_of(PCI_MMIO64_ALIGN)
}

/// Where PCI lives for `size` bytes of RAM, and what its BARs may not overlap: guest RAM, the
/// ECAM window, the GIC (distributor, redistributors, ITS) and the platform devices' pages.
pub fn pci_layout(size: u64) -> PciLayout {
    PciLayout {
        ecam_start: PCI_ECAM_START,
        ecam_size: PCI_ECAM_SIZE,
        mmio32_start: PCI_MMIO32_START,
        mmio32_size: PCI_MMIO32_SIZE,
        mmio64_start: pci_mmio64_start(size),
        mmio64_size: PCI_MMIO64_SIZE,
        reserved: vec![
            Reserved {
                start: RAM_START,
                end: ram_end(size),
                what: "guest RAM",
            },
            Reserved {
                start: PCI_ECAM_START,
                end: PCI_ECAM_START + PCI_ECAM_SIZE,
                what: "the ECAM window",
            },
            Reserved {
                start: GIC_REGION_START,
                end: GIC_REGION_END,
                what: "the in-kernel GIC (distributor, redistributors, ITS)",
            },
            Reserved {
                start: PLATFORM_MMIO_START,
                end: PLATFORM_MMIO_END,
                what: "the platform devices",
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disjoint(a: (u64, u64), b: (u64, u64)) -> bool {
        a.1 <= b.0 || b.1 <= a.0
    }

    #[test]
    fn ram_is_one_region_from_2g() {
        assert_eq!(
            ram_regions(256 << 20),
            vec![(GuestAddress(0x8000_0000), 256 << 20)]
        );
        assert_eq!(ram_end(1 << 30), 0xc000_0000);
        assert_eq!(pci_mmio64_start(256 << 20), 0xc000_0000);
        assert_eq!(pci_mmio64_start(2 << 30), 0x1_0000_0000);
        assert_eq!(pci_mmio64_start((2 << 30) + 4096), 0x1_4000_0000);
    }

    #[test]
    fn the_gic_fits_its_region_for_every_vcpu_count() {
        for n in 1..=crate::arch::aarch64::MAX_VCPUS {
            let its = (gic_its_start(n), gic_its_start(n) + GIC_ITS_SIZE);
            let redist = (gic_redist_start(n), GIC_DIST_START);
            let dist = (GIC_DIST_START, GIC_DIST_START + GIC_DIST_SIZE);
            assert_eq!(its.1, redist.0);
            assert_eq!(redist.1 - redist.0, GIC_REDIST_SIZE * u64::from(n));
            assert_eq!(dist.1, GIC_REGION_END);
            assert!(its.0 >= GIC_REGION_START, "{n} vCPUs");
            // The ITS frames are 64 KiB aligned, as the GIC architecture wants.
            assert_eq!(its.0 % 0x1_0000, 0);
        }
    }

    #[test]
    fn windows_devices_and_ram_do_not_overlap() {
        for size in [64 << 20, 256 << 20, 1 << 30, 6 << 30] {
            let l = pci_layout(size);
            let mut ranges = vec![
                (l.mmio32_start, l.mmio32_start + l.mmio32_size),
                (l.mmio64_start, l.mmio64_start + l.mmio64_size),
            ];
            ranges.extend(l.reserved.iter().map(|r| (r.start, r.end)));
            for (i, a) in ranges.iter().enumerate() {
                for b in &ranges[i + 1..] {
                    assert!(disjoint(*a, *b), "{a:x?} and {b:x?} overlap ({size:#x})");
                }
            }
            // The 32-bit window is reachable by 32-bit BARs.
            assert!(l.mmio32_start + l.mmio32_size <= 1 << 32);
        }
    }

    #[test]
    fn platform_pages_are_distinct_and_ordered() {
        let pages = [UART_START, RTC_START, TESTDEV_MMIO_START, PVPANIC_START];
        for w in pages.windows(2) {
            assert_eq!(w[1] - w[0], PLATFORM_PAGE);
        }
        assert_eq!(PVPANIC_START + PLATFORM_PAGE, PLATFORM_MMIO_END);
    }
}
