//! The files a user names on the command line (kernel, initrd, disk images), opened and checked
//! the same way before any VM exists: the path exists, is a regular file or a block device (not
//! a directory, a FIFO, a socket or a character device) and is not empty; its size comes from
//! the file (`st_size`) or the block device (`BLKGETSIZE64`). Each failure is one line naming
//! the role and the path. What a file's contents claim about its size (a bzImage's setup
//! header, an ELF's program headers) is checked by the loader of that format.
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

/// What a file is for, as messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Kernel,
    Initrd,
    Disk,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Kernel => "kernel",
            Role::Initrd => "initrd",
            Role::Disk => "disk image",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {role} {path}: {err}")]
    Open {
        role: Role,
        path: PathBuf,
        err: io::Error,
    },
    #[error("{role} {path} is a directory, not a file")]
    Directory { role: Role, path: PathBuf },
    #[error("{role} {path} is not a regular file or a block device")]
    NotAFile { role: Role, path: PathBuf },
    #[error("{role} {path} is empty")]
    Empty { role: Role, path: PathBuf },
    #[error("cannot read the size of {role} {path}: {err}")]
    Size {
        role: Role,
        path: PathBuf,
        err: io::Error,
    },
}

/// An opened, checked file.
#[derive(Debug)]
pub struct UserFile {
    pub file: File,
    pub path: PathBuf,
    /// Bytes (a block device's capacity).
    pub size: u64,
    pub block_device: bool,
}

/// How to open it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub write: bool,
    /// O_DIRECT: no host page cache.
    pub direct: bool,
}

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`, which lives across the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Opens `path` for `role` read-only and checks it (see the module comment).
pub fn open(path: &Path, role: Role) -> Result<UserFile, FileError> {
    open_with(path, role, OpenMode::default())
}

/// As [`open`], with the mode a disk needs.
pub fn open_with(path: &Path, role: Role, mode: OpenMode) -> Result<UserFile, FileError> {
    let p = || path.to_path_buf();
    // The type first: opening a FIFO would block, and a directory opens fine read-only.
    let meta = std::fs::metadata(path).map_err(|err| FileError::Open {
        role,
        path: p(),
        err,
    })?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(FileError::Directory { role, path: p() });
    }
    let block_device = ft.is_block_device();
    if !ft.is_file() && !block_device {
        return Err(FileError::NotAFile { role, path: p() });
    }
    let mut flags = libc::O_CLOEXEC;
    if mode.direct {
        flags |= libc::O_DIRECT;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(mode.write)
        .custom_flags(flags)
        .open(path)
        .map_err(|err| FileError::Open {
            role,
            path: p(),
            err,
        })?;
    let size = if block_device {
        block_device_size(&file).map_err(|err| FileError::Size {
            role,
            path: p(),
            err,
        })?
    } else {
        // Of the file opened (the path may have been replaced since `metadata`).
        file.metadata()
            .map_err(|err| FileError::Size {
                role,
                path: p(),
                err,
            })?
            .len()
    };
    if size == 0 {
        return Err(FileError::Empty { role, path: p() });
    }
    Ok(UserFile {
        file,
        path: p(),
        size,
        block_device,
    })
}

/// A file read into guest RAM that reads as zero wherever it goes (RAM just mapped, nothing
/// written there yet): the file's holes (`SEEK_DATA`/`SEEK_HOLE`) are passed over, not read
/// and not written. A sparse kernel file — Debian's 6.1 `vmlinux` is 64 MB with 31 MB of
/// holes, most of them its `.bss`, `.brk` and init scratch stored as zeros — then costs the
/// copy of its data only, and the guest pages under a hole are not touched until the guest
/// touches them. Where the file system cannot say where data lies, everything is read.
///
/// `Read` and `Seek` go to the file as they are (headers); only `ReadVolatile` (the copy into
/// guest memory) skips holes.
pub struct HoleSkipping<'a> {
    file: &'a mut File,
    /// Bytes passed over so far.
    pub skipped: u64,
}

/// Where the run of data or hole that holds a file offset ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    Data { end: u64 },
    Hole { end: u64 },
}

/// The extent at `pos` of `file` (whose offset this moves), or `None` when the file system
/// does not answer `SEEK_DATA`.
fn extent_at(file: &File, pos: u64) -> Option<Extent> {
    let fd = file.as_raw_fd();
    let at = libc::off_t::try_from(pos).ok()?;
    // SAFETY: lseek only moves the offset of an fd we hold open; no memory is passed.
    let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
    if data < 0 {
        // ENXIO: no data at or after `pos`: a hole to the end, or past the end. The size is
        // the file's now, so a file cut short while it is read ends the read short (an error
        // for the loader), not in zeros.
        if io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
            return None;
        }
        let size = file.metadata().ok()?.len();
        return Some(Extent::Hole { end: size.max(pos) });
    }
    if data as u64 > pos {
        return Some(Extent::Hole { end: data as u64 });
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
    (hole >= 0).then_some(Extent::Data { end: hole as u64 })
}

impl<'a> HoleSkipping<'a> {
    pub fn new(file: &'a mut File) -> Self {
        HoleSkipping { file, skipped: 0 }
    }
}

impl Read for HoleSkipping<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for HoleSkipping<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for HoleSkipping<'_> {
    /// Fills `buf` as far as the file goes (guest memory's `read_exact_volatile_from` takes one
    /// call per region as all it gets), extent by extent.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let io_err = VolatileMemoryError::IOError;
        let mut pos = self.file.stream_position().map_err(io_err)?;
        let mut done = 0usize;
        while done < buf.len() {
            let want = (buf.len() - done) as u64;
            let n = match extent_at(self.file, pos) {
                Some(Extent::Hole { end }) => {
                    let n = (end - pos).min(want);
                    self.skipped += n;
                    n as usize
                }
                Some(Extent::Data { end }) => {
                    self.file.seek(SeekFrom::Start(pos)).map_err(io_err)?;
                    let n = (end - pos).min(want) as usize;
                    self.file.read_volatile(&mut buf.subslice(done, n)?)?
                }
                None => {
                    self.file.seek(SeekFrom::Start(pos)).map_err(io_err)?;
                    self.file.read_volatile(&mut buf.offset(done)?)?
                }
            };
            if n == 0 {
                break;
            }
            done += n;
            pos += n as u64;
        }
        self.file.seek(SeekFrom::Start(pos)).map_err(io_err)?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tv-userfile-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_regular_file_opens_with_its_size() {
        let d = scratch("ok");
        let f = d.join("k");
        std::fs::write(&f, [1u8; 1000]).unwrap();
        let u = open(&f, Role::Kernel).unwrap();
        assert_eq!((u.size, u.block_device), (1000, false));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn directories_missing_empty_and_special_files_are_refused() {
        let d = scratch("bad");
        let err = open(&d, Role::Initrd).unwrap_err();
        assert!(matches!(err, FileError::Directory { .. }));
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = open(&d.join("none"), Role::Disk).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot open disk image"),
            "{err}"
        );
        let empty = d.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            open(&empty, Role::Kernel),
            Err(FileError::Empty { .. })
        ));
        let err = open(Path::new("/dev/null"), Role::Disk).unwrap_err();
        assert!(matches!(err, FileError::NotAFile { .. }), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }

    /// A file with data at 0 and at 1 MiB + 5, 3 MiB long: read into fresh guest RAM through
    /// `HoleSkipping`, it lands byte for byte as a plain read puts it, and where the file
    /// system keeps holes they are passed over.
    #[test]
    fn holes_are_passed_over_and_the_data_lands_where_a_read_puts_it() {
        use std::io::Write;
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
        let d = scratch("sparse");
        let path = d.join("k");
        let mut f = File::create(&path).unwrap();
        f.write_all(&[0xabu8; 4096]).unwrap();
        f.seek(SeekFrom::Start((1 << 20) + 5)).unwrap();
        f.write_all(b"data in the middle").unwrap();
        f.set_len(3 << 20).unwrap();
        drop(f);
        let mut f = File::open(&path).unwrap();
        let mut want = vec![0u8; 3 << 20];
        f.read_exact(&mut want).unwrap();
        let size = want.len() as u64;
        let holes_kept = extent_at(&f, 8192) == Some(Extent::Hole { end: 1 << 20 });

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut src = HoleSkipping::new(&mut f);
        mem.read_exact_volatile_from(GuestAddress(0x1000), &mut src, want.len())
            .unwrap();
        let skipped = src.skipped;
        let mut got = vec![0u8; want.len()];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert!(got == want, "contents differ");
        assert_eq!(
            f.stream_position().unwrap(),
            size,
            "the offset is past what was read"
        );
        if holes_kept {
            // Everything but the first block and the block(s) holding the middle's bytes.
            assert!(skipped >= size - 3 * 4096, "skipped {skipped}");
        } else {
            eprintln!("this file system keeps no holes: nothing skipped ({skipped})");
        }
        // A read that starts inside a hole, and one past the end.
        f.seek(SeekFrom::Start(4096 * 3)).unwrap();
        let mut src = HoleSkipping::new(&mut f);
        mem.read_exact_volatile_from(GuestAddress(0x1000), &mut src, 4096)
            .unwrap();
        f.seek(SeekFrom::Start(size)).unwrap();
        let mut src = HoleSkipping::new(&mut f);
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0x1000), &mut src, 1)
            .is_err());
        std::fs::remove_dir_all(d).unwrap();
    }
}
