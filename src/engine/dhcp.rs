//! The DHCP server of the virtual network.
//!
//! A pool of network+15..=network+30 with one stable lease per MAC address:
//! a guest that asks again (or reboots) gets the address it had. Offers the
//! netmask, the gateway as router and the DNS address as name server.
//! `DhcpServer` is pure logic: it takes a parsed request and says what to
//! answer; the engine part below parses the request and builds the reply.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr,
    EthernetAddress, IpProtocol, UdpPacket, UdpRepr,
};

use super::{Engine, FrameSink};
use crate::config::Network;
use crate::host::Host;

/// DHCP option code smoltcp's Repr has no field for.
const DHCP_OPT_DNS: u8 = 6;

/// Lease time offered to clients; libslirp offers a day too.
pub const LEASE_SECS: u32 = 24 * 60 * 60;

/// What to answer a client with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub message_type: DhcpMessageType,
    pub your_ip: Ipv4Addr,
    pub transaction_id: u32,
    pub client_mac: EthernetAddress,
    /// Unicast to this address (a renewing client has one), else broadcast.
    pub client_ip: Ipv4Addr,
    pub broadcast: bool,
}

#[derive(Debug)]
pub struct DhcpServer {
    net: Network,
    /// At most pool-size entries, so a linear scan is cheap.
    leases: Vec<(EthernetAddress, Ipv4Addr)>,
}

impl DhcpServer {
    pub fn new(net: Network) -> Self {
        DhcpServer {
            net,
            leases: Vec::new(),
        }
    }

    fn pool(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        (u32::from(self.net.dhcp_start)..=u32::from(self.net.dhcp_end)).map(Ipv4Addr::from)
    }

    fn in_pool(&self, addr: Ipv4Addr) -> bool {
        (self.net.dhcp_start..=self.net.dhcp_end).contains(&addr)
    }

    fn lease_of(&self, mac: EthernetAddress) -> Option<Ipv4Addr> {
        self.leases.iter().find(|(m, _)| *m == mac).map(|(_, a)| *a)
    }

    fn holder_of(&self, addr: Ipv4Addr) -> Option<EthernetAddress> {
        self.leases
            .iter()
            .find(|(_, a)| *a == addr)
            .map(|(m, _)| *m)
    }

    /// The client's lease, or a new one from the first free address (or the
    /// address it asks for, when that one is free).
    fn allocate(&mut self, mac: EthernetAddress, wanted: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(addr) = self.lease_of(mac) {
            return Some(addr);
        }
        let addr = wanted
            .filter(|a| self.in_pool(*a) && self.holder_of(*a).is_none())
            .or_else(|| self.pool().find(|a| self.holder_of(*a).is_none()))?;
        self.leases.push((mac, addr));
        Some(addr)
    }

    /// Answer one request, or `None` when it needs no answer.
    pub fn handle(&mut self, req: &DhcpRepr<'_>) -> Option<Answer> {
        let mac = req.client_hardware_address;
        let answer = |message_type, your_ip| Answer {
            message_type,
            your_ip,
            transaction_id: req.transaction_id,
            client_mac: mac,
            client_ip: req.client_ip,
            broadcast: req.broadcast,
        };
        match req.message_type {
            DhcpMessageType::Discover => match self.allocate(mac, req.requested_ip) {
                Some(addr) => Some(answer(DhcpMessageType::Offer, addr)),
                None => {
                    log::warn!("dhcp: pool exhausted, no offer for {mac}");
                    None
                }
            },
            DhcpMessageType::Request => {
                if req.server_identifier.is_some_and(|s| s != self.net.gateway) {
                    return None; // the client picked another server
                }
                let wanted = req
                    .requested_ip
                    .or((!req.client_ip.is_unspecified()).then_some(req.client_ip));
                match (wanted, self.allocate(mac, wanted)) {
                    (Some(w), Some(lease)) if w == lease => {
                        Some(answer(DhcpMessageType::Ack, lease))
                    }
                    _ => Some(answer(DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED)),
                }
            }
            // Leases stay with their MAC; nothing to do on release.
            _ => None,
        }
    }
}

impl<H: Host> Engine<H> {
    pub(super) fn process_dhcp<S: FrameSink>(
        &mut self,
        src_mac: EthernetAddress,
        data: &[u8],
        sink: &mut S,
    ) {
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

    fn send_dhcp<S: FrameSink>(&mut self, dst_mac: EthernetAddress, a: &Answer, sink: &mut S) {
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
        let (src, dst) = (IpAddr::V4(net.gateway), IpAddr::V4(dst_ip));
        self.send_ip(
            dst_mac,
            (src, dst),
            IpProtocol::Udp,
            udp.header_len() + dhcp_len,
            sink,
            |buf| {
                udp.emit(
                    &mut UdpPacket::new_unchecked(buf),
                    &src.into(),
                    &dst.into(),
                    dhcp_len,
                    |payload| {
                        // Cannot fail: the buffer was sized by buffer_len.
                        let _ = repr.emit(&mut DhcpPacket::new_unchecked(payload));
                    },
                    &ChecksumCapabilities::default(),
                );
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: DhcpMessageType, mac: u8, requested: Option<Ipv4Addr>) -> DhcpRepr<'static> {
        DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234,
            secs: 0,
            client_hardware_address: EthernetAddress([2, 0, 0, 0, 0, mac]),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 2, last)
    }

    #[test]
    fn first_client_gets_pool_start_and_keeps_it() {
        let mut s = DhcpServer::new(Network::default());
        let offer = s
            .handle(&request(DhcpMessageType::Discover, 1, None))
            .unwrap();
        assert_eq!(offer.message_type, DhcpMessageType::Offer);
        assert_eq!(offer.your_ip, ip(15));
        let ack = s
            .handle(&request(DhcpMessageType::Request, 1, Some(ip(15))))
            .unwrap();
        assert_eq!(
            (ack.message_type, ack.your_ip),
            (DhcpMessageType::Ack, ip(15))
        );
        // A second client gets the next address; the first keeps its own.
        let offer2 = s
            .handle(&request(DhcpMessageType::Discover, 2, None))
            .unwrap();
        assert_eq!(offer2.your_ip, ip(16));
        let again = s
            .handle(&request(DhcpMessageType::Discover, 1, None))
            .unwrap();
        assert_eq!(again.your_ip, ip(15));
    }

    #[test]
    fn request_for_someone_elses_address_is_refused() {
        let mut s = DhcpServer::new(Network::default());
        s.handle(&request(DhcpMessageType::Discover, 1, None));
        let nak = s
            .handle(&request(DhcpMessageType::Request, 2, Some(ip(15))))
            .unwrap();
        assert_eq!(nak.message_type, DhcpMessageType::Nak);
        let nak = s
            .handle(&request(DhcpMessageType::Request, 3, Some(ip(99))))
            .unwrap();
        assert_eq!(nak.message_type, DhcpMessageType::Nak);
    }

    #[test]
    fn rebooting_client_may_keep_a_free_address() {
        let mut s = DhcpServer::new(Network::default());
        let ack = s
            .handle(&request(DhcpMessageType::Request, 7, Some(ip(20))))
            .unwrap();
        assert_eq!(
            (ack.message_type, ack.your_ip),
            (DhcpMessageType::Ack, ip(20))
        );
    }

    #[test]
    fn pool_exhaustion_means_silence() {
        let mut s = DhcpServer::new(Network::default());
        for mac in 0..16 {
            let o = s.handle(&request(DhcpMessageType::Discover, mac, None));
            assert_eq!(o.unwrap().your_ip, ip(15 + mac));
        }
        assert_eq!(
            s.handle(&request(DhcpMessageType::Discover, 16, None)),
            None
        );
    }

    #[test]
    fn request_to_another_server_is_ignored() {
        let mut s = DhcpServer::new(Network::default());
        let mut r = request(DhcpMessageType::Request, 1, Some(ip(15)));
        r.server_identifier = Some(Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(s.handle(&r), None);
    }
}
