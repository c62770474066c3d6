//! IP fragments, both ways and both families.
//!
//! In: the guest's fragmented datagrams (IPv4 fragments, IPv6 fragment
//! headers) are put back together here, within fixed bounds on how many
//! may be under way, how large each may grow and how long each may take,
//! so fragments cannot be used to make netferry hold memory. Out: a
//! datagram from the host larger than the guest's MTU is split, since
//! netferry is the sender on that link (IPv4 fragments; an IPv6 fragment
//! header). TCP is never fragmented: its segments are sized to the MTU.

use std::collections::HashMap;
use std::net::IpAddr;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    IPV4_HEADER_LEN, IpProtocol, Ipv6ExtHeader, Ipv6ExtHeaderRepr, Ipv6FragmentHeader,
    Ipv6FragmentRepr,
};

/// Datagrams being put back together at once; the oldest is dropped to
/// make room.
pub const MAX_PARTIALS: usize = 64;
/// The largest IP packet length either family's 16-bit length field
/// can state: IPv4's total length (header included), IPv6's payload
/// length (the 40-byte header not included).
pub const MAX_DATAGRAM: usize = 65535;
/// A datagram whose fragments have not all come by then is dropped, as
/// Linux does (`ipfrag_time`).
pub const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// IPv6's fragment header: the two bytes every extension header starts
/// with, then the six of smoltcp's `Ipv6FragmentHeader` (smoltcp names
/// no constant for the whole).
pub const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
/// Fragment offsets count in units of this many bytes: every piece but
/// the last carries a multiple of it, so at least this much.
pub const FRAGMENT_UNIT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol (IPv4) or the next header (IPv6).
    pub proto: u8,
    pub id: u32,
}

struct Partial {
    data: Vec<u8>,
    /// Byte ranges received, sorted and disjoint.
    have: Vec<(usize, usize)>,
    /// Known once the last fragment (no "more fragments") has come.
    total: Option<usize>,
    started: Instant,
}

/// One fragment, as the parser found it.
pub struct Fragment<'a> {
    pub key: FragKey,
    /// Byte offset of `data` in the datagram's payload.
    pub offset: usize,
    pub more: bool,
    pub data: &'a [u8],
}

/// The largest payload an IP packet of `addr`'s family can carry behind
/// the plain header netferry emits: IPv4's total length counts its own
/// header, IPv6's payload length does not. A reassembled datagram, and
/// every packet the engine sends, stays within it: a larger one would
/// not fit the length field (the first abort a guest could cause was a
/// reassembled IPv4 datagram past it).
pub fn max_payload(addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(_) => MAX_DATAGRAM - IPV4_HEADER_LEN,
        IpAddr::V6(_) => MAX_DATAGRAM,
    }
}

/// An IPv6 fragment header at the start of `payload`: the next header,
/// the fragment's fields (its offset in `FRAGMENT_UNIT`s) and the data
/// after it. smoltcp's generic extension header would read the second
/// byte as a length; in a fragment header it is reserved and ignored on
/// reception (RFC 8200, 4.5), so only the first byte is taken from it.
pub fn parse_v6_header(payload: &[u8]) -> Option<(IpProtocol, Ipv6FragmentRepr, &[u8])> {
    let (header, data) = payload.split_at_checked(IPV6_FRAGMENT_HEADER_LEN)?;
    let next = Ipv6ExtHeader::new_unchecked(header).next_header();
    let fields = Ipv6FragmentHeader::new_checked(&header[2..]).ok()?;
    let repr = Ipv6FragmentRepr::parse(&fields).ok()?;
    Some((next, repr, data))
}

/// Write an IPv6 fragment header into the first `IPV6_FRAGMENT_HEADER_LEN`
/// bytes of `buf`.
pub fn emit_v6_header(buf: &mut [u8], next_header: IpProtocol, repr: &Ipv6FragmentRepr) {
    let ext = Ipv6ExtHeaderRepr {
        next_header,
        // Reserved in a fragment header: zero.
        length: 0,
        data: &[],
    };
    ext.emit(&mut Ipv6ExtHeader::new_unchecked(&mut *buf));
    repr.emit(&mut Ipv6FragmentHeader::new_unchecked(
        &mut buf[2..IPV6_FRAGMENT_HEADER_LEN],
    ));
}

/// Why a fragment was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It reaches past the largest payload of its family (IPv6 answers
    /// with a parameter problem, RFC 8200 4.5).
    TooLarge,
    /// It overlaps another, contradicts the known end, or is not a
    /// multiple of 8 bytes where it must be.
    Inconsistent,
}

#[derive(Default)]
pub struct Reassembly {
    partials: HashMap<FragKey, Partial>,
}

impl Reassembly {
    /// Add a fragment: `Ok(Some(payload))` once the last piece is in,
    /// `Ok(None)` while pieces are missing. A refused fragment drops its
    /// whole datagram.
    pub fn add(&mut self, now: Instant, f: Fragment) -> Result<Option<Vec<u8>>, Refused> {
        let end = f
            .offset
            .checked_add(f.data.len())
            .filter(|&end| end <= max_payload(f.key.src));
        let Some(end) = end else {
            log::debug!("fragments: dropping a datagram past the largest IP payload");
            self.partials.remove(&f.key);
            return Err(Refused::TooLarge);
        };
        if f.more && !f.data.len().is_multiple_of(FRAGMENT_UNIT) {
            self.partials.remove(&f.key);
            return Err(Refused::Inconsistent);
        }
        if !self.partials.contains_key(&f.key) && self.partials.len() >= MAX_PARTIALS {
            let oldest = self
                .partials
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                log::debug!("fragments: {MAX_PARTIALS} datagrams under way, dropping the oldest");
                self.partials.remove(&k);
            }
        }
        let p = self.partials.entry(f.key).or_insert_with(|| Partial {
            data: Vec::new(),
            have: Vec::new(),
            total: None,
            started: now,
        });
        let overlaps = p.have.iter().any(|&(s, e)| f.offset < e && s < end);
        let past_end = p.total.is_some_and(|t| end > t || (!f.more && end != t));
        let short_last = !f.more && p.have.iter().any(|&(_, e)| e > end);
        if overlaps || past_end || short_last {
            log::debug!("fragments: dropping a datagram with inconsistent fragments");
            self.partials.remove(&f.key);
            return Err(Refused::Inconsistent);
        }
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[f.offset..end].copy_from_slice(f.data);
        p.have.push((f.offset, end));
        p.have.sort_unstable();
        if !f.more {
            p.total = Some(end);
        }
        let Some(total) = p.total else {
            return Ok(None);
        };
        let mut reached = 0;
        for &(s, e) in &p.have {
            if s > reached {
                return Ok(None);
            }
            reached = reached.max(e);
        }
        if reached < total {
            return Ok(None);
        }
        Ok(self.partials.remove(&f.key).map(|p| p.data))
    }

    /// Drop datagrams that took too long.
    pub fn expire(&mut self, now: Instant) {
        self.partials
            .retain(|_, p| now - p.started <= FRAGMENT_TIMEOUT);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.partials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partials.is_empty()
    }
}

/// Split `payload` into pieces of at most `room` bytes, each but the last
/// a multiple of 8: (offset, piece, more fragments follow).
pub fn pieces(payload: &[u8], room: usize) -> impl Iterator<Item = (usize, &[u8], bool)> {
    let step = (room / FRAGMENT_UNIT).max(1) * FRAGMENT_UNIT;
    let n = payload.len();
    (0..n.div_ceil(step)).map(move |i| {
        let start = i * step;
        let end = (start + step).min(n);
        (start, &payload[start..end], end < n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragKey {
        FragKey {
            src: "10.0.2.100".parse().unwrap(),
            dst: "10.0.2.2".parse().unwrap(),
            proto: 17,
            id,
        }
    }

    fn frag(id: u32, offset: usize, more: bool, data: &[u8]) -> Fragment<'_> {
        Fragment {
            key: key(id),
            offset,
            more,
            data,
        }
    }

    #[test]
    fn out_of_order_fragments_come_back_whole() {
        let data: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let parts: Vec<_> = pieces(&data, 1480).collect();
        assert_eq!(parts.len(), 3);
        let mut r = Reassembly::default();
        let t = Instant::from_secs(1);
        for i in [2, 0] {
            let (offset, piece, more) = parts[i];
            assert_eq!(r.add(t, frag(1, offset, more, piece)), Ok(None));
        }
        let (offset, piece, more) = parts[1];
        assert_eq!(r.add(t, frag(1, offset, more, piece)), Ok(Some(data)));
        assert!(r.is_empty());
    }

    #[test]
    fn overlaps_oversize_and_odd_lengths_drop_the_datagram() {
        let mut r = Reassembly::default();
        let t = Instant::from_secs(1);
        assert_eq!(r.add(t, frag(2, 0, true, &[0; 16])), Ok(None));
        assert_eq!(
            r.add(t, frag(2, 8, false, &[0; 16])),
            Err(Refused::Inconsistent),
            "overlap"
        );
        assert!(r.is_empty());
        assert_eq!(
            r.add(t, frag(3, 65528, false, &[0; 16])),
            Err(Refused::TooLarge)
        );
        assert_eq!(
            r.add(t, frag(4, 0, true, &[0; 15])),
            Err(Refused::Inconsistent),
            "not a multiple of 8"
        );
        assert!(r.is_empty());
    }

    /// The first abort a guest could cause: IPv4 fragments adding up to
    /// more payload than a 16-bit total length can state with the header.
    #[test]
    fn each_family_stops_at_its_own_largest_payload() {
        let mut r = Reassembly::default();
        let t = Instant::from_secs(1);
        let v4_max = MAX_DATAGRAM - IPV4_HEADER_LEN;
        let last = |id, end: usize| frag(id, end - 8, false, &[0; 8]);
        assert_eq!(r.add(t, last(5, v4_max + 8)), Err(Refused::TooLarge));
        assert_eq!(r.add(t, last(5, v4_max)), Ok(None), "65,515 is allowed");
        let v6 = |offset, data| Fragment {
            key: FragKey {
                src: "fd00::100".parse().unwrap(),
                dst: "fd00::2".parse().unwrap(),
                proto: 17,
                id: 6,
            },
            offset,
            more: false,
            data,
        };
        assert_eq!(r.add(t, v6(65528, &[0; 7])), Ok(None), "65,535 is allowed");
        assert_eq!(r.add(t, v6(65528, &[0; 8])), Err(Refused::TooLarge));
        assert_eq!(
            r.add(t, v6(usize::MAX - 3, &[0; 8])),
            Err(Refused::TooLarge),
            "an offset that overflows"
        );
    }

    #[test]
    fn partials_are_bounded_in_number_and_time() {
        let mut r = Reassembly::default();
        for id in 0..1000 {
            let _ = r.add(Instant::from_millis(id as i64), frag(id, 0, true, &[0; 8]));
        }
        assert_eq!(r.len(), MAX_PARTIALS);
        r.expire(Instant::from_secs(1000));
        assert!(r.is_empty());
    }
}
