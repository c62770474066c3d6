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
use crate::relay::RelayProto;

/// One port relayed from the namespace's loopback to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsForward {
    pub proto: RelayProto,
    /// Bound inside the namespace.
    pub port: u16,
    /// Connected to on the host's loopback.
    pub to_port: u16,
}

/// The `-T` and `-U` ports to bind inside the namespace.
pub fn ns_forwards(tcp_ns: &Forwards, udp_ns: &Forwards) -> anyhow::Result<Vec<NsForward>> {
    let mut out = Vec::new();
    for (flag, proto, f) in [
        ("-T", RelayProto::Tcp, tcp_ns),
        ("-U", RelayProto::Udp, udp_ns),
    ] {
        let specs = match f {
            Forwards::Default => {
                log::warn!(
                    "{flag} auto (pasta's default) is not supported by netferry's pasta mode yet: \
                     no ports are forwarded from the namespace to the host"
                );
                continue;
            }
            Forwards::Given(specs) => specs,
        };
        for spec in specs {
            out.extend(spec_ns_forwards(flag, proto, spec)?);
        }
    }
    Ok(out)
}

fn spec_ns_forwards(
    flag: &str,
    proto: RelayProto,
    spec: &PortSpec,
) -> anyhow::Result<Vec<NsForward>> {
    let ranges = match &spec.ports {
        Ports::Ranges(r) if !spec.auto => r,
        _ => bail!(
            "{flag}: 'all' and 'auto' are not supported by netferry's pasta mode yet; \
             list the ports"
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

    /// Ports in `state` in the namespace's tables `files` (indexes into
    /// [`PROC_NET`]), marked in `map`.
    fn scan(&mut self, files: &[usize], state: u32, map: &mut [bool]) {
        for &i in files {
            let Some(mut file) = self.proc_net.get(i) else {
                continue;
            };
            self.text.clear();
            if let Err(e) = file
                .rewind()
                .and_then(|()| file.read_to_string(&mut self.text))
            {
                log::debug!("reading {}: {e}", PROC_NET[i]);
                continue;
            }
            for port in listening(&self.text, state) {
                map[usize::from(port)] = true;
            }
        }
    }

    /// Scan the namespace and bind or close host ports to match.
    pub fn sync(&mut self, engine: &mut Engine<NetHost>) {
        let mut tcp = vec![false; PORTS];
        let mut udp = vec![false; PORTS];
        if self.rules.iter().any(|r| r.proto == Proto::Tcp) {
            self.scan(&[0, 1], TCP_LISTEN, &mut tcp);
        }
        if self.rules.iter().any(|r| r.proto == Proto::Udp) {
            self.scan(&[2, 3], UDP_LISTEN, &mut udp);
            self.scan(&[0, 1], TCP_LISTEN, &mut udp);
        }
        for &p in &self.own_tcp {
            tcp[usize::from(p)] = false;
        }
        for &p in &self.own_udp {
            udp[usize::from(p)] = false;
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

    #[test]
    fn all_leaves_out_exclusions_and_the_ephemeral_range() {
        let spec = super::super::ports::parse(PortOption::Tcp, "all,~20-30")
            .unwrap()
            .unwrap();
        let rule = host_rule(
            Proto::Tcp,
            &spec,
            (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::UNSPECIFIED.into()),
            &(40000..=65535),
        );
        let ports: Vec<u16> = rule.ports().collect();
        assert_eq!(ports.len(), 39999 - 11);
        assert_eq!((ports[0], ports[18], ports[19]), (1, 19, 31));
        assert_eq!(ports.last(), Some(&39999));
        assert!(!rule.auto);
        let spec = super::super::ports::parse(PortOption::Udp, "8000-8002:9000-9002,~8001,auto")
            .unwrap()
            .unwrap();
        let rule = host_rule(
            Proto::Udp,
            &spec,
            (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::UNSPECIFIED.into()),
            &(1..=2),
        );
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
        let got: Vec<_> = ns_forwards(&tcp, &udp)
            .unwrap()
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
        assert!(ns_forwards(&none, &none).unwrap().is_empty());
    }

    #[test]
    fn ns_auto_and_all_are_refused_by_name() {
        let none = given(PortOption::UdpNs, &["none"]);
        for arg in ["auto", "all", "~22"] {
            let e = ns_forwards(&given(PortOption::TcpNs, &[arg]), &none).unwrap_err();
            assert!(
                e.to_string().starts_with("-T: 'all' and 'auto'"),
                "{arg}: {e}"
            );
        }
    }
}
