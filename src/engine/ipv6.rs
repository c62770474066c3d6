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
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IPV6_HEADER_LEN, Icmpv6Packet,
    Icmpv6ParamProblem, Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags,
    NdiscOption, NdiscOptionRepr, NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr,
    NdiscRouterFlags, RawHardwareAddress,
};

use super::frag::{self, FragKey, Fragment, Refused};
use super::{ETHERNET_HEADER_LEN, Engine, FrameSink, IPV6_MIN_MTU, Packet};
use crate::host::Host;

/// Unsolicited router advertisements this often.
pub const RA_INTERVAL: Duration = Duration::from_secs(30);
/// How long the guest keeps the gateway as its default router, the
/// prefix and the DNS address without hearing again.
const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
const PREFIX_VALID: Duration = Duration::from_secs(86400);
const PREFIX_PREFERRED: Duration = Duration::from_secs(14400);
const RDNSS_LIFETIME: Duration = Duration::from_secs(1800);
/// The hop limit the guest is told to use for what it sends.
const ADVERTISED_HOP_LIMIT: u8 = 64;
/// The advertised prefix's length: SLAAC needs a /64.
const PREFIX_LEN: u8 = 64;
/// Neighbour discovery is only valid with the largest hop limit (RFC 4861).
pub const NDP_HOP_LIMIT: u8 = 255;
/// An ICMPv6 error quotes what fits in IPv6's smallest MTU behind its
/// own IPv6 header and the error's 8-byte header.
pub const QUOTE6_LEN: usize = IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMPV6_ERROR_HEADER_LEN;
const ICMPV6_ERROR_HEADER_LEN: usize = 8;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: EthernetAddress = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);
/// Where a parameter problem about a fragment's offset points: the
/// offset field, 2 bytes into the fragment header right after ours.
const FRAGMENT_OFFSET_POINTER: u32 = IPV6_HEADER_LEN as u32 + 2;

/// The RDNSS option (RFC 8106): its type, its length with one address
/// in 8-byte units, and that length less the type and length bytes.
const OPT_RDNSS: u8 = 25;
const RDNSS_UNITS: u8 = 3;
const RDNSS_DATA_LEN: usize = RDNSS_UNITS as usize * 8 - 2;

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
            Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { .. })
                if hop_limit == NDP_HOP_LIMIT && self.plan.v6.is_some_and(|l| l.router_adverts) =>
            {
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

    /// A neighbour solicitation: answered as a router answers, for the
    /// virtual hosts' addresses and, where the guest's subnets are open
    /// (pasta's model: the host's own subnets, the host's gateway), for
    /// every other unicast address but the guest's own, since the guest
    /// reaches its neighbours through netferry (as pasta answers, and as
    /// `arp_answer` does for IPv4). A guest's duplicate address detection
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
            if src.is_unspecified() {
                if link.contains(target) {
                    self.learn_guest(target.into(), guest_mac);
                    self.guest_v6 = Some(target);
                }
                return;
            }
            let guests_own = target == src || Some(target) == self.guest_v6;
            if self.plan.closed_subnets
                || guests_own
                || target.is_multicast()
                || target.is_unspecified()
            {
                return;
            }
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
        let advert = NdiscRepr::RouterAdvert {
            hop_limit: ADVERTISED_HOP_LIMIT,
            flags: NdiscRouterFlags::empty(),
            router_lifetime: ROUTER_LIFETIME,
            // Reachable time and retransmission timer: unspecified.
            reachable_time: Duration::ZERO,
            retrans_time: Duration::ZERO,
            lladdr: Some(self.mac.into()),
            mtu: (self.mtu >= IPV6_MIN_MTU).then_some(self.mtu as u32),
            prefix_info: Some(NdiscPrefixInformation {
                prefix_len: PREFIX_LEN,
                flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
                valid_lifetime: PREFIX_VALID,
                preferred_lifetime: PREFIX_PREFERRED,
                prefix: link.prefix,
            }),
        };
        // smoltcp has no RDNSS option (RFC 8106): it follows the others,
        // as data of our own: reserved, lifetime, the address.
        let rdnss = link.dns.map(|dns| {
            let mut data = [0u8; RDNSS_DATA_LEN];
            data[2..6].copy_from_slice(&(RDNSS_LIFETIME.secs() as u32).to_be_bytes());
            data[6..].copy_from_slice(&dns.octets());
            data
        });
        let rdnss = rdnss.as_ref().map(|data| NdiscOptionRepr::Unknown {
            type_: OPT_RDNSS,
            length: RDNSS_UNITS,
            data,
        });
        let at = advert.buffer_len();
        let len = at + rdnss.map_or(0, |o| o.buffer_len());
        let from = link.gateway_ll;
        self.send_ip_with(
            NDP_HOP_LIMIT,
            mac,
            (from.into(), to.into()),
            IpProtocol::Icmpv6,
            len,
            sink,
            |buf| {
                // The send buffer is reused: smoltcp leaves the MTU
                // option's reserved bytes as it found them.
                buf.fill(0);
                advert.emit(&mut Icmpv6Packet::new_unchecked(&mut *buf));
                if let Some(rdnss) = rdnss {
                    rdnss.emit(&mut NdiscOption::new_unchecked(&mut buf[at..]));
                }
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
        let Some((next, fields, data)) = frag::parse_v6_header(payload) else {
            return;
        };
        let fragment = Fragment {
            key: FragKey {
                src: repr.src_addr.into(),
                dst: repr.dst_addr.into(),
                proto: u8::from(next),
                id: fields.ident,
            },
            offset: usize::from(fields.frag_offset) * frag::FRAGMENT_UNIT,
            more: fields.more_frags,
            data,
        };
        let whole = match self.frags.add(now, fragment) {
            Ok(Some(whole)) => whole,
            Ok(None) | Err(Refused::Inconsistent) => return,
            Err(Refused::TooLarge) => {
                return self.refuse_oversized_fragment(eth, repr, payload, sink);
            }
        };
        let inner = Ipv6Repr {
            next_header: next,
            payload_len: whole.len(),
            ..*repr
        };
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + whole.len()];
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
