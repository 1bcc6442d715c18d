//! The files a user names on the command line (kernel, initrd, disk images), opened and checked
//! the same way before any VM exists: the path exists, is a regular file or a block device (not
//! a directory, a FIFO, a socket or a character device) and is not empty; its size comes from
//! the file (`st_size`) or the block device (`BLKGETSIZE64`). Each failure is one line naming
//! the role and the path. What a file's contents claim about its size (a bzImage's setup
//! header, an ELF's program headers) is checked by the loader of that format.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
}
