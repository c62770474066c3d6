//! What every frame the engine sends must be, checked frame by frame.
//!
//! Each frame parses back with smoltcp's checked parsers and carries valid
//! checksums; it is no larger than the MTU plus the Ethernet header and
//! comes from the gateway's MAC. IP fragments are collected per batch (the
//! engine sends all pieces of a datagram at once): the pieces must join
//! into a whole whose transport checksum is valid, since only the first
//! piece holds the transport header and its checksum covers the whole.

use std::collections::BTreeMap;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet,
    Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket,
    TcpRepr, UdpPacket, UdpRepr,
};

use crate::engine::ETHERNET_HEADER_LEN;
use crate::vnet;

/// Bytes of an IPv6 fragment header.
const FRAG6_LEN: usize = 8;

/// The fragments of one datagram seen in a batch, by offset.
#[derive(Default)]
struct Pieces {
    /// offset -> (data, more fragments follow)
    parts: BTreeMap<usize, (Vec<u8>, bool)>,
}

/// Checks the frames of one batch (the output of one engine call).
pub struct FrameCheck {
    max_frame: usize,
    /// The engine runs with the tap's offload: a TCP frame goes through
    /// `vnet::header_for` and the kernel's completion of its checksum, and
    /// may exceed the MTU when the kernel is asked to split it.
    offload: bool,
    gateway_mac: EthernetAddress,
    frags: BTreeMap<(IpAddress, IpAddress, IpProtocol, u32), Pieces>,
}

impl FrameCheck {
    pub fn new(mtu: usize, gateway_mac: EthernetAddress) -> Self {
        FrameCheck {
            max_frame: mtu + ETHERNET_HEADER_LEN,
            offload: false,
            gateway_mac,
            frags: BTreeMap::new(),
        }
    }

    pub fn with_offload(mut self, offload: bool) -> Self {
        self.offload = offload;
        self
    }

    /// Check a batch of frames; the error names the frame and the fault.
    pub fn batch(&mut self, frames: &[Vec<u8>]) -> Result<(), String> {
        self.frags.clear();
        for (i, frame) in frames.iter().enumerate() {
            self.frame(frame)
                .map_err(|e| format!("frame {i} of {}: {e}: {}", frames.len(), hex(frame)))?;
        }
        for ((src, dst, proto, id), pieces) in std::mem::take(&mut self.frags) {
            let whole = pieces
                .join()
                .map_err(|e| format!("fragments {id} from {src} to {dst}: {e}"))?;
            transport(proto, src, dst, &whole)
                .map_err(|e| format!("joined fragments {id} from {src} to {dst}: {e}"))?;
        }
        Ok(())
    }

    fn frame(&mut self, frame: &[u8]) -> Result<(), String> {
        let mut split = false;
        let owned;
        let frame = if self.offload {
            // What the tap and the guest's kernel make of it.
            let mut copy = frame.to_vec();
            let mtu = self.max_frame - ETHERNET_HEADER_LEN;
            let hdr = vnet::header_for(&mut copy, mtu);
            let (gso, size, hdr_len) = vnet::gso_of(&hdr);
            if gso != 0 {
                if usize::from(hdr_len) + usize::from(size) > self.max_frame || size == 0 {
                    return Err(format!(
                        "split into {size}-byte segments after {hdr_len} bytes of headers: over the MTU"
                    ));
                }
                split = true;
            }
            vnet::complete_checksum(&mut copy, &hdr);
            owned = copy;
            &owned[..]
        } else {
            frame
        };
        if frame.len() > self.max_frame && !split {
            return Err(format!(
                "{} bytes, more than the MTU allows ({})",
                frame.len(),
                self.max_frame
            ));
        }
        let eth = EthernetFrame::new_checked(frame).map_err(|_| "not Ethernet".to_string())?;
        if eth.src_addr() != self.gateway_mac {
            return Err(format!("from {}, not the gateway's MAC", eth.src_addr()));
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => ArpPacket::new_checked(eth.payload())
                .and_then(|p| ArpRepr::parse(&p))
                .map(|_| ())
                .map_err(|_| "ARP does not parse".into()),
            EthernetProtocol::Ipv4 => self.ipv4(eth.payload()),
            EthernetProtocol::Ipv6 => self.ipv6(eth.payload()),
            other => Err(format!("ethertype {other}")),
        }
    }

    fn ipv4(&mut self, packet: &[u8]) -> Result<(), String> {
        let ip = Ipv4Packet::new_checked(packet).map_err(|_| "IPv4 header malformed")?;
        if usize::from(ip.total_len()) != packet.len() {
            return Err("bytes after the IPv4 packet".into());
        }
        if !ip.verify_checksum() {
            return Err("IPv4 header checksum".into());
        }
        let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
        if ip.more_frags() || ip.frag_offset() != 0 {
            if ip.dont_frag() {
                return Err("a fragment with DF set".into());
            }
            let key = (src, dst, ip.next_header(), u32::from(ip.ident()));
            let offset = usize::from(ip.frag_offset());
            return self.add_piece(key, offset, ip.payload(), ip.more_frags());
        }
        Ipv4Repr::parse(&ip, &ChecksumCapabilities::default())
            .map_err(|_| "IPv4 does not parse")?;
        transport(ip.next_header(), src, dst, ip.payload())
    }

    fn ipv6(&mut self, packet: &[u8]) -> Result<(), String> {
        let ip = Ipv6Packet::new_checked(packet).map_err(|_| "IPv6 header malformed")?;
        let repr = Ipv6Repr::parse(&ip).map_err(|_| "IPv6 does not parse")?;
        if repr.buffer_len() + repr.payload_len != packet.len() {
            return Err("bytes after the IPv6 packet".into());
        }
        let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
        let payload = ip.payload();
        if ip.next_header() != IpProtocol::Ipv6Frag {
            return transport(ip.next_header(), src, dst, payload);
        }
        if payload.len() < FRAG6_LEN {
            return Err("short IPv6 fragment header".into());
        }
        let next = IpProtocol::from(payload[0]);
        let off_flags = u16::from_be_bytes([payload[2], payload[3]]);
        let id = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        let offset = usize::from(off_flags & !7);
        let more = off_flags & 1 == 1;
        self.add_piece((src, dst, next, id), offset, &payload[FRAG6_LEN..], more)
    }

    fn add_piece(
        &mut self,
        key: (IpAddress, IpAddress, IpProtocol, u32),
        offset: usize,
        data: &[u8],
        more: bool,
    ) -> Result<(), String> {
        let pieces = self.frags.entry(key).or_default();
        if pieces.parts.insert(offset, (data.to_vec(), more)).is_some() {
            return Err(format!("two fragments at offset {offset}"));
        }
        Ok(())
    }
}

impl Pieces {
    /// The datagram, if the pieces cover it exactly once and in order.
    fn join(&self) -> Result<Vec<u8>, String> {
        let mut whole = Vec::new();
        let mut last_more = true;
        for (&offset, (data, more)) in &self.parts {
            if !last_more {
                return Err(format!("a fragment at {offset} after the last one"));
            }
            if offset != whole.len() {
                return Err(format!("a gap or overlap at {offset} ({})", whole.len()));
            }
            if *more && data.len() % 8 != 0 {
                return Err(format!("a middle fragment of {} bytes", data.len()));
            }
            whole.extend_from_slice(data);
            last_more = *more;
        }
        if last_more {
            return Err("the last fragment is missing".into());
        }
        Ok(whole)
    }
}

/// A transport header and data, with its checksum over the pseudo-header.
fn transport(proto: IpProtocol, src: IpAddress, dst: IpAddress, data: &[u8]) -> Result<(), String> {
    let caps = ChecksumCapabilities::default();
    let ok = match proto {
        IpProtocol::Tcp => TcpPacket::new_checked(data)
            .is_ok_and(|p| TcpRepr::parse(&p, &src, &dst, &caps).is_ok()),
        IpProtocol::Udp => UdpPacket::new_checked(data)
            .is_ok_and(|p| UdpRepr::parse(&p, &src, &dst, &caps).is_ok()),
        IpProtocol::Icmp => Icmpv4Packet::new_checked(data).is_ok_and(|p| p.verify_checksum()),
        IpProtocol::Icmpv6 => match (src, dst) {
            (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                Icmpv6Packet::new_checked(data).is_ok_and(|p| p.verify_checksum(&s, &d))
            }
            _ => false,
        },
        other => return Err(format!("IP protocol {other}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{proto} header or checksum"))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

    /// A UDP datagram from the gateway to the guest, checksums right.
    fn udp_frame(data: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1];
        f.extend_from_slice(GATEWAY.as_bytes());
        f.extend_from_slice(&[8, 0]);
        let total = (20 + 8 + data.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 2, 2, 10, 0, 2, 100]);
        f.extend_from_slice(&[0, 53, 0x9c, 0x40]);
        f.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(data);
        crate::fuzzing::frames::fix_frame(&mut f);
        f
    }

    #[test]
    fn a_good_frame_passes_and_each_fault_is_named() {
        let mut check = FrameCheck::new(1500, GATEWAY);
        let good = udp_frame(b"answer");
        assert_eq!(check.batch(std::slice::from_ref(&good)), Ok(()));

        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(check.batch(&[bad_sum]).unwrap_err().contains("UDP"));

        let mut bad_ip = good.clone();
        bad_ip[14 + 8] ^= 1; // the TTL, under the header checksum
        assert!(check.batch(&[bad_ip]).unwrap_err().contains("IPv4 header"));

        let big = udp_frame(&[0; 1500]);
        assert!(check.batch(&[big]).unwrap_err().contains("MTU"));
    }

    #[test]
    fn fragments_must_join_into_a_valid_datagram() {
        let mut check = FrameCheck::new(1500, GATEWAY);
        let whole = udp_frame(&[7; 40]);
        let ip = &whole[14..];
        let payload = &ip[20..];
        let piece = |offset: usize, data: &[u8], more: bool| {
            let mut f = whole[..14 + 20].to_vec();
            f.extend_from_slice(data);
            let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
            p.set_total_len((20 + data.len()) as u16);
            p.set_ident(5);
            p.set_more_frags(more);
            p.set_frag_offset(offset as u16);
            p.fill_checksum();
            f
        };
        let first = piece(0, &payload[..24], true);
        let last = piece(24, &payload[24..], false);
        assert_eq!(check.batch(&[first.clone(), last.clone()]), Ok(()));
        assert!(
            check
                .batch(std::slice::from_ref(&first))
                .unwrap_err()
                .contains("last")
        );
        let mut wrong = last;
        *wrong.last_mut().unwrap() ^= 1;
        let mut p = Ipv4Packet::new_unchecked(&mut wrong[14..]);
        p.fill_checksum();
        assert!(check.batch(&[first, wrong]).unwrap_err().contains("joined"));
    }
}
