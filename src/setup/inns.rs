//! What the namespace-joining child makes inside the namespace besides
//! the tap, for the loop to keep: pasta's `-T`/`-U` listening sockets
//! (bound there, they serve the namespace's loopback) and `/proc/net`
//! files (opened there, they list the namespace's sockets, which `-t
//! auto` follows). An fd keeps the namespace it was made in, so the
//! loop, back in the caller's namespace and under seccomp (no `setns`),
//! uses them as they are.
//!
//! Nothing here runs in the loop's process: only in the child.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen, setsockopt,
    socket, sockopt,
};

/// One thing to make inside the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsRequest {
    /// A socket on the namespace's loopback at `port`, as pasta binds
    /// for `-T`/`-U`: every address of both families, bound to `lo`
    /// (IPv4 only where the namespace has no IPv6). TCP ones listen.
    Listen { udp: bool, port: u16 },
    /// A file opened read-only inside the namespace (`/proc/net/tcp`...);
    /// /dev/null, which reads as empty, where there is no such file (a
    /// namespace without IPv6 has no `/proc/net/tcp6`).
    Open(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum NsRequestError {
    #[error("Failed to bind port {port} ({proto}) in the namespace: {err}")]
    Bind {
        port: u16,
        proto: &'static str,
        err: nix::Error,
    },
    #[error("cannot open {path} in the namespace: {err}")]
    Open { path: PathBuf, err: std::io::Error },
}

/// The loopback interface, which `-T`/`-U` sockets are bound to.
const LOOPBACK_IF: &str = "lo";
/// What a missing file reads as.
const DEV_NULL: &str = "/dev/null";
/// pasta's listen backlog.
const BACKLOG: i32 = 128;

/// Make what `request` asks for, in the calling process's namespace.
pub fn make(request: &NsRequest) -> Result<OwnedFd, NsRequestError> {
    match request {
        NsRequest::Listen { udp, port } => {
            let bind_err = |err| NsRequestError::Bind {
                port: *port,
                proto: if *udp { "UDP" } else { "TCP" },
                err,
            };
            match loopback_socket(AddressFamily::Inet6, *udp, *port) {
                Err(nix::Error::EAFNOSUPPORT) => {
                    loopback_socket(AddressFamily::Inet, *udp, *port).map_err(bind_err)
                }
                other => other.map_err(bind_err),
            }
        }
        NsRequest::Open(path) => std::fs::File::open(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => std::fs::File::open(DEV_NULL),
                _ => Err(e),
            })
            .map(OwnedFd::from)
            .map_err(|err| NsRequestError::Open {
                path: path.clone(),
                err,
            }),
    }
}

fn loopback_socket(family: AddressFamily, udp: bool, port: u16) -> nix::Result<OwnedFd> {
    let kind = if udp {
        SockType::Datagram
    } else {
        SockType::Stream
    };
    let fd = socket(
        family,
        kind,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::BindToDevice, &LOOPBACK_IF.into())?;
    if family == AddressFamily::Inet6 {
        setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
        let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0);
        bind(fd.as_raw_fd(), &SockaddrIn6::from(any))?;
    } else {
        let any = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port);
        bind(fd.as_raw_fd(), &SockaddrIn::from(any))?;
    }
    if !udp {
        listen(&fd, Backlog::new(BACKLOG)?)?;
    }
    Ok(fd)
}
