//! The engine driven with literal frames, as the guest kernel would send
//! them, on the simulated host. No tap, no mocks of the engine: whatever
//! it emits is parsed back with smoltcp's wire types and checked field by
//! field.

use std::net::{Ipv4Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr};

use super::harness::{self, Rig, ipv4_packet};
use super::*;
use crate::host::SimHost;
use crate::host::sim::Outcome;
use crate::slirp4netns::{Network, default_plan, slirp_plan};
use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpMessageType, DhcpPacket, DhcpRepr, Icmpv4Packet,
    Icmpv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

type Engine = super::Engine<SimHost>;

/// The engine of the default network, the clock at 1 ms, the guest not
/// heard from yet.
fn engine() -> Rig {
    engine_for(Network::default())
}

fn engine_for(net: Network) -> Rig {
    let mut cfg = EngineConfig::new(slirp_plan(&net, None, true, true), 1500);
    cfg.seed = 1;
    Rig::new(cfg, 1, Instant::from_millis(1))
}

/// A rig whose guest has resolved the gateway first, as a real one does;
/// this also gives smoltcp the guest's MAC.
fn rig(host_loopback: bool) -> Rig {
    rig_with_offload(host_loopback, false)
}

fn rig_with_offload(host_loopback: bool, offload: bool) -> Rig {
    let plan = slirp_plan(&Network::default(), None, host_loopback, true);
    let mut cfg = EngineConfig::new(plan, 1500);
    cfg.offload = offload;
    let mut rig = Rig::new(cfg, 1, Instant::from_millis(1));
    rig.feed(&arp_request(Ipv4Addr::new(10, 0, 2, 2)));
    rig
}

fn eth(dst: EthernetAddress, proto: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    harness::ethernet(GUEST_MAC, dst, proto, payload)
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    harness::arp_request(GUEST_MAC, GUEST_IP, target)
}

fn echo_request(dst: Ipv4Addr) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident: 0x42,
        seq_no: 7,
        data: b"netferry ping",
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut buf[..]),
        &ChecksumCapabilities::default(),
    );
    let ip = ipv4_packet(GUEST_IP, dst, IpProtocol::Icmp, &buf);
    eth(
        Engine::gateway_mac_of(&Network::default()),
        EthernetProtocol::Ipv4,
        &ip,
    )
}

impl<H: Host> super::Engine<H> {
    fn gateway_mac_of(net: &Network) -> EthernetAddress {
        EthernetAddress(net.gateway_mac())
    }
}

fn dhcp_frame(kind: DhcpMessageType, requested: Option<Ipv4Addr>) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: kind,
        transaction_id: 0xdead_beef,
        secs: 0,
        client_hardware_address: GUEST_MAC,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: requested,
        client_identifier: Some(GUEST_MAC),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 51]),
        dns_servers: None,
        max_size: Some(1500),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut dhcp = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut dhcp[..]))
        .unwrap();
    let udp = UdpRepr {
        src_port: DHCP_CLIENT_PORT,
        dst_port: DHCP_SERVER_PORT,
    };
    let mut udp_buf = vec![0u8; udp.header_len() + dhcp.len()];
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut udp_buf[..]),
        &Ipv4Addr::UNSPECIFIED.into(),
        &Ipv4Addr::BROADCAST.into(),
        dhcp.len(),
        |p| p.copy_from_slice(&dhcp),
        &ChecksumCapabilities::default(),
    );
    let ip = ipv4_packet(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        IpProtocol::Udp,
        &udp_buf,
    );
    eth(EthernetAddress::BROADCAST, EthernetProtocol::Ipv4, &ip)
}

/// Parse a frame the engine sent as DHCP and return (dst ip, repr fields).
fn parse_dhcp(frame: &[u8]) -> (Ipv4Addr, DhcpMessageType, Ipv4Addr, Vec<(u8, Vec<u8>)>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.dst_addr(), GUEST_MAC);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    let ip_repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(ip_repr.src_addr, Ipv4Addr::new(10, 0, 2, 2));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(&ip_repr.src_addr.into(), &ip_repr.dst_addr.into()));
    assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
    let packet = DhcpPacket::new_checked(udp.payload()).unwrap();
    let repr = DhcpRepr::parse(&packet).unwrap();
    assert_eq!(repr.transaction_id, 0xdead_beef);
    let options = packet
        .options()
        .map(|o| (o.kind, o.data.to_vec()))
        .collect();
    (ip_repr.dst_addr, repr.message_type, repr.your_ip, options)
}

fn option(options: &[(u8, Vec<u8>)], kind: u8) -> Option<&[u8]> {
    options
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, d)| d.as_slice())
}

#[test]
fn arp_for_gateway_and_dns_is_answered_with_the_gateway_mac() {
    let mut e = engine();
    for target in [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)] {
        let out = e.feed(&arp_request(target));
        assert_eq!(out.len(), 1, "one reply for {target}");
        let frame = EthernetFrame::new_checked(&out[0][..]).unwrap();
        assert_eq!(frame.dst_addr(), GUEST_MAC);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
        match arp {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(
                    source_hardware_addr,
                    EthernetAddress([0x52, 0x55, 10, 0, 2, 2])
                );
                assert_eq!(source_protocol_addr, target);
                assert_eq!(target_protocol_addr, GUEST_IP);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn arp_for_other_addresses_is_not_claimed() {
    let mut e = engine();
    assert!(e.feed(&arp_request(Ipv4Addr::new(10, 0, 2, 50))).is_empty());
    assert!(e.feed(&arp_request(GUEST_IP)).is_empty());
}

#[test]
fn ping_to_gateway_and_dns_is_answered_locally() {
    let mut e = engine();
    for dst in [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)] {
        let out = e.feed(&echo_request(dst));
        assert_eq!(out.len(), 1);
        let frame = EthernetFrame::new_checked(&out[0][..]).unwrap();
        assert_eq!(frame.dst_addr(), GUEST_MAC);
        let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (dst, GUEST_IP));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::EchoReply {
                ident: 0x42,
                seq_no: 7,
                data: b"netferry ping"
            }
        );
    }
}

/// pasta's `--no-icmp`: no echo answered, not even the gateway's, while
/// DHCP (the engine's own, over UDP) goes on with `--no-udp` too.
#[test]
fn protocols_not_carried_are_dropped_but_dhcp_stays() {
    let mut cfg = EngineConfig::new(default_plan(false), 1500);
    cfg.carry = Carry {
        tcp: false,
        udp: false,
        icmp: false,
    };
    let mut e = Rig::new(cfg, 1, Instant::from_millis(1));
    assert!(e.feed(&echo_request(Ipv4Addr::new(10, 0, 2, 2))).is_empty());
    assert_eq!(
        e.feed(&dhcp_frame(DhcpMessageType::Discover, None)).len(),
        1,
        "DHCP still answers"
    );
}

/// Found by fuzzing: `--mtu 15` is accepted (as slirp4netns does) but no
/// ARP reply or ping fits it; the engine works with IPv4's minimum.
#[test]
fn an_mtu_below_ipv4s_minimum_is_raised_to_it() {
    let cfg = EngineConfig::new(default_plan(false), 15);
    let mut e = Rig::new(cfg, 1, Instant::from_millis(1));
    let out = e.feed(&echo_request(Ipv4Addr::new(10, 0, 2, 2)));
    assert_eq!(out.len(), 1, "the echo reply was not sent");
    assert!(out[0].len() <= MIN_MTU + ETHERNET_HEADER_LEN);
}

#[test]
fn ping_elsewhere_is_not_answered_by_the_engine() {
    let mut e = engine();
    assert!(
        e.feed(&echo_request(Ipv4Addr::new(192, 0, 2, 1)))
            .is_empty()
    );
}

#[test]
fn dhcp_discover_request_gets_pool_start_with_options() {
    let mut e = engine();
    let out = e.feed(&dhcp_frame(DhcpMessageType::Discover, None));
    assert_eq!(out.len(), 1);
    let (dst, kind, yiaddr, opts) = parse_dhcp(&out[0]);
    assert_eq!(dst, Ipv4Addr::BROADCAST);
    assert_eq!(kind, DhcpMessageType::Offer);
    assert_eq!(yiaddr, Ipv4Addr::new(10, 0, 2, 15));
    assert_eq!(option(&opts, 1), Some(&[255, 255, 255, 0][..]));
    assert_eq!(option(&opts, 3), Some(&[10, 0, 2, 2][..]));
    assert_eq!(option(&opts, 6), Some(&[10, 0, 2, 3][..]));
    assert_eq!(option(&opts, 51), Some(&86400u32.to_be_bytes()[..]));
    assert_eq!(option(&opts, 54), Some(&[10, 0, 2, 2][..]));

    let out = e.feed(&dhcp_frame(
        DhcpMessageType::Request,
        Some(Ipv4Addr::new(10, 0, 2, 15)),
    ));
    assert_eq!(out.len(), 1);
    let (_, kind, yiaddr, _) = parse_dhcp(&out[0]);
    assert_eq!(
        (kind, yiaddr),
        (DhcpMessageType::Ack, Ipv4Addr::new(10, 0, 2, 15))
    );
}

/// pasta's `--no-dhcp`: requests go unanswered, and nothing else is sent
/// in their place.
#[test]
fn dhcp_turned_off_answers_nothing() {
    let mut plan = slirp_plan(&Network::default(), None, true, true);
    plan.v4.dhcp = false;
    let mut cfg = EngineConfig::new(plan, 1500);
    cfg.seed = 1;
    let mut e = Rig::new(cfg, 1, Instant::from_millis(1));
    assert!(
        e.feed(&dhcp_frame(DhcpMessageType::Discover, None))
            .is_empty()
    );
    let request = dhcp_frame(DhcpMessageType::Request, Some(GUEST_IP));
    assert!(e.feed(&request).is_empty());
}

/// pasta's DHCP announces the tap's MTU (option 26); slirp4netns's none.
#[test]
fn dhcp_announces_the_mtu_when_the_plan_says_so() {
    let mut e = engine();
    let out = e.feed(&dhcp_frame(DhcpMessageType::Discover, None));
    assert_eq!(option(&parse_dhcp(&out[0]).3, 26), None);
    let mut plan = slirp_plan(&Network::default(), None, true, true);
    plan.v4.dhcp_mtu = Some(65520);
    let mut e = Rig::new(EngineConfig::new(plan, 1500), 1, Instant::from_millis(1));
    let out = e.feed(&dhcp_frame(DhcpMessageType::Discover, None));
    let opts = parse_dhcp(&out[0]).3;
    assert_eq!(option(&opts, 26), Some(&65520u16.to_be_bytes()[..]));
}

#[test]
fn dhcp_follows_a_custom_cidr() {
    let net = Network::from_cidr("172.30.0.0/16").unwrap();
    let mut e = engine_for(net);
    let mut frame = dhcp_frame(DhcpMessageType::Discover, None);
    // Same frame, the client just does not know the network yet.
    let out = e.feed(&frame);
    let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.src_addr(), Ipv4Addr::new(172, 30, 0, 2));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    let dhcp = DhcpPacket::new_checked(udp.payload()).unwrap();
    assert_eq!(dhcp.your_ip(), Ipv4Addr::new(172, 30, 0, 15));
    let mask = dhcp.options().find(|o| o.kind == 1).unwrap();
    assert_eq!(mask.data, &[255, 255, 0, 0]);
    // A corrupted copy is dropped, not answered.
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    assert!(e.feed(&frame).is_empty());
}

#[test]
fn malformed_frames_are_dropped_quietly() {
    let mut e = engine();
    let gw = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 13],
        eth(gw, EthernetProtocol::Ipv4, &[0x45, 0, 0]),
        eth(gw, EthernetProtocol::Ipv4, &[0x45; 40]),
        eth(gw, EthernetProtocol::Arp, &[1, 2, 3]),
        eth(gw, EthernetProtocol::Unknown(0x1234), &[0; 50]),
        eth(
            gw,
            EthernetProtocol::Ipv4,
            &ipv4_packet(
                GUEST_IP,
                Ipv4Addr::new(10, 0, 2, 2),
                IpProtocol::Udp,
                &[0; 3],
            ),
        ),
        eth(
            gw,
            EthernetProtocol::Ipv4,
            &ipv4_packet(GUEST_IP, Ipv4Addr::new(10, 0, 2, 2), IpProtocol::Icmp, &[8]),
        ),
    ];
    for frame in cases {
        assert!(e.feed(&frame).is_empty(), "answered {frame:?}");
    }
    // Still serving after all that.
    assert_eq!(e.feed(&echo_request(Ipv4Addr::new(10, 0, 2, 2))).len(), 1);
}

/// An engine on the simulated host, whose clock the test moves: TCP
/// flows to the gateway address become the host's connects to its
/// loopback, finished as the test scripted them.
const GUEST_PORT: u16 = 40000;
const GUEST_ISN: u32 = 1000;

fn syn_to(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    guest_segment(
        dst,
        TcpRepr {
            src_port: GUEST_PORT,
            dst_port: port,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(GUEST_ISN as i32),
            ack_number: None,
            window_len: 64240,
            window_scale: Some(7),
            max_seg_size: Some(1460),
            sack_permitted: true,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        },
    )
}

fn guest_segment(dst: Ipv4Addr, tcp: TcpRepr) -> Vec<u8> {
    let mut seg = vec![0u8; tcp.buffer_len()];
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut seg[..]),
        &GUEST_IP.into(),
        &dst.into(),
        &ChecksumCapabilities::default(),
    );
    let ip = ipv4_packet(GUEST_IP, dst, IpProtocol::Tcp, &seg);
    eth(
        EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
        EthernetProtocol::Ipv4,
        &ip,
    )
}

/// The TCP segments among `frames`, as (src port, dst port, syn, ack, rst,
/// ack number).
fn tcp_segments(frames: &[Vec<u8>]) -> Vec<(u16, u16, bool, bool, bool, u32)> {
    frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
            Some((
                tcp.src_port(),
                tcp.dst_port(),
                tcp.syn(),
                tcp.ack(),
                tcp.rst(),
                tcp.ack_number().0 as u32,
            ))
        })
        .collect()
}

/// The guest's ACK of the SYN-ACK in `frames`, with a 1 MiB window.
fn ack_of_syn_ack(frames: &[Vec<u8>], dst: Ipv4Addr) -> Vec<u8> {
    guest_data(frames, dst, 0, &[], false)
}

/// Guest data `offset` bytes into its flow to `dst`, whose SYN-ACK is
/// among `frames`; `psh` when it ends the guest's write.
fn guest_data(frames: &[Vec<u8>], dst: Ipv4Addr, offset: usize, data: &[u8], psh: bool) -> Vec<u8> {
    let (port, server_isn) = frames
        .iter()
        .find_map(|f| {
            let ip = Ipv4Packet::new_checked(&f[14..]).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            (tcp.syn() && tcp.ack()).then(|| (tcp.src_port(), tcp.seq_number()))
        })
        .expect("no SYN-ACK");
    guest_segment(
        dst,
        TcpRepr {
            src_port: GUEST_PORT,
            dst_port: port,
            control: if psh {
                TcpControl::Psh
            } else {
                TcpControl::None
            },
            seq_number: TcpSeqNumber(GUEST_ISN as i32 + 1 + offset as i32),
            ack_number: Some(server_isn + 1),
            window_len: 8192,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: data,
        },
    )
}

/// The TCP payload lengths among `frames`.
fn payload_lens(frames: &[Vec<u8>]) -> Vec<usize> {
    frames
        .iter()
        .filter_map(|f| {
            let ip = Ipv4Packet::new_checked(&f[14..]).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            Some(tcp.payload().len()).filter(|&n| n > 0)
        })
        .collect()
}

/// 40,000 bytes from the host through a flow whose guest said MSS 1460.
fn host_to_guest_through(rig: &mut Rig) -> Vec<Vec<u8>> {
    let gw = Ipv4Addr::new(10, 0, 2, 2);
    rig.feed(&syn_to(gw, 8080));
    let out = rig.run(5);
    rig.feed(&ack_of_syn_ack(&out, gw));
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080);
    let id = rig.host().stream_to(dst).expect("no host connect");
    rig.host().peer_send(id, &[7u8; 40_000]);
    rig.run(5)
}

#[test]
fn without_offload_segments_toward_the_guest_fit_its_mss() {
    let mut rig = rig(true);
    let lens = payload_lens(&host_to_guest_through(&mut rig));
    assert_eq!(lens.iter().sum::<usize>(), 40_000, "{lens:?}");
    assert!(lens.iter().all(|&n| n <= 1460), "{lens:?}");
}

#[test]
fn with_offload_one_large_segment_goes_for_the_tap_to_split() {
    let mut rig = rig_with_offload(true, true);
    let mut out = host_to_guest_through(&mut rig);
    let lens = payload_lens(&out);
    // 40,000 bytes fit in one segment below the widened MSS (44 × 1460).
    assert_eq!(lens, [40_000], "{lens:?}");
    let frame = out
        .iter_mut()
        .find(|f| f.len() > 1514)
        .expect("no large frame");
    let full = frame.clone();
    let hdr = crate::vnet::header_for(frame, 1500);
    // Cut into 1460-byte frames by the guest's kernel, and the checksum
    // it completes is the one smoltcp computed.
    assert_eq!(crate::vnet::gso_of(&hdr), (1, 1460, 14 + 20 + 20));
    crate::vnet::complete_checksum(frame, &hdr);
    assert_eq!(*frame, full);
}

#[test]
fn guest_data_is_acked_at_once_when_it_ends_a_write_or_fills_frames_and_soon_otherwise() {
    let gw = Ipv4Addr::new(10, 0, 2, 2);
    let mut rig = rig(true);
    rig.feed(&syn_to(gw, 8080));
    let syn_ack = rig.run(5);
    rig.feed(&ack_of_syn_ack(&syn_ack, gw));
    let acked = |frames: &[Vec<u8>]| -> Vec<u32> {
        tcp_segments(frames)
            .into_iter()
            .filter(|s| s.0 == 8080 && s.3)
            .map(|s| s.5 - GUEST_ISN - 1)
            .collect()
    };
    // Part of a larger write: the ACK waits for more or for the delay.
    let out = rig.feed(&guest_data(&syn_ack, gw, 0, &[1; 100], false));
    assert_eq!(acked(&out), [] as [u32; 0], "acked a write's first segment");
    assert_eq!(acked(&rig.run(2)), [100], "the delayed ACK never came");
    // The end of a write: at once.
    let out = rig.feed(&guest_data(&syn_ack, gw, 100, &[2; 100], true));
    assert_eq!(acked(&out), [200]);
    // Two segments of one write, more than the guest's MSS (1460) in
    // all: the second is acked at once.
    let out = rig.feed(&guest_data(&syn_ack, gw, 200, &[3; 1000], false));
    assert_eq!(acked(&out), [] as [u32; 0]);
    let out = rig.feed(&guest_data(&syn_ack, gw, 1200, &[4; 1000], false));
    assert_eq!(acked(&out), [2200]);
    // A segment larger than a 1500-byte frame holds several (TSO): at
    // once.
    let out = rig.feed(&guest_data(&syn_ack, gw, 2200, &[5; 3000], false));
    assert_eq!(acked(&out), [5200]);
    // And all of it reached the host in order.
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080);
    let id = rig.host().stream_to(dst).expect("no host connect");
    let got = rig.host().peer_take(id, usize::MAX);
    let want: Vec<u8> = [
        [1; 100].as_slice(),
        &[2; 100],
        &[3; 1000],
        &[4; 1000],
        &[5; 3000],
    ]
    .concat();
    assert!(got == want, "the host got {} bytes", got.len());
}

#[test]
fn refused_connect_sends_rst() {
    let mut rig = rig(true);
    rig.host()
        .set_outcome(Ipv4Addr::LOCALHOST.into(), Outcome::Refuse);
    let port = 8080;
    let out = rig.feed(&syn_to(Ipv4Addr::new(10, 0, 2, 2), port));
    assert!(out.is_empty(), "answered before the host did");
    let out = rig.run(5); // the refusal comes back asynchronously
    let segs = tcp_segments(&out);
    assert_eq!(segs.len(), 1, "{segs:?}");
    let (src, dst, syn, ack, rst, ack_no) = segs[0];
    assert_eq!((src, dst), (port, GUEST_PORT));
    assert!(rst && ack && !syn);
    assert_eq!(ack_no, GUEST_ISN + 1, "the RST must acknowledge the SYN");
}

#[test]
fn unreachable_connect_answers_host_unreachable() {
    let mut rig = rig(true);
    rig.host()
        .set_outcome(Ipv4Addr::LOCALHOST.into(), Outcome::Unreachable);
    rig.feed(&syn_to(Ipv4Addr::new(10, 0, 2, 2), 8080));
    let out = rig.run(5);
    assert!(tcp_segments(&out).is_empty(), "a RST instead of ICMP");
    assert_eq!(out.len(), 1);
    let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(
        icmp.msg_type(),
        smoltcp::wire::Icmpv4Message::DstUnreachable
    );
    assert_eq!(icmp.msg_code(), 1, "code 1: host unreachable");
}

#[test]
fn syn_ack_waits_for_the_host_connect() {
    let port = 8080;
    let mut rig = rig(true);
    rig.host().connect_delay = Duration::from_millis(50);
    let out = rig.feed(&syn_to(Ipv4Addr::new(10, 0, 2, 2), port));
    assert!(tcp_segments(&out).is_empty(), "answered before connecting");
    assert!(tcp_segments(&rig.run(40)).is_empty(), "answered too early");
    let segs = tcp_segments(&rig.run(20));
    assert_eq!(segs.len(), 1, "{segs:?}");
    let (src, dst, syn, ack, rst, ack_no) = segs[0];
    assert_eq!((src, dst), (port, GUEST_PORT));
    assert!(syn && ack && !rst);
    assert_eq!(ack_no, GUEST_ISN + 1);
    // The host's connect went to its loopback.
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let id = rig.host().stream_to(dst).expect("no host connect");
    assert!(rig.host().stream(id).unwrap().connected());
}

#[test]
fn disabled_host_loopback_answers_net_unreachable() {
    let mut rig = rig(false);
    let out = rig.feed(&syn_to(Ipv4Addr::new(10, 0, 2, 2), 80));
    assert_eq!(out.len(), 1);
    let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 0, 2, 2));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        icmp.msg_type(),
        smoltcp::wire::Icmpv4Message::DstUnreachable
    );
    assert_eq!(icmp.msg_code(), 0, "code 0: network unreachable");
    // The quote: the SYN's IP header and the first 8 bytes of its TCP
    // header. (smoltcp's own parser wants the whole original packet, so
    // read the quote field by field.)
    let quoted = Ipv4Packet::new_unchecked(icmp.data());
    assert_eq!(
        (quoted.src_addr(), quoted.dst_addr()),
        (GUEST_IP, ip.src_addr())
    );
    assert_eq!(quoted.next_header(), IpProtocol::Tcp);
    let ports = &icmp.data()[quoted.header_len() as usize..][..4];
    assert_eq!(
        ports,
        [&GUEST_PORT.to_be_bytes()[..], &80u16.to_be_bytes()[..]].concat()
    );
}

/// Frames captured from real clients on a tap, byte for byte, so an
/// error shared by smoltcp's emit and parse cannot cancel out.
mod golden {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// busybox 1.35 `udhcpc -i tap0`: DISCOVER asking for subnet, router,
    /// DNS, hostname, domain, broadcast, NTP.
    const UDHCPC_DISCOVER: &str = "ffffffffffffe610cc2e3e2208004500014800000000401179a600000000ffffffff0044004301347cd2010106009c6ecd430000000000000000000000000000000000000000e610cc2e3e2200000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000638253633501013902024037070103060c0f1c2a3c0c756468637020312e33352e303d0701e610cc2e3e22ff0000000000000000000000000000000000000000";
    /// busybox `ping -c 1 10.0.2.2`: id 0x37dd, seq 0, 56 data bytes.
    const BUSYBOX_PING: &str = "52550a00020286b2737e18f7080045000054d656400040014bed0a0002640a000202080009bb37dd0000422f743800000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
    /// Linux 6.x connect() to 10.0.2.2:8080: SYN with MSS 1460, SACK
    /// permitted, timestamps and window scale 10.
    const LINUX_SYN: &str = "52550a00020286b2737e18f708004500003c73c640004006ae900a0002640a000202c1181f90f72edb8b00000000a002faf09fce0000020405b40402080a74166d5e000000000103030a";

    #[test]
    fn udhcpc_discover_gets_an_offer_of_the_pool_start() {
        let mut e = engine();
        let discover = unhex(UDHCPC_DISCOVER);
        // The capture's own client MAC and transaction id, read from the
        // BOOTP fields at fixed offsets (Ethernet 14 + IP 20 + UDP 8).
        let client_mac = EthernetAddress::from_bytes(&discover[6..12]);
        let xid = u32::from_be_bytes(discover[46..50].try_into().unwrap());
        assert_eq!(
            discover[70..76],
            discover[6..12],
            "chaddr is the source MAC"
        );
        let out = e.feed(&discover);
        assert_eq!(out.len(), 1);
        let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
        assert_eq!(eth.dst_addr(), client_mac);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        let dhcp = DhcpPacket::new_checked(udp.payload()).unwrap();
        assert_eq!(dhcp.transaction_id(), xid);
        assert_eq!(dhcp.your_ip(), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(dhcp.client_hardware_address(), client_mac);
        let repr = DhcpRepr::parse(&dhcp).unwrap();
        assert_eq!(repr.message_type, DhcpMessageType::Offer);
        assert_eq!(repr.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
    }

    #[test]
    fn busybox_ping_of_the_gateway_is_echoed_byte_for_byte() {
        let mut e = engine();
        let req = unhex(BUSYBOX_PING);
        let out = e.feed(&req);
        assert_eq!(out.len(), 1);
        let reply = &out[0];
        // Ethernet: addresses swapped.
        assert_eq!(reply[..6], req[6..12]);
        assert_eq!(reply[6..12], req[..6]);
        let ip = Ipv4Packet::new_checked(&reply[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 100))
        );
        // ICMP: type 0, the request's id, sequence and data unchanged, and
        // a checksum that differs from the request's by the type alone.
        let icmp = &reply[34..];
        let orig = &req[34..];
        assert_eq!(icmp[0], 0);
        assert_eq!(icmp[4..], orig[4..]);
        let sum = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
        assert_eq!(sum(icmp), sum(orig).wrapping_add(0x0800));
    }

    #[test]
    fn linux_syn_is_answered_with_window_scaling_once_the_host_connects() {
        let mut rig = rig(true);
        let syn = unhex(LINUX_SYN);
        assert!(tcp_segments(&rig.feed(&syn)).is_empty());
        let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080);
        assert!(rig.host().stream_to(dst).is_some(), "no host connect");
        let out = rig.run(5);
        let frame = out
            .iter()
            .find(|f| tcp_segments(std::slice::from_ref(f)).len() == 1)
            .expect("no SYN-ACK");
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.syn() && tcp.ack());
        assert_eq!(tcp.ack_number(), TcpSeqNumber(0xf72e_db8bu32 as i32) + 1);
        assert_eq!((tcp.src_port(), tcp.dst_port()), (8080, 0xc118));
        let repr = TcpRepr::parse(
            &tcp,
            &ip.src_addr().into(),
            &ip.dst_addr().into(),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        assert!(repr.window_scale.is_some(), "no window scaling offered");
        assert!(repr.max_seg_size.is_some());
    }
}
