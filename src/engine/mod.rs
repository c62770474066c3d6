//! The engine: Ethernet frames in, Ethernet frames out, flows to the host.
//!
//! It owns the smoltcp interface, the virtual hosts of the network (the
//! gateway, the DNS address, the DHCP server) and the flow table that maps
//! each guest flow to a host socket. Each frame from the guest is
//! classified before smoltcp sees it: ARP for a virtual address and TCP go
//! into smoltcp; UDP, ICMP and DHCP are handled here. The engine never
//! touches the tap and reads no clock: the caller passes the time and a
//! sink for outgoing frames, and tells it which host sockets are ready.

mod dhcp;
mod flows;
mod forward;
mod icmp;
mod port;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use mio::{Registry, Token};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, DeviceCapabilities};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr,
};

pub use dhcp::{Answer as DhcpAnswer, DhcpServer, LEASE_SECS};
pub use flows::{FLOW_TOKEN_BASE, FLOW_TOKEN_END};
pub use forward::{Forward, ForwardError, ForwardSpec, Proto};
pub use port::{ETHERNET_HEADER_LEN, FrameSink};
pub use udp::{UDP_FLOW_LIMIT, UDP_IDLE_TIMEOUT};

use crate::config::{DEFAULT_TCP_BUFFER, Network};
use crate::host::Outbound;
use crate::resolv::Resolver;
use flows::FlowTable;
use port::Port;

/// TTL of packets the virtual hosts originate.
const HOP_LIMIT: u8 = 64;
/// DNS is served on this port of the DNS address.
const DNS_PORT: u16 = 53;
/// Guest addresses whose MAC is remembered (see `guest_macs`).
const GUEST_MAC_LIMIT: usize = 256;
/// How often idle UDP/ICMP flows and finished TCP flows are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub net: Network,
    /// The tap's IP MTU.
    pub mtu: usize,
    /// Verify checksums of received frames. Off in production (the guest
    /// kernel made them); on in fuzzing and tests.
    pub verify_checksums: bool,
    /// Seed for smoltcp's initial sequence numbers.
    pub seed: u64,
    /// The gateway address reaches the host's loopback.
    pub host_loopback: bool,
    /// The DNS address forwards to the host's resolver.
    pub dns: bool,
    pub outbound: Outbound,
    /// Bytes per smoltcp TCP buffer, each direction.
    pub tcp_buffer: usize,
    pub resolv_conf: PathBuf,
}

impl EngineConfig {
    pub fn new(net: Network, mtu: usize) -> Self {
        EngineConfig {
            net,
            mtu,
            verify_checksums: false,
            seed: 0,
            host_loopback: true,
            dns: true,
            outbound: Outbound::default(),
            tcp_buffer: DEFAULT_TCP_BUFFER,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// Where a guest's packet to some address goes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// To this host socket address.
    Host(SocketAddr),
    /// Answer with ICMP destination unreachable (net or host).
    Unreachable(smoltcp::wire::Icmpv4DstUnreachable),
    /// Answer as a closed port would: TCP RST, ICMP port unreachable.
    Refused,
    /// Drop silently (broadcast, multicast, nothing configured).
    Drop,
}

/// Readiness of one host socket, as the event loop saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its side (EPOLLRDHUP) or the socket failed.
    pub read_closed: bool,
}

pub struct Engine {
    net: Network,
    mac: EthernetAddress,
    caps: DeviceCapabilities,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: DhcpServer,
    flows: FlowTable,
    forwards: forward::Forwards,
    /// MAC of each guest address we have heard from, for frames we
    /// originate (forwarded connections); `last_guest` spares the map a
    /// write per frame.
    guest_macs: HashMap<Ipv4Addr, EthernetAddress>,
    last_guest: Option<(Ipv4Addr, EthernetAddress)>,
    registry: Registry,
    resolver: Resolver,
    host_loopback: bool,
    dns: bool,
    outbound: Outbound,
    tcp_buffer: usize,
    ping_denied_logged: bool,
    next_sweep: Instant,
    /// Reused buffer for every frame the engine or smoltcp sends.
    tx: Vec<u8>,
    /// Reused buffer for datagrams read from host sockets.
    scratch: Vec<u8>,
}

impl Engine {
    pub fn new(cfg: &EngineConfig, now: Instant, registry: Registry) -> Self {
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
            flows: FlowTable::default(),
            forwards: forward::Forwards::default(),
            guest_macs: HashMap::new(),
            last_guest: None,
            registry,
            resolver: Resolver::new(&cfg.resolv_conf),
            host_loopback: cfg.host_loopback,
            dns: cfg.dns,
            outbound: cfg.outbound,
            tcp_buffer: cfg.tcp_buffer,
            ping_denied_logged: false,
            next_sweep: now + SWEEP_INTERVAL,
            tx,
            scratch: vec![0u8; 65536],
        }
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    fn is_virtual(&self, addr: Ipv4Addr) -> bool {
        addr == self.net.gateway || addr == self.net.dns
    }

    /// Where traffic from the guest to `dst:port` goes.
    fn route(&mut self, now: Instant, dst: Ipv4Addr, port: u16) -> Route {
        use smoltcp::wire::Icmpv4DstUnreachable as Unreach;
        if dst == self.net.gateway {
            return if self.host_loopback {
                Route::Host(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
            } else {
                Route::Unreachable(Unreach::NetUnreachable)
            };
        }
        if dst == self.net.dns {
            if !self.dns || port != DNS_PORT {
                return Route::Refused;
            }
            return match self.resolver.nameserver(now) {
                Some(addr) => Route::Host(SocketAddr::new(addr, DNS_PORT)),
                None => Route::Drop,
            };
        }
        if self.net.contains(dst) {
            // Nothing else lives on the virtual network; never let such a
            // destination leak to a host network that happens to use it.
            return Route::Unreachable(Unreach::HostUnreachable);
        }
        if dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() || dst.is_loopback() {
            return Route::Drop;
        }
        Route::Host(SocketAddr::new(dst.into(), port))
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
            EthernetProtocol::Ipv4 => self.process_ipv4(now, frame, sink),
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

    fn process_ipv4<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            log::trace!("dropping a malformed IPv4 packet");
            return;
        };
        let Ok(ip_repr) = Ipv4Repr::parse(&ip, &self.caps.checksum) else {
            log::trace!("dropping an IPv4 packet that does not parse");
            return;
        };
        if ip.more_frags() || ip.frag_offset() != 0 {
            log::debug!("dropping an IPv4 fragment to {}", ip_repr.dst_addr);
            return;
        }
        let guest_mac = eth.src_addr();
        if self.last_guest != Some((ip_repr.src_addr, guest_mac))
            && self.net.contains(ip_repr.src_addr)
            && guest_mac.is_unicast()
        {
            self.last_guest = Some((ip_repr.src_addr, guest_mac));
            if self.guest_macs.len() >= GUEST_MAC_LIMIT {
                // A guest spraying source addresses must not grow this
                // without bound; real guests have a handful.
                self.guest_macs.clear();
            }
            self.guest_macs.insert(ip_repr.src_addr, guest_mac);
        }
        match ip_repr.next_header {
            IpProtocol::Tcp => self.process_tcp(now, frame, &ip_repr, ip.payload(), sink),
            IpProtocol::Udp => self.process_udp(now, guest_mac, &ip, &ip_repr, ip.payload(), sink),
            IpProtocol::Icmp => {
                self.process_icmp(now, guest_mac, &ip, &ip_repr, ip.payload(), sink)
            }
            other => log::trace!("dropping IP protocol {other} to {}", ip_repr.dst_addr),
        }
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

    /// A host socket is ready. The event loop calls this for tokens from
    /// `FLOW_TOKEN_BASE` up; the work happens in the next `poll`.
    pub fn host_event(&mut self, token: Token, ready: Readiness) {
        self.flows.mark_ready(token, ready);
    }

    /// Move data between flows and their host sockets, let smoltcp send
    /// what it has queued and run its timers, and retire finished flows.
    /// Call after each batch of frames and host events, and when
    /// `poll_at` comes due.
    pub fn poll<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        self.service_flows(now, sink);
        let mut dev = Port {
            rx: None,
            tx: &mut self.tx,
            sink,
            caps: &self.caps,
        };
        self.iface.poll(now, &mut dev, &mut self.sockets);
        self.reap_tcp();
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            self.sweep(now);
        }
    }

    /// When `poll` must next run.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let smol = self.iface.poll_at(now, &self.sockets);
        let sweep = (!self.flows.is_empty()).then_some(self.next_sweep);
        match (smol, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Serve every flow that had a frame or a host event since last time.
    fn service_flows<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        while let Some(slot) = self.flows.next_dirty() {
            match self.flows.kind(slot) {
                Some(flows::Kind::Tcp) => self.pump_tcp(slot, sink),
                Some(flows::Kind::Udp) => self.pump_udp(now, slot, sink),
                Some(flows::Kind::Ping) => self.pump_ping(now, slot, sink),
                Some(flows::Kind::Listener) => self.pump_listener(now, slot, sink),
                None => {}
            }
        }
    }

    /// Retire idle datagram flows and TCP flows smoltcp has finished with.
    fn sweep(&mut self, now: Instant) {
        for slot in self.flows.expired(now) {
            self.remove_flow(slot);
        }
        self.expire_forwarded_udp(now);
        self.flows.mark_all_tcp_for_reaping();
        self.flows.retry_listeners();
    }

    fn remove_flow(&mut self, slot: usize) {
        if let Some(flow) = self.flows.remove(slot, &self.registry)
            && let Some(handle) = flow.tcp_handle()
        {
            self.sockets.remove(handle);
        }
    }
}
