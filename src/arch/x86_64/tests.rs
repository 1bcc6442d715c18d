//! Tests of `load_kernel` (synthetic ELF, bzImage and real-mode images in guest memory; the
//! Debian kernel from `scripts/fetch-debian-kernel.sh` when it is cached) and of the port
//! devices; `vcpu_tests` has those of `configure_vcpu`.
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::tempfile::TempFile;

use super::bootparams::{MemmapEntry, ModlistEntry, StartInfo};
use super::layout::*;
use super::*;

pub(super) fn guest_mem(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&layout::ram_regions(size)).unwrap()
}

fn file_with(bytes: &[u8]) -> File {
    let mut f = TempFile::new().unwrap().into_file();
    f.write_all(bytes).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

const ELF_CODE_OFFSET: usize = 0x1000;

/// A minimal x86-64 ELF executable: one PT_LOAD of `code` at `paddr`, entry `entry`, and, with
/// `pvh`, a PT_NOTE holding the Xen PVH entry note.
fn elf(entry: u64, paddr: u64, code: &[u8], pvh: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
    let mut b = vec![0u8; ELF_CODE_OFFSET];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&entry.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&phnum.to_le_bytes());
    let phdr = |b: &mut Vec<u8>, at: usize, p_type: u32, off: u64, addr: u64, size: u64| {
        let fields: [u64; 6] = [off, addr, addr, size, size, 0x1000];
        b[at..at + 4].copy_from_slice(&p_type.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&5u32.to_le_bytes());
        for (i, v) in fields.iter().enumerate() {
            b[at + 8 + i * 8..at + 16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
    };
    phdr(
        &mut b,
        64,
        1,
        ELF_CODE_OFFSET as u64,
        paddr,
        code.len() as u64,
    );
    if let Some(pvh_entry) = pvh {
        let note_off = 64 + 2 * 56;
        // A note of another type first, as in a real vmlinux.
        let mut note = Vec::new();
        for (ty, desc) in [(6u32, *b"linu"), (18, pvh_entry.to_le_bytes())] {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&ty.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&desc);
        }
        b[note_off..note_off + note.len()].copy_from_slice(&note);
        phdr(&mut b, 64 + 56, 4, note_off as u64, 0, note.len() as u64);
    }
    b.extend_from_slice(code);
    b
}

const BZ_SETUP_SECTS: u8 = 3;
const BZ_INIT_SIZE: u32 = 0x80_0000;

/// A minimal bzImage: boot protocol 2.15, 64-bit entry, relocatable, `payload` after the
/// setup sectors.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; (usize::from(BZ_SETUP_SECTS) + 1) * 512];
    b[0x1f1] = BZ_SETUP_SECTS;
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x211] = 1; // LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    b[0x234] = 1; // relocatable
    b[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // XLF_KERNEL_64 | above 4G
    b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    b[0x260..0x264].copy_from_slice(&BZ_INIT_SIZE.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn boot(
    mem: &GuestMemoryMmap,
    kernel: KernelSource<'_>,
    initrd: Option<&mut File>,
    cmdline: &str,
) -> Result<BootEntry, ArchError> {
    load_kernel(
        mem,
        BootConfig {
            kernel,
            initrd,
            cmdline,
            mem_size: mem.iter().map(|r| r.len()).sum(),
            machine: &Machine::new(2),
            legacy: true,
            phases: None,
        },
    )
}

fn read_cmdline(mem: &GuestMemoryMmap) -> String {
    let mut buf = vec![0u8; CMDLINE_MAX_SIZE];
    mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
        .unwrap();
    let len = buf.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(buf[..len].to_vec()).unwrap()
}

fn assert_acpi_present(mem: &GuestMemoryMmap) {
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(RSDP_START)).unwrap();
    assert_eq!(&sig, b"RSD PTR ");
}

#[test]
fn pvh_elf_from_memory() {
    let mem = guest_mem(256 << 20);
    let image = elf(0x10_0000, 0x10_0000, &[0xf4; 64], Some(0x10_0010));
    let mut initrd = file_with(&[0xab; 5000]);
    let entry = boot(
        &mem,
        KernelSource::Builtin(&image),
        Some(&mut initrd),
        "console=ttyS0",
    )
    .unwrap();
    assert_eq!(
        entry,
        BootEntry::Pvh {
            entry: GuestAddress(0x10_0010)
        }
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xf4);
    assert_eq!(read_cmdline(&mem), "console=ttyS0");
    assert_acpi_present(&mem);

    let info = mem
        .read_obj::<StartInfo>(GuestAddress(PVH_INFO_START))
        .unwrap()
        .0;
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.version, 1);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.rsdp_paddr, RSDP_START);
    assert_eq!((info.memmap_paddr, info.memmap_entries), (MEMMAP_START, 4));
    assert_eq!(
        (info.nr_modules, info.modlist_paddr),
        (1, PVH_MODLIST_START)
    );
    let module = mem
        .read_obj::<ModlistEntry>(GuestAddress(PVH_MODLIST_START))
        .unwrap()
        .0;
    // As high as possible, page-aligned.
    assert_eq!(module.size, 5000);
    assert_eq!(module.paddr, ((256 << 20) - 5000) & !0xfff);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(module.paddr)).unwrap(),
        0xab
    );
    let ram = mem
        .read_obj::<MemmapEntry>(GuestAddress(MEMMAP_START + 2 * 24))
        .unwrap()
        .0;
    assert_eq!(
        (ram.addr, ram.size, ram.type_),
        (HIGH_RAM_START, (256 << 20) - HIGH_RAM_START, 1)
    );
}

#[test]
fn pvh_elf_without_note_is_refused() {
    let mem = guest_mem(16 << 20);
    let image = elf(0x10_0000, 0x10_0000, &[0xf4; 16], None);
    let err = boot(&mem, KernelSource::Builtin(&image), None, "").unwrap_err();
    assert!(matches!(err, ArchError::NoPvhNote), "{err}");
    let err = boot(&mem, KernelSource::Builtin(b"MZ not an elf"), None, "").unwrap_err();
    assert!(matches!(err, ArchError::KernelLoad { .. }), "{err}");
}

#[test]
fn elf_file_with_pvh_note_boots_pvh_and_without_boots_linux64() {
    let mem = guest_mem(64 << 20);
    let mut f = file_with(&elf(0x20_0000, 0x20_0000, &[0x90; 32], Some(0x20_0004)));
    let entry = boot(&mem, KernelSource::File(&mut f), None, "").unwrap();
    assert_eq!(
        entry,
        BootEntry::Pvh {
            entry: GuestAddress(0x20_0004)
        }
    );

    let mem = guest_mem(64 << 20);
    let mut f = file_with(&elf(0x20_0000, 0x20_0000, &[0x90; 32], None));
    let mut initrd = file_with(&[1; 4096]);
    let entry = boot(&mem, KernelSource::File(&mut f), Some(&mut initrd), "quiet").unwrap();
    assert_eq!(
        entry,
        BootEntry::Linux64 {
            entry: GuestAddress(0x20_0000)
        }
    );
    let p = mem
        .read_obj::<boot_params>(GuestAddress(ZERO_PAGE_START))
        .unwrap();
    assert_eq!({ p.hdr.boot_flag }, 0xaa55);
    assert_eq!({ p.hdr.header }, 0x5372_6448);
    assert_eq!({ p.hdr.type_of_loader }, 0xff);
    assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
    // "pci=noearly " (linux_cmdline's hint) + the 5-byte command line + NUL.
    assert_eq!({ p.hdr.cmdline_size }, 12 + 6);
    assert_eq!({ p.hdr.ramdisk_image }, (64 << 20) - 4096);
    assert_eq!({ p.hdr.ramdisk_size }, 4096);
    assert_eq!({ p.acpi_rsdp_addr }, RSDP_START);
    assert_eq!(p.e820_entries, 4);
    assert_eq!(read_cmdline(&mem), "pci=noearly quiet");
}

#[test]
fn bzimage_boots_at_its_64bit_entry() {
    let mem = guest_mem(256 << 20);
    let mut f = file_with(&bzimage(&[0xcc; 0x3000]));
    let mut initrd = file_with(&[7; 0x2345]);
    let entry = boot(
        &mem,
        KernelSource::File(&mut f),
        Some(&mut initrd),
        "root=/dev/vda",
    )
    .unwrap();
    assert_eq!(
        entry,
        BootEntry::Linux64 {
            entry: GuestAddress(HIGH_RAM_START + 0x200)
        }
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(HIGH_RAM_START)).unwrap(),
        0xcc
    );
    let p = mem
        .read_obj::<boot_params>(GuestAddress(ZERO_PAGE_START))
        .unwrap();
    assert_eq!({ p.hdr.version }, 0x020f);
    assert_eq!({ p.hdr.setup_sects }, BZ_SETUP_SECTS);
    assert_eq!({ p.hdr.code32_start }, HIGH_RAM_START as u32);
    assert_eq!({ p.hdr.type_of_loader }, 0xff);
    assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
    // "pci=noearly " (linux_cmdline's hint) + the 13-byte command line + NUL.
    assert_eq!({ p.hdr.cmdline_size }, 12 + 14);
    assert_eq!({ p.hdr.ramdisk_size }, 0x2345);
    assert_eq!({ p.hdr.ramdisk_image }, ((256u32 << 20) - 0x2345) & !0xfff);
    assert_eq!({ p.acpi_rsdp_addr }, RSDP_START);
    assert_eq!(p.e820_entries, 4);
    assert_acpi_present(&mem);
}

#[test]
fn bzimage_initrd_stays_below_initrd_addr_max_and_above_the_unpacked_kernel() {
    // 4 GiB of RAM would need 4 GiB of memory: use the placement with the header instead.
    let mut image = bzimage(&[0; 16]);
    image[0x22c..0x230].copy_from_slice(&0x0fff_ffffu32.to_le_bytes());
    let mem = guest_mem(512 << 20);
    let mut f = file_with(&image);
    let mut initrd = file_with(&[7; 0x1000]);
    boot(&mem, KernelSource::File(&mut f), Some(&mut initrd), "").unwrap();
    let p = mem
        .read_obj::<boot_params>(GuestAddress(ZERO_PAGE_START))
        .unwrap();
    assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000 - 0x1000);

    // The unpacked kernel reaches pref_address + init_size = 24 MiB: no room in 24 MiB.
    let mem = guest_mem(24 << 20);
    let mut f = file_with(&bzimage(&[0; 16]));
    let mut initrd = file_with(&[7; 0x1000]);
    let err = boot(&mem, KernelSource::File(&mut f), Some(&mut initrd), "").unwrap_err();
    assert!(matches!(err, ArchError::InitrdTooLarge { .. }), "{err}");
    // And in less RAM than that, the kernel itself does not fit.
    let mem = guest_mem(16 << 20);
    let mut f = file_with(&bzimage(&[0; 16]));
    let err = boot(&mem, KernelSource::File(&mut f), None, "").unwrap_err();
    assert!(matches!(err, ArchError::KernelTooLarge { .. }), "{err}");
}

#[test]
fn bzimage_without_64bit_entry_is_refused() {
    let mut image = bzimage(&[0; 16]);
    image[0x236] = 0;
    let mem = guest_mem(64 << 20);
    let err = boot(&mem, KernelSource::File(&mut file_with(&image)), None, "").unwrap_err();
    assert!(matches!(err, ArchError::NoLongModeEntry(0x020f)), "{err}");
}

#[test]
fn arm64_image_is_refused_naming_both_architectures() {
    let mut image = vec![0u8; 4096];
    image[0..2].copy_from_slice(b"MZ");
    image[56..60].copy_from_slice(b"ARM\x64");
    let mem = guest_mem(16 << 20);
    let err = boot(&mem, KernelSource::File(&mut file_with(&image)), None, "").unwrap_err();
    assert!(matches!(err, ArchError::WrongArch), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("arm64 Image") && text.contains("x86_64"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
}

#[test]
fn garbage_kernel_is_neither_format() {
    let mem = guest_mem(16 << 20);
    for junk in [&[0x42u8; 8192][..], b"", b"\x7fEL"] {
        let err = boot(&mem, KernelSource::File(&mut file_with(junk)), None, "").unwrap_err();
        assert!(matches!(err, ArchError::UnknownKernelFormat), "{err}");
        assert_eq!(
            err.to_string(),
            "kernel image is neither a bzImage nor an ELF vmlinux"
        );
    }
}

#[test]
fn truncated_elf_is_reported() {
    let mem = guest_mem(16 << 20);
    let image = elf(0x10_0000, 0x10_0000, &[0x90; 0x800], Some(0x10_0000));
    // Cut inside the code, inside the program headers, inside the ELF header.
    for cut in [ELF_CODE_OFFSET + 0x400, 100, 40] {
        let mut f = file_with(&image[..cut]);
        let err = boot(&mem, KernelSource::File(&mut f), None, "").unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                ArchError::KernelLoad { format: "ELF", .. }
                    | ArchError::KernelTruncated { format: "ELF", .. }
            ),
            "{text}"
        );
        assert!(text.contains("truncated"), "{text}");
    }
}

#[test]
fn elf_beyond_ram_is_reported() {
    let mem = guest_mem(16 << 20);
    let image = elf(0x100_0000, 0x100_0000, &[0x90; 16], None);
    let err = boot(&mem, KernelSource::File(&mut file_with(&image)), None, "").unwrap_err();
    assert!(
        err.to_string().contains("does not fit in guest RAM"),
        "{err}"
    );
}

#[test]
fn cmdline_too_long_is_refused_before_loading() {
    let mem = guest_mem(16 << 20);
    let image = elf(0x10_0000, 0x10_0000, &[0xf4; 16], Some(0x10_0000));
    let long = "a".repeat(3000);
    let err = boot(&mem, KernelSource::Builtin(&image), None, &long).unwrap_err();
    assert_eq!(
        err.to_string(),
        "kernel command line is 3001 bytes with its NUL; the limit is 2048"
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(),
        0,
        "nothing loaded"
    );
}

#[test]
fn initrd_too_large_is_refused() {
    let mem = guest_mem(4 << 20);
    let image = elf(0x10_0000, 0x10_0000, &[0xf4; 0x1000], Some(0x10_0000));
    // 3 MiB above a kernel ending at 1 MiB + 4 KiB in 4 MiB of RAM: 4 KiB short.
    let mut initrd = file_with(&vec![0u8; 3 << 20]);
    let err = boot(&mem, KernelSource::Builtin(&image), Some(&mut initrd), "").unwrap_err();
    assert_eq!(
        err.to_string(),
        "initrd (3145728 bytes) does not fit in guest RAM (3141632 bytes free between the kernel and 0x400000)"
    );
}

#[test]
fn real_mode_image_is_copied() {
    let mem = guest_mem(1 << 20);
    let image = [0xb0, 0x41, 0xf4];
    let entry = boot(
        &mem,
        KernelSource::RealMode {
            image: &image,
            load_addr: 0x7c00,
            cs: 0x07c0,
            ip: 0,
        },
        None,
        "x",
    )
    .unwrap();
    assert_eq!(entry, BootEntry::RealMode { cs: 0x07c0, ip: 0 });
    let mut back = [0u8; 3];
    mem.read_slice(&mut back, GuestAddress(0x7c00)).unwrap();
    assert_eq!(back, image);
    assert_acpi_present(&mem);

    let err = boot(
        &mem,
        KernelSource::RealMode {
            image: &[0; 32],
            load_addr: (1 << 20) - 16,
            cs: 0,
            ip: 0,
        },
        None,
        "",
    )
    .unwrap_err();
    assert!(
        matches!(err, ArchError::ImageTooLarge { size: 32, .. }),
        "{err}"
    );
    let err = boot(
        &mem,
        KernelSource::RealMode {
            image: &image,
            load_addr: 0x7c00,
            cs: 0,
            ip: 0,
        },
        Some(&mut file_with(&[1])),
        "",
    )
    .unwrap_err();
    assert!(matches!(err, ArchError::InitrdWithRealMode), "{err}");
}

#[test]
fn no_vcpus_is_refused() {
    let mem = guest_mem(1 << 20);
    let err = load_kernel(
        &mem,
        BootConfig {
            kernel: KernelSource::RealMode {
                image: &[0xf4],
                load_addr: 0,
                cs: 0,
                ip: 0,
            },
            initrd: None,
            cmdline: "",
            mem_size: 1 << 20,
            machine: &Machine::new(0),
            legacy: true,
            phases: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, ArchError::NoVcpus));
}

fn cached_kernel(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/kernel")
        .join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is not there (scripts/fetch-debian-kernel.sh)",
            p.display()
        );
        None
    }
}

#[test]
fn debian_kernel_if_cached() {
    if let Some(path) = cached_kernel("vmlinuz") {
        let mem = guest_mem(256 << 20);
        let mut f = File::open(path).unwrap();
        let entry = boot(&mem, KernelSource::File(&mut f), None, "console=ttyS0").unwrap();
        assert_eq!(
            entry,
            BootEntry::Linux64 {
                entry: GuestAddress(HIGH_RAM_START + 0x200)
            }
        );
        let p = mem
            .read_obj::<boot_params>(GuestAddress(ZERO_PAGE_START))
            .unwrap();
        assert!({ p.hdr.version } >= 0x020f);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
    }
    if let Some(path) = cached_kernel("vmlinux") {
        let mem = guest_mem(256 << 20);
        let mut f = File::open(path).unwrap();
        let mut initrd = file_with(&[0; 4096]);
        let entry = boot(&mem, KernelSource::File(&mut f), Some(&mut initrd), "").unwrap();
        assert!(
            matches!(entry, BootEntry::Pvh { entry } if entry.0 >= HIGH_RAM_START),
            "{entry:?}"
        );
    }
}

/// A trigger that raises nothing (the device tables only).
struct NoIrq;
impl vm_superio::Trigger for NoIrq {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// The port devices with and without the legacy ones, and the IRQ lines they asked for.
fn port_devices(legacy: bool) -> (Vec<String>, Vec<u32>) {
    let pio = crate::bus::Bus::new(crate::bus::BusKind::Pio);
    let mmio = crate::bus::Bus::new(crate::bus::BusKind::Mmio);
    let mut lines = Vec::new();
    register_devices(
        &pio,
        &mmio,
        |n| {
            lines.push(n);
            Ok::<_, crate::bus::BusError>(NoIrq)
        },
        Box::new(std::io::sink()),
        Box::new(std::io::sink()),
        legacy,
    )
    .unwrap();
    (pio.map().into_iter().map(|e| e.device).collect(), lines)
}

#[test]
fn no_legacy_drops_the_i8042_and_the_rtc_and_keeps_the_rest() {
    let (with, with_irqs) = port_devices(true);
    let (without, without_irqs) = port_devices(false);
    for d in ["i8042", "rtc"] {
        assert!(with.iter().any(|x| x == d), "{d}");
        assert!(!without.iter().any(|x| x == d), "{d}");
    }
    assert_eq!(with.len(), without.len() + 2);
    for d in ["serial0", "acpi-pm", "pvpanic"] {
        assert!(without.iter().any(|x| x == d), "{d}");
    }
    assert!(with_irqs.contains(&I8042_KBD_IRQ));
    assert!(!without_irqs.contains(&I8042_KBD_IRQ), "no IRQ 1 irqfd");
    assert!(without_irqs.contains(&COM1_IRQ));
}

#[test]
fn linux_gets_the_pci_hint_unless_it_has_a_pci_parameter() {
    assert_eq!(linux_cmdline(""), "pci=noearly");
    assert_eq!(
        linux_cmdline("console=ttyS0 quiet"),
        "pci=noearly console=ttyS0 quiet"
    );
    for own in [
        "pci=off",
        "console=ttyS0 pci=earlydump,nocrs",
        "  pci=conf1",
    ] {
        assert_eq!(linux_cmdline(own), own, "the user's pci= wins");
    }
    // After "--" the words are init's: a pci= there is not the kernel's.
    assert_eq!(linux_cmdline("ro -- pci=x"), "pci=noearly ro -- pci=x");
    // A word that only contains "pci=" is no pci= parameter.
    assert_eq!(
        linux_cmdline("foo.pci=1 xpci=2"),
        "pci=noearly foo.pci=1 xpci=2"
    );
}

#[test]
fn the_hint_reaches_a_linux_kernel_but_not_the_builtin_guest() {
    let read_cmdline = |mem: &GuestMemoryMmap| {
        let mut b = vec![0u8; 64];
        mem.read_slice(&mut b, GuestAddress(CMDLINE_START)).unwrap();
        let end = b.iter().position(|&c| c == 0).unwrap();
        String::from_utf8(b[..end].to_vec()).unwrap()
    };
    // The built-in guest (an ELF in memory): its commands as given.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    load_kernel(
        &mem,
        BootConfig {
            kernel: KernelSource::Builtin(crate::guest::GUEST_IMAGE),
            initrd: None,
            cmdline: "hello",
            mem_size: 64 << 20,
            machine: &Machine::new(1),
            legacy: true,
            phases: None,
        },
    )
    .unwrap();
    assert_eq!(read_cmdline(&mem), "hello");
    // The same ELF from a file is taken for a Linux kernel: hinted.
    let mut f = TempFile::new().unwrap().into_file();
    f.write_all(crate::guest::GUEST_IMAGE).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    load_kernel(
        &mem,
        BootConfig {
            kernel: KernelSource::File(&mut f),
            initrd: None,
            cmdline: "console=ttyS0",
            mem_size: 64 << 20,
            machine: &Machine::new(1),
            legacy: true,
            phases: None,
        },
    )
    .unwrap();
    assert_eq!(read_cmdline(&mem), "pci=noearly console=ttyS0");
}
