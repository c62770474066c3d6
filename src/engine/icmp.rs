//! ICMP and ICMPv6: echo to the virtual hosts answered here, echo to
//! anywhere else through unprivileged ICMP sockets, and the errors
//! netferry sends the guest (destination unreachable). Neighbour
//! discovery is `ipv6.rs`'s.
//!
//! Ping sockets exist only where `net.ipv4.ping_group_range` includes the
//! user's group. Where they do not, pings to the outside go unanswered
//! (one log line), as a firewall would leave them.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, IPV6_HEADER_LEN, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet,
    Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
};

use super::flows::{DgramFlow, Flow, FlowKey, Kind};
use super::{Engine, FrameSink, HOP_LIMIT, Packet, Route, Unreachable};
use crate::host::{FlowId, Host};

/// Bytes of an ICMP echo header (type, code, checksum, id, sequence).
const ECHO_HEADER_LEN: usize = 8;

impl<H: Host> Engine<H> {
    pub(super) fn process_icmp<S: FrameSink>(&mut self, now: Instant, pkt: &Packet, sink: &mut S) {
        let Ok(packet) = Icmpv4Packet::new_checked(pkt.payload) else {
            return;
        };
        let Ok(repr) = Icmpv4Repr::parse(&packet, &self.caps.checksum) else {
            log::trace!("dropping an ICMP message that does not parse");
            return;
        };
        if let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = repr
        {
            self.process_echo(now, pkt, ident, seq_no, data, sink);
        }
    }

    /// An echo request of either family: answered here for the virtual
    /// hosts, else sent on through a ping socket.
    pub(super) fn process_echo<S: FrameSink>(
        &mut self,
        now: Instant,
        pkt: &Packet,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        sink: &mut S,
    ) {
        if !self.carry.icmp {
            return;
        }
        self.stats.datagrams_from_guest += 1;
        if self.is_virtual(pkt.dst) {
            // Answered even with host loopback disabled: the gateway is
            // still there, it just does not lead to the host.
            return self.send_echo_reply(
                pkt.guest_mac,
                (pkt.dst, pkt.src),
                ident,
                seq_no,
                data,
                sink,
            );
        }
        match self.route(now, pkt.dst, 0) {
            Route::Host(_) => {}
            Route::Unreachable(reason) => {
                let src = self.gateway_for(pkt.dst);
                return self.send_unreachable(pkt.guest_mac, src, reason, pkt.quote, sink);
            }
            Route::Refused | Route::Drop => return,
        }
        let key = FlowKey {
            guest: (pkt.src, ident).into(),
            dst: (pkt.dst, 0).into(),
        };
        let Some(id) = self.ping_flow(now, key, pkt.guest_mac) else {
            return;
        };
        if let Some(flow) = self.flows.dgram_mut(id) {
            flow.last_used = now;
        }
        // The kernel fills in the identifier (the socket's) and checksum.
        if let Err(e) = self.host.send(id, pkt.payload) {
            log::debug!("ping to {}: {e}", pkt.dst);
        }
    }

    fn send_echo_reply<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        addrs: (IpAddr, IpAddr),
        ident: u16,
        seq_no: u16,
        data: &[u8],
        sink: &mut S,
    ) {
        match addrs {
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let reply = Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.send_icmpv6(guest_mac, (src, dst), &reply, HOP_LIMIT, sink);
            }
            _ => {
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.send_icmpv4(guest_mac, addrs, &reply, sink);
            }
        }
    }

    fn ping_flow(
        &mut self,
        now: Instant,
        key: FlowKey,
        guest_mac: EthernetAddress,
    ) -> Option<FlowId> {
        if let Some(id) = self.flows.find(Kind::Ping, &key) {
            return Some(id);
        }
        if let Some(old) = self.flows.evict_candidate(Kind::Ping) {
            self.remove_flow(old, false);
        }
        let dst = key.dst.ip();
        let id = self.flows.next_id();
        if let Err(e) = self.host.ping_open(id, dst) {
            if !self.ping_denied_logged {
                self.ping_denied_logged = true;
                log::warn!(
                    "ICMP echo to {dst} cannot be forwarded: {e} \
                     (is the group in net.ipv4.ping_group_range?); pings to the outside will go unanswered"
                );
            }
            return None;
        }
        Some(self.flows.insert(Flow::Ping(DgramFlow {
            key,
            guest_mac,
            last_used: now,
            readable: false,
        })))
    }

    /// An echo reply read from a ping socket, to the guest with its own
    /// identifier (the kernel put the socket's there).
    pub(super) fn deliver_echo_reply<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        key: &FlowKey,
        data: &[u8],
        sink: &mut S,
    ) {
        if data.len() < ECHO_HEADER_LEN {
            return;
        }
        let seq_no = match key.dst.ip() {
            IpAddr::V4(_) => match Icmpv4Packet::new_checked(data) {
                Ok(p) if p.msg_type() == Icmpv4Message::EchoReply => p.echo_seq_no(),
                _ => return,
            },
            IpAddr::V6(_) => match Icmpv6Packet::new_checked(data) {
                Ok(p) if p.msg_type() == Icmpv6Message::EchoReply => p.echo_seq_no(),
                _ => return,
            },
        };
        let addrs = (key.dst.ip(), key.guest.ip());
        let ident = key.guest.port();
        self.send_echo_reply(
            guest_mac,
            addrs,
            ident,
            seq_no,
            &data[ECHO_HEADER_LEN..],
            sink,
        );
    }

    fn send_icmpv4<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        addrs: (IpAddr, IpAddr),
        repr: &Icmpv4Repr<'_>,
        sink: &mut S,
    ) {
        self.send_ip(
            guest_mac,
            addrs,
            IpProtocol::Icmp,
            repr.buffer_len(),
            sink,
            |buf| {
                repr.emit(
                    &mut Icmpv4Packet::new_unchecked(buf),
                    &ChecksumCapabilities::default(),
                );
            },
        );
    }

    /// Destination unreachable from `src`, quoting the offending packet
    /// (its IP header and at least 8 bytes of its payload).
    pub(super) fn send_unreachable<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: IpAddr,
        reason: Unreachable,
        quote: &[u8],
        sink: &mut S,
    ) {
        if let IpAddr::V6(src) = src {
            return self.send_unreachable6(guest_mac, src, reason, quote, sink);
        }
        let reason = match reason {
            Unreachable::Net => Icmpv4DstUnreachable::NetUnreachable,
            Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
            Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
        };
        let padded = quote_padded(quote);
        let Ok(orig) = Ipv4Packet::new_checked(padded.as_slice()) else {
            return;
        };
        let Ok(header) = Ipv4Repr::parse(&orig, &ChecksumCapabilities::ignored()) else {
            return;
        };
        let data_start = orig.header_len() as usize;
        let data = &quote[data_start.min(quote.len())..];
        let data = &data[..data.len().min(8)];
        let repr = Icmpv4Repr::DstUnreachable {
            reason,
            header,
            data,
        };
        log::debug!(
            "telling {} that {}: {reason}",
            header.src_addr,
            header.dst_addr
        );
        self.send_icmpv4(guest_mac, (src, header.src_addr.into()), &repr, sink);
    }
}

impl<H: Host> Engine<H> {
    /// ICMPv6 destination unreachable from `src`, quoting as much of the
    /// offending packet as `quote` holds (up to what fits in 1280 bytes).
    fn send_unreachable6<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: std::net::Ipv6Addr,
        reason: Unreachable,
        quote: &[u8],
        sink: &mut S,
    ) {
        if quote.len() < IPV6_HEADER_LEN {
            return;
        }
        let orig = Ipv6Packet::new_unchecked(quote);
        let header = Ipv6Repr {
            src_addr: orig.src_addr(),
            dst_addr: orig.dst_addr(),
            next_header: orig.next_header(),
            payload_len: orig.payload_len() as usize,
            hop_limit: orig.hop_limit(),
        };
        let reason = match reason {
            Unreachable::Net => Icmpv6DstUnreachable::NoRoute,
            Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
            Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
        };
        let repr = Icmpv6Repr::DstUnreachable {
            reason,
            header,
            data: &quote[IPV6_HEADER_LEN..],
        };
        log::debug!(
            "telling {} that {}: {reason}",
            header.src_addr,
            header.dst_addr
        );
        self.send_icmpv6(guest_mac, (src, header.src_addr), &repr, HOP_LIMIT, sink);
    }
}

/// An IPv4 header from `src` to `dst` followed by `head` (at most 8
/// bytes of a payload), for quoting in an ICMP error.
pub(super) fn ipv4_quote(src: Ipv4Addr, dst: Ipv4Addr, head: &[u8]) -> Vec<u8> {
    let head = &head[..head.len().min(8)];
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: head.len(),
        hop_limit: HOP_LIMIT,
    };
    let mut buf = vec![0u8; repr.buffer_len() + head.len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut packet, &ChecksumCapabilities::default());
    packet.payload_mut().copy_from_slice(head);
    buf
}

/// A quoted packet's total length field still names the whole original;
/// the parser wants that many bytes, so pad the copy to it.
fn quote_padded(quote: &[u8]) -> Vec<u8> {
    let mut buf = quote.to_vec();
    if buf.len() >= 4 {
        let total = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if total > buf.len() {
            buf.resize(total, 0);
        }
    }
    buf
}
