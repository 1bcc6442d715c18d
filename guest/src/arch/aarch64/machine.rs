//! What the guest learns from the FDT: the machine it runs on ([`BootInfo`]).
//!
//! The contract with the VMM (trapvisor's FDT; QEMU's `virt` machine gives the same nodes
//! except the test device):
//! - `/chosen`: `bootargs` (the command line) and `stdout-path`;
//! - the console: `ns16550a` (`reg`, `reg-shift`, `reg-io-width`) or `arm,pl011`;
//! - `arm,gic-v3` (`reg`: distributor, redistributor region) with an `arm,gic-v3-its` child;
//! - `arm,armv8-timer` (`interrupts`: the virtual timer's PPI is the third);
//! - `pci-host-ecam-generic` (`reg`, `bus-range`, `ranges`, `msi-map`);
//! - `arm,psci-0.2` (`method`);
//! - `memory` nodes; `/cpus/cpu@N` with `reg` = MPIDR;
//! - `trapvisor,testdev` (`reg`: one 4 KiB page: EXIT at +0x0, SINK at +0x4, CONSOLE at +0x8).
use super::boot::MAX_CPUS;
use super::fdt::{self, Fdt, Node};
use super::serial;

/// Longest command line kept (Linux's limit on arm64).
pub const CMDLINE_MAX: usize = 2048;
const MAX_RAM_RANGES: usize = 8;

/// The PCI host bridge.
#[derive(Clone, Copy, Default)]
pub struct PciHost {
    /// ECAM base of the first bus in `bus-range`, and that bus.
    pub ecam: u64,
    pub ecam_size: u64,
    pub first_bus: u32,
    /// The 32-bit memory window (CPU = PCI addresses), if `ranges` has one.
    pub mem32: Option<(u64, u64)>,
    /// `msi-map`'s first entry: (rid-base, devid-base, length); None: identity (`msi-parent`
    /// or nothing).
    pub msi_map: Option<(u32, u32, u32)>,
}

/// What the guest keeps of the FDT.
pub struct BootInfo {
    pub fdt_paddr: u64,
    pub fdt_size: usize,
    pub image_paddr: u64,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    pub uart: serial::Kind,
    /// RAM ranges (base, size) from the `memory` nodes.
    pub ram: [(u64, u64); MAX_RAM_RANGES],
    pub ram_ranges: usize,
    pub ram_bytes: u64,
    /// The end of the highest RAM range.
    pub ram_top: u64,
    pub gic_dist: u64,
    pub gic_redist: (u64, u64),
    pub its: Option<u64>,
    /// INTID of the virtual timer.
    pub timer_intid: u32,
    pub psci_method: Option<&'static str>,
    pub cpus: [u64; MAX_CPUS],
    /// CPUs listed (only the first `MAX_CPUS` are kept).
    pub cpus_listed: usize,
    pub testdev: Option<u64>,
    pub pci: Option<PciHost>,
}

impl BootInfo {
    /// The command line (`/chosen/bootargs`, at most [`CMDLINE_MAX`] bytes).
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    /// The CPUs' MPIDRs (the first `MAX_CPUS` listed).
    pub fn cpu_mpidrs(&self) -> &[u64] {
        &self.cpus[..self.cpus_listed.min(MAX_CPUS)]
    }
}

/// The console: `/chosen/stdout-path` (a path or an alias, options after ':' dropped), else
/// the first enabled 16550 or PL011.
pub fn find_uart(fdt: &Fdt) -> serial::Kind {
    let chosen = fdt.find_path("/chosen");
    let named = chosen
        .and_then(|c| c.prop_str("stdout-path"))
        .map(|p| p.split(':').next().unwrap_or(p))
        .and_then(|p| {
            if p.starts_with('/') {
                fdt.find_path(p)
            } else {
                let alias = fdt.find_path("/aliases")?.prop_str(p)?;
                fdt.find_path(alias)
            }
        });
    named
        .and_then(|n| uart_kind(&n))
        .or_else(|| {
            fdt.nodes()
                .filter(|n| n.enabled())
                .find_map(|n| uart_kind(&n))
        })
        .unwrap_or(serial::Kind::None)
}

fn uart_kind(n: &Node) -> Option<serial::Kind> {
    let (base, _) = n.reg(0)?;
    if n.is_compatible("ns16550a") || n.is_compatible("ns16550") || n.is_compatible("ns8250") {
        Some(serial::Kind::Ns16550 {
            base,
            shift: n.prop_u32("reg-shift").unwrap_or(0).min(4),
            width: match n.prop_u32("reg-io-width") {
                Some(4) => 4,
                _ => 1,
            },
        })
    } else if n.is_compatible("arm,pl011") {
        Some(serial::Kind::Pl011 { base })
    } else {
        None
    }
}

/// Reads everything else; `Err` names what is missing or malformed.
pub fn read(
    fdt: &Fdt,
    fdt_paddr: u64,
    image_paddr: u64,
    info: &mut BootInfo,
) -> Result<(), &'static str> {
    info.fdt_paddr = fdt_paddr;
    info.fdt_size = fdt.size;
    info.image_paddr = image_paddr;
    info.uart = find_uart(fdt);
    if let Some(args) = fdt.find_path("/chosen").and_then(|c| c.prop("bootargs")) {
        let len = args.iter().position(|&b| b == 0).unwrap_or(args.len());
        let len = len.min(CMDLINE_MAX);
        info.cmdline[..len].copy_from_slice(&args[..len]);
        info.cmdline_len = len;
    }

    for n in fdt.nodes() {
        let is_memory = n.prop_str("device_type") == Some("memory")
            || (n.depth == 1 && n.name.split('@').next() == Some("memory"));
        if !is_memory || !n.enabled() {
            continue;
        }
        let mut i = 0;
        while let Some((base, size)) = n.reg(i) {
            i += 1;
            if size == 0 || info.ram_ranges == MAX_RAM_RANGES {
                continue;
            }
            info.ram[info.ram_ranges] = (base, size);
            info.ram_ranges += 1;
            info.ram_bytes += size;
            info.ram_top = info.ram_top.max(base.saturating_add(size));
        }
    }
    if info.ram_ranges == 0 {
        return Err("no memory node in the FDT");
    }

    let gic = fdt
        .find_compatible("arm,gic-v3")
        .ok_or("no arm,gic-v3 node in the FDT")?;
    info.gic_dist = gic.reg(0).ok_or("arm,gic-v3 without a distributor reg")?.0;
    info.gic_redist = gic.reg(1).ok_or("arm,gic-v3 without a redistributor reg")?;
    info.its = gic
        .children()
        .find(|c| c.is_compatible("arm,gic-v3-its") && c.enabled())
        .and_then(|c| c.reg(0))
        .map(|r| r.0);

    // The virtual timer: the third <type num flags> of `interrupts` (a PPI: INTID 16 + num).
    info.timer_intid = fdt
        .find_compatible("arm,armv8-timer")
        .and_then(|t| t.prop("interrupts"))
        .and_then(|v| fdt::u32s(v).nth(7))
        .map_or(27, |num| 16 + num);

    info.psci_method = fdt
        .nodes()
        .find(|n| n.is_compatible("arm,psci-0.2") || n.is_compatible("arm,psci-1.0"))
        .and_then(|n| match n.prop_str("method") {
            Some("hvc") => Some("hvc"),
            Some("smc") => Some("smc"),
            _ => None,
        });

    if let Some(cpus) = fdt.find_path("/cpus") {
        for c in cpus.children() {
            if c.prop_str("device_type") != Some("cpu") || !c.enabled() {
                continue;
            }
            let (mpidr, _) = c.reg(0).ok_or("a cpu node without reg")?;
            if info.cpus_listed < MAX_CPUS {
                info.cpus[info.cpus_listed] = mpidr;
            }
            info.cpus_listed += 1;
        }
    }

    info.testdev = fdt
        .find_compatible("trapvisor,testdev")
        .filter(|n| n.enabled())
        .and_then(|n| n.reg(0))
        .map(|r| r.0);

    info.pci = match fdt
        .nodes()
        .find(|n| n.is_compatible("pci-host-ecam-generic") && n.enabled())
    {
        Some(n) => Some(pci_host(&n)?),
        None => None,
    };
    Ok(())
}

/// The ECAM host bridge: `reg`, `bus-range`, the 32-bit window of `ranges` (child address
/// 3 cells, parent address as the node's parent says, size 2 cells), `msi-map`.
fn pci_host(n: &Node) -> Result<PciHost, &'static str> {
    let (ecam, ecam_size) = n.reg(0).ok_or("pci-host-ecam-generic without reg")?;
    let first_bus = n
        .prop("bus-range")
        .and_then(|v| fdt::u32s(v).next())
        .unwrap_or(0);
    let mut host = PciHost {
        ecam,
        ecam_size,
        first_bus,
        ..PciHost::default()
    };
    let parent_ac = n.parent_cells.0 as usize;
    let sc = n.prop_u32("#size-cells").unwrap_or(2) as usize;
    if !(1..=2).contains(&parent_ac) || !(1..=2).contains(&sc) {
        return Err("the PCI host bridge's ranges use more than 2 cells for an address or size");
    }
    let stride = 3 + parent_ac + sc;
    if let Some(ranges) = n.prop("ranges") {
        let words: [u32; 64] = {
            let mut w = [0u32; 64];
            for (i, c) in fdt::u32s(ranges).take(64).enumerate() {
                w[i] = c;
            }
            w
        };
        let count = (ranges.len() / 4).min(64) / stride.max(1);
        for e in 0..count {
            let r = &words[e * stride..(e + 1) * stride];
            let space = (r[0] >> 24) & 3;
            let pci = (u64::from(r[1]) << 32) | u64::from(r[2]);
            let cpu = r[3..3 + parent_ac]
                .iter()
                .fold(0u64, |a, &c| (a << 32) | u64::from(c));
            let size = r[3 + parent_ac..]
                .iter()
                .fold(0u64, |a, &c| (a << 32) | u64::from(c));
            if space == 2 && host.mem32.is_none() {
                if pci != cpu {
                    return Err(
                        "the PCI 32-bit window is not identity-mapped (PCI != CPU address)",
                    );
                }
                host.mem32 = Some((cpu, cpu.saturating_add(size)));
            }
        }
    }
    if let Some(map) = n.prop("msi-map") {
        let mut w = fdt::u32s(map);
        if let (Some(rid), Some(_phandle), Some(base), Some(len)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            host.msi_map = Some((rid, base, len));
        }
    }
    Ok(host)
}

/// An empty `BootInfo`, filled by [`read`].
pub const EMPTY: BootInfo = BootInfo {
    fdt_paddr: 0,
    fdt_size: 0,
    image_paddr: 0,
    cmdline: [0; CMDLINE_MAX],
    cmdline_len: 0,
    uart: serial::Kind::None,
    ram: [(0, 0); MAX_RAM_RANGES],
    ram_ranges: 0,
    ram_bytes: 0,
    ram_top: 0,
    gic_dist: 0,
    gic_redist: (0, 0),
    its: None,
    timer_intid: 27,
    psci_method: None,
    cpus: [0; MAX_CPUS],
    cpus_listed: 0,
    testdev: None,
    pci: None,
};
