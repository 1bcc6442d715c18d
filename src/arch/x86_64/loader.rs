//! Kernel, initrd and command line into guest memory.
//!
//! A kernel file is recognised by its magic: `\x7fELF` at offset 0 (vmlinux, or any ELF with
//! the PVH note) or `HdrS` at 0x202 (bzImage). Both are loaded by `linux_loader`: an ELF at its
//! program headers' physical addresses, a bzImage's protected-mode part at `HIGH_RAM_START`.
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::bzimage::{self, BzImage};
use linux_loader::loader::elf::{self, Elf, PvhBootCapability};
use linux_loader::loader::{Error as LoaderError, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use super::layout::{self, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START};
use super::{mem_err, ArchError, BootEntry};
use crate::userfile::HoleSkipping;

/// Offset of the 64-bit entry point (`startup_64`) in a bzImage's protected-mode code.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// An arm64 `Image` header's magic ("ARM\x64" at byte 56): refused with a clear message.
const ARM64_MAGIC: [u8; 4] = *b"ARM\x64";
const ARM64_MAGIC_OFFSET: u64 = 56;
const PAGE_SIZE: u64 = 4096;
/// `initrd_addr_max` of boot protocols older than 2.03.
const OLD_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: BootEntry,
    /// First byte after everything the kernel occupies (for a bzImage: after the room it
    /// unpacks into). The initrd goes above.
    pub end: u64,
    /// A bzImage's setup header (the start of its zero page).
    pub setup_header: Option<setup_header>,
}

/// What a kernel image is, by its magic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
    /// An arm64 Linux `Image`: not for this architecture.
    Arm64Image,
    Unknown,
}

/// Reads the magic numbers of `image` (and leaves its position unspecified).
pub fn sniff<R: Read + Seek>(image: &mut R) -> std::io::Result<KernelFormat> {
    let mut magic = [0u8; 4];
    image.seek(SeekFrom::Start(0))?;
    if read_full(image, &mut magic)? && magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    image.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))?;
    if read_full(image, &mut magic)? && magic == BZIMAGE_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    image.seek(SeekFrom::Start(ARM64_MAGIC_OFFSET))?;
    if read_full(image, &mut magic)? && magic == ARM64_MAGIC {
        return Ok(KernelFormat::Arm64Image);
    }
    Ok(KernelFormat::Unknown)
}

/// `read_exact` that reports a short file as `false` instead of an error.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The bytes a bzImage must have by its setup header: the setup sectors (`setup_sects`, 0
/// meaning 4) plus the boot sector, then `syssize` 16-byte paragraphs of protected-mode code.
pub fn bzimage_expected_size(header: &[u8]) -> Option<u64> {
    let setup_sects = match *header.get(0x1f1)? {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u32::from_le_bytes(header.get(0x1f4..0x1f8)?.try_into().ok()?);
    Some((setup_sects + 1) * 512 + u64::from(syssize) * 16)
}

/// The bytes a 64-bit ELF must have: the end of its program headers and of every segment's
/// file contents (None when the header is not a 64-bit little-endian ELF's).
pub fn elf_expected_size<R: Read + Seek>(image: &mut R) -> std::io::Result<Option<u64>> {
    let mut eh = [0u8; 64];
    image.seek(SeekFrom::Start(0))?;
    if !read_full(image, &mut eh)? || eh[4] != 2 || eh[5] != 1 {
        return Ok(None);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64_at(&eh, 0x20);
    let (phentsize, phnum) = (u64::from(u16_at(&eh, 0x36)), u64::from(u16_at(&eh, 0x38)));
    if phentsize < 56 {
        return Ok(None);
    }
    let mut need = phoff.saturating_add(phentsize * phnum);
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        image.seek(SeekFrom::Start(phoff.saturating_add(i * phentsize)))?;
        if !read_full(image, &mut ph)? {
            break;
        }
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != 0 {
            need = need.max(u64_at(&ph, 8).saturating_add(u64_at(&ph, 0x20)));
        }
    }
    Ok(Some(need))
}

/// Checks the file holds as many bytes as its header says it does.
fn check_size(file: &mut File, format: KernelFormat) -> Result<(), ArchError> {
    let size = file.seek(SeekFrom::End(0)).map_err(ArchError::KernelRead)?;
    let (name, expected) = match format {
        KernelFormat::BzImage => {
            let mut hdr = [0u8; 0x200];
            file.seek(SeekFrom::Start(0))
                .map_err(ArchError::KernelRead)?;
            if !read_full(file, &mut hdr).map_err(ArchError::KernelRead)? {
                return Err(ArchError::KernelTruncated {
                    format: "bzImage",
                    size,
                    expected: 0x200,
                });
            }
            ("bzImage", bzimage_expected_size(&hdr))
        }
        KernelFormat::Elf => (
            "ELF",
            elf_expected_size(file).map_err(ArchError::KernelRead)?,
        ),
        KernelFormat::Unknown | KernelFormat::Arm64Image => return Ok(()),
    };
    match expected {
        Some(expected) if size < expected => Err(ArchError::KernelTruncated {
            format: name,
            size,
            expected,
        }),
        _ => Ok(()),
    }
}

/// Loads a bzImage or an ELF from `file`. `mem` must read as zero where the kernel goes (RAM
/// just mapped): an ELF's segments are read with [`HoleSkipping`], which does not write the
/// file's holes.
pub fn load_file(
    mem: &GuestMemoryMmap,
    file: &mut File,
    mem_size: u64,
) -> Result<LoadedKernel, ArchError> {
    let format = sniff(file).map_err(ArchError::KernelRead)?;
    check_size(file, format)?;
    match format {
        KernelFormat::Elf => {
            let mut src = HoleSkipping::new(file);
            let res = load_elf(mem, &mut src)?;
            if src.skipped > 0 {
                log::debug!("kernel: {} bytes of holes not read", src.skipped);
            }
            Ok(match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => LoadedKernel {
                    entry: BootEntry::Pvh { entry },
                    end: res.kernel_end,
                    setup_header: None,
                },
                _ => LoadedKernel {
                    entry: BootEntry::Linux64 {
                        entry: res.kernel_load,
                    },
                    end: res.kernel_end,
                    setup_header: None,
                },
            })
        }
        KernelFormat::BzImage => load_bzimage(mem, file, mem_size),
        KernelFormat::Arm64Image => Err(ArchError::WrongArch),
        KernelFormat::Unknown => Err(ArchError::UnknownKernelFormat),
    }
}

/// Loads an ELF held in memory; it must have the PVH note.
pub fn load_pvh_elf(mem: &GuestMemoryMmap, bytes: &[u8]) -> Result<LoadedKernel, ArchError> {
    let mut image = Cursor::new(bytes);
    if sniff(&mut image).map_err(ArchError::KernelRead)? != KernelFormat::Elf {
        return Err(ArchError::KernelLoad {
            format: "PVH ELF",
            reason: "it is not an ELF image".into(),
        });
    }
    let res = load_elf(mem, &mut image)?;
    match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry: BootEntry::Pvh { entry },
            end: res.kernel_end,
            setup_header: None,
        }),
        _ => Err(ArchError::NoPvhNote),
    }
}

fn load_elf<F>(mem: &GuestMemoryMmap, image: &mut F) -> Result<KernelLoaderResult, ArchError>
where
    F: Read + ReadVolatile + Seek,
{
    Elf::load(mem, None, image, Some(GuestAddress(HIGH_RAM_START))).map_err(|e| {
        ArchError::KernelLoad {
            format: "ELF",
            reason: loader_reason(&e),
        }
    })
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    mem_size: u64,
) -> Result<LoadedKernel, ArchError> {
    let res = BzImage::load(
        mem,
        Some(GuestAddress(HIGH_RAM_START)),
        file,
        Some(GuestAddress(HIGH_RAM_START)),
    )
    .map_err(|e| ArchError::KernelLoad {
        format: "bzImage",
        reason: loader_reason(&e),
    })?;
    // `BzImage::load` always returns the header it read.
    let hdr = res.setup_header.unwrap_or_default();
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(ArchError::NoLongModeEntry(version));
    }
    let load = res.kernel_load.raw_value();
    // The kernel unpacks itself at max(load address, pref_address) and needs init_size bytes
    // there (it may move further up with KASLR, avoiding the initrd).
    let pref = hdr.pref_address;
    let unpack_end = load.max(pref) + u64::from(hdr.init_size);
    let end = res.kernel_end.max(unpack_end);
    let ram_end = low_ram_end(mem_size);
    if end > ram_end {
        return Err(ArchError::KernelTooLarge {
            needed: end,
            ram_end,
        });
    }
    Ok(LoadedKernel {
        entry: BootEntry::Linux64 {
            entry: GuestAddress(load + BZIMAGE_64BIT_ENTRY_OFFSET),
        },
        end,
        setup_header: Some(hdr),
    })
}

/// `linux_loader`'s error with a hint where its own words are vague.
fn loader_reason(e: &LoaderError) -> String {
    let hint = match e {
        LoaderError::Elf(elf::Error::ReadKernelImage) => {
            "; the image is truncated or does not fit in guest RAM"
        }
        LoaderError::Elf(elf::Error::ReadProgramHeader | elf::Error::ReadElfHeader) => {
            "; the image is truncated"
        }
        LoaderError::Elf(elf::Error::InvalidEntryAddress) => {
            "; the entry point must be at or above 1 MiB"
        }
        LoaderError::Bzimage(bzimage::Error::ReadBzImageCompressedKernel) => {
            "; the image is truncated or does not fit in guest RAM"
        }
        _ => "",
    };
    let text = e.to_string();
    let text = text.trim_start_matches("Kernel Loader: ");
    format!("{text}{hint}")
}

/// First byte after the RAM below the 32-bit MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(layout::MMIO_HOLE_START)
}

/// Checks the command line; returns its size in guest memory, NUL included.
pub fn check_cmdline(cmdline: &str) -> Result<usize, ArchError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(ArchError::CmdlineNul);
    }
    let len = cmdline.len() + 1;
    if len > CMDLINE_MAX_SIZE {
        return Err(ArchError::CmdlineTooLong {
            len,
            max: CMDLINE_MAX_SIZE,
        });
    }
    Ok(len)
}

/// Writes the NUL-terminated command line at `CMDLINE_START`.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), ArchError> {
    check_cmdline(cmdline)?;
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(mem_err("the kernel command line"))
}

/// Checks that a real-mode image fits in guest RAM at `load_addr`.
pub fn check_real_mode(
    mem: &GuestMemoryMmap,
    image: &[u8],
    load_addr: u64,
) -> Result<(), ArchError> {
    let too_large = ArchError::ImageTooLarge {
        size: image.len(),
        addr: load_addr,
    };
    if image.is_empty() {
        return if mem.address_in_range(GuestAddress(load_addr)) {
            Ok(())
        } else {
            Err(too_large)
        };
    }
    if mem.check_range(GuestAddress(load_addr), image.len()) {
        Ok(())
    } else {
        Err(too_large)
    }
}

/// Copies a real-mode image to `load_addr`.
pub fn load_real_mode(
    mem: &GuestMemoryMmap,
    image: &[u8],
    load_addr: u64,
) -> Result<(), ArchError> {
    check_real_mode(mem, image, load_addr)?;
    mem.write_slice(image, GuestAddress(load_addr))
        .map_err(mem_err("the real-mode image"))
}

/// Highest address (exclusive) the initrd may reach: the end of RAM below the MMIO hole, and
/// for a bzImage also `initrd_addr_max` from its setup header.
pub fn initrd_top(mem_size: u64, hdr: Option<&setup_header>) -> u64 {
    let top = low_ram_end(mem_size);
    match hdr {
        Some(hdr) => {
            let max = if hdr.version >= 0x0203 {
                hdr.initrd_addr_max
            } else {
                OLD_INITRD_ADDR_MAX
            };
            top.min(u64::from(max) + 1)
        }
        None => top,
    }
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible below `top`, and
/// not below `kernel_end`.
pub fn initrd_placement(size: u64, kernel_end: u64, top: u64) -> Result<u64, ArchError> {
    let lowest = kernel_end.next_multiple_of(PAGE_SIZE);
    let room = top.saturating_sub(lowest);
    let too_large = ArchError::InitrdTooLarge { size, room, top };
    let addr = top.checked_sub(size).ok_or(too_large)? & !(PAGE_SIZE - 1);
    if addr < lowest {
        return Err(ArchError::InitrdTooLarge { size, room, top });
    }
    Ok(addr)
}

/// Copies the initrd into guest memory; returns its address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    kernel_end: u64,
    top: u64,
) -> Result<(u64, u64), ArchError> {
    let size = file.seek(SeekFrom::End(0)).map_err(ArchError::InitrdRead)?;
    file.seek(SeekFrom::Start(0))
        .map_err(ArchError::InitrdRead)?;
    let addr = initrd_placement(size, kernel_end, top)?;
    let len = usize::try_from(size).map_err(|_| ArchError::InitrdTooLarge {
        size,
        room: top.saturating_sub(kernel_end),
        top,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(io) => ArchError::InitrdRead(io),
            err => ArchError::GuestMemory {
                what: "the initrd",
                err,
            },
        })?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_elf_bzimage_and_garbage() {
        assert_eq!(
            sniff(&mut Cursor::new(b"\x7fELF\x02\x01")).unwrap(),
            KernelFormat::Elf
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(sniff(&mut Cursor::new(&bz)).unwrap(), KernelFormat::BzImage);
        assert_eq!(
            sniff(&mut Cursor::new(vec![0x55u8; 4096])).unwrap(),
            KernelFormat::Unknown
        );
        assert_eq!(sniff(&mut Cursor::new(b"")).unwrap(), KernelFormat::Unknown);
    }

    #[test]
    fn header_sizes() {
        let mut bz = vec![0u8; 0x200];
        bz[0x1f1] = 27;
        bz[0x1f4..0x1f8].copy_from_slice(&0x1000u32.to_le_bytes());
        assert_eq!(bzimage_expected_size(&bz), Some(28 * 512 + 0x10000));
        bz[0x1f1] = 0;
        assert_eq!(bzimage_expected_size(&bz), Some(5 * 512 + 0x10000));
        assert_eq!(bzimage_expected_size(&bz[..0x1f2]), None);
        // The built-in guest is a complete ELF: it needs exactly what it has, or less.
        let img = crate::guest::GUEST_ELF;
        let need = elf_expected_size(&mut Cursor::new(img)).unwrap().unwrap();
        assert!(need <= img.len() as u64 && need > 4096, "{need}");
        let cut = &img[..need as usize - 1];
        assert_eq!(
            elf_expected_size(&mut Cursor::new(cut)).unwrap(),
            Some(need)
        );
        assert_eq!(
            elf_expected_size(&mut Cursor::new(b"\x7fELF")).unwrap(),
            None
        );
    }

    #[test]
    fn cmdline_limit_counts_the_nul() {
        assert_eq!(check_cmdline("").unwrap(), 1);
        assert_eq!(
            check_cmdline(&"x".repeat(CMDLINE_MAX_SIZE - 1)).unwrap(),
            CMDLINE_MAX_SIZE
        );
        let err = check_cmdline(&"x".repeat(CMDLINE_MAX_SIZE)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel command line is 2049 bytes with its NUL; the limit is 2048"
        );
        assert!(matches!(check_cmdline("a\0b"), Err(ArchError::CmdlineNul)));
    }

    #[test]
    fn initrd_goes_as_high_as_allowed() {
        // Page-aligned below the top.
        assert_eq!(
            initrd_placement(0x1800, 0x20_0000, 0x1000_0000).unwrap(),
            0x0fff_e000
        );
        // Exactly filling the room above the kernel.
        assert_eq!(initrd_placement(0x1000, 0x1000, 0x2000).unwrap(), 0x1000);
        let err = initrd_placement(0x2000, 0x1001, 0x3000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "initrd (8192 bytes) does not fit in guest RAM (4096 bytes free between the kernel and 0x3000)"
        );
        assert!(initrd_placement(u64::MAX, 0, 0x3000).is_err());
    }

    #[test]
    fn initrd_top_respects_the_hole_and_initrd_addr_max() {
        assert_eq!(initrd_top(256 << 20, None), 256 << 20);
        assert_eq!(initrd_top(8 << 30, None), layout::MMIO_HOLE_START);
        let hdr = setup_header {
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_top(8 << 30, Some(&hdr)), 0x8000_0000);
        assert_eq!(initrd_top(256 << 20, Some(&hdr)), 256 << 20);
        let old = setup_header {
            version: 0x0202,
            ..Default::default()
        };
        assert_eq!(initrd_top(2 << 30, Some(&old)), 0x3800_0000);
    }

    #[test]
    fn real_mode_image_must_fit() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        load_real_mode(&mem, &[0xf4], 0x7c00).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x7c00)).unwrap(), 0xf4);
        load_real_mode(&mem, &[1, 2], (1 << 20) - 2).unwrap();
        let err = load_real_mode(&mem, &[1, 2], (1 << 20) - 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "real-mode image (2 bytes at 0xfffff) does not fit in guest RAM"
        );
        assert!(load_real_mode(&mem, &[1], u64::MAX).is_err());
    }
}
