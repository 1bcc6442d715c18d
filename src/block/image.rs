//! The disk image: a raw file or a block device, opened (read-only or read-write, with O_DIRECT
//! for `direct=on`) and checked like every file the user names (`userfile`), then locked with
//! `flock` (shared for a read-only disk, exclusive otherwise) so that two VMs cannot write one
//! image: the second is refused at start. Its capacity is its size in whole 512-byte sectors
//! (a tail shorter than a sector is not part of the disk).
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::config::DiskConfig;
use super::request::SECTOR_SIZE;
use crate::userfile::{self, FileError, OpenMode, Role};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("disk image {0} is in use by another VM or process (it is locked)")]
    Locked(PathBuf),
    #[error("cannot lock disk image {path}: {err}")]
    Lock { path: PathBuf, err: std::io::Error },
    #[error("disk image {path} is smaller than one sector ({size} bytes)")]
    TooSmall { path: PathBuf, size: u64 },
}

/// `BLKSSZGET`: the logical block size of a block device (an int).
const BLKSSZGET: libc::c_ulong = 0x1268;

/// `STATX_DIOALIGN`: ask statx for O_DIRECT's alignment (Linux 6.1).
const STATX_DIOALIGN: u32 = 0x2000;

/// What O_DIRECT needs of buffers and offsets on `file`: the block device's logical block
/// size, or what statx says of a file (at least a sector; a sector when it says nothing).
fn dio_align(file: &File, block_device: bool) -> usize {
    let fd = file.as_raw_fd();
    if block_device {
        let mut n: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int into `n`.
        let r = unsafe { libc::ioctl(fd, BLKSSZGET as _, &mut n) };
        if r == 0 && n > 0 {
            return n as usize;
        }
        return SECTOR_SIZE as usize;
    }
    // SAFETY: statx is plain data; zeroed is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx of an fd (empty path, AT_EMPTY_PATH) into a statx this function owns.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut st,
        )
    };
    if r != 0 || st.stx_mask & STATX_DIOALIGN == 0 {
        return SECTOR_SIZE as usize;
    }
    (st.stx_dio_mem_align.max(st.stx_dio_offset_align) as usize).max(SECTOR_SIZE as usize)
}

/// An open, locked image.
#[derive(Debug)]
pub struct Image {
    pub file: File,
    pub path: PathBuf,
    /// Sectors.
    pub capacity: u64,
    pub block_device: bool,
    /// O_DIRECT: buffers, lengths and offsets must be multiples of this.
    pub direct_align: Option<usize>,
    /// The file can have holes punched (DISCARD and WRITE_ZEROES are offered only then).
    pub holes: bool,
}

impl Image {
    pub fn open(cfg: &DiskConfig) -> Result<Image, ImageError> {
        let mode = OpenMode {
            write: !cfg.readonly,
            direct: cfg.direct,
        };
        let f = userfile::open_with(&cfg.path, Role::Disk, mode)?;
        let lock = if cfg.readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                ImageError::Locked(f.path)
            } else {
                ImageError::Lock { path: f.path, err }
            });
        }
        let capacity = f.size / SECTOR_SIZE;
        if capacity == 0 {
            return Err(ImageError::TooSmall {
                path: f.path,
                size: f.size,
            });
        }
        let direct_align = cfg.direct.then(|| dio_align(&f.file, f.block_device));
        let holes = !cfg.readonly && can_punch_holes(&f.file, f.size);
        Ok(Image {
            file: f.file,
            path: f.path,
            capacity,
            block_device: f.block_device,
            direct_align,
            holes,
        })
    }
}

/// Whether the file's file system punches holes: a hole punched past the end of the file (no
/// data there, the size kept) answers. Some have no fallocate at all (9p, many FUSE file
/// systems: EOPNOTSUPP); offering DISCARD and WRITE_ZEROES there would fail the guest's
/// requests with I/O errors (measured: an ext4 root on an image in a 9p directory, Linux's
/// WRITE_ZEROES at mount). Any other answer (success; EINVAL from a block device, whose end
/// is not past) counts as yes: the requests' own errors still reach the guest as IOERR.
pub fn can_punch_holes(file: &File, size: u64) -> bool {
    let at = size.div_ceil(4096) * 4096;
    let Ok(at) = libc::off_t::try_from(at) else {
        return false;
    };
    // SAFETY: fallocate on a descriptor we own; past the end with KEEP_SIZE it changes no
    // byte of the file and not its size.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at,
            4096,
        )
    };
    r == 0
        || !matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
        )
}
