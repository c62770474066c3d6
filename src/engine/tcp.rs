//! Guest TCP connections, proxied through host TCP streams.
//!
//! Outbound: a guest SYN to a new destination starts a host connect and
//! waits, as a frame, in the flow. Only once the host side is up does a
//! smoltcp socket listen on that exact destination and take the SYN, so
//! its SYN-ACK tells the guest the truth; a refused connect becomes a
//! RST, an unreachable one an ICMP error. Inbound (forwards): a host
//! client accepted by a listener becomes a smoltcp connect to the guest.
//! Either way, once both sides are up, data moves straight between
//! smoltcp's buffers and the host stream, and each side stops reading
//! while the other is full.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, IPV4_HEADER_LEN, IPV6_HEADER_LEN, IpEndpoint, IpListenEndpoint,
    IpProtocol, TCP_HEADER_LEN, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, checksum,
};

use super::flows::{Flow, FlowKey, Kind, Ready, TcpFlow, TcpPhase};
use super::{ETHERNET_HEADER_LEN, Engine, FrameSink, Packet, Route, Unreachable};
use crate::host::{FlowId, Host, HostError, INTERRUPT_RETRIES, Step};

/// A SYN frame kept while its host connect is under way is at most this
/// long; a SYN carrying more (data on the SYN) is dropped, so a flood of
/// pending connects holds little memory.
const MAX_SYN_FRAME: usize = 1536;
/// A handshake the guest never completes (its SYN-ACK or SYN unanswered)
/// is given up after this, as Linux gives up its SYN-ACK retries, and the
/// host connection closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Data or a FIN sent to the guest and not acknowledged, and not a packet
/// from the guest meanwhile, for this long: the guest is gone (a peer
/// that only reads slowly still answers window probes). The flow is
/// dropped and its host connection reset. An idle connection with
/// nothing outstanding is never timed out, as in Linux without
/// keep-alive.
pub const UNACKED_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an ACK for guest data may wait for more data to cover or a
/// reply to ride on (see `ack_delay_of` for which segments wait).
const ACK_DELAY: Duration = Duration::from_millis(1);

enum Pump {
    More,
    /// The host call was interrupted (EINTR): again, a few times.
    Interrupted,
    Blocked,
    Eof,
    Failed(HostError),
}

/// How long the ACK for `tcp` may wait, as a Linux receiver decides it
/// with BSD's PSH rule on top. A segment with PSH ends the sender's
/// write, and one with FIN its stream: the sender may be waiting on the
/// ACK (Nagle's rule holds its next small segment back until then), so
/// ACK at once. So too for a segment larger than one frame on this link
/// (`mtu`): the guest's kernel sent several segments' worth at once (TSO)
/// and its congestion window, counted in segments, may be waiting on
/// them. Any other segment is part of a larger write that more segments
/// follow: its ACK waits for the next one (smoltcp ACKs at once when more
/// than a segment is waiting) or `ACK_DELAY`. At MTU 65520 that is an ACK
/// for every second 64 KiB segment instead of for every wake-up, which
/// halves what a bulk sender's kernel has to handle: guest->host iperf3
/// went from 11.3 to 12.4 Gbit/s on average over 8 runs each.
fn ack_delay_of(tcp: &TcpPacket<&[u8]>, mtu: usize) -> Duration {
    // A frame's payload after IPv4's headers, the smaller family's: a
    // full IPv6 frame (20 bytes less) counts as one frame too.
    let one_frame = mtu.saturating_sub(IPV4_HEADER_LEN + TCP_HEADER_LEN);
    if tcp.psh() || tcp.fin() || tcp.payload().len() > one_frame {
        Duration::ZERO
    } else {
        ACK_DELAY
    }
}

/// The IP header and first 8 bytes of a kept Ethernet frame, to quote.
fn quote_of_frame(frame: &[u8]) -> &[u8] {
    let ip = EthernetFrame::new_checked(frame)
        .map(|eth| eth.payload().len())
        .unwrap_or(0);
    let start = frame.len() - ip;
    let ip = &frame[start..];
    let len = match ip.first().map(|b| b >> 4) {
        Some(4) => ((ip[0] & 0x0f) as usize) * 4 + 8,
        Some(6) => super::ipv6::QUOTE6_LEN,
        _ => 0,
    };
    &ip[..len.min(ip.len())]
}

/// With offload, the MSS a guest's SYN (or SYN-ACK) is made to say: the
/// most whole segments of the link's own size that fit a 64 KiB packet.
/// smoltcp's segments are then bounded by that and not by the MTU, and
/// the guest's kernel cuts each into equal frames with none left over.
fn wide_mss(mtu: usize, ip_header_len: usize) -> u16 {
    let per_frame = mtu.saturating_sub(ip_header_len + TCP_HEADER_LEN).max(1);
    let most = super::device::MAX_IP_PACKET - ip_header_len - TCP_HEADER_LEN;
    (most / per_frame * per_frame).clamp(per_frame.min(most), most) as u16
}

/// Rewrite the MSS option of a SYN (or SYN-ACK) frame to [`wide_mss`],
/// keeping its checksum right. A SYN without the option keeps smoltcp's
/// default of 536, as any receiver would.
fn widen_mss(frame: &mut [u8], mtu: usize) {
    let Some(ip) = frame.get(ETHERNET_HEADER_LEN..) else {
        return;
    };
    let (tcp, wide) = match ip.first().map(|b| b >> 4) {
        Some(4) => (
            ETHERNET_HEADER_LEN + usize::from(ip[0] & 0x0f) * 4,
            wide_mss(mtu, IPV4_HEADER_LEN),
        ),
        Some(6) => (
            ETHERNET_HEADER_LEN + IPV6_HEADER_LEN,
            wide_mss(mtu, IPV6_HEADER_LEN),
        ),
        _ => return,
    };
    let Some(data_offset) = frame.get(tcp + 12) else {
        return;
    };
    let end = (tcp + usize::from(data_offset >> 4) * 4).min(frame.len());
    let mut at = tcp + TCP_HEADER_LEN;
    while at < end {
        match frame[at] {
            0 => return,
            1 => at += 1,
            kind => {
                let len = usize::from(*frame.get(at + 1).unwrap_or(&0));
                if len < 2 || at + len > end {
                    return;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([frame[at + 2], frame[at + 3]]);
                    frame[at + 2..at + 4].copy_from_slice(&wide.to_be_bytes());
                    // RFC 1624: HC' = ~(~HC + ~m + m').
                    let hc = u16::from_be_bytes([frame[tcp + 16], frame[tcp + 17]]);
                    let hc = !checksum::combine(&[!hc, !old, wide]);
                    frame[tcp + 16..tcp + 18].copy_from_slice(&hc.to_be_bytes());
                    return;
                }
                at += len;
            }
        }
    }
}

impl<H: Host> Engine<H> {
    pub(super) fn process_tcp<S: FrameSink>(
        &mut self,
        now: Instant,
        frame: &[u8],
        pkt: &Packet,
        sink: &mut S,
    ) {
        if !self.carry.tcp {
            return;
        }
        let Ok(tcp) = TcpPacket::new_checked(pkt.payload) else {
            log::trace!("dropping a malformed TCP segment");
            return;
        };
        // Port 0 is no TCP port: answering would mirror it back, in a
        // segment no stack accepts (found by the frames fuzzer).
        if tcp.src_port() == 0 || tcp.dst_port() == 0 {
            log::trace!("dropping a TCP segment with port 0");
            return;
        }
        let key = FlowKey {
            guest: (pkt.src, tcp.src_port()).into(),
            dst: (pkt.dst, tcp.dst_port()).into(),
        };
        let fresh_syn = tcp.syn() && !tcp.ack() && !tcp.rst();
        if let Some(id) = self.flows.find(Kind::Tcp, &key) {
            let superseded = fresh_syn
                .then(|| self.superseded_by_syn(id, tcp.seq_number()))
                .flatten();
            let Some(reset) = superseded else {
                return self.segment_of_flow(now, id, frame, &tcp, sink);
            };
            // The guest is done with the old connection on this 4-tuple
            // and opens a new one, as a kernel may right after a reset:
            // the old flow goes now, or it would swallow the new SYN.
            log::debug!(
                "tcp {} -> {}: a new SYN replaces the flow",
                key.guest,
                key.dst
            );
            self.remove_flow(id, reset);
        }
        if fresh_syn {
            self.open_outbound(now, frame, pkt, key, tcp.seq_number(), sink);
        } else if !tcp.rst() {
            // A segment of no flow we know: smoltcp answers it with RST.
            self.feed_smoltcp(now, frame, sink);
        }
    }

    /// Whether a guest SYN (no ACK) with sequence number `seq` starts a
    /// new connection in place of flow `id`: the flow's socket is closed
    /// or in TIME-WAIT, or its handshake answered a SYN with another
    /// number (the guest gave that attempt up; smoltcp would ignore the
    /// new SYN and keep sending SYN-ACKs for the old one). If so, whether
    /// the old host connection is to be reset rather than closed.
    fn superseded_by_syn(&mut self, id: FlowId, seq: TcpSeqNumber) -> Option<bool> {
        let flow = self.flows.tcp_mut(id)?;
        let handle = flow.handle()?;
        let sock = flow.set.get::<tcp::Socket>(handle);
        let clean = matches!(
            flow.phase,
            TcpPhase::Open {
                host_eof: true,
                guest_fin: true,
                reset: false,
                ..
            }
        ) && sock.recv_queue() == 0;
        match sock.state() {
            State::Closed | State::TimeWait => Some(!clean),
            State::SynReceived if flow.guest_isn.is_some_and(|isn| isn != seq) => Some(true),
            _ => None,
        }
    }

    fn segment_of_flow<S: FrameSink>(
        &mut self,
        now: Instant,
        id: FlowId,
        frame: &[u8],
        tcp: &TcpPacket<&[u8]>,
        sink: &mut S,
    ) {
        let Some(flow) = self.flows.tcp_mut(id) else {
            return;
        };
        if let TcpPhase::Connecting { syn, seq } = &mut flow.phase {
            if tcp.rst() {
                log::debug!("tcp {}: the guest gave up connecting", flow.key.guest);
                return self.remove_flow(id, false);
            }
            if tcp.syn() && !tcp.ack() && frame.len() <= MAX_SYN_FRAME {
                // A retransmission: keep the newest, it is what the guest
                // expects an answer to.
                *syn = frame.into();
                *seq = tcp.seq_number();
                flow.guest_isn = Some(*seq);
            }
            // Anything else has to wait for the handshake.
            return;
        }
        let handshake = matches!(flow.phase, TcpPhase::Handshake(_));
        let handle = flow.handle();
        if tcp.syn()
            && !tcp.ack()
            && let Some(h) = handle
            && flow.set.get::<tcp::Socket>(h).state() == State::SynSent
        {
            // A forward's SYN answered by a bare SYN (simultaneous open):
            // smoltcp 0.14 then subtracts past zero computing its window
            // and panics (smoltcp#1048). No server does this; drop it.
            log::debug!("tcp {}: dropping a simultaneous open", flow.key.guest);
            return;
        }
        self.flows.mark_dirty(id);
        if tcp.rst() {
            self.feed_flow(now, id, frame, sink);
            let Some(flow) = self.flows.tcp_mut(id) else {
                return;
            };
            let state = handle.map(|h| flow.set.get::<tcp::Socket>(h).state());
            if let TcpPhase::Open { reset, .. } = &mut flow.phase
                && state == Some(State::Closed)
            {
                *reset = true;
            }
            if handshake
                && state == Some(State::Closed)
                && let Some(key) = flow.v4_fallback.take()
            {
                return self.inbound_over_v4(id, key);
            }
            if handshake && flow.guest_isn.is_some() && state == Some(State::SynReceived) {
                // smoltcp found the reset outside its window and kept the
                // handshake. Only the guest writes to the tap, and it
                // reset its own connect: give up as while connecting.
                log::debug!("tcp {}: the guest reset the handshake", flow.key.guest);
                return self.remove_flow(id, true);
            }
        } else if self.offload && tcp.syn() && tcp.ack() {
            // A forward's SYN-ACK: its MSS bounds smoltcp's segments.
            let mut synack = frame.to_vec();
            widen_mss(&mut synack, self.mtu);
            self.feed_flow(now, id, &synack, sink);
        } else {
            if let Some(h) = handle
                && let Some(flow) = self.flows.tcp_mut(id)
            {
                flow.set
                    .get_mut::<tcp::Socket>(h)
                    .set_ack_delay(Some(ack_delay_of(tcp, self.mtu)));
            }
            self.feed_flow(now, id, frame, sink);
        }
        if handshake
            && let Some(h) = handle
            && let Some(flow) = self.flows.tcp_mut(id)
            && flow.set.get::<tcp::Socket>(h).state() == State::Listen
        {
            // The guest reset the handshake and smoltcp went back to
            // listening on this exact destination, where it would catch
            // the guest's next SYN there: retire it now.
            self.remove_flow(id, true);
        }
    }

    /// A new smoltcp socket with netferry's settings, for either direction.
    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]),
        );
        // Each guest segment sets its own ACK delay (`ack_delay_of`).
        sock.set_ack_delay(None);
        sock.set_nagle_enabled(false);
        sock.set_timeout(Some(HANDSHAKE_TIMEOUT));
        sock
    }

    fn tcp_full(&self) -> bool {
        let (tcp, ..) = self.flows.counts();
        tcp >= self.limits.tcp_flows
    }

    /// The outbound constructor: a guest SYN to a new destination.
    fn open_outbound<S: FrameSink>(
        &mut self,
        now: Instant,
        frame: &[u8],
        pkt: &Packet,
        key: FlowKey,
        seq: TcpSeqNumber,
        sink: &mut S,
    ) {
        let target = match self.route(now, key.dst.ip(), key.dst.port()) {
            Route::Host(addr) => addr,
            Route::Refused => return self.send_rst(pkt.guest_mac, &key, seq, sink),
            Route::Unreachable(reason) => {
                let src = self.gateway_for(key.dst.ip());
                return self.send_unreachable(pkt.guest_mac, src, reason, pkt.quote, sink);
            }
            Route::Drop => return,
        };
        if frame.len() > MAX_SYN_FRAME {
            log::debug!("tcp {}: dropping a SYN that carries data", key.guest);
            return;
        }
        if !self.make_room_for_connect(sink) {
            // Answer as a busy host would, at no cost to us.
            log::debug!("tcp {} -> {target}: at the flow cap, refusing", key.guest);
            self.stats.refused_at_cap += 1;
            return self.send_rst(pkt.guest_mac, &key, seq, sink);
        }
        let id = self.flows.next_id();
        if let Err(e) = self.host.tcp_connect(id, target) {
            log::debug!("tcp {} -> {target}: connect failed: {e}", key.guest);
            let err = HostError::from(e);
            return self.fail_connect(pkt.guest_mac, &key, seq, pkt.quote, &err, sink);
        }
        log::debug!("tcp {} -> {target}: connecting", key.guest);
        self.flows.insert(Flow::Tcp(TcpFlow {
            set: SocketSet::new(Vec::new()),
            timer: None,
            queued: None,
            guest_isn: Some(seq),
            v4_fallback: None,
            key,
            guest_mac: pkt.guest_mac,
            ready: Ready::default(),
            phase: TcpPhase::Connecting {
                syn: frame.into(),
                seq,
            },
        }));
    }

    /// Room for one more host connect under the caps. At a cap, the
    /// connect pending the longest gives way (the guest hears RST for it)
    /// rather than the new one: a guest retrying against a dead service
    /// would otherwise hold every slot and shut out live destinations.
    /// False when no pending connect can give way (the flows are all up).
    fn make_room_for_connect<S: FrameSink>(&mut self, sink: &mut S) -> bool {
        let (_, connecting, ..) = self.flows.counts();
        if !self.tcp_full() && connecting < self.limits.pending_connects {
            return true;
        }
        let Some(oldest) = self.flows.oldest_connecting() else {
            return false;
        };
        let Some(flow) = self.flows.tcp_mut(oldest) else {
            return false;
        };
        let TcpPhase::Connecting { seq, .. } = flow.phase else {
            return false;
        };
        let (mac, key) = (flow.guest_mac, flow.key);
        log::debug!(
            "tcp {} -> {}: pending the longest at the cap, giving way",
            key.guest,
            key.dst
        );
        self.stats.refused_at_cap += 1;
        self.remove_flow(oldest, false);
        self.send_rst(mac, &key, seq, sink);
        true
    }

    /// The host side of a connecting flow is up: hand the guest's SYN to
    /// a socket listening on exactly its destination. False when the flow
    /// is gone.
    fn answer_syn<S: FrameSink>(&mut self, now: Instant, id: FlowId, sink: &mut S) -> bool {
        let Some(flow) = self.flows.tcp_mut(id) else {
            return false;
        };
        let TcpPhase::Connecting { syn, .. } = &mut flow.phase else {
            return true;
        };
        let mut syn = std::mem::take(syn);
        if self.offload {
            widen_mss(&mut syn, self.mtu);
        }
        let key = flow.key;
        let mut sock = self.new_tcp_socket();
        let endpoint = IpListenEndpoint {
            addr: Some(key.dst.ip().into()),
            port: key.dst.port(),
        };
        if sock.listen(endpoint).is_err() {
            self.remove_flow(id, true);
            return false;
        }
        let Some(flow) = self.flows.tcp_mut(id) else {
            return false;
        };
        let handle = flow.set.add(sock);
        self.flows.connected(id, handle);
        log::debug!("tcp {} -> {}: connected", key.guest, key.dst);
        self.feed_flow(now, id, &syn, sink);
        let taken = self
            .flows
            .tcp_mut(id)
            .is_some_and(|f| f.set.get::<tcp::Socket>(handle).state() == State::SynReceived);
        if !taken {
            // smoltcp did not take the SYN; never leave a listener behind
            // that would catch another guest connection.
            log::debug!("tcp {}: smoltcp did not take the SYN", key.guest);
            self.remove_flow(id, true);
            return false;
        }
        true
    }

    /// The host connect failed: tell the guest the way its own kernel
    /// would have heard it.
    fn fail_connect<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        key: &FlowKey,
        seq: TcpSeqNumber,
        quote: &[u8],
        err: &HostError,
        sink: &mut S,
    ) {
        let reason = match err {
            HostError::NetUnreachable => Some(Unreachable::Net),
            HostError::HostUnreachable | HostError::TimedOut => Some(Unreachable::Host),
            _ => None,
        };
        match reason {
            Some(reason) => self.send_unreachable(guest_mac, key.dst.ip(), reason, quote, sink),
            None => self.send_rst(guest_mac, key, seq, sink),
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
        let (src, dst) = (key.dst.ip(), key.guest.ip());
        self.send_ip(
            guest_mac,
            (src, dst),
            IpProtocol::Tcp,
            tcp.buffer_len(),
            sink,
            |buf| {
                tcp.emit(
                    &mut TcpPacket::new_unchecked(buf),
                    &src.into(),
                    &dst.into(),
                    &ChecksumCapabilities::default(),
                );
            },
        );
    }

    /// A smoltcp socket connecting to the guest's `key.guest` from
    /// `key.dst` (the client as the guest sees it).
    fn connect_to_guest(&mut self, key: &FlowKey) -> Option<tcp::Socket<'static>> {
        let mut sock = self.new_tcp_socket();
        let remote = IpEndpoint::new(key.guest.ip().into(), key.guest.port());
        let local = IpListenEndpoint {
            addr: Some(key.dst.ip().into()),
            port: key.dst.port(),
        };
        match sock.connect(self.iface.context(), remote, local) {
            Ok(()) => Some(sock),
            Err(e) => {
                log::debug!("forward: cannot open {} -> {}: {e}", key.dst, key.guest);
                None
            }
        }
    }

    /// The guest refused a forward's IPv6 client over IPv6: carry it over
    /// IPv4 instead, on the same host connection.
    fn inbound_over_v4(&mut self, id: FlowId, key: FlowKey) {
        let Some(sock) = self.connect_to_guest(&key) else {
            return self.remove_flow(id, true);
        };
        if !self.flows.rekey_tcp(id, key) {
            log::debug!("forward: {} -> {} is taken", key.dst, key.guest);
            return self.remove_flow(id, true);
        }
        let guest_mac = self.guest_mac_for(key.guest.ip());
        let Some(flow) = self.flows.tcp_mut(id) else {
            return;
        };
        if let Some(old) = flow.handle() {
            flow.set.remove(old);
        }
        flow.phase = TcpPhase::Handshake(flow.set.add(sock));
        flow.guest_mac = guest_mac;
        self.flows.mark_dirty(id);
        log::debug!(
            "forward: refused over IPv6, -> {} as {}",
            key.guest,
            key.dst
        );
    }

    /// The inbound constructor: host client `id`, already accepted, is
    /// carried to `guest` from `src` (its address as the guest sees it);
    /// `v4_fallback` is where to go if the guest refuses it over IPv6.
    pub(super) fn open_inbound(
        &mut self,
        id: FlowId,
        src: std::net::SocketAddr,
        guest: std::net::SocketAddr,
        v4_fallback: Option<FlowKey>,
    ) {
        let key = FlowKey { guest, dst: src };
        if self.flows.find(Kind::Tcp, &key).is_some() || self.tcp_full() {
            log::debug!("forward: no room for {src} -> {guest}; dropping it");
            return self.host.close(id, true);
        }
        let Some(sock) = self.connect_to_guest(&key) else {
            return self.host.close(id, true);
        };
        let mut set = SocketSet::new(Vec::new());
        let handle: SocketHandle = set.add(sock);
        let flow = TcpFlow {
            set,
            timer: None,
            queued: None,
            guest_isn: None,
            v4_fallback,
            key,
            guest_mac: self.guest_mac_for(guest.ip()),
            // A fresh stream can take data at once.
            ready: Ready {
                writable: true,
                ..Ready::default()
            },
            phase: TcpPhase::Handshake(handle),
        };
        let inserted = self.flows.insert(Flow::Tcp(flow));
        debug_assert_eq!(inserted, id);
        // Served at once: its SYN goes out in this poll's egress.
        self.flows.mark_dirty(id);
        log::debug!("forward: -> {guest} as {src}");
    }

    /// Move what can move between the guest socket and the host stream.
    pub(super) fn pump_tcp<S: FrameSink>(&mut self, now: Instant, id: FlowId, sink: &mut S) {
        self.flows.queue_reap(id);
        let Some(flow) = self.flows.tcp_mut(id) else {
            return;
        };
        if let TcpPhase::Connecting { syn, seq } = &mut flow.phase {
            if !(flow.ready.writable || flow.ready.readable) {
                return;
            }
            match self.host.tcp_connected(id) {
                Ok(false) => return,
                Ok(true) => {
                    if !self.answer_syn(now, id, sink) {
                        return;
                    }
                }
                Err(e) => {
                    log::debug!(
                        "tcp {} -> {}: connect failed: {e}",
                        flow.key.guest,
                        flow.key.dst
                    );
                    let (mac, key, seq) = (flow.guest_mac, flow.key, *seq);
                    let syn = std::mem::take(syn);
                    // Our own RST or ICMP error: the guest never saw a
                    // SYN-ACK, so nothing of smoltcp's is involved.
                    self.remove_flow(id, false);
                    let err = HostError::from(e);
                    return self.fail_connect(mac, &key, seq, quote_of_frame(&syn), &err, sink);
                }
            }
        }
        let Some(flow) = self.flows.tcp_mut(id) else {
            return;
        };
        let Some(handle) = flow.handle() else {
            return;
        };
        let sock = flow.set.get_mut::<tcp::Socket>(handle);
        // Past the handshake. Not just ESTABLISHED: the guest's ACK, data
        // and FIN can all arrive in one batch, straight into CLOSE-WAIT.
        if matches!(flow.phase, TcpPhase::Handshake(_))
            && !matches!(
                sock.state(),
                State::Listen | State::SynSent | State::SynReceived | State::Closed
            )
        {
            flow.phase = TcpPhase::Open {
                handle,
                host_eof: false,
                guest_fin: false,
                reset: false,
            };
        }
        let TcpPhase::Open {
            host_eof,
            guest_fin,
            reset,
            ..
        } = &mut flow.phase
        else {
            return;
        };
        let host = &mut self.host;
        let read_closed = flow.ready.read_closed;
        let (rx_before, tx_before) = (sock.recv_queue(), sock.send_queue());
        // Interrupted host calls in a row; past the bound the flow waits
        // for the next poll (`carry`).
        let mut interrupted = 0;
        let mut carry = false;

        // Guest to host.
        while flow.ready.writable && sock.can_recv() {
            let res = sock.recv(|buf| match Step::from(host.tcp_write(id, buf)) {
                Step::Got(0) | Step::Drained => (0, Pump::Blocked),
                // Never more than offered, whatever the host says.
                Step::Got(n) => (n.min(buf.len()), Pump::More),
                Step::Retry => (0, Pump::Interrupted),
                Step::Failed(e) => (0, Pump::Failed(e)),
            });
            match res {
                Ok(Pump::More) => interrupted = 0,
                Ok(Pump::Interrupted) => {
                    interrupted += 1;
                    if interrupted > INTERRUPT_RETRIES {
                        carry = true;
                        break;
                    }
                }
                Ok(Pump::Blocked) => flow.ready.writable = false,
                Ok(Pump::Failed(e)) => {
                    log::debug!("tcp {}: host write failed: {e}", flow.key.guest);
                    sock.abort();
                    *reset = true;
                    return;
                }
                Ok(Pump::Eof) | Err(_) => break,
            }
        }
        self.stats.bytes_to_host += rx_before.saturating_sub(sock.recv_queue()) as u64;
        if !*guest_fin && !sock.may_recv() && !sock.can_recv() {
            // The guest sent FIN and everything before it is written.
            host.tcp_shutdown_write(id);
            *guest_fin = true;
        }

        // Host to guest.
        interrupted = 0;
        while !carry && flow.ready.readable && !*host_eof && sock.can_send() {
            let res = sock.send(|buf| match Step::from(host.tcp_read(id, buf)) {
                Step::Got(0) => (0, Pump::Eof),
                // A short read emptied the socket: skip the read that
                // would only say EAGAIN (epoll is edge-triggered on every
                // arrival, so new data wakes us again). Not once the peer
                // has closed: its FIN raises no new edge, so read on to 0.
                Step::Got(n) if n < buf.len() && !read_closed => (n, Pump::Blocked),
                Step::Got(n) => (n.min(buf.len()), Pump::More),
                Step::Drained => (0, Pump::Blocked),
                Step::Retry => (0, Pump::Interrupted),
                Step::Failed(e) => (0, Pump::Failed(e)),
            });
            match res {
                Ok(Pump::More) => interrupted = 0,
                Ok(Pump::Interrupted) => {
                    interrupted += 1;
                    if interrupted > INTERRUPT_RETRIES {
                        carry = true;
                        break;
                    }
                }
                Ok(Pump::Blocked) => flow.ready.readable = false,
                Ok(Pump::Eof) => {
                    *host_eof = true;
                    sock.close();
                }
                Ok(Pump::Failed(e)) => {
                    log::debug!("tcp {}: host read failed: {e}", flow.key.guest);
                    sock.abort();
                    *reset = true;
                    return;
                }
                Err(_) => break,
            }
        }
        self.stats.bytes_to_guest += sock.send_queue().saturating_sub(tx_before) as u64;
        // smoltcp's timeout counts from the guest's last packet, idle or
        // not: armed only while something waits for the guest's ACK.
        let waiting = sock.send_queue() > 0 || *host_eof;
        sock.set_timeout(waiting.then_some(UNACKED_TIMEOUT));
        if carry {
            self.flows.carry(id);
        }
    }

    /// Remove flows whose guest side is over. Runs after egress, so a RST
    /// from an aborted socket has already been sent.
    pub(super) fn reap_tcp(&mut self) {
        for id in self.flows.take_reap() {
            let Some(flow) = self.flows.tcp_mut(id) else {
                continue;
            };
            let Some(handle) = flow.handle() else {
                continue;
            };
            // Listen: the guest reset the handshake and smoltcp went back
            // to listening; such a socket must not catch the next
            // guest connection.
            let sock = flow.set.get::<tcp::Socket>(handle);
            if !matches!(
                sock.state(),
                State::Closed | State::TimeWait | State::Listen
            ) {
                continue;
            }
            // smoltcp finishes the close (FINs both ways) whether or not
            // what it received was read: the guest's last data may still
            // wait for the host to take it. The host's next writable
            // event brings the flow back here once it has.
            if matches!(flow.phase, TcpPhase::Open { reset: false, .. }) && sock.recv_queue() > 0 {
                continue;
            }
            let clean = matches!(
                flow.phase,
                TcpPhase::Open {
                    host_eof: true,
                    guest_fin: true,
                    ..
                }
            );
            log::debug!("tcp {} -> {}: done", flow.key.guest, flow.key.dst);
            // The guest reset (or we aborted): reset the host side too
            // instead of a graceful FIN.
            self.remove_flow(id, !clean);
        }
    }
}
