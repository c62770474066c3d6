//! The address plan: every address the guest sees on its link, and what
//! each one leads to on the host.
//!
//! A front end builds it (the slirp4netns command line: 10.0.2.0/24 and
//! fd00::/64 with the gateway at .2 and DNS at .3; pasta's: the host's
//! own addresses with the maps its options name) and the engine only
//! reads it: the engine gives no address a role of its own. Routing a
//! guest's packet asks the plan first ([`AddressPlan::target`]); what it
//! does not name goes out to the address itself through a host socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the guest's packets to a mapped address reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapTo {
    /// The host's loopback of the packet's family, same port (slirp4netns's
    /// gateway; pasta's gateway unless `--no-map-gw`, and
    /// `--map-host-loopback`).
    HostLoopback,
    /// The host's resolver; ports other than DNS's are refused
    /// (slirp4netns's DNS address; pasta's `--dns-forward`).
    Resolver,
    /// This name server, DNS's port only; the others refused, as for
    /// [`MapTo::Resolver`] (pasta's `--dns-forward` with `--dns-host`).
    Nameserver(IpAddr),
    /// This address of the host's, same port (pasta's `--map-guest-addr`:
    /// the host's own address, which the guest's copy hides).
    Host(IpAddr),
    /// Nothing, as a closed port: TCP reset, ICMP port unreachable
    /// (slirp4netns's DNS address with `--disable-dns`).
    Refused,
    /// Nothing: answered "network unreachable" (slirp4netns's gateway
    /// with `--disable-host-loopback`).
    Unreachable,
}

/// One address the engine answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub addr: IpAddr,
    pub to: MapTo,
}

/// The guest's IPv4 link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link4 {
    /// The address the guest is given (DHCP's first choice, a forward's
    /// default target).
    pub guest: Ipv4Addr,
    pub prefix_len: u8,
    /// The guest's router: the source of ICMP errors and of DHCP.
    pub gateway: Ipv4Addr,
    /// Whether DHCP answers the guest at all (pasta's `--no-dhcp`: no).
    pub dhcp: bool,
    /// Addresses DHCP hands out, first to last; `None`: only `guest`.
    pub dhcp_pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The name server DHCP announces, if any.
    pub dns: Option<Ipv4Addr>,
    /// The interface MTU DHCP announces, if any (pasta's does).
    pub dhcp_mtu: Option<u16>,
}

impl Link4 {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0),
        )
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(addr) & mask == u32::from(self.guest) & mask
    }

    /// The pool DHCP hands out from.
    pub fn pool(&self) -> (Ipv4Addr, Ipv4Addr) {
        self.dhcp_pool.unwrap_or((self.guest, self.guest))
    }
}

/// The guest's IPv6 link: a /64 it configures itself in by SLAAC from
/// router advertisements (slirp4netns), or the address the front end
/// gives it (pasta's `--config-net`, the host's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link6 {
    pub prefix: Ipv6Addr,
    /// The router's global (or, as a host's may be, link-local) and
    /// link-local addresses.
    pub gateway: Ipv6Addr,
    pub gateway_ll: Ipv6Addr,
    /// The name server router advertisements announce (RDNSS).
    pub dns: Option<Ipv6Addr>,
    /// The guest's address when the front end assigns it; `None`: learned
    /// from what the guest sends.
    pub guest: Option<Ipv6Addr>,
    /// Send router advertisements, unsolicited and in answer to a
    /// solicitation (off for pasta's `--config-net` and `--no-ra`).
    pub router_adverts: bool,
}

impl Link6 {
    /// Whether `addr` is in the /64.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) >> 64 == u128::from(self.prefix) >> 64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    pub v4: Link4,
    /// `None` leaves IPv6 off.
    pub v6: Option<Link6>,
    /// The gateway's MAC: the source of every frame the engine sends.
    pub mac: [u8; 6],
    /// The addresses the engine answers for (ARP, neighbour discovery,
    /// ping) and where each leads.
    pub maps: Vec<Mapping>,
    /// Nothing lives on the guest's subnets but the guest and the mapped
    /// addresses: other destinations there are unreachable rather than
    /// sent to a host network that happens to use the same prefix
    /// (slirp4netns's private network; pasta's subnets are the host's).
    pub closed_subnets: bool,
}

impl AddressPlan {
    /// What a mapped address leads to; `None` for any other address.
    pub fn target(&self, addr: IpAddr) -> Option<MapTo> {
        self.maps.iter().find(|m| m.addr == addr).map(|m| m.to)
    }

    /// Whether the engine answers for `addr` itself.
    pub fn is_mapped(&self, addr: IpAddr) -> bool {
        self.target(addr).is_some()
    }

    /// Whether `addr` lies on one of the guest's closed subnets.
    pub fn in_closed_subnet(&self, addr: IpAddr) -> bool {
        self.closed_subnets
            && match addr {
                IpAddr::V4(a) => self.v4.contains(a),
                IpAddr::V6(a) => {
                    a.is_unicast_link_local() || self.v6.is_some_and(|l| l.contains(a))
                }
            }
    }

    /// The gateway's address in `addr`'s family: the source of ICMP
    /// errors about routing, and how host-local clients of a forward
    /// appear.
    pub fn gateway_for(&self, addr: IpAddr) -> IpAddr {
        match (addr, self.v6) {
            (IpAddr::V6(_), Some(l)) => l.gateway.into(),
            _ => self.v4.gateway.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> AddressPlan {
        AddressPlan {
            v4: Link4 {
                guest: Ipv4Addr::new(192, 0, 2, 50),
                prefix_len: 24,
                gateway: Ipv4Addr::new(192, 0, 2, 1),
                dhcp: true,
                dhcp_pool: None,
                dns: None,
                dhcp_mtu: None,
            },
            v6: None,
            mac: [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55],
            maps: vec![Mapping {
                addr: Ipv4Addr::new(169, 254, 1, 1).into(),
                to: MapTo::Resolver,
            }],
            closed_subnets: false,
        }
    }

    #[test]
    fn only_mapped_addresses_have_a_target_and_open_subnets_lead_out() {
        let mut p = plan();
        let dns: IpAddr = Ipv4Addr::new(169, 254, 1, 1).into();
        let neighbour: IpAddr = Ipv4Addr::new(192, 0, 2, 7).into();
        assert_eq!(p.target(dns), Some(MapTo::Resolver));
        assert_eq!(p.target(neighbour), None);
        assert!(!p.in_closed_subnet(neighbour));
        p.closed_subnets = true;
        assert!(p.in_closed_subnet(neighbour));
        assert!(!p.in_closed_subnet(Ipv4Addr::new(192, 0, 3, 7).into()));
        assert_eq!(p.v4.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(p.v4.pool(), (p.v4.guest, p.v4.guest));
    }
}
