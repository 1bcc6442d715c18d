//! The two host syscalls trapvisor calls that libc declares weakly: `getrandom(2)` and
//! `gettid(2)`, made with `syscall(2)` instead of through their libc wrappers.
//!
//! In the static aarch64 musl build (`--release`, LTO, rust-lld), std's weak declarations of
//! `getrandom` and `gettid` win over the libc crate's: nothing pulls musl's definitions out of
//! libc.a, both stay undefined weak symbols (address 0), and lld turns each call into a branch to
//! the next instruction. `getrandom` then "returned" its buffer's address as the byte count and
//! wrote nothing — virtio-rng handed the guest zeros and the FDT got no `rng-seed` — and
//! `gettid` returned garbage. `.ci/run` checks the release binary has no such symbol left.
use std::io;

/// `getrandom(2)` into `buf` with `flags` (`libc::GRND_*`): the bytes written.
pub fn getrandom(buf: &mut [u8], flags: u32) -> io::Result<usize> {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`, which is ours.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getrandom,
            buf.as_mut_ptr(),
            buf.len(),
            libc::c_uint::from(flags),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The calling thread's id (`gettid(2)`).
pub fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrandom_fills_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        assert_eq!(getrandom(&mut a, 0).unwrap(), 64);
        assert_eq!(getrandom(&mut b, 0).unwrap(), 64);
        // 64 zero bytes, or two equal draws, would be astonishing.
        assert!(a.iter().any(|&x| x != 0));
        assert_ne!(a, b);
        assert_eq!(getrandom(&mut [], 0).unwrap(), 0);
    }

    #[test]
    fn gettid_is_this_threads_id() {
        let own = || {
            let link = std::fs::read_link("/proc/thread-self").unwrap();
            let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(gettid(), tid);
            tid
        };
        let main = own();
        let other = std::thread::spawn(own).join().unwrap();
        assert_ne!(main, other);
    }
}
