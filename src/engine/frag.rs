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

/// Datagrams being put back together at once; the oldest is dropped to
/// make room.
pub const MAX_PARTIALS: usize = 64;
/// The largest datagram either family can carry.
pub const MAX_DATAGRAM: usize = 65535;
/// A datagram whose fragments have not all come by then is dropped, as
/// Linux does (`ipfrag_time`).
pub const FRAGMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// IPv6's fragment header.
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

#[derive(Default)]
pub struct Reassembly {
    partials: HashMap<FragKey, Partial>,
}

impl Reassembly {
    /// Add a fragment; the whole payload once the last piece is in.
    /// Overlapping or oversized fragments drop their datagram.
    pub fn add(&mut self, now: Instant, f: Fragment) -> Option<Vec<u8>> {
        let end = f.offset.checked_add(f.data.len())?;
        if end > MAX_DATAGRAM || (f.more && !f.data.len().is_multiple_of(8)) {
            self.partials.remove(&f.key);
            return None;
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
            return None;
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
        let total = p.total?;
        let mut reached = 0;
        for &(s, e) in &p.have {
            if s > reached {
                return None;
            }
            reached = reached.max(e);
        }
        if reached < total {
            return None;
        }
        self.partials.remove(&f.key).map(|p| p.data)
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
        assert!(
            r.add(t, frag(1, parts[2].0, parts[2].2, parts[2].1))
                .is_none()
        );
        assert!(
            r.add(t, frag(1, parts[0].0, parts[0].2, parts[0].1))
                .is_none()
        );
        assert_eq!(
            r.add(t, frag(1, parts[1].0, parts[1].2, parts[1].1)),
            Some(data)
        );
        assert!(r.is_empty());
    }

    #[test]
    fn overlaps_oversize_and_odd_lengths_drop_the_datagram() {
        let mut r = Reassembly::default();
        let t = Instant::from_secs(1);
        assert!(r.add(t, frag(2, 0, true, &[0; 16])).is_none());
        assert!(r.add(t, frag(2, 8, false, &[0; 16])).is_none(), "overlap");
        assert!(r.is_empty());
        assert!(
            r.add(t, frag(3, 65528, false, &[0; 16])).is_none(),
            "too big"
        );
        assert!(
            r.add(t, frag(4, 0, true, &[0; 15])).is_none(),
            "not a multiple of 8"
        );
        assert!(r.is_empty());
    }

    #[test]
    fn partials_are_bounded_in_number_and_time() {
        let mut r = Reassembly::default();
        for id in 0..1000 {
            r.add(Instant::from_millis(id as i64), frag(id, 0, true, &[0; 8]));
        }
        assert_eq!(r.len(), MAX_PARTIALS);
        r.expire(Instant::from_secs(1000));
        assert!(r.is_empty());
    }
}
