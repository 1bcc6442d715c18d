//! The built-in guest: a small no_std kernel (`guest/`, see `docs/builtin-guest.md`), built
//! from source by `build.rs` for the architecture trapvisor is built for and embedded here. On
//! x86_64 it is a PVH ELF; on aarch64 an arm64 `Image` that finds the machine in its FDT. It
//! reads commands from its command line and reports through the console and the test device
//! (and on x86 the debug-exit port).
use std::path::Path;

/// The guest in its architecture's boot format: the PVH ELF (load address 1 MiB, PVH entry
/// note) on x86_64, the arm64 Image (64-byte header, `text_offset` 0) on aarch64.
pub static GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trapvisor-guest.img"));

/// [`GUEST_IMAGE`] by its x86_64 name (there, the ELF).
pub static GUEST_ELF: &[u8] = GUEST_IMAGE;

/// Writes the guest's image to `path` (`trapvisor guest-image PATH`), e.g. to boot it under
/// QEMU with `-kernel`.
pub fn write_image(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, GUEST_IMAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[cfg(target_arch = "x86_64")]
    mod x86_64 {
        use super::*;

        fn u16_at(b: &[u8], at: usize) -> u16 {
            u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
        }

        const PT_LOAD: u32 = 1;
        const PT_NOTE: u32 = 4;
        const PF_X: u32 = 1;
        const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

        struct Phdr {
            kind: u32,
            flags: u32,
            offset: usize,
            paddr: u64,
            filesz: usize,
            memsz: u64,
            align: u64,
        }

        fn phdrs(elf: &[u8]) -> Vec<Phdr> {
            let (phoff, phentsize, phnum) = (
                u64_at(elf, 0x20) as usize,
                u16_at(elf, 0x36) as usize,
                u16_at(elf, 0x38) as usize,
            );
            assert_eq!(phentsize, 56);
            (0..phnum)
                .map(|i| {
                    let p = &elf[phoff + i * phentsize..][..phentsize];
                    Phdr {
                        kind: u32_at(p, 0),
                        flags: u32_at(p, 4),
                        offset: u64_at(p, 8) as usize,
                        paddr: u64_at(p, 0x18),
                        filesz: u64_at(p, 0x20) as usize,
                        memsz: u64_at(p, 0x28),
                        align: u64_at(p, 0x30),
                    }
                })
                .collect()
        }

        /// The PVH entry from the PT_NOTE segments (notes padded to the segment's alignment, as
        /// loaders read them).
        fn pvh_entry(elf: &[u8], phdrs: &[Phdr]) -> Option<u32> {
            for ph in phdrs.iter().filter(|p| p.kind == PT_NOTE) {
                let align = ph.align.max(4) as usize;
                let notes = &elf[ph.offset..ph.offset + ph.filesz];
                let mut at = 0;
                while at + 12 <= notes.len() {
                    let (namesz, descsz, kind) = (
                        u32_at(notes, at) as usize,
                        u32_at(notes, at + 4) as usize,
                        u32_at(notes, at + 8),
                    );
                    let name = &notes[at + 12..at + 12 + namesz];
                    let desc_at = at + 12 + namesz.next_multiple_of(align);
                    if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                        assert!(descsz >= 4, "PVH note descriptor of {descsz} bytes");
                        return Some(u32_at(notes, desc_at));
                    }
                    at = desc_at + descsz.next_multiple_of(align);
                }
            }
            None
        }

        #[test]
        fn guest_is_an_x86_64_elf_with_a_pvh_entry_in_loaded_code() {
            let elf = GUEST_ELF;
            assert_eq!(&elf[..4], b"\x7fELF");
            assert_eq!(elf[4], 2, "ELFCLASS64");
            assert_eq!(elf[5], 1, "little endian");
            assert_eq!(u16_at(elf, 0x10), 2, "ET_EXEC (not PIE)");
            assert_eq!(u16_at(elf, 0x12), 62, "EM_X86_64");

            let phdrs = phdrs(elf);
            let loads: Vec<&Phdr> = phdrs.iter().filter(|p| p.kind == PT_LOAD).collect();
            assert!(!loads.is_empty());
            assert_eq!(
                loads.iter().map(|p| p.paddr).min(),
                Some(0x10_0000),
                "loads at 1 MiB"
            );
            for p in &loads {
                assert!(p.offset + p.filesz <= elf.len() && p.filesz as u64 <= p.memsz);
                assert!(p.paddr + p.memsz < 0xc000_0000, "below the MMIO hole");
            }

            let entry =
                u64::from(pvh_entry(elf, &phdrs).expect("no XEN_ELFNOTE_PHYS32_ENTRY note"));
            assert!(
                loads.iter().any(|p| p.flags & PF_X != 0
                    && (p.paddr..p.paddr + p.filesz as u64).contains(&entry)),
                "PVH entry {entry:#x} is not in an executable loaded segment"
            );
            assert_eq!(u64_at(elf, 0x18), entry, "e_entry is the PVH entry too");
        }
    }

    /// booting.rst §4: the header's magic, `text_offset` 0, an `image_size` covering the file,
    /// little-endian with 4 KiB pages, and a branch to the entry as the first instruction.
    #[test]
    #[cfg(target_arch = "aarch64")]
    fn guest_is_an_arm64_image() {
        let img = GUEST_IMAGE;
        assert!(img.len() > 64);
        assert_eq!(&img[56..60], b"ARM\x64", "Image magic");
        assert_eq!(u64_at(img, 8), 0, "text_offset");
        let size = u64_at(img, 16);
        assert!(
            size >= img.len() as u64 && size <= 64 << 20,
            "image_size {size:#x}"
        );
        assert_eq!(u64_at(img, 24) & 0b111, 0b010, "little-endian, 4 KiB pages");
        assert_eq!(
            u32_at(img, 0) >> 26,
            0b000101,
            "first instruction is a branch (b)"
        );
    }

    #[test]
    fn write_image_writes_the_elf() {
        let dir =
            std::env::temp_dir().join(format!("trapvisor-guest-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest.elf");
        write_image(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), GUEST_IMAGE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
