//! IPv6 on the virtual network (`-6`): the guest's IPv6 packets sorted
//! by protocol, neighbour discovery for the virtual hosts' addresses, and
//! router advertisements that let the guest configure itself (SLAAC).
//!
//! Neighbour solicitations are answered here, not by smoltcp: with any-IP
//! on it would claim every address, and its advertisements lack the
//! router flag, whose absence makes a Linux guest drop its default route.
//! Only advertisements (answers to smoltcp's own solicitations for the
//! guest) go to smoltcp. Router advertisements carry the prefix (on-link,
//! autonomous), the MTU and the DNS address (RDNSS, RFC 8106), in answer
//! to a router solicitation and every `RA_INTERVAL`.

use std::net::{IpAddr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet,
    Icmpv6ParamProblem, Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags,
    NdiscRepr, RawHardwareAddress,
};

use super::frag::{FragKey, Fragment, IPV6_FRAGMENT_HEADER_LEN, Refused};
use super::{Engine, FrameSink, Packet};
use crate::host::Host;

/// Unsolicited router advertisements this often.
pub const RA_INTERVAL: Duration = Duration::from_secs(30);
/// How long the guest keeps the gateway as its default router, the
/// prefix and the DNS address without hearing again.
const ROUTER_LIFETIME_SECS: u16 = 1800;
const PREFIX_VALID_SECS: u32 = 86400;
const PREFIX_PREFERRED_SECS: u32 = 14400;
const RDNSS_LIFETIME_SECS: u32 = 1800;
/// Neighbour discovery is only valid with the largest hop limit (RFC 4861).
pub const NDP_HOP_LIMIT: u8 = 255;
/// IPv6's smallest MTU; an ICMPv6 error quotes what fits in it.
const IPV6_MIN_MTU: usize = 1280;
pub const QUOTE6_LEN: usize = IPV6_MIN_MTU - 40 - 8;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);
const IPV6_HEADER_LEN: usize = 40;
/// Where a parameter problem about a fragment's offset points: the
/// offset field, 2 bytes into the fragment header right after ours.
const FRAGMENT_OFFSET_POINTER: u32 = IPV6_HEADER_LEN as u32 + 2;

/// NDP option types.
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;
/// Prefix information flags: on-link, autonomous address configuration.
const PREFIX_ON_LINK_AUTONOMOUS: u8 = 0xc0;

impl<H: Host> Engine<H> {
    pub(super) fn process_ipv6<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let Some(link) = self.plan.v6 else {
            log::trace!("dropping an IPv6 frame: IPv6 is off");
            return;
        };
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
            log::trace!("dropping a malformed IPv6 packet");
            return;
        };
        let Ok(repr) = Ipv6Repr::parse(&ip) else {
            return;
        };
        let guest_mac = eth.src_addr();
        if link.contains(repr.src_addr) {
            self.learn_guest(repr.src_addr.into(), guest_mac);
            self.guest_v6 = Some(repr.src_addr);
        } else if repr.src_addr.is_unicast_link_local() {
            self.learn_guest(repr.src_addr.into(), guest_mac);
        }
        let packet = eth.payload();
        let total = (IPV6_HEADER_LEN + repr.payload_len).min(packet.len());
        let pkt = Packet {
            guest_mac,
            src: repr.src_addr.into(),
            dst: repr.dst_addr.into(),
            payload: ip.payload(),
            quote: &packet[..total.min(QUOTE6_LEN)],
        };
        match repr.next_header {
            IpProtocol::Tcp => self.process_tcp(now, frame, &pkt, sink),
            IpProtocol::Udp => self.process_udp(now, &pkt, sink),
            IpProtocol::Icmpv6 => self.process_icmpv6(now, frame, &pkt, repr.hop_limit, sink),
            IpProtocol::Ipv6Frag => self.reassemble_v6(now, &eth, &repr, ip.payload(), sink),
            // Hop-by-hop options carry the guest's MLD reports: nothing
            // for a router without multicast to do.
            other => log::trace!("dropping IPv6 next header {other} to {}", repr.dst_addr),
        }
    }

    fn process_icmpv6<S: FrameSink>(
        &mut self,
        now: Instant,
        frame: &[u8],
        pkt: &Packet,
        hop_limit: u8,
        sink: &mut S,
    ) {
        let (IpAddr::V6(src), IpAddr::V6(dst)) = (pkt.src, pkt.dst) else {
            return;
        };
        let Ok(packet) = Icmpv6Packet::new_checked(pkt.payload) else {
            return;
        };
        let Ok(repr) = Icmpv6Repr::parse(&src, &dst, &packet, &self.caps.checksum) else {
            log::trace!("dropping an ICMPv6 message that does not parse");
            return;
        };
        match repr {
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            }) if hop_limit == NDP_HOP_LIMIT => {
                self.answer_solicitation(pkt.guest_mac, src, target_addr, lladdr, sink)
            }
            // Answers to smoltcp's own solicitations for the guest.
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { .. }) => {
                self.feed_smoltcp(now, frame, sink)
            }
            Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { .. }) if hop_limit == NDP_HOP_LIMIT => {
                let (to, mac) = if src.is_unspecified() {
                    (ALL_NODES, ALL_NODES_MAC)
                } else {
                    (src, pkt.guest_mac)
                };
                self.send_router_advert(to, mac, sink);
            }
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => self.process_echo(now, pkt, ident, seq_no, data, sink),
            _ => {}
        }
    }

    /// A neighbour solicitation: answered for the virtual hosts' addresses
    /// only, as a router answers. A guest's duplicate address detection
    /// (from ::) for its own tentative address is left unanswered, and
    /// tells us the address it is about to use.
    fn answer_solicitation<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: Ipv6Addr,
        target: Ipv6Addr,
        lladdr: Option<RawHardwareAddress>,
        sink: &mut S,
    ) {
        let Some(link) = self.plan.v6 else {
            return;
        };
        if !self.is_virtual(target.into()) {
            if src.is_unspecified() && link.contains(target) {
                self.learn_guest(target.into(), guest_mac);
                self.guest_v6 = Some(target);
            }
            return;
        }
        let (to, mac, solicited) = if src.is_unspecified() {
            // Someone else wants one of our addresses: defend it.
            (ALL_NODES, ALL_NODES_MAC, false)
        } else {
            let mac = lladdr
                .filter(|l| l.len() == 6)
                .map(|l| EthernetAddress::from_bytes(l.as_bytes()))
                .unwrap_or(guest_mac);
            (src, mac, true)
        };
        let mut flags = NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::OVERRIDE;
        if solicited {
            flags |= NdiscNeighborFlags::SOLICITED;
        }
        let advert = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr: target,
            lladdr: Some(self.mac.into()),
        });
        self.send_icmpv6(mac, (target, to), &advert, NDP_HOP_LIMIT, sink);
    }

    /// Send unsolicited router advertisements when they are due.
    pub(super) fn advertise_if_due<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        if self.next_ra.is_some_and(|at| now >= at) {
            self.next_ra = Some(now + RA_INTERVAL);
            self.send_router_advert(ALL_NODES, ALL_NODES_MAC, sink);
        }
    }

    fn send_router_advert<S: FrameSink>(
        &mut self,
        to: Ipv6Addr,
        mac: EthernetAddress,
        sink: &mut S,
    ) {
        let Some(link) = self.plan.v6 else {
            return;
        };
        let mut ra = Vec::with_capacity(96);
        ra.extend_from_slice(&[134, 0, 0, 0, 64, 0]); // type, code, checksum, hop limit, flags
        ra.extend_from_slice(&ROUTER_LIFETIME_SECS.to_be_bytes());
        ra.extend_from_slice(&[0; 8]); // reachable time, retransmission timer: unspecified
        ra.extend_from_slice(&[OPT_SOURCE_LLADDR, 1]);
        ra.extend_from_slice(&self.mac.0);
        if self.mtu >= IPV6_MIN_MTU {
            ra.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
            ra.extend_from_slice(&(self.mtu as u32).to_be_bytes());
        }
        ra.extend_from_slice(&[OPT_PREFIX_INFO, 4, 64, PREFIX_ON_LINK_AUTONOMOUS]);
        ra.extend_from_slice(&PREFIX_VALID_SECS.to_be_bytes());
        ra.extend_from_slice(&PREFIX_PREFERRED_SECS.to_be_bytes());
        ra.extend_from_slice(&[0; 4]);
        ra.extend_from_slice(&link.prefix.octets());
        if let Some(dns) = link.dns {
            ra.extend_from_slice(&[OPT_RDNSS, 3, 0, 0]);
            ra.extend_from_slice(&RDNSS_LIFETIME_SECS.to_be_bytes());
            ra.extend_from_slice(&dns.octets());
        }
        let from = link.gateway_ll;
        let len = ra.len();
        self.send_ip_with(
            NDP_HOP_LIMIT,
            mac,
            (from.into(), to.into()),
            IpProtocol::Icmpv6,
            len,
            sink,
            |buf| {
                buf.copy_from_slice(&ra);
                Icmpv6Packet::new_unchecked(buf).fill_checksum(&from, &to);
            },
        );
        log::debug!("router advertisement to {to}");
    }

    pub(super) fn send_icmpv6<S: FrameSink>(
        &mut self,
        dst_mac: EthernetAddress,
        (src, dst): (Ipv6Addr, Ipv6Addr),
        repr: &Icmpv6Repr<'_>,
        hop_limit: u8,
        sink: &mut S,
    ) {
        self.send_ip_with(
            hop_limit,
            dst_mac,
            (src.into(), dst.into()),
            IpProtocol::Icmpv6,
            repr.buffer_len(),
            sink,
            |buf| {
                repr.emit(
                    &src,
                    &dst,
                    &mut Icmpv6Packet::new_unchecked(buf),
                    &ChecksumCapabilities::default(),
                )
            },
        );
    }

    /// A fragment of a guest datagram: once all are in, the whole is
    /// handled as if it had come in one frame.
    fn reassemble_v6<S: FrameSink>(
        &mut self,
        now: Instant,
        eth: &EthernetFrame<&[u8]>,
        repr: &Ipv6Repr,
        payload: &[u8],
        sink: &mut S,
    ) {
        if payload.len() < IPV6_FRAGMENT_HEADER_LEN {
            return;
        }
        let next = payload[0];
        let off_flags = u16::from_be_bytes([payload[2], payload[3]]);
        let id = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        let fragment = Fragment {
            key: FragKey {
                src: repr.src_addr.into(),
                dst: repr.dst_addr.into(),
                proto: next,
                id,
            },
            offset: (off_flags & !7) as usize,
            more: off_flags & 1 == 1,
            data: &payload[IPV6_FRAGMENT_HEADER_LEN..],
        };
        let whole = match self.frags.add(now, fragment) {
            Ok(Some(whole)) => whole,
            Ok(None) | Err(Refused::Inconsistent) => return,
            Err(Refused::TooLarge) => {
                return self.refuse_oversized_fragment(eth, repr, payload, sink);
            }
        };
        let inner = Ipv6Repr {
            next_header: IpProtocol::from(next),
            payload_len: whole.len(),
            ..*repr
        };
        let mut frame = vec![0u8; 14 + IPV6_HEADER_LEN + whole.len()];
        let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: eth.src_addr(),
            dst_addr: eth.dst_addr(),
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut f);
        let mut ip = Ipv6Packet::new_unchecked(f.payload_mut());
        inner.emit(&mut ip);
        ip.payload_mut().copy_from_slice(&whole);
        if inner.next_header == IpProtocol::Ipv6Frag {
            return; // a fragment inside a fragment: nonsense
        }
        log::debug!("reassembled a {}-byte IPv6 datagram", whole.len());
        self.process_ipv6(now, &frame, sink);
    }

    /// A fragment reaching past 65,535 bytes of payload: dropped with its
    /// datagram, and answered as RFC 8200 (4.5) asks, with a parameter
    /// problem pointing at the fragment offset field.
    fn refuse_oversized_fragment<S: FrameSink>(
        &mut self,
        eth: &EthernetFrame<&[u8]>,
        repr: &Ipv6Repr,
        payload: &[u8],
        sink: &mut S,
    ) {
        if repr.src_addr.is_multicast() || repr.src_addr.is_unspecified() {
            return;
        }
        let quoted = payload.len().min(QUOTE6_LEN - IPV6_HEADER_LEN);
        let error = Icmpv6Repr::ParamProblem {
            reason: Icmpv6ParamProblem::ErroneousHdrField,
            pointer: FRAGMENT_OFFSET_POINTER,
            header: *repr,
            data: &payload[..quoted],
        };
        log::debug!(
            "telling {} that a fragment reaches past 65,535 bytes",
            repr.src_addr
        );
        self.send_icmpv6(
            eth.src_addr(),
            (repr.dst_addr, repr.src_addr),
            &error,
            super::HOP_LIMIT,
            sink,
        );
    }
}
