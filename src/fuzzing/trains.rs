//! Fragment trains from a few input bytes: one guest datagram of up to
//! 64 KiB and past it, as IPv4 fragments or IPv6 fragment headers, in
//! order or not, duplicated, overlapping, a piece short or a last piece
//! too many. So the `frames` target reaches reassembly's limits (the
//! most a datagram of each family may carry) without 65 KB inputs and
//! without guessing offsets. It only builds bytes; `frames` feeds them.

use std::net::{Ipv4Addr, Ipv6Addr};

use arbitrary::Unstructured;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6FragmentRepr, Ipv6Packet, Ipv6Repr, TcpPacket, UdpPacket,
};

use crate::engine::{IPV6_FRAGMENT_HEADER_LEN, emit_v6_fragment_header};
use crate::slirp4netns::{Network, Network6};

/// Fragments in one train at most: pieces grow to keep under it.
pub const MAX_PIECES: usize = 256;
/// Fragment offsets count in 8-byte units, in 13 bits (both families).
const UNIT: usize = 8;
const MAX_OFFSET: usize = 0x1fff * UNIT;
/// Bytes of an IPv6 fragment's headers: IPv6's plus its fragment header.
const IPV6_HEADERS: usize = IPV6_HEADER_LEN + IPV6_FRAGMENT_HEADER_LEN;
/// The hop limit the guest's fragments carry.
const HOP_LIMIT: u8 = 64;
/// An IP packet's largest size (IPv4 total length; IPv6 payload length).
const IP_MAX: usize = 65535;
/// The guest's IPv6 address (any in the prefix will do).
const GUEST6_HOST: u16 = 0x1234;
const UDP: u8 = 17;
const TCP: u8 = 6;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// One datagram from the guest, cut into fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragTrain {
    pub v6: bool,
    /// Picks the destination: a remote host, the gateway, the DNS
    /// address, a host that never answers.
    pub dst: u8,
    /// 0 UDP, 1 ICMP echo, 2 TCP; any other value is the protocol
    /// number itself, the payload a pattern.
    pub proto: u8,
    pub id: u32,
    /// Bytes of the datagram's payload (its transport header included).
    pub len: u16,
    /// Eight-byte units more than `len`: past the family's largest
    /// datagram when `len` is near it.
    pub over: u8,
    /// Bytes per fragment, rounded down to a multiple of 8.
    pub piece: u16,
    /// Bit 0 reverses the pieces, bit 1 shuffles them, bit 2 sends the
    /// last first.
    pub order: u8,
    /// Bit 0 sends one piece twice, bit 1 makes one overlap the one
    /// before, bit 2 leaves one out, bit 3 adds a second last piece,
    /// bit 4 gives a middle piece an odd length, bit 5 sets IPv4's DF.
    pub mangle: u8,
    /// Which piece is mangled, and the shuffle's seed.
    pub seed: u8,
}

/// A piece of the datagram: byte range and "more fragments".
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
    more: bool,
}

impl FragTrain {
    pub fn decode(u: &mut Unstructured) -> arbitrary::Result<FragTrain> {
        Ok(FragTrain {
            v6: u.arbitrary::<u8>()? & 1 != 0,
            dst: u.arbitrary()?,
            proto: u.arbitrary()?,
            id: u.arbitrary()?,
            len: u.arbitrary()?,
            over: u.arbitrary()?,
            piece: u.arbitrary()?,
            order: u.arbitrary()?,
            mangle: u.arbitrary()?,
            seed: u.arbitrary()?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[u8::from(self.v6), self.dst, self.proto]);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.push(self.over);
        out.extend_from_slice(&self.piece.to_le_bytes());
        out.extend_from_slice(&[self.order, self.mangle, self.seed]);
    }

    /// The Ethernet frames of the train, from `guest_mac` to `gateway_mac`.
    pub fn frames(
        &self,
        net: &Network,
        net6: &Network6,
        guest_mac: EthernetAddress,
        gateway_mac: EthernetAddress,
    ) -> Vec<Vec<u8>> {
        let (src, dst): (IpAddress, IpAddress) = if self.v6 {
            let mut guest = net6.prefix.segments();
            guest[7] = GUEST6_HOST;
            let dsts = [
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
                net6.gateway,
                net6.dns,
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
            ];
            (
                Ipv6Addr::from(guest).into(),
                dsts[usize::from(self.dst) % dsts.len()].into(),
            )
        } else {
            let dsts = [
                Ipv4Addr::new(198, 51, 100, 1),
                net.gateway,
                net.dns,
                Ipv4Addr::new(203, 0, 113, 1),
            ];
            (
                net.guest.into(),
                dsts[usize::from(self.dst) % dsts.len()].into(),
            )
        };
        let (proto, payload) = self.payload(src, dst);
        let mut pieces = self.pieces(payload.len());
        self.mangle(&mut pieces);
        self.reorder(&mut pieces);
        let dont_frag = self.mangle & 32 != 0;
        let (ethertype, headers) = if self.v6 {
            (EthernetProtocol::Ipv6, IPV6_HEADERS)
        } else {
            (EthernetProtocol::Ipv4, IPV4_HEADER_LEN)
        };
        let eth = EthernetRepr {
            src_addr: guest_mac,
            dst_addr: gateway_mac,
            ethertype,
        };
        pieces
            .iter()
            .map(|p| {
                let data = &payload[p.start.min(payload.len())..p.end.min(payload.len())];
                let mut f = vec![0; ETHERNET_HEADER_LEN + headers + data.len()];
                let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
                eth.emit(&mut frame);
                let packet = frame.payload_mut();
                // The offset field holds 13 bits of 8-byte units.
                let units = ((p.start / UNIT) & 0x1fff) as u16;
                match (src, dst) {
                    (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                        let ip = Ipv6Repr {
                            src_addr: s,
                            dst_addr: d,
                            next_header: IpProtocol::Ipv6Frag,
                            payload_len: IPV6_FRAGMENT_HEADER_LEN + data.len(),
                            hop_limit: HOP_LIMIT,
                        };
                        let mut ip6 = Ipv6Packet::new_unchecked(&mut *packet);
                        ip.emit(&mut ip6);
                        let fields = Ipv6FragmentRepr {
                            frag_offset: units,
                            more_frags: p.more,
                            ident: self.id,
                        };
                        emit_v6_fragment_header(ip6.payload_mut(), proto.into(), &fields);
                    }
                    (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
                        let ip = Ipv4Repr {
                            src_addr: s,
                            dst_addr: d,
                            next_header: proto.into(),
                            payload_len: 0,
                            hop_limit: HOP_LIMIT,
                        };
                        let mut ip4 = Ipv4Packet::new_unchecked(&mut *packet);
                        ip.emit(&mut ip4, &ChecksumCapabilities::ignored());
                        // By hand: a mangled piece may be longer than the
                        // field can say, and then it says what it can.
                        ip4.set_total_len((IPV4_HEADER_LEN + data.len()) as u16);
                        ip4.set_ident(self.id as u16);
                        ip4.set_dont_frag(dont_frag);
                        ip4.set_more_frags(p.more);
                        ip4.set_frag_offset(units * UNIT as u16);
                        ip4.fill_checksum();
                    }
                    _ => unreachable!("both addresses come from one family"),
                }
                f[ETHERNET_HEADER_LEN + headers..].copy_from_slice(data);
                f
            })
            .collect()
    }

    /// The datagram's protocol and payload, its checksum made over the
    /// whole (whatever its length field can say).
    fn payload(&self, src: IpAddress, dst: IpAddress) -> (u8, Vec<u8>) {
        let total = usize::from(self.len) + usize::from(self.over) * UNIT;
        let mut p = pattern(total);
        let proto = match self.proto {
            0 => UDP,
            1 if self.v6 => ICMPV6,
            1 => ICMP,
            2 => TCP,
            n => n,
        };
        let header = match proto {
            UDP | ICMP | ICMPV6 => 8,
            TCP => 20,
            _ => 0,
        };
        if total < header {
            return (proto, p);
        }
        match proto {
            UDP => {
                p[..8].copy_from_slice(&[0x9c, 0x40, 0, 9, 0, 0, 0, 0]);
                let mut udp = UdpPacket::new_unchecked(&mut p[..]);
                udp.set_len(total as u16);
                udp.fill_checksum(&src, &dst);
            }
            ICMP => {
                p[..8].copy_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
                Icmpv4Packet::new_unchecked(&mut p[..]).fill_checksum();
            }
            ICMPV6 => {
                p[..8].copy_from_slice(&[128, 0, 0, 0, 0x12, 0x34, 0, 1]);
                if let (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) = (src, dst) {
                    Icmpv6Packet::new_unchecked(&mut p[..]).fill_checksum(&s, &d);
                }
            }
            TCP => {
                p[..20].copy_from_slice(&[
                    0x9c, 0x41, 0, 80, 0, 0, 3, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0,
                    0,
                ]);
                TcpPacket::new_unchecked(&mut p[..]).fill_checksum(&src, &dst);
            }
            _ => {}
        }
        (proto, p)
    }

    /// The datagram's bytes cut into pieces: each but the last a multiple
    /// of 8 bytes, no more than `MAX_PIECES`, every offset one the header
    /// can say, no fragment over an IP packet's largest size.
    fn pieces(&self, total: usize) -> Vec<Piece> {
        let headers = if self.v6 {
            IPV6_HEADERS
        } else {
            IPV4_HEADER_LEN
        };
        let biggest = (IP_MAX - headers) & !7;
        let step = (usize::from(self.piece) & !7)
            .max(total.div_ceil(MAX_PIECES).next_multiple_of(UNIT))
            .clamp(UNIT, biggest);
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < total || pieces.is_empty() {
            let mut end = (start + step).min(total);
            if end > MAX_OFFSET && end < total {
                // The next offset cannot be said: this piece takes the rest.
                end = total.min(start + biggest);
            }
            pieces.push(Piece {
                start,
                end,
                more: end < total,
            });
            if end == start || !pieces.last().is_some_and(|p| p.more) {
                break;
            }
            start = end;
        }
        if let Some(last) = pieces.last_mut() {
            last.more = false;
        }
        pieces
    }

    fn mangle(&self, pieces: &mut Vec<Piece>) {
        let k = usize::from(self.seed) % pieces.len();
        let m = self.mangle;
        if m & 1 != 0 {
            pieces.push(pieces[k]);
        }
        if m & 2 != 0 && pieces[k].start >= UNIT {
            pieces[k].start -= UNIT;
        }
        if m & 4 != 0 && pieces.len() > 1 {
            pieces.remove(k);
        }
        if m & 8 != 0 {
            let end = pieces.iter().map(|p| p.end).max().unwrap_or(0);
            pieces.push(Piece {
                start: end.saturating_sub(UNIT) & !7,
                end: end + UNIT,
                more: false,
            });
        }
        if m & 16 != 0 {
            let k = usize::from(self.seed) % pieces.len();
            let p = &mut pieces[k];
            if p.more && p.end > p.start + 1 {
                p.end -= 1 + usize::from(self.seed) % (p.end - p.start - 1).min(7);
            }
        }
    }

    fn reorder(&self, pieces: &mut [Piece]) {
        if self.order & 1 != 0 {
            pieces.reverse();
        }
        if self.order & 2 != 0 {
            // A small LCG: the order is the input's, not the run's.
            let mut state = u32::from(self.seed) | 1;
            for i in (1..pieces.len()).rev() {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                pieces.swap(i, (state >> 16) as usize % (i + 1));
            }
        }
        if self.order & 4 != 0
            && let Some(last) = pieces.iter().position(|p| !p.more)
        {
            pieces[..=last].rotate_right(1);
        }
    }
}

/// `len` bytes of a pattern, so that misplaced bytes show.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(len: u16, over: u8, piece: u16) -> FragTrain {
        FragTrain {
            v6: false,
            dst: 0,
            proto: 0,
            id: 7,
            len,
            over,
            piece,
            order: 0,
            mangle: 0,
            seed: 0,
        }
    }

    #[test]
    fn pieces_cover_the_datagram_in_units_of_eight() {
        let t = train(4000, 0, 1480);
        let p = t.pieces(4000);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].start, p[0].end, p[0].more), (0, 1480, true));
        assert_eq!((p[2].start, p[2].end, p[2].more), (2960, 4000, false));
    }

    #[test]
    fn a_datagram_past_the_ipv4_maximum_still_goes_in_fragments_the_header_can_say() {
        // The shape of the abort of issue 22: 45 pieces of 1,480 bytes.
        let t = train(65515, 1, 1480);
        let p = t.pieces(65523);
        assert_eq!(p.len(), 45);
        assert_eq!(p.last().map(|p| p.end), Some(65523));
        // Tiny pieces grow to keep the count bounded; offsets stay sayable.
        let p = train(65535, 255, 8).pieces(65535 + 255 * 8);
        assert!(p.len() <= MAX_PIECES);
        assert!(p.iter().all(|p| p.start <= MAX_OFFSET && p.start % 8 == 0));
        assert_eq!(
            p.last().map(|p| (p.end, p.more)),
            Some((65535 + 255 * 8, false))
        );
    }

    #[test]
    fn any_protocol_and_length_builds_a_train() {
        let (net, net6) = (Network::default(), Network6::default());
        let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
        for proto in 0..=255u8 {
            for len in [0, 1, 7, 8, 19, 20, 21] {
                for v6 in [false, true] {
                    let t = FragTrain {
                        v6,
                        proto,
                        ..train(len, 0, 8)
                    };
                    assert!(!t.frames(&net, &net6, mac, mac).is_empty());
                }
            }
        }
    }
}
