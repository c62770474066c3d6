//! What every frame the engine writes must be, checked write by write.
//!
//! A write is a frame and the virtio-net header the tap gets with it
//! (zeros on a tap without offload), as [`TapWrites`] records them. The
//! frame, after its partial checksum is completed as the receiver does,
//! or each frame the guest's kernel cuts from it (a TCP segment or UDP
//! train marked for segmentation), parses back with smoltcp's checked
//! parsers, carries valid checksums, fits the MTU plus the Ethernet
//! header and comes from the gateway's MAC; no IP packet or reassembled
//! datagram is over 65,535 bytes. The header's fields are checked against
//! the frame, read here from the virtio spec, not from `crate::vnet`. IP
//! fragments are collected per batch (the engine sends all pieces of a
//! datagram at once): they must join into a whole whose transport
//! checksum is valid, since only the first piece holds the transport
//! header and its checksum covers the whole.

use std::collections::BTreeMap;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6FragmentRepr, Ipv6Packet, Ipv6Repr, TcpPacket, TcpRepr,
    UDP_HEADER_LEN, UdpPacket, UdpRepr,
};

use crate::engine::{ETHERNET_HEADER_LEN, FrameSink, IPV6_FRAGMENT_HEADER_LEN, send_cut};
use crate::vnet;

/// The most an IPv4 packet (total length) or an IPv6 payload can hold.
const IP_MAX: usize = 65535;
/// `struct virtio_net_hdr`, from the virtio spec (5.1.6).
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// One write to the tap: the virtio-net header and the frame.
#[derive(Debug, Clone)]
pub struct Written {
    pub vnet: [u8; vnet::HEADER_LEN],
    pub frame: Vec<u8>,
}

/// The sink the harness gives the engine: what the event loop's
/// `TapSink` would write, each frame with its header (`vnet::header_for`
/// with offload, zeros without), trains whole for the guest's kernel to
/// cut when the tap cuts them.
pub struct TapWrites {
    offload: bool,
    /// The tap's MTU as the event loop knows it (the configured one).
    mtu: usize,
    pub writes: Vec<Written>,
}

impl TapWrites {
    pub fn new(offload: bool, mtu: usize) -> Self {
        TapWrites {
            offload,
            mtu,
            writes: Vec::new(),
        }
    }
}

impl FrameSink for TapWrites {
    fn send_frame(&mut self, frame: &mut [u8]) {
        let vnet = if self.offload {
            vnet::header_for(frame, self.mtu)
        } else {
            [0; vnet::HEADER_LEN]
        };
        self.writes.push(Written {
            vnet,
            frame: frame.to_vec(),
        });
    }

    fn send_udp_train(&mut self, frame: &mut [u8], size: usize) {
        if !self.offload {
            return send_cut(self, frame, size);
        }
        let vnet = vnet::udp_train_header(frame, size);
        self.writes.push(Written {
            vnet,
            frame: frame.to_vec(),
        });
    }
}

/// The fields of a virtio-net header (native byte order, as the tap).
struct VnetHeader {
    flags: u8,
    gso_type: u8,
    hdr_len: usize,
    gso_size: usize,
    csum_start: usize,
    csum_offset: usize,
}

impl VnetHeader {
    fn parse(h: &[u8; vnet::HEADER_LEN]) -> Self {
        let field = |at: usize| usize::from(u16::from_ne_bytes([h[at], h[at + 1]]));
        VnetHeader {
            flags: h[0],
            gso_type: h[1],
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
        }
    }
}

/// The fragments of one datagram seen in a batch, by offset.
#[derive(Default)]
struct Pieces {
    /// offset -> (data, more fragments follow)
    parts: BTreeMap<usize, (Vec<u8>, bool)>,
}

/// Checks the frames of one batch (the output of one engine call).
pub struct FrameCheck {
    max_frame: usize,
    gateway_mac: EthernetAddress,
    frags: BTreeMap<(IpAddress, IpAddress, IpProtocol, u32), Pieces>,
}

impl FrameCheck {
    pub fn new(mtu: usize, gateway_mac: EthernetAddress) -> Self {
        FrameCheck {
            max_frame: mtu + ETHERNET_HEADER_LEN,
            gateway_mac,
            frags: BTreeMap::new(),
        }
    }

    fn mtu(&self) -> usize {
        self.max_frame - ETHERNET_HEADER_LEN
    }

    /// Check a batch of writes; the error names the write and the fault.
    pub fn batch(&mut self, writes: &[Written]) -> Result<(), String> {
        self.frags.clear();
        for (i, w) in writes.iter().enumerate() {
            self.write(w).map_err(|e| {
                format!(
                    "frame {i} of {}: {e}: header {} frame {}",
                    writes.len(),
                    hex(&w.vnet),
                    hex(&w.frame)
                )
            })?;
        }
        for ((src, dst, proto, id), pieces) in std::mem::take(&mut self.frags) {
            let whole = pieces
                .join()
                .map_err(|e| format!("fragments {id} from {src} to {dst}: {e}"))?;
            let headers = if matches!(src, IpAddress::Ipv4(_)) {
                IPV4_HEADER_LEN
            } else {
                0
            };
            if headers + whole.len() > IP_MAX {
                return Err(format!(
                    "fragments {id} from {src} to {dst} join into {} bytes of payload, over 65,535 with the header",
                    whole.len()
                ));
            }
            transport(proto, src, dst, &whole)
                .map_err(|e| format!("joined fragments {id} from {src} to {dst}: {e}"))?;
        }
        Ok(())
    }

    fn write(&mut self, w: &Written) -> Result<(), String> {
        let hdr = VnetHeader::parse(&w.vnet);
        let mut frame = w.frame.clone();
        match hdr.flags {
            0 => {}
            F_NEEDS_CSUM => complete_checksum(&mut frame, &hdr)?,
            other => return Err(format!("virtio-net flags {other:#x}")),
        }
        match hdr.gso_type & !GSO_ECN {
            GSO_NONE => self.frame(&frame, self.max_frame),
            GSO_TCPV4 | GSO_TCPV6 => self.tcp_segment(&hdr, &frame),
            GSO_UDP_L4 => self.udp_train(&hdr, &frame),
            other => Err(format!("GSO type {other}")),
        }
    }

    /// A TCP segment for the guest's kernel to cut into `gso_size` bytes
    /// of payload per frame, each with all the headers.
    fn tcp_segment(&mut self, hdr: &VnetHeader, frame: &[u8]) -> Result<(), String> {
        let (v6, start) = transport_start(frame, IpProtocol::Tcp)?;
        if (hdr.gso_type & !GSO_ECN == GSO_TCPV6) != v6 {
            return Err(format!("GSO type {} on IPv6={v6}", hdr.gso_type));
        }
        let tcp_len = usize::from(frame.get(start + 12).ok_or("no TCP header")? >> 4) * 4;
        self.segmentation(hdr, start, start + tcp_len)?;
        self.frame(frame, ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + IP_MAX)
    }

    /// A train of UDP datagrams of `gso_size` bytes (the last may be
    /// shorter): checked as the frames the guest's kernel cuts from it.
    fn udp_train(&mut self, hdr: &VnetHeader, frame: &[u8]) -> Result<(), String> {
        let (v6, start) = transport_start(frame, IpProtocol::Udp)?;
        self.segmentation(hdr, start, start + UDP_HEADER_LEN)?;
        let headers = hdr.hdr_len;
        if frame.len() - headers <= hdr.gso_size {
            return Err(format!(
                "a train of {} bytes in {}-byte datagrams: the kernel cuts none",
                frame.len() - headers,
                hdr.gso_size
            ));
        }
        for chunk in frame[headers..].chunks(hdr.gso_size) {
            let mut f = [&frame[..headers], chunk].concat();
            let udp_len = UDP_HEADER_LEN + chunk.len();
            let (src, dst): (IpAddress, IpAddress) = if v6 {
                let mut ip = Ipv6Packet::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]);
                ip.set_payload_len(udp_len as u16);
                (ip.src_addr().into(), ip.dst_addr().into())
            } else {
                let mut ip = Ipv4Packet::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]);
                ip.set_total_len((start - ETHERNET_HEADER_LEN + udp_len) as u16);
                ip.fill_checksum();
                (ip.src_addr().into(), ip.dst_addr().into())
            };
            let mut udp = UdpPacket::new_unchecked(&mut f[start..]);
            udp.set_len(udp_len as u16);
            udp.fill_checksum(&src, &dst);
            self.frame(&f, self.max_frame)
                .map_err(|e| format!("a datagram cut from the train: {e}"))?;
        }
        Ok(())
    }

    /// What a segmentation request must say of a frame whose transport
    /// header starts at `start` and whose headers end at `headers`.
    fn segmentation(&self, hdr: &VnetHeader, start: usize, headers: usize) -> Result<(), String> {
        if hdr.flags & F_NEEDS_CSUM == 0 {
            return Err("segmentation without a partial checksum".into());
        }
        if hdr.csum_start != start {
            return Err(format!(
                "csum_start {} for a transport header at {start}",
                hdr.csum_start
            ));
        }
        if hdr.hdr_len != headers {
            return Err(format!(
                "hdr_len {} for {headers} bytes of headers",
                hdr.hdr_len
            ));
        }
        if hdr.gso_size == 0 || headers - ETHERNET_HEADER_LEN + hdr.gso_size > self.mtu() {
            return Err(format!(
                "split into {}-byte segments after {headers} bytes of headers: over the MTU",
                hdr.gso_size
            ));
        }
        Ok(())
    }

    fn frame(&mut self, frame: &[u8], max_len: usize) -> Result<(), String> {
        if frame.len() > max_len {
            return Err(format!(
                "{} bytes, more than the MTU allows ({max_len})",
                frame.len(),
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
        if packet.len() > IP_MAX {
            return Err(format!(
                "an IPv4 packet of {} bytes, over 65,535",
                packet.len()
            ));
        }
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
        if packet.len() > IPV6_HEADER_LEN + IP_MAX {
            return Err(format!(
                "an IPv6 payload of {} bytes, over 65,535",
                packet.len() - IPV6_HEADER_LEN
            ));
        }
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
        let header = Ipv6ExtHeader::new_checked(payload)
            .ok()
            .filter(|h| h.header_len() == 0)
            .ok_or("short or malformed IPv6 fragment header")?;
        let fields = Ipv6FragmentHeader::new_checked(header.payload())
            .and_then(|h| Ipv6FragmentRepr::parse(&h))
            .map_err(|_| "short IPv6 fragment header")?;
        let offset = usize::from(fields.frag_offset) * 8;
        let key = (src, dst, header.next_header(), fields.ident);
        let data = &payload[IPV6_FRAGMENT_HEADER_LEN..];
        self.add_piece(key, offset, data, fields.more_frags)
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

/// Where the `proto` header starts in a frame of an unfragmented IPv4
/// packet or an IPv6 one with no extension header (all a segment or a
/// train can be), and whether it is IPv6.
fn transport_start(frame: &[u8], proto: IpProtocol) -> Result<(bool, usize), String> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| "not Ethernet".to_string())?;
    let ip = eth.payload();
    let (v6, next, header) = match eth.ethertype() {
        EthernetProtocol::Ipv4 if ip.len() > IP_MAX => {
            return Err(format!("an IPv4 packet of {} bytes, over 65,535", ip.len()));
        }
        EthernetProtocol::Ipv6 if ip.len() > IPV6_HEADER_LEN + IP_MAX => {
            let payload = ip.len() - IPV6_HEADER_LEN;
            return Err(format!("an IPv6 payload of {payload} bytes, over 65,535"));
        }
        EthernetProtocol::Ipv4 => {
            let p = Ipv4Packet::new_checked(ip).map_err(|_| "IPv4 header malformed")?;
            if p.more_frags() || p.frag_offset() != 0 {
                return Err("a fragment marked for segmentation".into());
            }
            (false, p.next_header(), usize::from(p.header_len()))
        }
        EthernetProtocol::Ipv6 => {
            let p = Ipv6Packet::new_checked(ip).map_err(|_| "IPv6 header malformed")?;
            (true, p.next_header(), IPV6_HEADER_LEN)
        }
        other => return Err(format!("ethertype {other} marked for segmentation")),
    };
    if next != proto {
        return Err(format!("{next} marked for {proto} segmentation"));
    }
    Ok((v6, ETHERNET_HEADER_LEN + header))
}

/// Complete a partial checksum as the receiving kernel does: the sum of
/// the bytes from `csum_start` on, stored at `csum_start + csum_offset`.
fn complete_checksum(frame: &mut [u8], hdr: &VnetHeader) -> Result<(), String> {
    let at = hdr.csum_start + hdr.csum_offset;
    if hdr.csum_start > frame.len() || at + 2 > frame.len() {
        return Err(format!(
            "checksum at {} + {} in a {}-byte frame",
            hdr.csum_start,
            hdr.csum_offset,
            frame.len()
        ));
    }
    let mut sum: u64 = 0;
    for pair in frame[hdr.csum_start..].chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        sum += hi | pair.get(1).map_or(0, |&lo| u64::from(lo));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

    /// Frames written without a virtio-net header.
    fn plain<const N: usize>(frames: [Vec<u8>; N]) -> Vec<Written> {
        frames
            .into_iter()
            .map(|frame| Written {
                vnet: [0; vnet::HEADER_LEN],
                frame,
            })
            .collect()
    }

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
        assert_eq!(check.batch(&plain([good.clone()])), Ok(()));

        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert!(check.batch(&plain([bad_sum])).unwrap_err().contains("UDP"));

        let mut bad_ip = good.clone();
        bad_ip[14 + 8] ^= 1; // the TTL, under the header checksum
        assert!(
            check
                .batch(&plain([bad_ip]))
                .unwrap_err()
                .contains("IPv4 header")
        );

        let big = udp_frame(&[0; 1500]);
        assert!(check.batch(&plain([big])).unwrap_err().contains("MTU"));
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
        assert_eq!(check.batch(&plain([first.clone(), last.clone()])), Ok(()));
        assert!(
            check
                .batch(&plain([first.clone()]))
                .unwrap_err()
                .contains("last")
        );
        let mut wrong = last;
        *wrong.last_mut().unwrap() ^= 1;
        let mut p = Ipv4Packet::new_unchecked(&mut wrong[14..]);
        p.fill_checksum();
        assert!(
            check
                .batch(&plain([first, wrong]))
                .unwrap_err()
                .contains("joined")
        );
    }

    /// A TCP segment from the gateway with full checksums.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1];
        f.extend_from_slice(GATEWAY.as_bytes());
        f.extend_from_slice(&[8, 0, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 0, 2, 2, 10, 0, 2, 100]);
        f.extend_from_slice(&[0, 80, 0x9c, 0x40, 0, 0, 0, 7, 0, 0, 0, 9, 0x50, 0x18]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        let len = f.len() - 14;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_total_len(len as u16);
        ip.fill_checksum();
        let src = ip.src_addr().into();
        let dst = ip.dst_addr().into();
        TcpPacket::new_unchecked(&mut f[34..]).fill_checksum(&src, &dst);
        f
    }

    #[test]
    fn offload_writes_are_checked_as_the_guest_kernel_cuts_them() {
        let mut check = FrameCheck::new(1500, GATEWAY);
        let mut tap = TapWrites::new(true, 1500);
        tap.send_frame(&mut tcp_frame(&[5; 9000]));
        tap.send_udp_train(&mut udp_frame(&[7; 1500]), 500);
        assert_eq!(check.batch(&tap.writes), Ok(()));

        let mut tap = TapWrites::new(true, 1500);
        tap.send_udp_train(&mut udp_frame(&[7; 3000]), 1480);
        let e = check.batch(&tap.writes).unwrap_err();
        assert!(e.contains("over the MTU"), "{e}");

        let mut tap = TapWrites::new(true, 1500);
        tap.send_udp_train(&mut udp_frame(&[7; 400]), 400);
        let e = check.batch(&tap.writes).unwrap_err();
        assert!(e.contains("cuts none"), "{e}");

        // A segment past IPv4's largest packet, as a faulty emit path
        // would write it: header and lengths are the TCP segment's.
        let mut tap = TapWrites::new(true, 1500);
        tap.send_frame(&mut tcp_frame(&[5; 9000]));
        let mut w = tap.writes.remove(0);
        w.frame.resize(14 + 65_560, 5);
        let e = check.batch(&[w]).unwrap_err();
        assert!(e.contains("over 65,535"), "{e}");

        // A partial checksum that points past the frame.
        let mut w = Written {
            vnet: [0; vnet::HEADER_LEN],
            frame: udp_frame(b"x"),
        };
        w.vnet[0] = F_NEEDS_CSUM;
        w.vnet[6..8].copy_from_slice(&1000u16.to_ne_bytes());
        let e = check.batch(&[w]).unwrap_err();
        assert!(e.contains("checksum at 1000"), "{e}");
    }
}
