//! A socket-to-socket relay: pasta's `-T`/`-U`, where a client on the
//! namespace's loopback reaches a server on the host's loopback. The
//! listening sockets were made inside the namespace (by setup); each
//! connection or datagram flow they bring gets an ordinary socket in
//! netferry's own namespace toward the host's loopback at the mapped
//! port. TCP bytes pass between the two through a bounded kernel pipe
//! per direction with splice(2), as pasta's do (through bounded buffers
//! of our own where the kernel refuses that); datagrams through one
//! buffer. No frames, no engine: this is loopback to loopback.
//!
//! As pasta does: the destination is the loopback address the client
//! addressed (127.0.0.1 or ::1), a client that is not on loopback is
//! refused, and a UDP flow keeps the client's source port where the host
//! allows it. Runtime faults end one connection or drop one datagram,
//! never the process. It must not block: every socket is non-blocking
//! and each wake-up moves at most what the pipes and buffers hold.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use crate::tokens::{RELAY_BASE, RELAY_END};

/// Bytes buffered per direction of a TCP connection: the bound on what
/// one connection holds, large enough to keep loopback busy.
const TCP_BUFFER: usize = 128 * 1024;
/// Largest datagram carried.
const DATAGRAM_MAX: usize = 65535;
/// Datagrams moved per socket per wake-up, so one busy flow cannot
/// starve the rest of the loop.
const DATAGRAM_BATCH: usize = 64;

/// The transport of a relayed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayProto {
    Tcp,
    Udp,
}

/// One relayed port: a socket made inside the namespace (listening for
/// TCP, bound for UDP) and the host loopback port it leads to.
#[derive(Debug)]
pub struct RelayRule {
    pub proto: RelayProto,
    pub socket: OwnedFd,
    pub to_port: u16,
}

/// Bytes held per direction when they pass through a kernel pipe: asked
/// of F_SETPIPE_SZ; the kernel may give less (the pipe's default).
const PIPE_SIZE: usize = 256 * 1024;
/// What a pipe holds when the kernel tells neither its new nor its
/// current size: Linux's default.
const PIPE_DEFAULT: usize = 64 * 1024;

/// Where a direction's bytes wait between the two sockets.
enum Store {
    /// A kernel pipe, filled and drained with splice(2): the bytes never
    /// enter netferry's memory, which halves the CPU a byte costs.
    Kernel {
        read: OwnedFd,
        write: OwnedFd,
        /// Bytes in the pipe.
        held: usize,
        /// The pipe's size: the bound on `held`.
        size: usize,
    },
    /// netferry's own buffer, read into and written from: where the
    /// kernel refuses a pipe or splice.
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

impl Store {
    /// A kernel pipe where the kernel gives one, else a buffer.
    fn new() -> Self {
        match kernel_pipe() {
            Ok((read, write, size)) => Store::Kernel {
                read,
                write,
                held: 0,
                size,
            },
            Err(e) => {
                log::debug!("relay: no pipe for splice ({e}); copying through a buffer");
                Store::buffer()
            }
        }
    }

    fn buffer() -> Self {
        Store::Buffer {
            buf: vec![0; TCP_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes waiting for the destination.
    fn held(&self) -> usize {
        match self {
            Store::Kernel { held, .. } => *held,
            Store::Buffer { start, end, .. } => end - start,
        }
    }
}

/// A non-blocking pipe of up to [`PIPE_SIZE`] bytes, and its size.
fn kernel_pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // Past the user's pipe allowance (pipe-user-pages-soft) the kernel
    // refuses a larger pipe: the default one still serves.
    let asked = c_int::try_from(PIPE_SIZE).unwrap_or(c_int::MAX);
    let size = fcntl(&write, FcntlArg::F_SETPIPE_SZ(asked))
        .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(PIPE_DEFAULT);
    Ok((read, write, size))
}

/// Whether an error from splice(2) means the kernel will not splice
/// these fds (rather than a fault of the connection).
fn splice_refused(e: nix::Error) -> bool {
    matches!(e, nix::Error::EINVAL | nix::Error::ENOSYS)
}

fn splice_flags() -> nix::fcntl::SpliceFFlags {
    use nix::fcntl::SpliceFFlags;
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

/// Bytes on their way from one socket to another.
struct Pipe {
    store: Store,
    /// The source has no more to give.
    eof: bool,
    /// The destination was told so (its write side is shut).
    shut: bool,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            store: Store::new(),
            eof: false,
            shut: false,
        }
    }

    /// Take from `from` while there is room; whether anything moved.
    fn fill(&mut self, from: &TcpStream) -> io::Result<bool> {
        let mut moved = false;
        while !self.eof {
            let got = match &mut self.store {
                Store::Kernel {
                    write, held, size, ..
                } => {
                    if *held >= *size {
                        break;
                    }
                    let room = *size - *held;
                    match nix::fcntl::splice(from, None, &*write, None, room, splice_flags()) {
                        Ok(n) => {
                            *held += n;
                            Ok(n)
                        }
                        // Nothing ever went through this pipe: carry the
                        // connection through a buffer instead.
                        Err(e) if splice_refused(e) && *held == 0 => {
                            log::debug!("relay: splice refused ({e}); copying through a buffer");
                            self.store = Store::buffer();
                            continue;
                        }
                        Err(e) => Err(io::Error::from(e)),
                    }
                }
                Store::Buffer { buf, end, .. } => {
                    if *end >= buf.len() {
                        break;
                    }
                    let mut from = from;
                    from.read(&mut buf[*end..]).inspect(|&n| *end += n)
                }
            };
            match got {
                Ok(0) => {
                    self.eof = true;
                    moved = true;
                }
                Ok(_) => moved = true,
                // For a pipe, also a pipe whose slots are all taken by
                // small segments: draining it retries (see `pump_pair`).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    /// Give `to` what there is; once the source is done and all is
    /// given, shut `to`'s write side. Whether anything moved.
    fn drain(&mut self, to: &TcpStream) -> io::Result<bool> {
        let mut moved = false;
        while self.store.held() > 0 {
            let put = match &mut self.store {
                Store::Kernel { read, held, .. } => {
                    match nix::fcntl::splice(&*read, None, to, None, *held, splice_flags()) {
                        Ok(n) => {
                            *held -= n.min(*held);
                            Ok(n)
                        }
                        Err(e) => Err(io::Error::from(e)),
                    }
                }
                Store::Buffer { buf, start, end } => {
                    let mut to = to;
                    to.write(&buf[*start..*end]).inspect(|&n| *start += n)
                }
            };
            match put {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.store.held() == 0 {
            if let Store::Buffer { start, end, .. } = &mut self.store {
                *start = 0;
                *end = 0;
            }
            if self.eof && !self.shut {
                // The peer may have gone already; nothing to tell then.
                let _ = to.shutdown(Shutdown::Write);
                self.shut = true;
                moved = true;
            }
        } else if let Store::Buffer { buf, start, end } = &mut self.store
            && *end == buf.len()
            && *start > 0
        {
            buf.copy_within(*start..*end, 0);
            *end -= *start;
            *start = 0;
        }
        Ok(moved)
    }
}

/// A relayed TCP connection: the client's, accepted (inside the
/// namespace for `-T`, on the host for the `-t` splice), and ours to the
/// server, connected on the other side.
struct Pair {
    client: TcpStream,
    server: TcpStream,
    connected: bool,
    to_server: Pipe,
    to_client: Pipe,
}

enum Entry {
    TcpListener {
        listener: TcpListener,
        to_port: u16,
    },
    Tcp(Box<Pair>),
    UdpListener {
        socket: UdpSocket,
        to_port: u16,
        /// The flow of each client, by its address.
        flows: HashMap<SocketAddr, usize>,
    },
    UdpFlow {
        socket: UdpSocket,
        listener: usize,
        client: SocketAddr,
        last: Cell<Instant>,
    },
}

/// Every relayed port and what it carries. Each entry takes two tokens
/// from [`RELAY_BASE`]: `2 * slot` and, for a TCP pair's host side,
/// `2 * slot + 1`.
pub struct Relay {
    registry: Registry,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    datagram: Box<[u8]>,
    udp_timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Inside,
    Outside,
}

fn token(slot: usize, side: Side) -> Token {
    Token(RELAY_BASE + 2 * slot + usize::from(side == Side::Outside))
}

/// A client's loopback address as the host should see it: IPv4-mapped
/// addresses (from the dual-stack listeners) as IPv4.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The host's loopback address of `client`'s family.
fn loopback_like(client: IpAddr) -> IpAddr {
    match unmapped(client) {
        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    }
}

impl Relay {
    /// `udp_timeout`: how long a UDP flow lives without traffic.
    pub fn new(registry: Registry, udp_timeout: Duration) -> Self {
        Relay {
            registry,
            slots: Vec::new(),
            free: Vec::new(),
            datagram: vec![0; DATAGRAM_MAX].into_boxed_slice(),
            udp_timeout,
        }
    }

    pub fn is_ours(token: Token) -> bool {
        (RELAY_BASE..RELAY_END).contains(&token.0)
    }

    /// Start relaying `rule`'s port; the entry, for [`Relay::close`].
    pub fn add(&mut self, rule: RelayRule) -> io::Result<usize> {
        let entry = match rule.proto {
            RelayProto::Tcp => {
                let std = std::net::TcpListener::from(rule.socket);
                std.set_nonblocking(true)?;
                Entry::TcpListener {
                    listener: TcpListener::from_std(std),
                    to_port: rule.to_port,
                }
            }
            RelayProto::Udp => {
                let std = std::net::UdpSocket::from(rule.socket);
                std.set_nonblocking(true)?;
                Entry::UdpListener {
                    socket: UdpSocket::from_std(std),
                    to_port: rule.to_port,
                    flows: HashMap::new(),
                }
            }
        };
        self.insert(entry)
    }

    /// Stop relaying the port `entry` (from [`Relay::add`]) listens on;
    /// connections it carries already go on, as pasta's do.
    pub fn close(&mut self, entry: usize) {
        if let Some(Some(Entry::TcpListener { .. } | Entry::UdpListener { .. })) =
            self.slots.get(entry)
        {
            self.remove(entry);
        }
    }

    /// Connect `server`, an unconnected TCP socket, to `to`, and carry
    /// bytes between it and `client`, accepted elsewhere: pasta's `-t`
    /// splice, a host loopback client and a socket made inside the
    /// namespace.
    pub fn carry(&mut self, client: TcpStream, server: OwnedFd, to: SocketAddr) -> io::Result<()> {
        use nix::sys::socket::{SockaddrStorage, connect};
        match connect(server.as_raw_fd(), &SockaddrStorage::from(to)) {
            Ok(()) | Err(nix::Error::EINPROGRESS) => {}
            Err(e) => {
                reset_on_close(&client);
                return Err(e.into());
            }
        }
        let server = TcpStream::from_std(std::net::TcpStream::from(server));
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let pair = Pair {
            client,
            server,
            connected: false,
            to_server: Pipe::new(),
            to_client: Pipe::new(),
        };
        self.insert(Entry::Tcp(Box::new(pair))).map(drop)
    }

    fn insert(&mut self, mut entry: Entry) -> io::Result<usize> {
        let slot = self.free.pop().unwrap_or(self.slots.len());
        if RELAY_BASE + 2 * slot + 1 >= RELAY_END {
            self.free.push(slot);
            return Err(io::Error::other("no tokens left for relayed sockets"));
        }
        let both = Interest::READABLE | Interest::WRITABLE;
        let registered = match &mut entry {
            Entry::TcpListener { listener, .. } => {
                self.registry
                    .register(listener, token(slot, Side::Inside), Interest::READABLE)
            }
            Entry::Tcp(pair) => self
                .registry
                .register(&mut pair.client, token(slot, Side::Inside), both)
                .and_then(|()| {
                    self.registry
                        .register(&mut pair.server, token(slot, Side::Outside), both)
                }),
            Entry::UdpListener { socket, .. } | Entry::UdpFlow { socket, .. } => self
                .registry
                .register(socket, token(slot, Side::Inside), Interest::READABLE),
        };
        if let Err(e) = registered {
            self.free.push(slot);
            return Err(e);
        }
        if slot == self.slots.len() {
            self.slots.push(Some(entry));
        } else {
            self.slots[slot] = Some(entry);
        }
        Ok(slot)
    }

    fn remove(&mut self, slot: usize) {
        let Some(entry) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // Dropping a socket takes it out of epoll as well; deregistering
        // first keeps mio's bookkeeping honest.
        match entry {
            Entry::TcpListener { mut listener, .. } => {
                let _ = self.registry.deregister(&mut listener);
            }
            Entry::Tcp(mut pair) => {
                let _ = self.registry.deregister(&mut pair.client);
                let _ = self.registry.deregister(&mut pair.server);
            }
            Entry::UdpListener {
                mut socket, flows, ..
            } => {
                let _ = self.registry.deregister(&mut socket);
                for flow in flows.into_values() {
                    self.remove(flow);
                }
            }
            Entry::UdpFlow {
                mut socket,
                listener,
                client,
                ..
            } => {
                let _ = self.registry.deregister(&mut socket);
                if let Some(Some(Entry::UdpListener { flows, .. })) = self.slots.get_mut(listener) {
                    flows.remove(&client);
                }
            }
        }
        self.free.push(slot);
    }

    /// Serve whatever `token` says is ready.
    pub fn handle(&mut self, token: Token) {
        let Some(slot) = token.0.checked_sub(RELAY_BASE).map(|t| t / 2) else {
            return;
        };
        match self.slots.get(slot) {
            Some(Some(Entry::TcpListener { .. })) => self.accept(slot),
            Some(Some(Entry::Tcp(_))) => self.pump(slot),
            Some(Some(Entry::UdpListener { .. })) => self.carry_out(slot),
            Some(Some(Entry::UdpFlow { .. })) => self.carry_back(slot),
            Some(None) | None => {}
        }
    }

    fn accept(&mut self, slot: usize) {
        loop {
            let Some(Some(Entry::TcpListener { listener, to_port })) = self.slots.get(slot) else {
                return;
            };
            let to_port = *to_port;
            let (inside, client) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("relay: accept failed: {e}");
                    return;
                }
            };
            // The loopback address the client addressed, on the host.
            let local = inside.local_addr().map(|a| unmapped(a.ip()));
            let target = match local {
                Ok(ip) if ip.is_loopback() && unmapped(client.ip()).is_loopback() => {
                    SocketAddr::new(ip, to_port)
                }
                other => {
                    log::debug!("relay: refusing {client} (to {other:?}): not on loopback");
                    continue;
                }
            };
            let outside = match TcpStream::connect(target) {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("relay: connecting to {target} failed: {e}");
                    continue;
                }
            };
            let _ = inside.set_nodelay(true);
            let _ = outside.set_nodelay(true);
            let pair = Pair {
                client: inside,
                server: outside,
                connected: false,
                to_server: Pipe::new(),
                to_client: Pipe::new(),
            };
            match self.insert(Entry::Tcp(Box::new(pair))) {
                Ok(p) => log::debug!("relay: {client} -> {target} (entry {p})"),
                Err(e) => log::debug!("relay: cannot carry {client}: {e}"),
            }
        }
    }

    /// Move what can move between a pair's sockets; close the pair when
    /// both directions are done or one side failed.
    fn pump(&mut self, slot: usize) {
        let Some(Some(Entry::Tcp(pair))) = self.slots.get_mut(slot) else {
            return;
        };
        let done = match pump_pair(pair) {
            Ok(done) => done,
            Err(e) => {
                // A reset (or a refused connect) on one side is a reset
                // on the other, not an orderly close.
                log::debug!("relay: connection ended: {e}");
                reset_on_close(&pair.client);
                reset_on_close(&pair.server);
                true
            }
        };
        if done {
            self.remove(slot);
        }
    }

    fn carry_out(&mut self, slot: usize) {
        for _ in 0..DATAGRAM_BATCH {
            let Some(Some(Entry::UdpListener {
                socket,
                to_port,
                flows,
            })) = self.slots.get(slot)
            else {
                return;
            };
            let (len, client) = match socket.recv_from(&mut self.datagram) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("relay: UDP receive failed: {e}");
                    return;
                }
            };
            if !unmapped(client.ip()).is_loopback() {
                log::debug!("relay: dropping a datagram from {client}: not on loopback");
                continue;
            }
            let target = SocketAddr::new(loopback_like(client.ip()), *to_port);
            let flow = match flows.get(&client).copied() {
                Some(flow) => flow,
                None => match self.new_flow(slot, client, target) {
                    Ok(flow) => flow,
                    Err(e) => {
                        log::debug!("relay: no flow for {client} to {target}: {e}");
                        continue;
                    }
                },
            };
            if let Some(Some(Entry::UdpFlow { socket, last, .. })) = self.slots.get(flow) {
                last.set(Instant::now());
                if let Err(e) = socket.send(&self.datagram[..len]) {
                    log::debug!("relay: datagram to {target} dropped: {e}");
                }
            }
        }
    }

    /// A socket toward `target` for `client`, from the client's own port
    /// where the host has it free, as pasta keeps it.
    fn new_flow(
        &mut self,
        listener: usize,
        client: SocketAddr,
        target: SocketAddr,
    ) -> io::Result<usize> {
        let socket = match UdpSocket::bind(SocketAddr::new(target.ip(), client.port())) {
            Ok(s) => s,
            Err(_) => UdpSocket::bind(SocketAddr::new(target.ip(), 0))?,
        };
        socket.connect(target)?;
        let flow = self.insert(Entry::UdpFlow {
            socket,
            listener,
            client,
            last: Cell::new(Instant::now()),
        })?;
        if let Some(Some(Entry::UdpListener { flows, .. })) = self.slots.get_mut(listener) {
            flows.insert(client, flow);
        }
        Ok(flow)
    }

    fn carry_back(&mut self, slot: usize) {
        let Some(Some(Entry::UdpFlow {
            socket,
            listener,
            client,
            last,
        })) = self.slots.get(slot)
        else {
            return;
        };
        let Some(Some(Entry::UdpListener { socket: inside, .. })) = self.slots.get(*listener)
        else {
            return;
        };
        for _ in 0..DATAGRAM_BATCH {
            let len = match socket.recv(&mut self.datagram) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A refused port (ICMP) and the like: the client's to see
                // as silence, as with any lost datagram.
                Err(e) => {
                    log::debug!("relay: UDP receive for {client} failed: {e}");
                    return;
                }
            };
            last.set(Instant::now());
            if let Err(e) = inside.send_to(&self.datagram[..len], *client) {
                log::debug!("relay: datagram to {client} dropped: {e}");
            }
        }
    }

    /// End UDP flows idle for longer than the timeout; called about once
    /// a second.
    pub fn expire(&mut self, now: Instant) {
        let idle: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| match e {
                Some(Entry::UdpFlow { last, .. })
                    if now.saturating_duration_since(last.get()) > self.udp_timeout =>
                {
                    Some(slot)
                }
                _ => None,
            })
            .collect();
        for slot in idle {
            self.remove(slot);
        }
    }
}

/// Close `client` with RST: what it hears when its server cannot be
/// reached.
pub fn refuse(client: TcpStream) {
    reset_on_close(&client);
}

/// SO_LINGER with a zero timeout: close() sends RST.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger);
}

/// Whether the pair is done with.
fn pump_pair(pair: &mut Pair) -> io::Result<bool> {
    if !pair.connected {
        if let Some(e) = pair.server.take_error()? {
            return Err(e);
        }
        match pair.server.peer_addr() {
            Ok(_) => pair.connected = true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => return Err(e),
        }
    }
    loop {
        let mut moved = pair.to_server.fill(&pair.client)?;
        if pair.connected {
            moved |= pair.to_server.drain(&pair.server)?;
            moved |= pair.to_client.fill(&pair.server)?;
            moved |= pair.to_client.drain(&pair.client)?;
        }
        if !moved {
            break;
        }
    }
    log::trace!(
        "relay: to server {} held eof {} shut {}, to client {} held eof {} shut {}",
        pair.to_server.store.held(),
        pair.to_server.eof,
        pair.to_server.shut,
        pair.to_client.store.held(),
        pair.to_client.eof,
        pair.to_client.shut
    );
    Ok(pair.to_server.shut && pair.to_client.shut)
}
