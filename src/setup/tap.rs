//! Opening the tap: `/dev/net/tun` and TUNSETIFF, nothing else.
//!
//! Runs in the child, inside the target network namespace. Attaching to a
//! tap that already exists (rootlesskit creates tap0 itself) is the same
//! call as creating one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use thiserror::Error;

const TUN_PATH: &str = "/dev/net/tun";

#[derive(Debug, Error)]
pub enum TapError {
    #[error("cannot open {TUN_PATH}: {0}")]
    Open(io::Error),
    #[error("tap name {0:?} is empty, too long (15 bytes at most) or holds a NUL")]
    Name(String),
    #[error("cannot create or attach tap {name:?} (ioctl TUNSETIFF): {err}")]
    SetIff { name: String, err: io::Error },
}

/// A zeroed `ifreq` naming `name`.
pub(super) fn ifreq_for(name: &str) -> Option<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    // SAFETY: ifreq is plain old data (arrays, integers and a union of
    // them); all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Some(ifr)
}

/// Create the tap `name`, or attach to it if it exists, in the current
/// network namespace. The returned file is blocking; the caller decides.
pub fn open_tap(name: &str) -> Result<File, TapError> {
    let mut ifr = ifreq_for(name).ok_or_else(|| TapError::Name(name.to_string()))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(TapError::Open)?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the fd is an open /dev/net/tun; TUNSETIFF reads and writes an
    // ifreq, and `ifr` is a valid, exclusively borrowed one.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(TapError::SetIff {
            name: name.to_string(),
            err: io::Error::last_os_error(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_checked_before_any_syscall() {
        assert!(ifreq_for("").is_none());
        assert!(ifreq_for("0123456789abcdef").is_none());
        assert!(ifreq_for("a\0b").is_none());
        let ifr = ifreq_for("tap0").unwrap();
        assert_eq!(
            ifr.ifr_name[..5],
            [b't' as _, b'a' as _, b'p' as _, b'0' as _, 0]
        );
        assert!(matches!(open_tap(""), Err(TapError::Name(_))));
    }
}
