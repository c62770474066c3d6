//! IPv4 input: a guest's IPv4 packet, parsed and handed to its protocol.
//!
//! A packet is checked before any of its lengths is used, the guest's MAC
//! is learnt from its source, and the transport payload goes to TCP, UDP
//! or ICMP. Fragments, which smoltcp's parser refuses, are joined here
//! (with `frag::Reassembly` holding the pieces) and the whole datagram is
//! handled as if it had come in one frame. Nothing here answers the guest
//! itself; that is for the protocol handlers.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
};

use super::{ETHERNET_HEADER_LEN, Engine, FrameSink, Host, Packet, frag};

impl<H: Host> Engine<H> {
    /// An IPv4 frame from the guest.
    pub(super) fn process_ipv4<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            self.stats.frames_dropped += 1;
            log::trace!("dropping a malformed IPv4 packet");
            return;
        };
        if ip.more_frags() || ip.frag_offset() != 0 {
            // smoltcp's parser refuses fragments; they are ours to join.
            if self.caps.checksum.ipv4.rx() && !ip.verify_checksum() {
                return;
            }
            return self.reassemble_v4(now, &eth, &ip, sink);
        }
        let Ok(ip_repr) = Ipv4Repr::parse(&ip, &self.caps.checksum) else {
            log::trace!("dropping an IPv4 packet that does not parse");
            return;
        };
        let guest_mac = eth.src_addr();
        if self.plan.v4.contains(ip_repr.src_addr) {
            self.learn_guest(ip_repr.src_addr.into(), guest_mac);
        }
        let total = ip.total_len() as usize;
        let header = ip.header_len() as usize;
        let packet = eth.payload();
        let pkt = Packet {
            guest_mac,
            src: ip_repr.src_addr.into(),
            dst: ip_repr.dst_addr.into(),
            payload: ip.payload(),
            quote: &packet[..(header + 8).min(total)],
        };
        match ip_repr.next_header {
            IpProtocol::Tcp => self.process_tcp(now, frame, &pkt, sink),
            IpProtocol::Udp => self.process_udp(now, &pkt, sink),
            IpProtocol::Icmp => self.process_icmp(now, &pkt, sink),
            other => log::trace!("dropping IP protocol {other} to {}", ip_repr.dst_addr),
        }
    }

    /// A fragment of a guest IPv4 datagram: once all are in, the whole is
    /// handled as if it had come in one frame.
    fn reassemble_v4<S: FrameSink>(
        &mut self,
        now: Instant,
        eth: &EthernetFrame<&[u8]>,
        ip: &Ipv4Packet<&[u8]>,
        sink: &mut S,
    ) {
        let repr = Ipv4Repr {
            src_addr: ip.src_addr(),
            dst_addr: ip.dst_addr(),
            next_header: ip.next_header(),
            payload_len: 0,
            hop_limit: ip.hop_limit(),
        };
        let fragment = frag::Fragment {
            key: frag::FragKey {
                src: repr.src_addr.into(),
                dst: repr.dst_addr.into(),
                proto: u8::from(repr.next_header),
                id: u32::from(ip.ident()),
            },
            offset: ip.frag_offset() as usize,
            more: ip.more_frags(),
            data: ip.payload(),
        };
        let Ok(Some(whole)) = self.frags.add(now, fragment) else {
            return;
        };
        let inner = Ipv4Repr {
            payload_len: whole.len(),
            ..repr
        };
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + inner.buffer_len() + whole.len()];
        let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: eth.src_addr(),
            dst_addr: eth.dst_addr(),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        inner.emit(&mut p, &ChecksumCapabilities::default());
        p.payload_mut().copy_from_slice(&whole);
        log::debug!("reassembled a {}-byte IPv4 datagram", whole.len());
        self.process_ipv4(now, &frame, sink);
    }
}
