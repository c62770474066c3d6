//! The DHCP server of the virtual network.
//!
//! A pool of network+15..=network+30 with one stable lease per MAC address:
//! a guest that asks again (or reboots) gets the address it had, as long
//! as nobody needed it after the lease ran out. A full pool takes back
//! the lease that expired longest ago, so guests that come and go (new
//! MACs, as containers restart) cannot use it up for good. Offers the
//! netmask, the gateway as router and the DNS address as name server.
//! `DhcpServer` is pure logic: it takes a parsed request and says what to
//! answer; the engine part below parses the request and builds the reply.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr,
    EthernetAddress, IpProtocol, UdpPacket, UdpRepr,
};

use super::plan::Link4;
use super::throttle::{Throttle, held_note};
use super::{Engine, FrameSink};
use crate::host::Host;

/// DHCP option codes smoltcp's Repr has no field for.
const DHCP_OPT_DNS: u8 = 6;
const DHCP_OPT_MTU: u8 = 26;

/// Lease time offered to clients; libslirp offers a day too.
pub const LEASE_SECS: u32 = 24 * 60 * 60;
/// How long an offer holds an address for a client that has not
/// requested it yet.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Lease {
    mac: EthernetAddress,
    addr: Ipv4Addr,
    /// After this, the address may go to another client.
    expires: Instant,
}

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
    link: Link4,
    /// At most pool-size entries, so a linear scan is cheap.
    leases: Vec<Lease>,
    exhausted: Throttle,
}

impl DhcpServer {
    pub fn new(link: Link4) -> Self {
        DhcpServer {
            link,
            leases: Vec::new(),
            exhausted: Throttle::default(),
        }
    }

    fn pool(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let (first, last) = self.link.pool();
        (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from)
    }

    fn in_pool(&self, addr: Ipv4Addr) -> bool {
        let (first, last) = self.link.pool();
        (first..=last).contains(&addr)
    }

    fn lease_mut(&mut self, mac: EthernetAddress) -> Option<&mut Lease> {
        self.leases.iter_mut().find(|l| l.mac == mac)
    }

    fn lease_on(&self, addr: Ipv4Addr) -> Option<&Lease> {
        self.leases.iter().find(|l| l.addr == addr)
    }

    /// The client's lease, held at least until `until`; or a new one: the
    /// address it asks for when that one is free, else the first address
    /// nobody has had, else the one whose lease ran out longest ago.
    fn allocate(
        &mut self,
        now: Instant,
        mac: EthernetAddress,
        wanted: Option<Ipv4Addr>,
        until: Instant,
    ) -> Option<Ipv4Addr> {
        if let Some(lease) = self.lease_mut(mac) {
            lease.expires = lease.expires.max(until);
            return Some(lease.addr);
        }
        let free = |s: &Self, a: Ipv4Addr| s.lease_on(a).is_none_or(|l| l.expires <= now);
        let addr = wanted
            .filter(|&a| self.in_pool(a) && free(self, a))
            .or_else(|| self.pool().find(|&a| self.lease_on(a).is_none()))
            .or_else(|| {
                let expired = self.leases.iter().filter(|l| l.expires <= now);
                expired.min_by_key(|l| l.expires).map(|l| l.addr)
            })?;
        self.leases.retain(|l| l.addr != addr);
        self.leases.push(Lease {
            mac,
            addr,
            expires: until,
        });
        Some(addr)
    }

    /// Answer one request, or `None` when it needs no answer.
    pub fn handle(&mut self, now: Instant, req: &DhcpRepr<'_>) -> Option<Answer> {
        let mac = req.client_hardware_address;
        let answer = |message_type, your_ip| Answer {
            message_type,
            your_ip,
            transaction_id: req.transaction_id,
            client_mac: mac,
            client_ip: req.client_ip,
            broadcast: req.broadcast,
        };
        let lease_end = now + Duration::from_secs(LEASE_SECS.into());
        match req.message_type {
            DhcpMessageType::Discover => {
                match self.allocate(now, mac, req.requested_ip, now + OFFER_HOLD) {
                    Some(addr) => Some(answer(DhcpMessageType::Offer, addr)),
                    None => {
                        if let Some(held) = self.exhausted.allow(now) {
                            log::warn!(
                                "dhcp: pool exhausted, no offer for {mac}{}",
                                held_note(held)
                            );
                        }
                        None
                    }
                }
            }
            DhcpMessageType::Request => {
                if req
                    .server_identifier
                    .is_some_and(|s| s != self.link.gateway)
                {
                    return None; // the client picked another server
                }
                let wanted = req
                    .requested_ip
                    .or((!req.client_ip.is_unspecified()).then_some(req.client_ip));
                match (wanted, self.allocate(now, mac, wanted, lease_end)) {
                    (Some(w), Some(lease)) if w == lease => {
                        Some(answer(DhcpMessageType::Ack, lease))
                    }
                    _ => Some(answer(DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED)),
                }
            }
            // The address stays the client's until someone needs it.
            DhcpMessageType::Release => {
                if let Some(lease) = self.lease_mut(mac) {
                    lease.expires = now;
                }
                None
            }
            _ => None,
        }
    }
}

impl<H: Host> Engine<H> {
    pub(super) fn process_dhcp<S: FrameSink>(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        data: &[u8],
        sink: &mut S,
    ) {
        if !self.plan.v4.dhcp {
            log::trace!("dhcp: off, dropping a request");
            return;
        }
        let Ok(packet) = DhcpPacket::new_checked(data) else {
            return;
        };
        let Ok(req) = DhcpRepr::parse(&packet) else {
            log::debug!("dhcp: ignoring a request that does not parse");
            return;
        };
        let Some(answer) = self.dhcp.handle(now, &req) else {
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
        let link = self.plan.v4;
        let ack_or_offer = a.message_type != DhcpMessageType::Nak;
        let dns = link.dns.map(|d| d.octets());
        let mtu = link.dhcp_mtu.map(u16::to_be_bytes);
        let extra: Vec<DhcpOption> = dns
            .iter()
            .map(|d| DhcpOption {
                kind: DHCP_OPT_DNS,
                data: d,
            })
            .chain(mtu.iter().map(|m| DhcpOption {
                kind: DHCP_OPT_MTU,
                data: m,
            }))
            .collect();
        let repr = DhcpRepr {
            message_type: a.message_type,
            transaction_id: a.transaction_id,
            secs: 0,
            client_hardware_address: a.client_mac,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: a.your_ip,
            server_ip: link.gateway,
            router: ack_or_offer.then_some(link.gateway),
            subnet_mask: ack_or_offer.then_some(link.netmask()),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: a.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(link.gateway),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: ack_or_offer.then_some(LEASE_SECS),
            renew_duration: None,
            rebind_duration: None,
            additional_options: if ack_or_offer { &extra } else { &[] },
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
        let (src, dst) = (IpAddr::V4(link.gateway), IpAddr::V4(dst_ip));
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

    const T0: Instant = Instant::from_micros_const(1_000_000);

    /// Discover then request, as a client does; the address it got.
    fn lease(s: &mut DhcpServer, now: Instant, mac: u8) -> Option<Ipv4Addr> {
        let offer = s.handle(now, &request(DhcpMessageType::Discover, mac, None))?;
        let ack = s.handle(
            now,
            &request(DhcpMessageType::Request, mac, Some(offer.your_ip)),
        )?;
        (ack.message_type == DhcpMessageType::Ack).then_some(ack.your_ip)
    }

    #[test]
    fn expired_leases_are_reclaimed_oldest_first_when_the_pool_is_full() {
        let mut s = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
        for mac in 0..16 {
            let now = T0 + Duration::from_secs(mac.into());
            assert_eq!(lease(&mut s, now, mac), Some(ip(15 + mac)));
        }
        assert_eq!(lease(&mut s, T0, 100), None, "the pool is full");
        // A day later every lease has run out but the last few; the
        // oldest goes to the newcomer.
        let later = T0 + Duration::from_secs(LEASE_SECS.into()) + Duration::from_secs(2);
        assert_eq!(lease(&mut s, later, 100), Some(ip(15)));
        assert_eq!(lease(&mut s, later, 101), Some(ip(16)));
        // A client whose lease ran out but was not needed keeps it.
        assert_eq!(lease(&mut s, later, 5), Some(ip(20)));
        // Renewed leases are not taken; unexpired ones neither.
        assert_eq!(lease(&mut s, later, 102), Some(ip(17)));
        assert_eq!(lease(&mut s, later, 103), None, "the rest still hold");
        // A released address is free at once.
        s.handle(later, &request(DhcpMessageType::Release, 30, None));
        assert_eq!(lease(&mut s, later, 104), None, "30 never had one");
        s.handle(later, &request(DhcpMessageType::Release, 15, None));
        assert_eq!(lease(&mut s, later, 104), Some(ip(30)));
    }

    #[test]
    fn an_offer_nobody_requests_holds_its_address_for_a_minute_only() {
        let mut s = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
        for mac in 0..16 {
            s.handle(T0, &request(DhcpMessageType::Discover, mac, None))
                .unwrap();
        }
        assert_eq!(lease(&mut s, T0 + OFFER_HOLD / 2, 50), None);
        assert_eq!(lease(&mut s, T0 + OFFER_HOLD, 50), Some(ip(15)));
    }

    #[test]
    fn first_client_gets_pool_start_and_keeps_it() {
        let mut s = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
        let offer = s
            .handle(T0, &request(DhcpMessageType::Discover, 1, None))
            .unwrap();
        assert_eq!(offer.message_type, DhcpMessageType::Offer);
        assert_eq!(offer.your_ip, ip(15));
        let ack = s
            .handle(T0, &request(DhcpMessageType::Request, 1, Some(ip(15))))
            .unwrap();
        assert_eq!(
            (ack.message_type, ack.your_ip),
            (DhcpMessageType::Ack, ip(15))
        );
        // A second client gets the next address; the first keeps its own.
        let offer2 = s
            .handle(T0, &request(DhcpMessageType::Discover, 2, None))
            .unwrap();
        assert_eq!(offer2.your_ip, ip(16));
        let again = s
            .handle(T0, &request(DhcpMessageType::Discover, 1, None))
            .unwrap();
        assert_eq!(again.your_ip, ip(15));
    }

    #[test]
    fn request_for_someone_elses_address_is_refused() {
        let mut s = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
        s.handle(T0, &request(DhcpMessageType::Discover, 1, None));
        let nak = s
            .handle(T0, &request(DhcpMessageType::Request, 2, Some(ip(15))))
            .unwrap();
        assert_eq!(nak.message_type, DhcpMessageType::Nak);
        let nak = s
            .handle(T0, &request(DhcpMessageType::Request, 3, Some(ip(99))))
            .unwrap();
        assert_eq!(nak.message_type, DhcpMessageType::Nak);
    }

    #[test]
    fn rebooting_client_may_keep_a_free_address() {
        let mut s = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
        let ack = s
            .handle(T0, &request(DhcpMessageType::Request, 7, Some(ip(20))))
            .unwrap();
        assert_eq!(
            (ack.message_type, ack.your_ip),
            (DhcpMessageType::Ack, ip(20))
        );
    }

    #[test]
    fn pool_exhaustion_means_silence() {
        let mut s = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
        for mac in 0..16 {
            let o = s.handle(T0, &request(DhcpMessageType::Discover, mac, None));
            assert_eq!(o.unwrap().your_ip, ip(15 + mac));
        }
        assert_eq!(
            s.handle(T0, &request(DhcpMessageType::Discover, 16, None)),
            None
        );
    }

    #[test]
    fn request_to_another_server_is_ignored() {
        let mut s = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
        let mut r = request(DhcpMessageType::Request, 1, Some(ip(15)));
        r.server_identifier = Some(Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(s.handle(T0, &r), None);
    }
}
