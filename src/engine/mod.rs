//! The engine: Ethernet frames in, Ethernet frames out.
//!
//! It owns the smoltcp interface and the virtual hosts of the network (the
//! gateway, the DNS address, the DHCP server). Each frame from the guest is
//! classified before smoltcp sees it: ARP for a virtual address and TCP go
//! into smoltcp; DHCP and ICMP echo to a virtual address are answered here;
//! everything else is dropped with a trace line. The engine does no I/O of
//! its own and reads no clock: the caller passes the time and a sink for
//! outgoing frames, so tests drive it with literal frames.

mod dhcp;
mod port;

use std::net::Ipv4Addr;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, DeviceCapabilities};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpOption, DhcpPacket,
    DhcpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress,
    Icmpv4Packet, Icmpv4Repr, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

pub use dhcp::{Answer as DhcpAnswer, DhcpServer, LEASE_SECS};
pub use port::{ETHERNET_HEADER_LEN, FrameSink};

use crate::config::Network;
use port::Port;

/// TTL of packets the virtual hosts originate.
const HOP_LIMIT: u8 = 64;
/// DHCP option codes smoltcp's Repr has no field for.
const DHCP_OPT_DNS: u8 = 6;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub net: Network,
    /// The tap's IP MTU.
    pub mtu: usize,
    /// Verify checksums of received frames. Off in production (the guest
    /// kernel made them); on in fuzzing and tests.
    pub verify_checksums: bool,
    /// Seed for smoltcp's initial sequence numbers and ephemeral ports.
    pub seed: u64,
}

pub struct Engine {
    net: Network,
    mac: EthernetAddress,
    caps: DeviceCapabilities,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: DhcpServer,
    /// Reused buffer for every frame the engine or smoltcp sends.
    tx: Vec<u8>,
}

impl Engine {
    pub fn new(cfg: &EngineConfig, now: Instant) -> Self {
        let net = cfg.net;
        let mac = EthernetAddress(net.gateway_mac());
        let caps = port::capabilities(cfg.mtu, cfg.verify_checksums);
        let mut tx = vec![0u8; caps.max_transmission_unit];

        let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ethernet(mac));
        iface_cfg.random_seed = cfg.seed;
        let mut sink = Vec::new();
        let mut dev = Port {
            rx: None,
            tx: &mut tx,
            sink: &mut sink,
            caps: &caps,
        };
        let mut iface = Interface::new(iface_cfg, &mut dev, now);
        iface.update_ip_addrs(|addrs| {
            // Capacity is set by the iface-max-addr-count feature (4).
            for addr in [net.gateway, net.dns] {
                let _ = addrs.push(IpCidr::new(addr.into(), net.prefix_len));
            }
        });
        // Any-IP: smoltcp accepts TCP for every destination, so a flow to
        // any address can terminate here and be proxied.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(net.gateway);

        Engine {
            net,
            mac,
            caps,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dhcp: DhcpServer::new(net),
            tx,
        }
    }

    /// The gateway's MAC address, the source of every frame we send.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn is_virtual(&self, addr: Ipv4Addr) -> bool {
        addr == self.net.gateway || addr == self.net.dns
    }

    /// Handle one frame from the guest.
    pub fn process_frame<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            log::trace!("dropping a runt frame of {} bytes", frame.len());
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                if self.arp_is_ours(eth.payload()) {
                    self.feed_smoltcp(now, frame, sink);
                }
            }
            EthernetProtocol::Ipv4 => self.process_ipv4(now, &eth, sink),
            other => log::trace!("dropping an ethertype {other} frame"),
        }
    }

    /// Requests for a virtual address and replies to smoltcp's own requests
    /// go to smoltcp; with any-IP on it would claim every address otherwise.
    fn arp_is_ours(&self, payload: &[u8]) -> bool {
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            return false;
        };
        match repr {
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                target_protocol_addr,
                ..
            } => self.is_virtual(target_protocol_addr),
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                ..
            } => true,
            _ => false,
        }
    }

    fn process_ipv4<S: FrameSink>(
        &mut self,
        now: Instant,
        eth: &EthernetFrame<&[u8]>,
        sink: &mut S,
    ) {
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            log::trace!("dropping a malformed IPv4 packet");
            return;
        };
        let Ok(ip_repr) = Ipv4Repr::parse(&ip, &self.caps.checksum) else {
            log::trace!("dropping an IPv4 packet that does not parse");
            return;
        };
        match ip_repr.next_header {
            IpProtocol::Tcp => self.feed_smoltcp(now, eth.as_ref(), sink),
            IpProtocol::Udp => self.process_udp(eth.src_addr(), &ip_repr, ip.payload(), sink),
            IpProtocol::Icmp => self.process_icmp(eth.src_addr(), &ip_repr, ip.payload(), sink),
            other => log::trace!("dropping IP protocol {other} to {}", ip_repr.dst_addr),
        }
    }

    fn process_udp<S: FrameSink>(
        &mut self,
        src_mac: EthernetAddress,
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
            self.process_dhcp(src_mac, udp.payload(), sink);
            return;
        }
        log::trace!("dropping UDP to {}:{}", ip.dst_addr, udp.dst_port());
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
        let ack_or_offer = a.message_type != smoltcp::wire::DhcpMessageType::Nak;
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

    fn process_icmp<S: FrameSink>(
        &mut self,
        src_mac: EthernetAddress,
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
        if !self.is_virtual(ip.dst_addr) {
            log::trace!("dropping echo request to {}", ip.dst_addr);
            return;
        }
        let reply = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        let reply_ip = Ipv4Repr {
            src_addr: ip.dst_addr,
            dst_addr: ip.src_addr,
            next_header: IpProtocol::Icmp,
            payload_len: reply.buffer_len(),
            hop_limit: HOP_LIMIT,
        };
        self.send_ipv4(src_mac, &reply_ip, sink, |buf| {
            reply.emit(
                &mut Icmpv4Packet::new_unchecked(buf),
                &ChecksumCapabilities::default(),
            );
        });
    }

    /// Build an IPv4 frame from the gateway's MAC in the reused buffer.
    fn send_ipv4<S: FrameSink>(
        &mut self,
        dst_mac: EthernetAddress,
        ip: &Ipv4Repr,
        sink: &mut S,
        emit_payload: impl FnOnce(&mut [u8]),
    ) {
        let eth = EthernetRepr {
            src_addr: self.mac,
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        let len = eth.buffer_len() + ip.buffer_len() + ip.payload_len;
        if self.tx.len() < len {
            self.tx.resize(len, 0);
        }
        let buf = &mut self.tx[..len];
        let mut frame = EthernetFrame::new_unchecked(&mut *buf);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        emit_payload(packet.payload_mut());
        sink.send_frame(buf);
    }

    fn feed_smoltcp<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let mut dev = Port {
            rx: Some(frame),
            tx: &mut self.tx,
            sink,
            caps: &self.caps,
        };
        self.iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// Let smoltcp send what its sockets have queued and run its timers.
    /// Call after each batch of frames and when `poll_at` comes due.
    pub fn poll<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        let mut dev = Port {
            rx: None,
            tx: &mut self.tx,
            sink,
            caps: &self.caps,
        };
        self.iface.poll(now, &mut dev, &mut self.sockets);
    }

    /// When `poll` must next run, if smoltcp has a timer pending.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }
}

#[cfg(test)]
mod tests;
