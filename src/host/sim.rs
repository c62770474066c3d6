//! An in-memory host: scripted connect outcomes, byte streams and datagram
//! queues with back-pressure and resets, and a virtual clock.
//!
//! Scenario tests and fuzz targets put it behind the engine in place of
//! real sockets, then play the host's part by hand: complete or refuse a
//! connect, send bytes or a FIN from the peer, drain what the engine
//! wrote. Readiness is queued as edge events, as epoll reports them, and
//! the caller hands them to the engine. Everything is deterministic: the
//! same calls (and seed) give the same results. It must never touch a
//! real socket or clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};

use smoltcp::time::{Duration, Instant};

use super::{DGRAM_SLOTS, DgramBatch, FlowId, Host, Proto, Readiness, SEND_SLOTS};

/// What a TCP connect to some address does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Refuse,
    Unreachable,
    /// Pending forever (until the test completes it by hand).
    NeverAnswer,
}

/// A host that answers without making progress, for checking that no
/// loop of the engine's retries on such an answer for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Reads and writes of data say 0 bytes or 0 datagrams (a TCP read
    /// is left alone: 0 is its end of stream).
    Zero,
    /// Every read, write, send, receive and accept is interrupted (EINTR).
    Interrupted,
}

/// Answers a stalled host gives before it decides the engine is stuck in
/// a loop on them (and panics, so the test fails instead of hanging).
const STALL_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    Pending { outcome: Outcome, at: Instant },
    Connected,
    Failed(i32),
}

/// The host side of one TCP flow.
#[derive(Debug)]
pub struct SimStream {
    /// The destination (outbound) or the client (accepted).
    pub peer: SocketAddr,
    connect: Connect,
    /// Bytes the engine wrote that the peer has not taken yet.
    to_peer: VecDeque<u8>,
    /// Bytes the peer sent that the engine has not read yet.
    from_peer: VecDeque<u8>,
    peer_fin: bool,
    peer_reset: bool,
    /// The engine shut its side for writing (the guest's FIN).
    pub shut_write: bool,
    /// A write hit the limit; the peer taking bytes raises writability.
    write_blocked: bool,
}

/// A connected datagram socket (UDP or ping).
#[derive(Debug)]
pub struct SimDgram {
    pub peer: SocketAddr,
    pub ping: bool,
    /// Datagrams the engine sent, oldest first.
    pub sent: Vec<Vec<u8>>,
    inbox: VecDeque<Vec<u8>>,
    refused: bool,
}

#[derive(Debug)]
pub struct SimListener {
    pub proto: Proto,
    pub addr: SocketAddr,
    clients: VecDeque<SocketAddr>,
    inbox: VecDeque<(Vec<u8>, SocketAddr)>,
    /// Datagrams sent back to clients.
    pub sent: Vec<(Vec<u8>, SocketAddr)>,
}

#[derive(Debug)]
pub enum SimSock {
    Stream(SimStream),
    Dgram(SimDgram),
    Listener(SimListener),
}

/// Bounds that keep a fuzzed run's memory small.
const MAX_SENT: usize = 1024;
const MAX_CLOSED: usize = 4096;
/// Ports handed out for listeners bound to port 0.
const EPHEMERAL_START: u16 = 40000;

pub struct SimHost {
    now: Instant,
    socks: BTreeMap<FlowId, SimSock>,
    events: Vec<(FlowId, Readiness)>,
    outcomes: HashMap<IpAddr, Outcome>,
    pub default_outcome: Outcome,
    /// How long a connect takes before its outcome shows.
    pub connect_delay: Duration,
    /// Bytes a stream's peer buffers before writes would block.
    pub stream_limit: usize,
    pub nameserver: Option<IpAddr>,
    /// Whether ICMP echo sockets may be opened (`ping_group_range`).
    pub ping_allowed: bool,
    /// Sockets open at once before opens fail with EMFILE.
    pub fd_limit: usize,
    /// Writing to this peer panics, standing in for a defect in netferry
    /// that a flow trips (the engine's panic policy is tested with it).
    pub panic_on_write_to: Option<SocketAddr>,
    /// Answer data calls without progress (see `Stall`).
    pub stall: Option<Stall>,
    /// Calls answered while stalled.
    pub stalled_calls: usize,
    bound: HashSet<(Proto, SocketAddr)>,
    next_port: u16,
    rng: u64,
    /// Every close, with its reset flag, oldest first (bounded).
    pub closed: Vec<(FlowId, bool)>,
    /// What streams closed gracefully had written and the peer had not
    /// read yet: a kernel still delivers it after close.
    lingering: HashMap<FlowId, VecDeque<u8>>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl SimHost {
    pub fn new(seed: u64) -> Self {
        SimHost {
            now: Instant::from_millis(0),
            socks: BTreeMap::new(),
            events: Vec::new(),
            outcomes: HashMap::new(),
            default_outcome: Outcome::Accept,
            connect_delay: Duration::from_millis(1),
            stream_limit: 256 * 1024,
            nameserver: None,
            ping_allowed: true,
            fd_limit: usize::MAX,
            panic_on_write_to: None,
            stall: None,
            stalled_calls: 0,
            bound: HashSet::new(),
            next_port: EPHEMERAL_START,
            // xorshift must not start at 0.
            rng: seed | 1,
            closed: Vec::new(),
            lingering: HashMap::new(),
        }
    }

    /// A deterministic pseudo-random number (xorshift64).
    pub fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Connects to `ip` end this way from now on.
    pub fn set_outcome(&mut self, ip: IpAddr, outcome: Outcome) {
        self.outcomes.insert(ip, outcome);
    }

    /// Advance the clock; connects whose time has come finish.
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        let due: Vec<(FlowId, Outcome)> = self
            .socks
            .iter()
            .filter_map(|(&id, s)| match s {
                SimSock::Stream(SimStream {
                    connect: Connect::Pending { outcome, at },
                    ..
                }) if *at <= now && *outcome != Outcome::NeverAnswer => Some((id, *outcome)),
                _ => None,
            })
            .collect();
        for (id, outcome) in due {
            self.finish_connect(id, outcome);
        }
    }

    /// The next time `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.socks
            .values()
            .filter_map(|s| match s {
                SimSock::Stream(SimStream {
                    connect: Connect::Pending { outcome, at },
                    ..
                }) if *outcome != Outcome::NeverAnswer => Some(*at),
                _ => None,
            })
            .min()
    }

    /// End a pending connect now, whatever was planned.
    pub fn finish_connect(&mut self, id: FlowId, outcome: Outcome) {
        let Some(SimSock::Stream(s)) = self.socks.get_mut(&id) else {
            return;
        };
        if !matches!(s.connect, Connect::Pending { .. }) {
            return;
        }
        s.connect = match outcome {
            Outcome::Accept => Connect::Connected,
            Outcome::Refuse => Connect::Failed(libc::ECONNREFUSED),
            Outcome::Unreachable => Connect::Failed(libc::EHOSTUNREACH),
            Outcome::NeverAnswer => return,
        };
        let failed = outcome != Outcome::Accept;
        self.event(id, failed, true, failed);
    }

    /// Readiness edges since the last call, for `Engine::handle_host_event`.
    pub fn take_events(&mut self) -> Vec<(FlowId, Readiness)> {
        std::mem::take(&mut self.events)
    }

    fn event(&mut self, id: FlowId, readable: bool, writable: bool, read_closed: bool) {
        self.events.push((
            id,
            Readiness {
                readable,
                writable,
                read_closed,
            },
        ));
    }

    pub fn sock(&self, id: FlowId) -> Option<&SimSock> {
        self.socks.get(&id)
    }

    pub fn stream(&self, id: FlowId) -> Option<&SimStream> {
        match self.socks.get(&id)? {
            SimSock::Stream(s) => Some(s),
            _ => None,
        }
    }

    fn stream_mut(&mut self, id: FlowId) -> Option<&mut SimStream> {
        match self.socks.get_mut(&id)? {
            SimSock::Stream(s) => Some(s),
            _ => None,
        }
    }

    pub fn dgram(&self, id: FlowId) -> Option<&SimDgram> {
        match self.socks.get(&id)? {
            SimSock::Dgram(d) => Some(d),
            _ => None,
        }
    }

    pub fn listener(&self, id: FlowId) -> Option<&SimListener> {
        match self.socks.get(&id)? {
            SimSock::Listener(l) => Some(l),
            _ => None,
        }
    }

    /// Open sockets, of every kind.
    pub fn open_count(&self) -> usize {
        self.socks.len()
    }

    /// The ids of the open sockets, in order.
    pub fn open_ids(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.socks.keys().copied()
    }

    /// The ids of the open listeners, in order.
    pub fn listener_ids(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.socks
            .iter()
            .filter(|(_, s)| matches!(s, SimSock::Listener(_)))
            .map(|(&id, _)| id)
    }

    /// Open streams whose connect is still pending.
    pub fn pending_connects(&self) -> usize {
        self.socks
            .values()
            .filter(|s| {
                matches!(
                    s,
                    SimSock::Stream(SimStream {
                        connect: Connect::Pending { .. },
                        ..
                    })
                )
            })
            .count()
    }

    /// The flow id of the open stream whose peer is `peer`.
    pub fn stream_to(&self, peer: SocketAddr) -> Option<FlowId> {
        self.socks.iter().find_map(|(&id, s)| match s {
            SimSock::Stream(st) if st.peer == peer => Some(id),
            _ => None,
        })
    }

    /// The flow id of the open datagram socket whose peer is `peer`.
    pub fn dgram_to(&self, peer: SocketAddr) -> Option<FlowId> {
        self.socks.iter().find_map(|(&id, s)| match s {
            SimSock::Dgram(d) if d.peer == peer => Some(id),
            _ => None,
        })
    }

    /// The peer sends bytes on stream `id`.
    pub fn peer_send(&mut self, id: FlowId, data: &[u8]) {
        if let Some(s) = self.stream_mut(id) {
            s.from_peer.extend(data);
            self.event(id, true, false, false);
        }
    }

    /// The peer closes its side after what it sent.
    pub fn peer_fin(&mut self, id: FlowId) {
        if let Some(s) = self.stream_mut(id) {
            s.peer_fin = true;
            self.event(id, true, false, true);
        }
    }

    /// The peer resets the connection.
    pub fn peer_reset(&mut self, id: FlowId) {
        if let Some(s) = self.stream_mut(id) {
            s.peer_reset = true;
            self.event(id, true, true, true);
        }
    }

    /// The peer reads up to `max` bytes of what the engine wrote.
    pub fn peer_take(&mut self, id: FlowId, max: usize) -> Vec<u8> {
        if let Some(rest) = self.lingering.get_mut(&id) {
            let n = max.min(rest.len());
            let out: Vec<u8> = rest.drain(..n).collect();
            if rest.is_empty() {
                self.lingering.remove(&id);
            }
            return out;
        }
        let Some(s) = self.stream_mut(id) else {
            return Vec::new();
        };
        let n = max.min(s.to_peer.len());
        let out: Vec<u8> = s.to_peer.drain(..n).collect();
        if n > 0 && s.write_blocked {
            s.write_blocked = false;
            self.event(id, false, true, false);
        }
        out
    }

    /// A datagram arrives for datagram socket `id`.
    pub fn dgram_reply(&mut self, id: FlowId, data: &[u8]) {
        if let Some(SimSock::Dgram(d)) = self.socks.get_mut(&id) {
            d.inbox.push_back(data.to_vec());
            self.event(id, true, false, false);
        }
    }

    /// The host got ICMP port unreachable for socket `id`'s datagram.
    pub fn dgram_refused(&mut self, id: FlowId) {
        if let Some(SimSock::Dgram(d)) = self.socks.get_mut(&id) {
            d.refused = true;
            self.event(id, true, false, false);
        }
    }

    /// A client connects to TCP listener `id`.
    pub fn client_connect(&mut self, id: FlowId, client: SocketAddr) {
        if let Some(SimSock::Listener(l)) = self.socks.get_mut(&id) {
            l.clients.push_back(client);
            self.event(id, true, false, false);
        }
    }

    /// A client sends a datagram to UDP listener `id`.
    pub fn client_datagram(&mut self, id: FlowId, client: SocketAddr, data: &[u8]) {
        if let Some(SimSock::Listener(l)) = self.socks.get_mut(&id) {
            l.inbox.push_back((data.to_vec(), client));
            self.event(id, true, false, false);
        }
    }

    /// While stalled, the answer to a data call: `zero` (what "nothing
    /// moved" is for this call) or EINTR. `zero` None: the call is left
    /// alone by `Stall::Zero`.
    fn stalled<T>(&mut self, zero: Option<T>) -> Option<io::Result<T>> {
        let answer = match self.stall? {
            Stall::Zero => Ok(zero?),
            Stall::Interrupted => Err(io::ErrorKind::Interrupted.into()),
        };
        self.stalled_calls += 1;
        assert!(
            self.stalled_calls <= STALL_LIMIT,
            "the engine asked a stalled host {STALL_LIMIT} times: a loop retrying on it"
        );
        Some(answer)
    }

    fn open(&mut self, id: FlowId, sock: SimSock) -> io::Result<()> {
        if self.socks.len() >= self.fd_limit {
            return Err(errno(libc::EMFILE));
        }
        self.socks.insert(id, sock);
        Ok(())
    }
}

fn push_bounded<T>(v: &mut Vec<T>, item: T, max: usize) {
    if v.len() >= max {
        v.drain(..max / 2);
    }
    v.push(item);
}

fn new_stream(peer: SocketAddr, connect: Connect) -> SimStream {
    SimStream {
        peer,
        connect,
        to_peer: VecDeque::new(),
        from_peer: VecDeque::new(),
        peer_fin: false,
        peer_reset: false,
        shut_write: false,
        write_blocked: false,
    }
}

impl SimStream {
    /// Whether the connect has succeeded.
    pub fn connected(&self) -> bool {
        self.connect == Connect::Connected
    }

    /// Bytes written by the engine and not yet taken by the peer.
    pub fn unread(&self) -> usize {
        self.to_peer.len()
    }
}

impl Host for SimHost {
    fn tcp_connect(&mut self, id: FlowId, dst: SocketAddr) -> io::Result<()> {
        let outcome = *self
            .outcomes
            .get(&dst.ip())
            .unwrap_or(&self.default_outcome);
        let at = self.now + self.connect_delay;
        self.open(
            id,
            SimSock::Stream(new_stream(dst, Connect::Pending { outcome, at })),
        )
    }

    fn tcp_connected(&mut self, id: FlowId) -> io::Result<bool> {
        match self.stream(id).map(|s| s.connect) {
            Some(Connect::Connected) => Ok(true),
            Some(Connect::Pending { .. }) => Ok(false),
            Some(Connect::Failed(code)) => Err(errno(code)),
            None => Err(errno(libc::EBADF)),
        }
    }

    fn tcp_read(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(answer) = self.stalled(None) {
            return answer;
        }
        let s = self.stream_mut(id).ok_or_else(|| errno(libc::EBADF))?;
        if s.peer_reset {
            return Err(errno(libc::ECONNRESET));
        }
        if s.from_peer.is_empty() {
            return if s.peer_fin {
                Ok(0)
            } else {
                Err(would_block())
            };
        }
        let n = buf.len().min(s.from_peer.len());
        for (dst, src) in buf.iter_mut().zip(s.from_peer.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }

    fn tcp_write(&mut self, id: FlowId, buf: &[u8]) -> io::Result<usize> {
        if let Some(answer) = self.stalled(Some(0)) {
            return answer;
        }
        let limit = self.stream_limit;
        let trap = self.panic_on_write_to;
        let s = self.stream_mut(id).ok_or_else(|| errno(libc::EBADF))?;
        assert!(
            trap != Some(s.peer),
            "a simulated defect writing to {}",
            s.peer
        );
        if s.peer_reset {
            return Err(errno(libc::ECONNRESET));
        }
        if s.shut_write || s.connect != Connect::Connected {
            return Err(errno(libc::EPIPE));
        }
        let room = limit.saturating_sub(s.to_peer.len());
        if room == 0 {
            s.write_blocked = true;
            return Err(would_block());
        }
        let n = room.min(buf.len());
        s.to_peer.extend(&buf[..n]);
        Ok(n)
    }

    fn tcp_shutdown_write(&mut self, id: FlowId) {
        if let Some(s) = self.stream_mut(id) {
            s.shut_write = true;
        }
    }

    fn udp_open(&mut self, id: FlowId, dst: SocketAddr) -> io::Result<()> {
        self.open(
            id,
            SimSock::Dgram(SimDgram {
                peer: dst,
                ping: false,
                sent: Vec::new(),
                inbox: VecDeque::new(),
                refused: false,
            }),
        )
    }

    fn ping_open(&mut self, id: FlowId, dst: IpAddr) -> io::Result<()> {
        if !self.ping_allowed {
            return Err(errno(libc::EACCES));
        }
        self.open(
            id,
            SimSock::Dgram(SimDgram {
                peer: SocketAddr::new(dst, 0),
                ping: true,
                sent: Vec::new(),
                inbox: VecDeque::new(),
                refused: false,
            }),
        )
    }

    fn send(&mut self, id: FlowId, data: &[u8]) -> io::Result<usize> {
        if let Some(answer) = self.stalled(Some(0)) {
            return answer;
        }
        let Some(SimSock::Dgram(d)) = self.socks.get_mut(&id) else {
            return Err(errno(libc::EBADF));
        };
        if std::mem::take(&mut d.refused) {
            return Err(errno(libc::ECONNREFUSED));
        }
        push_bounded(&mut d.sent, data.to_vec(), MAX_SENT);
        Ok(data.len())
    }

    fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(answer) = self.stalled(Some(0)) {
            return answer;
        }
        let Some(SimSock::Dgram(d)) = self.socks.get_mut(&id) else {
            return Err(errno(libc::EBADF));
        };
        if std::mem::take(&mut d.refused) {
            return Err(errno(libc::ECONNREFUSED));
        }
        let data = d.inbox.pop_front().ok_or_else(would_block)?;
        // A datagram longer than the buffer is cut, as recv(2) does.
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    fn send_batch(&mut self, id: FlowId, datagrams: &[&[u8]]) -> io::Result<usize> {
        if let Some(answer) = self.stalled(Some(0)) {
            return answer;
        }
        let Some(SimSock::Dgram(d)) = self.socks.get_mut(&id) else {
            return Err(errno(libc::EBADF));
        };
        assert!(
            self.panic_on_write_to != Some(d.peer),
            "a simulated defect sending to {}",
            d.peer
        );
        // Like sendmmsg(2): a pending error ends the batch, and is
        // reported by this call only when nothing went before it.
        if std::mem::take(&mut d.refused) {
            return Err(errno(libc::ECONNREFUSED));
        }
        let batch = &datagrams[..datagrams.len().min(SEND_SLOTS)];
        for data in batch {
            push_bounded(&mut d.sent, data.to_vec(), MAX_SENT);
        }
        Ok(batch.len())
    }

    fn recv_batch(&mut self, id: FlowId, batch: &mut DgramBatch) -> io::Result<usize> {
        if let Some(answer) = self.stalled(Some(0)) {
            return answer;
        }
        let Some(SimSock::Dgram(d)) = self.socks.get_mut(&id) else {
            return Err(errno(libc::EBADF));
        };
        let mut lens = [0; DGRAM_SLOTS];
        let mut count = 0;
        for slot in batch.slots_mut() {
            // Like recvmmsg(2): an error ends the batch, and is reported
            // by this call only when nothing came before it.
            if d.refused {
                if count == 0 {
                    d.refused = false;
                    return Err(errno(libc::ECONNREFUSED));
                }
                break;
            }
            let Some(data) = d.inbox.pop_front() else {
                break;
            };
            let n = data.len().min(slot.len());
            slot[..n].copy_from_slice(&data[..n]);
            lens[count] = n;
            count += 1;
        }
        if count == 0 {
            return Err(would_block());
        }
        for (i, &n) in lens[..count].iter().enumerate() {
            batch.set_len(i, n);
        }
        Ok(count)
    }

    fn listen(&mut self, id: FlowId, proto: Proto, addr: SocketAddr) -> io::Result<SocketAddr> {
        let mut addr = addr;
        if addr.port() == 0 {
            while self
                .bound
                .contains(&(proto, SocketAddr::new(addr.ip(), self.next_port)))
            {
                self.next_port = self.next_port.wrapping_add(1).max(EPHEMERAL_START);
            }
            addr.set_port(self.next_port);
        }
        if !self.bound.insert((proto, addr)) {
            return Err(errno(libc::EADDRINUSE));
        }
        let l = SimListener {
            proto,
            addr,
            clients: VecDeque::new(),
            inbox: VecDeque::new(),
            sent: Vec::new(),
        };
        if let Err(e) = self.open(id, SimSock::Listener(l)) {
            self.bound.remove(&(proto, addr));
            return Err(e);
        }
        Ok(addr)
    }

    fn accept(&mut self, listener: FlowId, id: FlowId) -> io::Result<SocketAddr> {
        if let Some(answer) = self.stalled(None) {
            return answer;
        }
        if self.socks.len() >= self.fd_limit {
            return Err(errno(libc::EMFILE));
        }
        let Some(SimSock::Listener(l)) = self.socks.get_mut(&listener) else {
            return Err(errno(libc::EBADF));
        };
        let client = l.clients.pop_front().ok_or_else(would_block)?;
        self.open(id, SimSock::Stream(new_stream(client, Connect::Connected)))?;
        Ok(client)
    }

    fn recv_from(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        if let Some(answer) = self.stalled(None) {
            return answer;
        }
        let Some(SimSock::Listener(l)) = self.socks.get_mut(&id) else {
            return Err(errno(libc::EBADF));
        };
        let (data, from) = l.inbox.pop_front().ok_or_else(would_block)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }

    fn send_to(&mut self, id: FlowId, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        if let Some(answer) = self.stalled(Some(0)) {
            return answer;
        }
        let Some(SimSock::Listener(l)) = self.socks.get_mut(&id) else {
            return Err(errno(libc::EBADF));
        };
        push_bounded(&mut l.sent, (data.to_vec(), to), MAX_SENT);
        Ok(data.len())
    }

    fn close(&mut self, id: FlowId, reset: bool) {
        if let Some(sock) = self.socks.remove(&id) {
            match sock {
                SimSock::Listener(l) => {
                    self.bound.remove(&(l.proto, l.addr));
                }
                SimSock::Stream(s)
                    if !reset && !s.to_peer.is_empty() && self.lingering.len() < MAX_CLOSED =>
                {
                    self.lingering.insert(id, s.to_peer);
                }
                _ => {}
            }
            push_bounded(&mut self.closed, (id, reset), MAX_CLOSED);
        }
    }

    fn nameserver(&mut self, _now: Instant) -> Option<IpAddr> {
        self.nameserver
    }
}
