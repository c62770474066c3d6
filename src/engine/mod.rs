//! The engine: Ethernet frames in, Ethernet frames out, flows to the host.
//!
//! It owns the smoltcp interface, the virtual hosts of the network (the
//! gateway, the DNS address, the DHCP server) and the flow table that maps
//! each guest flow to a host socket. Each frame from the guest is
//! classified before smoltcp sees it: ARP for a virtual address and TCP go
//! into smoltcp; UDP, ICMP and DHCP are handled here.
//!
//! It performs no I/O of its own and reads no clock: the caller passes the
//! time, a sink for outgoing frames and a [`Host`] that does what the
//! engine asks of the host's sockets, and tells it which host sockets are
//! ready. So the same engine runs on the tap and real sockets in
//! production, and on literal frames and a simulated host in tests.
//!
//! Its public face follows quinn-proto's: `handle_*` takes an event in (a
//! tap read, a frame, a UDP train, a host socket's readiness), and
//! `poll_*` says what the caller must do (`poll_transmit`: move the data
//! those events made ready and send the frames due) or wait for
//! (`poll_timeout`: how long until `poll_transmit` must run again).
//!
//! This file holds the engine's state, its entry points, the panic guard
//! around them and the first dispatch of a frame by ethertype. Where a
//! destination leads is decided in `route`; IPv4 input and reassembly is
//! `ipv4`, IPv6 and neighbour discovery `ipv6`; every packet the engine
//! originates is framed (and fragmented) in `emit`; each transport has
//! its own file (`tcp`, `udp`, `icmp`, `dhcp`, `forward`); `dns` answers
//! SERVFAIL for queries the host's resolver leaves unanswered; `device`
//! is the smoltcp device that hands smoltcp one frame and collects its
//! output.

mod device;
mod dhcp;
mod dns;
mod emit;
mod flows;
mod forward;
mod frag;
#[cfg(test)]
mod harness;
mod icmp;
mod ipv4;
mod ipv6;
pub mod plan;
mod route;
#[cfg(test)]
mod scenario;
mod tcp;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests6;
mod throttle;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollResult, Route as IfaceRoute, SocketSet,
};
use smoltcp::phy::DeviceCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr,
};

pub use device::{ETHERNET_HEADER_LEN, FrameSink, send_cut};
pub use dhcp::{Answer as DhcpAnswer, DhcpServer, LEASE_SECS};
pub use flows::{
    DEFAULT_MAX_PENDING_CONNECTS, DEFAULT_MAX_TCP_FLOWS, FlowKey, Limits, UDP_FLOW_LIMIT,
};
pub use forward::{Forward, ForwardError, ForwardSpec};
pub use plan::{AddressPlan, Link4, Link6, MapTo, Mapping};

pub use crate::host::{FlowId, Host, Proto, Readiness};

use crate::host::DgramBatch;
use crate::pages::Pages;
use crate::vnet::TooManySegments;
use device::SmolDevice;
use flows::FlowTable;
/// For the fuzz targets, which build the guest's fragments.
#[cfg(any(test, feature = "test-support"))]
pub(crate) use frag::{IPV6_FRAGMENT_HEADER_LEN, emit_v6_header as emit_v6_fragment_header};
use route::Route;
pub(crate) use route::Unreachable;

/// The smallest IP MTU the engine works with: IPv4's minimum (RFC 791),
/// which every link carries (a Linux tap refuses less). A smaller `--mtu`
/// is raised to it, since no ARP reply or IP header would fit below.
pub const MIN_MTU: usize = 68;
/// The smallest MTU IPv6 runs on (RFC 8200); below it IPv6 stays off.
pub const IPV6_MIN_MTU: usize = 1280;
/// TTL of packets the virtual hosts originate.
const HOP_LIMIT: u8 = 64;
/// DNS is served on this port of the DNS address.
const DNS_PORT: u16 = 53;
/// Guest addresses whose MAC is remembered (see `guest_macs`).
const GUEST_MAC_LIMIT: usize = 256;
/// Segments one flow may send per poll before the others get a turn.
const EGRESS_BURST: usize = 256;
/// The largest datagram a host socket can hand us (a UDP payload is at
/// most 65,507 bytes; ICMP ones are smaller).
const MAX_DATAGRAM_READ: usize = 65536;
/// How often idle UDP/ICMP flows and finished TCP flows are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A UDP (or ICMP echo) flow with no traffic either way for this long is
/// closed. DNS answers come in milliseconds; two minutes keeps NAT-style
/// conversations (NTP, QUIC, games) alive between bursts.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes per smoltcp TCP buffer, each direction: enough for window
/// scaling at MTU 65520.
pub const DEFAULT_TCP_BUFFER: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Every address on the guest's link and where each leads.
    pub plan: AddressPlan,
    /// The tap's IP MTU.
    pub mtu: usize,
    /// Verify checksums of received frames. Off in production (the guest
    /// kernel made them); on in fuzzing and tests.
    pub verify_checksums: bool,
    /// The tap segments and checksums TCP for us (`crate::vnet`): smoltcp
    /// sends segments of up to 64 KiB, and the guest is told it may too.
    pub offload: bool,
    /// The sink cuts UDP trains (`FrameSink::send_udp_train`) the way the
    /// tap's kernel does: datagrams from one batch go as one.
    pub split_udp: bool,
    /// Seed for smoltcp's initial sequence numbers.
    pub seed: u64,
    /// Bytes per smoltcp TCP buffer, each direction.
    pub tcp_buffer: usize,
    /// How long an idle UDP or ICMP echo flow lives.
    pub udp_idle_timeout: Duration,
    pub limits: Limits,
    pub carry: Carry,
}

/// Which of the guest's protocols the engine carries (pasta's `--no-tcp`,
/// `--no-udp`, `--no-icmp` turn one off). What is not carried is dropped
/// unanswered; DHCP, ARP and neighbour discovery are the engine's own and
/// stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carry {
    pub tcp: bool,
    pub udp: bool,
    /// Echo requests, to the virtual hosts as well as beyond.
    pub icmp: bool,
}

impl Default for Carry {
    fn default() -> Self {
        Carry {
            tcp: true,
            udp: true,
            icmp: true,
        }
    }
}

impl EngineConfig {
    pub fn new(plan: AddressPlan, mtu: usize) -> Self {
        EngineConfig {
            plan,
            mtu,
            verify_checksums: false,
            offload: false,
            split_udp: false,
            seed: 0,
            tcp_buffer: DEFAULT_TCP_BUFFER,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            limits: Limits::default(),
            carry: Carry::default(),
        }
    }
}

/// What the engine has done so far, for `netferry status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_from_guest: u64,
    /// UDP datagrams (each one of a train) and pings from the guest.
    pub datagrams_from_guest: u64,
    /// Frames too short or malformed to use, dropped.
    pub frames_dropped: u64,
    /// Payload bytes written to host sockets (TCP and datagrams).
    pub bytes_to_host: u64,
    /// Payload bytes from host sockets queued toward the guest.
    pub bytes_to_guest: u64,
    /// Datagrams (UDP and ping) from host sockets toward the guest.
    pub datagrams_to_guest: u64,
    /// Guest connections refused at a flow cap.
    pub refused_at_cap: u64,
    /// Panics caught in the engine (each a defect; see `Engine::guarded`).
    pub defects: u64,
}

/// Who answers an ARP message from the guest.
enum ArpAnswer {
    Smoltcp,
    Ours(ArpRepr),
    None,
}

/// One IP packet from the guest, parsed as far as every protocol needs.
struct Packet<'a> {
    guest_mac: EthernetAddress,
    src: IpAddr,
    dst: IpAddr,
    /// The transport header and data.
    payload: &'a [u8],
    /// The IP header and the first 8 bytes after it, for ICMP errors.
    quote: &'a [u8],
}

pub struct Engine<H: Host> {
    plan: AddressPlan,
    /// The guest's global IPv6 address, as last seen (or announced by its
    /// duplicate address detection): where forwards from IPv6 clients go.
    guest_v6: Option<Ipv6Addr>,
    /// When the next unsolicited router advertisement is due.
    next_ra: Option<Instant>,
    frags: frag::Reassembly,
    /// Identification of the next IPv4 datagram we fragment, and IPv6's.
    frag_id: u32,
    /// The tap's IP MTU.
    mtu: usize,
    /// smoltcp's segments may exceed the MTU: the tap splits them.
    offload: bool,
    /// UDP datagrams may go as trains: the tap cuts them.
    split_udp: bool,
    mac: EthernetAddress,
    caps: DeviceCapabilities,
    iface: Interface,
    /// An empty set for what smoltcp answers without a socket of ours
    /// (ARP, RST to a segment of no flow); each TCP flow has its own set.
    sockets: SocketSet<'static>,
    dhcp: DhcpServer,
    flows: FlowTable,
    forwards: forward::Forwards,
    /// MAC of each guest address we have heard from, for frames we
    /// originate (forwarded connections); `last_guest` spares the map a
    /// write per frame.
    guest_macs: HashMap<IpAddr, EthernetAddress>,
    last_guest: Option<(IpAddr, EthernetAddress)>,
    host: H,
    tcp_buffer: usize,
    udp_idle_timeout: Duration,
    limits: Limits,
    carry: Carry,
    ping_denied_logged: bool,
    stats: Stats,
    next_sweep: Instant,
    /// Reused buffer for every frame the engine or smoltcp sends; it
    /// grows to the largest frame sent so far, so an idle instance keeps
    /// no 64 KiB of it.
    tx: Vec<u8>,
    /// Reused buffer for datagrams read from host sockets, mapped so that
    /// only the pages the largest datagram so far reached are resident.
    scratch: Pages,
    /// Datagrams read from a host socket in one call.
    dgrams: DgramBatch,
    /// Reused buffer for the datagrams of a guest's UDP train.
    train_buf: Vec<u8>,
    /// The guest's datagrams until the next poll.
    outbox: udp::Outbox,
    /// Queries to the DNS address still waiting for the host's resolver.
    dns: dns::DnsWatch,
    /// The flow being worked on, for `guarded` to drop should the work
    /// panic.
    current: Option<FlowId>,
    defect_log: throttle::Throttle,
}

impl<H: Host> Engine<H> {
    pub fn new(cfg: &EngineConfig, now: Instant, host: H) -> Self {
        let mut plan = cfg.plan.clone();
        let mac = EthernetAddress(plan.mac);
        let mtu = cfg.mtu.max(MIN_MTU);
        if mtu != cfg.mtu {
            log::warn!("MTU {} is below IPv4's minimum; using {mtu}", cfg.mtu);
        }
        // IPv6 needs links of 1280 bytes; Linux turns it off on a smaller
        // MTU, and so do we (found by the frames fuzzer: neighbour
        // solicitations larger than the MTU).
        if plan.v6.is_some() && mtu < IPV6_MIN_MTU {
            log::warn!("MTU {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}; IPv6 stays off");
            plan.v6 = None;
            plan.maps.retain(|m| m.addr.is_ipv4());
        }
        let caps = device::capabilities(mtu, cfg.verify_checksums, cfg.offload);
        let mut tx = Vec::new();

        let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ethernet(mac));
        iface_cfg.random_seed = cfg.seed;
        let mut sink = Vec::new();
        let mut dev = SmolDevice {
            rx: None,
            tx: &mut tx,
            sink: &mut sink,
            caps: &caps,
        };
        let mut iface = Interface::new(iface_cfg, &mut dev, now);
        iface.update_ip_addrs(|addrs| {
            // The addresses smoltcp answers ARP and TCP for: the gateway
            // and every mapped address. Capacity is set by the
            // iface-max-addr-count feature (8).
            let gateways = [
                Some(plan.v4.gateway.into()),
                plan.v6.map(|l| l.gateway.into()),
            ];
            let mapped = plan.maps.iter().map(|m| Some(m.addr));
            for addr in gateways.into_iter().chain(mapped).flatten() {
                let prefix_len = match addr {
                    IpAddr::V4(a) if plan.v4.contains(a) => plan.v4.prefix_len,
                    IpAddr::V4(_) => 32,
                    IpAddr::V6(_) => 64,
                };
                let cidr = IpCidr::new(addr.into(), prefix_len);
                if !addrs.contains(&cidr) && addrs.push(cidr).is_err() {
                    log::warn!("more virtual addresses than smoltcp holds; {addr} is left out");
                }
            }
        });
        // Any-IP: smoltcp accepts TCP for every destination routed through
        // one of its own addresses, so a flow to any address can terminate
        // here and be proxied.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(plan.v4.gateway);
        if let Some(l6) = plan.v6 {
            let _ = iface.routes_mut().add_default_ipv6_route(l6.gateway);
            if let Some(guest) = l6.guest {
                // The guest may be off every prefix of smoltcp's own
                // addresses (a host whose gateway is link-local, a /128):
                // it is still a neighbour on the tap.
                let host_route = IfaceRoute {
                    cidr: IpCidr::new(guest.into(), 128),
                    via_router: guest.into(),
                    preferred_until: None,
                    expires_at: None,
                };
                iface.routes_mut().update(|routes| {
                    if routes.push(host_route).is_err() {
                        log::warn!("more routes than smoltcp holds; {guest} may be unreachable");
                    }
                });
            }
        }

        Engine {
            dhcp: DhcpServer::new(plan.v4),
            next_ra: plan
                .v6
                .filter(|l| l.router_adverts)
                .map(|_| now + Duration::from_secs(1)),
            guest_v6: plan.v6.and_then(|l| l.guest),
            plan,
            frags: frag::Reassembly::default(),
            frag_id: 0,
            mtu,
            offload: cfg.offload,
            split_udp: cfg.split_udp,
            mac,
            caps,
            iface,
            sockets: SocketSet::new(Vec::new()),
            flows: FlowTable::default(),
            forwards: forward::Forwards::default(),
            guest_macs: HashMap::new(),
            last_guest: None,
            host,
            tcp_buffer: cfg.tcp_buffer,
            udp_idle_timeout: cfg.udp_idle_timeout,
            limits: cfg.limits,
            carry: cfg.carry,
            ping_denied_logged: false,
            stats: Stats::default(),
            next_sweep: now + SWEEP_INTERVAL,
            tx,
            scratch: Pages::zeroed(MAX_DATAGRAM_READ),
            dgrams: DgramBatch::default(),
            train_buf: Vec::new(),
            outbox: udp::Outbox::default(),
            dns: dns::DnsWatch::default(),
            current: None,
            defect_log: throttle::Throttle::default(),
        }
    }

    /// The address plan the engine serves.
    pub fn plan(&self) -> &AddressPlan {
        &self.plan
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Live flows by protocol: (TCP, of which still connecting, UDP, ping).
    pub fn flow_counts(&self) -> (usize, usize, usize, usize) {
        self.flows.counts()
    }

    /// Handle one read from the tap: a frame behind a virtio-net header
    /// of `header_len` bytes (0 on a tap without one). What the header
    /// says needs little action: a large TCP segment is taken whole, a
    /// UDP train is cut into its datagrams, and a partial checksum is not
    /// checked (guest frames never are). The event loop and the `frames`
    /// fuzz target both come in here, so a read is fuzzed as it is read.
    pub fn handle_tap_read<S: FrameSink>(
        &mut self,
        now: Instant,
        read: &[u8],
        header_len: usize,
        sink: &mut S,
    ) {
        match (
            crate::vnet::frame_of(read, header_len),
            crate::vnet::udp_train_size(read, header_len),
        ) {
            (Some(frame), Some(size)) => self.handle_udp_train(now, frame, size, sink),
            (Some(frame), None) => self.handle_frame(now, frame, sink),
            (None, _) => {}
        }
    }

    /// Handle one frame from the guest.
    pub fn handle_frame<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        self.stats.frames_from_guest += 1;
        self.guarded(now, |e| e.process_ethernet(now, frame, sink));
    }

    /// Run one entry point's work so that a panic in it costs at most
    /// the flow it was working on, not every flow of the container.
    ///
    /// A panic is a defect, never the answer to bad input: every length
    /// from the guest is checked before use, and the fuzz targets hold
    /// that. But one missed case must not end netferry, so the unwinding
    /// stops here: the frame or event is dropped, the flow that was being
    /// served (if any: `current`) is closed with a reset, a line is
    /// logged (throttled: a guest that trips the defect on every frame
    /// cannot flood the log) and counted in `Stats::defects`. Listeners
    /// stay, since they belong to the API's forwards, not to one flow.
    fn guarded(&mut self, now: Instant, work: impl FnOnce(&mut Self)) {
        self.current = None;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self)));
        let flow = self.current.take();
        if outcome.is_ok() {
            return;
        }
        self.stats.defects += 1;
        let flow = flow.filter(|&id| {
            self.flows
                .kind(id)
                .is_some_and(|k| k != flows::Kind::Listener)
        });
        if let Some(held) = self.defect_log.allow(now) {
            log::error!(
                "a defect in netferry (a panic, reported above) {}; netferry goes on{}",
                if flow.is_some() {
                    "closed the flow it hit"
                } else {
                    "dropped what it was handling"
                },
                throttle::held_note(held)
            );
        }
        if let Some(id) = flow {
            self.remove_flow(id, true);
        }
    }

    /// Handle a train of UDP datagrams the guest's kernel sent as one
    /// frame (UDP segmentation offload: each `size` bytes of payload is a
    /// datagram). It is cut into the frames the kernel would otherwise
    /// have sent, each handled as such; those of one flow then leave
    /// together in the flow's next host send.
    pub fn handle_udp_train<S: FrameSink>(
        &mut self,
        now: Instant,
        frame: &[u8],
        size: usize,
        sink: &mut S,
    ) {
        self.stats.frames_from_guest += 1;
        let mut buf = std::mem::take(&mut self.train_buf);
        let cut = crate::vnet::cut_udp_train(frame, size, &mut buf, |datagram| {
            self.guarded(now, |e| e.process_ethernet(now, datagram, sink))
        });
        self.train_buf = buf;
        if let Err(TooManySegments(n)) = cut {
            self.stats.frames_dropped += 1;
            log::debug!("dropping a UDP train of {n} datagrams of {size} bytes: too many");
        }
    }

    fn process_ethernet<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.stats.frames_dropped += 1;
            log::trace!("dropping a runt frame of {} bytes", frame.len());
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => match self.arp_answer(eth.payload()) {
                ArpAnswer::Smoltcp => self.feed_smoltcp(now, frame, sink),
                ArpAnswer::Ours(request) => self.answer_arp(&request, sink),
                ArpAnswer::None => {}
            },
            EthernetProtocol::Ipv4 => self.process_ipv4(now, frame, sink),
            EthernetProtocol::Ipv6 => self.process_ipv6(now, frame, sink),
            other => log::trace!("dropping an ethertype {other} frame"),
        }
    }

    /// Who answers an ARP message: smoltcp its own addresses' requests
    /// (the gateway's and the mapped ones; with any-IP on it would claim
    /// every address otherwise) and the replies to its own requests; the
    /// engine, where the guest's subnets are open (pasta's model, the
    /// host's own subnets), every other request but for the guest's own
    /// address, since the guest reaches its neighbours through netferry.
    fn arp_answer(&self, payload: &[u8]) -> ArpAnswer {
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            return ArpAnswer::None;
        };
        match repr {
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                target_protocol_addr: target,
                source_protocol_addr: source,
                ..
            } => {
                if self.is_virtual(target.into()) || target == self.plan.v4.gateway {
                    ArpAnswer::Smoltcp
                } else if !self.plan.closed_subnets
                    && target != self.plan.v4.guest
                    && target != source
                    && self.plan.v4.contains(target)
                {
                    ArpAnswer::Ours(repr)
                } else {
                    ArpAnswer::None
                }
            }
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                ..
            } => ArpAnswer::Smoltcp,
            _ => ArpAnswer::None,
        }
    }

    /// Reply to the guest's ARP request for a neighbour with our MAC.
    fn answer_arp<S: FrameSink>(&mut self, request: &ArpRepr, sink: &mut S) {
        let ArpRepr::EthernetIpv4 {
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = *request
        else {
            return;
        };
        if !source_hardware_addr.is_unicast() {
            return;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let eth = EthernetRepr {
            src_addr: self.mac,
            dst_addr: source_hardware_addr,
            ethertype: EthernetProtocol::Arp,
        };
        let len = eth.buffer_len() + reply.buffer_len();
        if self.tx.len() < len {
            self.tx.resize(len, 0);
        }
        let buf = &mut self.tx[..len];
        let mut frame = EthernetFrame::new_unchecked(&mut *buf);
        eth.emit(&mut frame);
        reply.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        sink.send_frame(buf);
    }

    /// Remember the guest's MAC for an address it sends from.
    fn learn_guest(&mut self, addr: IpAddr, mac: EthernetAddress) {
        if self.last_guest == Some((addr, mac)) || !mac.is_unicast() {
            return;
        }
        self.last_guest = Some((addr, mac));
        if self.guest_macs.len() >= GUEST_MAC_LIMIT {
            // A guest spraying source addresses must not grow this
            // without bound; real guests have a handful.
            self.guest_macs.clear();
        }
        self.guest_macs.insert(addr, mac);
    }

    /// The guest's MAC for frames we originate toward `ip`; broadcast when
    /// we have not heard from it yet (the guest still takes the packet,
    /// since it is addressed to its IP).
    fn guest_mac_for(&self, ip: IpAddr) -> EthernetAddress {
        self.guest_macs
            .get(&ip)
            .copied()
            .unwrap_or(EthernetAddress::BROADCAST)
    }

    /// A frame of TCP flow `id`, into its own socket set.
    fn feed_flow<S: FrameSink>(&mut self, now: Instant, id: FlowId, frame: &[u8], sink: &mut S) {
        self.current = Some(id);
        let Some(flow) = self.flows.tcp_mut(id) else {
            return;
        };
        let mut dev = SmolDevice {
            rx: Some(frame),
            tx: &mut self.tx,
            sink,
            caps: &self.caps,
        };
        self.iface.poll_ingress_single(now, &mut dev, &mut flow.set);
    }

    /// Let flow `id`'s socket send what it has, then note its next
    /// deadline. Only flows that were served or whose deadline came are
    /// polled, so idle flows cost nothing per packet.
    fn flow_egress<S: FrameSink>(&mut self, now: Instant, id: FlowId, sink: &mut S) {
        let Some(flow) = self.flows.tcp_mut(id) else {
            return;
        };
        if flow.set.iter().next().is_none() {
            return;
        }
        let mut dev = SmolDevice {
            rx: None,
            tx: &mut self.tx,
            sink,
            caps: &self.caps,
        };
        // Each call sends at most one segment per socket.
        for _ in 0..EGRESS_BURST {
            if self.iface.poll_egress(now, &mut dev, &mut flow.set) == PollResult::None {
                break;
            }
        }
        let at = self.iface.poll_at(now, &flow.set);
        self.flows.schedule(id, at);
    }

    /// A frame smoltcp answers on its own (ARP, neighbour advertisements,
    /// RST for a segment of no flow), against the shared empty set.
    fn feed_smoltcp<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let mut dev = SmolDevice {
            rx: Some(frame),
            tx: &mut self.tx,
            sink,
            caps: &self.caps,
        };
        self.iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// Host socket `id` is ready. The work happens in the next
    /// `poll_transmit`.
    pub fn handle_host_event(&mut self, id: FlowId, ready: Readiness) {
        self.flows.mark_ready(id, ready);
    }

    /// Move data between flows and their host sockets, let smoltcp send
    /// what it has queued and run its timers, and retire finished flows.
    /// Call after each batch of frames and host events, and when
    /// `poll_timeout` comes due.
    pub fn poll_transmit<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        self.guarded(now, |e| e.poll_guarded(now, sink));
    }

    fn poll_guarded<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        self.flush_udp(sink);
        self.flows.requeue_carried();
        self.flows.fire_timers(now);
        self.service_flows(now, sink);
        let mut dev = SmolDevice {
            rx: None,
            tx: &mut self.tx,
            sink,
            caps: &self.caps,
        };
        self.iface.poll(now, &mut dev, &mut self.sockets);
        self.reap_tcp();
        self.answer_unanswered_dns(now, sink);
        self.advertise_if_due(now, sink);
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            self.sweep(now);
        }
    }

    /// How long until `poll_transmit` must run again: zero when work is
    /// waiting (a flow whose batch was cut short, or a smoltcp deadline
    /// that has passed), `None` when nothing is due until the next event.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        if self.flows.has_carried() {
            return Some(Duration::ZERO);
        }
        let smol = self.iface.poll_delay(now, &self.sockets);
        let flows = self
            .flows
            .next_timer()
            .map(|at| if at > now { at - now } else { Duration::ZERO });
        let busy =
            !self.flows.is_empty() || self.forwards.has_udp_clients() || !self.frags.is_empty();
        let sweep = busy.then(|| {
            if self.next_sweep > now {
                self.next_sweep - now
            } else {
                Duration::ZERO
            }
        });
        let ra = self
            .next_ra
            .map(|at| if at > now { at - now } else { Duration::ZERO });
        let dns = self
            .dns
            .next_deadline()
            .map(|at| if at > now { at - now } else { Duration::ZERO });
        [smol, flows, sweep, ra, dns].into_iter().flatten().min()
    }

    /// Serve every flow that had a frame or a host event since last time.
    fn service_flows<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        while let Some(id) = self.flows.next_dirty() {
            self.current = Some(id);
            let more = match self.flows.kind(id) {
                Some(flows::Kind::Tcp) => {
                    self.pump_tcp(now, id, sink);
                    self.flow_egress(now, id, sink);
                    false
                }
                Some(flows::Kind::Udp) | Some(flows::Kind::Ping) => self.pump_dgram(now, id, sink),
                Some(flows::Kind::Listener) => self.pump_listener(now, id, sink),
                None => false,
            };
            if more {
                // Its batch is used up: the rest waits for the next poll,
                // so one busy socket cannot starve the tap or the others.
                self.flows.carry(id);
            }
        }
        self.current = None;
    }

    /// Retire idle datagram flows and TCP flows smoltcp has finished with.
    fn sweep(&mut self, now: Instant) {
        for id in self.flows.expired(now, self.udp_idle_timeout) {
            log::debug!("closing an idle datagram flow");
            self.remove_flow(id, false);
        }
        self.expire_forwarded_udp(now);
        self.frags.expire(now);
        self.flows.mark_all_tcp_for_reaping();
        self.flows.retry_listeners();
    }

    /// Take a flow out: free its smoltcp socket and close its host socket
    /// (with RST for a TCP stream when `reset`).
    fn remove_flow(&mut self, id: FlowId, reset: bool) {
        // Its datagrams not sent yet go with it: the id may be reused at
        // once, by a flow to somewhere else.
        self.outbox.forget(id);
        self.dns.flow_closed(id);
        // A TCP flow's socket set goes with it.
        self.flows.remove(id);
        self.host.close(id, reset);
    }
}
