//! Opening the tap: `/dev/net/tun` and TUNSETIFF, then its offloads.
//!
//! `open_tap` runs in the child, inside the target network namespace.
//! Attaching to a tap that already exists (rootlesskit creates tap0
//! itself) is the same call as creating one. `offload_of` runs in
//! netferry itself on whichever fd it ended up with, its own or the
//! caller's (`--netns-type=tapfd`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use thiserror::Error;

const TUN_PATH: &str = "/dev/net/tun";

#[derive(Debug, Error)]
pub enum TapError {
    #[error("cannot open {TUN_PATH}: {0}{hint}", hint = open_hint(.0))]
    Open(io::Error),
    #[error("tap name {0:?} is empty, too long (15 bytes at most) or holds a NUL")]
    Name(String),
    #[error("cannot create or attach tap {name:?} (ioctl TUNSETIFF): {err}")]
    SetIff { name: String, err: io::Error },
    #[error("cannot shorten the tap's {len}-byte virtio-net header (ioctl TUNSETVNETHDRSZ): {err}")]
    HeaderLen { len: usize, err: io::Error },
}

/// What to do about a failed open of /dev/net/tun.
fn open_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied => {
            " (rootless use needs it mode 0666, as distributions ship it: chmod 0666 /dev/net/tun)"
        }
        io::ErrorKind::NotFound => " (is the tun module loaded? modprobe tun)",
        _ => "",
    }
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
/// network namespace, with a virtio-net header before each frame when
/// `vnet_header`. The returned file is blocking; the caller decides.
pub fn open_tap(name: &str, vnet_header: bool) -> Result<File, TapError> {
    let mut ifr = ifreq_for(name).ok_or_else(|| TapError::Name(name.to_string()))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(TapError::Open)?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_header {
        flags |= libc::IFF_VNET_HDR;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
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

/// How frames cross the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// Plain Ethernet frames.
    Off,
    /// Each frame behind a virtio-net header of `header_len` bytes (see
    /// `crate::vnet`). With `segment`, netferry writes TCP segments larger
    /// than the MTU for the kernel to split; with `guest_tso`, the guest's
    /// kernel sends such segments too; with `split_udp`, trains of UDP
    /// datagrams sent as one cross the tap both ways (Linux 6.2 and
    /// later), each cut by its receiver.
    Vnet {
        header_len: usize,
        segment: bool,
        guest_tso: bool,
        split_udp: bool,
    },
}

impl Offload {
    /// Whether netferry may write TCP segments larger than the MTU.
    pub fn segments(self) -> bool {
        matches!(self, Offload::Vnet { segment: true, .. })
    }

    /// Whether netferry may write UDP datagrams as one train to be cut.
    pub fn splits_udp(self) -> bool {
        matches!(
            self,
            Offload::Vnet {
                split_udp: true,
                ..
            }
        )
    }

    /// Bytes before each frame read from or written to the tap.
    pub fn header_len(self) -> usize {
        match self {
            Offload::Off => 0,
            Offload::Vnet { header_len, .. } => header_len,
        }
    }
}

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offload::Off => write!(f, "none"),
            Offload::Vnet {
                segment: false,
                header_len,
                ..
            } => write!(
                f,
                "none (the tap has a {header_len}-byte virtio-net header)"
            ),
            Offload::Vnet {
                guest_tso: true,
                split_udp,
                ..
            } => write!(
                f,
                "TCP segmentation and checksums, both ways{}",
                if *split_udp {
                    "; UDP segmentation, both ways"
                } else {
                    ""
                }
            ),
            Offload::Vnet { .. } => write!(
                f,
                "TCP segmentation toward the guest only (the tap refused TUNSETOFFLOAD)"
            ),
        }
    }
}

/// Find out how `tap` carries frames, and turn its offloads on when
/// `want`: TUNGETIFF says whether it has a virtio-net header (ours has
/// one unless `--disable-offload`; a caller's tap fd may or may not), and
/// TUNSETOFFLOAD lets the guest's kernel send 64 KiB TCP segments with
/// partial checksums. A tap that refuses gets plainer treatment; only a
/// virtio-net header longer than netferry writes, which it cannot
/// shorten, fails setup.
pub fn offload_of(tap: &File, want: bool) -> Result<Offload, TapError> {
    let fd = tap.as_raw_fd();
    // SAFETY: ifreq is plain old data; all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF fills the ifreq we pass, a valid, exclusive one.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut ifr) } < 0 {
        log::debug!("TUNGETIFF: {}", io::Error::last_os_error());
        return Ok(Offload::Off);
    }
    // SAFETY: TUNGETIFF stored the flags member of the union.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
    if flags & libc::IFF_VNET_HDR == 0 {
        return Ok(Offload::Off);
    }
    let mut header_len: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int to the pointer we pass.
    if unsafe { libc::ioctl(fd, libc::TUNGETVNETHDRSZ, &mut header_len) } < 0 {
        header_len = crate::vnet::HEADER_LEN as libc::c_int;
    }
    let mut header_len = (header_len.max(0) as usize).max(crate::vnet::HEADER_LEN);
    if header_len > crate::vnet::MAX_HEADER_LEN {
        // A caller's tap may have any header length the kernel takes (it
        // sets no upper bound); reads and writes must use the same one,
        // so make it ours.
        let ours = crate::vnet::HEADER_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer we pass.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &ours) } == 0 {
            header_len = crate::vnet::HEADER_LEN;
        } else {
            return Err(TapError::HeaderLen {
                len: header_len,
                err: io::Error::last_os_error(),
            });
        }
    }
    let features = if want {
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    } else {
        0
    };
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    let set_offload =
        |features| unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, features as libc::c_ulong) } == 0;
    // A kernel that knows UDP segmentation offload (6.2 and later) takes
    // the USO flags: it then cuts the UDP trains netferry writes, and the
    // guest's kernel sends a program's UDP_SEGMENT sends (QUIC stacks use
    // it) as trains, which netferry cuts.
    let split_udp = want && set_offload(features | libc::TUN_F_USO4 | libc::TUN_F_USO6);
    let guest_tso = split_udp || set_offload(features);
    if want && !guest_tso {
        log::debug!("TUNSETOFFLOAD: {}", io::Error::last_os_error());
    }
    Ok(Offload::Vnet {
        header_len,
        segment: want,
        guest_tso: want && guest_tso,
        split_udp,
    })
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
        assert!(matches!(open_tap("", true), Err(TapError::Name(_))));
    }
}
