//! Routing: where a guest's packet to some address goes.
//!
//! The address plan names the virtual addresses (the gateway, the DNS
//! address, mapped addresses) and what each leads to on the host; every
//! other destination is reached through a host socket to the address
//! itself, except those no host socket may reach (loopback, multicast,
//! link-local, the rest of a closed subnet). This file decides only where
//! a packet goes: it sends nothing and opens no socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::time::Instant;

use super::{DNS_PORT, Engine, Host, MapTo};

/// Why a destination cannot be reached, in terms either ICMP family has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreachable {
    Net,
    Host,
    Port,
}

/// Where a guest's packet to some address goes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// To this host socket address.
    Host(SocketAddr),
    /// Answer with ICMP destination unreachable from the gateway.
    Unreachable(Unreachable),
    /// Answer as a closed port would: TCP RST, ICMP port unreachable.
    Refused,
    /// Drop silently (broadcast, multicast, nothing configured).
    Drop,
}

impl<H: Host> Engine<H> {
    /// Whether the engine answers for `addr` itself (ARP, neighbour
    /// discovery, ping).
    pub(super) fn is_virtual(&self, addr: IpAddr) -> bool {
        self.plan.is_mapped(addr)
    }

    pub(super) fn gateway_for(&self, addr: IpAddr) -> IpAddr {
        self.plan.gateway_for(addr)
    }

    /// Where traffic from the guest to `dst:port` goes: a mapped address
    /// where the plan says, the rest of a closed subnet nowhere, anything
    /// else out to the address itself through a host socket.
    pub(super) fn route(&mut self, now: Instant, dst: IpAddr, port: u16) -> Route {
        if dst.is_ipv6() && self.plan.v6.is_none() {
            return Route::Drop;
        }
        if let Some(target) = self.plan.target(dst) {
            return match target {
                MapTo::HostLoopback => {
                    let lo: IpAddr = match dst {
                        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                    };
                    Route::Host(SocketAddr::new(lo, port))
                }
                MapTo::Resolver if port != DNS_PORT => Route::Refused,
                MapTo::Resolver => match self.host.nameserver(now) {
                    Some(addr) => Route::Host(SocketAddr::new(addr, DNS_PORT)),
                    None => Route::Drop,
                },
                MapTo::Nameserver(_) if port != DNS_PORT => Route::Refused,
                MapTo::Nameserver(addr) => Route::Host(SocketAddr::new(addr, DNS_PORT)),
                MapTo::Host(addr) => Route::Host(SocketAddr::new(addr, port)),
                MapTo::Refused => Route::Refused,
                MapTo::Unreachable => Route::Unreachable(Unreachable::Net),
            };
        }
        if self.plan.in_closed_subnet(dst) {
            // Nothing else lives there; never let such a destination leak
            // to a host network that happens to use the same prefix.
            return Route::Unreachable(Unreachable::Host);
        }
        let nowhere = match dst {
            IpAddr::V4(d) => {
                d.is_broadcast() || d.is_multicast() || d.is_unspecified() || d.is_loopback()
            }
            // A v4-mapped destination would reach IPv4 addresses (the
            // host's 127.0.0.1 among them) through a dual-stack socket.
            IpAddr::V6(d) => {
                d.is_loopback()
                    || d.is_multicast()
                    || d.is_unspecified()
                    || d.to_ipv4_mapped().is_some()
            }
        };
        if nowhere {
            return Route::Drop;
        }
        if let IpAddr::V6(d) = dst
            && d.is_unicast_link_local()
        {
            // A host socket cannot reach the guest's link.
            return Route::Unreachable(Unreachable::Host);
        }
        Route::Host(SocketAddr::new(dst, port))
    }
}
