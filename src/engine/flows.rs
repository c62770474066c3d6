//! The flow table: every guest flow, keyed for the guest's packets and by
//! flow id for the host's events.
//!
//! Flows live in a slab whose index is the flow id the host names its
//! socket by, so a host event finds its flow in O(1), and a hash map per
//! protocol finds the flow of a guest packet in O(1). Work is driven by a
//! dirty list: only flows that saw a frame or a host event are served,
//! never a scan over all flows per packet. This module owns no sockets.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, TcpSeqNumber};

use crate::host::{FlowId, Readiness};

/// At most this many UDP flows (and as many echo flows) at once; the least
/// recently used one is evicted to make room.
pub const UDP_FLOW_LIMIT: usize = 1024;

/// Caps on what a guest can make netferry hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP flows at once (each holds a host socket and a smoltcp socket).
    pub tcp_flows: usize,
    /// TCP flows whose host connect is still under way.
    pub pending_connects: usize,
}

pub const DEFAULT_MAX_TCP_FLOWS: usize = 16384;
pub const DEFAULT_MAX_PENDING_CONNECTS: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tcp_flows: DEFAULT_MAX_TCP_FLOWS,
            pending_connects: DEFAULT_MAX_PENDING_CONNECTS,
        }
    }
}

/// A guest flow: the guest's endpoint and the destination it addressed.
/// For ICMP echo the ports hold the guest's echo identifier and 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddr,
    pub dst: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    Ping,
    /// A port forward's host listener (TCP or UDP).
    Listener,
}

/// Readiness seen on a host socket and not yet used up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// The host's FIN was reported (EPOLLRDHUP): data before it must be
    /// read to the end, since no new edge will come.
    pub read_closed: bool,
}

/// Where a TCP flow stands. Each direction of an open flow ends on its
/// own (half-close); the flow is retired once smoltcp is done with it.
#[derive(Debug)]
pub enum TcpPhase {
    /// Outbound, host connect under way. No smoltcp socket exists yet: the
    /// guest's SYN frame waits here and is handed to a fresh socket once
    /// the host side is up, so nothing asks smoltcp for service meanwhile.
    Connecting { syn: Box<[u8]>, seq: TcpSeqNumber },
    /// smoltcp is handshaking with the guest.
    Handshake(SocketHandle),
    Open {
        handle: SocketHandle,
        /// The host sent FIN; the guest side was closed after the data.
        host_eof: bool,
        /// The guest sent FIN; the host side was shut for writing.
        guest_fin: bool,
        /// The guest reset the connection, or the host side failed: what
        /// smoltcp still holds for the host is dropped, not delivered.
        reset: bool,
    },
}

pub struct TcpFlow {
    pub key: FlowKey,
    pub guest_mac: EthernetAddress,
    pub ready: Ready,
    pub phase: TcpPhase,
    /// The flow's own socket set, holding its one smoltcp socket (none
    /// while connecting). smoltcp walks every socket of a set on each
    /// ingress and egress; one set per flow keeps that walk at one socket
    /// however many flows are open.
    pub set: SocketSet<'static>,
    /// When smoltcp next wants this flow served (retransmission, keep
    /// alive, TIME-WAIT...), as last scheduled.
    pub timer: Option<Instant>,
    /// The time of this flow's live entry in the timer heap: when it is
    /// next woken, at or before `timer`.
    pub queued: Option<Instant>,
    /// An outbound flow's guest SYN sequence number (the newest while
    /// connecting): a SYN with any other one is a new connection.
    pub guest_isn: Option<TcpSeqNumber>,
    /// A forward's IPv6 client sent to the guest over IPv6: where to try
    /// over IPv4 instead if the guest refuses (a service listening on
    /// IPv4 only), as the flow would have gone without an IPv6 address.
    pub v4_fallback: Option<FlowKey>,
}

impl TcpFlow {
    pub fn handle(&self) -> Option<SocketHandle> {
        match self.phase {
            TcpPhase::Connecting { .. } => None,
            TcpPhase::Handshake(h) | TcpPhase::Open { handle: h, .. } => Some(h),
        }
    }
}

/// A UDP flow or an ICMP echo flow: a connected datagram socket.
pub struct DgramFlow {
    pub key: FlowKey,
    pub guest_mac: EthernetAddress,
    pub last_used: Instant,
    pub readable: bool,
}

/// The host socket of a port forward.
pub struct Listener {
    pub proto: crate::host::Proto,
    /// Where in the guest its connections and datagrams go.
    pub guest: SocketAddr,
    pub readable: bool,
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

    fn is_connecting(&self) -> bool {
        matches!(
            self,
            Flow::Tcp(TcpFlow {
                phase: TcpPhase::Connecting { .. },
                ..
            })
        )
    }
}

#[derive(Default)]
pub struct FlowTable {
    slots: Vec<Option<Flow>>,
    free: Vec<FlowId>,
    tcp: HashMap<FlowKey, FlowId>,
    udp: HashMap<FlowKey, FlowId>,
    ping: HashMap<FlowKey, FlowId>,
    /// TCP flows in `TcpPhase::Connecting`, oldest first: keyed by the
    /// order they started in, so the oldest can give way at the cap.
    connecting: BTreeMap<u64, FlowId>,
    /// Per slot, the key its flow holds in `connecting`.
    connect_order: Vec<u64>,
    next_order: u64,
    queued: Vec<bool>,
    dirty: Vec<FlowId>,
    /// Flows whose batch ran out; served again in the next poll.
    carried: Vec<FlowId>,
    /// TCP flows to check for completion after the next egress.
    reap: Vec<FlowId>,
    /// smoltcp's deadlines per flow, earliest first; entries that no
    /// longer match their flow's `queued` are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, FlowId)>>,
}

impl FlowTable {
    fn map(&self, kind: Kind) -> Option<&HashMap<FlowKey, FlowId>> {
        match kind {
            Kind::Tcp => Some(&self.tcp),
            Kind::Udp => Some(&self.udp),
            Kind::Ping => Some(&self.ping),
            Kind::Listener => None,
        }
    }

    fn map_mut(&mut self, kind: Kind) -> Option<&mut HashMap<FlowKey, FlowId>> {
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

    /// (TCP, of which connecting, UDP, ping).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.tcp.len(),
            self.connecting.len(),
            self.udp.len(),
            self.ping.len(),
        )
    }

    pub fn find(&self, kind: Kind, key: &FlowKey) -> Option<FlowId> {
        self.map(kind)?.get(key).copied()
    }

    pub fn kind(&self, id: FlowId) -> Option<Kind> {
        self.slots.get(id)?.as_ref().map(Flow::kind)
    }

    /// The id the next `insert` will use; the host socket is opened under
    /// it before the flow goes in.
    pub fn next_id(&self) -> FlowId {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    pub fn insert(&mut self, flow: Flow) -> FlowId {
        let id = self.free.pop().unwrap_or(self.slots.len());
        let kind = flow.kind();
        let key = flow.key();
        let connecting = flow.is_connecting();
        if id == self.slots.len() {
            self.slots.push(Some(flow));
            self.queued.push(false);
            self.connect_order.push(0);
        } else {
            self.slots[id] = Some(flow);
        }
        if connecting {
            self.connect_order[id] = self.next_order;
            self.connecting.insert(self.next_order, id);
            self.next_order += 1;
        }
        if let (Some(map), Some(key)) = (self.map_mut(kind), key) {
            map.insert(key, id);
        }
        id
    }

    /// Take a flow out; its id may be reused from now on.
    pub fn remove(&mut self, id: FlowId) -> Option<Flow> {
        let flow = self.slots.get_mut(id)?.take()?;
        if flow.is_connecting() {
            self.connecting.remove(&self.connect_order[id]);
        }
        if let (Some(key), kind) = (flow.key(), flow.kind())
            && let Some(map) = self.map_mut(kind)
        {
            map.remove(&key);
        }
        self.free.push(id);
        Some(flow)
    }

    /// A connecting TCP flow's host side is up: it leaves that count.
    pub fn connected(&mut self, id: FlowId, handle: SocketHandle) {
        if let Some(Some(Flow::Tcp(f))) = self.slots.get_mut(id)
            && matches!(f.phase, TcpPhase::Connecting { .. })
        {
            f.phase = TcpPhase::Handshake(handle);
            self.connecting.remove(&self.connect_order[id]);
        }
    }

    /// The TCP flow whose host connect has been pending the longest.
    pub fn oldest_connecting(&self) -> Option<FlowId> {
        self.connecting.first_key_value().map(|(_, &id)| id)
    }

    /// TCP flow `id` now goes by `key` (a forward's client retried over
    /// IPv4). False, and nothing changed, when another flow has `key`.
    pub fn rekey_tcp(&mut self, id: FlowId, key: FlowKey) -> bool {
        if self.tcp.contains_key(&key) {
            return false;
        }
        let Some(Some(Flow::Tcp(f))) = self.slots.get_mut(id) else {
            return false;
        };
        self.tcp.remove(&f.key);
        f.key = key;
        self.tcp.insert(key, id);
        true
    }

    pub fn tcp_mut(&mut self, id: FlowId) -> Option<&mut TcpFlow> {
        match self.slots.get_mut(id)? {
            Some(Flow::Tcp(f)) => Some(f),
            _ => None,
        }
    }

    pub fn dgram_mut(&mut self, id: FlowId) -> Option<&mut DgramFlow> {
        match self.slots.get_mut(id)? {
            Some(Flow::Udp(f)) | Some(Flow::Ping(f)) => Some(f),
            _ => None,
        }
    }

    pub fn listener_mut(&mut self, id: FlowId) -> Option<&mut Listener> {
        match self.slots.get_mut(id)? {
            Some(Flow::Listener(l)) => Some(l),
            _ => None,
        }
    }

    pub fn mark_dirty(&mut self, id: FlowId) {
        if let Some(q) = self.queued.get_mut(id)
            && !*q
        {
            *q = true;
            self.dirty.push(id);
        }
    }

    pub fn mark_ready(&mut self, id: FlowId, ready: Readiness) {
        match self.slots.get_mut(id) {
            Some(Some(Flow::Tcp(f))) => {
                f.ready.readable |= ready.readable;
                f.ready.writable |= ready.writable;
                f.ready.read_closed |= ready.read_closed;
            }
            Some(Some(Flow::Udp(f))) | Some(Some(Flow::Ping(f))) => f.readable |= ready.readable,
            Some(Some(Flow::Listener(l))) => l.readable |= ready.readable,
            _ => return,
        }
        self.mark_dirty(id);
    }

    pub fn next_dirty(&mut self) -> Option<FlowId> {
        let id = self.dirty.pop()?;
        self.queued[id] = false;
        Some(id)
    }

    pub fn carry(&mut self, id: FlowId) {
        self.carried.push(id);
    }

    pub fn has_carried(&self) -> bool {
        !self.carried.is_empty()
    }

    pub fn requeue_carried(&mut self) {
        for id in std::mem::take(&mut self.carried) {
            self.mark_dirty(id);
        }
    }

    /// Remember when smoltcp next wants flow `id` served.
    pub fn schedule(&mut self, id: FlowId, at: Option<Instant>) {
        let Some(Some(Flow::Tcp(f))) = self.slots.get_mut(id) else {
            return;
        };
        f.timer = at;
        // A busy flow's deadline moves later with every segment (the
        // retransmission timer restarts). A later deadline keeps the entry
        // already queued, which fires early and is queued again then: one
        // entry per move would leave thousands of stale entries behind,
        // each an idle wake-up once the traffic stops.
        if let Some(at) = at
            && f.queued.is_none_or(|queued| at < queued)
        {
            f.queued = Some(at);
            self.timers.push(Reverse((at, id)));
        }
    }

    /// Flows whose smoltcp deadline has come; they are marked dirty.
    pub fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(Some(Flow::Tcp(f))) = self.slots.get_mut(id) else {
                continue;
            };
            if f.queued != Some(at) {
                continue; // superseded by an earlier entry
            }
            f.queued = None;
            match f.timer {
                Some(due) if due <= now => {
                    f.timer = None;
                    self.mark_dirty(id);
                }
                Some(later) => {
                    f.queued = Some(later);
                    self.timers.push(Reverse((later, id)));
                }
                None => {}
            }
        }
    }

    /// The earliest smoltcp deadline of any flow (perhaps one that has
    /// moved later since, which only costs an early wake-up).
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn queue_reap(&mut self, id: FlowId) {
        self.reap.push(id);
    }

    pub fn take_reap(&mut self) -> Vec<FlowId> {
        std::mem::take(&mut self.reap)
    }

    pub fn mark_all_tcp_for_reaping(&mut self) {
        self.reap.extend(self.tcp.values().copied());
    }

    /// Try every listener again: one that stopped on an error (EMFILE on
    /// accept, say) still has clients queued, and epoll will not report
    /// them a second time.
    pub fn retry_listeners(&mut self) {
        for id in 0..self.slots.len() {
            if let Some(Flow::Listener(l)) = &mut self.slots[id] {
                l.readable = true;
                self.mark_dirty(id);
            }
        }
    }

    /// Datagram flows idle for longer than `timeout`.
    pub fn expired(&self, now: Instant, timeout: Duration) -> Vec<FlowId> {
        self.udp
            .values()
            .chain(self.ping.values())
            .copied()
            .filter(|&id| match &self.slots[id] {
                Some(Flow::Udp(f)) | Some(Flow::Ping(f)) => now - f.last_used > timeout,
                _ => false,
            })
            .collect()
    }

    /// When datagram flows of `kind` are at the cap, the least recently
    /// used one, to make room. A scan, but only when the table is full.
    pub fn evict_candidate(&self, kind: Kind) -> Option<FlowId> {
        let map = self.map(kind)?;
        if map.len() < UDP_FLOW_LIMIT {
            return None;
        }
        map.values()
            .copied()
            .min_by_key(|&id| match &self.slots[id] {
                Some(Flow::Udp(f)) | Some(Flow::Ping(f)) => f.last_used,
                _ => Instant::from_millis(i64::MAX),
            })
    }
}
