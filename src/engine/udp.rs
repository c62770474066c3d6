//! Guest UDP, proxied through connected host UDP sockets, and the one
//! loop that carries datagrams from host sockets back to the guest (UDP
//! and ICMP echo alike).
//!
//! One host socket per (guest address and port, destination), so replies
//! find their way back and come from the address the guest wrote to.
//! Idle flows are closed after the configured timeout, and at most
//! `UDP_FLOW_LIMIT` live at once (the least recently used is evicted), so
//! a guest that sprays datagrams cannot exhaust the process's fds.
//!
//! The guest's datagrams wait in an `Outbox` until the engine polls
//! (after a batch of tap frames), then go out with one `send_batch` per
//! flow (one send with segmentation offload for a run of one size,
//! otherwise `sendmmsg`): sent one at a time, each datagram woke the
//! host's receiver and handed it netferry's CPU. The other way, a run of
//! one size from one `recv_batch` goes to the guest as one train that
//! the tap's kernel cuts (`crate::vnet`).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    DHCP_SERVER_PORT, EthernetAddress, IPV4_HEADER_LEN, IPV6_HEADER_LEN, IpProtocol,
    UDP_HEADER_LEN, UdpPacket, UdpRepr,
};

use super::flows::{DgramFlow, Flow, FlowKey, Kind, UDP_FLOW_LIMIT};
use super::{Engine, FrameSink, HOP_LIMIT, MapTo, Packet, Route, Unreachable};
use crate::host::{
    self, DGRAM_SLOTS, FlowId, Host, HostError, INTERRUPT_RETRIES, SEND_SLOTS, Step,
};
use crate::pages::Pages;

/// Datagrams read from one host socket per poll before the others (and
/// the tap) get their turn.
pub(super) const DGRAM_BATCH: usize = 64;

/// Room for the guest's datagrams between two polls: a tap batch of
/// full-size ones, or the largest datagram.
const OUTBOX_LEN: usize = 256 * 1024;

/// Guest datagrams not sent yet, all flows together, in arrival order.
/// The buffer is mapped on first use (`Pages`).
#[derive(Default)]
pub(super) struct Outbox {
    buf: Pages,
    used: usize,
    items: Vec<(FlowId, Range<usize>)>,
}

impl Outbox {
    fn fits(&self, len: usize) -> bool {
        self.items.len() < SEND_SLOTS && self.used + len <= OUTBOX_LEN
    }

    fn push(&mut self, id: FlowId, data: &[u8]) {
        if self.buf.is_empty() {
            self.buf = Pages::zeroed(OUTBOX_LEN);
        }
        let range = self.used..self.used + data.len();
        self.buf[range.clone()].copy_from_slice(data);
        self.used = range.end;
        self.items.push((id, range));
    }

    /// Flow `id`'s datagrams, in order.
    fn of(&self, id: FlowId) -> Vec<&[u8]> {
        let of_id = self.items.iter().filter(|(i, _)| *i == id);
        of_id.map(|(_, r)| &self.buf[r.clone()]).collect()
    }

    pub(super) fn forget(&mut self, id: FlowId) {
        self.items.retain(|(i, _)| *i != id);
    }

    fn clear(&mut self) {
        self.used = 0;
        self.items.clear();
    }
}

impl<H: Host> Engine<H> {
    pub(super) fn process_udp<S: FrameSink>(&mut self, now: Instant, pkt: &Packet, sink: &mut S) {
        let Ok(udp) = UdpPacket::new_checked(pkt.payload) else {
            return;
        };
        let (src, dst) = (pkt.src.into(), pkt.dst.into());
        if UdpRepr::parse(&udp, &src, &dst, &self.caps.checksum).is_err() {
            log::trace!("dropping a UDP datagram with a bad header or checksum");
            return;
        }
        // Port 0 is no UDP port: a reply would go to (or come from) it, in
        // a datagram no stack accepts (found by the frames fuzzer).
        if udp.src_port() == 0 || udp.dst_port() == 0 {
            log::trace!("dropping a UDP datagram with port 0");
            return;
        }
        self.stats.datagrams_from_guest += 1;
        if udp.dst_port() == DHCP_SERVER_PORT && pkt.dst.is_ipv4() {
            return self.process_dhcp(now, pkt.guest_mac, udp.payload(), sink);
        }
        if !self.carry.udp {
            return;
        }
        let key = FlowKey {
            guest: (pkt.src, udp.src_port()).into(),
            dst: (pkt.dst, udp.dst_port()).into(),
        };
        let id = match self.flows.find(Kind::Udp, &key) {
            Some(id) => id,
            None if self.reply_forwarded_udp(now, &key, udp.payload()) => return,
            None => match self.route(now, pkt.dst, udp.dst_port()) {
                Route::Host(target) => match self.open_udp(now, key, pkt.guest_mac, target) {
                    Some(id) => id,
                    None => return,
                },
                Route::Unreachable(reason) => {
                    let gw = self.gateway_for(pkt.dst);
                    return self.send_unreachable(pkt.guest_mac, gw, reason, pkt.quote, sink);
                }
                Route::Refused => {
                    let reason = Unreachable::Port;
                    return self.send_unreachable(pkt.guest_mac, pkt.dst, reason, pkt.quote, sink);
                }
                // The DNS address with no resolver on the host (none in
                // its resolv.conf): fail the lookup now, not by silence.
                Route::Drop if self.plan.target(pkt.dst) == Some(MapTo::Resolver) => {
                    if let Some(reply) = super::dns::servfail_for(udp.payload()) {
                        self.send_udp(pkt.guest_mac, key.dst, key.guest, &reply, sink);
                    }
                    return;
                }
                Route::Drop => return,
            },
        };
        if let Some(flow) = self.flows.dgram_mut(id) {
            flow.last_used = now;
        }
        if self.plan.target(pkt.dst) == Some(MapTo::Resolver) {
            let ends = (pkt.guest_mac, key.guest, key.dst);
            self.dns.query(now, id, ends, udp.payload());
        }
        if !self.outbox.fits(udp.payload().len()) {
            self.flush_udp(sink);
        }
        self.outbox.push(id, udp.payload());
    }

    /// Send what the outbox holds, one `send_batch` per flow (more if
    /// one call does not take all).
    pub(super) fn flush_udp<S: FrameSink>(&mut self, sink: &mut S) {
        if self.outbox.items.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut self.outbox);
        for (i, (id, _)) in outbox.items.iter().enumerate() {
            if outbox.items[..i].iter().any(|(seen, _)| seen == id) {
                continue;
            }
            self.current = Some(*id);
            self.send_datagrams(*id, &outbox.of(*id), sink);
        }
        self.current = None;
        self.outbox = outbox;
        self.outbox.clear();
    }

    fn send_datagrams<S: FrameSink>(&mut self, id: FlowId, datagrams: &[&[u8]], sink: &mut S) {
        let Some(flow) = self.flows.dgram_mut(id) else {
            return;
        };
        let (guest_mac, key) = (flow.guest_mac, flow.key);
        let mut sent = 0;
        let mut interrupted = 0;
        while sent < datagrams.len() {
            match Step::from(self.host.send_batch(id, &datagrams[sent..])) {
                // The socket's buffer is full (or the host sent nothing,
                // which would make no progress either): the rest is
                // dropped, as a full network drops datagrams.
                Step::Got(0) | Step::Drained => return,
                Step::Got(n) => {
                    let n = n.min(datagrams.len() - sent);
                    let bytes: usize = datagrams[sent..sent + n].iter().map(|d| d.len()).sum();
                    self.stats.bytes_to_host += bytes as u64;
                    sent += n;
                }
                Step::Retry if interrupted < INTERRUPT_RETRIES => interrupted += 1,
                Step::Retry => return,
                // A refusal from an earlier datagram surfaces here (and
                // this one is lost); report it like the kernel would.
                Step::Failed(HostError::Refused) => {
                    let quote = udp_quote(&key);
                    let reason = Unreachable::Port;
                    self.send_unreachable(guest_mac, key.dst.ip(), reason, &quote, sink);
                    sent += 1;
                }
                Step::Failed(e) => {
                    log::debug!("udp {} -> {}: send failed: {e}", key.guest, key.dst);
                    sent += 1;
                }
            }
        }
    }

    fn open_udp(
        &mut self,
        now: Instant,
        key: FlowKey,
        guest_mac: EthernetAddress,
        target: SocketAddr,
    ) -> Option<FlowId> {
        if let Some(old) = self.flows.evict_candidate(Kind::Udp) {
            log::debug!("udp: {UDP_FLOW_LIMIT} flows open, evicting the oldest");
            self.remove_flow(old, false);
        }
        let id = self.flows.next_id();
        if let Err(e) = self.host.udp_open(id, target) {
            log::debug!("udp {} -> {target}: {e}", key.guest);
            return None;
        }
        log::debug!("udp {} -> {target}: new flow", key.guest);
        Some(self.flows.insert(Flow::Udp(DgramFlow {
            key,
            guest_mac,
            last_used: now,
            readable: false,
        })))
    }

    /// Datagrams from a UDP or echo flow's host socket back to the guest.
    /// True when the batch ran out with more perhaps waiting.
    pub(super) fn pump_dgram<S: FrameSink>(
        &mut self,
        now: Instant,
        id: FlowId,
        sink: &mut S,
    ) -> bool {
        let ping = self.flows.kind(id) == Some(Kind::Ping);
        let mut delivered = 0;
        let mut interrupted = 0;
        while delivered < DGRAM_BATCH {
            let Some(flow) = self.flows.dgram_mut(id) else {
                return false;
            };
            if !flow.readable {
                return false;
            }
            let (guest_mac, key) = (flow.guest_mac, flow.key);
            let count = match Step::from(self.host.recv_batch(id, &mut self.dgrams)) {
                // Nothing although the socket was readable: wait for the
                // next event rather than ask again.
                Step::Got(0) | Step::Drained => {
                    flow.readable = false;
                    return false;
                }
                Step::Got(count) => count.min(DGRAM_SLOTS),
                Step::Retry if interrupted < INTERRUPT_RETRIES => {
                    interrupted += 1;
                    continue;
                }
                // Served again in the next poll.
                Step::Retry => return true,
                Step::Failed(HostError::Refused) if !ping => {
                    // The host got ICMP port unreachable for our datagram.
                    let quote = udp_quote(&key);
                    let reason = Unreachable::Port;
                    self.send_unreachable(guest_mac, key.dst.ip(), reason, &quote, sink);
                    delivered += 1;
                    continue;
                }
                Step::Failed(e) => {
                    log::debug!("{} -> {}: receive failed: {e}", key.guest, key.dst);
                    flow.readable = false;
                    return false;
                }
            };
            flow.last_used = now;
            // Borrow the datagrams out of self while building the frames.
            let dgrams = std::mem::take(&mut self.dgrams);
            let batch: Vec<&[u8]> = (0..count).map(|i| dgrams.datagram(i)).collect();
            self.stats.bytes_to_guest += batch.iter().map(|d| d.len() as u64).sum::<u64>();
            self.stats.datagrams_to_guest += count as u64;
            if !ping {
                for datagram in &batch {
                    self.dns.reply(id, datagram);
                }
            }
            let mut i = 0;
            while i < count {
                if ping {
                    self.deliver_echo_reply(guest_mac, &key, batch[i], sink);
                    i += 1;
                    continue;
                }
                let train = self.train_len(&batch[i..], key.guest.is_ipv6());
                if train >= 2 {
                    self.send_udp_train(guest_mac, key.dst, key.guest, &batch[i..i + train], sink);
                } else {
                    self.send_udp(guest_mac, key.dst, key.guest, batch[i], sink);
                }
                i += train.max(1);
            }
            drop(batch);
            self.dgrams = dgrams;
            delivered += count;
        }
        true
    }

    /// How many of `datagrams` can go to the guest as one train: none
    /// unless the tap cuts trains, and only datagrams that fit the MTU
    /// each (larger ones need IP fragments, which `send_udp` makes).
    fn train_len(&self, datagrams: &[&[u8]], v6: bool) -> usize {
        let ip_header = if v6 { IPV6_HEADER_LEN } else { IPV4_HEADER_LEN };
        let headers = ip_header + UDP_HEADER_LEN;
        match datagrams.first() {
            Some(first) if self.split_udp && headers + first.len() <= self.mtu => {
                host::train_len(datagrams)
            }
            _ => 0,
        }
    }

    /// Datagrams from `src` of one size (the last may be shorter) to the
    /// guest in one frame, for the tap to cut.
    fn send_udp_train<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: SocketAddr,
        dst: SocketAddr,
        datagrams: &[&[u8]],
        sink: &mut S,
    ) {
        let total: usize = datagrams.iter().map(|d| d.len()).sum();
        let udp_len = UDP_HEADER_LEN + total;
        let Some((eth, ip)) = self.headers(
            HOP_LIMIT,
            guest_mac,
            (src.ip(), dst.ip()),
            IpProtocol::Udp,
            udp_len,
        ) else {
            return;
        };
        let frame = self.frame(&eth, &ip, |buf| {
            let mut udp = UdpPacket::new_unchecked(buf);
            udp.set_src_port(src.port());
            udp.set_dst_port(dst.port());
            udp.set_len(udp_len as u16);
            udp.set_checksum(0);
            let mut at = 0;
            let payload = udp.payload_mut();
            for d in datagrams {
                payload[at..at + d.len()].copy_from_slice(d);
                at += d.len();
            }
        });
        sink.send_udp_train(frame, datagrams[0].len());
    }

    /// SERVFAIL for each query to the DNS address that the host's resolver
    /// left unanswered for `dns::ANSWER_LIMIT`.
    pub(super) fn answer_unanswered_dns<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        for due in self.dns.due(now) {
            log::debug!(
                "dns: no answer from the host's resolver for {} in {}; SERVFAIL",
                due.guest,
                super::dns::ANSWER_LIMIT
            );
            self.send_udp(due.guest_mac, due.server, due.guest, &due.reply, sink);
        }
    }

    /// One datagram to the guest from `src`. Too large for the guest's
    /// MTU: dropped (with a log line) rather than cut.
    pub(super) fn send_udp<S: FrameSink>(
        &mut self,
        guest_mac: EthernetAddress,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
        sink: &mut S,
    ) {
        let udp = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let (s, d) = (src.ip(), dst.ip());
        self.send_ip(
            guest_mac,
            (s, d),
            IpProtocol::Udp,
            udp.header_len() + data.len(),
            sink,
            |buf| {
                udp.emit(
                    &mut UdpPacket::new_unchecked(buf),
                    &s.into(),
                    &d.into(),
                    data.len(),
                    |p| p.copy_from_slice(data),
                    &ChecksumCapabilities::default(),
                );
            },
        );
    }
}

/// A header for quoting in an ICMP error about a flow's datagram, when
/// the original is long gone: guest to destination, UDP, ports filled in.
fn udp_quote(key: &FlowKey) -> Vec<u8> {
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&key.guest.port().to_be_bytes());
    udp[2..4].copy_from_slice(&key.dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&8u16.to_be_bytes());
    match (key.guest.ip(), key.dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => super::icmp::ipv4_quote(src, dst, &udp),
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let repr = smoltcp::wire::Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Udp,
                payload_len: udp.len(),
                hop_limit: super::HOP_LIMIT,
            };
            let mut buf = vec![0u8; repr.buffer_len() + udp.len()];
            let mut p = smoltcp::wire::Ipv6Packet::new_unchecked(&mut buf[..]);
            repr.emit(&mut p);
            p.payload_mut().copy_from_slice(&udp);
            buf
        }
        _ => Vec::new(),
    }
}
