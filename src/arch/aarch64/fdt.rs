//! The flattened device tree an aarch64 guest boots with (written with `vm-fdt`): what Linux
//! and the built-in guest learn the machine from.
//!
//! ```text
//! /            compatible "linux,dummy-virt", 2 address and 2 size cells, interrupt-parent GIC
//! /chosen      bootargs, linux,initrd-start/-end, stdout-path (the UART), rng-seed
//! /memory@…    RAM
//! /cpus        cpu@N: reg = the MPIDR KVM gave vCPU N (affinity bits), enable-method "psci"
//! /psci        "arm,psci-0.2" (plus "arm,psci-1.0": KVM implements 1.x), method "hvc"
//! /timer       "arm,armv8-timer", PPIs 13, 14, 11, 10 (level high)
//! /pmu         "arm,armv8-pmuv3", PPI 7 (only when the vCPUs have a PMU)
//! /intc@…      "arm,gic-v3": distributor, redistributors; maintenance PPI 9
//!   /its@…     "arm,gic-v3-its", msi-controller (only when KVM made an ITS)
//! /apb-pclk    fixed clock for the PL031 (an AMBA primecell needs "apb_pclk")
//! /uart@…      "ns16550a", SPI 1 (edge: it is raised by irqfd pulses), clock-frequency
//! /rtc@…       "arm,pl031" + "arm,primecell", SPI 2
//! /testdev@…   "trapvisor,testdev": EXIT, SINK and CONSOLE registers; the debug-exit
//! /pvpanic@…   "qemu,pvpanic-mmio"
//! /pcie@…      "pci-host-ecam-generic": bus 0, ranges for both BAR windows, dma-coherent,
//!              msi-map of every requester id to the ITS (when there is one)
//! ```
use vm_fdt::FdtWriter;

use super::layout::*;
use super::ArchError;

/// phandles.
const GIC_PHANDLE: u32 = 1;
const ITS_PHANDLE: u32 = 2;
const CLOCK_PHANDLE: u32 = 3;

/// FDT interrupt specifier types and flags (`<type number flags>`).
const IRQ_SPI: u32 = 0;
const IRQ_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;

/// The affinity fields of MPIDR_EL1 (Aff3 at 39:32, Aff2..Aff0 at 23:0): a cpu node's `reg`.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// The bits of a PCI `ranges` entry's first cell: 32-bit memory space, and 64-bit prefetchable
/// memory space (a window above 4 GiB; Linux warns about a non-prefetchable one larger than
/// 4 GiB, as bridges cannot forward those).
const PCI_RANGE_MEM32: u32 = 0x0200_0000;
const PCI_RANGE_MEM64: u32 = 0x4300_0000;

/// What the tree describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtConfig<'a> {
    pub mem_size: u64,
    /// MPIDR_EL1 of each vCPU, as KVM reports it after KVM_ARM_VCPU_INIT.
    pub mpidrs: &'a [u64],
    pub cmdline: &'a str,
    /// The initrd's guest address and size.
    pub initrd: Option<(u64, u64)>,
    /// KVM made an ITS: MSIs (and PCI's msi-map) go there.
    pub its: bool,
    /// The vCPUs have a PMU (KVM_ARM_VCPU_PMU_V3, its interrupt is PPI 7).
    pub pmu: bool,
    /// Seed for the guest's random pool (`/chosen/rng-seed`); empty for none.
    pub rng_seed: &'a [u8],
}

fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

fn lo(v: u64) -> u32 {
    v as u32
}

/// The node name of the UART, which `stdout-path` points at.
pub fn uart_path() -> String {
    format!("/uart@{UART_START:x}")
}

/// Writes the tree. Fails only if it would be malformed (vm-fdt's checks: a NUL in the command
/// line, say) or bigger than the 2 MiB booting.rst allows.
pub fn build(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, ArchError> {
    let blob = write(cfg).map_err(|e| ArchError::Fdt(e.to_string()))?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(ArchError::Fdt(format!(
            "it is {} bytes; the limit is {FDT_MAX_SIZE}",
            blob.len()
        )));
    }
    Ok(blob)
}

fn write(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, vm_fdt::Error> {
    let nr_cpus = cfg.mpidrs.len() as u8;
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_string("model", "trapvisor")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", cfg.cmdline)?;
    f.property_string("stdout-path", &uart_path())?;
    if let Some((start, size)) = cfg.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", start + size)?;
    }
    if !cfg.rng_seed.is_empty() {
        f.property("rng-seed", cfg.rng_seed)?;
    }
    f.end_node(chosen)?;

    let memory = f.begin_node(&format!("memory@{RAM_START:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[RAM_START, cfg.mem_size])?;
    f.end_node(memory)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 0)?;
    for (id, mpidr) in cfg.mpidrs.iter().enumerate() {
        let cpu = f.begin_node(&format!("cpu@{id:x}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_string("compatible", "arm,arm-v8")?;
        f.property_string("enable-method", "psci")?;
        f.property_u64("reg", mpidr & MPIDR_AFFINITY_MASK)?;
        f.end_node(cpu)?;
    }
    f.end_node(cpus)?;

    let psci = f.begin_node("psci")?;
    f.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    f.property_string("method", "hvc")?;
    f.end_node(psci)?;

    let timer = f.begin_node("timer")?;
    f.property_string("compatible", "arm,armv8-timer")?;
    f.property_null("always-on")?;
    let cells: Vec<u32> = PPI_TIMERS
        .iter()
        .flat_map(|&ppi| [IRQ_PPI, ppi, IRQ_LEVEL_HIGH])
        .collect();
    f.property_array_u32("interrupts", &cells)?;
    f.end_node(timer)?;

    if cfg.pmu {
        let pmu = f.begin_node("pmu")?;
        f.property_string("compatible", "arm,armv8-pmuv3")?;
        f.property_array_u32("interrupts", &[IRQ_PPI, PPI_PMU, IRQ_LEVEL_HIGH])?;
        f.end_node(pmu)?;
    }

    let redist = gic_redist_start(nr_cpus);
    let intc = f.begin_node(&format!("intc@{GIC_DIST_START:x}"))?;
    f.property_string("compatible", "arm,gic-v3")?;
    f.property_null("interrupt-controller")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_array_u64(
        "reg",
        &[
            GIC_DIST_START,
            GIC_DIST_SIZE,
            redist,
            GIC_REDIST_SIZE * u64::from(nr_cpus),
        ],
    )?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_null("ranges")?;
    f.property_array_u32(
        "interrupts",
        &[IRQ_PPI, PPI_VGIC_MAINTENANCE, IRQ_LEVEL_HIGH],
    )?;
    f.property_phandle(GIC_PHANDLE)?;
    if cfg.its {
        let its_base = gic_its_start(nr_cpus);
        let its = f.begin_node(&format!("its@{its_base:x}"))?;
        f.property_string("compatible", "arm,gic-v3-its")?;
        f.property_null("msi-controller")?;
        f.property_u32("#msi-cells", 1)?;
        f.property_array_u64("reg", &[its_base, GIC_ITS_SIZE])?;
        f.property_phandle(ITS_PHANDLE)?;
        f.end_node(its)?;
    }
    f.end_node(intc)?;

    let clock = f.begin_node("apb-pclk")?;
    f.property_string("compatible", "fixed-clock")?;
    f.property_u32("#clock-cells", 0)?;
    f.property_u32("clock-frequency", APB_CLOCK_HZ)?;
    f.property_string("clock-output-names", "clk24mhz")?;
    f.property_phandle(CLOCK_PHANDLE)?;
    f.end_node(clock)?;

    let uart = f.begin_node(&uart_path()[1..])?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[UART_START, PLATFORM_PAGE])?;
    f.property_array_u32("interrupts", &[IRQ_SPI, UART_SPI, IRQ_EDGE_RISING])?;
    f.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    f.end_node(uart)?;

    let rtc = f.begin_node(&format!("rtc@{RTC_START:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["arm,pl031".into(), "arm,primecell".into()],
    )?;
    f.property_array_u64("reg", &[RTC_START, PLATFORM_PAGE])?;
    f.property_array_u32("interrupts", &[IRQ_SPI, RTC_SPI, IRQ_LEVEL_HIGH])?;
    f.property_u32("clocks", CLOCK_PHANDLE)?;
    f.property_string("clock-names", "apb_pclk")?;
    f.end_node(rtc)?;

    let testdev = f.begin_node(&format!("testdev@{TESTDEV_MMIO_START:x}"))?;
    f.property_string("compatible", "trapvisor,testdev")?;
    f.property_array_u64("reg", &[TESTDEV_MMIO_START, PLATFORM_PAGE])?;
    f.end_node(testdev)?;

    let pvpanic = f.begin_node(&format!("pvpanic@{PVPANIC_START:x}"))?;
    f.property_string("compatible", "qemu,pvpanic-mmio")?;
    f.property_array_u64("reg", &[PVPANIC_START, PLATFORM_PAGE])?;
    f.end_node(pvpanic)?;

    let pci = super::layout::pci_layout(cfg.mem_size);
    let pcie = f.begin_node(&format!("pcie@{:x}", pci.ecam_start))?;
    f.property_string("compatible", "pci-host-ecam-generic")?;
    f.property_string("device_type", "pci")?;
    f.property_array_u64("reg", &[pci.ecam_start, pci.ecam_size])?;
    f.property_array_u32("bus-range", &[0, 0])?;
    f.property_u32("linux,pci-domain", 0)?;
    f.property_u32("#address-cells", 3)?;
    f.property_u32("#size-cells", 2)?;
    // <flags pci-address(2 cells) cpu-address(2 cells) size(2 cells)>, identity mapped.
    let range = |flags: u32, start: u64, size: u64| {
        [
            flags,
            hi(start),
            lo(start),
            hi(start),
            lo(start),
            hi(size),
            lo(size),
        ]
    };
    let mut ranges = range(PCI_RANGE_MEM32, pci.mmio32_start, pci.mmio32_size).to_vec();
    ranges.extend(range(PCI_RANGE_MEM64, pci.mmio64_start, pci.mmio64_size));
    f.property_array_u32("ranges", &ranges)?;
    f.property_null("dma-coherent")?;
    if cfg.its {
        // Requester ids 0..0x10000 map 1:1 to ITS device ids (the devid of each MSI route).
        f.property_array_u32("msi-map", &[0, ITS_PHANDLE, 0, 0x1_0000])?;
    }
    f.end_node(pcie)?;

    f.end_node(root)?;
    f.finish()
}

#[cfg(test)]
mod tests;
