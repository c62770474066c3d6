//! The `frames` target: a guest's frames, the host's events and a clock,
//! interleaved as the input says, into an engine on the simulated host.
//!
//! The input is a configuration byte (the MTU) and then actions, each a tag
//! byte and its fields, read with `arbitrary`'s `Unstructured` (integers
//! little-endian, missing bytes read as zero). [`Action::encode`] writes
//! the same format, so seeds are built from ordinary frames. Besides
//! frames taken byte for byte, actions make large ones from a few bytes: a
//! frame padded with a pattern to 64 KiB, a guest datagram as a train of
//! fragments ([`FragTrain`]), and reads from the tap with a virtio-net
//! header of any content in front, through the event loop's own dispatch
//! (`Engine::handle_tap_read`). After every action the engine is polled
//! until it is quiet, and everything it wrote goes through
//! [`FrameCheck`] with the header the tap would get; no guest train may
//! become more than [`GUEST_TRAIN_LIMIT`] datagrams, the flow table must
//! stay under its caps and every host socket must belong to a flow.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Unstructured;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv6Packet, IpAddress,
    IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};

use super::check::{FrameCheck, TapWrites};
use super::trains::{FragTrain, pattern};
use crate::engine::{Engine, EngineConfig, ForwardSpec, Limits, MIN_MTU, Proto, UDP_FLOW_LIMIT};
use crate::host::SimHost;
use crate::host::sim::Outcome;
use crate::slirp4netns::{Network, Network6};
use crate::vnet;

/// Actions run from one input at most; longer inputs are cut.
const MAX_STEPS: usize = 256;
/// TCP segments of the engine's remembered for `Action::Answer`.
const MAX_SEGMENTS: usize = 8;
/// The guest's initial sequence number when it answers a SYN.
const GUEST_ISN: u32 = 1000;
/// Polls at one instant before a still-zero `poll_timeout` counts as a spin.
const MAX_POLLS: usize = 64;
/// Caps set small, so a short input can reach them.
const LIMITS: Limits = Limits {
    tcp_flows: 8,
    pending_connects: 4,
};
/// Host sockets open at once before opens fail with EMFILE.
const FD_LIMIT: usize = 24;
/// MTUs the configuration byte picks from; past the table, the next two
/// bytes give any MTU the command line accepts. With its top bit set, the
/// byte picks from the table with the tap's segmentation offload on.
const MTUS: [usize; 6] = [1500, 1280, 576, 65520, 68, 9000];
/// The MAC the harness puts on frames it frames itself.
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
/// Destinations whose host connects end this way (others are accepted).
const NEVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const REFUSE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// The most datagrams one guest train (a UDP_SEGMENT send, cut by
/// netferry) may become: the kernel's own senders stop at 64 or 128
/// (`UDP_MAX_SEGMENTS`), and so does netferry (`vnet::MAX_TRAIN_SEGMENTS`).
pub const GUEST_TRAIN_LIMIT: u64 = crate::vnet::MAX_TRAIN_SEGMENTS as u64;
/// The longest read from the tap: the event loop's buffer
/// (`RX_BUFFER_LEN`, a 64 KiB segment plus headers).
const MAX_TAP_READ: usize = 65536 + 128;
/// Virtio-net header lengths a tap may have: none, the legacy 10 bytes,
/// virtio 1.0's 12.
const HEADER_LENS: [usize; 3] = [0, vnet::HEADER_LEN, 12];
/// Clients of the forwards, by the index the input gives.
const CLIENTS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
];

/// How a frame action's bytes become a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The bytes are the whole Ethernet frame.
    Raw,
    /// The bytes are an IPv4 packet; the harness adds the Ethernet header.
    Ipv4,
    /// The bytes are an IPv6 packet.
    Ipv6,
}

/// What the host does to one of its sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    Connect(Outcome),
    /// The peer of a stream sends these bytes.
    Send(Vec<u8>),
    /// The peer sends this many bytes of a pattern (large transfers from
    /// a small input).
    SendPattern(u16),
    Fin,
    Reset,
    /// The peer reads up to this many bytes.
    Take(u16),
    /// A datagram arrives on a UDP or ping socket.
    Reply(Vec<u8>),
    ReplyPattern(u16),
    /// ICMP port unreachable came back for a datagram.
    Refused,
}

/// One action of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A frame from the guest; with `fix`, the harness first sets its IP
    /// lengths and checksums right, so mutations get past verification.
    /// A `train` other than 0 (up to 63) makes it a UDP train, as the
    /// guest's kernel sends with segmentation offload, of datagrams of
    /// `train × 24` bytes.
    Frame {
        framing: Framing,
        broadcast: bool,
        fix: bool,
        train: u8,
        bytes: Vec<u8>,
    },
    /// The clock moves on.
    Millis(u16),
    Secs(u8),
    /// The clock moves to the engine's next deadline.
    Wake,
    /// The host acts on its `index`th open socket (modulo their number).
    Host {
        index: u8,
        event: HostEvent,
    },
    /// The guest answers the `segment`th last TCP segment the engine sent
    /// (of those remembered): ports swapped, its ACK number as sequence
    /// number (1000 for a bare SYN's answer), its end as acknowledgment,
    /// with these TCP flags, window and data. So a run gets past the
    /// handshake without guessing sequence numbers.
    Answer {
        segment: u8,
        flags: u8,
        window: u16,
        data: Vec<u8>,
    },
    /// A client reaches the `forward`th forward (TCP connect, or a
    /// datagram for a UDP one).
    Client {
        forward: u8,
        client: u8,
        port: u16,
        data: Vec<u8>,
    },
    /// As `Frame`, its bytes `head` and then `pad` bytes of a pattern:
    /// frames of up to 64 KiB from a short input.
    Big {
        framing: Framing,
        broadcast: bool,
        fix: bool,
        train: u8,
        head: Vec<u8>,
        pad: u16,
    },
    /// One datagram of the guest as a train of fragments, all in one
    /// batch.
    Fragments(FragTrain),
    /// A read from the tap: a virtio-net header of `HEADER_LENS[header]`
    /// bytes (`vnet` and zeros) before a `Big` action's frame, through the
    /// event loop's dispatch.
    TapRead {
        header: u8,
        vnet: [u8; vnet::HEADER_LEN],
        framing: Framing,
        fix: bool,
        head: Vec<u8>,
        pad: u16,
    },
    /// As `Answer` with `len` bytes of a pattern, read from the tap
    /// behind a header as `TapRead`: a large TCP segment of a guest
    /// with segmentation offload.
    BigAnswer {
        segment: u8,
        flags: u8,
        window: u16,
        len: u16,
        header: u8,
        vnet: [u8; vnet::HEADER_LEN],
    },
}

/// Action kinds: frames (three framings), clock (three), host, client,
/// answer, then the large ones.
const STEP_KINDS: u8 = 13;
const FRAMINGS: [Framing; 3] = [Framing::Raw, Framing::Ipv4, Framing::Ipv6];

fn data(u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    let len = usize::from(u.arbitrary::<u16>()?);
    let len = len.min(u.len());
    Ok(u.bytes(len)?.to_vec())
}

fn put_data(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl Action {
    pub fn decode(u: &mut Unstructured) -> arbitrary::Result<Action> {
        let tag = u.arbitrary::<u8>()?;
        let kind = tag % STEP_KINDS;
        Ok(match kind {
            0..=2 => {
                let framing = FRAMINGS[usize::from(kind)];
                let flags = u.arbitrary::<u8>()?;
                Action::Frame {
                    framing,
                    fix: flags & 1 != 0,
                    broadcast: flags & 2 != 0,
                    train: flags >> 2,
                    bytes: data(u)?,
                }
            }
            3 => Action::Millis(u.arbitrary()?),
            4 => Action::Secs(u.arbitrary()?),
            5 => Action::Wake,
            6 => {
                let index = u.arbitrary()?;
                let kind = u.arbitrary::<u8>()?;
                let event = match kind % 11 {
                    0 => HostEvent::Connect(Outcome::Accept),
                    1 => HostEvent::Connect(Outcome::Refuse),
                    2 => HostEvent::Connect(Outcome::Unreachable),
                    3 => HostEvent::Send(data(u)?),
                    4 => HostEvent::SendPattern(u.arbitrary()?),
                    5 => HostEvent::Fin,
                    6 => HostEvent::Reset,
                    7 => HostEvent::Take(u.arbitrary()?),
                    8 => HostEvent::Reply(data(u)?),
                    9 => HostEvent::ReplyPattern(u.arbitrary()?),
                    _ => HostEvent::Refused,
                };
                Action::Host { index, event }
            }
            7 => Action::Client {
                forward: u.arbitrary()?,
                client: u.arbitrary()?,
                port: u.arbitrary()?,
                data: data(u)?,
            },
            8 => Action::Answer {
                segment: u.arbitrary()?,
                flags: u.arbitrary()?,
                window: u.arbitrary()?,
                data: data(u)?,
            },
            9 => {
                let framing = FRAMINGS[usize::from(u.arbitrary::<u8>()? % 3)];
                let flags = u.arbitrary::<u8>()?;
                Action::Big {
                    framing,
                    fix: flags & 1 != 0,
                    broadcast: flags & 2 != 0,
                    train: flags >> 2,
                    head: data(u)?,
                    pad: u.arbitrary()?,
                }
            }
            10 => Action::Fragments(FragTrain::decode(u)?),
            11 => {
                let header = u.arbitrary()?;
                let vnet = u.arbitrary()?;
                let flags = u.arbitrary::<u8>()?;
                Action::TapRead {
                    header,
                    vnet,
                    framing: FRAMINGS[usize::from(flags & 3) % FRAMINGS.len()],
                    fix: flags & 4 != 0,
                    head: data(u)?,
                    pad: u.arbitrary()?,
                }
            }
            _ => Action::BigAnswer {
                segment: u.arbitrary()?,
                flags: u.arbitrary()?,
                window: u.arbitrary()?,
                len: u.arbitrary()?,
                header: u.arbitrary()?,
                vnet: u.arbitrary()?,
            },
        })
    }

    /// The bytes `decode` reads back as this action.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Action::Frame {
                framing,
                broadcast,
                fix,
                train,
                bytes,
            } => {
                out.push(*framing as u8);
                out.push(u8::from(*fix) | u8::from(*broadcast) << 1 | (train & 63) << 2);
                put_data(out, bytes);
            }
            Action::Millis(ms) => {
                out.push(3);
                out.extend_from_slice(&ms.to_le_bytes());
            }
            Action::Secs(s) => out.extend_from_slice(&[4, *s]),
            Action::Wake => out.push(5),
            Action::Host { index, event } => {
                out.extend_from_slice(&[6, *index]);
                match event {
                    HostEvent::Connect(o) => out.push(match o {
                        Outcome::Refuse => 1,
                        Outcome::Unreachable => 2,
                        _ => 0,
                    }),
                    HostEvent::Send(b) => {
                        out.push(3);
                        put_data(out, b);
                    }
                    HostEvent::SendPattern(n) => {
                        out.push(4);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                    HostEvent::Fin => out.push(5),
                    HostEvent::Reset => out.push(6),
                    HostEvent::Take(n) => {
                        out.push(7);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                    HostEvent::Reply(b) => {
                        out.push(8);
                        put_data(out, b);
                    }
                    HostEvent::ReplyPattern(n) => {
                        out.push(9);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                    HostEvent::Refused => out.push(10),
                }
            }
            Action::Client {
                forward,
                client,
                port,
                data,
            } => {
                out.extend_from_slice(&[7, *forward, *client]);
                out.extend_from_slice(&port.to_le_bytes());
                put_data(out, data);
            }
            Action::Answer {
                segment,
                flags,
                window,
                data,
            } => {
                out.extend_from_slice(&[8, *segment, *flags]);
                out.extend_from_slice(&window.to_le_bytes());
                put_data(out, data);
            }
            Action::Big {
                framing,
                broadcast,
                fix,
                train,
                head,
                pad,
            } => {
                out.extend_from_slice(&[9, *framing as u8]);
                out.push(u8::from(*fix) | u8::from(*broadcast) << 1 | (train & 63) << 2);
                put_data(out, head);
                out.extend_from_slice(&pad.to_le_bytes());
            }
            Action::Fragments(train) => {
                out.push(10);
                train.encode(out);
            }
            Action::TapRead {
                header,
                vnet,
                framing,
                fix,
                head,
                pad,
            } => {
                out.extend_from_slice(&[11, *header]);
                out.extend_from_slice(vnet);
                out.push(*framing as u8 | u8::from(*fix) << 2);
                put_data(out, head);
                out.extend_from_slice(&pad.to_le_bytes());
            }
            Action::BigAnswer {
                segment,
                flags,
                window,
                len,
                header,
                vnet,
            } => {
                out.extend_from_slice(&[12, *segment, *flags]);
                out.extend_from_slice(&window.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.push(*header);
                out.extend_from_slice(vnet);
            }
        }
    }
}

/// A whole input for `frames`: the MTU byte, then the actions.
pub fn encode(mtu_choice: u8, actions: &[Action]) -> Vec<u8> {
    let mut out = vec![mtu_choice];
    for action in actions {
        action.encode(&mut out);
    }
    out
}

/// The engine, its clock and the checker, as one run drives them.
struct Run {
    engine: Engine<SimHost>,
    now: Instant,
    check: FrameCheck,
    mtu: usize,
    offload: bool,
    /// The last TCP segments the engine sent, newest last.
    segments: Vec<Segment>,
}

/// What the guest needs of a TCP segment to answer it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    src: IpAddress,
    dst: IpAddress,
    src_port: u16,
    dst_port: u16,
    /// The sequence number just past it.
    end: u32,
    /// Its acknowledgment number, if it has one.
    ack: Option<u32>,
}

/// Run one input; panics with the broken invariant.
pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let Ok(choice) = u.arbitrary::<u8>() else {
        return;
    };
    let offload = choice & 0x80 != 0 && usize::from(choice & 0x7f) < MTUS.len();
    let choice = if offload { choice & 0x7f } else { choice };
    let mtu = match MTUS.get(usize::from(choice)) {
        Some(&mtu) => mtu,
        None => usize::from(
            u.int_in_range(1..=crate::config::MAX_MTU as u16)
                .unwrap_or(1500),
        ),
    };
    let mut run = Run::new(mtu, offload);
    for _ in 0..MAX_STEPS {
        let Ok(action) = Action::decode(&mut u) else {
            break;
        };
        run.act(action);
        if u.is_empty() {
            break;
        }
    }
}

impl Run {
    fn new(mtu: usize, offload: bool) -> Run {
        let net = Network::default();
        let plan = crate::slirp4netns::slirp_plan(&net, Some(&Network6::default()), true, true);
        let mut cfg = EngineConfig::new(plan, mtu);
        cfg.offload = offload;
        // Trains are cut by the Vec sink as the kernel would, so the
        // frame check sees each datagram.
        cfg.split_udp = offload;
        cfg.verify_checksums = true;
        cfg.seed = 1;
        cfg.tcp_buffer = crate::config::MIN_TCP_BUFFER;
        cfg.limits = LIMITS;
        let mut host = SimHost::new(1);
        host.nameserver = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)));
        host.fd_limit = FD_LIMIT;
        host.set_outcome(NEVER.into(), Outcome::NeverAnswer);
        host.set_outcome(REFUSE.into(), Outcome::Refuse);
        host.set_outcome(UNREACHABLE.into(), Outcome::Unreachable);
        let now = Instant::from_millis(0);
        let mut engine = Engine::new(&cfg, now, host);
        let guest = SocketAddr::new(net.guest.into(), 80);
        for (proto, ip, port) in [
            (Proto::Tcp, IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            (Proto::Udp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5353),
            (Proto::Tcp, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8443),
        ] {
            let host = SocketAddr::new(ip, port);
            let spec = ForwardSpec { proto, host, guest };
            if let Err(e) = engine.add_forward(spec) {
                panic!("cannot add forward {host} on the simulated host: {e}");
            }
        }
        Run {
            engine,
            now,
            // The engine raises an MTU below IPv4's minimum to it.
            check: FrameCheck::new(mtu.max(MIN_MTU), EthernetAddress(net.gateway_mac())),
            mtu,
            offload,
            segments: Vec::new(),
        }
    }

    fn act(&mut self, action: Action) {
        let mut out = TapWrites::new(self.offload, self.mtu);
        let from_guest = self.engine.stats().datagrams_from_guest;
        match action {
            Action::Frame {
                framing,
                broadcast,
                fix,
                train,
                bytes,
            } => {
                self.guest_frame(framing, broadcast, fix, train, bytes, &mut out);
            }
            Action::Big {
                framing,
                broadcast,
                fix,
                train,
                mut head,
                pad,
            } => {
                head.extend_from_slice(&pattern(pad.into()));
                self.guest_frame(framing, broadcast, fix, train, head, &mut out);
            }
            Action::Fragments(train) => {
                let net6 = Network6::default();
                let gateway = EthernetAddress(self.engine.plan().mac);
                let net = Network::default();
                for frame in train.frames(&net, &net6, GUEST_MAC, gateway) {
                    self.engine.handle_frame(self.now, &frame, &mut out);
                }
            }
            Action::TapRead {
                header,
                vnet,
                framing,
                fix,
                mut head,
                pad,
            } => {
                head.extend_from_slice(&pattern(pad.into()));
                let mut frame = self.frame(framing, false, head);
                if fix {
                    fix_frame(&mut frame);
                }
                self.tap_read(header, vnet, &frame, &mut out);
            }
            Action::BigAnswer {
                segment,
                flags,
                window,
                len,
                header,
                vnet,
            } => {
                if let Some(frame) = self.answer(segment, flags, window, &pattern(len.into())) {
                    self.tap_read(header, vnet, &frame, &mut out);
                }
            }
            Action::Millis(ms) => self.now += Duration::from_millis(u64::from(ms)),
            Action::Secs(s) => self.now += Duration::from_secs(u64::from(s)),
            Action::Wake => {
                let wait = self.engine.poll_timeout(self.now);
                let wait = wait.unwrap_or(Duration::from_secs(600));
                self.now += wait.max(Duration::from_millis(1));
            }
            Action::Host { index, event } => self.host_event(index, event),
            Action::Answer {
                segment,
                flags,
                window,
                data,
            } => {
                if let Some(frame) = self.answer(segment, flags, window, &data) {
                    self.engine.handle_frame(self.now, &frame, &mut out);
                }
            }
            Action::Client {
                forward,
                client,
                port,
                data,
            } => {
                let ids: Vec<_> = self.engine.host().listener_ids().collect();
                if !ids.is_empty() {
                    let id = ids[usize::from(forward) % ids.len()];
                    let ip = CLIENTS[usize::from(client) % CLIENTS.len()];
                    let from = SocketAddr::new(ip, port);
                    let host = self.engine.host_mut();
                    match host.listener(id).map(|l| l.proto) {
                        Some(Proto::Tcp) => host.client_connect(id, from),
                        _ => host.client_datagram(id, from, &data),
                    }
                }
            }
        }
        let datagrams = self.engine.stats().datagrams_from_guest - from_guest;
        assert!(
            datagrams <= GUEST_TRAIN_LIMIT,
            "one action of the guest became {datagrams} datagrams (at most {GUEST_TRAIN_LIMIT})"
        );
        self.settle(&mut out);
    }

    /// A frame of the guest's, framed and fixed as the action says; a train
    /// of datagrams of `train × 24` bytes when `train` is not 0.
    fn guest_frame(
        &mut self,
        framing: Framing,
        broadcast: bool,
        fix: bool,
        train: u8,
        bytes: Vec<u8>,
        out: &mut TapWrites,
    ) {
        let mut frame = self.frame(framing, broadcast, bytes);
        if fix {
            fix_frame(&mut frame);
        }
        match usize::from(train) * 24 {
            0 => self.engine.handle_frame(self.now, &frame, out),
            size => self.engine.handle_udp_train(self.now, &frame, size, out),
        }
    }

    /// `frame` read from the tap behind the header `HEADER_LENS[header]`
    /// long (`vnet`, then zeros), cut to what one read holds.
    fn tap_read(
        &mut self,
        header: u8,
        vnet: [u8; vnet::HEADER_LEN],
        frame: &[u8],
        out: &mut TapWrites,
    ) {
        let header_len = HEADER_LENS[usize::from(header) % HEADER_LENS.len()];
        let mut read = vec![0u8; header_len];
        let n = header_len.min(vnet.len());
        read[..n].copy_from_slice(&vnet[..n]);
        read.extend_from_slice(frame);
        read.truncate(MAX_TAP_READ);
        self.engine
            .handle_tap_read(self.now, &read, header_len, out);
    }

    /// The guest's answer to the `segment`th last TCP segment the engine
    /// sent, checksums fixed; `None` before the engine sent any.
    fn answer(&self, segment: u8, flags: u8, window: u16, data: &[u8]) -> Option<Vec<u8>> {
        if self.segments.is_empty() {
            return None;
        }
        let i = self.segments.len() - 1 - usize::from(segment) % self.segments.len();
        let gateway = EthernetAddress(self.engine.plan().mac);
        let mut frame = answer(&self.segments[i], gateway, flags, window, data);
        fix_frame(&mut frame);
        Some(frame)
    }

    /// Give the frame its Ethernet header, if the action asks for one.
    fn frame(&self, framing: Framing, broadcast: bool, bytes: Vec<u8>) -> Vec<u8> {
        let ethertype = match framing {
            Framing::Raw => return bytes,
            Framing::Ipv4 => EthernetProtocol::Ipv4,
            Framing::Ipv6 => EthernetProtocol::Ipv6,
        };
        let dst = match (broadcast, framing) {
            (false, _) => EthernetAddress(self.engine.plan().mac),
            (true, Framing::Ipv6) => EthernetAddress([0x33, 0x33, 0, 0, 0, 2]),
            (true, _) => EthernetAddress::BROADCAST,
        };
        let mut frame = Vec::with_capacity(14 + bytes.len());
        frame.extend_from_slice(dst.as_bytes());
        frame.extend_from_slice(GUEST_MAC.as_bytes());
        frame.extend_from_slice(&u16::from(ethertype).to_be_bytes());
        frame.extend_from_slice(&bytes);
        frame
    }

    fn host_event(&mut self, index: u8, event: HostEvent) {
        let host = self.engine.host_mut();
        let ids: Vec<_> = host.open_ids().collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[usize::from(index) % ids.len()];
        match event {
            HostEvent::Connect(outcome) => host.finish_connect(id, outcome),
            HostEvent::Send(b) => host.peer_send(id, &b),
            HostEvent::SendPattern(n) => host.peer_send(id, &pattern(n.into())),
            HostEvent::Fin => host.peer_fin(id),
            HostEvent::Reset => host.peer_reset(id),
            HostEvent::Take(n) => {
                host.peer_take(id, usize::from(n));
            }
            HostEvent::Reply(b) => host.dgram_reply(id, &b),
            HostEvent::ReplyPattern(n) => host.dgram_reply(id, &pattern(n.into())),
            HostEvent::Refused => host.dgram_refused(id),
        }
    }

    /// Poll at the current instant until nothing is due, checking all the
    /// engine sent and the state it is left in.
    fn settle(&mut self, out: &mut TapWrites) {
        let now = self.now;
        for _ in 0..MAX_POLLS {
            let host = self.engine.host_mut();
            host.tick(now);
            for (id, ready) in host.take_events() {
                self.engine.handle_host_event(id, ready);
            }
            self.engine.poll_transmit(now, out);
            if let Err(e) = self.check.batch(&out.writes) {
                panic!("at {now} (MTU {}): {e}", self.mtu);
            }
            for w in &out.writes {
                if let Some(seg) = segment(&w.frame) {
                    if self.segments.len() == MAX_SEGMENTS {
                        self.segments.remove(0);
                    }
                    self.segments.push(seg);
                }
            }
            out.writes.clear();
            self.check_tables();
            if self.engine.poll_timeout(now) != Some(Duration::ZERO) {
                return;
            }
        }
        panic!(
            "at {now}: still busy after {MAX_POLLS} polls (poll_timeout {:?})",
            self.engine.poll_timeout(now)
        );
    }

    fn check_tables(&self) {
        // The engine catches a panic so that it costs one flow in
        // production; here every caught one is a finding.
        assert_eq!(
            self.engine.stats().defects,
            0,
            "the engine caught a panic: a defect (its message is above)"
        );
        let (tcp, pending, udp, ping) = self.engine.flow_counts();
        assert!(
            tcp <= LIMITS.tcp_flows,
            "{tcp} TCP flows, cap {}",
            LIMITS.tcp_flows
        );
        assert!(
            pending <= LIMITS.pending_connects && pending <= tcp,
            "{pending} pending connects of {tcp} TCP flows, cap {}",
            LIMITS.pending_connects
        );
        assert!(udp <= UDP_FLOW_LIMIT, "{udp} UDP flows");
        assert!(ping <= UDP_FLOW_LIMIT, "{ping} ping flows");
        let host = self.engine.host();
        let listeners = host.listener_ids().count();
        assert!(
            host.open_count() <= tcp + udp + ping + listeners,
            "{} host sockets open for {tcp} TCP, {udp} UDP, {ping} ping flows and {listeners} listeners",
            host.open_count()
        );
    }
}

/// The TCP segment in a frame the engine sent (already checked).
fn segment(frame: &[u8]) -> Option<Segment> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let (src, dst, payload): (IpAddress, IpAddress, &[u8]) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(payload).ok()?;
    let len = tcp.payload().len() as u32 + u32::from(tcp.syn()) + u32::from(tcp.fin());
    Some(Segment {
        src,
        dst,
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
        end: (tcp.seq_number() + len as usize).0 as u32,
        ack: tcp.ack().then(|| tcp.ack_number().0 as u32),
    })
}

/// The guest's answer to `seg`, checksums still to fix.
fn answer(seg: &Segment, gateway: EthernetAddress, flags: u8, window: u16, data: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + data.len());
    tcp.extend_from_slice(&seg.dst_port.to_be_bytes());
    tcp.extend_from_slice(&seg.src_port.to_be_bytes());
    tcp.extend_from_slice(&seg.ack.unwrap_or(GUEST_ISN).to_be_bytes());
    tcp.extend_from_slice(&seg.end.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags]);
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(data);
    let (ethertype, mut frame) = match (seg.dst, seg.src) {
        (IpAddress::Ipv4(from), IpAddress::Ipv4(to)) => {
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
            ip.extend_from_slice(&from.octets());
            ip.extend_from_slice(&to.octets());
            (EthernetProtocol::Ipv4, ip)
        }
        (IpAddress::Ipv6(from), IpAddress::Ipv6(to)) => {
            let mut ip = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
            ip.extend_from_slice(&from.octets());
            ip.extend_from_slice(&to.octets());
            (EthernetProtocol::Ipv6, ip)
        }
        _ => return Vec::new(),
    };
    frame.extend_from_slice(&tcp);
    let mut out = Vec::with_capacity(14 + frame.len());
    out.extend_from_slice(gateway.as_bytes());
    out.extend_from_slice(GUEST_MAC.as_bytes());
    out.extend_from_slice(&u16::from(ethertype).to_be_bytes());
    out.append(&mut frame);
    out
}

/// Set the IP lengths and the IP and transport checksums of a guest frame
/// as far as its headers parse; leave the rest as it is.
pub fn fix_frame(frame: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(&mut *frame) else {
        return;
    };
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => fix_ipv4(eth.payload_mut()),
        EthernetProtocol::Ipv6 => fix_ipv6(eth.payload_mut()),
        _ => {}
    }
}

fn fix_ipv4(buf: &mut [u8]) {
    let len = buf.len();
    if !(20..=usize::from(u16::MAX)).contains(&len) {
        return;
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut *buf);
    let header = usize::from(ip.header_len());
    if !(20..=len).contains(&header) {
        return;
    }
    ip.set_total_len(len as u16);
    ip.fill_checksum();
    let fragment = ip.more_frags() || ip.frag_offset() != 0;
    let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
    if !fragment {
        fix_transport(proto, src.into(), dst.into(), &mut buf[header..]);
    }
}

fn fix_ipv6(buf: &mut [u8]) {
    let len = buf.len();
    if !(40..=40 + usize::from(u16::MAX)).contains(&len) {
        return;
    }
    let mut ip = Ipv6Packet::new_unchecked(&mut *buf);
    ip.set_payload_len((len - 40) as u16);
    let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
    fix_transport(proto, src.into(), dst.into(), &mut buf[40..]);
}

fn fix_transport(proto: IpProtocol, src: IpAddress, dst: IpAddress, data: &mut [u8]) {
    match proto {
        IpProtocol::Tcp => {
            if let Ok(mut p) = TcpPacket::new_checked(data) {
                p.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Udp if data.len() >= 8 => {
            let len = data.len() as u16;
            let mut p = UdpPacket::new_unchecked(&mut *data);
            p.set_len(len);
            p.fill_checksum(&src, &dst);
        }
        IpProtocol::Icmp => {
            if let Ok(mut p) = Icmpv4Packet::new_checked(data) {
                p.fill_checksum();
            }
        }
        IpProtocol::Icmpv6 => {
            if let (Ok(mut p), IpAddress::Ipv6(s), IpAddress::Ipv6(d)) =
                (Icmpv6Packet::new_checked(data), src, dst)
            {
                p.fill_checksum(&s, &d);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ETHERNET_HEADER_LEN;

    /// Bytes of IPv4 payload per fragment on an MTU of 1500.
    const PIECE: usize = 1480;

    /// A UDP datagram of `payload` bytes (its header included) from the
    /// guest to a remote host, as the IPv4 fragments of an MTU of 1500.
    fn fragments(payload: usize) -> Vec<Vec<u8>> {
        let net = Network::default();
        let mut datagram = pattern(payload);
        datagram[..8].copy_from_slice(&[0x9c, 0x40, 0, 9, 0, 0, 0, 0]);
        datagram[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        datagram
            .chunks(PIECE)
            .enumerate()
            .map(|(i, piece)| {
                let more = (i + 1) * PIECE < payload;
                let mut f = vec![0u8; ETHERNET_HEADER_LEN + 20];
                f[..6].copy_from_slice(&net.gateway_mac());
                f[6..12].copy_from_slice(GUEST_MAC.as_bytes());
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                f.extend_from_slice(piece);
                let mut ip = Ipv4Packet::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]);
                ip.set_version(4);
                ip.set_header_len(20);
                ip.set_total_len((20 + piece.len()) as u16);
                ip.set_ident(0x2222);
                ip.set_more_frags(more);
                ip.set_frag_offset((i * PIECE) as u16);
                ip.set_hop_limit(64);
                ip.set_next_header(IpProtocol::Udp);
                ip.set_src_addr(net.guest);
                ip.set_dst_addr(Ipv4Addr::new(198, 51, 100, 1));
                ip.fill_checksum();
                f
            })
            .collect()
    }

    /// Issue 22: 45 fragments of one datagram whose pieces add up to more
    /// than the 65,515 bytes of payload an IPv4 datagram can carry made
    /// the reassembled header's length overflow, and smoltcp's
    /// `payload_mut()` panicked: with `panic = "abort"`, the container
    /// lost its network. The largest datagram still comes through.
    #[test]
    fn ipv4_fragments_past_the_largest_datagram_are_dropped() {
        let cfg = EngineConfig::new(crate::slirp4netns::default_plan(false), 1500);
        let now = Instant::from_millis(0);
        let mut engine = Engine::new(&cfg, now, SimHost::new(1));
        let mut out = Vec::new();
        let largest = fragments(65_515);
        assert_eq!(largest.len(), 45);
        for frame in &largest {
            engine.handle_frame(now, frame, &mut out);
        }
        assert_eq!(engine.stats().datagrams_from_guest, 1, "the largest");

        let over = fragments(65_520);
        assert_eq!(over.len(), 45);
        for frame in &over {
            engine.handle_frame(now, frame, &mut out);
        }
        assert_eq!(engine.stats().datagrams_from_guest, 1, "dropped");
        engine.poll_transmit(now, &mut out);
    }

    /// Seeds are written with `encode`: each action must read back as
    /// itself, or a seed tests something else than its name says.
    #[test]
    fn every_action_reads_back_as_encoded() {
        let vnet = [1, 5, 42, 0, 4, 0, 34, 0, 6, 0];
        let actions = [
            Action::Big {
                framing: Framing::Ipv6,
                broadcast: true,
                fix: true,
                train: 5,
                head: vec![1, 2, 3],
                pad: 60_000,
            },
            Action::Fragments(FragTrain {
                v6: true,
                dst: 1,
                proto: 2,
                id: 0xdead_beef,
                len: 65_515,
                over: 3,
                piece: 1232,
                order: 7,
                mangle: 63,
                seed: 9,
            }),
            Action::TapRead {
                header: 2,
                vnet,
                framing: Framing::Ipv4,
                fix: true,
                head: vec![0x45; 20],
                pad: 100,
            },
            Action::TapRead {
                header: 1,
                vnet,
                framing: Framing::Ipv6,
                fix: false,
                head: Vec::new(),
                pad: 0,
            },
            Action::BigAnswer {
                segment: 1,
                flags: 0x18,
                window: 512,
                len: 30_000,
                header: 1,
                vnet,
            },
        ];
        for action in actions {
            let mut bytes = Vec::new();
            action.encode(&mut bytes);
            let back = Action::decode(&mut Unstructured::new(&bytes));
            assert_eq!(back.as_ref(), Ok(&action), "{bytes:02x?}");
        }
    }
}
