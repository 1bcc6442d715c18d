//! ACPI tables for a hardware-reduced platform (as Cloud Hypervisor's): RSDP at `RSDP_START`,
//! then DSDT, FADT, MADT, MCFG and XSDT from `ACPI_TABLES_START`, all below 1 MiB.
//!
//! - FADT: HW_REDUCED_ACPI; the sleep control and status registers are one byte at
//!   `ACPI_SLEEP_CONTROL_PORT` (the guest writes `(S5_SLEEP_TYPE << 2) | SLP_EN` = 0x34 to power
//!   off), the reset register one byte at `ACPI_RESET_PORT` (value `RESET_VALUE`). Boot flags:
//!   i8042 present, no VGA, and `century` = CMOS register 0x32; with `legacy` off
//!   (`--no-legacy`) no i8042 and "CMOS RTC not present" (century 0): Linux then registers no
//!   RTC and takes the wall clock from kvm-clock, as on Firecracker's machine.
//! - MADT: one enabled local APIC per vCPU (APIC id = vCPU index), the IOAPIC at
//!   `IOAPIC_START` (id 0, GSI base 0), IRQ0 → GSI 2, LINT1 = NMI on every CPU; PCAT_COMPAT
//!   (the in-kernel irqchip has the 8259s).
//! - MCFG: the ECAM window at `PCI_ECAM_START`, segment 0, bus 0 only.
//! - DSDT: `\_S5_`, COM1 (PNP0501, IRQ 4), the i8042 keyboard controller `PS2K` (PNP0303, not
//!   with `legacy` off,
//!   ports 0x60 and 0x64, IRQ 1: a hardware-reduced platform maps no legacy IRQs, so Linux's
//!   i8042 driver finds its ports and interrupt only through PNP), pvpanic `PEVT` (QEMU0001,
//!   port 0x505), the CMOS RTC `RTC_` (PNP0B00, ports 0x70-0x71, IRQ 8; not with `legacy`
//!   off), the PCI host bridge `\_SB_.PCI0` (bus 0, I/O windows around 0xcf8, the 32-bit
//!   and 64-bit BAR windows of `layout`) and a motherboard resource (PNP0C02) reserving the ECAM
//!   window.
use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name,
    Package, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{
    self, ACPI_RESET_PORT, ACPI_SLEEP_CONTROL_PORT, ACPI_TABLES_START, COM1_IRQ, COM1_PORT,
    HIGH_RAM_START, I8042_CMD_PORT, I8042_DATA_PORT, I8042_KBD_IRQ, IOAPIC_START, LAPIC_START,
    PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START, PCI_MMIO64_SIZE,
    PVPANIC_PORT, RSDP_START, RTC_IRQ, RTC_PORT,
};
use super::{mem_err, ArchError};

pub const OEM_ID: [u8; 6] = *b"TRAPVI";
const OEM_REVISION: u32 = 1;
/// SLP_TYP of S5 in `\_S5_` (the ACPI PM device powers off on it).
pub const S5_SLEEP_TYPE: u8 = 5;
/// The FADT's RESET_VALUE, written to `ACPI_RESET_PORT`.
pub const RESET_VALUE: u8 = 1;
/// FADT IAPC_BOOT_ARCH: 8042 present (bit 1), VGA not present (2); bit 5 (CMOS RTC not
/// present) clear: Linux's rtc_cmos binds the RTC and sets the clock from it at boot.
pub const IAPC_BOOT_ARCH: u16 = IAPC_8042 | (1 << 2);
/// IAPC_BOOT_ARCH's "8042 present" bit: without it Linux's i8042 driver does not probe.
pub const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH's "CMOS RTC not present" bit: Linux then registers no RTC platform device.
pub const IAPC_NO_CMOS_RTC: u16 = 1 << 5;
/// FADT century: the CMOS register holding the century (`devices::rtc::REG_CENTURY`).
pub const FADT_CENTURY: u8 = 0x32;
/// MADT flags: PCAT_COMPAT (dual 8259s present).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_ENABLED: u32 = 1;
const TABLE_ALIGN: u64 = 16;

/// The tables as guest memory will hold them.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// The RSDP, for `RSDP_START`.
    pub rsdp: Vec<u8>,
    /// (guest address, bytes) of each table in address order: DSDT, FACP, APIC, MCFG, XSDT.
    pub tables: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    /// The table with this signature.
    pub fn find(&self, signature: &[u8; 4]) -> Option<(u64, &[u8])> {
        self.tables
            .iter()
            .find(|(_, t)| t.get(..4) == Some(signature.as_slice()))
            .map(|(a, t)| (*a, t.as_slice()))
    }
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn table_id(sig: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"TRAP    ";
    id[4..].copy_from_slice(sig);
    id
}

/// The DSDT for `mem_size` bytes of RAM (the 64-bit PCI window sits above RAM); the i8042
/// and the CMOS RTC only with `legacy`.
pub fn dsdt(mem_size: u64, legacy: bool) -> Vec<u8> {
    let s5 = Name::new("_S5_".into(), &Package::new(vec![&S5_SLEEP_TYPE]));

    let com1_irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_io = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1 = aml_bytes(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_DDN".into(), &"COM1"),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&com1_irq, &com1_io]),
            ),
        ],
    ));

    // The i8042 as a PS/2 keyboard controller: data and status/command ports, IRQ 1 (edge,
    // active high). No PNP0F13 mouse: Linux then leaves the AUX port alone.
    let kbd_data = IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let kbd_cmd = IO::new(I8042_CMD_PORT, I8042_CMD_PORT, 1, 1);
    let kbd_irq = Interrupt::new(true, true, false, false, I8042_KBD_IRQ);
    let ps2k = aml_bytes(&Device::new(
        "PS2K".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]),
            ),
        ],
    ));

    // pvpanic, as QEMU describes it (a string _HID: "QEMU0001" is not an EISA id).
    let pvpanic_io = IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let pevt = aml_bytes(&Device::new(
        "PEVT".into(),
        vec![
            &Name::new("_HID".into(), &"QEMU0001"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&pvpanic_io])),
        ],
    ));

    // The CMOS RTC, as PCs describe it: Linux's rtc_cmos binds PNP0B00.
    let rtc_io = IO::new(RTC_PORT, RTC_PORT, 1, 2);
    let rtc_irq = Interrupt::new(true, true, false, false, RTC_IRQ);
    let rtc = aml_bytes(&Device::new(
        "RTC_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0B00")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&rtc_io, &rtc_irq]),
            ),
        ],
    ));

    let mmio64_start = layout::pci_mmio64_start(mem_size);
    let buses = AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64_start,
        mmio64_start + PCI_MMIO64_SIZE - 1,
        None,
    );
    let pci0 = aml_bytes(&Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &aml::ZERO),
            &Name::new("_SEG".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &buses, &cfg_ports, &io_low, &io_high, &mmio32, &mmio64,
                ]),
            ),
        ],
    ));

    let ecam = Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let mbrd = aml_bytes(&Device::new(
        "MBRD".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ecam])),
        ],
    ));

    let (ps2k, rtc) = if legacy {
        (ps2k, rtc)
    } else {
        (Vec::new(), Vec::new())
    };
    let sb = Scope::raw(
        "\\_SB_".into(),
        [com1, ps2k, pevt, rtc, pci0, mbrd].concat(),
    );
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, table_id(b"DSDT"), OEM_REVISION);
    table.append_slice(&aml_bytes(&s5));
    table.append_slice(&sb);
    table.as_slice().to_vec()
}

/// The FADT pointing at the DSDT at `dsdt_addr`; the 8042 and CMOS RTC boot flags as `legacy`
/// says.
pub fn fadt(dsdt_addr: u64, legacy: bool) -> Vec<u8> {
    let io_byte = |port: u16| {
        GAS::new(
            GasSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, table_id(b"FACP"), OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io_byte(ACPI_RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_byte(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_byte(ACPI_SLEEP_CONTROL_PORT);
    fadt.iapc_boot_arch = if legacy {
        IAPC_BOOT_ARCH
    } else {
        IAPC_BOOT_ARCH & !IAPC_8042 | IAPC_NO_CMOS_RTC
    }
    .into();
    fadt.century = if legacy { FADT_CENTURY } else { 0 };
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"TRAPVISR").into();
    aml_bytes(&fadt.finalize())
}

/// The MADT for `nr_cpus` vCPUs.
pub fn madt(nr_cpus: u8) -> Vec<u8> {
    let mut table = Sdt::new(*b"APIC", 44, 5, OEM_ID, table_id(b"APIC"), OEM_REVISION);
    table.write_u32(36, LAPIC_START as u32);
    table.write_u32(40, MADT_PCAT_COMPAT);
    let mut entries = Vec::new();
    for cpu in 0..nr_cpus {
        entries.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        entries.extend_from_slice(&MADT_ENABLED.to_le_bytes());
    }
    entries.extend_from_slice(&[MADT_IO_APIC, 12, 0, 0]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entries.extend_from_slice(&0u32.to_le_bytes());
    // ISA IRQ 0 (the PIT) arrives on IOAPIC pin 2; polarity and trigger as the bus says.
    entries.extend_from_slice(&[MADT_INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0]);
    entries.extend_from_slice(&2u32.to_le_bytes());
    entries.extend_from_slice(&0u16.to_le_bytes());
    // LINT1 of every processor (uid 0xff) is the NMI pin.
    entries.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    table.append_slice(&entries);
    table.as_slice().to_vec()
}

/// The MCFG with the one ECAM window.
pub fn mcfg() -> Vec<u8> {
    let mut table = MCFG::new(OEM_ID, table_id(b"MCFG"), OEM_REVISION);
    table.add_ecam(PCI_ECAM_START, 0, 0, 0);
    aml_bytes(&table)
}

/// Builds all tables and gives each its guest address.
pub fn build_tables(nr_cpus: u8, mem_size: u64, legacy: bool) -> Result<AcpiTables, ArchError> {
    let mut tables = Vec::new();
    let mut next = ACPI_TABLES_START;
    let mut place = |bytes: Vec<u8>| {
        let addr = next.next_multiple_of(TABLE_ALIGN);
        next = addr + bytes.len() as u64;
        tables.push((addr, bytes));
        addr
    };
    let dsdt_addr = place(dsdt(mem_size, legacy));
    let fadt_addr = place(fadt(dsdt_addr, legacy));
    let madt_addr = place(madt(nr_cpus));
    let mcfg_addr = place(mcfg());
    let mut xsdt = XSDT::new(OEM_ID, table_id(b"XSDT"), OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(addr);
    }
    let xsdt_addr = place(aml_bytes(&xsdt));
    if next > HIGH_RAM_START {
        return Err(ArchError::AcpiTooLarge {
            size: (next - ACPI_TABLES_START) as usize,
            start: ACPI_TABLES_START,
            end: HIGH_RAM_START,
        });
    }
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables { rsdp, tables })
}

/// Whether guest RAM reaches past the area the tables live in (up to 1 MiB).
pub fn fits_in(mem: &GuestMemoryMmap) -> bool {
    mem.check_range(
        GuestAddress(RSDP_START),
        (HIGH_RAM_START - RSDP_START) as usize,
    )
}

/// Builds the tables and writes them to guest memory.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    nr_cpus: u8,
    mem_size: u64,
    legacy: bool,
) -> Result<(), ArchError> {
    let t = build_tables(nr_cpus, mem_size, legacy)?;
    mem.write_slice(&t.rsdp, GuestAddress(RSDP_START))
        .map_err(mem_err("the ACPI RSDP"))?;
    for (addr, bytes) in &t.tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(mem_err("the ACPI tables"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(t: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(t[off..off + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(t[off..off + 8].try_into().unwrap())
    }

    /// The MADT's interrupt controller structures as (type, bytes).
    fn madt_entries(t: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < t.len() {
            let len = t[off + 1] as usize;
            assert!(len >= 2);
            out.push((t[off], &t[off..off + len]));
            off += len;
        }
        assert_eq!(off, t.len());
        out
    }

    #[test]
    fn every_table_checksums_and_has_its_length() {
        for nr_cpus in [1u8, 4, 255] {
            let t = build_tables(nr_cpus, 256 << 20, true).unwrap();
            assert_eq!(&t.rsdp[..8], b"RSD PTR ");
            assert_eq!(checksum(&t.rsdp[..20]), 0, "RSDP v1 checksum");
            assert_eq!(checksum(&t.rsdp), 0, "RSDP extended checksum");
            assert_eq!(t.tables.len(), 5);
            for (addr, bytes) in &t.tables {
                let sig = String::from_utf8_lossy(&bytes[..4]).into_owned();
                assert_eq!(checksum(bytes), 0, "{sig} checksum");
                assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "{sig} length");
                assert!(
                    *addr >= ACPI_TABLES_START && addr + (bytes.len() as u64) <= HIGH_RAM_START
                );
            }
        }
    }

    #[test]
    fn rsdp_xsdt_and_fadt_point_at_the_tables() {
        let t = build_tables(2, 256 << 20, true).unwrap();
        let (xsdt_addr, xsdt) = t.find(b"XSDT").unwrap();
        assert_eq!(u64_at(&t.rsdp, 24), xsdt_addr);
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        let addr_of = |sig: &[u8; 4]| t.find(sig).unwrap().0;
        assert_eq!(
            entries,
            [addr_of(b"FACP"), addr_of(b"APIC"), addr_of(b"MCFG")]
        );
        let (_, fadt) = t.find(b"FACP").unwrap();
        // X_DSDT at offset 140; the 32-bit DSDT field is 0.
        assert_eq!(u64_at(fadt, 140), addr_of(b"DSDT"));
        assert_eq!(u32_at(fadt, 40), 0);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let t = fadt(0xe0100, true);
        assert_eq!(t.len(), 276);
        let flags = u32_at(&t, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // RESET_REG: system I/O, 8 bits, byte access, at ACPI_RESET_PORT; RESET_VALUE 1.
        assert_eq!(&t[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&t, 120), u64::from(ACPI_RESET_PORT));
        assert_eq!(t[128], RESET_VALUE);
        // SLEEP_CONTROL_REG and SLEEP_STATUS_REG.
        for off in [244, 256] {
            assert_eq!(&t[off..off + 4], &[1, 8, 0, 1]);
            assert_eq!(u64_at(&t, off + 4), u64::from(ACPI_SLEEP_CONTROL_PORT));
        }
        assert_eq!(u16::from_le_bytes([t[109], t[110]]), IAPC_BOOT_ARCH);
    }

    #[test]
    fn madt_has_one_lapic_per_cpu_ioapic_and_override() {
        let t = madt(4);
        assert_eq!(&t[..4], b"APIC");
        assert_eq!(u32_at(&t, 36), LAPIC_START as u32);
        let entries = madt_entries(&t);
        // 4 local APICs, IOAPIC, IRQ0 override, LINT1 NMI.
        assert_eq!(entries.len(), 7);
        let lapics: Vec<_> = entries.iter().filter(|(ty, _)| *ty == 0).collect();
        assert_eq!(lapics.len(), 4);
        for (i, (_, e)) in lapics.iter().enumerate() {
            assert_eq!((e[2], e[3]), (i as u8, i as u8), "uid and APIC id");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
        let (_, ioapic) = entries.iter().find(|(ty, _)| *ty == 1).unwrap();
        assert_eq!(u32_at(ioapic, 4), IOAPIC_START as u32);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
        let (_, iso) = entries.iter().find(|(ty, _)| *ty == 2).unwrap();
        assert_eq!((iso[2], iso[3]), (0, 0), "ISA IRQ 0");
        assert_eq!(u32_at(iso, 4), 2, "to GSI 2");
    }

    #[test]
    fn mcfg_has_the_ecam_window() {
        let t = mcfg();
        assert_eq!(&t[..4], b"MCFG");
        assert_eq!(t.len(), 44 + 16);
        assert_eq!(u64_at(&t, 44), PCI_ECAM_START);
        assert_eq!(u16::from_le_bytes([t[52], t[53]]), 0, "segment");
        assert_eq!((t[54], t[55]), (0, 0), "buses");
    }

    #[test]
    fn dsdt_names_s5_com1_and_the_pci_host_bridge() {
        let t = dsdt(256 << 20, true);
        let has = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        // Name(_S5_, Package(1) { 5 }): NameOp, name, PackageOp, length 4, 1 element,
        // BytePrefix 5.
        assert!(has(&[
            0x08,
            b'_',
            b'S',
            b'5',
            b'_',
            0x12,
            0x04,
            0x01,
            0x0a,
            S5_SLEEP_TYPE
        ]));
        for name in [&b"COM1"[..], b"PCI0", b"MBRD", b"_CRS", b"_SB_"] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        // PNP0501 and PNP0A08 as EISA ids (DWordPrefix + compressed id).
        assert!(has(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
        // COM1's I/O descriptor: decode16, 0x3f8..0x3f8, align 1, 8 ports.
        assert!(has(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
    }

    #[test]
    fn dsdt_describes_the_i8042_and_pvpanic() {
        let t = dsdt(256 << 20, true);
        let has = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        for name in [&b"PS2K"[..], b"PEVT"] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        // PNP0303 as an EISA id; QEMU0001 as a string (StringPrefix, bytes, NUL).
        assert!(has(&[0x0c, 0x41, 0xd0, 0x03, 0x03]));
        assert!(has(b"\x0dQEMU0001\x00"));
        // The i8042's ports: decode16, one port each at 0x60 and at 0x64.
        assert!(has(&[0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01]));
        assert!(has(&[0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01]));
        // Its interrupt: an extended interrupt descriptor (0x89, length 6), consumer + edge
        // (flags 0x03), one GSI: 1.
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x01, 0x00, 0x00, 0x00]));
        // pvpanic's port 0x505.
        assert!(has(&[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));
    }

    #[test]
    fn without_legacy_devices_there_is_no_i8042_nor_rtc_to_probe() {
        let t = dsdt(256 << 20, false);
        let has = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        assert!(!has(b"PS2K"));
        assert!(!has(&[0x0c, 0x41, 0xd0, 0x03, 0x03]), "no PNP0303");
        assert!(!has(&[0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01]));
        assert!(!has(b"RTC_"));
        assert!(!has(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]), "no PNP0B00");
        assert!(
            !has(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]),
            "no port 0x70"
        );
        // The rest stays: COM1, pvpanic, the PCI host bridge.
        for name in [&b"COM1"[..], b"PEVT", b"PCI0", b"MBRD"] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        // With them: the RTC as PCs describe it, PNP0B00 on ports 0x70-0x71.
        let t = dsdt(256 << 20, true);
        let has = |needle: &[u8]| t.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"RTC_") && has(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]));
        assert!(has(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]));
        // FADT: century at byte 108, IAPC_BOOT_ARCH at 109.
        let f = fadt(0xe0100, false);
        let arch = u16::from_le_bytes([f[109], f[110]]);
        assert_eq!(arch & IAPC_8042, 0, "no 8042 boot flag");
        assert_ne!(arch & IAPC_NO_CMOS_RTC, 0, "CMOS RTC not present");
        assert_eq!(arch, IAPC_BOOT_ARCH & !IAPC_8042 | IAPC_NO_CMOS_RTC);
        assert_eq!(f[108], 0, "no century register without an RTC");
        let f = fadt(0xe0100, true);
        assert_eq!(u16::from_le_bytes([f[109], f[110]]), IAPC_BOOT_ARCH);
        assert_eq!(IAPC_BOOT_ARCH & IAPC_NO_CMOS_RTC, 0);
        assert_eq!(f[108], FADT_CENTURY);
        // The tables as a whole are still well formed (checksums) and smaller.
        let on = build_tables(1, 256 << 20, true).unwrap();
        let off = build_tables(1, 256 << 20, false).unwrap();
        for (_, bytes) in &off.tables {
            assert_eq!(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        }
        assert!(off.tables[0].1.len() < on.tables[0].1.len(), "DSDT");
    }

    #[test]
    fn tables_fit_in_a_megabyte_of_ram() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(fits_in(&mem));
        write_tables(&mem, 1, 1 << 20, true).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(RSDP_START)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(!fits_in(&small));
        assert!(write_tables(&small, 1, 0x8_0000, true).is_err());
    }
}
