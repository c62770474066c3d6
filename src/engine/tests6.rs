//! IPv6 and fragments, driven with literal frames on the simulated host:
//! neighbour discovery, router advertisements, echo, routing to the
//! host's ::1, and datagrams split and joined in both families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Message, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6ExtHeader, Ipv6FragmentHeader,
    Ipv6FragmentRepr, Ipv6Packet, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress, UdpPacket,
    UdpRepr,
};

use super::EngineConfig;
use super::frag::{FragKey, Fragment, IPV6_FRAGMENT_HEADER_LEN, Reassembly, emit_v6_header};
use super::harness::{Rig, ethernet, ipv6_packet};
use crate::slirp4netns::{Network, Network6, slirp_plan};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x66]);
const GW_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn guest6() -> Ipv6Addr {
    v6("fd00::1234")
}

/// The IPv6 network of `slirp4netns -6` at `mtu`, the clock at 10 ms.
fn rig(mtu: usize, host_loopback: bool) -> Rig {
    let net6 = Network6::default();
    let plan = slirp_plan(&Network::default(), Some(&net6), host_loopback, true);
    Rig::new(EngineConfig::new(plan, mtu), 3, Instant::from_millis(10))
}

fn frame6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: EthernetAddress,
    proto: IpProtocol,
    hop: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ip = ipv6_packet(src, dst, proto, hop, payload);
    ethernet(GUEST_MAC, dst_mac, EthernetProtocol::Ipv6, &ip)
}

fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: EthernetAddress,
    hop: u8,
    repr: &Icmpv6Repr,
) -> Vec<u8> {
    let mut body = vec![0u8; repr.buffer_len()];
    repr.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut body[..]),
        &ChecksumCapabilities::default(),
    );
    frame6(src, dst, dst_mac, IpProtocol::Icmpv6, hop, &body)
}

fn udp6(src: SocketAddr, dst: SocketAddr, data: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        unreachable!()
    };
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let mut body = vec![0u8; 8 + data.len()];
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut body[..]),
        &s.into(),
        &d.into(),
        data.len(),
        |p| p.copy_from_slice(data),
        &ChecksumCapabilities::default(),
    );
    frame6(s, d, GW_MAC, IpProtocol::Udp, 64, &body)
}

/// The ICMPv6 messages among frames, with their IPv6 header fields.
fn icmp6_out(frames: &[Vec<u8>]) -> Vec<(Ipv6Addr, Ipv6Addr, u8, EthernetAddress, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            (eth.ethertype() == EthernetProtocol::Ipv6).then_some(())?;
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            (ip.next_header() == IpProtocol::Icmpv6).then_some(())?;
            let icmp = Icmpv6Packet::new_checked(ip.payload()).ok()?;
            assert!(
                icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()),
                "bad checksum"
            );
            Some((
                ip.src_addr(),
                ip.dst_addr(),
                ip.hop_limit(),
                eth.dst_addr(),
                ip.payload().to_vec(),
            ))
        })
        .collect()
}

fn solicit(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let ns = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: (!src.is_unspecified()).then(|| RawHardwareAddress::from(GUEST_MAC)),
    });
    let o = target.octets();
    let sn = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    );
    let m = sn.octets();
    icmp6(
        src,
        sn,
        EthernetAddress([0x33, 0x33, 0xff, m[13], m[14], m[15]]),
        255,
        &ns,
    )
}

#[test]
fn solicitations_for_the_virtual_hosts_get_router_advertisements_of_our_mac() {
    let mut r = rig(1500, true);
    for target in ["fd00::2", "fd00::3", "fe80::2", "fe80::3"] {
        let out = icmp6_out(&r.feed(&solicit(v6("fe80::66"), v6(target))));
        assert_eq!(out.len(), 1, "{target}");
        let (src, dst, hop, mac, body) = &out[0];
        assert_eq!(
            (*src, *dst, *hop, *mac),
            (v6(target), v6("fe80::66"), 255, GUEST_MAC)
        );
        let p = Icmpv6Packet::new_checked(&body[..]).unwrap();
        let repr = Icmpv6Repr::parse(src, dst, &p, &ChecksumCapabilities::default()).unwrap();
        let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        }) = repr
        else {
            panic!("{repr:?}")
        };
        assert_eq!(target_addr, v6(target));
        assert!(
            flags.contains(NdiscNeighborFlags::ROUTER),
            "no router flag: the guest would drop its default route"
        );
        assert!(flags.contains(NdiscNeighborFlags::SOLICITED));
        assert_eq!(lladdr, Some(RawHardwareAddress::from(GW_MAC)));
    }
}

#[test]
fn other_addresses_and_the_guests_own_dad_are_not_claimed() {
    let mut r = rig(1500, true);
    assert!(r.feed(&solicit(v6("fe80::66"), guest6())).is_empty());
    assert!(r.feed(&solicit(v6("fe80::66"), v6("fd00::99"))).is_empty());
    // Duplicate address detection from :: is left unanswered and tells
    // us where forwards from IPv6 clients can go.
    assert!(r.feed(&solicit(Ipv6Addr::UNSPECIFIED, guest6())).is_empty());
    assert_eq!(r.engine.guest_v6, Some(guest6()));
}

/// A router solicitation from the guest's link-local address to all
/// routers, with its link-layer address or without.
fn router_solicitation(lladdr: Option<EthernetAddress>) -> Vec<u8> {
    let rs = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit {
        lladdr: lladdr.map(RawHardwareAddress::from),
    });
    let all_routers_mac = EthernetAddress([0x33, 0x33, 0, 0, 0, 2]);
    icmp6(v6("fe80::66"), v6("ff02::2"), all_routers_mac, 255, &rs)
}

#[test]
fn router_solicitation_gets_prefix_mtu_and_rdnss_and_advertisements_repeat() {
    let mut r = rig(1500, true);
    let out = icmp6_out(&r.feed(&router_solicitation(Some(GUEST_MAC))));
    assert_eq!(out.len(), 1);
    let (src, dst, hop, _, body) = &out[0];
    assert_eq!((*src, *dst, *hop), (v6("fe80::2"), v6("fe80::66"), 255));
    assert_eq!(body[0], 134, "a router advertisement");
    assert_eq!(
        u16::from_be_bytes([body[6], body[7]]),
        1800,
        "router lifetime"
    );
    // Options after the 16-byte header: type, length in 8-byte units.
    let mut opts = std::collections::HashMap::new();
    let mut at = 16;
    while at + 2 <= body.len() {
        let len = body[at + 1] as usize * 8;
        assert!(len > 0);
        opts.insert(body[at], body[at..at + len].to_vec());
        at += len;
    }
    assert_eq!(opts[&1][2..8], GW_MAC.0, "source link-layer address");
    assert_eq!(
        u32::from_be_bytes(opts[&5][4..8].try_into().unwrap()),
        1500,
        "MTU"
    );
    let prefix = &opts[&3];
    assert_eq!(
        (prefix[2], prefix[3]),
        (64, 0xc0),
        "a /64, on-link, autonomous"
    );
    assert_eq!(prefix[16..32], v6("fd00::").octets());
    let rdnss = &opts[&25];
    assert_eq!(rdnss[8..24], v6("fd00::3").octets());
    // Unsolicited ones to all nodes, every 30 s.
    let periodic = icmp6_out(&r.run(31_000));
    assert!(!periodic.is_empty(), "no periodic advertisement");
    assert!(
        periodic
            .iter()
            .all(|m| m.1 == v6("ff02::1") && m.4[0] == 134)
    );
}

/// A router advertisement, byte for byte as guests have been given it
/// (header, source link-layer address, MTU, prefix, RDNSS), even when
/// the reused send buffer last held other bytes.
#[test]
fn router_advertisement_is_byte_for_byte_what_guests_were_given() {
    let mut r = rig(1500, true);
    // A large reply first leaves 0xff bytes in the send buffer.
    let req = Icmpv6Repr::EchoRequest {
        ident: 1,
        seq_no: 1,
        data: &[0xff; 1200],
    };
    assert_eq!(
        r.feed(&icmp6(guest6(), v6("fd00::2"), GW_MAC, 64, &req))
            .len(),
        1
    );
    let out = icmp6_out(&r.feed(&router_solicitation(None)));
    assert_eq!(out.len(), 1);
    #[rustfmt::skip]
    let want = [
        // Type 134, code, checksum, hop limit 64, no flags, lifetime 1800 s,
        // reachable time and retransmission timer unspecified.
        0x86, 0x00, 0xe3, 0x2f, 0x40, 0x00, 0x07, 0x08,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // Source link-layer address: the gateway's MAC.
        0x01, 0x01, 0x52, 0x55, 0x0a, 0x00, 0x02, 0x02,
        // MTU 1500.
        0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x05, 0xdc,
        // Prefix fd00::/64, on-link and autonomous, valid 1 day,
        // preferred 4 hours.
        0x03, 0x04, 0x40, 0xc0, 0x00, 0x01, 0x51, 0x80,
        0x00, 0x00, 0x38, 0x40, 0x00, 0x00, 0x00, 0x00,
        0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // RDNSS fd00::3 for 1800 s.
        0x19, 0x03, 0x00, 0x00, 0x00, 0x00, 0x07, 0x08,
        0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
    ];
    assert_eq!(out[0].4, want);
}

#[test]
fn echo_to_the_virtual_hosts_is_answered() {
    let mut r = rig(1500, true);
    for dst in ["fd00::2", "fd00::3"] {
        let req = Icmpv6Repr::EchoRequest {
            ident: 9,
            seq_no: 4,
            data: b"ping6",
        };
        let out = icmp6_out(&r.feed(&icmp6(guest6(), v6(dst), GW_MAC, 64, &req)));
        assert_eq!(out.len(), 1, "{dst}");
        let (src, to, _, _, body) = &out[0];
        assert_eq!((*src, *to), (v6(dst), guest6()));
        let p = Icmpv6Packet::new_checked(&body[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv6Message::EchoReply);
        assert_eq!(
            (p.echo_ident(), p.echo_seq_no(), p.payload()),
            (9, 4, &b"ping6"[..])
        );
    }
}

#[test]
fn the_gateway_leads_to_the_hosts_ipv6_loopback_unless_disabled() {
    let mut r = rig(1500, true);
    r.feed(&udp6(
        "[fd00::1234]:5000".parse().unwrap(),
        "[fd00::2]:6000".parse().unwrap(),
        b"hi",
    ));
    let id = r
        .engine
        .host()
        .dgram_to("[::1]:6000".parse().unwrap())
        .expect("no host socket to ::1");
    assert_eq!(
        r.engine.host().dgram(id).unwrap().sent,
        vec![b"hi".to_vec()]
    );

    let mut r = rig(1500, false);
    let out = icmp6_out(&r.feed(&udp6(
        "[fd00::1234]:5000".parse().unwrap(),
        "[fd00::2]:6000".parse().unwrap(),
        b"hi",
    )));
    assert_eq!(out.len(), 1);
    let p = Icmpv6Packet::new_checked(&out[0].4[..]).unwrap();
    assert_eq!(
        (p.msg_type(), p.msg_code()),
        (Icmpv6Message::DstUnreachable, 0),
        "no route"
    );
    assert_eq!(r.engine.host().open_count(), 0);
}

#[test]
fn mapped_and_local_destinations_never_reach_a_host_socket() {
    let mut r = rig(1500, true);
    for dst in [
        "[::ffff:127.0.0.1]:80",
        "[::1]:80",
        "[fd00::77]:80",
        "[ff02::1]:80",
    ] {
        r.feed(&udp6(
            "[fd00::1234]:5000".parse().unwrap(),
            dst.parse().unwrap(),
            b"x",
        ));
    }
    assert_eq!(r.engine.host().open_count(), 0);
}

/// Join the fragments among `frames` (either family) into payloads.
fn defragment(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut r = Reassembly::default();
    let mut whole = Vec::new();
    for f in frames {
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert!(f.len() <= 1514, "a {}-byte frame over the MTU", f.len());
        let fragment = match eth.ethertype() {
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                assert!(ip.verify_checksum());
                Fragment {
                    key: FragKey {
                        src: ip.src_addr().into(),
                        dst: ip.dst_addr().into(),
                        proto: 17,
                        id: ip.ident().into(),
                    },
                    offset: ip.frag_offset() as usize,
                    more: ip.more_frags(),
                    data: &f[14 + 20..],
                }
            }
            _ => {
                let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
                assert_eq!(ip.next_header(), IpProtocol::Ipv6Frag);
                let header = Ipv6ExtHeader::new_checked(ip.payload()).unwrap();
                assert_eq!(header.header_len(), 0, "a fragment header's reserved byte");
                let fields = Ipv6FragmentHeader::new_checked(header.payload()).unwrap();
                let fields = Ipv6FragmentRepr::parse(&fields).unwrap();
                Fragment {
                    key: FragKey {
                        src: ip.src_addr().into(),
                        dst: ip.dst_addr().into(),
                        proto: header.next_header().into(),
                        id: fields.ident,
                    },
                    offset: usize::from(fields.frag_offset) * 8,
                    more: fields.more_frags,
                    data: &ip.payload()[IPV6_FRAGMENT_HEADER_LEN..],
                }
            }
        };
        whole.extend(r.add(Instant::from_secs(0), fragment).ok().flatten());
    }
    whole
}

#[test]
fn a_4000_byte_reply_reaches_a_guest_at_mtu_1500_in_fragments_both_families() {
    let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let mut r = rig(1500, true);
    // IPv6: the guest asks, the host answers with 4000 bytes.
    let guest: SocketAddr = "[fd00::1234]:5000".parse().unwrap();
    let remote: SocketAddr = "[2001:db8::5]:7".parse().unwrap();
    r.feed(&udp6(guest, remote, b"q"));
    let id = r.engine.host().dgram_to(remote).unwrap();
    r.engine.host_mut().dgram_reply(id, &data);
    let out = r.run(2);
    assert_eq!(out.len(), 3, "4000 bytes at MTU 1500: three fragments");
    let whole = defragment(&out);
    assert_eq!(whole.len(), 1);
    let udp = UdpPacket::new_checked(&whole[0][..]).unwrap();
    assert!(udp.verify_checksum(&remote.ip().into(), &guest.ip().into()));
    assert_eq!(udp.payload(), &data[..]);

    // IPv4, through the gateway to the host.
    let ip = Ipv4Repr {
        src_addr: Ipv4Addr::new(10, 0, 2, 100),
        dst_addr: Ipv4Addr::new(10, 0, 2, 2),
        next_header: IpProtocol::Udp,
        payload_len: 9,
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + 29];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: GW_MAC,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &ChecksumCapabilities::default());
    UdpRepr {
        src_port: 5001,
        dst_port: 7,
    }
    .emit(
        &mut UdpPacket::new_unchecked(p.payload_mut()),
        &ip.src_addr.into(),
        &ip.dst_addr.into(),
        1,
        |b| b[0] = b'q',
        &ChecksumCapabilities::default(),
    );
    r.feed(&buf);
    let id = r
        .engine
        .host()
        .dgram_to("127.0.0.1:7".parse().unwrap())
        .unwrap();
    r.engine.host_mut().dgram_reply(id, &data);
    let out = r.run(2);
    assert_eq!(out.len(), 3);
    let whole = defragment(&out);
    let udp = UdpPacket::new_checked(&whole[0][..]).unwrap();
    assert!(udp.verify_checksum(&ip.dst_addr.into(), &ip.src_addr.into()));
    assert_eq!(udp.payload(), &data[..]);
}

#[test]
fn fragmented_guest_datagrams_reach_the_host_whole_both_families() {
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    // Build the datagram with our own sender at a small MTU, then feed
    // its fragments back in reverse order, as from the guest.
    for family in [4, 6] {
        let mut sender = rig(1280, true);
        let (src, dst): (IpAddr, IpAddr) = if family == 4 {
            (
                Ipv4Addr::new(10, 0, 2, 100).into(),
                Ipv4Addr::new(198, 51, 100, 7).into(),
            )
        } else {
            (guest6().into(), v6("2001:db8::7").into())
        };
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let udp = UdpRepr {
            src_port: 4444,
            dst_port: 9,
        };
        sender.engine.send_ip(
            GW_MAC,
            (src, dst),
            IpProtocol::Udp,
            8 + data.len(),
            &mut frames,
            |b| {
                udp.emit(
                    &mut UdpPacket::new_unchecked(b),
                    &src.into(),
                    &dst.into(),
                    data.len(),
                    |p| p.copy_from_slice(&data),
                    &ChecksumCapabilities::default(),
                )
            },
        );
        assert!(frames.len() >= 3, "{family}: not fragmented");
        let mut r = rig(1500, true);
        for f in frames.iter_mut().rev() {
            f[6..12].copy_from_slice(&GUEST_MAC.0); // from the guest
            r.feed(f);
        }
        let id = r
            .engine
            .host()
            .dgram_to(SocketAddr::new(dst, 9))
            .unwrap_or_else(|| panic!("IPv{family}: nothing reached the host"));
        assert_eq!(
            r.engine.host().dgram(id).unwrap().sent,
            vec![data.clone()],
            "IPv{family}"
        );
    }
}

/// The byte after a fragment header's next header is reserved and
/// ignored on reception (RFC 8200, 4.5): a guest that sets it still gets
/// its datagram through, as it would with Linux.
#[test]
fn a_fragment_headers_reserved_byte_is_ignored() {
    let mut r = rig(1500, true);
    for offset in (0..3000).step_by(1480) {
        let mut f = guest_fragment(6, 9, 3000, offset, (3000 - offset).min(1480));
        f[14 + 40 + 1] = 0xff;
        r.feed(&f);
    }
    let id = r
        .engine
        .host()
        .dgram_to("[2001:db8::7]:9".parse().unwrap())
        .expect("the datagram did not reach the host");
    assert_eq!(r.engine.host().dgram(id).unwrap().sent[0].len(), 3000 - 8);
}

/// One fragment of a guest UDP datagram of `total` payload bytes (UDP
/// header included) to 198.51.100.7 or 2001:db8::7: the piece at
/// `offset`, `len` bytes long.
fn guest_fragment(family: u8, id: u16, total: usize, offset: usize, len: usize) -> Vec<u8> {
    let mut piece = vec![0x5au8; len];
    if offset == 0 {
        // The UDP header: ports 4444 -> 9, length, no checksum.
        piece[..8].copy_from_slice(&[0x11, 0x5c, 0, 9, 0, 0, 0, 0]);
        piece[4..6].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
    }
    let more = offset + len < total;
    if family == 4 {
        let repr = Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 0, 2, 100),
            dst_addr: Ipv4Addr::new(198, 51, 100, 7),
            next_header: IpProtocol::Udp,
            payload_len: len,
            hop_limit: 64,
        };
        let mut ip = vec![0u8; 20 + len];
        let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
        repr.emit(&mut p, &ChecksumCapabilities::default());
        p.set_ident(id);
        p.set_more_frags(more);
        p.set_frag_offset(offset as u16);
        p.payload_mut().copy_from_slice(&piece);
        p.fill_checksum();
        let mut frame = vec![0u8; 14];
        frame[..6].copy_from_slice(&GW_MAC.0);
        frame[6..12].copy_from_slice(&GUEST_MAC.0);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame
    } else {
        let mut body = vec![0; IPV6_FRAGMENT_HEADER_LEN];
        let fields = Ipv6FragmentRepr {
            frag_offset: (offset / 8) as u16,
            more_frags: more,
            ident: id.into(),
        };
        emit_v6_header(&mut body, IpProtocol::Udp, &fields);
        body.extend_from_slice(&piece);
        frame6(
            guest6(),
            v6("2001:db8::7"),
            GW_MAC,
            IpProtocol::Ipv6Frag,
            64,
            &body,
        )
    }
}

/// Feed a datagram of `total` payload bytes in 1480-byte fragments; what
/// came back.
fn feed_fragmented(r: &mut Rig, family: u8, id: u16, total: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for offset in (0..total).step_by(1480) {
        let len = (total - offset).min(1480);
        out.extend(r.feed(&guest_fragment(family, id, total, offset, len)));
    }
    out
}

/// The first abort a guest could cause: 45 IPv4 fragments whose pieces
/// add up to 65,528 bytes of payload, more than a 16-bit total length
/// holds with the header. Now dropped, in both families, while the
/// largest datagram each can carry still gets through.
#[test]
fn fragments_past_the_largest_datagram_are_dropped_and_the_largest_one_passes() {
    let mut r = rig(65520, true);
    let dst4 = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 7).into(), 9);
    let dst6 = SocketAddr::new(v6("2001:db8::7").into(), 9);
    assert!(feed_fragmented(&mut r, 4, 1, 65_528).is_empty());
    assert!(
        r.engine.host().dgram_to(dst4).is_none(),
        "an oversized datagram"
    );
    assert!(r.engine.frags.is_empty());
    feed_fragmented(&mut r, 4, 2, 65_515);
    let id = r
        .engine
        .host()
        .dgram_to(dst4)
        .expect("65,515 bytes is IPv4's largest");
    assert_eq!(r.engine.host().dgram(id).unwrap().sent[0].len(), 65_515 - 8);

    // IPv6: past 65,535 is a parameter problem pointing at the offset.
    let out = feed_fragmented(&mut r, 6, 3, 65_536);
    assert!(
        r.engine.host().dgram_to(dst6).is_none(),
        "an oversized datagram"
    );
    let errors = icmp6_out(&out);
    assert_eq!(errors.len(), 1, "one parameter problem: {errors:?}");
    let (src, dst, _, mac, body) = &errors[0];
    assert_eq!((*src, *dst, *mac), (v6("2001:db8::7"), guest6(), GUEST_MAC));
    assert_eq!(body[0], u8::from(Icmpv6Message::ParamProblem));
    assert_eq!((body[1], &body[4..8]), (0, &[0, 0, 0, 42][..]));
    feed_fragmented(&mut r, 6, 4, 65_535);
    let id = r
        .engine
        .host()
        .dgram_to(dst6)
        .expect("65,535 bytes is IPv6's largest");
    assert_eq!(r.engine.host().dgram(id).unwrap().sent[0].len(), 65_535 - 8);
}

/// netferry never emits an IPv4 datagram over 65,535 bytes, even when a
/// payload for one (an IPv6 host's datagram, say) is larger.
#[test]
fn no_ipv4_datagram_over_65535_bytes_leaves_the_engine() {
    let mut r = rig(1500, true);
    let addrs: (IpAddr, IpAddr) = (
        Ipv4Addr::new(198, 51, 100, 7).into(),
        Ipv4Addr::new(10, 0, 2, 100).into(),
    );
    for (len, sent) in [(65_516, false), (65_515, true)] {
        let mut frames: Vec<Vec<u8>> = Vec::new();
        r.engine
            .send_ip(GUEST_MAC, addrs, IpProtocol::Udp, len, &mut frames, |b| {
                b.fill(7)
            });
        let whole = defragment(&frames);
        assert_eq!(!whole.is_empty(), sent, "{len} bytes");
        assert!(whole.iter().all(|w| w.len() == len));
    }
}

/// pasta's `--config-net` IPv6 link: the guest holds the host's own
/// address, the host's gateway is its router (here not mapped, as with
/// podman's `--no-map-gw`), no router advertisements.
fn pasta_rig(guest: &str, gateway: &str) -> Rig {
    use super::{AddressPlan, Link4, Link6};
    let guest = v6(guest);
    let plan = AddressPlan {
        v4: Link4 {
            guest: Ipv4Addr::new(198, 51, 100, 1),
            prefix_len: 24,
            gateway: Ipv4Addr::new(198, 51, 100, 2),
            dhcp: false,
            dhcp_pool: None,
            dns: None,
            dhcp_mtu: None,
        },
        v6: Some(Link6 {
            prefix: guest,
            gateway: v6(gateway),
            gateway_ll: v6("fe80::1"),
            dns: None,
            guest: Some(guest),
            router_adverts: false,
        }),
        mac: GW_MAC.0,
        maps: Vec::new(),
        closed_subnets: false,
    };
    Rig::new(EngineConfig::new(plan, 65520), 3, Instant::from_millis(10))
}

#[test]
fn pasta_link_answers_every_neighbour_but_the_guest_and_advertises_no_router() {
    let mut r = pasta_rig("2001:db8:2::1", "2001:db8:2::2");
    for target in ["2001:db8:2::2", "2001:db8:2::99", "fe80::1", "fe80::5"] {
        let out = icmp6_out(&r.feed(&solicit(v6("fe80::66"), v6(target))));
        assert_eq!(out.len(), 1, "{target} unanswered");
        let (_, dst, _, mac, body) = &out[0];
        assert_eq!((*dst, *mac), (v6("fe80::66"), GUEST_MAC));
        let p = Icmpv6Packet::new_checked(&body[..]).unwrap();
        let repr = Icmpv6Repr::parse(&out[0].0, dst, &p, &ChecksumCapabilities::default());
        let Ok(Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        })) = repr
        else {
            panic!("{repr:?}")
        };
        assert_eq!(target_addr, v6(target));
        assert!(flags.contains(NdiscNeighborFlags::ROUTER));
        assert_eq!(lladdr, Some(RawHardwareAddress::from(GW_MAC)));
    }
    // The guest's own addresses stay the guest's.
    assert!(
        r.feed(&solicit(v6("fe80::66"), v6("2001:db8:2::1")))
            .is_empty()
    );
    assert!(r.feed(&solicit(v6("fe80::66"), v6("fe80::66"))).is_empty());
    assert!(
        r.feed(&solicit(Ipv6Addr::UNSPECIFIED, v6("2001:db8:2::7")))
            .is_empty()
    );
    // With --config-net, pasta sends no router advertisement, asked or not.
    assert!(r.feed(&router_solicitation(Some(GUEST_MAC))).is_empty());
    assert!(icmp6_out(&r.run(3000)).is_empty());
}

#[test]
fn pasta_forward_reaches_a_guest_off_every_prefix_of_the_engines_own() {
    use super::{ForwardSpec, Proto};
    // A host whose gateway is link-local: the engine's only IPv6 address
    // is fe80::1; the guest, at the host's global address, is still on
    // the tap.
    let mut r = pasta_rig("2001:db8:2::1", "fe80::1");
    r.engine
        .add_forward(ForwardSpec {
            proto: Proto::Tcp,
            host: "[::]:8080".parse().unwrap(),
            guest: "198.51.100.1:80".parse().unwrap(),
        })
        .unwrap();
    let listener = r.engine.host().listener_ids().next().unwrap();
    r.engine
        .host_mut()
        .client_connect(listener, "[2001:db8:9::5]:4000".parse().unwrap());
    let out = r.run(5);
    // smoltcp asks for the guest's MAC before its SYN goes out.
    let targets: Vec<Ipv6Addr> = icmp6_out(&out)
        .iter()
        .filter_map(|(src, dst, _, _, body)| {
            let p = Icmpv6Packet::new_checked(&body[..]).ok()?;
            match Icmpv6Repr::parse(src, dst, &p, &ChecksumCapabilities::default()).ok()? {
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. }) => {
                    Some(target_addr)
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(targets, vec![v6("2001:db8:2::1")]);
}
