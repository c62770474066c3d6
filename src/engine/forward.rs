//! Port forwarding: host listeners whose connections and datagrams are
//! carried into the guest, from the client's own address.
//!
//! A TCP client accepted on the host becomes a smoltcp connection to the
//! guest whose source is the client's address and port, so the service
//! inside sees who is really calling; only a client on the host's own
//! loopback (or one that cannot be shown in the guest's family) appears
//! as the gateway. From then on it is an ordinary TCP flow, pumped like an
//! outbound one. UDP clients get one flow each, with the same idle timeout
//! and cap as outbound UDP.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};

use smoltcp::time::Instant;
use thiserror::Error;

use super::flows::{Flow, FlowKey, Listener, UDP_FLOW_LIMIT};
use super::udp::DGRAM_BATCH;
use super::{Engine, FrameSink};
use crate::host::{FlowId, Host, Proto, Step};

/// Clients accepted from one listener per poll before others get a turn.
const ACCEPT_BATCH: usize = 64;

/// What to forward: a host address and port to a guest address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSpec {
    pub proto: Proto,
    pub host: SocketAddr,
    pub guest: SocketAddr,
}

/// A forward in place; `spec.host` holds the port actually bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub id: u64,
    pub spec: ForwardSpec,
    flow: FlowId,
}

#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("cannot bind {addr}: {err}")]
    Bind { addr: SocketAddr, err: io::Error },
    #[error("no forward has id {0}")]
    NoSuchId(u64),
}

/// A UDP client of a forward.
pub(super) struct UdpClient {
    listener: FlowId,
    client: SocketAddr,
    last_used: Instant,
}

#[derive(Default)]
pub(super) struct Forwards {
    by_id: BTreeMap<u64, Forward>,
    last_id: u64,
    /// Keyed like a guest flow: the guest's endpoint and the client's
    /// endpoint as the guest sees it.
    udp_clients: HashMap<FlowKey, UdpClient>,
}

impl Forwards {
    pub(super) fn has_udp_clients(&self) -> bool {
        !self.udp_clients.is_empty()
    }
}

impl<H: Host> Engine<H> {
    /// Bind the host side of a forward and start accepting. Ids start at 1
    /// and are never reused.
    pub fn add_forward(&mut self, spec: ForwardSpec) -> Result<Forward, ForwardError> {
        let flow = self.flows.next_id();
        let bound = self
            .host
            .listen(flow, spec.proto, spec.host)
            .map_err(|err| ForwardError::Bind {
                addr: spec.host,
                err,
            })?;
        let inserted = self.flows.insert(Flow::Listener(Listener {
            proto: spec.proto,
            guest: spec.guest,
            readable: false,
        }));
        debug_assert_eq!(inserted, flow);
        let id = self.forwards.last_id + 1;
        self.forwards.last_id = id;
        let mut spec = spec;
        spec.host.set_port(bound.port());
        let fwd = Forward { id, spec, flow };
        self.forwards.by_id.insert(id, fwd);
        log::info!(
            "forwarding {} {} to {}",
            spec.proto.as_str(),
            spec.host,
            spec.guest
        );
        Ok(fwd)
    }

    /// Close a forward's listener at once; its connections may finish.
    pub fn remove_forward(&mut self, id: u64) -> Result<(), ForwardError> {
        let fwd = self
            .forwards
            .by_id
            .remove(&id)
            .ok_or(ForwardError::NoSuchId(id))?;
        self.remove_flow(fwd.flow, false);
        self.forwards
            .udp_clients
            .retain(|_, c| c.listener != fwd.flow);
        log::info!("removed forward {id}");
        Ok(())
    }

    /// The forwards in place, by id.
    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.by_id.values()
    }

    /// Where in the guest a forward's client goes: an IPv6 client reaches
    /// the guest over IPv6 when the guest has a global address, keeping
    /// its own address; otherwise the forward's (IPv4) guest address. A
    /// TCP client the guest refuses over IPv6 is carried over IPv4 after
    /// all (`Engine::inbound_over_v4`).
    fn target_for(&self, client: SocketAddr, guest: SocketAddr) -> SocketAddr {
        match (client.ip(), guest.ip(), self.guest_v6) {
            (IpAddr::V6(c), IpAddr::V4(g), Some(v6))
                if c.to_ipv4_mapped().is_none() && g == self.plan.v4.guest =>
            {
                SocketAddr::new(v6.into(), guest.port())
            }
            _ => guest,
        }
    }

    /// How a host client appears inside the guest: itself when it is an
    /// outside address of the guest's family, else the gateway.
    fn seen_source(&self, client: SocketAddr, guest: SocketAddr) -> SocketAddr {
        let ip = match (client.ip(), guest.ip()) {
            (IpAddr::V4(a), IpAddr::V4(_)) => Some(IpAddr::V4(a)),
            (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().map(IpAddr::V4),
            (IpAddr::V6(a), IpAddr::V6(_)) => Some(IpAddr::V6(a)),
            (IpAddr::V4(a), IpAddr::V6(_)) => Some(IpAddr::V6(a.to_ipv6_mapped())),
        };
        let outside = |a: &IpAddr| match a {
            IpAddr::V4(v4) => {
                !(v4.is_loopback() || v4.is_unspecified() || self.plan.in_closed_subnet(*a))
            }
            IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified()),
        };
        let ip = ip
            .filter(outside)
            .unwrap_or_else(|| self.gateway_for(guest.ip()));
        SocketAddr::new(ip, client.port())
    }

    /// Serve a listener: accept clients or receive datagrams, a batch at a
    /// time. True when the batch ran out with more perhaps waiting.
    pub(super) fn pump_listener<S: FrameSink>(
        &mut self,
        now: Instant,
        id: FlowId,
        sink: &mut S,
    ) -> bool {
        let Some(l) = self.flows.listener_mut(id) else {
            return false;
        };
        match l.proto {
            Proto::Tcp => self.accept_clients(id),
            Proto::Udp => self.receive_forwarded_udp(now, id, sink),
        }
    }

    /// Stop reading listener `id` until its next event (or the sweep).
    fn listener_idle(&mut self, id: FlowId) {
        if let Some(l) = self.flows.listener_mut(id) {
            l.readable = false;
        }
    }

    fn accept_clients(&mut self, id: FlowId) -> bool {
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.flows.listener_mut(id) else {
                return false;
            };
            if !l.readable {
                return false;
            }
            let guest = l.guest;
            let new = self.flows.next_id();
            match Step::from(self.host.accept(id, new)) {
                Step::Got(client) => {
                    let target = self.target_for(client, guest);
                    if self.host.carry_directly(new, client, target) {
                        log::debug!("forward: {client} carried to {target} by the host");
                        continue;
                    }
                    let src = self.seen_source(client, target);
                    // Over IPv6 the guest may have no listener (a service
                    // on 0.0.0.0 only): then IPv4, as without an address.
                    let v4_fallback = (target != guest).then(|| FlowKey {
                        guest,
                        dst: self.seen_source(client, guest),
                    });
                    log::debug!("forward: {client} accepted");
                    self.open_inbound(new, src, target, v4_fallback);
                }
                Step::Retry => {}
                Step::Drained => {
                    self.listener_idle(id);
                    return false;
                }
                Step::Failed(e) => {
                    // EMFILE and friends: leave the client queued and
                    // retry on the next sweep rather than spin.
                    log::warn!("accept on a forward failed: {e}");
                    self.listener_idle(id);
                    return false;
                }
            }
        }
        true
    }

    fn receive_forwarded_udp<S: FrameSink>(
        &mut self,
        now: Instant,
        id: FlowId,
        sink: &mut S,
    ) -> bool {
        for _ in 0..DGRAM_BATCH {
            let Some(l) = self.flows.listener_mut(id) else {
                return false;
            };
            if !l.readable {
                return false;
            }
            let guest = l.guest;
            let (n, client) = match Step::from(self.host.recv_from(id, &mut self.scratch)) {
                Step::Got(got) => got,
                Step::Retry => continue,
                Step::Drained => {
                    self.listener_idle(id);
                    return false;
                }
                Step::Failed(e) => {
                    log::debug!("forward: UDP receive failed: {e}");
                    self.listener_idle(id);
                    return false;
                }
            };
            let guest = self.target_for(client, guest);
            let src = self.seen_source(client, guest);
            let key = FlowKey { guest, dst: src };
            let clients = &mut self.forwards.udp_clients;
            if !clients.contains_key(&key) && clients.len() >= UDP_FLOW_LIMIT {
                let oldest = clients
                    .iter()
                    .min_by_key(|(_, c)| c.last_used)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    clients.remove(&k);
                }
            }
            clients.insert(
                key,
                UdpClient {
                    listener: id,
                    client,
                    last_used: now,
                },
            );
            let mac = self.guest_mac_for(guest.ip());
            self.stats.bytes_to_guest += n as u64;
            self.stats.datagrams_to_guest += 1;
            let scratch = std::mem::take(&mut self.scratch);
            self.send_udp(mac, src, guest, &scratch[..n], sink);
            self.scratch = scratch;
        }
        true
    }

    /// A guest datagram that answers a forwarded UDP client: send it back
    /// to that client from the forward's socket. False when `key` is not a
    /// forwarded client.
    pub(super) fn reply_forwarded_udp(&mut self, now: Instant, key: &FlowKey, data: &[u8]) -> bool {
        let Some(c) = self.forwards.udp_clients.get_mut(key) else {
            return false;
        };
        c.last_used = now;
        let (listener, client) = (c.listener, c.client);
        match self.host.send_to(listener, data, client) {
            Ok(_) => self.stats.bytes_to_host += data.len() as u64,
            Err(e) => log::debug!("forward: UDP reply to {client} failed: {e}"),
        }
        true
    }

    /// Forget UDP clients idle past the timeout.
    pub(super) fn expire_forwarded_udp(&mut self, now: Instant) {
        let timeout = self.udp_idle_timeout;
        self.forwards
            .udp_clients
            .retain(|_, c| now - c.last_used <= timeout);
    }
}
