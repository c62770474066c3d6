//! The virtio-net header that a tap opened with `IFF_VNET_HDR` puts before
//! every frame, and what netferry writes there.
//!
//! With the header on and the tap's offloads enabled (`TUNSETOFFLOAD`),
//! the guest kernel hands netferry TCP segments of up to 64 KiB whatever
//! the MTU, their checksums left for the receiver to complete, and takes
//! such segments back: netferry writes one large segment with a header
//! saying "split this into MSS-sized frames" (`GSO_TCPV4/6`) and "the
//! checksum is partial" (`NEEDS_CSUM`), and the guest's kernel does the
//! rest. A segment for a local socket is delivered as it is, unsplit, the
//! way the kernel's own receive offload would have merged it.
//!
//! Every TCP segment netferry writes goes out with a partial checksum,
//! large or not, so nobody computes a TCP checksum on this path: a
//! partial checksum on a locally delivered packet is taken as verified.
//!
//! Where the kernel can (Linux 6.2 and later), datagrams from one host
//! socket that came in one batch go to the guest as one train: one IP
//! and UDP header, the datagrams back to back, and a header saying "cut
//! this into datagrams of this size" (`GSO_UDP_L4`). One write then
//! carries up to 64 datagrams. The guest's kernel may send such trains
//! too (a program's `UDP_SEGMENT` send), which netferry cuts. Everything
//! else (ARP, single datagrams, ICMP, NDP) carries its full checksum and
//! a header of zeros.

use smoltcp::wire::{
    ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN, checksum,
};

/// `struct virtio_net_hdr`: flags, gso_type, then four 16-bit fields.
/// A tap may be told to use a longer header (12 bytes for virtio 1.0);
/// the extra bytes are zero here and ignored on reading.
pub const HEADER_LEN: usize = 10;
/// The longest header netferry reads and writes; a tap set to a longer
/// one is set back to `HEADER_LEN` (`crate::setup::offload_of`), so
/// reads and writes always use the same length.
pub const MAX_HEADER_LEN: usize = 64;

const F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
/// Set beside a GSO type when the segments carry ECN's CWR flag.
const GSO_ECN: u8 = 0x80;
const TCP_CHECKSUM_OFFSET: usize = 16;
const UDP_CHECKSUM_OFFSET: usize = 6;

/// The header for `frame`, which netferry is about to write to the tap
/// whose IP MTU is `mtu`. For a TCP segment it also replaces the
/// checksum with the pseudo-header sum that `NEEDS_CSUM` asks for.
pub fn header_for(frame: &mut [u8], mtu: usize) -> [u8; HEADER_LEN] {
    let mut hdr = [0u8; HEADER_LEN];
    let Some(seg) = tcp_segment(frame) else {
        return hdr;
    };
    let csum = seg.tcp + TCP_CHECKSUM_OFFSET;
    frame[csum..csum + 2].copy_from_slice(&seg.pseudo_sum.to_be_bytes());
    hdr[0] = F_NEEDS_CSUM;
    put16(&mut hdr, 6, seg.tcp as u16);
    put16(&mut hdr, 8, TCP_CHECKSUM_OFFSET as u16);
    let headers = seg.tcp + seg.tcp_header_len;
    if seg.ip_len > mtu {
        // Each frame the guest's kernel cuts carries all the headers, so
        // what fits after them in the MTU is the segment size.
        let gso_size = mtu.saturating_sub(headers - ETHERNET_HEADER_LEN);
        if gso_size > 0 {
            hdr[1] = if seg.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            put16(&mut hdr, 2, headers as u16);
            put16(&mut hdr, 4, gso_size as u16);
        }
    }
    hdr
}

/// The header for a train of UDP datagrams of `size` bytes each (the
/// last may be shorter) behind the frame's one IP and UDP header. Like
/// `header_for`, it puts the pseudo-header sum in the checksum field.
/// Zeros for anything but a whole UDP packet.
pub fn udp_train_header(frame: &mut [u8], size: usize) -> [u8; HEADER_LEN] {
    let mut hdr = [0u8; HEADER_LEN];
    let Some(udp) = transport(frame, 17).filter(|u| u.start + UDP_HEADER_LEN <= frame.len()) else {
        return hdr;
    };
    let csum = udp.start + UDP_CHECKSUM_OFFSET;
    frame[csum..csum + 2].copy_from_slice(&udp.pseudo_sum.to_be_bytes());
    hdr[0] = F_NEEDS_CSUM;
    hdr[1] = GSO_UDP_L4;
    put16(&mut hdr, 2, (udp.start + UDP_HEADER_LEN) as u16);
    put16(&mut hdr, 4, size as u16);
    put16(&mut hdr, 6, udp.start as u16);
    put16(&mut hdr, 8, UDP_CHECKSUM_OFFSET as u16);
    hdr
}

/// The most datagrams one train may hold: the kernel's
/// `UDP_MAX_SEGMENTS` (128 since Linux 6.10, 64 before). A guest's
/// header with a tiny segment size would otherwise turn one frame into
/// tens of thousands of datagrams.
pub const MAX_TRAIN_SEGMENTS: usize = 128;

/// Why a train was not cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySegments(pub usize);

/// Cut a train of UDP datagrams as the kernel does: one frame per
/// `size` bytes of payload, each with its own lengths and checksums,
/// built in `buf` (reused, so a train costs no allocation) and handed to
/// `each`. A frame that is not a whole UDP packet goes to `each` as it
/// is. A train of more than [`MAX_TRAIN_SEGMENTS`] is refused whole.
/// For the guest's trains, and for sinks that are not a tap (tests,
/// fuzzing).
pub fn cut_udp_train(
    frame: &[u8],
    size: usize,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&mut [u8]),
) -> Result<(), TooManySegments> {
    use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, UdpPacket};
    buf.clear();
    let Some(udp) = transport(frame, 17).filter(|u| u.start + UDP_HEADER_LEN <= frame.len()) else {
        buf.extend_from_slice(frame);
        each(buf);
        return Ok(());
    };
    let headers = udp.start + UDP_HEADER_LEN;
    let size = size.max(1);
    let segments = (frame.len() - headers).div_ceil(size);
    if segments > MAX_TRAIN_SEGMENTS {
        return Err(TooManySegments(segments));
    }
    for chunk in frame[headers..].chunks(size) {
        buf.clear();
        buf.extend_from_slice(&frame[..headers]);
        buf.extend_from_slice(chunk);
        let f = &mut buf[..];
        // Each piece is shorter than the train, whose lengths the
        // transport check found consistent: no length here overflows.
        let (src, dst): (IpAddress, IpAddress) = if udp.v6 {
            let mut ip = Ipv6Packet::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]);
            ip.set_payload_len((UDP_HEADER_LEN + chunk.len()) as u16);
            (ip.src_addr().into(), ip.dst_addr().into())
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]);
            ip.set_total_len(
                (udp.start - ETHERNET_HEADER_LEN + UDP_HEADER_LEN + chunk.len()) as u16,
            );
            ip.fill_checksum();
            (ip.src_addr().into(), ip.dst_addr().into())
        };
        let mut u = UdpPacket::new_unchecked(&mut f[udp.start..]);
        u.set_len((UDP_HEADER_LEN + chunk.len()) as u16);
        u.fill_checksum(&src, &dst);
        each(f);
    }
    Ok(())
}

/// [`cut_udp_train`] into owned frames, for tests.
#[cfg(test)]
pub fn split_udp_train(frame: &[u8], size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let _ = cut_udp_train(frame, size, &mut Vec::new(), |d| out.push(d.to_vec()));
    out
}

/// The frame after a header read from the tap, or `None` when the read
/// was shorter than the header.
pub fn frame_of(read: &[u8], header_len: usize) -> Option<&[u8]> {
    read.get(header_len..)
}

/// The datagram size when a read from the tap is a train of UDP
/// datagrams (the guest's kernel sent them as one with UDP segmentation
/// offload): its header says GSO_UDP_L4 with a size.
pub fn udp_train_size(read: &[u8], header_len: usize) -> Option<usize> {
    if header_len < HEADER_LEN {
        return None;
    }
    let hdr: &[u8; HEADER_LEN] = read.get(..HEADER_LEN)?.try_into().ok()?;
    let (gso_type, size, _) = gso_of(hdr);
    (gso_type & !GSO_ECN == GSO_UDP_L4 && size > 0).then_some(usize::from(size))
}

/// Complete a partial checksum as a receiver's kernel would: sum the
/// bytes from `csum_start` to the end and store the result at
/// `csum_start + csum_offset`. For tests, which check every checksum.
pub fn complete_checksum(frame: &mut [u8], hdr: &[u8; HEADER_LEN]) {
    if hdr[0] & F_NEEDS_CSUM == 0 {
        return;
    }
    let start = get16(hdr, 6) as usize;
    let at = start + get16(hdr, 8) as usize;
    if at + 2 > frame.len() {
        return;
    }
    let sum = !checksum::data(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The GSO type, segment size and header length a header gives (all 0
/// for a frame not to be split).
pub fn gso_of(hdr: &[u8; HEADER_LEN]) -> (u8, u16, u16) {
    (hdr[1], get16(hdr, 4), get16(hdr, 2))
}

struct TcpSegment {
    v6: bool,
    /// Offset of the TCP header in the frame.
    tcp: usize,
    tcp_header_len: usize,
    /// The IP packet's length, headers included.
    ip_len: usize,
    /// The folded pseudo-header sum, not complemented.
    pseudo_sum: u16,
}

/// A TCP segment in an Ethernet frame, IPv4 unfragmented or IPv6 with no
/// extension header (all netferry sends), its lengths consistent.
fn tcp_segment(frame: &[u8]) -> Option<TcpSegment> {
    let t = transport(frame, 6)?;
    let tcp_header_len = usize::from(frame.get(t.start + 12)? >> 4) * 4;
    if tcp_header_len < TCP_HEADER_LEN || t.start + tcp_header_len > frame.len() {
        return None;
    }
    Some(TcpSegment {
        v6: t.v6,
        tcp: t.start,
        tcp_header_len,
        ip_len: t.ip_len,
        pseudo_sum: t.pseudo_sum,
    })
}

/// Where a packet of transport protocol `proto` starts in an Ethernet
/// frame, with what its checksum needs.
struct Transport {
    v6: bool,
    start: usize,
    ip_len: usize,
    /// The folded pseudo-header sum, not complemented.
    pseudo_sum: u16,
}

/// A `proto` packet in an Ethernet frame, IPv4 unfragmented or IPv6 with
/// no extension header (all netferry sends), the IP length the frame's.
fn transport(frame: &[u8], proto: u8) -> Option<Transport> {
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    let (v6, start, ip_len, pseudo) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let ip_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff;
            if ip[0] >> 4 != 4 || ihl < IPV4_HEADER_LEN || *ip.get(9)? != proto || fragment != 0 {
                return None;
            }
            let len = ip_len.checked_sub(ihl)?;
            let pseudo = pseudo_sum(ip.get(12..20)?, proto, len);
            (false, ETHERNET_HEADER_LEN + ihl, ip_len, pseudo)
        }
        0x86dd => {
            if ip.first()? >> 4 != 6 || *ip.get(6)? != proto {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let pseudo = pseudo_sum(ip.get(8..IPV6_HEADER_LEN)?, proto, len);
            (
                true,
                ETHERNET_HEADER_LEN + IPV6_HEADER_LEN,
                IPV6_HEADER_LEN + len,
                pseudo,
            )
        }
        _ => return None,
    };
    if ETHERNET_HEADER_LEN + ip_len != frame.len() || start > frame.len() {
        return None;
    }
    Some(Transport {
        v6,
        start,
        ip_len,
        pseudo_sum: pseudo,
    })
}

/// The folded pseudo-header sum, not complemented, over `addrs` (source
/// and destination, as they stand in the IP header), the protocol and
/// the transport length.
fn pseudo_sum(addrs: &[u8], proto: u8, len: usize) -> u16 {
    checksum::combine(&[checksum::data(addrs), u16::from(proto), len as u16])
}

fn put16(hdr: &mut [u8; HEADER_LEN], at: usize, v: u16) {
    // The tap uses the machine's own byte order for these fields.
    hdr[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

fn get16(hdr: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_ne_bytes([hdr[at], hdr[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Address, Ipv4Packet, Ipv4Repr, Ipv6Address, Ipv6Packet, Ipv6Repr, TcpControl,
        TcpPacket, TcpRepr, TcpSeqNumber,
    };

    fn segment(v6: bool, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(7),
            ack_number: Some(TcpSeqNumber(9)),
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let (src, dst): (IpAddress, IpAddress) = if v6 {
            (
                Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
                Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100).into(),
            )
        } else {
            (
                Ipv4Address::new(10, 0, 2, 2).into(),
                Ipv4Address::new(10, 0, 2, 100).into(),
            )
        };
        let ip_len = if v6 { 40 } else { 20 };
        let mut frame = vec![0u8; 14 + ip_len + tcp.buffer_len()];
        let mut eth = EthernetFrame::new_unchecked(&mut frame);
        EthernetRepr {
            src_addr: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: if v6 {
                EthernetProtocol::Ipv6
            } else {
                EthernetProtocol::Ipv4
            },
        }
        .emit(&mut eth);
        let caps = ChecksumCapabilities::default();
        match (src, dst) {
            (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
                let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
                Ipv4Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                }
                .emit(&mut ip, &caps);
                let mut t = TcpPacket::new_unchecked(ip.payload_mut());
                tcp.emit(&mut t, &src, &dst, &caps);
            }
            (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                let mut ip = Ipv6Packet::new_unchecked(eth.payload_mut());
                Ipv6Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                }
                .emit(&mut ip);
                let mut t = TcpPacket::new_unchecked(ip.payload_mut());
                tcp.emit(&mut t, &src, &dst, &caps);
            }
            _ => unreachable!(),
        }
        frame
    }

    #[test]
    fn a_small_segment_gets_a_partial_checksum_that_completes_to_the_full_one() {
        for v6 in [false, true] {
            let full = segment(v6, b"hello, guest");
            let mut frame = full.clone();
            let hdr = header_for(&mut frame, 1500);
            assert_eq!(hdr[0], F_NEEDS_CSUM);
            assert_eq!(gso_of(&hdr), (0, 0, 0), "fits the MTU: no segmentation");
            assert_ne!(
                frame, full,
                "the checksum field now holds the pseudo-header sum"
            );
            complete_checksum(&mut frame, &hdr);
            assert_eq!(frame, full, "v6={v6}");
        }
    }

    #[test]
    fn a_segment_over_the_mtu_is_marked_for_the_guest_kernel_to_split() {
        let payload: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        for (v6, kind, ip) in [(false, GSO_TCPV4, 20), (true, GSO_TCPV6, 40)] {
            let full = segment(v6, &payload);
            let mut frame = full.clone();
            let hdr = header_for(&mut frame, 1500);
            let (gso, size, hdr_len) = gso_of(&hdr);
            assert_eq!((gso, size), (kind, (1500 - ip - 20) as u16));
            assert_eq!(hdr_len as usize, 14 + ip + 20);
            assert_eq!(get16(&hdr, 6) as usize, 14 + ip, "csum_start");
            complete_checksum(&mut frame, &hdr);
            assert_eq!(frame, full);
        }
    }

    /// A train as the engine builds it: one IP and UDP header (checksum
    /// zero), the datagrams back to back.
    fn train(v6: bool, datagrams: &[&[u8]]) -> Vec<u8> {
        let payload = datagrams.concat();
        let mut frame = segment(v6, &payload);
        let ip = if v6 { 40 } else { 20 };
        // Make the TCP segment a UDP packet of the same length.
        let (proto_at, udp) = (14 + if v6 { 6 } else { 9 }, 14 + ip);
        frame[proto_at] = 17;
        if !v6 {
            Ipv4Packet::new_unchecked(&mut frame[14..]).fill_checksum();
        }
        frame.drain(udp + 8..udp + 20); // TCP's header is 20 bytes, UDP's 8
        let len = (8 + payload.len()) as u16;
        if v6 {
            Ipv6Packet::new_unchecked(&mut frame[14..]).set_payload_len(len);
        } else {
            let mut p = Ipv4Packet::new_unchecked(&mut frame[14..]);
            p.set_total_len(20 + len);
            p.fill_checksum();
        }
        frame[udp + 4..udp + 6].copy_from_slice(&len.to_be_bytes());
        frame[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
        frame
    }

    #[test]
    fn a_udp_train_is_cut_into_whole_datagrams_with_their_own_checksums() {
        use smoltcp::wire::UdpPacket;
        let datagrams: [&[u8]; 4] = [b"first 10 b", b"second 10b", b"third 10 b", b"last"];
        for v6 in [false, true] {
            let frame = train(v6, &datagrams);
            let cut = split_udp_train(&frame, 10);
            assert_eq!(cut.len(), 4);
            for (f, want) in cut.iter().zip(datagrams) {
                let (src, dst, udp): (IpAddress, IpAddress, &[u8]) = if v6 {
                    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
                    (ip.src_addr().into(), ip.dst_addr().into(), &f[14 + 40..])
                } else {
                    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
                    assert!(ip.verify_checksum());
                    assert_eq!(ip.total_len() as usize, f.len() - 14);
                    (ip.src_addr().into(), ip.dst_addr().into(), &f[14 + 20..])
                };
                let udp = UdpPacket::new_checked(udp).unwrap();
                assert!(udp.verify_checksum(&src, &dst), "v6={v6}");
                assert_eq!(udp.payload(), want);
            }
        }
    }

    /// A guest's train header with a tiny size must not turn one frame
    /// into thousands of datagrams: past the kernel's own limit the
    /// train is refused whole, and up to it every datagram is cut.
    #[test]
    fn a_train_of_more_segments_than_the_kernel_makes_is_refused_whole() {
        let payload = [7u8; MAX_TRAIN_SEGMENTS + 1];
        let frame = train(false, &[&payload]);
        let mut cut = 0;
        let mut buf = Vec::new();
        assert_eq!(
            cut_udp_train(&frame, 1, &mut buf, |_| cut += 1),
            Err(TooManySegments(MAX_TRAIN_SEGMENTS + 1))
        );
        assert_eq!(cut, 0);
        let frame = train(true, &[&payload[1..]]);
        assert_eq!(cut_udp_train(&frame, 1, &mut buf, |_| cut += 1), Ok(()));
        assert_eq!(cut, MAX_TRAIN_SEGMENTS);
        assert!(buf.capacity() < 200, "one buffer, reused");
    }

    #[test]
    fn a_udp_train_header_asks_the_kernel_to_cut_and_complete_it() {
        let datagrams: [&[u8]; 3] = [b"0123456789", b"abcdefghij", b"xyz"];
        for (v6, ip) in [(false, 20), (true, 40)] {
            let mut frame = train(v6, &datagrams);
            let hdr = udp_train_header(&mut frame, 10);
            assert_eq!(hdr[0], F_NEEDS_CSUM);
            assert_eq!(gso_of(&hdr), (GSO_UDP_L4, 10, (14 + ip + 8) as u16));
            assert_eq!(get16(&hdr, 6) as usize, 14 + ip, "csum_start");
            assert_eq!(get16(&hdr, 8), 6, "csum_offset");
            // Completed whole, the checksum is the full one of the
            // one large datagram: the pseudo-header sum went in right.
            complete_checksum(&mut frame, &hdr);
            let (src, dst): (IpAddress, IpAddress) = if v6 {
                let p = Ipv6Packet::new_checked(&frame[14..]).unwrap();
                (p.src_addr().into(), p.dst_addr().into())
            } else {
                let p = Ipv4Packet::new_checked(&frame[14..]).unwrap();
                (p.src_addr().into(), p.dst_addr().into())
            };
            let udp = smoltcp::wire::UdpPacket::new_checked(&frame[14 + ip..]).unwrap();
            assert!(udp.verify_checksum(&src, &dst), "v6={v6}");
        }
        let mut tcp = segment(false, b"not udp");
        assert_eq!(udp_train_header(&mut tcp, 10), [0; HEADER_LEN]);
    }

    #[test]
    fn a_read_is_a_udp_train_only_when_its_header_says_so() {
        let mut frame = train(false, &[b"0123456789", b"abc"]);
        let hdr = udp_train_header(&mut frame, 10);
        let read = [&hdr[..], &[0; 2], &frame].concat();
        assert_eq!(udp_train_size(&read, HEADER_LEN + 2), Some(10));
        let mut ecn = read.clone();
        ecn[1] |= GSO_ECN;
        assert_eq!(udp_train_size(&ecn, HEADER_LEN + 2), Some(10));
        // Without a header there is nothing to say it; a TCP segment or a
        // size of zero is not a train; a short read is not one either.
        assert_eq!(udp_train_size(&read, 0), None);
        let mut tcp = segment(false, &[7; 3000]);
        let tcp_hdr = header_for(&mut tcp, 1500);
        assert_eq!(
            udp_train_size(&[&tcp_hdr[..], &tcp].concat(), HEADER_LEN),
            None
        );
        let mut zero = read.clone();
        zero[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(udp_train_size(&zero, HEADER_LEN), None);
        assert_eq!(udp_train_size(&read[..HEADER_LEN - 1], HEADER_LEN), None);
    }

    #[test]
    fn anything_but_a_whole_tcp_segment_gets_a_header_of_zeros() {
        let mut udp = segment(false, b"x");
        udp[14 + 9] = 17;
        let before = udp.clone();
        assert_eq!(header_for(&mut udp, 1500), [0; HEADER_LEN]);
        assert_eq!(udp, before, "left as it is");
        let mut fragment = segment(false, b"x");
        fragment[14 + 6] = 0x20; // more fragments
        assert_eq!(header_for(&mut fragment, 1500), [0; HEADER_LEN]);
        let mut short = segment(true, b"abc");
        short.truncate(short.len() - 1);
        assert_eq!(header_for(&mut short, 1500), [0; HEADER_LEN]);
        for len in 0..20 {
            let mut cut = segment(false, b"abc");
            cut.truncate(len);
            assert_eq!(header_for(&mut cut, 1500), [0; HEADER_LEN]);
        }
        assert_eq!(frame_of(&[0; 4], HEADER_LEN), None);
        assert_eq!(frame_of(&[0; 12], HEADER_LEN), Some(&[0u8, 0][..]));
    }
}
