//! The tree is parsed back (the `fdt` crate) and checked node by node: what Linux and the
//! built-in guest read must be there, with the addresses of `layout`.
use fdt::Fdt;

use super::*;

const MPIDRS: [u64; 2] = [0x8000_0000, 0x8000_0001];

fn config(its: bool, pmu: bool, initrd: Option<(u64, u64)>) -> FdtConfig<'static> {
    FdtConfig {
        mem_size: 512 << 20,
        mpidrs: &MPIDRS,
        cmdline: "console=ttyS0 panic=-1",
        initrd,
        its,
        pmu,
        rng_seed: &[7; 32],
    }
}

fn cells(fdt: &Fdt<'_>, path: &str, prop: &str) -> Vec<u32> {
    let node = fdt.find_node(path).unwrap_or_else(|| panic!("no {path}"));
    let p = node
        .property(prop)
        .unwrap_or_else(|| panic!("no {path}:{prop}"));
    p.value
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn u64s(fdt: &Fdt<'_>, path: &str, prop: &str) -> Vec<u64> {
    cells(fdt, path, prop)
        .chunks(2)
        .map(|c| u64::from(c[0]) << 32 | u64::from(c[1]))
        .collect()
}

fn string(fdt: &Fdt<'_>, path: &str, prop: &str) -> String {
    fdt.find_node(path)
        .and_then(|n| n.property(prop))
        .and_then(|p| p.as_str())
        .unwrap_or_else(|| panic!("no {path}:{prop}"))
        .to_string()
}

fn compatible(fdt: &Fdt<'_>, path: &str) -> Vec<String> {
    fdt.find_node(path)
        .and_then(|n| n.compatible())
        .map(|c| c.all().map(String::from).collect())
        .unwrap_or_default()
}

#[test]
fn header_root_memory_and_chosen() {
    let blob = build(&config(true, false, Some((0x9000_0000, 0x1234)))).unwrap();
    assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed], "FDT magic");
    assert!(blob.len() < 4096, "{} bytes", blob.len());
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(fdt.root().compatible().first(), "linux,dummy-virt");
    assert_eq!(cells(&fdt, "/", "#address-cells"), [2]);
    assert_eq!(cells(&fdt, "/", "#size-cells"), [2]);
    let mem: Vec<_> = fdt.memory().regions().collect();
    assert_eq!(mem.len(), 1);
    assert_eq!(mem[0].starting_address as u64, RAM_START);
    assert_eq!(mem[0].size, Some(512 << 20));

    let chosen = fdt.chosen();
    assert_eq!(chosen.bootargs(), Some("console=ttyS0 panic=-1"));
    assert_eq!(string(&fdt, "/chosen", "stdout-path"), "/uart@40000000");
    assert_eq!(chosen.stdout().unwrap().name, "uart@40000000");
    assert_eq!(u64s(&fdt, "/chosen", "linux,initrd-start"), [0x9000_0000]);
    assert_eq!(u64s(&fdt, "/chosen", "linux,initrd-end"), [0x9000_1234]);
    assert_eq!(
        fdt.find_node("/chosen")
            .unwrap()
            .property("rng-seed")
            .unwrap()
            .value,
        [7; 32]
    );
}

#[test]
fn no_initrd_no_initrd_properties() {
    let blob = build(&config(true, false, None)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let chosen = fdt.find_node("/chosen").unwrap();
    assert!(chosen.property("linux,initrd-start").is_none());
    assert!(chosen.property("linux,initrd-end").is_none());
}

#[test]
fn cpus_carry_the_mpidrs_and_psci() {
    let mpidrs = [0x8000_0000, 0x8000_0001, 0x8000_0100, 0x81_8000_0102];
    let cfg = FdtConfig {
        mpidrs: &mpidrs,
        ..config(true, false, None)
    };
    let blob = build(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(cells(&fdt, "/cpus", "#address-cells"), [2]);
    assert_eq!(cells(&fdt, "/cpus", "#size-cells"), [0]);
    let regs: Vec<u64> = (0..4)
        .map(|i| u64s(&fdt, &format!("/cpus/cpu@{i:x}"), "reg")[0])
        .collect();
    // The affinity bits only (MPIDR's bit 31 "RES1" and the MT/U bits are not part of it).
    assert_eq!(regs, [0, 1, 0x100, 0x81_0000_0102]);
    for i in 0..4 {
        let path = format!("/cpus/cpu@{i:x}");
        assert_eq!(string(&fdt, &path, "device_type"), "cpu");
        assert_eq!(string(&fdt, &path, "enable-method"), "psci");
        assert_eq!(compatible(&fdt, &path), ["arm,arm-v8"]);
    }
    assert!(compatible(&fdt, "/psci").contains(&"arm,psci-0.2".to_string()));
    assert_eq!(string(&fdt, "/psci", "method"), "hvc");
}

#[test]
fn gic_its_timer_and_pmu() {
    let blob = build(&config(true, true, None)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let gic = format!("/intc@{GIC_DIST_START:x}");
    assert_eq!(compatible(&fdt, &gic), ["arm,gic-v3"]);
    assert_eq!(cells(&fdt, &gic, "#interrupt-cells"), [3]);
    assert!(fdt
        .find_node(&gic)
        .unwrap()
        .property("interrupt-controller")
        .is_some());
    assert_eq!(
        u64s(&fdt, &gic, "reg"),
        [
            GIC_DIST_START,
            GIC_DIST_SIZE,
            gic_redist_start(2),
            2 * GIC_REDIST_SIZE
        ]
    );
    assert_eq!(cells(&fdt, &gic, "interrupts"), [1, 9, 4]);
    let phandle = cells(&fdt, &gic, "phandle")[0];
    assert_eq!(cells(&fdt, "/", "interrupt-parent"), [phandle]);

    let its = format!("{gic}/its@{:x}", gic_its_start(2));
    assert_eq!(compatible(&fdt, &its), ["arm,gic-v3-its"]);
    assert_eq!(u64s(&fdt, &its, "reg"), [gic_its_start(2), GIC_ITS_SIZE]);
    assert!(fdt
        .find_node(&its)
        .unwrap()
        .property("msi-controller")
        .is_some());

    assert_eq!(compatible(&fdt, "/timer"), ["arm,armv8-timer"]);
    assert_eq!(
        cells(&fdt, "/timer", "interrupts"),
        [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
    );
    assert_eq!(compatible(&fdt, "/pmu"), ["arm,armv8-pmuv3"]);
    assert_eq!(cells(&fdt, "/pmu", "interrupts"), [1, 7, 4]);

    // Without a PMU there is no node; without an ITS no ITS node and no msi-map.
    let blob = build(&config(false, false, None)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert!(fdt.find_node("/pmu").is_none());
    assert!(fdt.find_compatible(&["arm,gic-v3-its"]).is_none());
    let pcie = format!("/pcie@{PCI_ECAM_START:x}");
    assert!(fdt.find_node(&pcie).unwrap().property("msi-map").is_none());
}

#[test]
fn platform_devices() {
    let blob = build(&config(true, false, None)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let uart = "/uart@40000000";
    assert_eq!(compatible(&fdt, uart), ["ns16550a"]);
    assert_eq!(u64s(&fdt, uart, "reg"), [UART_START, 0x1000]);
    assert_eq!(cells(&fdt, uart, "interrupts"), [0, UART_SPI, 1]);
    assert_eq!(cells(&fdt, uart, "clock-frequency"), [UART_CLOCK_HZ]);
    // reg-shift 0 and reg-io-width 1 are the defaults: not written.
    assert!(fdt.find_node(uart).unwrap().property("reg-shift").is_none());

    let rtc = format!("/rtc@{RTC_START:x}");
    assert_eq!(compatible(&fdt, &rtc), ["arm,pl031", "arm,primecell"]);
    assert_eq!(u64s(&fdt, &rtc, "reg"), [RTC_START, 0x1000]);
    assert_eq!(cells(&fdt, &rtc, "interrupts"), [0, RTC_SPI, 4]);
    assert_eq!(string(&fdt, &rtc, "clock-names"), "apb_pclk");
    let clock = fdt.find_phandle(cells(&fdt, &rtc, "clocks")[0]).unwrap();
    assert_eq!(clock.compatible().map(|c| c.first()), Some("fixed-clock"));

    let testdev = fdt.find_compatible(&["trapvisor,testdev"]).unwrap();
    let reg: Vec<_> = testdev.reg().unwrap().collect();
    assert_eq!(reg[0].starting_address as u64, TESTDEV_MMIO_START);
    assert_eq!(reg[0].size, Some(0x1000));

    let pvpanic = fdt.find_compatible(&["qemu,pvpanic-mmio"]).unwrap();
    let reg: Vec<_> = pvpanic.reg().unwrap().collect();
    assert_eq!(reg[0].starting_address as u64, PVPANIC_START);
}

#[test]
fn pci_host_bridge() {
    let cfg = config(true, false, None);
    let blob = build(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let l = super::super::layout::pci_layout(cfg.mem_size);
    let pcie = format!("/pcie@{:x}", l.ecam_start);
    assert_eq!(compatible(&fdt, &pcie), ["pci-host-ecam-generic"]);
    assert_eq!(string(&fdt, &pcie, "device_type"), "pci");
    assert_eq!(u64s(&fdt, &pcie, "reg"), [l.ecam_start, l.ecam_size]);
    assert_eq!(cells(&fdt, &pcie, "bus-range"), [0, 0]);
    assert_eq!(cells(&fdt, &pcie, "#address-cells"), [3]);
    assert_eq!(cells(&fdt, &pcie, "#size-cells"), [2]);
    let r = cells(&fdt, &pcie, "ranges");
    assert_eq!(r.len(), 14);
    let entry = |e: &[u32]| {
        (
            e[0],
            u64::from(e[1]) << 32 | u64::from(e[2]),
            u64::from(e[3]) << 32 | u64::from(e[4]),
            u64::from(e[5]) << 32 | u64::from(e[6]),
        )
    };
    assert_eq!(
        entry(&r[..7]),
        (0x0200_0000, l.mmio32_start, l.mmio32_start, l.mmio32_size)
    );
    assert_eq!(
        entry(&r[7..]),
        (0x4300_0000, l.mmio64_start, l.mmio64_start, l.mmio64_size)
    );
    assert!(fdt
        .find_node(&pcie)
        .unwrap()
        .property("dma-coherent")
        .is_some());
    let its_phandle = fdt
        .find_compatible(&["arm,gic-v3-its"])
        .unwrap()
        .property("phandle")
        .unwrap()
        .as_usize()
        .unwrap() as u32;
    assert_eq!(cells(&fdt, &pcie, "msi-map"), [0, its_phandle, 0, 0x1_0000]);
}

#[test]
fn phandles_are_unique_and_resolve() {
    let blob = build(&config(true, true, None)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let mut handles: Vec<usize> = fdt
        .all_nodes()
        .filter_map(|n| n.property("phandle").and_then(|p| p.as_usize()))
        .collect();
    let n = handles.len();
    handles.sort_unstable();
    handles.dedup();
    assert_eq!(handles.len(), n);
    for h in handles {
        assert!(fdt.find_phandle(h as u32).is_some());
    }
}

#[test]
fn a_nul_in_the_command_line_is_an_error() {
    let cfg = FdtConfig {
        cmdline: "console=ttyS0\0evil",
        ..config(true, false, None)
    };
    assert!(matches!(build(&cfg), Err(ArchError::Fdt(_))));
}
