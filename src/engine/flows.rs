//! The flow table: every guest flow and the host socket that carries it.
//!
//! Flows live in a slab whose index is also the mio token of their host
//! socket (plus `FLOW_TOKEN_BASE`), so a host event finds its flow in O(1),
//! and a hash map per protocol finds the flow of a guest packet in O(1).
//! Work is driven by a dirty list: only flows that saw a frame or a host
//! event are served, never a scan over all flows per packet.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;

use mio::{Interest, Registry, Token};
use smoltcp::iface::SocketHandle;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, TcpSeqNumber};

use super::Readiness;
use super::udp::{UDP_FLOW_LIMIT, UDP_IDLE_TIMEOUT};

/// Tokens below this belong to the event loop (tap, exit fd, signals...).
pub const FLOW_TOKEN_BASE: usize = 16;
/// Flow tokens stay below this; the API's connections use tokens above.
pub const FLOW_TOKEN_END: usize = 1 << 32;

/// A guest flow: the guest's endpoint and the destination it addressed.
/// For ICMP echo the ports hold the guest's echo identifier and 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddrV4,
    pub dst: SocketAddrV4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    Ping,
    /// A port forward's host listener (TCP or UDP).
    Listener,
}

pub struct TcpFlow {
    pub key: FlowKey,
    pub handle: SocketHandle,
    pub host: mio::net::TcpStream,
    /// The host connect has not completed; the SYN-ACK is held.
    pub connecting: bool,
    /// The guest side reached ESTABLISHED at least once.
    pub established: bool,
    pub readable: bool,
    pub writable: bool,
    /// Epoll reported the host's FIN (EPOLLRDHUP); data before it must be
    /// read to the end.
    pub host_closed: bool,
    /// The host sent EOF; the guest side was closed after the data.
    pub read_eof: bool,
    /// The guest sent FIN; the host side was shut for writing.
    pub write_shut: bool,
    /// While connecting: the guest's SYN (IP header and the first 8 bytes
    /// of TCP), to quote in an ICMP error, and its sequence number.
    pub syn_quote: Vec<u8>,
    pub syn_seq: TcpSeqNumber,
    pub guest_mac: EthernetAddress,
}

/// A UDP flow or an ICMP echo flow: a connected datagram socket.
pub struct DgramFlow {
    pub key: FlowKey,
    pub sock: mio::net::UdpSocket,
    pub guest_mac: EthernetAddress,
    pub last_used: Instant,
    pub readable: bool,
}

/// The host socket of a port forward.
pub enum ListenSocket {
    Tcp(mio::net::TcpListener),
    Udp(mio::net::UdpSocket),
}

pub struct Listener {
    pub sock: ListenSocket,
    /// Where in the guest its connections and datagrams go.
    pub guest: SocketAddrV4,
    pub readable: bool,
}

/// One step of reading a datagram flow's host socket.
pub enum Recv {
    Data(usize),
    /// Drained (or not readable): wait for the next event.
    Done,
    Failed(io::Error),
}

impl DgramFlow {
    pub fn new(
        key: FlowKey,
        sock: mio::net::UdpSocket,
        guest_mac: EthernetAddress,
        now: Instant,
    ) -> Self {
        DgramFlow {
            key,
            sock,
            guest_mac,
            last_used: now,
            readable: false,
        }
    }

    /// Read one datagram into `buf` if the socket is ready.
    pub fn recv(&mut self, buf: &mut [u8], now: Instant) -> Recv {
        while self.readable {
            match self.sock.recv(buf) {
                Ok(n) => {
                    self.last_used = now;
                    return Recv::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Recv::Failed(e),
            }
        }
        Recv::Done
    }
}

pub enum Flow {
    Tcp(TcpFlow),
    Udp(DgramFlow),
    Ping(DgramFlow),
    Listener(Listener),
}

impl Flow {
    fn kind(&self) -> Kind {
        match self {
            Flow::Tcp(_) => Kind::Tcp,
            Flow::Udp(_) => Kind::Udp,
            Flow::Ping(_) => Kind::Ping,
            Flow::Listener(_) => Kind::Listener,
        }
    }

    fn key(&self) -> Option<FlowKey> {
        match self {
            Flow::Tcp(f) => Some(f.key),
            Flow::Udp(f) | Flow::Ping(f) => Some(f.key),
            Flow::Listener(_) => None,
        }
    }

    pub fn tcp_handle(&self) -> Option<SocketHandle> {
        match self {
            Flow::Tcp(f) => Some(f.handle),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct FlowTable {
    slots: Vec<Option<Flow>>,
    free: Vec<usize>,
    tcp: HashMap<FlowKey, usize>,
    udp: HashMap<FlowKey, usize>,
    ping: HashMap<FlowKey, usize>,
    queued: Vec<bool>,
    dirty: Vec<usize>,
    /// TCP flows to check for completion after the next egress.
    reap: Vec<usize>,
}

impl FlowTable {
    fn map(&self, kind: Kind) -> Option<&HashMap<FlowKey, usize>> {
        match kind {
            Kind::Tcp => Some(&self.tcp),
            Kind::Udp => Some(&self.udp),
            Kind::Ping => Some(&self.ping),
            Kind::Listener => None,
        }
    }

    fn map_mut(&mut self, kind: Kind) -> Option<&mut HashMap<FlowKey, usize>> {
        match kind {
            Kind::Tcp => Some(&mut self.tcp),
            Kind::Udp => Some(&mut self.udp),
            Kind::Ping => Some(&mut self.ping),
            Kind::Listener => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && self.ping.is_empty()
    }

    pub fn find(&self, kind: Kind, key: &FlowKey) -> Option<usize> {
        self.map(kind)?.get(key).copied()
    }

    pub fn kind(&self, slot: usize) -> Option<Kind> {
        self.slots.get(slot)?.as_ref().map(Flow::kind)
    }

    /// Add a flow and register its host socket for both directions.
    pub fn insert(&mut self, mut flow: Flow, registry: &Registry) -> io::Result<usize> {
        let slot = self.free.pop().unwrap_or(self.slots.len());
        let token = Token(FLOW_TOKEN_BASE + slot);
        let interest = Interest::READABLE | Interest::WRITABLE;
        match &mut flow {
            Flow::Tcp(f) => registry.register(&mut f.host, token, interest)?,
            Flow::Udp(f) | Flow::Ping(f) => {
                registry.register(&mut f.sock, token, Interest::READABLE)?
            }
            Flow::Listener(l) => match &mut l.sock {
                ListenSocket::Tcp(s) => registry.register(s, token, Interest::READABLE)?,
                ListenSocket::Udp(s) => registry.register(s, token, Interest::READABLE)?,
            },
        }
        let kind = flow.kind();
        let key = flow.key();
        if slot == self.slots.len() {
            self.slots.push(Some(flow));
            self.queued.push(false);
        } else {
            self.slots[slot] = Some(flow);
        }
        if let (Some(map), Some(key)) = (self.map_mut(kind), key) {
            map.insert(key, slot);
        }
        Ok(slot)
    }

    /// Take a flow out and deregister its host socket; dropping the flow
    /// closes the socket.
    pub fn remove(&mut self, slot: usize, registry: &Registry) -> Option<Flow> {
        let mut flow = self.slots.get_mut(slot)?.take()?;
        let _ = match &mut flow {
            Flow::Tcp(f) => registry.deregister(&mut f.host),
            Flow::Udp(f) | Flow::Ping(f) => registry.deregister(&mut f.sock),
            Flow::Listener(l) => match &mut l.sock {
                ListenSocket::Tcp(s) => registry.deregister(s),
                ListenSocket::Udp(s) => registry.deregister(s),
            },
        };
        if let (Some(key), kind) = (flow.key(), flow.kind())
            && let Some(map) = self.map_mut(kind)
        {
            map.remove(&key);
        }
        self.free.push(slot);
        Some(flow)
    }

    pub fn tcp_mut(&mut self, slot: usize) -> Option<&mut TcpFlow> {
        match self.slots.get_mut(slot)? {
            Some(Flow::Tcp(f)) => Some(f),
            _ => None,
        }
    }

    pub fn dgram_mut(&mut self, slot: usize) -> Option<&mut DgramFlow> {
        match self.slots.get_mut(slot)? {
            Some(Flow::Udp(f)) | Some(Flow::Ping(f)) => Some(f),
            _ => None,
        }
    }

    pub fn listener_mut(&mut self, slot: usize) -> Option<&mut Listener> {
        match self.slots.get_mut(slot)? {
            Some(Flow::Listener(l)) => Some(l),
            _ => None,
        }
    }

    pub fn mark_dirty(&mut self, slot: usize) {
        if let Some(q) = self.queued.get_mut(slot)
            && !*q
        {
            *q = true;
            self.dirty.push(slot);
        }
    }

    pub fn mark_ready(&mut self, token: Token, ready: Readiness) {
        let Some(slot) = token.0.checked_sub(FLOW_TOKEN_BASE) else {
            return;
        };
        match self.slots.get_mut(slot) {
            Some(Some(Flow::Tcp(f))) => {
                f.readable |= ready.readable;
                f.writable |= ready.writable;
                f.host_closed |= ready.read_closed;
            }
            Some(Some(Flow::Udp(f))) | Some(Some(Flow::Ping(f))) => f.readable |= ready.readable,
            Some(Some(Flow::Listener(l))) => l.readable |= ready.readable,
            _ => return,
        }
        self.mark_dirty(slot);
    }

    pub fn next_dirty(&mut self) -> Option<usize> {
        let slot = self.dirty.pop()?;
        self.queued[slot] = false;
        Some(slot)
    }

    pub fn queue_reap(&mut self, slot: usize) {
        self.reap.push(slot);
    }

    pub fn take_reap(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.reap)
    }

    pub fn mark_all_tcp_for_reaping(&mut self) {
        self.reap.extend(self.tcp.values().copied());
    }

    /// Try every listener again: one that stopped on an error (EMFILE on
    /// accept, say) still has clients queued, and epoll will not report
    /// them a second time.
    pub fn retry_listeners(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(Flow::Listener(l)) = &mut self.slots[slot] {
                l.readable = true;
                self.mark_dirty(slot);
            }
        }
    }

    /// Datagram flows idle for longer than the timeout.
    pub fn expired(&self, now: Instant) -> Vec<usize> {
        self.udp
            .values()
            .chain(self.ping.values())
            .copied()
            .filter(|&slot| match &self.slots[slot] {
                Some(Flow::Udp(f)) | Some(Flow::Ping(f)) => now - f.last_used > UDP_IDLE_TIMEOUT,
                _ => false,
            })
            .collect()
    }

    /// When datagram flows of `kind` are at the cap, the least recently
    /// used one, to make room. A scan, but only when the table is full.
    pub fn evict_candidate(&self, kind: Kind) -> Option<usize> {
        let map = self.map(kind)?;
        if map.len() < UDP_FLOW_LIMIT {
            return None;
        }
        map.values()
            .copied()
            .min_by_key(|&slot| match &self.slots[slot] {
                Some(Flow::Udp(f)) | Some(Flow::Ping(f)) => f.last_used,
                _ => Instant::from_millis(i64::MAX),
            })
    }
}
