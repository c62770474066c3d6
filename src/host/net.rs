//! The real host: what the guest's flows become on this machine.
//!
//! Non-blocking TCP connects, connected UDP sockets, unprivileged ICMP
//! echo sockets and forward listeners, optionally bound to the
//! `--outbound-addr` address, each registered with the event loop's mio
//! registry under its flow's token. Nothing here knows about frames or
//! the guest.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, MultiHeaders, SockFlag, SockProtocol, SockType,
    SockaddrStorage, bind, connect, recvmmsg, sendmmsg, sendmsg, setsockopt, socket, sockopt,
};
use smoltcp::time::Instant;
use thiserror::Error;

use super::{DGRAM_SLOTS, DgramBatch, FlowId, Host, Proto, SEND_SLOTS, train_len};
use crate::resolv::Resolver;
use crate::tokens;

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
    /// (the gateway's host loopback) are bound too, as slirp4netns does:
    /// the kernel allows a local non-loopback source there, and services
    /// on 127.0.0.1 then see the outbound address.
    pub fn for_dst(&self, dst: IpAddr) -> Option<IpAddr> {
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

/// Where an outbound socket is bound before it connects: a source
/// address (`--outbound-addr`, pasta's `-o`) and an interface (pasta's
/// `--outbound-if4`/`--outbound-if6`, `SO_BINDTODEVICE`).
#[derive(Debug, Clone, Copy, Default)]
struct Bind<'a> {
    addr: Option<IpAddr>,
    device: Option<&'a OsString>,
}

impl From<Option<IpAddr>> for Bind<'_> {
    fn from(addr: Option<IpAddr>) -> Self {
        Bind { addr, device: None }
    }
}

/// The interfaces outbound sockets are bound to, per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundDevices {
    pub v4: Option<OsString>,
    pub v6: Option<OsString>,
}

fn new_socket(
    dst: &SocketAddr,
    ty: SockType,
    proto: Option<SockProtocol>,
    bind_to: Bind,
) -> io::Result<OwnedFd> {
    let fd = socket(
        family(dst),
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        proto,
    )?;
    if let Some(device) = bind_to.device {
        setsockopt(&fd, sockopt::BindToDevice, device)?;
    }
    if let Some(src) = bind_to.addr {
        bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(src, 0)),
        )?;
    }
    Ok(fd)
}

/// Start a non-blocking connect; completion shows as writability.
fn tcp_connect(dst: SocketAddr, bind_to: Bind) -> io::Result<TcpStream> {
    let fd = new_socket(&dst, SockType::Stream, None, bind_to)?;
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
fn udp_connect(dst: SocketAddr, bind_to: Bind) -> io::Result<UdpSocket> {
    let fd = new_socket(&dst, SockType::Datagram, None, bind_to)?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
    Ok(mio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

/// An unprivileged ICMP echo socket connected to `dst`; allowed only when
/// the caller's group is inside `net.ipv4.ping_group_range`.
fn ping_connect(dst: IpAddr, bind_to: Bind) -> io::Result<UdpSocket> {
    let proto = match dst {
        IpAddr::V4(_) => SockProtocol::Icmp,
        IpAddr::V6(_) => SockProtocol::IcmpV6,
    };
    let dst = SocketAddr::new(dst, 0);
    let fd = new_socket(&dst, SockType::Datagram, Some(proto), bind_to)?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
    Ok(mio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

/// A host socket, by what it carries.
enum Sock {
    Stream(TcpStream),
    Dgram(UdpSocket),
    TcpListener(TcpListener),
    UdpListener(UdpSocket),
}

/// Sockets in the caller's network namespace, one per flow id, each
/// registered under that flow's token.
pub struct NetHost {
    registry: Registry,
    socks: Vec<Option<Sock>>,
    outbound: Outbound,
    devices: OutboundDevices,
    resolver: Resolver,
    /// recvmmsg's message headers, kept between calls. With room for a
    /// source address although the sockets are connected: the kernel
    /// writes each address's length back into the header, and nix does
    /// not reset it, so with `()` (no room) the next call fails EFAULT.
    recv_headers: MultiHeaders<SockaddrStorage>,
    /// sendmmsg's, likewise (the sockets are connected: no addresses).
    send_headers: MultiHeaders<SockaddrStorage>,
    /// UDP flows whose socket refused segmentation offload once.
    no_gso: HashSet<FlowId>,
    /// pasta mode: host loopback clients of forwards are carried by the
    /// loop, not the engine (see [`NetHost::splice_loopback`]).
    splice: Option<Splice>,
    /// Clients taken from the engine so, with where they go, until the
    /// loop collects them.
    carried: Vec<(TcpStream, SocketAddr)>,
}

/// Where pasta's splice takes a host loopback client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splice {
    /// To the guest's own address, as the engine would.
    ToGuest,
    /// To the namespace's loopback (`--host-lo-to-ns-lo`).
    ToNsLoopback,
}

fn not_open() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "no such host socket")
}

impl NetHost {
    pub fn new(registry: Registry, outbound: Outbound, resolv_conf: &Path) -> Self {
        NetHost {
            registry,
            socks: Vec::new(),
            outbound,
            devices: OutboundDevices::default(),
            resolver: Resolver::new(resolv_conf),
            recv_headers: MultiHeaders::preallocate(DGRAM_SLOTS, None),
            send_headers: MultiHeaders::preallocate(SEND_SLOTS, None),
            no_gso: HashSet::new(),
            splice: None,
            carried: Vec::new(),
        }
    }

    /// From now on, hand forwarded TCP clients on the host's loopback to
    /// the loop (through [`NetHost::take_carried`]) instead of the engine,
    /// as pasta splices them loopback to loopback.
    pub fn splice_loopback(&mut self, splice: Splice) {
        self.splice = Some(splice);
    }

    /// The clients carried since the last call, each with the address in
    /// the namespace to connect it to.
    pub fn take_carried(&mut self) -> Vec<(TcpStream, SocketAddr)> {
        std::mem::take(&mut self.carried)
    }

    /// Bind outbound sockets to these interfaces from now on (pasta's
    /// `--outbound-if4`/`--outbound-if6`).
    pub fn bind_outbound_to(&mut self, devices: OutboundDevices) {
        self.devices = devices;
    }

    /// How a socket toward `dst` is bound. Not to an interface when `dst`
    /// is the host's loopback, as pasta does: that would fail.
    fn bind_for(&self, dst: IpAddr) -> Bind<'_> {
        let device = match dst {
            _ if dst.is_loopback() => None,
            IpAddr::V4(_) => self.devices.v4.as_ref(),
            IpAddr::V6(_) => self.devices.v6.as_ref(),
        };
        Bind {
            addr: self.outbound.for_dst(dst),
            device,
        }
    }

    fn add(&mut self, id: FlowId, mut sock: Sock) -> io::Result<()> {
        let token = tokens::of_flow(id);
        let r = &self.registry;
        match &mut sock {
            Sock::Stream(s) => r.register(s, token, Interest::READABLE | Interest::WRITABLE)?,
            Sock::Dgram(s) | Sock::UdpListener(s) => r.register(s, token, Interest::READABLE)?,
            Sock::TcpListener(s) => r.register(s, token, Interest::READABLE)?,
        }
        if self.socks.len() <= id {
            self.socks.resize_with(id + 1, || None);
        }
        if let Some(old) = self.socks[id].replace(sock) {
            // The engine closes a flow before reusing its id; if it ever
            // did not, do not leak the old socket's registration.
            self.deregister(old, false);
        }
        Ok(())
    }

    fn get(&self, id: FlowId) -> Option<&Sock> {
        self.socks.get(id)?.as_ref()
    }

    fn stream(&self, id: FlowId) -> io::Result<&TcpStream> {
        match self.get(id) {
            Some(Sock::Stream(s)) => Ok(s),
            _ => Err(not_open()),
        }
    }

    fn dgram(&self, id: FlowId) -> io::Result<&UdpSocket> {
        match self.get(id) {
            Some(Sock::Dgram(s)) | Some(Sock::UdpListener(s)) => Ok(s),
            _ => Err(not_open()),
        }
    }

    fn deregister(&self, sock: Sock, reset: bool) {
        let r = &self.registry;
        let _ = match sock {
            Sock::Stream(mut s) => {
                if reset {
                    reset_on_close(&s);
                }
                r.deregister(&mut s)
            }
            Sock::Dgram(mut s) | Sock::UdpListener(mut s) => r.deregister(&mut s),
            Sock::TcpListener(mut s) => r.deregister(&mut s),
        };
    }
}

/// SO_LINGER with a zero timeout: close() sends RST.
fn reset_on_close(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(stream, sockopt::Linger, &linger);
}

impl Host for NetHost {
    fn tcp_connect(&mut self, id: FlowId, dst: SocketAddr) -> io::Result<()> {
        let s = tcp_connect(dst, self.bind_for(dst.ip()))?;
        self.add(id, Sock::Stream(s))
    }

    fn tcp_connected(&mut self, id: FlowId) -> io::Result<bool> {
        let s = self.stream(id)?;
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn tcp_read(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<usize> {
        self.stream(id)?.read(buf)
    }

    fn tcp_write(&mut self, id: FlowId, buf: &[u8]) -> io::Result<usize> {
        self.stream(id)?.write(buf)
    }

    fn tcp_shutdown_write(&mut self, id: FlowId) {
        if let Ok(s) = self.stream(id) {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    fn udp_open(&mut self, id: FlowId, dst: SocketAddr) -> io::Result<()> {
        let s = udp_connect(dst, self.bind_for(dst.ip()))?;
        self.add(id, Sock::Dgram(s))
    }

    fn ping_open(&mut self, id: FlowId, dst: IpAddr) -> io::Result<()> {
        let s = ping_connect(dst, self.bind_for(dst))?;
        self.add(id, Sock::Dgram(s))
    }

    fn send(&mut self, id: FlowId, data: &[u8]) -> io::Result<usize> {
        self.dgram(id)?.send(data)
    }

    fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<usize> {
        self.dgram(id)?.recv(buf)
    }

    fn send_batch(&mut self, id: FlowId, datagrams: &[&[u8]]) -> io::Result<usize> {
        let fd = self.dgram(id)?.as_raw_fd();
        // Datagrams of one size go as one with UDP_SEGMENT: the kernel
        // takes them through its stack once and cuts them at the end
        // (at the receiving socket, on loopback).
        let run = train_len(datagrams);
        if run >= 2 && !self.no_gso.contains(&id) {
            let size = datagrams[0].len() as u16;
            let iov: Vec<IoSlice<'_>> = datagrams[..run].iter().map(|d| IoSlice::new(d)).collect();
            let gso = [ControlMessage::UdpGsoSegments(&size)];
            match sendmsg::<()>(fd, &iov, &gso, MsgFlags::MSG_DONTWAIT, None) {
                Ok(_) => return Ok(run),
                Err(e @ (Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED)) => {
                    return Err(e.into());
                }
                // Datagrams larger than the path's MTU, which need IP
                // fragments (EMSGSIZE), or no offload on the way (EIO,
                // EINVAL): one by one from now on.
                Err(e) => {
                    log::debug!("udp flow {id}: no segmentation offload ({e})");
                    self.no_gso.insert(id);
                }
            }
        }
        let datagrams = &datagrams[..datagrams.len().min(SEND_SLOTS)];
        let iovs: Vec<[IoSlice<'_>; 1]> = datagrams.iter().map(|d| [IoSlice::new(d)]).collect();
        let addrs: [Option<SockaddrStorage>; SEND_SLOTS] = [None; SEND_SLOTS];
        let sent = sendmmsg(
            fd,
            &mut self.send_headers,
            &iovs,
            &addrs[..datagrams.len()],
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?
        .count();
        Ok(sent)
    }

    fn recv_batch(&mut self, id: FlowId, batch: &mut DgramBatch) -> io::Result<usize> {
        let fd = self.dgram(id)?.as_raw_fd();
        let mut slots = batch.slots_mut();
        // The iterator yields exactly DGRAM_SLOTS slots (the batch's
        // buffer is DGRAM_SLOTS slots long), so `next` never runs dry.
        let mut iovs: [[IoSliceMut<'_>; 1]; DGRAM_SLOTS] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        let mut lens = [0; DGRAM_SLOTS];
        let mut count = 0;
        let results = recvmmsg(
            fd,
            &mut self.recv_headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        for msg in results {
            lens[count] = msg.bytes;
            count += 1;
        }
        for (i, &n) in lens[..count].iter().enumerate() {
            batch.set_len(i, n);
        }
        if count == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(count)
    }

    fn listen(&mut self, id: FlowId, proto: Proto, addr: SocketAddr) -> io::Result<SocketAddr> {
        let (sock, bound) = match proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                let bound = l.local_addr()?;
                (Sock::TcpListener(TcpListener::from_std(l)), bound)
            }
            Proto::Udp => {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                let bound = s.local_addr()?;
                (Sock::UdpListener(UdpSocket::from_std(s)), bound)
            }
        };
        self.add(id, sock)?;
        Ok(bound)
    }

    fn accept(&mut self, listener: FlowId, id: FlowId) -> io::Result<SocketAddr> {
        let Some(Sock::TcpListener(l)) = self.get(listener) else {
            return Err(not_open());
        };
        let (stream, client) = l.accept()?;
        // As for outbound flows: the guest's stack does the batching.
        let _ = stream.set_nodelay(true);
        self.add(id, Sock::Stream(stream))?;
        Ok(client)
    }

    fn carry_directly(&mut self, id: FlowId, client: SocketAddr, to: SocketAddr) -> bool {
        let client_ip = match client.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let Some(splice) = self.splice.filter(|_| client_ip.is_loopback()) else {
            return false;
        };
        let Some(Some(Sock::Stream(_))) = self.socks.get(id) else {
            return false;
        };
        let Some(Sock::Stream(mut stream)) = self.socks[id].take() else {
            return false;
        };
        let _ = self.registry.deregister(&mut stream);
        let to = match (splice, to.ip()) {
            (Splice::ToGuest, _) => to,
            (Splice::ToNsLoopback, IpAddr::V4(_)) => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), to.port())
            }
            (Splice::ToNsLoopback, IpAddr::V6(_)) => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), to.port())
            }
        };
        self.carried.push((stream, to));
        true
    }

    fn recv_from(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.dgram(id)?.recv_from(buf)
    }

    fn send_to(&mut self, id: FlowId, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.dgram(id)?.send_to(data, to)
    }

    fn close(&mut self, id: FlowId, reset: bool) {
        self.no_gso.remove(&id);
        if let Some(sock) = self.socks.get_mut(id).and_then(Option::take) {
            self.deregister(sock, reset);
        }
    }

    fn nameserver(&mut self, now: Instant) -> Option<IpAddr> {
        self.resolver.nameserver(now)
    }
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
    fn every_destination_of_a_family_is_bound_loopback_included() {
        let o = Outbound {
            v4: Some(Ipv4Addr::new(192, 0, 2, 7)),
            v6: None,
        };
        assert_eq!(
            o.for_dst(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some("192.0.2.7".parse().unwrap())
        );
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
        let s = tcp_connect(SocketAddr::from(([127, 0, 0, 1], port)), None.into()).unwrap();
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
