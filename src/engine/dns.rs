//! Queries to the DNS address that the host's resolver leaves unanswered.
//!
//! The DNS address forwards each query, as any UDP datagram, to the host's
//! resolver. When that resolver does not answer (down, or unreachable from
//! here), the guest would hear nothing: its stub resolver waits out its
//! timeout for each try of each nameserver (the guest's resolv.conf names
//! the DNS address of both families, both leading to the same resolver),
//! so a lookup fails only after tens of seconds. Instead, a query still
//! unanswered after `ANSWER_LIMIT` gets a SERVFAIL from the DNS address,
//! and the stub gives up on that try at once.
//!
//! This file only keeps the queries and builds the replies: it reads the
//! DNS header and question, never the answers, and sends nothing itself.

use std::collections::VecDeque;
use std::net::SocketAddr;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;

use crate::host::FlowId;

/// How long a query may wait for the host's resolver. Shorter than the
/// 5 s a stub resolver (glibc's RES_TIMEOUT, musl's) waits per try, so the
/// guest hears of the failure before it would send again, and a lookup
/// fails in about the time the host's own would; longer than a working
/// resolver takes for all but a pathological recursion.
pub(super) const ANSWER_LIMIT: Duration = Duration::from_secs(4);

/// Queries watched at once: a guest that floods the DNS address costs a
/// bounded amount of memory; past it, new queries are forwarded unwatched.
const MAX_PENDING: usize = 1024;

const HEADER_LEN: usize = 12;
/// The QR bit and the opcode in the first flags byte, RD.
const FLAG_QR: u8 = 0x80;
const OPCODE_MASK: u8 = 0x78;
const FLAG_RD: u8 = 0x01;
/// RA in the second flags byte, and RCODE SERVFAIL.
const FLAG_RA: u8 = 0x80;
pub(super) const RCODE_SERVFAIL: u8 = 2;
/// The longest name on the wire (RFC 1035, 3.1).
const MAX_NAME_LEN: usize = 255;

/// A query waiting for the host's resolver.
struct Pending {
    /// The flow that carried it; `None` once that flow is gone (the reply
    /// can no longer come, the SERVFAIL still can).
    flow: Option<FlowId>,
    id: u16,
    deadline: Instant,
    guest_mac: EthernetAddress,
    guest: SocketAddr,
    server: SocketAddr,
    servfail: Vec<u8>,
}

/// A SERVFAIL due for the guest.
pub(super) struct Due {
    pub guest_mac: EthernetAddress,
    pub guest: SocketAddr,
    pub server: SocketAddr,
    pub reply: Vec<u8>,
}

/// The queries in flight, oldest first: every one waits the same limit,
/// so arrival order is deadline order.
#[derive(Default)]
pub(super) struct DnsWatch {
    pending: VecDeque<Pending>,
}

impl DnsWatch {
    /// Watch a query the guest sent from `guest` to `server` on `flow`.
    /// Anything that is not a well-formed query is forwarded unwatched.
    pub(super) fn query(
        &mut self,
        now: Instant,
        flow: FlowId,
        (guest_mac, guest, server): (EthernetAddress, SocketAddr, SocketAddr),
        query: &[u8],
    ) {
        let Some(servfail) = servfail_for(query) else {
            return;
        };
        let id = u16::from_be_bytes([query[0], query[1]]);
        // The guest's own retransmission of a query already watched.
        if self
            .pending
            .iter()
            .any(|p| p.flow == Some(flow) && p.id == id)
        {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            log::debug!("dns: {MAX_PENDING} queries in flight; {guest} -> {server} unwatched");
            return;
        }
        self.pending.push_back(Pending {
            flow: Some(flow),
            id,
            deadline: now + ANSWER_LIMIT,
            guest_mac,
            guest,
            server,
            servfail,
        });
    }

    /// A datagram from the host's resolver on `flow`: its query is
    /// answered.
    pub(super) fn reply(&mut self, flow: FlowId, reply: &[u8]) {
        if self.pending.is_empty() || reply.len() < HEADER_LEN || reply[2] & FLAG_QR == 0 {
            return;
        }
        let id = u16::from_be_bytes([reply[0], reply[1]]);
        self.pending
            .retain(|p| !(p.flow == Some(flow) && p.id == id));
    }

    /// `flow` is closed: no reply can come on it any more, and its id may
    /// be reused by a flow to somewhere else.
    pub(super) fn flow_closed(&mut self, flow: FlowId) {
        for p in self.pending.iter_mut().filter(|p| p.flow == Some(flow)) {
            p.flow = None;
        }
    }

    /// The SERVFAILs due by `now`.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        while self.pending.front().is_some_and(|p| p.deadline <= now) {
            if let Some(p) = self.pending.pop_front() {
                due.push(Due {
                    guest_mac: p.guest_mac,
                    guest: p.guest,
                    server: p.server,
                    reply: p.servfail,
                });
            }
        }
        due
    }

    /// When the next SERVFAIL is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.deadline)
    }
}

/// The SERVFAIL answering `query`: its id, opcode and RD, RA set, and its
/// question (if any) repeated. `None` when `query` is no DNS query with at
/// most one well-formed question.
pub(super) fn servfail_for(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..HEADER_LEN)?;
    if header[2] & FLAG_QR != 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    let question_len = match qdcount {
        0 => 0,
        1 => question_len(&query[HEADER_LEN..])?,
        _ => return None,
    };
    let mut reply = Vec::with_capacity(HEADER_LEN + question_len);
    reply.extend_from_slice(&header[..2]);
    reply.push(FLAG_QR | (header[2] & (OPCODE_MASK | FLAG_RD)));
    reply.push(FLAG_RA | RCODE_SERVFAIL);
    reply.extend_from_slice(&qdcount.to_be_bytes());
    reply.extend_from_slice(&[0; 6]); // no answers, authorities, additionals
    reply.extend_from_slice(&query[HEADER_LEN..HEADER_LEN + question_len]);
    Some(reply)
}

/// The length of the question at the start of `data`: a name (labels,
/// possibly ending in a compression pointer), QTYPE and QCLASS.
fn question_len(data: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let len = *data.get(at)? as usize;
        match len {
            0 => {
                at += 1;
                break;
            }
            // A compression pointer ends the name.
            l if l & 0xc0 == 0xc0 => {
                at += 2;
                break;
            }
            l if l & 0xc0 != 0 => return None,
            l => at += 1 + l,
        }
        if at > MAX_NAME_LEN {
            return None;
        }
    }
    let end = at + 4;
    (end <= data.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dig probe.netferry.test` without EDNS: id 0x1234, RD, one
    /// question of type A, class IN.
    const QUERY: &[u8] = &[
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        5, b'p', b'r', b'o', b'b', b'e', //
        8, b'n', b'e', b't', b'f', b'e', b'r', b'r', b'y', //
        4, b't', b'e', b's', b't', 0, //
        0x00, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn servfail_repeats_id_rd_and_question() {
        let reply = servfail_for(QUERY).unwrap();
        assert_eq!(
            &reply[..HEADER_LEN],
            &[0x12, 0x34, 0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&reply[HEADER_LEN..], &QUERY[HEADER_LEN..]);
    }

    #[test]
    fn an_opt_record_after_the_question_is_not_repeated() {
        let mut q = QUERY.to_vec();
        q[11] = 1; // ARCOUNT
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(servfail_for(&q).unwrap(), servfail_for(QUERY).unwrap());
    }

    #[test]
    fn no_servfail_for_what_is_no_query() {
        let mut response = QUERY.to_vec();
        response[2] |= FLAG_QR;
        let mut two_questions = QUERY.to_vec();
        two_questions[5] = 2;
        let mut runaway = QUERY[..HEADER_LEN].to_vec();
        runaway.extend(std::iter::repeat_n(1u8, 300));
        for bad in [
            &QUERY[..5],
            &QUERY[..QUERY.len() - 1],
            &response,
            &two_questions,
            &runaway,
        ] {
            assert_eq!(servfail_for(bad), None, "{bad:?}");
        }
    }

    fn watch_one(w: &mut DnsWatch, now: Instant, flow: FlowId) {
        let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
        let guest = "10.0.2.100:40000".parse().unwrap();
        let server = "10.0.2.3:53".parse().unwrap();
        w.query(now, flow, (mac, guest, server), QUERY);
    }

    #[test]
    fn an_unanswered_query_is_due_once_after_the_limit() {
        let mut w = DnsWatch::default();
        let t0 = Instant::from_millis(0);
        let flow = 7;
        watch_one(&mut w, t0, flow);
        watch_one(&mut w, t0, flow); // the guest's retransmission
        assert_eq!(w.next_deadline(), Some(t0 + ANSWER_LIMIT));
        assert!(
            w.due(t0 + ANSWER_LIMIT - Duration::from_millis(1))
                .is_empty()
        );
        let due = w.due(t0 + ANSWER_LIMIT);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].reply[3] & 0x0f, RCODE_SERVFAIL);
        assert_eq!(due[0].server, "10.0.2.3:53".parse().unwrap());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn an_answered_query_is_forgotten_but_not_by_another_flow() {
        let mut w = DnsWatch::default();
        let t0 = Instant::from_millis(0);
        watch_one(&mut w, t0, 1);
        let mut answer = QUERY.to_vec();
        answer[2] |= FLAG_QR;
        w.reply(2, &answer);
        assert!(w.next_deadline().is_some());
        w.reply(1, QUERY); // a query, not an answer
        assert!(w.next_deadline().is_some());
        w.reply(1, &answer);
        assert_eq!(w.next_deadline(), None);
        // A closed flow's query still gets its SERVFAIL, and a new flow
        // with the reused id does not clear it.
        watch_one(&mut w, t0, 3);
        w.flow_closed(3);
        w.reply(3, &answer);
        assert_eq!(w.due(t0 + ANSWER_LIMIT).len(), 1);
    }

    /// The engine on the simulated host, its guest's query to the DNS
    /// address sent: what the guest receives from there on.
    mod engine {
        use std::net::{IpAddr, Ipv4Addr};

        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, UdpPacket, UdpRepr,
        };

        use super::QUERY;
        use crate::engine::EngineConfig;
        use crate::engine::harness::{Rig, ethernet, ipv4_packet};
        use crate::slirp4netns::default_plan;

        const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
        const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
        const GUEST_PORT: u16 = 40000;

        fn rig(nameserver: Option<IpAddr>) -> Rig {
            let mut rig = Rig::new(
                EngineConfig::new(default_plan(false), 1500),
                1,
                smoltcp::time::Instant::from_millis(1),
            );
            rig.host().nameserver = nameserver;
            rig
        }

        fn query_frame(rig: &Rig) -> Vec<u8> {
            let udp = UdpRepr {
                src_port: GUEST_PORT,
                dst_port: 53,
            };
            let mut buf = vec![0u8; udp.header_len() + QUERY.len()];
            udp.emit(
                &mut UdpPacket::new_unchecked(&mut buf[..]),
                &GUEST.into(),
                &DNS.into(),
                QUERY.len(),
                |p| p.copy_from_slice(QUERY),
                &ChecksumCapabilities::default(),
            );
            let ip = ipv4_packet(GUEST, DNS, IpProtocol::Udp, &buf);
            let mac = smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]);
            let gw = smoltcp::wire::EthernetAddress(rig.engine.plan().mac);
            ethernet(mac, gw, EthernetProtocol::Ipv4, &ip)
        }

        /// The DNS payloads among `frames` that came from the DNS address
        /// to the guest's port.
        fn dns_to_guest(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            for f in frames {
                let Ok(eth) = EthernetFrame::new_checked(&f[..]) else {
                    continue;
                };
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    continue;
                };
                if ip.next_header() != IpProtocol::Udp || ip.src_addr() != DNS {
                    continue;
                }
                let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                    continue;
                };
                assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
                if (udp.src_port(), udp.dst_port()) == (53, GUEST_PORT) {
                    out.push(udp.payload().to_vec());
                }
            }
            out
        }

        fn rcode(reply: &[u8]) -> u8 {
            reply[3] & 0x0f
        }

        #[test]
        fn a_resolver_that_never_answers_gives_servfail_after_the_limit() {
            let mut rig = rig(Some(Ipv4Addr::LOCALHOST.into()));
            let frame = query_frame(&rig);
            let mut seen = rig.feed(&frame);
            // Forwarded to the host's resolver, which keeps silent.
            let to = "127.0.0.1:53".parse().unwrap();
            assert!(rig.host().dgram_to(to).is_some(), "not forwarded");
            let limit = super::ANSWER_LIMIT.total_millis();
            seen.extend(rig.run(limit - 10));
            assert!(dns_to_guest(&seen).is_empty(), "answered before the limit");
            let late = rig.run(20);
            let replies = dns_to_guest(&late);
            assert_eq!(replies.len(), 1, "{replies:?}");
            assert_eq!(&replies[0][..2], &QUERY[..2]);
            assert_eq!(rcode(&replies[0]), super::RCODE_SERVFAIL);
            // Once only.
            assert!(dns_to_guest(&rig.run(limit)).is_empty());
        }

        #[test]
        fn an_answer_in_time_is_all_the_guest_gets() {
            let mut rig = rig(Some(Ipv4Addr::LOCALHOST.into()));
            let frame = query_frame(&rig);
            rig.feed(&frame);
            let id = rig
                .host()
                .dgram_to("127.0.0.1:53".parse().unwrap())
                .unwrap();
            let mut answer = QUERY.to_vec();
            answer[2] |= 0x80;
            answer[3] = 0x80; // NOERROR
            rig.host().dgram_reply(id, &answer);
            let seen = rig.run(super::ANSWER_LIMIT.total_millis() + 100);
            assert_eq!(dns_to_guest(&seen), [answer]);
        }

        #[test]
        fn no_resolver_on_the_host_gives_servfail_at_once() {
            let mut rig = rig(None);
            let frame = query_frame(&rig);
            let replies = dns_to_guest(&rig.feed(&frame));
            assert_eq!(replies.len(), 1);
            assert_eq!(rcode(&replies[0]), super::RCODE_SERVFAIL);
        }
    }
}
