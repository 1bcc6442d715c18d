//! The API's unix socket, created owner-only whatever the process's umask.
//!
//! `bind(2)` gives a unix socket's file the mode of the socket's own inode less the umask; a
//! fresh socket's inode is 0777, so under `umask 000` anyone on the machine could connect and
//! pause, stop or read the VM. The mode is set on the socket (`fchmod`) *before* `bind`, so the
//! file is 0600 from the moment it exists: no window in which another user could connect.
//! `--api-socket-group` widens it to 0660 and that group afterwards (the file is chowned first,
//! then opened to the group).
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Who may connect to the API socket besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketAccess {
    /// The owner only (mode 0600): the default.
    #[default]
    Owner,
    /// The owner and this group (mode 0660, group set to the gid).
    Group(libc::gid_t),
}

impl SocketAccess {
    /// The file mode the socket ends up with.
    pub fn mode(self) -> u32 {
        match self {
            SocketAccess::Owner => 0o600,
            SocketAccess::Group(_) => 0o660,
        }
    }
}

/// Resolves `--api-socket-group`: a group name or a numeric gid.
pub fn parse_group(s: &str) -> Result<libc::gid_t, String> {
    if let Ok(gid) = s.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name = CString::new(s).map_err(|_| format!("'{s}' is not a group name"))?;
    // SAFETY: a zeroed `group` is a valid out-parameter; `buf` outlives the call and `result`
    // points either to null or to `grp`, whose strings live in `buf`. Only `gr_gid` is read.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: see above; the lengths passed are those of the buffers.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(format!(
            "no group '{s}' (give a group name or a numeric gid)"
        ));
    }
    Ok(grp.gr_gid)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Creates, binds and listens on a unix socket at `path` whose file has `access`'s mode from
/// the start, whatever the umask.
pub fn bind(path: &Path, access: SocketAccess) -> io::Result<UnixListener> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a unix socket path must be 1 to {} bytes without NUL",
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The socket inode's mode becomes the file's mode at bind (less the umask): owner-only
    // first, whatever `access` asks; a group is let in only once the file is its group's.
    // SAFETY: fchmod on a descriptor we own.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) })?;
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers its family and the NUL-terminated
    // path within it.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            len as libc::socklen_t,
        )
    })?;
    let listener = UnixListener::from(fd);
    if let SocketAccess::Group(gid) = access {
        let widen = || -> io::Result<()> {
            std::os::unix::fs::lchown(path, None, Some(gid))?;
            std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(access.mode()),
            )
        };
        if let Err(e) = widen() {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    // SAFETY: listen(2) on the bound socket we own.
    if let Err(e) = cvt(unsafe { libc::listen(listener.as_raw_fd(), 128) }) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn path(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "trapvisor-socktest-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn owner_only_and_group_modes() {
        let p = path("owner");
        let l = bind(&p, SocketAccess::Owner).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // It accepts connections.
        let _c = std::os::unix::net::UnixStream::connect(&p).unwrap();
        assert!(l.accept().is_ok());
        drop(l);
        std::fs::remove_file(&p).unwrap();

        // SAFETY: getegid has no arguments.
        let gid = unsafe { libc::getegid() };
        let p = path("group");
        let _l = bind(&p, SocketAccess::Group(gid)).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn bad_paths_and_groups_are_refused() {
        assert!(bind(Path::new(""), SocketAccess::Owner).is_err());
        let long = format!("/tmp/{}", "x".repeat(200));
        assert!(bind(Path::new(&long), SocketAccess::Owner).is_err());
        assert_eq!(parse_group("0"), Ok(0));
        assert!(parse_group("root").is_ok());
        assert!(parse_group("no-such-group-here").is_err());
        assert!(parse_group("a\0b").is_err());
    }
}
