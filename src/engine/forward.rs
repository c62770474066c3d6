//! Port forwarding: host listeners whose connections and datagrams are
//! carried into the guest, from the client's own address.
//!
//! A TCP client accepted on the host becomes a smoltcp connection to the
//! guest whose source is the client's address and port, so the service
//! inside sees who is really calling; only a client on the host's own
//! loopback (or one that cannot be shown as IPv4) appears as the gateway.
//! From then on it is an ordinary TCP flow, pumped like an outbound one.
//! UDP clients get one flow each, with the same idle timeout and cap as
//! outbound UDP.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpEndpoint, IpListenEndpoint};
use thiserror::Error;

use super::flows::{Flow, FlowKey, Kind, ListenSocket, Listener, TcpFlow};
use super::udp::{UDP_FLOW_LIMIT, UDP_IDLE_TIMEOUT};
use super::{Engine, FrameSink};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// What to forward: a host address and port to a guest address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSpec {
    pub proto: Proto,
    pub host: SocketAddr,
    pub guest: SocketAddrV4,
}

/// A forward in place; `spec.host` holds the port actually bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub id: u64,
    pub spec: ForwardSpec,
    slot: usize,
}

#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("cannot bind {addr}: {err}")]
    Bind { addr: SocketAddr, err: io::Error },
    #[error("no forward has id {0}")]
    NoSuchId(u64),
}

/// A UDP client of a forward.
pub(super) struct UdpClient {
    listener_slot: usize,
    client: SocketAddr,
    last_used: Instant,
}

#[derive(Default)]
pub(super) struct Forwards {
    by_id: std::collections::BTreeMap<u64, Forward>,
    last_id: u64,
    /// Keyed like a guest flow: the guest's endpoint and the client's
    /// endpoint as the guest sees it.
    pub(super) udp_clients: HashMap<FlowKey, UdpClient>,
}

impl Engine {
    /// Bind the host side of a forward and start accepting. Ids start at 1
    /// and are never reused.
    pub fn add_forward(&mut self, spec: ForwardSpec) -> Result<Forward, ForwardError> {
        let bind_err = |err| ForwardError::Bind {
            addr: spec.host,
            err,
        };
        let (sock, bound) = match spec.proto {
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(spec.host).map_err(bind_err)?;
                l.set_nonblocking(true).map_err(bind_err)?;
                let bound = l.local_addr().map_err(bind_err)?;
                (ListenSocket::Tcp(mio::net::TcpListener::from_std(l)), bound)
            }
            Proto::Udp => {
                let s = std::net::UdpSocket::bind(spec.host).map_err(bind_err)?;
                s.set_nonblocking(true).map_err(bind_err)?;
                let bound = s.local_addr().map_err(bind_err)?;
                (ListenSocket::Udp(mio::net::UdpSocket::from_std(s)), bound)
            }
        };
        let id = self.forwards.last_id + 1;
        let listener = Listener {
            sock,
            guest: spec.guest,
            readable: false,
        };
        let slot = self
            .flows
            .insert(Flow::Listener(listener), &self.registry)
            .map_err(bind_err)?;
        self.forwards.last_id = id;
        let mut spec = spec;
        spec.host.set_port(bound.port());
        let fwd = Forward { id, spec, slot };
        self.forwards.by_id.insert(id, fwd);
        log::info!(
            "forwarding {} {} to {}",
            spec.proto.as_str(),
            spec.host,
            spec.guest
        );
        Ok(fwd)
    }

    /// Close a forward's listener at once; its connections may finish.
    pub fn remove_forward(&mut self, id: u64) -> Result<(), ForwardError> {
        let fwd = self
            .forwards
            .by_id
            .remove(&id)
            .ok_or(ForwardError::NoSuchId(id))?;
        self.remove_flow(fwd.slot);
        self.forwards
            .udp_clients
            .retain(|_, c| c.listener_slot != fwd.slot);
        log::info!("removed forward {id}");
        Ok(())
    }

    /// The forwards in place, by id.
    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.by_id.values()
    }

    /// How a host client appears inside the guest: itself when it is an
    /// outside IPv4 address, else the gateway.
    fn seen_source(&self, client: SocketAddr) -> SocketAddrV4 {
        let ip = match client.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        let ip = match ip {
            Some(a) if !(a.is_loopback() || a.is_unspecified() || self.net.contains(a)) => a,
            _ => self.net.gateway,
        };
        SocketAddrV4::new(ip, client.port())
    }

    /// The guest's MAC for frames we originate toward `ip`; broadcast when
    /// we have not heard from it yet (the guest still takes the packet,
    /// since it is addressed to its IP).
    pub(super) fn guest_mac_for(&self, ip: Ipv4Addr) -> EthernetAddress {
        self.guest_macs
            .get(&ip)
            .copied()
            .unwrap_or(EthernetAddress::BROADCAST)
    }

    pub(super) fn pump_listener<S: FrameSink>(&mut self, now: Instant, slot: usize, sink: &mut S) {
        let Some(l) = self.flows.listener_mut(slot) else {
            return;
        };
        if !l.readable {
            return;
        }
        match l.sock {
            ListenSocket::Tcp(_) => self.accept_tcp(slot),
            ListenSocket::Udp(_) => self.receive_forwarded_udp(now, slot, sink),
        }
    }

    fn accept_tcp(&mut self, slot: usize) {
        loop {
            let Some(l) = self.flows.listener_mut(slot) else {
                return;
            };
            let ListenSocket::Tcp(sock) = &l.sock else {
                return;
            };
            let guest = l.guest;
            let (stream, client) = match sock.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the client queued and
                    // retry on the next sweep rather than spin.
                    log::warn!("accept on a forward failed: {e}");
                    l.readable = false;
                    return;
                }
            };
            // As for outbound flows: the guest's stack does the batching.
            let _ = stream.set_nodelay(true);
            self.connect_to_guest(stream, client, guest);
        }
    }

    fn connect_to_guest(
        &mut self,
        stream: mio::net::TcpStream,
        client: SocketAddr,
        guest: SocketAddrV4,
    ) {
        let src = self.seen_source(client);
        let key = FlowKey { guest, dst: src };
        if self.flows.find(Kind::Tcp, &key).is_some() {
            log::debug!("forward: {client} collides with a live flow as {src}; dropping it");
            return;
        }
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]),
        );
        sock.set_ack_delay(None);
        sock.set_nagle_enabled(false);
        let remote = IpEndpoint::new((*guest.ip()).into(), guest.port());
        let local = IpListenEndpoint {
            addr: Some((*src.ip()).into()),
            port: src.port(),
        };
        if let Err(e) = sock.connect(self.iface.context(), remote, local) {
            log::debug!("forward: cannot open {src} -> {guest}: {e}");
            return;
        }
        let handle = self.sockets.add(sock);
        let flow = TcpFlow {
            key,
            handle,
            host: stream,
            connecting: false,
            established: false,
            readable: false,
            writable: true,
            host_closed: false,
            read_eof: false,
            write_shut: false,
            syn_quote: Vec::new(),
            syn_seq: smoltcp::wire::TcpSeqNumber(0),
            guest_mac: self.guest_mac_for(*guest.ip()),
        };
        match self.flows.insert(Flow::Tcp(flow), &self.registry) {
            Ok(slot) => {
                self.flows.queue_reap(slot);
                log::debug!("forward: {client} -> {guest} as {src}");
            }
            Err(e) => {
                log::warn!("cannot watch a forwarded connection: {e}");
                self.sockets.remove(handle);
            }
        }
    }

    fn receive_forwarded_udp<S: FrameSink>(&mut self, now: Instant, slot: usize, sink: &mut S) {
        loop {
            let Some(l) = self.flows.listener_mut(slot) else {
                return;
            };
            let ListenSocket::Udp(sock) = &l.sock else {
                return;
            };
            let guest = l.guest;
            let (n, client) = match sock.recv_from(&mut self.scratch) {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Stop rather than loop on an error that may repeat;
                    // the next event (or sweep) tries again.
                    log::debug!("forward: UDP receive failed: {e}");
                    l.readable = false;
                    return;
                }
            };
            let src = self.seen_source(client);
            let key = FlowKey { guest, dst: src };
            let clients = &mut self.forwards.udp_clients;
            if !clients.contains_key(&key) && clients.len() >= UDP_FLOW_LIMIT {
                let oldest = clients
                    .iter()
                    .min_by_key(|(_, c)| c.last_used)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    clients.remove(&k);
                }
            }
            clients.insert(
                key,
                UdpClient {
                    listener_slot: slot,
                    client,
                    last_used: now,
                },
            );
            let mac = self.guest_mac_for(*guest.ip());
            let scratch = std::mem::take(&mut self.scratch);
            self.send_udp(mac, src, guest, &scratch[..n], sink);
            self.scratch = scratch;
        }
    }

    /// A guest datagram that answers a forwarded UDP client: send it back
    /// to that client from the forward's socket. False when `key` is not a
    /// forwarded client.
    pub(super) fn reply_forwarded_udp(&mut self, now: Instant, key: &FlowKey, data: &[u8]) -> bool {
        let Some(c) = self.forwards.udp_clients.get_mut(key) else {
            return false;
        };
        c.last_used = now;
        let (slot, client) = (c.listener_slot, c.client);
        if let Some(Listener {
            sock: ListenSocket::Udp(sock),
            ..
        }) = self.flows.listener_mut(slot)
            && let Err(e) = sock.send_to(data, client)
        {
            log::debug!("forward: UDP reply to {client} failed: {e}");
        }
        true
    }

    /// Forget UDP clients idle past the timeout.
    pub(super) fn expire_forwarded_udp(&mut self, now: Instant) {
        self.forwards
            .udp_clients
            .retain(|_, c| now - c.last_used <= UDP_IDLE_TIMEOUT);
    }
}
