//! pasta's port forwarding specs: the values of `-t`/`-u` (host to
//! namespace) and `-T`/`-U` (namespace to the host's loopback).
//!
//! The grammar is pasta's of 2026 (passt.1, "-t, --tcp-ports"):
//! `none`, or `[ADDR[%IFACE]/]PORTS` where PORTS is a comma list of
//! `first[-last][:[toaddr/]tofirst[-tolast]]`, `first[-last]:toaddr`,
//! `~first[-last]` (excluded), `all[:toaddr]` and `auto`. This module only
//! checks the syntax and what pasta refuses while parsing; it does not
//! expand `all` (the ephemeral range is the host's) and does not look for
//! overlapping rules (pasta does that per address family once it knows
//! which families it has): both are the forwarding table's job.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::values::{take_addr, take_ulong};

/// Longest interface name, without the terminating NUL (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The option a spec came from; pasta names it by its letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortOption {
    /// `-t`: TCP, host to namespace.
    Tcp,
    /// `-u`: UDP, host to namespace.
    Udp,
    /// `-T`: TCP, namespace to the host's loopback.
    TcpNs,
    /// `-U`: UDP, namespace to the host's loopback.
    UdpNs,
}

impl PortOption {
    pub fn letter(self) -> char {
        match self {
            Self::Tcp => 't',
            Self::Udp => 'u',
            Self::TcpNs => 'T',
            Self::UdpNs => 'U',
        }
    }

    /// `-T`/`-U` listen on the namespace's loopback, so they take no address.
    fn listens_in_namespace(self) -> bool {
        matches!(self, Self::TcpNs | Self::UdpNs)
    }
}

/// A bad spec, with pasta's text. Old pasta (before 2026) said
/// `Invalid port specifier %s` without quotes and `Port forwarding mode
/// '%s' conflicts with previous mode`; callers only show these texts, so
/// the current ones are used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// `spec` is the part after any `ADDR/`, as pasta prints it.
    #[error("Invalid port specifier '{spec}'")]
    Invalid { spec: String },
    #[error("-{letter} none conflicts with previous options")]
    NoneConflicts { letter: char },
    #[error("Listening address not allowed for -{letter} {arg}")]
    AddressNotAllowed { letter: char, arg: String },
    #[error("Invalid interface name: {name}")]
    InvalidInterface { name: String },
    /// pasta warns so, then fails with "Unable to add rule ...".
    #[error("Forwarding rule attempts to map from port 0")]
    FromPortZero,
    #[error("Forwarding rule attempts to map to port 0")]
    ToPortZero,
    #[error("Multicast target address {addr} for forwarding rule")]
    MulticastTarget { addr: IpAddr },
    /// A target address needs a listening address of its family.
    #[error("Dual stack forward to {} address {addr} unsupported", family(.addr))]
    DualStackTarget { addr: IpAddr },
    #[error("Forward from {} ({from}) to {} ({to}) unsupported", family(.from), family(.to))]
    FamilyMismatch { from: IpAddr, to: IpAddr },
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// One `-t`/`-u`/`-T`/`-U` option other than `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The listening address; `None` for every address of both families
    /// (no `ADDR/`, or `*/`). `0.0.0.0` means every IPv4 address only.
    pub addr: Option<IpAddr>,
    /// The listening interface (`ADDR%IFACE/`); `-T`/`-U` bind to `lo`.
    pub iface: Option<String>,
    pub ports: Ports,
    /// Never forwarded; excluded ranges win over included ones.
    pub exclude: Vec<RangeInclusive<u16>>,
    /// `auto`: forward only the ports of `ports` that are bound on the
    /// other side, re-scanned every second.
    pub auto: bool,
}

/// Which ports a spec forwards, before exclusions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// Listed ranges.
    Ranges(Vec<PortRange>),
    /// Every port outside the host's ephemeral range, to the same port:
    /// `all`, `auto` alone, or exclusions alone. `to_addr` as in
    /// [`PortRange`]. With listed ranges, pasta ignores `all`.
    All { to_addr: Option<IpAddr> },
}

/// `first-last:[to_addr/]to_first-...`: `ports` forwarded to the ports
/// from `to_first` on, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange {
    pub ports: RangeInclusive<u16>,
    /// `None`: the guest's own address (pasta's default, also for an
    /// unspecified `0.0.0.0`/`::` target).
    pub to_addr: Option<IpAddr>,
    pub to_first: u16,
}

/// What one of `-t`, `-u`, `-T`, `-U` amounts to after all its repeats.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Forwards {
    /// The option was not given: pasta forwards `auto`.
    #[default]
    Default,
    /// Given: the specs in order (none for `none`).
    Given(Vec<PortSpec>),
}

impl Forwards {
    /// Adds one occurrence of `option` with the value `arg`. Repeats add
    /// up; `none` only clears what nothing set yet.
    pub fn add(&mut self, option: PortOption, arg: &str) -> Result<(), PortError> {
        let spec = parse(option, arg)?;
        let mut specs = match std::mem::take(self) {
            Self::Default => Vec::new(),
            Self::Given(specs) => specs,
        };
        // pasta looks for rules already made, so a spec that made none
        // (every port excluded) would not conflict there; it does here.
        let conflict = spec.is_none() && !specs.is_empty();
        specs.extend(spec);
        *self = Self::Given(specs);
        if conflict {
            return Err(PortError::NoneConflicts {
                letter: option.letter(),
            });
        }
        Ok(())
    }
}

/// Parses one value of `option`; `Ok(None)` for `none`.
pub fn parse(option: PortOption, arg: &str) -> Result<Option<PortSpec>, PortError> {
    if arg == "none" {
        return Ok(None);
    }
    let (listen, ports) = match split_listen(arg) {
        Some((listen, rest)) => {
            if option.listens_in_namespace() {
                return Err(PortError::AddressNotAllowed {
                    letter: option.letter(),
                    arg: arg.to_owned(),
                });
            }
            if let Some(name) = &listen.1
                && (name == "." || name == "..")
            {
                return Err(PortError::InvalidInterface { name: name.clone() });
            }
            (listen, rest)
        }
        None => ((None, None), arg),
    };
    let (addr, iface) = listen;
    let invalid = || PortError::Invalid {
        spec: ports.to_owned(),
    };

    // pasta's order: a piece that does not parse at all is refused at
    // once; then each included range is checked, in order; only then does
    // text left over after the last piece make the spec invalid.
    let mut chunks = Vec::new();
    let mut rest = ports;
    loop {
        let (chunk, after) = take_chunk(rest).ok_or_else(invalid)?;
        chunks.push(chunk);
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => {
                rest = after;
                break;
            }
        }
    }

    let mut ranges = Vec::new();
    let mut exclude = Vec::new();
    let mut auto = false;
    let mut all_target = None;
    for chunk in &chunks {
        match chunk {
            Chunk::All { to_addr } => all_target = *to_addr,
            Chunk::Auto => auto = true,
            Chunk::Exclude(range) => exclude.push(range.clone()),
            Chunk::Include(_) => {}
        }
    }
    let excluded = |port: u16| exclude.iter().any(|r| r.contains(&port));
    for chunk in chunks {
        let Chunk::Include(range) = chunk else {
            continue;
        };
        let width = |r: &RangeInclusive<u16>| r.end() - r.start();
        if width(&range.ports) != width(&range.to_ports) {
            return Err(invalid());
        }
        // pasta splits ranges around excluded ports and checks each piece,
        // so a port 0 that is excluded is no error.
        if *range.ports.start() == 0 && !excluded(0) {
            return Err(PortError::FromPortZero);
        }
        if *range.to_ports.start() == 0 && !excluded(*range.ports.start()) {
            return Err(PortError::ToPortZero);
        }
        if let Some(to) = range.to_addr {
            check_target(addr, to)?;
        }
        ranges.push(PortRange {
            to_first: *range.to_ports.start(),
            ports: range.ports,
            to_addr: range.to_addr,
        });
    }
    if !rest.is_empty() {
        return Err(invalid());
    }
    if ranges.is_empty()
        && let Some(to) = all_target
    {
        check_target(addr, to)?;
    }

    let ports = if ranges.is_empty() {
        Ports::All {
            to_addr: all_target,
        }
    } else {
        Ports::Ranges(ranges)
    };
    Ok(Some(PortSpec {
        addr,
        iface,
        ports,
        exclude,
        auto,
    }))
}

fn check_target(listen: Option<IpAddr>, to: IpAddr) -> Result<(), PortError> {
    let multicast = match to {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    };
    if multicast {
        return Err(PortError::MulticastTarget { addr: to });
    }
    match listen {
        None => Err(PortError::DualStackTarget { addr: to }),
        Some(from) if from.is_ipv4() != to.is_ipv4() => Err(PortError::FamilyMismatch { from, to }),
        Some(_) => Ok(()),
    }
}

/// A listening address and interface.
type Listen = (Option<IpAddr>, Option<String>);

/// `ADDR[%IFACE]/`, `*[%IFACE]/` or `%IFACE/` at the start of `arg`, and
/// the rest.
fn split_listen(arg: &str) -> Option<(Listen, &str)> {
    let (addr, rest) = match take_addr(arg) {
        Some((addr, rest)) => (Some(addr), rest),
        None => (None, arg.strip_prefix('*').unwrap_or(arg)),
    };
    let (iface, rest) = match rest.strip_prefix('%') {
        Some(after) => {
            let len = after
                .find(|c: char| c == '/' || c == '\x0b' || c.is_ascii_whitespace())
                .unwrap_or(after.len());
            if len == 0 || len > IFNAME_MAX {
                return None;
            }
            (Some(after[..len].to_owned()), &after[len..])
        }
        None => (None, rest),
    };
    let rest = rest.strip_prefix('/')?;
    Some(((addr, iface), rest))
}

enum Chunk {
    All { to_addr: Option<IpAddr> },
    Auto,
    Exclude(RangeInclusive<u16>),
    Include(Include),
}

/// An included range as written; the widths are checked later.
struct Include {
    ports: RangeInclusive<u16>,
    to_addr: Option<IpAddr>,
    to_ports: RangeInclusive<u16>,
}

/// One piece of PORTS at the start of `text`, and what follows it.
fn take_chunk(text: &str) -> Option<(Chunk, &str)> {
    if let Some(rest) = text.strip_prefix("all") {
        return Some(match rest.strip_prefix(':').and_then(take_addr) {
            Some((to, rest)) => (
                Chunk::All {
                    to_addr: specified(to),
                },
                rest,
            ),
            None => (Chunk::All { to_addr: None }, rest),
        });
    }
    if let Some(rest) = text.strip_prefix("auto") {
        return Some((Chunk::Auto, rest));
    }
    if let Some(rest) = text.strip_prefix('~') {
        let (range, rest) = take_range(rest)?;
        return Some((Chunk::Exclude(range), rest));
    }
    let (ports, rest) = take_range(text)?;
    let include = |to_addr, to_ports, rest| {
        Some((
            Chunk::Include(Include {
                ports: ports.clone(),
                to_addr,
                to_ports,
            }),
            rest,
        ))
    };
    let Some(target) = rest.strip_prefix(':') else {
        return include(None, ports.clone(), rest);
    };
    // As pasta tries them: `:toaddr/toports`, `:toaddr`, `:toports`, and
    // else no target at all (the `:` is then left over).
    if let Some((addr, after)) = take_addr(target) {
        if let Some((to_ports, after)) = after.strip_prefix('/').and_then(take_range) {
            return include(specified(addr), to_ports, after);
        }
        return include(specified(addr), ports.clone(), after);
    }
    match take_range(target) {
        Some((to_ports, after)) => include(None, to_ports, after),
        None => include(None, ports.clone(), rest),
    }
}

/// `0.0.0.0` and `::` as a target mean "the guest's address", as no
/// target does.
fn specified(addr: IpAddr) -> Option<IpAddr> {
    (!addr.is_unspecified()).then_some(addr)
}

/// `first[-last]` at the start of `text`, with `first <= last`.
fn take_range(text: &str) -> Option<(RangeInclusive<u16>, &str)> {
    let (first, rest) = take_port(text)?;
    let (last, rest) = match rest.strip_prefix('-') {
        Some(after) => take_port(after)?,
        None => (first, rest),
    };
    (first <= last).then_some((first..=last, rest))
}

fn take_port(text: &str) -> Option<(u16, &str)> {
    let (port, rest) = take_ulong(text, 10)?;
    Some((u16::try_from(port).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(option: PortOption, arg: &str) -> PortSpec {
        match parse(option, arg) {
            Ok(Some(spec)) => spec,
            other => panic!("{arg}: {other:?}"),
        }
    }

    fn err(option: PortOption, arg: &str) -> String {
        match parse(option, arg) {
            Err(e) => e.to_string(),
            other => panic!("{arg}: {other:?}"),
        }
    }

    fn range(first: u16, last: u16, to_first: u16) -> PortRange {
        PortRange {
            ports: first..=last,
            to_addr: None,
            to_first,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn podman_ranges_with_and_without_host_ips() {
        let s = ok(PortOption::Tcp, "8080-8080:80-80");
        assert_eq!((s.addr, s.iface.as_deref(), s.auto), (None, None, false));
        assert_eq!(s.ports, Ports::Ranges(vec![range(8080, 8080, 80)]));
        assert_eq!(
            ok(PortOption::Tcp, "127.0.0.1/8081-8081:80-80").addr,
            Some(ip("127.0.0.1"))
        );
        let s = ok(PortOption::Udp, "::1/8080-8080:80-80");
        assert_eq!(s.addr, Some(ip("::1")));
        assert_eq!(s.ports, Ports::Ranges(vec![range(8080, 8080, 80)]));
        assert_eq!(ok(PortOption::Tcp, "[::1]/80").addr, Some(ip("::1")));
        assert_eq!(
            ok(PortOption::TcpNs, "5201").ports,
            Ports::Ranges(vec![range(5201, 5201, 5201)])
        );
    }

    #[test]
    fn lists_exclusions_and_interfaces() {
        let s = ok(PortOption::Tcp, "192.0.2.1%eth0/20-30,~25,40:41");
        assert_eq!(s.addr, Some(ip("192.0.2.1")));
        assert_eq!(s.iface.as_deref(), Some("eth0"));
        assert_eq!(
            s.ports,
            Ports::Ranges(vec![range(20, 30, 20), range(40, 40, 41)])
        );
        assert_eq!(s.exclude, [25..=25]);
        let s = ok(PortOption::Tcp, "%eth0/22");
        assert_eq!((s.addr, s.iface.as_deref()), (None, Some("eth0")));
        assert_eq!(ok(PortOption::Tcp, "*/22").addr, None);
        // Exclusions alone mean every other port.
        let s = ok(PortOption::Tcp, "~20000-20010");
        assert_eq!(s.ports, Ports::All { to_addr: None });
        assert_eq!(s.exclude, [20000..=20010]);
    }

    #[test]
    fn all_auto_and_targets() {
        let s = ok(PortOption::Tcp, "auto");
        assert_eq!((s.ports, s.auto), (Ports::All { to_addr: None }, true));
        let s = ok(PortOption::Tcp, "::1/auto");
        assert_eq!((s.addr, s.auto), (Some(ip("::1")), true));
        let s = ok(PortOption::Tcp, "8000-8010,auto");
        assert_eq!(
            (s.ports, s.auto),
            (Ports::Ranges(vec![range(8000, 8010, 8000)]), true)
        );
        assert_eq!(
            ok(PortOption::Tcp, "all").ports,
            Ports::All { to_addr: None }
        );
        let s = ok(PortOption::Tcp, "127.0.0.6/all:192.0.2.6");
        assert_eq!(
            s.ports,
            Ports::All {
                to_addr: Some(ip("192.0.2.6"))
            }
        );
        let s = ok(PortOption::Tcp, "0.0.0.0/5000:192.0.2.5/6000");
        let to = PortRange {
            to_addr: Some(ip("192.0.2.5")),
            ..range(5000, 5000, 6000)
        };
        assert_eq!(s.ports, Ports::Ranges(vec![to]));
        let s = ok(PortOption::Tcp, "::/80:2001:db8::1");
        let to = PortRange {
            to_addr: Some(ip("2001:db8::1")),
            ..range(80, 80, 80)
        };
        assert_eq!(s.ports, Ports::Ranges(vec![to]));
        // Listed ranges win over `all`, as in pasta.
        assert_eq!(
            ok(PortOption::Tcp, "80,all").ports,
            Ports::Ranges(vec![range(80, 80, 80)])
        );
    }

    #[test]
    fn bad_specs_name_what_follows_the_address() {
        for (arg, spec) in [
            ("80x", "80x"),
            ("", ""),
            ("65536", "65536"),
            ("90-80", "90-80"),
            ("80-90:100-101", "80-90:100-101"),
            ("80,", "80,"),
            ("none,80", "none,80"),
            ("127.0.0.1/80:abc", "80:abc"),
            ("all:", "all:"),
            ("allx", "allx"),
            ("%/80", "%/80"),
            ("%sixteen-chars-xx/80", "%sixteen-chars-xx/80"),
            ("127.0.0.1", "127.0.0.1"),
        ] {
            assert_eq!(
                err(PortOption::Tcp, arg),
                format!("Invalid port specifier '{spec}'"),
                "{arg}"
            );
        }
    }

    #[test]
    fn refusals_with_pastas_texts() {
        assert_eq!(
            err(PortOption::UdpNs, "::1/53"),
            "Listening address not allowed for -U ::1/53"
        );
        assert_eq!(
            err(PortOption::TcpNs, "%lo/53"),
            "Listening address not allowed for -T %lo/53"
        );
        assert_eq!(err(PortOption::Tcp, "%../53"), "Invalid interface name: ..");
        assert_eq!(
            err(PortOption::Tcp, "0"),
            "Forwarding rule attempts to map from port 0"
        );
        assert_eq!(
            err(PortOption::Tcp, "80:0"),
            "Forwarding rule attempts to map to port 0"
        );
        assert_eq!(
            err(PortOption::Tcp, "80:192.0.2.1"),
            "Dual stack forward to IPv4 address 192.0.2.1 unsupported"
        );
        assert_eq!(
            err(PortOption::Tcp, "0.0.0.0/80:2001:db8::1"),
            "Forward from IPv4 (0.0.0.0) to IPv6 (2001:db8::1) unsupported"
        );
        assert_eq!(
            err(PortOption::Tcp, "0.0.0.0/80:224.0.0.1"),
            "Multicast target address 224.0.0.1 for forwarding rule"
        );
        // An excluded port 0 is no rule, so no error.
        assert_eq!(ok(PortOption::Tcp, "0-5,~0").exclude, [0..=0]);
    }

    #[test]
    fn none_clears_only_what_nothing_set() {
        let mut tcp = Forwards::Default;
        tcp.add(PortOption::Tcp, "none").unwrap();
        assert_eq!(tcp, Forwards::Given(vec![]));
        tcp.add(PortOption::Tcp, "none").unwrap();
        tcp.add(PortOption::Tcp, "80").unwrap();
        assert_eq!(
            tcp.add(PortOption::Tcp, "none").unwrap_err().to_string(),
            "-t none conflicts with previous options"
        );
    }
}
