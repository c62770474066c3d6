//! Guest TCP connections, proxied through host TCP sockets.
//!
//! A guest SYN to a new destination starts a non-blocking host connect and
//! a smoltcp socket listening on that exact destination, with its SYN-ACK
//! held until the host side connects. A refused connect becomes a RST, an
//! unreachable one an ICMP error. Once both sides are up, data moves
//! straight between smoltcp's buffers and the host socket, and each side
//! stops reading while the other is full.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, Icmpv4DstUnreachable, IpListenEndpoint, IpProtocol, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::flows::{Flow, FlowKey, Kind, TcpFlow};
use super::{Engine, FrameSink, HOP_LIMIT, Route};
use crate::host;

/// Bytes of the offending packet an ICMP error quotes: the IP header
/// (without options) and the first 8 bytes of its payload.
const QUOTE_LEN: usize = 28;

enum Pump {
    More,
    Blocked,
    Eof,
    Failed(io::Error),
}

impl Engine {
    pub(super) fn process_tcp<S: FrameSink>(
        &mut self,
        now: Instant,
        frame: &[u8],
        ip: &Ipv4Repr,
        payload: &[u8],
        sink: &mut S,
    ) {
        let Ok(tcp) = TcpPacket::new_checked(payload) else {
            log::trace!("dropping a malformed TCP segment");
            return;
        };
        let key = FlowKey {
            guest: SocketAddrV4::new(ip.src_addr, tcp.src_port()),
            dst: SocketAddrV4::new(ip.dst_addr, tcp.dst_port()),
        };
        if let Some(slot) = self.flows.find(Kind::Tcp, &key) {
            self.flows.mark_dirty(slot);
            self.feed_smoltcp(now, frame, sink);
            return;
        }
        if tcp.syn() && !tcp.ack() && !tcp.rst() {
            self.open_tcp(now, frame, key, tcp.seq_number(), sink);
        } else if !tcp.rst() {
            // A segment of no flow we know: smoltcp answers it with RST.
            self.feed_smoltcp(now, frame, sink);
        }
    }

    fn open_tcp<S: FrameSink>(
        &mut self,
        now: Instant,
        frame: &[u8],
        key: FlowKey,
        syn_seq: TcpSeqNumber,
        sink: &mut S,
    ) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let guest_mac = eth.src_addr();
        let quote = &eth.payload()[..QUOTE_LEN.min(eth.payload().len())];
        let target = match self.route(now, *key.dst.ip(), key.dst.port()) {
            Route::Host(addr) => addr,
            Route::Refused => return self.send_rst(guest_mac, &key, syn_seq, sink),
            Route::Unreachable(reason) => {
                let src = self.net.gateway;
                return self.send_icmp_unreachable(guest_mac, src, reason, quote, sink);
            }
            Route::Drop => return,
        };
        let host = match host::tcp_connect(target, self.outbound.for_dst(target.ip())) {
            Ok(host) => host,
            Err(e) => {
                log::debug!("tcp {} -> {target}: connect failed: {e}", key.guest);
                return self.fail_connect(guest_mac, &key, syn_seq, quote, &e, sink);
            }
        };

        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]),
        );
        let endpoint = IpListenEndpoint {
            addr: Some((*key.dst.ip()).into()),
            port: key.dst.port(),
        };
        if sock.listen(endpoint).is_err() {
            return;
        }
        sock.pause_synack(true);
        sock.set_ack_delay(None);
        sock.set_nagle_enabled(false);
        let handle = self.sockets.add(sock);
        let flow = TcpFlow {
            key,
            handle,
            host,
            connecting: true,
            established: false,
            readable: false,
            writable: false,
            host_closed: false,
            read_eof: false,
            write_shut: false,
            syn_quote: quote.to_vec(),
            syn_seq,
            guest_mac,
        };
        let slot = match self.flows.insert(Flow::Tcp(flow), &self.registry) {
            Ok(slot) => slot,
            Err(e) => {
                log::warn!("cannot watch a host socket: {e}");
                self.sockets.remove(handle);
                return self.send_rst(guest_mac, &key, syn_seq, sink);
            }
        };
        log::debug!("tcp {} -> {target}: connecting", key.guest);
        self.feed_smoltcp(now, frame, sink);
        if self.sockets.get::<tcp::Socket>(handle).state() != State::SynReceived {
            // smoltcp did not take the SYN; never leave a listener behind
            // that would catch another guest connection.
            self.remove_flow(slot);
        }
    }

    /// The host connect failed: tell the guest the way its own kernel
    /// would have heard it.
    fn fail_connect<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        key: &FlowKey,
        syn_seq: TcpSeqNumber,
        quote: &[u8],
        err: &io::Error,
        sink: &mut S,
    ) {
        let reason = match err.raw_os_error() {
            Some(libc::ENETUNREACH) => Some(Icmpv4DstUnreachable::NetUnreachable),
            Some(libc::EHOSTUNREACH) | Some(libc::ETIMEDOUT) => {
                Some(Icmpv4DstUnreachable::HostUnreachable)
            }
            _ => None,
        };
        match reason {
            Some(reason) => {
                let src = *key.dst.ip();
                self.send_icmp_unreachable(guest_mac, src, reason, quote, sink)
            }
            None => self.send_rst(guest_mac, key, syn_seq, sink),
        }
    }

    /// RST|ACK answering a guest SYN, as a closed port answers.
    fn send_rst<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        key: &FlowKey,
        syn_seq: TcpSeqNumber,
        sink: &mut S,
    ) {
        let tcp = TcpRepr {
            src_port: key.dst.port(),
            dst_port: key.guest.port(),
            control: TcpControl::Rst,
            seq_number: TcpSeqNumber(0),
            ack_number: Some(syn_seq + 1),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: *key.dst.ip(),
            dst_addr: *key.guest.ip(),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: HOP_LIMIT,
        };
        self.send_ipv4(guest_mac, &ip, sink, |buf| {
            tcp.emit(
                &mut TcpPacket::new_unchecked(buf),
                &ip.src_addr.into(),
                &ip.dst_addr.into(),
                &ChecksumCapabilities::default(),
            );
        });
    }

    /// Move what can move between the guest socket and the host socket.
    pub(super) fn pump_tcp<S: FrameSink>(&mut self, slot: usize, sink: &mut S) {
        self.flows.queue_reap(slot);
        let Some(flow) = self.flows.tcp_mut(slot) else {
            return;
        };
        let sock = self.sockets.get_mut::<tcp::Socket>(flow.handle);

        if flow.connecting {
            if !(flow.writable || flow.readable) {
                return;
            }
            let failure = match flow.host.take_error() {
                Ok(None) => None,
                Ok(Some(e)) | Err(e) => Some(e),
            };
            if let Some(e) = failure {
                log::debug!(
                    "tcp {} -> {}: connect failed: {e}",
                    flow.key.guest,
                    flow.key.dst
                );
                let (mac, key, seq) = (flow.guest_mac, flow.key, flow.syn_seq);
                let quote = std::mem::take(&mut flow.syn_quote);
                // Our own RST or ICMP error, rather than smoltcp's RST from
                // a SYN-RECEIVED socket whose SYN-ACK the guest never saw.
                self.remove_flow(slot);
                return self.fail_connect(mac, &key, seq, &quote, &e, sink);
            }
            match flow.host.peer_addr() {
                Ok(_) => {
                    flow.connecting = false;
                    flow.syn_quote = Vec::new();
                    sock.pause_synack(false);
                    log::debug!("tcp {} -> {}: connected", flow.key.guest, flow.key.dst);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    log::debug!("tcp {}: connect state unknown: {e}", flow.key.guest);
                    return;
                }
            }
        }
        // Past the handshake. Not just ESTABLISHED: the guest's ACK, data
        // and FIN can all arrive in one batch, straight into CLOSE-WAIT.
        if !matches!(
            sock.state(),
            State::Listen | State::SynSent | State::SynReceived | State::Closed
        ) {
            flow.established = true;
        }

        // Guest to host.
        while flow.writable && sock.can_recv() {
            let res = sock.recv(|buf| match (&flow.host).write(buf) {
                Ok(n) => (n, if n == 0 { Pump::Blocked } else { Pump::More }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Pump::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, Pump::More),
                Err(e) => (0, Pump::Failed(e)),
            });
            match res {
                Ok(Pump::More) => {}
                Ok(Pump::Blocked) => flow.writable = false,
                Ok(Pump::Failed(e)) => {
                    log::debug!("tcp {}: host write failed: {e}", flow.key.guest);
                    sock.abort();
                    return;
                }
                Ok(Pump::Eof) | Err(_) => break,
            }
        }
        if flow.established && !flow.write_shut && !sock.may_recv() && !sock.can_recv() {
            // The guest sent FIN and everything before it is written.
            let _ = flow.host.shutdown(Shutdown::Write);
            flow.write_shut = true;
        }

        // Host to guest.
        while flow.readable && !flow.read_eof && sock.can_send() {
            let res = sock.send(|buf| match (&flow.host).read(buf) {
                Ok(0) => (0, Pump::Eof),
                // A short read emptied the socket: skip the read that
                // would only say EAGAIN (epoll is edge-triggered on every
                // arrival, so new data wakes us again). Not once the peer
                // has closed: its FIN raises no new edge, so read on to 0.
                Ok(n) if n < buf.len() && !flow.host_closed => (n, Pump::Blocked),
                Ok(n) => (n, Pump::More),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Pump::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, Pump::More),
                Err(e) => (0, Pump::Failed(e)),
            });
            match res {
                Ok(Pump::More) => {}
                Ok(Pump::Blocked) => flow.readable = false,
                Ok(Pump::Eof) => {
                    flow.read_eof = true;
                    sock.close();
                }
                Ok(Pump::Failed(e)) => {
                    log::debug!("tcp {}: host read failed: {e}", flow.key.guest);
                    sock.abort();
                    return;
                }
                Err(_) => break,
            }
        }
    }

    /// Remove flows whose guest side is over. Runs after egress, so a RST
    /// from an aborted socket has already been sent.
    pub(super) fn reap_tcp(&mut self) {
        for slot in self.flows.take_reap() {
            let Some(flow) = self.flows.tcp_mut(slot) else {
                continue;
            };
            let sock = self.sockets.get::<tcp::Socket>(flow.handle);
            match sock.state() {
                // Listen: the guest reset a connection still waiting for
                // its host side, and smoltcp went back to listening; such
                // a socket must not catch the next guest connection.
                State::Closed | State::TimeWait | State::Listen => {
                    let clean = flow.write_shut && flow.read_eof;
                    if !clean && !flow.connecting {
                        // The guest reset (or we aborted): reset the host
                        // side too instead of a graceful FIN.
                        reset_on_close(&flow.host);
                    }
                    log::debug!("tcp {} -> {}: done", flow.key.guest, flow.key.dst);
                    self.remove_flow(slot);
                }
                _ => {}
            }
        }
    }
}

/// SO_LINGER with a zero timeout: close() sends RST.
fn reset_on_close(stream: &mio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(stream, sockopt::Linger, &linger);
}
