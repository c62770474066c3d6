//! Emission: every packet the engine originates, framed and sent.
//!
//! The virtual hosts' answers (ICMP, DHCP, UDP from host sockets, router
//! advertisements, RST) all leave through `send_ip`: an IP header of the
//! addresses' family and an Ethernet header from the gateway's MAC, built
//! in the engine's one reused buffer. A datagram larger than the guest's
//! MTU goes in fragments, IPv4's own or with IPv6's fragment header, since
//! netferry is the sender on this link. TCP segments are smoltcp's to
//! emit and never come here larger than the MTU.

use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, IpRepr, Ipv4Packet,
    Ipv4Repr, Ipv6FragmentRepr, Ipv6Packet, Ipv6Repr,
};

use super::{Engine, FrameSink, HOP_LIMIT, Host, device, frag};

impl<H: Host> Engine<H> {
    /// Wrap a payload in an IP header of `src`'s family and an Ethernet
    /// header from the gateway's MAC, in the reused buffer, and send it.
    /// The one place every packet the engine originates is framed.
    pub(super) fn send_ip<S: FrameSink>(
        &mut self,
        dst_mac: EthernetAddress,
        addrs: (IpAddr, IpAddr),
        proto: IpProtocol,
        payload_len: usize,
        sink: &mut S,
        emit_payload: impl FnOnce(&mut [u8]),
    ) {
        self.send_ip_with(
            HOP_LIMIT,
            dst_mac,
            addrs,
            proto,
            payload_len,
            sink,
            emit_payload,
        )
    }

    /// `send_ip` with a hop limit of the caller's (neighbour discovery
    /// needs 255). A datagram larger than the MTU is sent in fragments.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_ip_with<S: FrameSink>(
        &mut self,
        hop_limit: u8,
        dst_mac: EthernetAddress,
        addrs: (IpAddr, IpAddr),
        proto: IpProtocol,
        payload_len: usize,
        sink: &mut S,
        emit_payload: impl FnOnce(&mut [u8]),
    ) {
        if payload_len > frag::max_payload(addrs.1) {
            // An IPv6 host datagram forwarded to an IPv4 guest can be
            // larger than IPv4 carries.
            log::debug!(
                "not sending a {payload_len}-byte payload to {}: more than an IP packet holds",
                addrs.1
            );
            return;
        }
        let Some((eth, ip)) = self.headers(hop_limit, dst_mac, addrs, proto, payload_len) else {
            return;
        };
        let len = eth.buffer_len() + ip.header_len() + payload_len;
        if len > self.mtu + device::ETHERNET_HEADER_LEN {
            if proto == IpProtocol::Tcp {
                log::debug!(
                    "not sending a {len}-byte frame to {}: larger than the MTU",
                    addrs.1
                );
                return;
            }
            let mut payload = vec![0u8; payload_len];
            emit_payload(&mut payload);
            return self.send_fragments(&eth, &ip, &payload, sink);
        }
        sink.send_frame(self.frame(&eth, &ip, emit_payload));
    }

    /// The Ethernet and IP headers of a packet from the engine, or `None`
    /// when the addresses' families differ.
    pub(super) fn headers(
        &self,
        hop_limit: u8,
        dst_mac: EthernetAddress,
        (src, dst): (IpAddr, IpAddr),
        proto: IpProtocol,
        payload_len: usize,
    ) -> Option<(EthernetRepr, IpRepr)> {
        let (ip, ethertype) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (
                IpRepr::Ipv4(Ipv4Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: proto,
                    payload_len,
                    hop_limit,
                }),
                EthernetProtocol::Ipv4,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => (
                IpRepr::Ipv6(Ipv6Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: proto,
                    payload_len,
                    hop_limit,
                }),
                EthernetProtocol::Ipv6,
            ),
            _ => {
                log::debug!("not sending a packet from {src} to {dst}: families differ");
                return None;
            }
        };
        let eth = EthernetRepr {
            src_addr: self.mac,
            dst_addr: dst_mac,
            ethertype,
        };
        Some((eth, ip))
    }

    /// A frame with these headers in the reused buffer, its payload
    /// written by `emit_payload`.
    pub(super) fn frame(
        &mut self,
        eth: &EthernetRepr,
        ip: &IpRepr,
        emit_payload: impl FnOnce(&mut [u8]),
    ) -> &mut [u8] {
        let len = eth.buffer_len() + ip.header_len() + ip.payload_len();
        if self.tx.len() < len {
            self.tx.resize(len, 0);
        }
        let buf = &mut self.tx[..len];
        let mut frame = EthernetFrame::new_unchecked(&mut *buf);
        eth.emit(&mut frame);
        let packet = frame.payload_mut();
        ip.emit(&mut *packet, &ChecksumCapabilities::default());
        emit_payload(&mut packet[ip.header_len()..]);
        buf
    }

    /// A datagram too large for the guest's MTU, in fragments: IPv4's own,
    /// or IPv6's fragment header (netferry is the sender on this link).
    fn send_fragments<S: FrameSink>(
        &mut self,
        eth: &EthernetRepr,
        ip: &IpRepr,
        payload: &[u8],
        sink: &mut S,
    ) {
        let eth_len = eth.buffer_len();
        let fixed = match ip {
            IpRepr::Ipv4(repr) => repr.buffer_len(),
            IpRepr::Ipv6(repr) => repr.buffer_len() + frag::IPV6_FRAGMENT_HEADER_LEN,
        };
        // An MTU the command line accepts (down to 1) may leave no room
        // for a fragment's headers and one unit of data.
        let Some(room) = (self.mtu + device::ETHERNET_HEADER_LEN)
            .checked_sub(eth_len + fixed)
            .filter(|&room| room >= frag::FRAGMENT_UNIT)
        else {
            log::debug!(
                "not sending a {}-byte datagram: MTU {} is too small to fragment it",
                payload.len(),
                self.mtu
            );
            return;
        };
        self.frag_id = self.frag_id.wrapping_add(1);
        let id = self.frag_id;
        let mut count = 0;
        match *ip {
            IpRepr::Ipv4(repr) => {
                for (offset, piece, more) in frag::pieces(payload, room) {
                    let part = Ipv4Repr {
                        payload_len: piece.len(),
                        ..repr
                    };
                    let mut buf = vec![0u8; eth_len + part.buffer_len() + piece.len()];
                    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
                    eth.emit(&mut frame);
                    let mut p = Ipv4Packet::new_unchecked(frame.payload_mut());
                    part.emit(&mut p, &ChecksumCapabilities::ignored());
                    p.set_ident(id as u16);
                    p.set_dont_frag(false);
                    p.set_more_frags(more);
                    p.set_frag_offset(offset as u16);
                    p.fill_checksum();
                    p.payload_mut().copy_from_slice(piece);
                    sink.send_frame(&mut buf);
                    count += 1;
                }
            }
            IpRepr::Ipv6(repr) => {
                for (offset, piece, more) in frag::pieces(payload, room) {
                    let part = Ipv6Repr {
                        next_header: IpProtocol::Ipv6Frag,
                        payload_len: frag::IPV6_FRAGMENT_HEADER_LEN + piece.len(),
                        ..repr
                    };
                    let mut buf = vec![0u8; eth_len + fixed + piece.len()];
                    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
                    eth.emit(&mut frame);
                    let mut p = Ipv6Packet::new_unchecked(frame.payload_mut());
                    part.emit(&mut p);
                    let body = p.payload_mut();
                    let fields = Ipv6FragmentRepr {
                        frag_offset: (offset / frag::FRAGMENT_UNIT) as u16,
                        more_frags: more,
                        ident: id,
                    };
                    frag::emit_v6_header(body, repr.next_header, &fields);
                    body[frag::IPV6_FRAGMENT_HEADER_LEN..].copy_from_slice(piece);
                    sink.send_frame(&mut buf);
                    count += 1;
                }
            }
        }
        log::debug!(
            "sent a {}-byte datagram in {count} fragments",
            payload.len()
        );
    }
}
