//! Host-side sockets: what the guest's flows become on the host.
//!
//! Non-blocking TCP connects, connected UDP sockets and unprivileged ICMP
//! echo sockets, optionally bound to the `--outbound-addr` address, all
//! wrapped as mio sources. Nothing here knows about frames or the guest.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, connect, socket,
};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OutboundError {
    #[error("{flag}: {value} is neither an {family} address nor an interface that has one")]
    Unresolvable {
        flag: &'static str,
        value: String,
        family: &'static str,
    },
}

/// Source addresses for host sockets (`--outbound-addr`, `--outbound-addr6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outbound {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Outbound {
    /// The address to bind a socket toward `dst` to. Loopback destinations
    /// (the gateway's host loopback) keep a loopback source, which is what
    /// host services listening there expect.
    pub fn for_dst(&self, dst: IpAddr) -> Option<IpAddr> {
        if dst.is_loopback() {
            return None;
        }
        match dst {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

/// `--outbound-addr=IPv4|IFNAME`: the address itself, or the first IPv4
/// address of the named interface.
pub fn resolve_outbound_v4(value: &str) -> Result<Ipv4Addr, OutboundError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    interface_addr(value, |a| match a {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
    .ok_or_else(|| OutboundError::Unresolvable {
        flag: "--outbound-addr",
        value: value.to_string(),
        family: "IPv4",
    })
}

/// `--outbound-addr6=IPv6|IFNAME`, likewise (global addresses preferred by
/// taking the first one that is not link-local).
pub fn resolve_outbound_v6(value: &str) -> Result<Ipv6Addr, OutboundError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    interface_addr(value, |a| match a {
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80 => Some(v6),
        _ => None,
    })
    .ok_or_else(|| OutboundError::Unresolvable {
        flag: "--outbound-addr6",
        value: value.to_string(),
        family: "IPv6",
    })
}

fn interface_addr<T>(name: &str, pick: impl Fn(IpAddr) -> Option<T>) -> Option<T> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs.filter(|i| i.interface_name == name) {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(sin) = addr.as_sockaddr_in() {
            IpAddr::V4(sin.ip())
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            IpAddr::V6(sin6.ip())
        } else {
            continue;
        };
        if let Some(found) = pick(ip) {
            return Some(found);
        }
    }
    None
}

fn family(addr: &SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn new_socket(
    dst: &SocketAddr,
    ty: SockType,
    proto: Option<SockProtocol>,
    source: Option<IpAddr>,
) -> io::Result<OwnedFd> {
    let fd = socket(
        family(dst),
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        proto,
    )?;
    if let Some(src) = source {
        bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(src, 0)),
        )?;
    }
    Ok(fd)
}

/// Start a non-blocking connect; completion shows as writability.
pub fn tcp_connect(dst: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let fd = new_socket(&dst, SockType::Stream, None, source)?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(nix::Error::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = mio::net::TcpStream::from_std(std::net::TcpStream::from(fd));
    // The guest's own stack already decided when to send; a second Nagle
    // here would only add delay.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A UDP socket connected to `dst`, so the kernel filters replies for us
/// and reports ICMP errors as ECONNREFUSED and friends.
pub fn udp_connect(dst: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::UdpSocket> {
    let fd = new_socket(&dst, SockType::Datagram, None, source)?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
    Ok(mio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

/// An unprivileged ICMP echo socket connected to `dst`; allowed only when
/// the caller's group is inside `net.ipv4.ping_group_range`.
pub fn ping_connect(dst: Ipv4Addr, source: Option<IpAddr>) -> io::Result<mio::net::UdpSocket> {
    let dst = SocketAddr::new(IpAddr::V4(dst), 0);
    let fd = new_socket(&dst, SockType::Datagram, Some(SockProtocol::Icmp), source)?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
    Ok(mio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_accepts_addresses_and_interface_names() {
        assert_eq!(
            resolve_outbound_v4("192.0.2.7"),
            Ok(Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_eq!(resolve_outbound_v4("lo"), Ok(Ipv4Addr::LOCALHOST));
        assert!(matches!(
            resolve_outbound_v4("no-such-if0"),
            Err(OutboundError::Unresolvable { .. })
        ));
        assert_eq!(
            resolve_outbound_v6("2001:db8::1"),
            Ok("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn loopback_destinations_are_never_rebound() {
        let o = Outbound {
            v4: Some(Ipv4Addr::new(192, 0, 2, 7)),
            v6: None,
        };
        assert_eq!(o.for_dst(IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
        assert_eq!(
            o.for_dst("198.51.100.1".parse().unwrap()),
            Some("192.0.2.7".parse().unwrap())
        );
        assert_eq!(o.for_dst("2001:db8::1".parse().unwrap()), None);
    }

    #[test]
    fn refused_connect_is_reported_not_fatal() {
        // Bind a listener, learn its port, close it: nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let s = tcp_connect(SocketAddr::from(([127, 0, 0, 1], port)), None).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match s.take_error().unwrap() {
                Some(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                    break;
                }
                None => assert!(std::time::Instant::now() < deadline, "no error reported"),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
