//! The wire format of rtnetlink: requests built byte by byte, and
//! answers parsed with every length checked first, so that no answer,
//! however odd, makes a read go out of bounds. Sans-IO: the socket is the
//! parent module's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::{Addr, Family, LinkChange, Route};

// Values from the kernel's uapi headers (linux/netlink.h, rtnetlink.h,
// if_link.h, if_addr.h): a stable ABI. Named here with the types this file
// uses them as, since libc spreads them over several integer types.
const NLMSG_HDR_LEN: usize = 16;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an error message's header: the request comes back as its header
/// only, and extended-ack attributes follow.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Attribute type bits that are flags, not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

pub(super) const RTM_NEWLINK: u16 = 16;
pub(super) const RTM_GETLINK: u16 = 18;
pub(super) const RTM_NEWADDR: u16 = 20;
pub(super) const RTM_GETADDR: u16 = 22;
pub(super) const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_GETROUTE: u16 = 26;

const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;

pub(super) const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_DEPRECATED: u32 = 0x20;
pub(super) const IFA_F_NOPREFIXROUTE: u32 = 0x200;

pub(super) const RTMSG_LEN: usize = 12;
const RTNEXTHOP_LEN: usize = 8;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTNH_F_ONLINK: u32 = 0x4;

/// What is wrong with a buffer the kernel sent.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Malformed(pub(super) &'static str);

pub(super) fn link_request(index: u32, change: &LinkChange) -> Request {
    let mut flags = 0;
    let mut mask = 0;
    for (want, flag) in [(change.up, libc::IFF_UP), (change.noarp, libc::IFF_NOARP)] {
        if let Some(on) = want {
            mask |= flag as u32;
            if on {
                flags |= flag as u32;
            }
        }
    }
    let mut req = Request::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
    req.push(&ifinfomsg(index, flags, mask));
    if let Some(mtu) = change.mtu {
        req.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    req
}

pub(super) fn addr_request(index: u32, addr: &Addr) -> Request {
    let family = Family::of(addr.addr);
    let mut flags = 0;
    if family == Family::V6 {
        flags |= IFA_F_NODAD;
    }
    if addr.no_prefix_route {
        flags |= IFA_F_NOPREFIXROUTE;
    }
    let mut req = Request::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    let mut ifa = [0u8; IFADDRMSG_LEN];
    ifa[0] = family.af();
    ifa[1] = addr.prefix_len;
    // The 8-bit field holds the flags that fit; IFA_FLAGS holds them all.
    ifa[2] = (flags & 0xff) as u8;
    ifa[3] = RT_SCOPE_UNIVERSE;
    ifa[4..8].copy_from_slice(&index.to_ne_bytes());
    req.push(&ifa);
    let bytes = ip_bytes(addr.addr);
    req.attr(IFA_LOCAL, &bytes);
    req.attr(IFA_ADDRESS, &bytes);
    req.attr(IFA_FLAGS, &flags.to_ne_bytes());
    req
}

/// The caller has checked that the gateway is of the route's family.
pub(super) fn route_request(index: u32, route: &Route) -> Request {
    let family = Family::of(route.dst);
    let mut req = Request::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    let mut rtm = [0u8; RTMSG_LEN];
    rtm[0] = family.af();
    rtm[1] = route.prefix_len;
    rtm[4] = RT_TABLE_MAIN;
    rtm[5] = RTPROT_BOOT;
    // A route without a gateway reaches its destination on this link.
    rtm[6] = if route.gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    rtm[7] = RTN_UNICAST;
    let flags = if route.onlink { RTNH_F_ONLINK } else { 0 };
    rtm[8..12].copy_from_slice(&flags.to_ne_bytes());
    req.push(&rtm);
    if route.prefix_len > 0 {
        req.attr(RTA_DST, &ip_bytes(route.dst));
    }
    req.attr(RTA_OIF, &index.to_ne_bytes());
    if let Some(gw) = route.gateway {
        req.attr(RTA_GATEWAY, &ip_bytes(gw));
    }
    if let Some(metric) = route.metric {
        req.attr(RTA_PRIORITY, &metric.to_ne_bytes());
    }
    req
}

fn ip_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub(super) fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut ifi = [0u8; IFINFOMSG_LEN];
    ifi[0] = libc::AF_UNSPEC as u8;
    ifi[4..8].copy_from_slice(&index.to_ne_bytes());
    ifi[8..12].copy_from_slice(&flags.to_ne_bytes());
    ifi[12..16].copy_from_slice(&change.to_ne_bytes());
    ifi
}

/// One request being built: header, fixed part, attributes, each padded
/// to 4 bytes as netlink wants.
pub(super) struct Request {
    buf: Vec<u8>,
}

impl Request {
    pub(super) fn new(kind: u16, flags: u16) -> Request {
        let mut buf = vec![0u8; NLMSG_HDR_LEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Request { buf }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub(super) fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.push(payload);
    }

    /// The finished message, with its length and sequence number.
    pub(super) fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// One netlink message in a received buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Msg<'a> {
    pub(super) kind: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
    pub(super) payload: &'a [u8],
}

/// The messages in `buf`; an item is an error, and the last one, when a
/// length does not fit.
pub(super) fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(hdr) = rest.get(..NLMSG_HDR_LEN) else {
            rest = &[];
            return Some(Err(Malformed("message shorter than its header")));
        };
        let len = u32_at(hdr, 0) as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("message length out of bounds")));
        }
        let msg = Msg {
            kind: u16_at(hdr, 4),
            flags: u16_at(hdr, 6),
            seq: u32_at(hdr, 8),
            payload: &rest[NLMSG_HDR_LEN..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// The attributes (type without flag bits, payload) in `buf`.
fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        // Fewer than 4 bytes left is padding, not an attribute.
        if rest.len() < 4 {
            return None;
        }
        let len = u16_at(rest, 0) as usize;
        if len < 4 || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        let item = (u16_at(rest, 2) & NLA_TYPE_MASK, &rest[4..len]);
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(item))
    })
}

// Callers check `buf` holds the bytes first; out of bounds reads as 0.
fn u16_at(buf: &[u8], at: usize) -> u16 {
    buf.get(at..at + 2)
        .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u32_attr(data: &[u8]) -> Result<u32, Malformed> {
    if data.len() != 4 {
        return Err(Malformed("32-bit attribute of the wrong length"));
    }
    Ok(u32_at(data, 0))
}

fn ip_attr(family: Family, data: &[u8]) -> Result<IpAddr, Malformed> {
    match (family, data.len()) {
        (Family::V4, 4) => Ok(IpAddr::V4(Ipv4Addr::new(
            data[0], data[1], data[2], data[3],
        ))),
        (Family::V6, 16) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(data);
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => Err(Malformed("address attribute of the wrong length")),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Link {
    pub(super) index: u32,
    pub(super) flags: u32,
    pub(super) name: String,
    pub(super) mtu: u32,
}

pub(super) fn parse_link(payload: &[u8]) -> Result<Link, Malformed> {
    if payload.len() < IFINFOMSG_LEN {
        return Err(Malformed("link message shorter than ifinfomsg"));
    }
    let mut link = Link {
        index: u32_at(payload, 4),
        flags: u32_at(payload, 8),
        name: String::new(),
        mtu: 0,
    };
    for attr in attrs(&payload[IFINFOMSG_LEN..]) {
        match attr? {
            (IFLA_IFNAME, data) => {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                link.name = String::from_utf8_lossy(&data[..end]).into_owned();
            }
            (IFLA_MTU, data) => link.mtu = u32_attr(data)?,
            _ => {}
        }
    }
    Ok(link)
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct AddrInfo {
    pub(super) index: u32,
    pub(super) prefix_len: u8,
    pub(super) scope: u8,
    pub(super) flags: u32,
    pub(super) addr: IpAddr,
}

impl AddrInfo {
    /// Global or site addresses that work: link-local ones belong to the
    /// host's link, and deprecated or duplicate ones are on their way out.
    pub(super) fn worth_copying(&self) -> bool {
        self.scope < RT_SCOPE_LINK && self.flags & (IFA_F_DEPRECATED | IFA_F_DADFAILED) == 0
    }
}

/// `None` for families other than IPv4 and IPv6, and for messages without
/// an address.
pub(super) fn parse_addr(payload: &[u8]) -> Result<Option<AddrInfo>, Malformed> {
    if payload.len() < IFADDRMSG_LEN {
        return Err(Malformed("address message shorter than ifaddrmsg"));
    }
    let Some(family) = Family::from_af(payload[0]) else {
        return Ok(None);
    };
    let mut flags = u32::from(payload[2]);
    let (mut local, mut address) = (None, None);
    for attr in attrs(&payload[IFADDRMSG_LEN..]) {
        match attr? {
            // On a point-to-point link IFA_ADDRESS is the peer and
            // IFA_LOCAL ours; otherwise either is ours.
            (IFA_LOCAL, data) => local = Some(ip_attr(family, data)?),
            (IFA_ADDRESS, data) => address = Some(ip_attr(family, data)?),
            (IFA_FLAGS, data) => flags = u32_attr(data)?,
            _ => {}
        }
    }
    Ok(local.or(address).map(|addr| AddrInfo {
        index: u32_at(payload, 4),
        prefix_len: payload[1],
        scope: payload[3],
        flags,
        addr,
    }))
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Nexthop {
    pub(super) oif: u32,
    pub(super) gateway: Option<IpAddr>,
    pub(super) flags: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct RouteInfo {
    pub(super) family: Family,
    pub(super) dst_len: u8,
    pub(super) table: u32,
    pub(super) kind: u8,
    pub(super) dst: IpAddr,
    pub(super) priority: Option<u32>,
    /// One for a plain route, several for a multipath one, none for one
    /// without an interface (or via another family).
    pub(super) nexthops: Vec<Nexthop>,
}

impl RouteInfo {
    pub(super) fn in_main_table_unicast(&self) -> bool {
        self.table == u32::from(RT_TABLE_MAIN) && self.kind == RTN_UNICAST
    }

    /// Link-local routes describe the host's link, not the namespace's
    /// (and the kernel makes fe80::/64 itself on every IPv6 link).
    pub(super) fn dst_is_link_local(&self) -> bool {
        match self.dst {
            IpAddr::V4(a) => self.dst_len >= 16 && a.is_link_local(),
            IpAddr::V6(a) => self.dst_len >= 10 && a.is_unicast_link_local(),
        }
    }

    pub(super) fn oif(&self) -> Option<u32> {
        self.nexthops.first().map(|n| n.oif).filter(|&i| i != 0)
    }

    /// As a route to copy, if it goes through interface `index` alone. Of
    /// a multipath route (the same interface, several gateways) the first
    /// gateway is taken.
    pub(super) fn through(&self, index: u32) -> Option<Route> {
        if self.nexthops.is_empty() || self.nexthops.iter().any(|n| n.oif != index) {
            return None;
        }
        let first = &self.nexthops[0];
        Some(Route {
            dst: self.dst,
            prefix_len: self.dst_len,
            gateway: first.gateway,
            metric: self.priority,
            onlink: first.flags & RTNH_F_ONLINK != 0,
        })
    }
}

pub(super) fn parse_route(payload: &[u8]) -> Result<Option<RouteInfo>, Malformed> {
    if payload.len() < RTMSG_LEN {
        return Err(Malformed("route message shorter than rtmsg"));
    }
    let Some(family) = Family::from_af(payload[0]) else {
        return Ok(None);
    };
    let unspecified = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut route = RouteInfo {
        family,
        dst_len: payload[1],
        table: u32::from(payload[4]),
        kind: payload[7],
        dst: unspecified,
        priority: None,
        nexthops: Vec::new(),
    };
    let mut single = Nexthop {
        oif: 0,
        gateway: None,
        flags: u32_at(payload, 8),
    };
    let mut multipath = None;
    for attr in attrs(&payload[RTMSG_LEN..]) {
        match attr? {
            (RTA_DST, data) => route.dst = ip_attr(family, data)?,
            (RTA_OIF, data) => single.oif = u32_attr(data)?,
            (RTA_GATEWAY, data) => single.gateway = Some(ip_attr(family, data)?),
            (RTA_PRIORITY, data) => route.priority = Some(u32_attr(data)?),
            (RTA_TABLE, data) => route.table = u32_attr(data)?,
            (RTA_MULTIPATH, data) => multipath = Some(parse_nexthops(family, data)?),
            // A gateway of the other family: not a route this module can
            // copy faithfully.
            (RTA_VIA, _) => return Ok(Some(route)),
            _ => {}
        }
    }
    route.nexthops = match multipath {
        Some(nexthops) => nexthops,
        None if single.oif != 0 => vec![single],
        None => Vec::new(),
    };
    Ok(Some(route))
}

fn parse_nexthops(family: Family, mut data: &[u8]) -> Result<Vec<Nexthop>, Malformed> {
    let mut nexthops = Vec::new();
    while data.len() >= RTNEXTHOP_LEN {
        let len = u16_at(data, 0) as usize;
        if len < RTNEXTHOP_LEN || len > data.len() {
            return Err(Malformed("nexthop length out of bounds"));
        }
        let mut hop = Nexthop {
            oif: u32_at(data, 4),
            gateway: None,
            flags: u32::from(data[2]),
        };
        for attr in attrs(&data[RTNEXTHOP_LEN..len]) {
            if let (RTA_GATEWAY, gw) = attr? {
                hop.gateway = Some(ip_attr(family, gw)?);
            }
        }
        nexthops.push(hop);
        data = data.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(nexthops)
}

/// The errno and the kernel's explanation in an NLMSG_ERROR payload; errno
/// 0 is the ack of a request that worked.
pub(super) fn parse_error(flags: u16, payload: &[u8]) -> Result<(i32, Option<String>), Malformed> {
    if payload.len() < 4 + NLMSG_HDR_LEN {
        return Err(Malformed("error message shorter than nlmsgerr"));
    }
    let errno = (u32_at(payload, 0) as i32).saturating_neg();
    let mut detail = None;
    // The request comes back whole unless capped to its header (as
    // NETLINK_CAP_ACK asks); the kernel's attributes follow it.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDR_LEN
    } else {
        align4(u32_at(payload, 4) as usize)
    };
    if flags & NLM_F_ACK_TLVS != 0 {
        let tlvs = payload.get(4usize.saturating_add(echoed)..).unwrap_or(&[]);
        for attr in attrs(tlvs) {
            if let (NLMSGERR_ATTR_MSG, text) = attr? {
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                detail = Some(String::from_utf8_lossy(&text[..end]).into_owned());
            }
        }
    }
    Ok((errno, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Golden requests: what `ip` sends for the same change, byte for byte
    // (netlink is host-endian; these are the little-endian bytes).
    #[cfg(target_endian = "little")]
    #[test]
    fn link_request_sets_up_clears_noarp_and_mtu() {
        let change = LinkChange {
            up: Some(true),
            noarp: Some(false),
            mtu: Some(65520),
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            40, 0, 0, 0, 16, 0, 0x05, 0x00, 1, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0x81, 0, 0, 0,
            8, 0, 4, 0, 0xf0, 0xff, 0, 0,
        ];
        assert_eq!(link_request(5, &change).finish(1), want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_addr_request_asks_for_nodad() {
        let addr = Addr {
            addr: v4("2001:db8::2"),
            prefix_len: 64,
            no_prefix_route: false,
        };
        let ip = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut want: Vec<u8> = vec![72, 0, 0, 0, 20, 0, 0x05, 0x06, 7, 0, 0, 0, 0, 0, 0, 0];
        want.extend([10, 64, 0x02, 0, 3, 0, 0, 0]);
        want.extend([20, 0, 2, 0]);
        want.extend(ip);
        want.extend([20, 0, 1, 0]);
        want.extend(ip);
        want.extend([8, 0, 8, 0, 0x02, 0, 0, 0]);
        assert_eq!(addr_request(3, &addr).finish(7), want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn route_request_carries_dst_oif_gateway_and_metric() {
        let route = Route {
            dst: v4("198.51.100.0"),
            prefix_len: 24,
            gateway: Some(v4("192.0.2.1")),
            metric: Some(100),
            onlink: false,
        };
        #[rustfmt::skip]
        let want: &[u8] = &[
            60, 0, 0, 0, 24, 0, 0x05, 0x06, 9, 0, 0, 0, 0, 0, 0, 0,
            2, 24, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0,
            8, 0, 1, 0, 198, 51, 100, 0,
            8, 0, 4, 0, 3, 0, 0, 0,
            8, 0, 5, 0, 192, 0, 2, 1,
            8, 0, 6, 0, 100, 0, 0, 0,
        ];
        assert_eq!(route_request(3, &route).finish(9), want);
    }

    #[test]
    fn default_onlink_route_request_has_no_dst_and_link_scope() {
        let route = Route {
            dst: v4("::"),
            prefix_len: 0,
            gateway: None,
            metric: None,
            onlink: false,
        };
        let msg = route_request(3, &route).finish(1);
        let parsed = messages(&msg).next().unwrap().unwrap();
        assert_eq!(parsed.payload[6], RT_SCOPE_LINK);
        let kinds: Vec<u16> = attrs(&parsed.payload[RTMSG_LEN..])
            .map(|a| a.unwrap().0)
            .collect();
        assert_eq!(kinds, [RTA_OIF]);
    }

    /// A dump datagram as the kernel sends it: the IPv4 default route via
    /// 192.0.2.1 on interface 2, metric 50, then NLMSG_DONE.
    #[rustfmt::skip]
    const ROUTE_DUMP: &[u8] = &[
        60, 0, 0, 0, 24, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        2, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0,
        8, 0, 15, 0, 254, 0, 0, 0,
        8, 0, 6, 0, 50, 0, 0, 0,
        8, 0, 5, 0, 192, 0, 2, 1,
        8, 0, 4, 0, 2, 0, 0, 0,
        20, 0, 0, 0, 3, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0,
    ];

    /// An IPv6 route with two nexthops, fe80::1 on interface 2 and fe80::2
    /// on interface `second`.
    fn multipath(second: u8) -> Vec<u8> {
        let mut p = vec![10, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        p.extend([60, 0, 9, 0]);
        for (gw, oif) in [(1, 2), (2, second)] {
            p.extend([28, 0, 0, 0, oif, 0, 0, 0, 20, 0, 5, 0]);
            p.extend([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, gw]);
        }
        p
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn route_dump_parses_to_the_default_route() {
        let msgs: Vec<Msg> = messages(ROUTE_DUMP).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].kind, msgs[0].seq), (RTM_NEWROUTE, 1));
        assert_eq!(msgs[1].kind, NLMSG_DONE);
        let route = parse_route(msgs[0].payload).unwrap().unwrap();
        assert!(route.in_main_table_unicast());
        assert_eq!(route.oif(), Some(2));
        assert_eq!(
            route.through(2),
            Some(Route {
                dst: v4("0.0.0.0"),
                prefix_len: 0,
                gateway: Some(v4("192.0.2.1")),
                metric: Some(50),
                onlink: false,
            })
        );
        assert_eq!(route.through(3), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn multipath_route_is_copied_only_when_every_hop_is_on_the_template() {
        let same = parse_route(&multipath(2)).unwrap().unwrap();
        assert_eq!(same.nexthops.len(), 2);
        assert_eq!(same.through(2).unwrap().gateway, Some(v4("fe80::1")));
        let split = parse_route(&multipath(3)).unwrap().unwrap();
        assert_eq!(split.through(2), None);
        assert_eq!(split.through(3), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn addr_message_parses_with_its_32_bit_flags() {
        #[rustfmt::skip]
        let payload: &[u8] = &[
            2, 24, 0x80, 0, 2, 0, 0, 0,
            8, 0, 1, 0, 192, 0, 2, 10,
            8, 0, 2, 0, 192, 0, 2, 10,
            9, 0, 3, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0,
            8, 0, 8, 0, 0x80, 0x02, 0, 0,
        ];
        let a = parse_addr(payload).unwrap().unwrap();
        assert_eq!((a.addr, a.prefix_len, a.index), (v4("192.0.2.10"), 24, 2));
        assert_eq!(a.flags, 0x280);
        assert!(a.worth_copying());
        let deprecated = AddrInfo {
            flags: IFA_F_DEPRECATED,
            ..a
        };
        assert!(!deprecated.worth_copying());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn link_message_parses_name_and_mtu() {
        #[rustfmt::skip]
        let payload: &[u8] = &[
            0, 0, 1, 0, 2, 0, 0, 0, 0x43, 0x10, 1, 0, 0, 0, 0, 0,
            9, 0, 3, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0,
            8, 0, 4, 0, 0xdc, 0x05, 0, 0,
        ];
        let link = parse_link(payload).unwrap();
        assert_eq!(
            (link.index, link.name.as_str(), link.mtu),
            (2, "eth0", 1500)
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn error_message_gives_errno_and_the_kernels_reason() {
        let mut payload = vec![0x9b, 0xff, 0xff, 0xff];
        payload.extend([0u8; NLMSG_HDR_LEN]);
        payload.extend([32, 0, 1, 0]);
        payload.extend(b"Nexthop has invalid gateway\0");
        let (errno, detail) = parse_error(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload).unwrap();
        assert_eq!(errno, libc::ENETUNREACH);
        assert_eq!(detail.as_deref(), Some("Nexthop has invalid gateway"));
        // Uncapped (a kernel without NETLINK_CAP_ACK): the whole request
        // comes back first, and is not read as the kernel's attributes.
        let mut uncapped = payload[..4].to_vec();
        uncapped.extend(24u32.to_ne_bytes());
        uncapped.extend([0u8; 12]);
        uncapped.extend([0xff, 0xff, 1, 0, 0, 0, 0, 0]);
        uncapped.extend(&payload[4 + NLMSG_HDR_LEN..]);
        let (_, detail) = parse_error(NLM_F_ACK_TLVS, &uncapped).unwrap();
        assert_eq!(detail.as_deref(), Some("Nexthop has invalid gateway"));
        assert_eq!(parse_error(0, &[0u8; 20]).unwrap(), (0, None));
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        // Header length zero, below the header, past the end.
        for len in [0u32, 15, 1000] {
            let mut buf = ROUTE_DUMP.to_vec();
            buf[0..4].copy_from_slice(&len.to_ne_bytes());
            let first = messages(&buf).next().unwrap();
            assert!(first.is_err(), "nlmsg_len {len}");
            assert_eq!(messages(&buf).count(), 1, "stops after the error");
        }
        // Attribute lengths zero, below the header, past the end.
        for len in [0u16, 3, 200] {
            let mut payload = ROUTE_DUMP[16..60].to_vec();
            payload[12..14].copy_from_slice(&len.to_ne_bytes());
            assert!(parse_route(&payload).is_err(), "rta_len {len}");
        }
        // A gateway of 3 bytes, an interface index of 2.
        let mut payload = ROUTE_DUMP[16..60].to_vec();
        payload[28..30].copy_from_slice(&7u16.to_ne_bytes());
        assert!(parse_route(&payload).is_err());
        let mut payload = ROUTE_DUMP[16..60].to_vec();
        payload[36..38].copy_from_slice(&6u16.to_ne_bytes());
        assert!(parse_route(&payload).is_err());
        // Fixed parts cut short.
        assert!(parse_route(&[2; 11]).is_err());
        assert!(parse_addr(&[2; 7]).is_err());
        assert!(parse_link(&[0; 15]).is_err());
        assert!(parse_error(0, &[0; 19]).is_err());
        // A nexthop of length zero.
        let mut p = multipath(2);
        p[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert!(parse_route(&p).is_err());
    }

    /// Every parser over every prefix of real messages, every message
    /// with each byte replaced, and pseudo-random buffers: each ends with
    /// a result, never a panic or an endless loop.
    #[test]
    fn truncated_and_garbage_buffers_never_panic() {
        fn all_parsers(buf: &[u8]) {
            for msg in messages(buf).flatten() {
                let _ = parse_route(msg.payload);
                let _ = parse_addr(msg.payload);
                let _ = parse_link(msg.payload);
                let _ = parse_error(msg.flags, msg.payload);
            }
            let _ = parse_route(buf);
            let _ = parse_addr(buf);
            let _ = parse_link(buf);
            let _ = parse_error(NLM_F_ACK_TLVS, buf);
            let _ = parse_nexthops(Family::V6, buf);
            for _ in attrs(buf) {}
        }
        let samples = [ROUTE_DUMP.to_vec(), multipath(2)];
        for sample in &samples {
            for cut in 0..=sample.len() {
                all_parsers(&sample[..cut]);
            }
            for at in 0..sample.len() {
                for value in [0, 1, 3, 4, 0x7f, 0x80, 0xff] {
                    let mut buf = sample.clone();
                    buf[at] = value;
                    all_parsers(&buf);
                }
            }
        }
        // A cut inside the first message is an error, not a short message.
        for cut in 1..60 {
            assert!(
                messages(&ROUTE_DUMP[..cut]).any(|m| m.is_err()),
                "cut {cut}"
            );
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000 {
            let len = round % 200;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Small values often, so lengths sometimes fit.
                    if state.is_multiple_of(3) {
                        (state >> 8) as u8 % 32
                    } else {
                        (state >> 8) as u8
                    }
                })
                .collect();
            all_parsers(&buf);
        }
    }
}
