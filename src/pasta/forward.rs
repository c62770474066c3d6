//! pasta's port specs made into what netferry binds: `-T`/`-U` as ports
//! relayed from the namespace's loopback to the host's, and `-t`/`-u`'s
//! `all` and `auto` (listed ports are plain forwards, in `daemon.rs`).
//!
//! pasta binds a `-T`/`-U` port inside the namespace on every address of
//! both families, restricted to `lo` (fwd_rule.c, `fwd_rule_parse`), and
//! carries what arrives to the same loopback address on the host at the
//! mapped port (fwd.c, `fwd_nat_from_splice`).
//!
//! `all` (or exclusions alone) is every port but the excluded ones and
//! the host's ephemeral range, each bound if it can be (a port in use is
//! only a warning). `auto` forwards those of its ports that something
//! listens on inside the namespace: pasta reads the namespace's
//! `/proc/net/{tcp,tcp6,udp,udp6}` once a second (TCP in LISTEN, UDP
//! bound; UDP follows TCP's listening ports too, for iperf3 and the
//! like) and binds or closes the host's side to match, leaving out the
//! ports its own `-T`/`-U` sockets hold there (fwd.c, `fwd_scan_ports`).
//! It is pasta's default for `-t` and `-u`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

use anyhow::bail;

use super::ports::{Forwards, PortOption, PortSpec, Ports};
use crate::engine::{Engine, ForwardSpec, Proto};
use crate::host::NetHost;
use crate::relay::{Relay, RelayProto, RelayRule};
use crate::setup::Connector;

/// One port relayed from the namespace's loopback to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsForward {
    pub proto: RelayProto,
    /// Bound inside the namespace.
    pub port: u16,
    /// Connected to on the host's loopback.
    pub to_port: u16,
}

/// An `auto` spec of `-T`/`-U`: for each port bound inside the
/// namespace, the host loopback port it leads to (0: not forwarded).
pub struct NsAutoRule {
    proto: RelayProto,
    targets: Box<[u16]>,
}

/// The `-T` and `-U` ports to bind inside the namespace, and their
/// `auto` specs (pasta's default when the option is not given).
pub fn ns_forwards(
    tcp_ns: &Forwards,
    udp_ns: &Forwards,
    ephemeral: RangeInclusive<u16>,
) -> anyhow::Result<(Vec<NsForward>, Vec<NsAutoRule>)> {
    let mut out = Vec::new();
    let mut rules = Vec::new();
    for (option, proto, f) in [
        (PortOption::TcpNs, RelayProto::Tcp, tcp_ns),
        (PortOption::UdpNs, RelayProto::Udp, udp_ns),
    ] {
        let flag = format!("-{}", option.letter());
        let default;
        let specs = match f {
            Forwards::Default => {
                default = super::ports::parse(option, "auto")?;
                default.as_slice()
            }
            Forwards::Given(specs) => specs.as_slice(),
        };
        for spec in specs {
            if spec.auto {
                if let Ports::Ranges(ranges) = &spec.ports
                    && ranges.iter().any(|r| r.to_addr.is_some())
                {
                    bail!("{flag}: a target address is not supported by netferry's pasta mode");
                }
                let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                let rule = host_rule(Proto::Tcp, spec, (Ipv4Addr::UNSPECIFIED, any), &ephemeral);
                rules.push(NsAutoRule {
                    proto,
                    targets: rule.targets,
                });
                continue;
            }
            out.extend(spec_ns_forwards(&flag, proto, spec)?);
        }
    }
    Ok((out, rules))
}

fn spec_ns_forwards(
    flag: &str,
    proto: RelayProto,
    spec: &PortSpec,
) -> anyhow::Result<Vec<NsForward>> {
    let ranges = match &spec.ports {
        Ports::Ranges(r) => r,
        Ports::All { .. } => bail!(
            "{flag}: 'all' is not supported by netferry's pasta mode yet; list the ports \
             or use 'auto'"
        ),
    };
    let mut out = Vec::new();
    for r in ranges {
        if let Some(addr) = r.to_addr {
            bail!(
                "{flag}: a target address ({addr}) is not supported by netferry's pasta mode; \
                 ports go to the host's loopback"
            );
        }
        for (port, to_port) in r.ports.clone().zip(r.to_first..) {
            if spec.exclude.iter().any(|x| x.contains(&port)) {
                continue;
            }
            out.push(NsForward {
                proto,
                port,
                to_port,
            });
        }
    }
    Ok(out)
}

/// Every port number, for tables indexed by port.
const PORTS: usize = 1 << 16;
/// Where the host says which ports are ephemeral.
const PORT_RANGE_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// RFC 6335's ephemeral range, pasta's fallback.
const EPHEMERAL_DEFAULT: RangeInclusive<u16> = 49152..=65535;
/// File descriptors kept free while `all` binds.
const FD_RESERVE: usize = 256;
const DEV_NULL: &str = "/dev/null";
/// Socket states in /proc/net files (the kernel's tcp_states.h).
const TCP_LISTEN: u32 = 0x0a;
const UDP_LISTEN: u32 = 0x07;
/// The namespace's socket tables, in the order the setup child opens
/// them: TCP (IPv4, IPv6), then UDP.
pub const PROC_NET: [&str; 4] = [
    "/proc/net/tcp",
    "/proc/net/tcp6",
    "/proc/net/udp",
    "/proc/net/udp6",
];

/// The host's ephemeral ports, which `all` leaves out.
pub fn ephemeral_ports() -> RangeInclusive<u16> {
    let text = std::fs::read_to_string(PORT_RANGE_SYSCTL).unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(min)), Some(Ok(max))) if min <= max => min..=max,
        _ => {
            log::warn!("Unable to parse {PORT_RANGE_SYSCTL}");
            EPHEMERAL_DEFAULT
        }
    }
}

/// An `all` or `auto` spec of `-t`/`-u`: for each host port, the guest
/// port it leads to (0: not forwarded).
pub struct HostRule {
    pub proto: Proto,
    host_ip: IpAddr,
    guest_ip: IpAddr,
    targets: Box<[u16]>,
    pub auto: bool,
}

impl HostRule {
    fn spec(&self, port: u16) -> ForwardSpec {
        ForwardSpec {
            proto: self.proto,
            host: SocketAddr::new(self.host_ip, port),
            guest: SocketAddr::new(self.guest_ip, self.targets[usize::from(port)]),
        }
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|&p| self.targets[usize::from(p)] != 0)
    }
}

/// The `-t`/`-u` specs that are `all` or `auto` (pasta's default when
/// the option is not given), as rules; listed ports without `auto` are
/// left to the plain forwards.
pub fn host_rules(
    tcp: &Forwards,
    udp: &Forwards,
    (guest, any): (Ipv4Addr, IpAddr),
    ephemeral: RangeInclusive<u16>,
) -> anyhow::Result<Vec<HostRule>> {
    let mut out = Vec::new();
    for (option, proto, f) in [
        (PortOption::Tcp, Proto::Tcp, tcp),
        (PortOption::Udp, Proto::Udp, udp),
    ] {
        let default;
        let specs = match f {
            Forwards::Default => {
                default = super::ports::parse(option, "auto")?;
                default.as_slice()
            }
            Forwards::Given(specs) => specs.as_slice(),
        };
        for spec in specs.iter().filter(|s| is_rule(s)) {
            if spec.iface.is_some() {
                bail!(
                    "-{}: %interface is not supported by netferry's pasta mode yet",
                    option.letter()
                );
            }
            out.push(host_rule(proto, spec, (guest, any), &ephemeral));
        }
    }
    Ok(out)
}

/// Whether `spec` is one for [`host_rules`].
pub fn is_rule(spec: &PortSpec) -> bool {
    spec.auto || matches!(spec.ports, Ports::All { .. })
}

fn host_rule(
    proto: Proto,
    spec: &PortSpec,
    (guest, any): (Ipv4Addr, IpAddr),
    ephemeral: &RangeInclusive<u16>,
) -> HostRule {
    let mut targets = vec![0u16; PORTS].into_boxed_slice();
    let excluded = |port: u16| spec.exclude.iter().any(|r| r.contains(&port));
    let mut guest_ip = IpAddr::V4(guest);
    match &spec.ports {
        Ports::All { to_addr } => {
            if let Some(a) = to_addr {
                guest_ip = *a;
            }
            for port in 1..=u16::MAX {
                if !excluded(port) && !ephemeral.contains(&port) {
                    targets[usize::from(port)] = port;
                }
            }
        }
        Ports::Ranges(ranges) => {
            for r in ranges {
                if let Some(a) = r.to_addr {
                    guest_ip = a;
                }
                for (port, to) in r.ports.clone().zip(r.to_first..) {
                    if !excluded(port) {
                        targets[usize::from(port)] = to;
                    }
                }
            }
        }
    }
    HostRule {
        proto,
        host_ip: spec.addr.unwrap_or(any),
        guest_ip,
        targets,
        auto: spec.auto,
    }
}

/// Bind every port of the rules without `auto`; a port that cannot be
/// bound (in use on the host, say) is left out, as pasta does for
/// `all`. `all` wants some 32000 sockets per protocol, often more than
/// the open file limit: binding stops there, short of a reserve kept for
/// the rest of setup and for the flows themselves (pasta would use the
/// last fd too).
pub fn bind_all(rules: &[HostRule], engine: &mut Engine<NetHost>) {
    use crate::engine::ForwardError;
    let reserve: Vec<File> = (0..FD_RESERVE)
        .map_while(|_| File::open(DEV_NULL).ok())
        .collect();
    'rules: for rule in rules {
        let mut failed = Vec::new();
        for port in rule.ports() {
            match engine.add_forward(rule.spec(port)) {
                Ok(_) => {}
                Err(ForwardError::Bind { err, .. }) if err.raw_os_error() == Some(libc::EMFILE) => {
                    log::warn!(
                        "open file limit reached: {:?} ports from {port} on are not forwarded",
                        rule.proto
                    );
                    break 'rules;
                }
                Err(e) => {
                    log::debug!("{e}");
                    failed.push(port);
                }
            }
        }
        if let Some(first) = failed.first() {
            log::warn!(
                "Listen failed for {} {:?} port(s) of {}, from {first} on; they are not forwarded",
                failed.len(),
                rule.proto,
                rule.host_ip,
            );
        }
    }
    drop(reserve);
}

/// pasta's `auto`: the host's side of each rule kept in step with what
/// listens inside the namespace.
pub struct AutoForwarder {
    /// The namespace's [`PROC_NET`] files, opened there.
    proc_net: Vec<File>,
    rules: Vec<HostRule>,
    /// Ports our own `-T`/`-U` sockets hold inside the namespace.
    own_tcp: Vec<u16>,
    own_udp: Vec<u16>,
    /// Per rule: the forwards in place, by host port.
    bound: Vec<HashMap<u16, u64>>,
    text: String,
}

impl AutoForwarder {
    pub fn new(proc_net: Vec<File>, rules: Vec<HostRule>, own: &[NsForward]) -> Self {
        let own_of = |proto| {
            own.iter()
                .filter(|f| f.proto == proto)
                .map(|f| f.port)
                .collect()
        };
        AutoForwarder {
            proc_net,
            bound: rules.iter().map(|_| HashMap::new()).collect(),
            rules,
            own_tcp: own_of(RelayProto::Tcp),
            own_udp: own_of(RelayProto::Udp),
            text: String::new(),
        }
    }

    /// Scan the namespace and bind or close host ports to match.
    /// `ns_auto`: the ports `-T`/`-U auto` hold inside, left alone.
    pub fn sync(&mut self, engine: &mut Engine<NetHost>, ns_auto: Option<&NsAutoForwarder>) {
        let (mut tcp, mut udp) = listening_ports(
            &self.proc_net,
            (
                self.rules.iter().any(|r| r.proto == Proto::Tcp),
                self.rules.iter().any(|r| r.proto == Proto::Udp),
            ),
            &mut self.text,
        );
        for &p in &self.own_tcp {
            tcp[usize::from(p)] = false;
        }
        for &p in &self.own_udp {
            udp[usize::from(p)] = false;
        }
        if let Some(ns) = ns_auto {
            ns.unmark(RelayProto::Tcp, &mut tcp);
            ns.unmark(RelayProto::Udp, &mut udp);
        }
        for (rule, bound) in self.rules.iter().zip(&mut self.bound) {
            let seen = if rule.proto == Proto::Tcp { &tcp } else { &udp };
            bound.retain(|&port, id| {
                let keep = seen[usize::from(port)];
                if !keep {
                    log::info!("auto: {:?} port {port} closed inside; unbound", rule.proto);
                    let _ = engine.remove_forward(*id);
                }
                keep
            });
            for port in rule.ports() {
                if !seen[usize::from(port)] || bound.contains_key(&port) {
                    continue;
                }
                match engine.add_forward(rule.spec(port)) {
                    Ok(fwd) => {
                        log::info!("auto: {:?} port {port} open inside; bound", rule.proto);
                        bound.insert(port, fwd.id);
                    }
                    // In use on the host, most likely: tried again next
                    // time, as pasta does.
                    Err(e) => log::debug!("auto: {e}"),
                }
            }
        }
    }
}

impl AutoForwarder {
    /// Clear in `map` the host ports this scan has bound for `proto`.
    fn unmark(&self, proto: Proto, map: &mut [bool]) {
        for (rule, bound) in self.rules.iter().zip(&self.bound) {
            if rule.proto == proto {
                for &port in bound.keys() {
                    map[usize::from(port)] = false;
                }
            }
        }
    }
}

/// Ports in `state` in the tables `files` (indexes into `proc_net`, in
/// [`PROC_NET`]'s order), marked in `map`. The files are read again from
/// their start: opened before the sandbox, they stay readable after it.
/// The ports listening in the tables of `proc_net` (tcp, tcp6, udp, udp6),
/// as pasta counts them: TCP's listening sockets for TCP (with `want.0`);
/// for UDP (with `want.1`) bound UDP sockets and TCP's listening ports
/// too.
fn listening_ports(
    proc_net: &[File],
    want: (bool, bool),
    text: &mut String,
) -> (Vec<bool>, Vec<bool>) {
    let mut tcp = vec![false; PORTS];
    let mut udp = vec![false; PORTS];
    if want.0 {
        scan(proc_net, &[0, 1], TCP_LISTEN, &mut tcp, text);
    }
    if want.1 {
        scan(proc_net, &[2, 3], UDP_LISTEN, &mut udp, text);
        scan(proc_net, &[0, 1], TCP_LISTEN, &mut udp, text);
    }
    (tcp, udp)
}

fn scan(proc_net: &[File], files: &[usize], state: u32, map: &mut [bool], text: &mut String) {
    for &i in files {
        let Some(mut file) = proc_net.get(i) else {
            continue;
        };
        text.clear();
        if let Err(e) = file.rewind().and_then(|()| file.read_to_string(text)) {
            log::debug!("reading {}: {e}", PROC_NET[i]);
            continue;
        }
        for port in listening(text, state) {
            map[usize::from(port)] = true;
        }
    }
}

/// pasta's `-T`/`-U auto`: the namespace's loopback kept in step with
/// what listens on the host. pasta reads the host's socket tables as it
/// reads the namespace's for `-t auto`, every listening port whatever
/// its address, leaving out the ports it listens on itself for `-t`/`-u`
/// (fwd.c, `fwd_scan_ports`); each port seen is bound inside, on the
/// loopback as `-T` binds, and relayed to the host's loopback.
pub struct NsAutoForwarder {
    /// The host's [`PROC_NET`] files, opened before the sandbox.
    proc_net: Vec<File>,
    rules: Vec<NsAutoRule>,
    /// Host ports the engine listens on for `-t`/`-u`, besides `auto`'s.
    host_tcp: Box<[bool]>,
    host_udp: Box<[bool]>,
    /// Per rule: the relay's entries in place, by port.
    bound: Vec<HashMap<u16, usize>>,
    text: String,
}

impl NsAutoForwarder {
    /// `host`: the `-t`/`-u` forwards and `all` rules the engine
    /// listens for on the host.
    pub fn new(
        proc_net: Vec<File>,
        rules: Vec<NsAutoRule>,
        host: (&[ForwardSpec], &[HostRule]),
    ) -> Self {
        let mut host_tcp = vec![false; PORTS].into_boxed_slice();
        let mut host_udp = vec![false; PORTS].into_boxed_slice();
        let (forwards, all) = host;
        for f in forwards {
            let map = if f.proto == Proto::Tcp {
                &mut host_tcp
            } else {
                &mut host_udp
            };
            map[usize::from(f.host.port())] = true;
        }
        for rule in all.iter().filter(|r| !r.auto) {
            let map = if rule.proto == Proto::Tcp {
                &mut host_tcp
            } else {
                &mut host_udp
            };
            for port in rule.ports() {
                map[usize::from(port)] = true;
            }
        }
        NsAutoForwarder {
            proc_net,
            bound: rules.iter().map(|_| HashMap::new()).collect(),
            rules,
            host_tcp,
            host_udp,
            text: String::new(),
        }
    }

    /// Clear in `map` the namespace ports this scan holds for `proto`.
    fn unmark(&self, proto: RelayProto, map: &mut [bool]) {
        for (rule, bound) in self.rules.iter().zip(&self.bound) {
            if rule.proto == proto {
                for &port in bound.keys() {
                    map[usize::from(port)] = false;
                }
            }
        }
    }

    /// Scan the host and bind or close the namespace's ports to match;
    /// `host_auto`: the host ports `-t`/`-u auto` hold, left alone.
    pub fn sync(
        &mut self,
        (relay, connector): (&mut Relay, &mut Connector),
        host_auto: Option<&AutoForwarder>,
    ) {
        let (mut tcp, mut udp) = listening_ports(
            &self.proc_net,
            (
                self.rules.iter().any(|r| r.proto == RelayProto::Tcp),
                self.rules.iter().any(|r| r.proto == RelayProto::Udp),
            ),
            &mut self.text,
        );
        for (map, ours) in [(&mut tcp, &self.host_tcp), (&mut udp, &self.host_udp)] {
            for (seen, &ours) in map.iter_mut().zip(ours.iter()) {
                *seen &= !ours;
            }
        }
        if let Some(host) = host_auto {
            host.unmark(Proto::Tcp, &mut tcp);
            host.unmark(Proto::Udp, &mut udp);
        }
        for (rule, bound) in self.rules.iter().zip(&mut self.bound) {
            let seen = if rule.proto == RelayProto::Tcp {
                &tcp
            } else {
                &udp
            };
            bound.retain(|&port, entry| {
                let keep = seen[usize::from(port)];
                if !keep {
                    log::info!(
                        "auto: {:?} port {port} closed on the host; unbound inside",
                        rule.proto
                    );
                    relay.close(*entry);
                }
                keep
            });
            let is_udp = rule.proto == RelayProto::Udp;
            for port in 1..=u16::MAX {
                let to_port = rule.targets[usize::from(port)];
                if to_port == 0 || !seen[usize::from(port)] || bound.contains_key(&port) {
                    continue;
                }
                let socket = match connector.listener(is_udp, port) {
                    Ok(Some(socket)) => socket,
                    // In use inside, most likely: tried again next time.
                    Ok(None) => {
                        log::debug!("auto: cannot bind {:?} port {port} inside", rule.proto);
                        continue;
                    }
                    Err(e) => {
                        log::debug!("auto: the namespace's connector failed: {e}");
                        return;
                    }
                };
                let added = relay.add(RelayRule {
                    proto: rule.proto,
                    socket,
                    to_port,
                });
                match added {
                    Ok(entry) => {
                        log::info!(
                            "auto: {:?} port {port} open on the host; bound inside",
                            rule.proto
                        );
                        bound.insert(port, entry);
                    }
                    Err(e) => log::debug!("auto: cannot relay {:?} port {port}: {e}", rule.proto),
                }
            }
        }
    }
}

/// The local ports of the sockets in `state` in a /proc/net table: the
/// lines `sl: local_addr:PORT rem_addr:port STATE ...`, in hex.
fn listening(text: &str, state: u32) -> impl Iterator<Item = u16> + '_ {
    text.lines().skip(1).filter_map(move |line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let st = fields.nth(1)?;
        let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
        (u32::from_str_radix(st, 16).ok()? == state).then_some(port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net/tcp6 with a listener on [::]:8080, a connection from
    /// port 8080 (not listening) and one on 127.0.0.1:22 (IPv4-mapped).
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";

    #[test]
    fn proc_net_tables_give_the_listening_ports() {
        assert_eq!(listening(TCP6, TCP_LISTEN).collect::<Vec<_>>(), [8080, 22]);
        assert_eq!(listening(TCP6, UDP_LISTEN).count(), 0);
        assert_eq!(listening("header only\n", TCP_LISTEN).count(), 0);
        assert_eq!(
            listening("h\n0: garbage\n1: x:zz y:0 0A\n", TCP_LISTEN).count(),
            0
        );
    }

    /// The host rule of one `-t`/`-u` spec, the guest at 192.0.2.1.
    fn rule_of(option: PortOption, spec: &str, ephemeral: RangeInclusive<u16>) -> HostRule {
        let spec = super::super::ports::parse(option, spec).unwrap().unwrap();
        let proto = match option {
            PortOption::Udp => Proto::Udp,
            _ => Proto::Tcp,
        };
        host_rule(
            proto,
            &spec,
            (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::UNSPECIFIED.into()),
            &ephemeral,
        )
    }

    #[test]
    fn all_leaves_out_exclusions_and_the_ephemeral_range() {
        let rule = rule_of(PortOption::Tcp, "all,~20-30", 40000..=65535);
        let ports: Vec<u16> = rule.ports().collect();
        assert_eq!(ports.len(), 39999 - 11);
        assert_eq!((ports[0], ports[18], ports[19]), (1, 19, 31));
        assert_eq!(ports.last(), Some(&39999));
        assert!(!rule.auto);
        let rule = rule_of(PortOption::Udp, "8000-8002:9000-9002,~8001,auto", 1..=2);
        assert!(rule.auto);
        let targets: Vec<_> = rule
            .ports()
            .map(|p| (p, rule.spec(p).guest.port()))
            .collect();
        assert_eq!(targets, [(8000, 9000), (8002, 9002)]);
    }

    #[test]
    fn no_t_or_u_means_auto_for_both() {
        let none = Forwards::Given(Vec::new());
        let rules = host_rules(
            &Forwards::Default,
            &none,
            (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::UNSPECIFIED.into()),
            49152..=65535,
        )
        .unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].auto && rules[0].proto == Proto::Tcp);
        assert_eq!(rules[0].ports().count(), 49151);
    }

    fn given(option: PortOption, args: &[&str]) -> Forwards {
        let mut f = Forwards::Default;
        for arg in args {
            f.add(option, arg).unwrap();
        }
        f
    }

    #[test]
    fn ns_ports_expand_ranges_maps_and_exclusions() {
        let tcp = given(PortOption::TcpNs, &["5432", "8000-8003:9000-9003,~8001"]);
        let udp = given(PortOption::UdpNs, &["53"]);
        let (got, auto) = ns_forwards(&tcp, &udp, EPHEMERAL_DEFAULT).unwrap();
        assert!(auto.is_empty());
        let got: Vec<_> = got
            .into_iter()
            .map(|f| (f.proto, f.port, f.to_port))
            .collect();
        use RelayProto::{Tcp, Udp};
        assert_eq!(
            got,
            [
                (Tcp, 5432, 5432),
                (Tcp, 8000, 9000),
                (Tcp, 8002, 9002),
                (Tcp, 8003, 9003),
                (Udp, 53, 53)
            ]
        );
        let none = given(PortOption::TcpNs, &["none"]);
        let (got, auto) = ns_forwards(&none, &none, EPHEMERAL_DEFAULT).unwrap();
        assert!(got.is_empty() && auto.is_empty());
    }

    #[test]
    fn ns_all_is_refused_by_name() {
        let none = given(PortOption::UdpNs, &["none"]);
        for arg in ["all", "~22"] {
            let Err(e) = ns_forwards(&given(PortOption::TcpNs, &[arg]), &none, EPHEMERAL_DEFAULT)
            else {
                panic!("{arg}: accepted");
            };
            assert!(e.to_string().starts_with("-T: 'all'"), "{arg}: {e}");
        }
    }

    #[test]
    fn ns_auto_is_the_default_and_keeps_its_ranges() {
        let (got, auto) =
            ns_forwards(&Forwards::Default, &Forwards::Default, 60000..=65535).unwrap();
        assert!(got.is_empty());
        let protos: Vec<_> = auto.iter().map(|r| r.proto).collect();
        assert_eq!(protos, [RelayProto::Tcp, RelayProto::Udp]);
        assert_eq!((auto[0].targets[8080], auto[0].targets[60001]), (8080, 0));
        let tcp = given(PortOption::TcpNs, &["auto,8000-8001:9000-9001"]);
        let none = given(PortOption::UdpNs, &["none"]);
        let (got, auto) = ns_forwards(&tcp, &none, EPHEMERAL_DEFAULT).unwrap();
        assert!(got.is_empty());
        let targets = &auto[0].targets;
        assert_eq!(
            (targets[8000], targets[8001], targets[8080]),
            (9000, 9001, 0)
        );
    }
}
