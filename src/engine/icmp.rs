//! ICMP: echo to the virtual hosts answered here, echo to anywhere else
//! through unprivileged ICMP sockets, and the errors netferry sends the
//! guest (destination unreachable).
//!
//! Ping sockets exist only where `net.ipv4.ping_group_range` includes the
//! user's group. Where they do not, pings to the outside go unanswered
//! (one log line), as a firewall would leave them.

use std::net::SocketAddrV4;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr,
};

use super::flows::{DgramFlow, Flow, FlowKey, Kind, Recv};
use super::{Engine, FrameSink, HOP_LIMIT, Route};
use crate::host;

/// Bytes of an ICMP echo header (type, code, checksum, id, sequence).
const ECHO_HEADER_LEN: usize = 8;

impl Engine {
    pub(super) fn process_icmp<S: FrameSink>(
        &mut self,
        now: Instant,
        guest_mac: EthernetAddress,
        _packet: &Ipv4Packet<&[u8]>,
        ip: &Ipv4Repr,
        payload: &[u8],
        sink: &mut S,
    ) {
        let Ok(packet) = Icmpv4Packet::new_checked(payload) else {
            return;
        };
        let Ok(repr) = Icmpv4Repr::parse(&packet, &self.caps.checksum) else {
            log::trace!("dropping an ICMP message that does not parse");
            return;
        };
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = repr
        else {
            return;
        };
        if self.is_virtual(ip.dst_addr) {
            // Answered even with host loopback disabled: the gateway is
            // still there, it just does not lead to the host.
            let reply = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            return self.send_icmp(guest_mac, ip.dst_addr, ip.src_addr, &reply, sink);
        }
        match self.route(now, ip.dst_addr, 0) {
            Route::Host(_) => {}
            Route::Unreachable(reason) => {
                let quote = quote_of(ip, payload);
                let src = self.net.gateway;
                return self.send_icmp_unreachable(guest_mac, src, reason, &quote, sink);
            }
            Route::Refused | Route::Drop => return,
        }
        let key = FlowKey {
            guest: SocketAddrV4::new(ip.src_addr, ident),
            dst: SocketAddrV4::new(ip.dst_addr, 0),
        };
        let Some(slot) = self.ping_flow(now, key, guest_mac) else {
            return;
        };
        let Some(flow) = self.flows.dgram_mut(slot) else {
            return;
        };
        flow.last_used = now;
        // The kernel fills in the identifier (the socket's) and checksum.
        if let Err(e) = flow.sock.send(payload) {
            log::debug!("ping to {}: {e}", ip.dst_addr);
        }
    }

    fn ping_flow(
        &mut self,
        now: Instant,
        key: FlowKey,
        guest_mac: EthernetAddress,
    ) -> Option<usize> {
        if let Some(slot) = self.flows.find(Kind::Ping, &key) {
            return Some(slot);
        }
        if let Some(old) = self.flows.evict_candidate(Kind::Ping) {
            self.remove_flow(old);
        }
        let dst = *key.dst.ip();
        let sock = match host::ping_connect(dst, self.outbound.for_dst(dst.into())) {
            Ok(sock) => sock,
            Err(e) => {
                if !self.ping_denied_logged {
                    self.ping_denied_logged = true;
                    log::warn!(
                        "ICMP echo to {dst} cannot be forwarded: {e} \
                         (is the group in net.ipv4.ping_group_range?); pings to the outside will go unanswered"
                    );
                }
                return None;
            }
        };
        let flow = DgramFlow::new(key, sock, guest_mac, now);
        self.flows
            .insert(Flow::Ping(flow), &self.registry)
            .map_err(|e| log::warn!("cannot watch a ping socket: {e}"))
            .ok()
    }

    /// Echo replies from the host socket back to the guest, with the
    /// guest's own identifier.
    pub(super) fn pump_ping<S: FrameSink>(&mut self, now: Instant, slot: usize, sink: &mut S) {
        loop {
            let Some(flow) = self.flows.dgram_mut(slot) else {
                return;
            };
            let (guest_mac, key) = (flow.guest_mac, flow.key);
            let n = match flow.recv(&mut self.scratch, now) {
                Recv::Data(n) => n,
                Recv::Done => return,
                Recv::Failed(e) => {
                    log::debug!("ping socket error: {e}");
                    flow.readable = false;
                    return;
                }
            };
            // Borrow the datagram out of self while building the frame.
            let scratch = std::mem::take(&mut self.scratch);
            if let Ok(packet) = Icmpv4Packet::new_checked(&scratch[..n])
                && packet.msg_type() == Icmpv4Message::EchoReply
                && n >= ECHO_HEADER_LEN
            {
                let reply = Icmpv4Repr::EchoReply {
                    ident: key.guest.port(),
                    seq_no: packet.echo_seq_no(),
                    data: packet.data(),
                };
                self.send_icmp(guest_mac, *key.dst.ip(), *key.guest.ip(), &reply, sink);
            }
            self.scratch = scratch;
        }
    }

    pub(super) fn send_icmp<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: Ipv4Address,
        dst: Ipv4Address,
        repr: &Icmpv4Repr<'_>,
        sink: &mut S,
    ) {
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Icmp,
            payload_len: repr.buffer_len(),
            hop_limit: HOP_LIMIT,
        };
        self.send_ipv4(guest_mac, &ip, sink, |buf| {
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            );
        });
    }

    /// Destination unreachable from `src`, quoting the offending packet
    /// (its IP header and at least 8 bytes of its payload).
    pub(super) fn send_icmp_unreachable<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: Ipv4Address,
        reason: Icmpv4DstUnreachable,
        quote: &[u8],
        sink: &mut S,
    ) {
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
        self.send_icmp(guest_mac, src, header.src_addr, &repr, sink);
    }
}

/// An IP header plus 8 payload bytes rebuilt from a parsed packet, for
/// quoting in an ICMP error.
pub(super) fn quote_of(ip: &Ipv4Repr, payload: &[u8]) -> Vec<u8> {
    let head = &payload[..payload.len().min(8)];
    let mut repr = *ip;
    repr.payload_len = head.len();
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
