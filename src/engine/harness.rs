//! The one engine test harness, shared by the unit (`tests`), IPv6
//! (`tests6`) and scenario tests: an engine on the simulated host with
//! every received checksum verified, a virtual clock that moves only when
//! a test moves it, the step that hands the host's readiness to the
//! engine and lets it send, and builders for the guest's frames. The
//! guest is played either by the test with literal frames ([`Rig`]) or by
//! a second smoltcp stack (`scenario`'s `World`, built on the same
//! pieces). Nothing here asserts: each test file checks what it pins.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
};

use super::{Engine, EngineConfig};
use crate::host::SimHost;

pub(super) type SimEngine = Engine<SimHost>;

/// An engine of `cfg` on a simulated host seeded with `host_seed`,
/// started at time zero, checking the checksums of what it receives.
pub(super) fn sim_engine(mut cfg: EngineConfig, host_seed: u64) -> SimEngine {
    cfg.verify_checksums = true;
    Engine::new(&cfg, Instant::from_millis(0), SimHost::new(host_seed))
}

/// Let the simulated host act up to `now` and hand its readiness events
/// to the engine; whether there were any.
pub(super) fn deliver_host_events(engine: &mut SimEngine, now: Instant) -> bool {
    engine.host_mut().tick(now);
    let mut any = false;
    for (id, ready) in engine.host_mut().take_events() {
        any = true;
        engine.handle_host_event(id, ready);
    }
    any
}

/// An engine, its simulated host and the virtual clock, with the guest
/// played by the test in literal frames.
pub(super) struct Rig {
    pub engine: SimEngine,
    pub now: Instant,
}

impl Rig {
    /// A rig whose clock reads `now` (after the engine's start).
    pub fn new(cfg: EngineConfig, host_seed: u64, now: Instant) -> Self {
        Rig {
            engine: sim_engine(cfg, host_seed),
            now,
        }
    }

    pub fn host(&mut self) -> &mut SimHost {
        self.engine.host_mut()
    }

    /// One frame from the guest at the current time; everything the
    /// engine sent in answer.
    pub fn feed(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.engine.handle_frame(self.now, frame, &mut out);
        self.engine.poll_transmit(self.now, &mut out);
        out
    }

    /// Let `ms` of virtual time pass in 1 ms steps, handing the host's
    /// events to the engine; everything the engine sent meanwhile.
    pub fn run(&mut self, ms: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..ms {
            self.now += Duration::from_millis(1);
            deliver_host_events(&mut self.engine, self.now);
            self.engine.poll_transmit(self.now, &mut out);
        }
        out
    }
}

/// An Ethernet frame around `payload`.
pub(super) fn ethernet(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    };
    let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// A broadcast ARP request from `mac` at `ip` for `target`, as a kernel
/// sends before its first packet through the gateway.
pub(super) fn arp_request(mac: EthernetAddress, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
    ethernet(mac, EthernetAddress::BROADCAST, EthernetProtocol::Arp, &buf)
}

/// An IPv4 packet (TTL 64, checksum filled in) around `payload`.
pub(super) fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
    let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    p.payload_mut().copy_from_slice(payload);
    buf
}

/// An IPv6 packet with hop limit `hop` around `payload`.
pub(super) fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: IpProtocol,
    hop: u8,
    payload: &[u8],
) -> Vec<u8> {
    let repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        hop_limit: hop,
    };
    let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
    let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut p);
    p.payload_mut().copy_from_slice(payload);
    buf
}
