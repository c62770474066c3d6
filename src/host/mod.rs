//! The host side of every flow, behind one small trait.
//!
//! The engine decides *what* to do with the guest's traffic; a [`Host`]
//! does it with sockets: TCP connects, connected UDP and ICMP echo
//! sockets, listeners for forwards, and the resolver address. Each socket
//! is named by the engine's flow id, and readiness comes back to the
//! engine keyed by that id, so the engine itself performs no syscall.
//!
//! [`NetHost`] is the real one (mio sockets in the caller's network
//! namespace); `SimHost` is an in-memory one with scripted outcomes and
//! a virtual clock, for scenario tests and fuzzing (built for tests and
//! with the `test-support` feature only).

mod net;
#[cfg(any(test, feature = "test-support"))]
pub mod sim;

use std::io;
use std::net::{IpAddr, SocketAddr};

use smoltcp::time::Instant;
use thiserror::Error;

use crate::pages::Pages;

pub use net::{
    NetHost, Outbound, OutboundDevices, OutboundError, Splice, resolve_outbound_v4,
    resolve_outbound_v6,
};
#[cfg(any(test, feature = "test-support"))]
pub use sim::SimHost;

/// The engine's name for a flow, and for the host socket that carries it.
pub type FlowId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Readiness of one host socket, as the event loop saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its side (EPOLLRDHUP) or the socket failed.
    pub read_closed: bool,
}

/// Everything the engine asks of the host. Calls never block: a socket
/// that cannot make progress says `WouldBlock`, and readiness is reported
/// later through `Engine::handle_host_event` with the same flow id.
pub trait Host {
    /// Start a non-blocking TCP connect for flow `id`; completion (or
    /// failure) shows as readiness.
    fn tcp_connect(&mut self, id: FlowId, dst: SocketAddr) -> io::Result<()>;
    /// Where flow `id`'s connect stands: `Ok(true)` connected, `Ok(false)`
    /// still under way, `Err` failed (the error the guest should hear of).
    fn tcp_connected(&mut self, id: FlowId) -> io::Result<bool>;
    /// Read from flow `id`'s stream; `Ok(0)` is the peer's FIN.
    fn tcp_read(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<usize>;
    fn tcp_write(&mut self, id: FlowId, buf: &[u8]) -> io::Result<usize>;
    /// Send FIN after what was written.
    fn tcp_shutdown_write(&mut self, id: FlowId);
    /// A UDP socket connected to `dst`.
    fn udp_open(&mut self, id: FlowId, dst: SocketAddr) -> io::Result<()>;
    /// An unprivileged ICMP echo socket connected to `dst`.
    fn ping_open(&mut self, id: FlowId, dst: IpAddr) -> io::Result<()>;
    /// Send on a connected datagram socket (UDP or ping).
    fn send(&mut self, id: FlowId, data: &[u8]) -> io::Result<usize>;
    /// Send datagrams in order on a connected datagram socket, as many
    /// as go in one call (at most `SEND_SLOTS`); returns
    /// how many went (at least one), or the error `send` would give for
    /// the first. An error after some datagrams waits for the next call.
    fn send_batch(&mut self, id: FlowId, datagrams: &[&[u8]]) -> io::Result<usize>;
    /// Receive on a connected datagram socket (UDP or ping).
    fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<usize>;
    /// Receive up to `DGRAM_SLOTS` datagrams on a connected datagram
    /// socket in one go; returns how many (at least one), or the error
    /// `recv` would give for the first. An error after some datagrams
    /// waits for the next call.
    fn recv_batch(&mut self, id: FlowId, batch: &mut DgramBatch) -> io::Result<usize>;
    /// A listener for a forward; returns the address really bound (port 0
    /// picks one).
    fn listen(&mut self, id: FlowId, proto: Proto, addr: SocketAddr) -> io::Result<SocketAddr>;
    /// Accept a client of TCP listener `listener` as flow `id`; returns
    /// the client's address.
    fn accept(&mut self, listener: FlowId, id: FlowId) -> io::Result<SocketAddr>;
    /// Whether the host carries accepted client `id` to `to` (an
    /// address in the guest's namespace) by itself, without the engine:
    /// pasta's splice of host loopback clients. If so the engine forgets
    /// `id`.
    fn carry_directly(&mut self, _id: FlowId, _client: SocketAddr, _to: SocketAddr) -> bool {
        false
    }
    /// Receive a datagram on UDP listener `id`.
    fn recv_from(&mut self, id: FlowId, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// Send a datagram from UDP listener `id`.
    fn send_to(&mut self, id: FlowId, data: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// Close flow `id`'s socket; with `reset` a TCP stream sends RST
    /// instead of FIN. Closing an unknown id does nothing.
    fn close(&mut self, id: FlowId, reset: bool);
    /// The host's DNS resolver, if it has one now.
    fn nameserver(&mut self, now: Instant) -> Option<IpAddr>;
}

/// Datagrams a `recv_batch` call may return at once: one syscall per
/// this many instead of one per datagram.
pub const DGRAM_SLOTS: usize = 16;
/// Datagrams a `send_batch` call sends at most.
pub const SEND_SLOTS: usize = 64;

/// Each slot holds the largest UDP payload, so no datagram is ever cut.
const DGRAM_SLOT_LEN: usize = 65536;

/// Room for a batch of received datagrams, each in a slot of its own.
///
/// The memory is mapped on first use (`Pages`), so only the pages
/// datagrams actually fill become resident: an instance that carries no
/// UDP pays nothing, and a stream of small datagrams touches one page
/// per slot.
#[derive(Default)]
pub struct DgramBatch {
    buf: Pages,
    lens: [usize; DGRAM_SLOTS],
}

impl DgramBatch {
    /// The slots to receive into, in order.
    pub fn slots_mut(&mut self) -> std::slice::ChunksExactMut<'_, u8> {
        if self.buf.is_empty() {
            self.buf = Pages::zeroed(DGRAM_SLOTS * DGRAM_SLOT_LEN);
        }
        self.buf.chunks_exact_mut(DGRAM_SLOT_LEN)
    }

    /// Record that slot `i` received `len` bytes.
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len.min(DGRAM_SLOT_LEN);
    }

    /// The datagram in slot `i`, as long as `set_len` said.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let start = i * DGRAM_SLOT_LEN;
        &self.buf[start..start + self.lens[i]]
    }
}

/// Most datagrams in one train (one send with UDP segmentation offload,
/// or one tap write the kernel cuts): the kernel's `UDP_MAX_SEGMENTS`
/// was 64 before Linux 6.10.
const TRAIN_SEGMENTS: usize = 64;
/// Most payload bytes in one train: what an IP packet holds after its
/// headers, with room to spare.
const TRAIN_BYTES: usize = 65_000;

/// How many datagrams from the start can go as one train: all as long
/// as the first, but the last, which may be shorter.
pub fn train_len(datagrams: &[&[u8]]) -> usize {
    let Some(size) = datagrams.first().map(|d| d.len()) else {
        return 0;
    };
    let (mut count, mut total) = (0, 0);
    for d in datagrams.iter().take(TRAIN_SEGMENTS) {
        if size == 0 || d.len() > size || total + d.len() > TRAIN_BYTES {
            break;
        }
        count += 1;
        total += d.len();
        if d.len() < size {
            break;
        }
    }
    count
}

/// How many times in a row a call interrupted by a signal (EINTR) is
/// made again before the caller leaves it for its next turn: a host that
/// keeps answering so must not hold the event loop.
pub const INTERRUPT_RETRIES: usize = 4;

/// One policy for every loop that reads a host socket until it is empty:
/// what to do with the result of one read.
pub enum Step<T> {
    Got(T),
    /// Interrupted: try the same read again (at most
    /// `INTERRUPT_RETRIES` times in a row).
    Retry,
    /// Drained: wait for the next readiness event.
    Drained,
    /// Any other error: stop for now (an error that repeats must not
    /// spin); the caller decides whether it means anything to the guest.
    Failed(HostError),
}

impl<T> From<io::Result<T>> for Step<T> {
    fn from(r: io::Result<T>) -> Self {
        match r {
            Ok(v) => Step::Got(v),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Retry,
            Err(e) => Step::Failed(e.into()),
        }
    }
}

/// A host socket's failure, in the terms the engine answers the guest in:
/// a refused connect becomes RST, an unreachable or silent destination
/// ICMP destination unreachable, the rest a log line. Built from the
/// `io::Error` a [`Host`] returns in this one place, so the engine never
/// matches errno values itself.
#[derive(Debug, Error)]
pub enum HostError {
    /// The destination refused: RST to our SYN, or ICMP port unreachable
    /// for an earlier datagram.
    #[error("connection refused")]
    Refused,
    /// No route to the destination's network.
    #[error("network unreachable")]
    NetUnreachable,
    /// No route to the destination host (or its neighbour did not
    /// answer).
    #[error("host unreachable")]
    HostUnreachable,
    /// The destination never answered.
    #[error("timed out")]
    TimedOut,
    /// The peer reset the connection.
    #[error("connection reset")]
    Reset,
    /// Anything else; it means nothing to the guest beyond the flow's end.
    #[error(transparent)]
    Other(io::Error),
}

impl From<io::Error> for HostError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => HostError::Refused,
            io::ErrorKind::NetworkUnreachable => HostError::NetUnreachable,
            io::ErrorKind::HostUnreachable => HostError::HostUnreachable,
            io::ErrorKind::TimedOut => HostError::TimedOut,
            io::ErrorKind::ConnectionReset => HostError::Reset,
            _ => HostError::Other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_train_is_one_size_but_a_shorter_last() {
        let run = |sizes: &[usize]| {
            let bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
            train_len(&bufs.iter().map(Vec::as_slice).collect::<Vec<_>>())
        };
        assert_eq!(run(&[]), 0);
        assert_eq!(run(&[100]), 1);
        assert_eq!(run(&[100, 100, 100, 40, 100]), 4);
        assert_eq!(run(&[100, 200]), 1);
        assert_eq!(run(&[0, 0]), 0);
        assert_eq!(run(&[1000; 100]), TRAIN_SEGMENTS);
        assert_eq!(run(&[1400; 64]), TRAIN_BYTES / 1400);
    }

    #[test]
    fn host_errors_are_typed_by_what_the_guest_hears() {
        let of = |code| HostError::from(io::Error::from_raw_os_error(code));
        assert!(matches!(of(libc::ECONNREFUSED), HostError::Refused));
        assert!(matches!(of(libc::ENETUNREACH), HostError::NetUnreachable));
        assert!(matches!(of(libc::EHOSTUNREACH), HostError::HostUnreachable));
        assert!(matches!(of(libc::ETIMEDOUT), HostError::TimedOut));
        assert!(matches!(of(libc::ECONNRESET), HostError::Reset));
        assert!(matches!(of(libc::EMFILE), HostError::Other(_)));
        assert_eq!(of(libc::ECONNREFUSED).to_string(), "connection refused");
    }
}
