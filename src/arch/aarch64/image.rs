//! The arm64 Linux `Image` (booting.rst §4): its 64-byte header, and where the kernel, the
//! initrd and the FDT go in guest RAM.
//!
//! ```text
//! 0   code0, code1 (an "MZ" EFI stub's first bytes, or a branch)
//! 8   text_offset   (LE u64; with image_size 0 assume 0x80000)
//! 16  image_size    (LE u64: bytes the kernel needs from its start, BSS included; may exceed
//!                    the file)
//! 24  flags         (bit 0: big-endian kernel; bits 1-2: page size; bit 3: anywhere in RAM)
//! 56  magic "ARM\x64"
//! 60  PE header offset
//! ```
//!
//! The kernel is loaded (by linux-loader's PE loader on aarch64 hosts) at the 2 MiB aligned
//! start of RAM + text_offset and owns `image_size` bytes from there. The FDT takes the top
//! 2 MiB of the boot window (the first GiB of RAM, or all of it when smaller), the initrd the
//! pages right below it; both must stay above the kernel's `image_size`.
use super::layout::{BOOT_WINDOW, FDT_MAX_SIZE, KERNEL_ALIGN, RAM_START};
use super::ArchError;

pub const HEADER_SIZE: usize = 64;
const MAGIC: [u8; 4] = *b"ARM\x64";
const MAGIC_OFFSET: usize = 56;
/// text_offset when image_size is 0 (kernels before 3.17).
const LEGACY_TEXT_OFFSET: u64 = 0x80000;
const FLAG_BIG_ENDIAN: u64 = 1;
const PAGE: u64 = 4096;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub text_offset: u64,
    /// 0 for kernels before 3.17.
    pub image_size: u64,
    pub flags: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Recognizes the kernels of the other architecture (and ELF files), so that the error says
/// what the file is.
fn foreign(head: &[u8]) -> Option<ArchError> {
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Some(ArchError::WrongArch("an x86 bzImage"));
    }
    if head.len() >= 20 && head[..4] == *b"\x7fELF" {
        return Some(match u16::from_le_bytes([head[18], head[19]]) {
            EM_X86_64 => ArchError::WrongArch("an x86_64 ELF"),
            EM_AARCH64 => ArchError::ElfVmlinux,
            _ => ArchError::UnknownKernelFormat,
        });
    }
    None
}

/// Parses the header from the first bytes of the file (at least 64; up to 0x206 lets a
/// bzImage be named).
pub fn parse_header(head: &[u8]) -> Result<ImageHeader, ArchError> {
    if head.len() < HEADER_SIZE || head[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
        return Err(foreign(head).unwrap_or(ArchError::UnknownKernelFormat));
    }
    let h = ImageHeader {
        text_offset: u64_at(head, 8),
        image_size: u64_at(head, 16),
        flags: u64_at(head, 24),
    };
    if h.flags & FLAG_BIG_ENDIAN != 0 {
        return Err(ArchError::BigEndianImage);
    }
    Ok(h)
}

/// How much of the file a kernel with an EFI stub (`MZ` first, a PE header at the offset in
/// bytes 60..64) says it has: the end of its last PE section's raw data. `None` for an Image
/// without a PE header, or with one outside `head`.
pub fn pe_file_end(head: &[u8]) -> Option<u64> {
    const SECTION: usize = 40;
    if head.len() < HEADER_SIZE || &head[..2] != b"MZ" {
        return None;
    }
    let u16_at = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let pe = u32_at(60)? as usize;
    if head.get(pe..pe.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    let sections = usize::from(u16_at(pe + 6)?);
    let table = pe + 24 + usize::from(u16_at(pe + 20)?);
    let mut end = 0u64;
    for n in 0..sections {
        let s = table.checked_add(n.checked_mul(SECTION)?)?;
        let (size, at) = (u32_at(s + 16)?, u32_at(s + 20)?);
        end = end.max(u64::from(at) + u64::from(size));
    }
    Some(end)
}

/// Refuses a kernel file shorter than its PE sections say (a truncated copy would boot into
/// zeros). Images without a PE header cannot be checked.
pub fn check_complete(head: &[u8], file_len: u64) -> Result<(), ArchError> {
    match pe_file_end(head) {
        Some(end) if file_len < end => Err(ArchError::Truncated {
            len: file_len,
            needed: end,
        }),
        _ => Ok(()),
    }
}

/// Where everything goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootLayout {
    /// The 2 MiB aligned base the PE loader is given.
    pub kernel_base: u64,
    /// The kernel's first byte (base + text_offset): the boot vCPU's PC.
    pub kernel_load: u64,
    /// First byte after the kernel's `image_size` (or its file, if longer).
    pub kernel_end: u64,
    /// The initrd's guest address.
    pub initrd: Option<u64>,
    /// The FDT's guest address (2 MiB aligned).
    pub fdt: u64,
}

/// Plans the boot layout for a kernel of `file_len` bytes with header `h`, an initrd of
/// `initrd_size` bytes, in `mem_size` bytes of RAM.
pub fn plan(
    mem_size: u64,
    h: &ImageHeader,
    file_len: u64,
    initrd_size: Option<u64>,
) -> Result<BootLayout, ArchError> {
    let ram_end = RAM_START + mem_size;
    let text_offset = if h.image_size == 0 {
        LEGACY_TEXT_OFFSET
    } else {
        h.text_offset
    };
    // 2 MiB aligned (checked in `layout`).
    let kernel_base = RAM_START;
    let kernel_load = kernel_base
        .checked_add(text_offset)
        .ok_or(ArchError::KernelTooLarge {
            needed: u64::MAX,
            ram_end,
        })?;
    let kernel_end = kernel_load.saturating_add(h.image_size.max(file_len));
    let window_end = RAM_START + mem_size.min(BOOT_WINDOW);
    let fdt = window_end.saturating_sub(FDT_MAX_SIZE) / KERNEL_ALIGN * KERNEL_ALIGN;
    if fdt < kernel_end || fdt < RAM_START {
        return Err(ArchError::KernelTooLarge {
            needed: kernel_end.saturating_add(FDT_MAX_SIZE),
            ram_end,
        });
    }
    let initrd = match initrd_size {
        None => None,
        Some(size) => {
            let start = fdt.checked_sub(size).map(|s| s / PAGE * PAGE);
            match start {
                Some(s) if s >= kernel_end => Some(s),
                _ => {
                    return Err(ArchError::InitrdTooLarge {
                        size,
                        room: fdt - kernel_end,
                        top: fdt,
                    })
                }
            }
        }
    };
    Ok(BootLayout {
        kernel_base,
        kernel_load,
        kernel_end,
        initrd,
        fdt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as Debian's 6.1 arm64 Image has it (text_offset 0, image_size 0x1ab0000,
    /// flags 0xa), "MZ" first.
    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x300];
        b[0..2].copy_from_slice(b"MZ");
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&flags.to_le_bytes());
        b[56..60].copy_from_slice(b"ARM\x64");
        b
    }

    #[test]
    fn parses_debians_header() {
        let h = parse_header(&header(0, 0x1ab_0000, 0xa)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x1ab_0000,
                flags: 0xa
            }
        );
    }

    #[test]
    fn names_what_is_not_an_image() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let e = parse_header(&bz).unwrap_err();
        assert!(matches!(e, ArchError::WrongArch("an x86 bzImage")), "{e}");
        assert!(e.to_string().contains("aarch64"), "{e}");
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[18] = 62;
        assert!(matches!(
            parse_header(&elf),
            Err(ArchError::WrongArch("an x86_64 ELF"))
        ));
        elf[18] = 183;
        assert!(matches!(parse_header(&elf), Err(ArchError::ElfVmlinux)));
        for junk in [&[0x42u8; 100][..], b"", b"MZ"] {
            assert!(matches!(
                parse_header(junk),
                Err(ArchError::UnknownKernelFormat)
            ));
        }
        assert!(matches!(
            parse_header(&header(0, 0x10_0000, 0xb)),
            Err(ArchError::BigEndianImage)
        ));
    }

    /// The head of an EFI-stub Image: a PE header at 0x40 with two sections whose raw data end
    /// at `end`.
    fn efi_head(end: u32) -> Vec<u8> {
        let mut b = header(0, 0x1ab_0000, 0xa);
        b[60..64].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        b[0x46..0x48].copy_from_slice(&2u16.to_le_bytes());
        b[0x54..0x56].copy_from_slice(&0xa0u16.to_le_bytes()); // optional header size
        let table = 0x40 + 24 + 0xa0;
        for (n, (at, size)) in [(0x1_0000u32, 0x1000u32), (0x1_1000, end - 0x1_1000)]
            .into_iter()
            .enumerate()
        {
            let s = table + 40 * n;
            b[s + 16..s + 20].copy_from_slice(&size.to_le_bytes());
            b[s + 20..s + 24].copy_from_slice(&at.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_truncated_efi_image_is_refused() {
        let head = efi_head(0x2_0000);
        assert_eq!(pe_file_end(&head), Some(0x2_0000));
        assert!(check_complete(&head, 0x2_0000).is_ok());
        assert!(check_complete(&head, 0x2_0100).is_ok());
        let e = check_complete(&head, 100).unwrap_err();
        assert!(
            matches!(
                e,
                ArchError::Truncated {
                    len: 100,
                    needed: 0x2_0000
                }
            ),
            "{e}"
        );
        // No PE header (the built-in guest starts with a branch): nothing to check.
        assert_eq!(pe_file_end(&header(0, 0x10_0000, 0xa)[..]), None);
        let mut no_pe = header(0, 0x10_0000, 0xa);
        no_pe[..2].copy_from_slice(b"MZ");
        no_pe[60..64].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        assert_eq!(pe_file_end(&no_pe), None);
        // Section tables beyond the head, or huge counts, do not panic.
        let mut wild = efi_head(0x2_0000);
        wild[0x46..0x48].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(pe_file_end(&wild), None);
    }

    #[test]
    fn image_size_not_the_file_decides_where_the_initrd_goes() {
        // Debian's Image: 27 MB file, 0x1ab0000 image_size; 256 MiB of RAM.
        let h = parse_header(&header(0, 0x1ab_0000, 0xa)).unwrap();
        let p = plan(256 << 20, &h, 27_000_000, Some(10 << 20)).unwrap();
        assert_eq!(p.kernel_base, RAM_START);
        assert_eq!(p.kernel_load, RAM_START);
        assert_eq!(p.kernel_end, RAM_START + 0x1ab_0000);
        assert_eq!(p.fdt, RAM_START + (254 << 20));
        let initrd = p.initrd.unwrap();
        assert_eq!(initrd % 4096, 0);
        assert!(initrd >= p.kernel_end && initrd + (10 << 20) <= p.fdt);
        // A file longer than image_size (an appended payload) is not cut off.
        let p = plan(256 << 20, &h, 0x200_0000, None).unwrap();
        assert_eq!(p.kernel_end, RAM_START + 0x200_0000);
        assert_eq!(p.initrd, None);
    }

    #[test]
    fn text_offset_and_old_kernels() {
        let h = parse_header(&header(0x8_0000, 0x100_0000, 0xa)).unwrap();
        let p = plan(128 << 20, &h, 0x80_0000, None).unwrap();
        assert_eq!(p.kernel_load, RAM_START + 0x8_0000);
        // image_size 0: text_offset is 0x80000 whatever the field says.
        let h = parse_header(&header(0x1234, 0, 0)).unwrap();
        let p = plan(128 << 20, &h, 0x80_0000, None).unwrap();
        assert_eq!(p.kernel_load, RAM_START + 0x8_0000);
        assert_eq!(p.kernel_end, RAM_START + 0x88_0000);
    }

    #[test]
    fn big_ram_keeps_the_boot_window_low() {
        let h = parse_header(&header(0, 0x1ab_0000, 0xa)).unwrap();
        let p = plan(8 << 30, &h, 27_000_000, Some(1 << 20)).unwrap();
        assert_eq!(p.fdt, RAM_START + BOOT_WINDOW - FDT_MAX_SIZE);
        assert!(p.initrd.unwrap() < p.fdt);
    }

    #[test]
    fn what_does_not_fit_is_refused() {
        let h = parse_header(&header(0, 0x1ab_0000, 0xa)).unwrap();
        // Kernel + FDT slot do not fit in 24 MiB.
        let e = plan(24 << 20, &h, 27_000_000, None).unwrap_err();
        assert!(matches!(e, ArchError::KernelTooLarge { .. }), "{e}");
        // The initrd does not fit between the kernel and the FDT.
        let e = plan(64 << 20, &h, 27_000_000, Some(40 << 20)).unwrap_err();
        match e {
            ArchError::InitrdTooLarge { size, room, top } => {
                assert_eq!(size, 40 << 20);
                assert_eq!(top, RAM_START + (62 << 20));
                assert_eq!(room, (62 << 20) - 0x1ab_0000);
            }
            other => panic!("{other}"),
        }
        // Absurd sizes do not overflow.
        let h = parse_header(&header(u64::MAX - 10, u64::MAX, 0)).unwrap();
        assert!(plan(64 << 20, &h, 100, Some(u64::MAX)).is_err());
    }
}
