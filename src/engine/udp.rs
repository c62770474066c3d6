//! Guest UDP, proxied through connected host UDP sockets.
//!
//! One host socket per (guest address and port, destination), so replies
//! find their way back and come from the address the guest wrote to. Flows
//! idle for `UDP_IDLE_TIMEOUT` are closed, and at most `UDP_FLOW_LIMIT` live
//! at once (the least recently used is evicted), so a guest that sprays
//! datagrams cannot exhaust the process's file descriptors.

use std::io;
use std::net::SocketAddrV4;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use std::net::Ipv4Addr;

use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr,
    EthernetAddress, Icmpv4DstUnreachable, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use super::flows::{DgramFlow, Flow, FlowKey, Kind, Recv};
use super::icmp::quote_of;
use super::{DhcpAnswer, Engine, FrameSink, HOP_LIMIT, LEASE_SECS, Route};
use crate::host;

/// A UDP (or ICMP echo) flow with no traffic either way for this long is
/// closed. DNS answers come in milliseconds; two minutes keeps NAT-style
/// conversations (NTP, QUIC, games) alive between bursts.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// At most this many UDP flows (and as many echo flows) at once.
pub const UDP_FLOW_LIMIT: usize = 1024;
/// IPv4 header without options plus UDP header.
const IPV4_UDP_OVERHEAD: usize = 20 + 8;
/// DHCP option code smoltcp's Repr has no field for.
const DHCP_OPT_DNS: u8 = 6;

impl Engine {
    pub(super) fn process_udp<S: FrameSink>(
        &mut self,
        now: Instant,
        guest_mac: EthernetAddress,
        _packet: &Ipv4Packet<&[u8]>,
        ip: &Ipv4Repr,
        payload: &[u8],
        sink: &mut S,
    ) {
        let Ok(udp) = UdpPacket::new_checked(payload) else {
            return;
        };
        let src = ip.src_addr.into();
        let dst = ip.dst_addr.into();
        if UdpRepr::parse(&udp, &src, &dst, &self.caps.checksum).is_err() {
            log::trace!("dropping a UDP datagram with a bad header or checksum");
            return;
        }
        if udp.dst_port() == DHCP_SERVER_PORT {
            return self.process_dhcp(guest_mac, udp.payload(), sink);
        }
        let key = FlowKey {
            guest: SocketAddrV4::new(ip.src_addr, udp.src_port()),
            dst: SocketAddrV4::new(ip.dst_addr, udp.dst_port()),
        };
        let slot = match self.flows.find(Kind::Udp, &key) {
            Some(slot) => slot,
            None if self.reply_forwarded_udp(now, &key, udp.payload()) => return,
            None => match self.route(now, ip.dst_addr, udp.dst_port()) {
                Route::Host(target) => match self.open_udp(now, key, guest_mac, target) {
                    Some(slot) => slot,
                    None => return,
                },
                Route::Unreachable(reason) => {
                    let quote = quote_of(ip, payload);
                    let gw = self.net.gateway;
                    return self.send_icmp_unreachable(guest_mac, gw, reason, &quote, sink);
                }
                Route::Refused => {
                    let quote = quote_of(ip, payload);
                    let reason = Icmpv4DstUnreachable::PortUnreachable;
                    return self.send_icmp_unreachable(
                        guest_mac,
                        ip.dst_addr,
                        reason,
                        &quote,
                        sink,
                    );
                }
                Route::Drop => return,
            },
        };
        let Some(flow) = self.flows.dgram_mut(slot) else {
            return;
        };
        flow.last_used = now;
        match flow.sock.send(udp.payload()) {
            Ok(_) => {}
            // A refusal from an earlier datagram surfaces here; report it
            // like the kernel would.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                let quote = quote_of(ip, payload);
                let reason = Icmpv4DstUnreachable::PortUnreachable;
                self.send_icmp_unreachable(guest_mac, ip.dst_addr, reason, &quote, sink);
            }
            Err(e) => log::debug!("udp {} -> {}: send failed: {e}", key.guest, key.dst),
        }
    }

    fn open_udp(
        &mut self,
        now: Instant,
        key: FlowKey,
        guest_mac: EthernetAddress,
        target: std::net::SocketAddr,
    ) -> Option<usize> {
        if let Some(old) = self.flows.evict_candidate(Kind::Udp) {
            log::debug!("udp: {} flows open, evicting the oldest", UDP_FLOW_LIMIT);
            self.remove_flow(old);
        }
        let sock = match host::udp_connect(target, self.outbound.for_dst(target.ip())) {
            Ok(sock) => sock,
            Err(e) => {
                log::debug!("udp {} -> {target}: {e}", key.guest);
                return None;
            }
        };
        let flow = DgramFlow::new(key, sock, guest_mac, now);
        log::debug!("udp {} -> {target}: new flow", key.guest);
        self.flows
            .insert(Flow::Udp(flow), &self.registry)
            .map_err(|e| log::warn!("cannot watch a UDP socket: {e}"))
            .ok()
    }

    /// Datagrams from the host socket back to the guest, sent from the
    /// address and port the guest wrote to.
    pub(super) fn pump_udp<S: FrameSink>(&mut self, now: Instant, slot: usize, sink: &mut S) {
        loop {
            let Some(flow) = self.flows.dgram_mut(slot) else {
                return;
            };
            let (guest_mac, key) = (flow.guest_mac, flow.key);
            let n = match flow.recv(&mut self.scratch, now) {
                Recv::Data(n) => n,
                Recv::Done => return,
                Recv::Failed(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // The host got ICMP port unreachable for our datagram.
                    let quote = udp_quote(&key);
                    let reason = Icmpv4DstUnreachable::PortUnreachable;
                    self.send_icmp_unreachable(guest_mac, *key.dst.ip(), reason, &quote, sink);
                    continue;
                }
                Recv::Failed(e) => {
                    log::debug!("udp {} -> {}: recv failed: {e}", key.guest, key.dst);
                    flow.readable = false;
                    return;
                }
            };
            if n + IPV4_UDP_OVERHEAD > self.caps.max_transmission_unit - super::ETHERNET_HEADER_LEN
            {
                log::debug!(
                    "udp {} -> {}: dropping a {n}-byte reply larger than the MTU",
                    key.guest,
                    key.dst
                );
                continue;
            }
            let scratch = std::mem::take(&mut self.scratch);
            self.send_udp(guest_mac, key.dst, key.guest, &scratch[..n], sink);
            self.scratch = scratch;
        }
    }

    pub(super) fn send_udp<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: &[u8],
        sink: &mut S,
    ) {
        let udp = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let ip = Ipv4Repr {
            src_addr: *src.ip(),
            dst_addr: *dst.ip(),
            next_header: IpProtocol::Udp,
            payload_len: udp.header_len() + data.len(),
            hop_limit: HOP_LIMIT,
        };
        self.send_ipv4(guest_mac, &ip, sink, |buf| {
            udp.emit(
                &mut UdpPacket::new_unchecked(buf),
                &ip.src_addr.into(),
                &ip.dst_addr.into(),
                data.len(),
                |p| p.copy_from_slice(data),
                &ChecksumCapabilities::default(),
            );
        });
    }

    fn process_dhcp<S: FrameSink>(&mut self, src_mac: EthernetAddress, data: &[u8], sink: &mut S) {
        let Ok(packet) = DhcpPacket::new_checked(data) else {
            return;
        };
        let Ok(req) = DhcpRepr::parse(&packet) else {
            log::debug!("dhcp: ignoring a request that does not parse");
            return;
        };
        let Some(answer) = self.dhcp.handle(&req) else {
            return;
        };
        log::debug!(
            "dhcp: {:?} {} to {}",
            answer.message_type,
            answer.your_ip,
            answer.client_mac
        );
        self.send_dhcp(src_mac, &answer, sink);
    }

    fn send_dhcp<S: FrameSink>(&mut self, dst_mac: EthernetAddress, a: &DhcpAnswer, sink: &mut S) {
        let net = self.net;
        let ack_or_offer = a.message_type != DhcpMessageType::Nak;
        let dns = net.dns.octets();
        let dns_opt = [DhcpOption {
            kind: DHCP_OPT_DNS,
            data: &dns,
        }];
        let repr = DhcpRepr {
            message_type: a.message_type,
            transaction_id: a.transaction_id,
            secs: 0,
            client_hardware_address: a.client_mac,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: a.your_ip,
            server_ip: net.gateway,
            router: ack_or_offer.then_some(net.gateway),
            subnet_mask: ack_or_offer.then_some(net.netmask),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: a.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(net.gateway),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: ack_or_offer.then_some(LEASE_SECS),
            renew_duration: None,
            rebind_duration: None,
            additional_options: if ack_or_offer { &dns_opt } else { &[] },
        };
        let dst_ip = if a.client_ip.is_unspecified() || !ack_or_offer {
            Ipv4Addr::BROADCAST
        } else {
            a.client_ip
        };
        let udp = UdpRepr {
            src_port: DHCP_SERVER_PORT,
            dst_port: DHCP_CLIENT_PORT,
        };
        let dhcp_len = repr.buffer_len();
        let ip = Ipv4Repr {
            src_addr: net.gateway,
            dst_addr: dst_ip,
            next_header: IpProtocol::Udp,
            payload_len: udp.header_len() + dhcp_len,
            hop_limit: HOP_LIMIT,
        };
        let caps = ChecksumCapabilities::default();
        self.send_ipv4(dst_mac, &ip, sink, |buf| {
            let mut packet = UdpPacket::new_unchecked(buf);
            udp.emit(
                &mut packet,
                &ip.src_addr.into(),
                &ip.dst_addr.into(),
                dhcp_len,
                |payload| {
                    // Cannot fail: the buffer was sized by buffer_len.
                    let _ = repr.emit(&mut DhcpPacket::new_unchecked(payload));
                },
                &caps,
            );
        });
    }
}

/// A header for quoting in an ICMP error about a flow's datagram, when
/// the original is long gone: guest to destination, UDP, ports filled in.
fn udp_quote(key: &FlowKey) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: *key.guest.ip(),
        dst_addr: *key.dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8,
        hop_limit: HOP_LIMIT,
    };
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&key.guest.port().to_be_bytes());
    udp[2..4].copy_from_slice(&key.dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&8u16.to_be_bytes());
    quote_of(&ip, &udp)
}
