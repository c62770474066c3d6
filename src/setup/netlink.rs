//! rtnetlink for pasta's `--config-net`: read the host's template
//! interface (name, index, MTU, addresses, routes) and write links,
//! addresses and routes, each in the network namespace of the calling
//! thread: the host's for reading, the container's (from the
//! namespace-joining child) for writing.
//!
//! Hand-rolled over a plain NETLINK_ROUTE socket (the byte layout is in
//! `wire`): three fixed headers and a dozen attributes are less to read
//! than the netlink crates' generic message model. The kernel's answers
//! count as outside input: every length is checked before use, and a
//! malformed answer is an error, never a panic. This module decides
//! nothing about which interface to copy into which namespace, and writes
//! nothing it is not asked to write.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

mod wire;

pub use wire::Malformed;
use wire::{
    AddrInfo, IFA_F_NOPREFIXROUTE, IFADDRMSG_LEN, Link, Msg, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE,
    RTMSG_LEN, Request, RouteInfo, addr_request, ifinfomsg, link_request, messages, parse_addr,
    parse_error, parse_link, parse_route, route_request,
};

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

/// Large enough for any one datagram of a dump: the kernel fills at most
/// 32 KiB per datagram.
const RECV_BUF_LEN: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(io::Error),
    #[error("netlink I/O failed while trying to {what}: {err}")]
    Io { what: String, err: io::Error },
    #[error("cannot {what}: {err}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        what: String,
        err: io::Error,
        /// The kernel's own explanation (extended ack), when it gave one.
        detail: Option<String>,
    },
    #[error("the kernel's answer while trying to {what} is malformed: {why}")]
    Malformed { what: String, why: Malformed },
    #[error("no interface named {0:?}")]
    NoSuchLink(String),
    #[error("route to {dst}/{prefix_len}: gateway {gateway} is of the other address family")]
    MixedFamilies {
        dst: IpAddr,
        prefix_len: u8,
        gateway: IpAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    fn from_af(af: u8) -> Option<Family> {
        match libc::c_int::from(af) {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// An interface address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Addr {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// The host's address came without its prefix route (NetworkManager
    /// does this and adds the route itself, with its own metric); kept, so
    /// the copied routes are the host's and not twice the prefix.
    pub no_prefix_route: bool,
}

/// A route in the main table through one interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The network address: the kernel refuses host bits past the prefix.
    pub dst: IpAddr,
    pub prefix_len: u8,
    /// None: the destination is on the link.
    pub gateway: Option<IpAddr>,
    /// None: the kernel's default (0 for IPv4, 1024 for IPv6).
    pub metric: Option<u32>,
    /// The gateway counts as on the link even outside every prefix of
    /// the interface (`ip route ... onlink`).
    pub onlink: bool,
}

/// The host interface whose configuration pasta copies for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
}

/// Changes to a link; `None` leaves that setting alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub up: Option<bool>,
    /// IFF_NOARP: set while IPv6 link-local addresses appear, it spares
    /// them duplicate address detection; clear it afterwards.
    pub noarp: Option<bool>,
    pub mtu: Option<u32>,
}

/// The template interface for `family` in this thread's namespace: the
/// interface named `name`, or else the one holding the first default
/// route, or else (as pasta does) the first holding any route that is
/// not link-local; loopback never. `None` when there is none, or when it
/// has no usable address of this family: the caller's cue for pasta's
/// local mode.
pub fn template(family: Family, name: Option<&str>) -> Result<Option<Template>, NetlinkError> {
    let mut sock = Socket::open()?;
    let links = sock.links()?;
    let routes = sock.routes(family)?;
    let index = match name {
        Some(name) => match links.iter().find(|l| l.name == name) {
            Some(link) => link.index,
            None => return Err(NetlinkError::NoSuchLink(name.to_string())),
        },
        None => {
            let loopback = |i: u32| {
                links
                    .iter()
                    .any(|l| l.index == i && l.flags & libc::IFF_LOOPBACK as u32 != 0)
            };
            let usable = || {
                routes
                    .iter()
                    .filter(|r| r.in_main_table_unicast() && !r.dst_is_link_local())
                    .filter_map(|r| r.oif().filter(|&i| !loopback(i)).map(|i| (r, i)))
            };
            let default = usable().find(|(r, _)| r.dst_len == 0).map(|(_, i)| i);
            match default.or_else(|| usable().next().map(|(_, i)| i)) {
                Some(index) => index,
                None => return Ok(None),
            }
        }
    };
    let Some(link) = links.into_iter().find(|l| l.index == index) else {
        return Ok(None);
    };
    let addrs: Vec<Addr> = sock
        .addrs(family)?
        .into_iter()
        .filter(|a| a.index == index && a.worth_copying())
        .map(|a| Addr {
            addr: a.addr,
            prefix_len: a.prefix_len,
            no_prefix_route: a.flags & IFA_F_NOPREFIXROUTE != 0,
        })
        .collect();
    if addrs.is_empty() {
        return Ok(None);
    }
    let routes = routes
        .iter()
        .filter(|r| r.in_main_table_unicast() && !r.dst_is_link_local())
        .filter_map(|r| r.through(index))
        .collect();
    Ok(Some(Template {
        name: link.name,
        index,
        mtu: link.mtu,
        addrs,
        routes,
    }))
}

/// The index of the interface `name` in this thread's namespace.
pub fn link_index(name: &str) -> Result<u32, NetlinkError> {
    let links = Socket::open()?.links()?;
    match links.into_iter().find(|l| l.name == name) {
        Some(link) => Ok(link.index),
        None => Err(NetlinkError::NoSuchLink(name.to_string())),
    }
}

/// Bring link `index` up or down, set IFF_NOARP, set its MTU.
pub fn set_link(index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
    let req = link_request(index, change);
    Socket::open()?.ack(req, &|| format!("change interface {index} ({change:?})"))
}

/// Add `addr` to interface `index`. IPv6 addresses skip duplicate address
/// detection: the namespace's only neighbour is netferry, and a tentative
/// address would hold the container's traffic back for a second or more.
pub fn add_addr(index: u32, addr: &Addr) -> Result<(), NetlinkError> {
    let req = addr_request(index, addr);
    Socket::open()?.ack(req, &|| {
        format!(
            "add address {}/{} to interface {index}",
            addr.addr, addr.prefix_len
        )
    })
}

/// Add one route through interface `index` to the main table.
pub fn add_route(index: u32, route: &Route) -> Result<(), NetlinkError> {
    add_route_on(&mut Socket::open()?, index, route)
}

/// Add `routes` through interface `index`, after its addresses: on-link
/// routes first, so the gateways of the others are reachable whatever the
/// order given (the kernel wants a gateway on the link: on a prefix of the
/// interface, on an on-link route, or flagged `onlink`). A route already
/// present counts as added. Routes whose gateway is still unreachable,
/// such as a host gateway reached through another interface, are skipped
/// as pasta skips them, and returned; any other refusal is an error.
pub fn add_routes(index: u32, routes: &[Route]) -> Result<Vec<Route>, NetlinkError> {
    let mut sock = Socket::open()?;
    let (onlink, via): (Vec<&Route>, Vec<&Route>) =
        routes.iter().partition(|r| r.gateway.is_none());
    let mut skipped = Vec::new();
    for route in onlink.into_iter().chain(via) {
        match add_route_tolerant(&mut sock, index, route) {
            Ok(()) => {}
            Err(NetlinkError::Refused { err, .. })
                if route.gateway.is_some() && gateway_unreachable(&err) =>
            {
                log::debug!("route {route:?} skipped: its gateway is not on interface {index}");
                skipped.push(route.clone());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(skipped)
}

fn add_route_tolerant(sock: &mut Socket, index: u32, route: &Route) -> Result<(), NetlinkError> {
    match add_route_on(sock, index, route) {
        Err(NetlinkError::Refused { err, .. }) if err.raw_os_error() == Some(libc::EEXIST) => {
            Ok(())
        }
        other => other,
    }
}

/// How the kernel says a gateway is on no route of the link: ENETUNREACH
/// for IPv4, EHOSTUNREACH for IPv6.
fn gateway_unreachable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
    )
}

fn add_route_on(sock: &mut Socket, index: u32, route: &Route) -> Result<(), NetlinkError> {
    if let Some(gw) = route.gateway
        && Family::of(gw) != Family::of(route.dst)
    {
        return Err(NetlinkError::MixedFamilies {
            dst: route.dst,
            prefix_len: route.prefix_len,
            gateway: gw,
        });
    }
    let req = route_request(index, route);
    sock.ack(req, &|| {
        let via = route
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        format!(
            "add route {}/{}{via} on interface {index}",
            route.dst, route.prefix_len
        )
    })
}

fn malformed(what: &dyn Fn() -> String, why: Malformed) -> NetlinkError {
    NetlinkError::Malformed { what: what(), why }
}

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> Result<Socket, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Refusals then come with the kernel's reason, and without a copy
        // of the request. Old kernels lack both; that costs only detail.
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let on: libc::c_int = 1;
            // SAFETY: the option value is a valid c_int of the size given,
            // which the kernel only reads.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(Socket { fd, seq: 0 })
    }

    fn send(&mut self, req: Request, what: &dyn Fn() -> String) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let msg = req.finish(self.seq);
        // SAFETY: msg is a valid buffer of msg.len() bytes that outlives
        // the call; an unconnected netlink socket sends to the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return Err(NetlinkError::Io { what: what(), err });
        }
        Ok(self.seq)
    }

    /// Receive one datagram from the kernel into `buf`, refusing a
    /// truncated one. Datagrams from other sockets are dropped: in the
    /// container's namespace its root could send some, and only the
    /// kernel's answers count.
    fn recv(&self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<usize, NetlinkError> {
        loop {
            // SAFETY: sockaddr_nl is plain old data; all-zero is valid.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: buf is a valid, exclusively borrowed buffer of
            // buf.len() bytes, and `from` a sockaddr_nl whose size is in
            // from_len. MSG_TRUNC makes netlink return the full length of
            // a datagram that did not fit.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io { what: what(), err });
            }
            if from.nl_pid != 0 {
                log::debug!("netlink: dropped a datagram from port {}", from.nl_pid);
                continue;
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(malformed(
                    what,
                    Malformed("datagram larger than the buffer"),
                ));
            }
            return Ok(n);
        }
    }

    /// Send `req` (which asks for an ack) and wait for its answer.
    fn ack(&mut self, req: Request, what: &dyn Fn() -> String) -> Result<(), NetlinkError> {
        let seq = self.send(req, what)?;
        let mut buf = vec![0u8; RECV_BUF_LEN];
        loop {
            let n = self.recv(&mut buf, what)?;
            for msg in messages(&buf[..n]) {
                let msg = msg.map_err(|why| malformed(what, why))?;
                if msg.seq != seq || msg.kind != NLMSG_ERROR {
                    continue;
                }
                return answer_of(&msg, what);
            }
        }
    }

    /// Dump every object of a kind (`get` asks, answers come as `new`,
    /// over as many datagrams as the kernel needs) and return the
    /// answers' payloads.
    fn dump(
        &mut self,
        (get, new): (u16, u16),
        fixed: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let mut req = Request::new(get, NLM_F_REQUEST | NLM_F_DUMP);
        req.push(fixed);
        let seq = self.send(req, what)?;
        let mut buf = vec![0u8; RECV_BUF_LEN];
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut buf, what)?;
            for msg in messages(&buf[..n]) {
                let msg = msg.map_err(|why| malformed(what, why))?;
                if msg.seq != seq {
                    continue;
                }
                match msg.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        answer_of(&msg, what)?;
                        return Ok(out);
                    }
                    k if k == new => out.push(msg.payload.to_vec()),
                    _ => {}
                }
            }
        }
    }

    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let what = || "list the interfaces".to_string();
        let answers = self.dump((RTM_GETLINK, RTM_NEWLINK), &ifinfomsg(0, 0, 0), &what)?;
        answers
            .iter()
            .map(|p| parse_link(p).map_err(|why| malformed(&what, why)))
            .collect()
    }

    fn addrs(&mut self, family: Family) -> Result<Vec<AddrInfo>, NetlinkError> {
        let what = || format!("list the {} addresses", family.name());
        let mut ifa = [0u8; IFADDRMSG_LEN];
        ifa[0] = family.af();
        let answers = self.dump((RTM_GETADDR, RTM_NEWADDR), &ifa, &what)?;
        let mut out = Vec::new();
        for payload in answers {
            match parse_addr(&payload).map_err(|why| malformed(&what, why))? {
                // Without strict checking the kernel may answer with every
                // family.
                Some(a) if Family::of(a.addr) == family => out.push(a),
                _ => {}
            }
        }
        Ok(out)
    }

    fn routes(&mut self, family: Family) -> Result<Vec<RouteInfo>, NetlinkError> {
        let what = || format!("list the {} routes", family.name());
        let mut rtm = [0u8; RTMSG_LEN];
        rtm[0] = family.af();
        let answers = self.dump((RTM_GETROUTE, RTM_NEWROUTE), &rtm, &what)?;
        let mut out = Vec::new();
        for payload in answers {
            match parse_route(&payload).map_err(|why| malformed(&what, why))? {
                Some(r) if r.family == family => out.push(r),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// An NLMSG_ERROR answer as a result.
fn answer_of(msg: &Msg<'_>, what: &dyn Fn() -> String) -> Result<(), NetlinkError> {
    let (errno, detail) =
        parse_error(msg.flags, msg.payload).map_err(|why| malformed(what, why))?;
    if errno == 0 {
        return Ok(());
    }
    Err(NetlinkError::Refused {
        what: what(),
        err: io::Error::from_raw_os_error(errno),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::process::Command;

    use nix::sched::{CloneFlags, unshare};

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn route_with_a_gateway_of_the_other_family_is_refused_before_sending() {
        let route = Route {
            dst: v4("0.0.0.0"),
            prefix_len: 0,
            gateway: Some(v4("2001:db8::1")),
            metric: None,
            onlink: false,
        };
        let err = add_route(1, &route).unwrap_err().to_string();
        assert!(err.contains("2001:db8::1"), "{err}");
    }

    // Namespace tests: each runs in a thread that has unshared its own
    // network namespace (the suite runs as root), so `ip` and these
    // functions see only what the test made; the namespace goes with the
    // thread.

    fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET) (tests run as root)");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    fn sh(script: &str) {
        let out = Command::new("sh").args(["-ec", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ip_json(args: &str) -> serde_json::Value {
        let out = Command::new("ip")
            .arg("-j")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "ip -j {args}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Veth pairs, both ends up, so the links have carrier.
    fn veths(names: &[&str]) {
        for name in names {
            sh(&format!(
                "ip link add {name} type veth peer name {name}p
                 ip link set {name}p up; ip link set {name} up"
            ));
        }
    }

    /// A host as pasta meets one: d0 holds the default routes, a second
    /// address without its prefix route, a deprecated IPv6 address, an
    /// on-link route, a route with the onlink flag, a link-local and a
    /// multicast route; d1 holds routes of its own.
    fn make_host() {
        veths(&["d0", "d1"]);
        sh("ip link set d0 mtu 1400
            ip addr add 192.0.2.10/24 dev d0
            ip addr add 198.51.100.7/25 dev d0 noprefixroute
            ip -6 addr add 2001:db8:1::10/64 dev d0 nodad
            ip -6 addr add 2001:db8:1::99/64 dev d0 nodad preferred_lft 0
            ip addr add 203.0.113.5/24 dev d1
            ip route add default via 192.0.2.1 dev d0 metric 50
            ip route add 198.51.100.0/25 dev d0 metric 100
            ip route add 203.0.113.128/25 via 192.0.2.254 dev d0
            ip route add 198.51.100.200 via 192.0.2.99 dev d0 onlink
            ip route add 169.254.0.0/16 dev d0 metric 1000
            ip route add 224.0.0.0/4 dev d0
            ip route add 198.51.100.128/25 via 203.0.113.1 dev d1
            ip -6 route add default via fe80::1 dev d0
            ip -6 route add 2001:db8:2::/48 via 2001:db8:1::1 dev d0 metric 300");
    }

    fn ip_of(s: &str, family: Family) -> (IpAddr, u8) {
        let full = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        match (s, family) {
            ("default", Family::V4) => (v4("0.0.0.0"), 0),
            ("default", Family::V6) => (v4("::"), 0),
            _ => match s.split_once('/') {
                Some((a, len)) => (v4(a), len.parse().unwrap()),
                None => (v4(s), full),
            },
        }
    }

    /// `ip`'s view of the addresses pasta copies from `dev`.
    fn ip_addrs(dev: &str, family: Family) -> BTreeSet<Addr> {
        let fam = if family == Family::V4 {
            "inet"
        } else {
            "inet6"
        };
        let json = ip_json(&format!("addr show dev {dev}"));
        json[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == fam && a["scope"] == "global")
            .filter(|a| a["deprecated"] != true)
            .map(|a| {
                let addr = v4(a["local"].as_str().unwrap());
                let prefix_len = a["prefixlen"].as_u64().unwrap() as u8;
                let no_prefix_route = a["noprefixroute"] == true;
                Addr {
                    addr,
                    prefix_len,
                    no_prefix_route,
                }
            })
            .collect()
    }

    /// `ip`'s view of the unicast main-table routes through `dev`;
    /// link-local ones left out.
    fn ip_routes(dev: &str, family: Family) -> BTreeSet<Route> {
        let fam = if family == Family::V4 { "-4" } else { "-6" };
        let json = ip_json(&format!("{fam} route show dev {dev} table main"));
        json.as_array()
            .unwrap()
            .iter()
            .filter(|r| r.get("type").is_none())
            .map(|r| {
                let (dst, prefix_len) = ip_of(r["dst"].as_str().unwrap(), family);
                Route {
                    dst,
                    prefix_len,
                    gateway: r["gateway"].as_str().map(v4),
                    metric: r["metric"].as_u64().map(|m| m as u32),
                    onlink: r["flags"].as_array().unwrap().iter().any(|f| f == "onlink"),
                }
            })
            .filter(|r| match r.dst {
                IpAddr::V4(a) => !a.is_link_local(),
                IpAddr::V6(a) => !a.is_unicast_link_local(),
            })
            .collect()
    }

    fn addr_set(t: &Template) -> BTreeSet<Addr> {
        t.addrs.iter().cloned().collect()
    }

    fn route_set(routes: &[Route]) -> BTreeSet<Route> {
        routes.iter().cloned().collect()
    }

    #[test]
    fn template_reads_what_ip_shows() {
        in_new_netns(|| {
            make_host();
            let index = link_index("d0").unwrap();
            for family in [Family::V4, Family::V6] {
                let t = template(family, None).unwrap().unwrap();
                assert_eq!((t.name.as_str(), t.index, t.mtu), ("d0", index, 1400));
                assert_eq!(addr_set(&t), ip_addrs("d0", family), "{family:?}");
                assert_eq!(route_set(&t.routes), ip_routes("d0", family), "{family:?}");
            }
            // The facts behind those sets, spelled out.
            let t4 = template(Family::V4, None).unwrap().unwrap();
            assert!(t4.addrs.iter().any(|a| a.no_prefix_route));
            assert!(
                t4.routes
                    .iter()
                    .any(|r| r.onlink && r.gateway == Some(v4("192.0.2.99")))
            );
            assert!(t4.routes.iter().any(|r| r.dst == v4("224.0.0.0")));
            assert!(!t4.routes.iter().any(|r| r.dst == v4("169.254.0.0")));
            assert!(
                !t4.routes.iter().any(|r| r.dst == v4("203.0.113.0")),
                "d1's route"
            );
            let t6 = template(Family::V6, None).unwrap().unwrap();
            let addrs6: Vec<IpAddr> = t6.addrs.iter().map(|a| a.addr).collect();
            assert_eq!(
                addrs6,
                [v4("2001:db8:1::10")],
                "no deprecated, no link-local"
            );
            assert!(
                t6.routes
                    .iter()
                    .any(|r| r.prefix_len == 0 && r.gateway == Some(v4("fe80::1")))
            );
        });
    }

    #[test]
    fn template_choice_follows_default_route_name_and_pastas_fallback() {
        in_new_netns(|| {
            // Loopback alone: local mode.
            sh("ip link set lo up");
            assert_eq!(template(Family::V4, None).unwrap(), None);
            assert_eq!(template(Family::V6, None).unwrap(), None);
            veths(&["d0", "d1"]);
            sh("ip addr add 192.0.2.10/24 dev d0");
            // No default route: the first interface with a route, as pasta.
            assert_eq!(template(Family::V4, None).unwrap().unwrap().name, "d0");
            // An interface without IPv6 addresses is no IPv6 template.
            assert_eq!(template(Family::V6, None).unwrap(), None);
            sh("ip addr add 198.51.100.10/24 dev d1
                ip route add default via 198.51.100.1 dev d1");
            assert_eq!(template(Family::V4, None).unwrap().unwrap().name, "d1");
            assert_eq!(
                template(Family::V4, Some("d0")).unwrap().unwrap().name,
                "d0"
            );
            assert!(matches!(
                template(Family::V4, Some("nope")),
                Err(NetlinkError::NoSuchLink(_))
            ));
        });
    }

    #[test]
    fn writes_show_up_in_ip_whatever_the_route_order() {
        in_new_netns(|| {
            veths(&["d0"]);
            sh("ip link set d0 down");
            let index = link_index("d0").unwrap();
            let change = LinkChange {
                up: Some(true),
                noarp: None,
                mtu: Some(1280),
            };
            set_link(index, &change).unwrap();
            let link = &ip_json("link show dev d0")[0];
            assert_eq!(link["mtu"], 1280);
            assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));

            let a = |addr, prefix_len, no_prefix_route| Addr {
                addr: v4(addr),
                prefix_len,
                no_prefix_route,
            };
            let addrs = [
                a("192.0.2.2", 24, false),
                a("198.51.100.7", 25, true),
                a("2001:db8:1::2", 64, false),
            ];
            for addr in &addrs {
                add_addr(index, addr).unwrap();
            }
            let want = BTreeSet::from(addrs);
            let mut got = ip_addrs("d0", Family::V4);
            got.extend(ip_addrs("d0", Family::V6));
            assert_eq!(got, want);
            // NODAD: usable at once, not tentative.
            let json = ip_json("-6 addr show dev d0 scope global");
            let a = &json[0]["addr_info"][0];
            assert_eq!(
                (a["nodad"].clone(), a.get("tentative")),
                (true.into(), None)
            );

            let r = |dst: &str, len, gw: Option<&str>, metric, onlink| Route {
                dst: v4(dst),
                prefix_len: len,
                gateway: gw.map(v4),
                metric,
                onlink,
            };
            // Gateway routes before the on-link route their gateway needs,
            // one outside every prefix with the onlink flag, one that no
            // route reaches, and one the kernel made already.
            let routes = [
                r("203.0.113.0", 24, Some("198.51.100.1"), None, false),
                r("0.0.0.0", 0, Some("192.0.2.1"), Some(20), false),
                r("203.0.113.128", 25, Some("198.51.100.254"), None, false),
                r("198.51.100.200", 32, Some("192.0.2.99"), None, true),
                r("198.51.100.0", 25, None, Some(100), false),
                r("192.0.2.0", 24, None, None, false),
                r("2001:db8:2::", 48, Some("2001:db8:1::1"), Some(300), false),
                r("::", 0, Some("fe80::1"), Some(1024), false),
                r("2001:db8:1::", 64, None, Some(256), false),
            ];
            let skipped = add_routes(index, &routes).unwrap();
            assert_eq!(skipped, [routes[2].clone()]);
            let mut got = ip_routes("d0", Family::V4);
            got.extend(ip_routes("d0", Family::V6));
            let mut want: Vec<Route> = routes.to_vec();
            want.remove(2);
            assert_eq!(got, route_set(&want));
        });
    }

    #[test]
    fn template_copied_into_a_fresh_namespace_reads_back_the_same() {
        let host = in_new_netns(|| {
            make_host();
            [Family::V4, Family::V6].map(|f| template(f, None).unwrap().unwrap())
        });
        let copy = in_new_netns(|| {
            veths(&["eth9"]);
            let index = link_index("eth9").unwrap();
            let change = LinkChange {
                up: Some(true),
                noarp: None,
                mtu: Some(host[0].mtu),
            };
            set_link(index, &change).unwrap();
            for t in &host {
                for addr in &t.addrs {
                    add_addr(index, addr).unwrap();
                }
                assert_eq!(add_routes(index, &t.routes).unwrap(), []);
            }
            [Family::V4, Family::V6].map(|f| template(f, Some("eth9")).unwrap().unwrap())
        });
        for (h, c) in host.iter().zip(&copy) {
            assert_eq!((c.mtu, addr_set(c)), (h.mtu, addr_set(h)));
            assert_eq!(route_set(&c.routes), route_set(&h.routes));
        }
    }

    #[test]
    fn refusals_name_the_value_and_the_kernels_reason() {
        in_new_netns(|| {
            assert!(matches!(
                link_index("nope"),
                Err(NetlinkError::NoSuchLink(_))
            ));
            assert!(matches!(link_index(""), Err(NetlinkError::NoSuchLink(_))));
            assert_eq!(link_index("lo").unwrap(), 1);
            let addr = Addr {
                addr: v4("192.0.2.2"),
                prefix_len: 24,
                no_prefix_route: false,
            };
            let err = add_addr(9999, &addr).unwrap_err().to_string();
            assert!(
                err.contains("192.0.2.2/24") && err.contains("9999"),
                "{err}"
            );
            veths(&["d0"]);
            let index = link_index("d0").unwrap();
            add_addr(index, &addr).unwrap();
            let err = add_addr(index, &addr).unwrap_err();
            assert!(
                matches!(&err, NetlinkError::Refused { err, .. } if err.raw_os_error() == Some(libc::EEXIST))
            );
            let route = Route {
                dst: v4("203.0.113.0"),
                prefix_len: 24,
                gateway: Some(v4("198.51.100.1")),
                metric: None,
                onlink: false,
            };
            let err = add_route(index, &route).unwrap_err().to_string();
            assert!(err.contains("203.0.113.0/24 via 198.51.100.1"), "{err}");
            assert!(err.contains("gateway"), "the kernel's reason: {err}");
        });
    }

    #[test]
    fn answers_from_other_sockets_than_the_kernel_are_ignored() {
        use nix::sys::socket::{
            AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, getsockname,
            sendto, socket,
        };
        in_new_netns(|| {
            let lo_up = || {
                let change = LinkChange {
                    up: Some(true),
                    ..LinkChange::default()
                };
                link_request(1, &change)
            };
            let what = || "bring lo up".to_string();
            let mut sock = Socket::open().unwrap();
            // The first request binds the socket to a port.
            sock.ack(lo_up(), &what).unwrap();
            let port = getsockname::<NetlinkAddr>(sock.fd.as_raw_fd())
                .unwrap()
                .pid();
            // Another socket in the namespace answers the next request
            // first, with a refusal.
            let spoofer = socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkRoute,
            )
            .unwrap();
            let mut fake = Vec::new();
            fake.extend(36u32.to_ne_bytes());
            fake.extend(2u16.to_ne_bytes()); // NLMSG_ERROR
            fake.extend(0u16.to_ne_bytes());
            fake.extend((sock.seq + 1).to_ne_bytes());
            fake.extend(0u32.to_ne_bytes());
            fake.extend((-libc::EPERM).to_ne_bytes());
            fake.extend([0u8; 16]);
            let to = NetlinkAddr::new(port, 0);
            sendto(spoofer.as_raw_fd(), &fake, &to, MsgFlags::empty()).unwrap();
            sock.ack(lo_up(), &what).unwrap();
        });
    }

    /// Reading only: the test's own (host) namespace, whatever it holds.
    #[test]
    fn template_of_the_host_names_the_default_route_interface() {
        let json = ip_json("-4 route show default table main");
        let want = json
            .as_array()
            .unwrap()
            .iter()
            .find_map(|r| r["dev"].as_str().filter(|d| *d != "lo"))
            .map(str::to_string);
        let got = template(Family::V4, None).unwrap();
        if let Some(want) = want {
            assert_eq!(got.map(|t| t.name), Some(want));
        }
    }
}
