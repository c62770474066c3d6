//! pasta's command line served: [`PastaArgs`] made into a [`Config`]
//! with pasta's address model, then the namespace set up, the daemon
//! started, and the loop run until the namespace goes.
//!
//! The address model: the guest gets the host's own addresses and routes
//! (from the template interface, the one with the default route, or
//! `-i`), or `-a`/`-n`/`-g`; with no usable host interface, pasta's local
//! mode (169.254.2.1/16 via 169.254.2.2; for IPv6 no address and a
//! default route via fe80::1). The gateway address leads to
//! the host's loopback unless `--no-map-gw`, `--map-host-loopback` names
//! another such address, `--map-guest-addr` one that leads to the host's
//! own address, `--dns-forward` one that leads to the host's resolver.
//! Everything else, the host's own subnets included, goes out through
//! host sockets.
//!
//! What callers rely on: the parent exits 0 only once the namespace is
//! fully set up (tap with its addresses, routes and MTU, `lo` up, every
//! given port bound, the pid file written), and the daemon lets go of
//! their stdin, stdout and stderr (podman waits for EOF on them). Any
//! failure: exit 1 with a message on stderr. Like pasta, the daemon
//! isolates itself before it is ready: the sandbox (a mount namespace
//! with an empty root) and the seccomp filter, always.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::cli::{
    self, IpVersions, LogLevel, Nameservers, Parsed, PastaArgs, SearchDomains, Target, UserNs,
};
use super::forward;
use super::ports::{Forwards, PortSpec, Ports};
use crate::config::{
    self, Config, CopiedAddr, CopiedRoute, DEFAULT_BUSY_POLL_MICROS, InterfaceCopy,
};
use crate::engine::{AddressPlan, Carry, ForwardSpec, Limits, Link4, Link6, MapTo, Mapping, Proto};
use crate::event_loop::EventLoop;
use crate::host::{Outbound, OutboundDevices, Splice};
use crate::relay::{RelayProto, RelayRule};
use crate::setup::{self, netlink};

/// pasta's own MAC on the tap (`-M` changes it).
pub const OUR_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
/// pasta's local mode: the guest's address, prefix and gateway when the
/// host has no interface to copy.
const LOCAL_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);
const LOCAL_PREFIX: u8 = 16;
const LOCAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 2);
/// pasta's local mode for IPv6: no address, a default route through this
/// link-local gateway.
const LOCAL_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The prefix length pasta gives an IPv6 address of `-a` (any length
/// given with it is checked and dropped).
const GIVEN_PREFIX6: u8 = 64;
/// Listed by a kernel that has IPv6 (none without, as with
/// `ipv6.disable=1`).
const IF_INET6: &str = "/proc/net/if_inet6";
/// The tap's name when there is no template to name it after.
const DEFAULT_IFNAME: &str = "tap0";
/// The host's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// `pasta ARGS...` (or `netferry pasta ARGS...`): parse, then serve.
pub fn main(argv0: &str, args: &[std::ffi::OsString]) -> ExitCode {
    use std::io::Write;
    let args = match cli::parse(argv0, args) {
        Ok(Parsed::Version(text)) | Ok(Parsed::Help(text)) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(args)) => args,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            return ExitCode::FAILURE;
        }
    };
    // pasta running a command is quiet unless debugging.
    let level = match (&args.target, args.log_level) {
        (Target::Command { .. }, LogLevel::Info) => LogLevel::Quiet,
        (_, level) => level,
    };
    if let Err(e) = init_logging(level, args.log_file.as_deref()) {
        let _ = writeln!(std::io::stderr(), "{e:#}");
        return ExitCode::FAILURE;
    }
    for warning in &args.warnings {
        log::warn!("{warning}");
    }
    if let (Some(size), Some(_)) = (args.log_size, &args.log_file) {
        log::warn!(
            "--log-size {size}: netferry does not rotate its log file; it grows past that size"
        );
    }
    if let Target::Command { argv, userns } = &args.target {
        return match refuse_unsupported(&args)
            .and_then(|()| super::command::run(&args, argv, userns))
        {
            Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "{e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log to stderr, or with `-l` to that file only (appended to; pasta's
/// `--log-size` rotation is not done).
fn init_logging(level: LogLevel, file: Option<&Path>) -> anyhow::Result<()> {
    let default = match level {
        LogLevel::Quiet => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let target = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("Couldn't open log file {}", path.display()))?;
            env_logger::Target::Pipe(Box::new(f))
        }
        None => env_logger::Target::Stderr,
    };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .target(target)
        .try_init();
    Ok(())
}

/// The namespace file to join and the user namespace to join first;
/// for a command, those of its child `child` (see [`super::command`]).
fn target_of(
    args: &PastaArgs,
    child: Option<i32>,
) -> anyhow::Result<(config::Target, Option<PathBuf>, PathBuf)> {
    let userns = |u: &UserNs| match u {
        UserNs::Join(path) => Some(path.clone()),
        UserNs::Keep | UserNs::New => None,
    };
    match &args.target {
        Target::Netns { path, userns: u } => {
            Ok((config::Target::Path(path.clone()), userns(u), path.clone()))
        }
        Target::Pid { pid, userns: u } => {
            let pid = i32::try_from(*pid).with_context(|| format!("Invalid PID {pid}"))?;
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            Ok((config::Target::Pid(pid), userns(u), netns))
        }
        Target::Command { userns: u, .. } => {
            let pid = child.context("the command's namespaces do not exist yet")?;
            // `--userns`: this process joined it before making the
            // command's; `--netns-only`: there is none to join.
            let userns = match u {
                UserNs::New => Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
                UserNs::Join(_) | UserNs::Keep => None,
            };
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            Ok((config::Target::Pid(pid), userns, netns))
        }
    }
}

/// The host's IPv4 configuration to copy: the template interface's
/// addresses and routes, or what `-a`, `-n`, `-g` say; pasta's local
/// mode when there is neither.
struct HostV4 {
    ifname: Option<String>,
    mtu: Option<u32>,
    /// The guest's address and prefix: the host's first.
    addr: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    /// The host's own address, where `--map-guest-addr` leads.
    host_addr: Option<Ipv4Addr>,
    copy: InterfaceCopy,
}

fn host_v4(args: &PastaArgs) -> anyhow::Result<HostV4> {
    // pasta copies from the outbound interface when -i does not say.
    let template_if = args.template_if.as_ref().or(args.outbound_if4.as_ref());
    let template = netlink::template(netlink::Family::V4, template_if.map(String::as_str))
        .context("cannot read the host's IPv4 configuration")?;
    let template_addr = template.as_ref().and_then(|t| {
        t.addrs.iter().find_map(|a| match a.addr {
            IpAddr::V4(v4) => Some((v4, a.prefix_len)),
            IpAddr::V6(_) => None,
        })
    });
    let template_gateway = template.as_ref().and_then(|t| {
        t.routes
            .iter()
            .find_map(|r| match (r.prefix_len, r.gateway) {
                (0, Some(IpAddr::V4(g))) => Some(g),
                _ => None,
            })
    });
    let (addr, prefix_len) = match (args.addr4, template_addr) {
        (Some(a), t) => (a, args.prefix4.or(t.map(|t| t.1)).unwrap_or(24)),
        (None, Some((a, len))) => (a, args.prefix4.unwrap_or(len)),
        (None, None) => (LOCAL_ADDR, LOCAL_PREFIX),
    };
    let local = template_addr.is_none() && args.addr4.is_none();
    let gateway =
        args.gateway4
            .or(template_gateway)
            .unwrap_or(if local { LOCAL_GATEWAY } else { addr });
    let mut copy = InterfaceCopy::default();
    let copied_addrs = args.addr4.is_none() && !local;
    if copied_addrs && let Some(t) = &template {
        for a in t.addrs.iter().filter(|a| a.addr.is_ipv4()) {
            copy.addrs.push(CopiedAddr {
                addr: a.addr,
                prefix_len: a.prefix_len,
                no_prefix_route: a.no_prefix_route,
            });
            if args.no_copy_addrs {
                break;
            }
        }
    } else {
        copy.addrs.push(CopiedAddr {
            addr: addr.into(),
            prefix_len,
            no_prefix_route: false,
        });
    }
    match &template {
        Some(t) if args.gateway4.is_none() && !local && !args.no_copy_routes => {
            copy.routes.extend(copied_routes(t, IpAddr::is_ipv4));
        }
        _ => copy.routes.push(default_route(gateway.into())),
    }
    Ok(HostV4 {
        ifname: template.as_ref().map(|t| t.name.clone()),
        mtu: template.as_ref().map(|t| t.mtu),
        addr,
        prefix_len,
        gateway,
        host_addr: template_addr.map(|(a, _)| a),
        copy,
    })
}

/// The host's IPv6 configuration to copy, as pasta's `conf_ip6`: the
/// template interface's global addresses and its routes, or what `-a`
/// and `-g` say. The template must have a default route (or `-g`) and an
/// address; without, pasta's local mode: no address unless `-a`, and a
/// default route via fe80::1.
struct HostV6 {
    ifname: Option<String>,
    mtu: Option<u32>,
    /// The guest's address: `-a`, or the host's with the longest prefix
    /// (as pasta picks); `None` in local mode without `-a`.
    addr: Option<Ipv6Addr>,
    gateway: Ipv6Addr,
    /// The host's own address, where `--map-guest-addr` leads.
    host_addr: Option<Ipv6Addr>,
    copy: InterfaceCopy,
}

/// `None`: no IPv6 at all (`-4`, or a kernel without IPv6).
fn host_v6(args: &PastaArgs) -> anyhow::Result<Option<HostV6>> {
    if args.ip_versions == IpVersions::V4Only || !Path::new(IF_INET6).exists() {
        return Ok(None);
    }
    let template_if = args.template_if.as_ref().or(args.outbound_if6.as_ref());
    let template = netlink::template(netlink::Family::V6, template_if.map(String::as_str))
        .context("cannot read the host's IPv6 configuration")?;
    let v6 = |a: IpAddr| match a {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    };
    let template_gateway = template.as_ref().and_then(|t| {
        t.routes
            .iter()
            .find_map(|r| match (r.prefix_len, r.gateway) {
                (0, Some(IpAddr::V6(g))) => Some(g),
                _ => None,
            })
    });
    // The first of the longest prefix, as pasta's nl_addr_get picks.
    let template_addr = template.as_ref().and_then(|t| {
        t.addrs
            .iter()
            .filter_map(|a| v6(a.addr).map(|v| (v, a.prefix_len)))
            .fold(None, |best: Option<(Ipv6Addr, u8)>, a| match best {
                Some(b) if b.1 >= a.1 => Some(b),
                _ => Some(a),
            })
            .map(|(a, _)| a)
    });
    let local = template_addr.is_none() || (template_gateway.is_none() && args.gateway6.is_none());
    let (gateway, addr) = if local {
        (LOCAL_GATEWAY6, args.addr6)
    } else {
        (
            args.gateway6.or(template_gateway).unwrap_or(LOCAL_GATEWAY6),
            args.addr6.or(template_addr),
        )
    };
    let mut copy = InterfaceCopy::default();
    match (&template, args.addr6) {
        (Some(t), None) if !local && !args.no_copy_addrs => {
            for a in t.addrs.iter().filter(|a| a.addr.is_ipv6()) {
                copy.addrs.push(CopiedAddr {
                    addr: a.addr,
                    prefix_len: a.prefix_len,
                    no_prefix_route: a.no_prefix_route,
                });
            }
        }
        _ => {
            if let Some(a) = addr {
                copy.addrs.push(CopiedAddr {
                    addr: a.into(),
                    prefix_len: GIVEN_PREFIX6,
                    no_prefix_route: false,
                });
            }
        }
    }
    match &template {
        Some(t) if !local && args.gateway6.is_none() && !args.no_copy_routes => {
            copy.routes.extend(copied_routes(t, IpAddr::is_ipv6));
        }
        _ => copy.routes.push(default_route(gateway.into())),
    }
    Ok(Some(HostV6 {
        ifname: template.as_ref().map(|t| t.name.clone()),
        mtu: template.as_ref().map(|t| t.mtu),
        addr,
        gateway,
        host_addr: template_addr,
        copy,
    }))
}

/// The template's routes of one family, to copy as pasta's
/// `nl_route_dup` does (one with an unreachable gateway is skipped).
fn copied_routes(
    template: &netlink::Template,
    family: fn(&IpAddr) -> bool,
) -> impl Iterator<Item = CopiedRoute> + '_ {
    template
        .routes
        .iter()
        .filter(move |r| family(&r.dst))
        .map(|r| CopiedRoute {
            dst: r.dst,
            prefix_len: r.prefix_len,
            gateway: r.gateway,
            metric: r.metric,
            onlink: r.onlink,
            required: false,
        })
}

/// The one default route pasta sets (`nl_route_set_def`) when it copies
/// none: a refusal fails setup.
fn default_route(gateway: IpAddr) -> CopiedRoute {
    let dst = match gateway {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    CopiedRoute {
        dst,
        prefix_len: 0,
        gateway: Some(gateway),
        metric: None,
        onlink: false,
        required: true,
    }
}

/// pasta's maps over the guest's links.
fn plan_of(args: &PastaArgs, host: &HostV4, host6: Option<&HostV6>) -> AddressPlan {
    let resolv = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let mut maps = Vec::new();
    let mut map = |addr: IpAddr, to: MapTo| {
        if !maps.iter().any(|m: &Mapping| m.addr == addr) {
            maps.push(Mapping { addr, to });
        }
    };
    if let Some(dns) = args.dns_forward4 {
        map(dns.into(), dns_target(args.dns_host4.map(IpAddr::V4)));
    }
    if let Some(a) = args.map_guest_addr4 {
        let to = match host.host_addr {
            Some(h) => MapTo::Host(h.into()),
            None => MapTo::HostLoopback,
        };
        map(a.into(), to);
    }
    if let Some(a) = args.map_host_loopback4 {
        map(a.into(), MapTo::HostLoopback);
    }
    if !args.no_map_gw {
        map(host.gateway.into(), MapTo::HostLoopback);
    }
    if let Some(h6) = host6 {
        if let Some(dns) = args.dns_forward6 {
            map(dns.into(), dns_target(args.dns_host6.map(IpAddr::V6)));
        }
        if let Some(a) = args.map_guest_addr6 {
            let to = match h6.host_addr {
                Some(h) => MapTo::Host(h.into()),
                None => MapTo::HostLoopback,
            };
            map(a.into(), to);
        }
        if let Some(a) = args.map_host_loopback6 {
            map(a.into(), MapTo::HostLoopback);
        }
        if !args.no_map_gw {
            map(h6.gateway.into(), MapTo::HostLoopback);
        }
    }
    let v6 = host6.map(|h6| Link6 {
        prefix: h6.addr.unwrap_or(Ipv6Addr::UNSPECIFIED),
        gateway: h6.gateway,
        // Router advertisements come from the gateway when it is
        // link-local (as the host's often is), else from pasta's own.
        gateway_ll: if h6.gateway.is_unicast_link_local() {
            h6.gateway
        } else {
            LOCAL_GATEWAY6
        },
        dns: None,
        guest: h6.addr,
        // pasta: --config-net implies --no-ra; --no-ndp stops them too.
        router_adverts: !(args.config_net || args.no_ra || args.no_ndp),
    });
    AddressPlan {
        v4: Link4 {
            guest: host.addr,
            prefix_len: host.prefix_len,
            gateway: host.gateway,
            dhcp: !args.no_dhcp,
            dhcp_pool: None,
            dns: dhcp_dns4(args, host.gateway, &resolv),
            dhcp_mtu: None,
        },
        v6,
        mac: args.our_mac.unwrap_or(OUR_MAC),
        maps,
        closed_subnets: false,
    }
}

/// Where `--dns-forward` leads: `--dns-host` of that family, else the
/// host's first resolver (re-read when resolv.conf changes).
fn dns_target(dns_host: Option<IpAddr>) -> MapTo {
    dns_host.map_or(MapTo::Resolver, MapTo::Nameserver)
}

/// The name server DHCP announces, as pasta's does: none unless
/// `--dhcp-dns`; then the first IPv4 one of `-D`, else of the host's
/// resolv.conf, where a resolver on the host's loopback (or at the address
/// that leads there) is announced as the `--dns-forward` address, else as
/// the address that leads to the host's loopback, else not at all. (pasta
/// announces up to three; netferry's DHCP carries one.)
fn dhcp_dns4(args: &PastaArgs, gateway: Ipv4Addr, resolv: &str) -> Option<Ipv4Addr> {
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    if !args.dhcp_dns {
        return None;
    }
    let host_loopback = args
        .map_host_loopback4
        .or((!args.no_map_gw).then_some(gateway));
    match &args.dns {
        Nameservers::None => None,
        Nameservers::List(list) => list.iter().copied().find_map(v4),
        Nameservers::Host => resolv
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next()? == "nameserver")
                    .then(|| words.next()?.parse::<IpAddr>().ok())
                    .flatten()
            })
            .filter_map(v4)
            .find_map(|ns| {
                if ns.is_loopback() || Some(ns) == host_loopback {
                    args.dns_forward4.or(host_loopback)
                } else {
                    Some(ns)
                }
            }),
    }
}

/// Where a `-t`/`-u` spec without an address listens: both families
/// (`[::]`) where the guest has IPv6, as pasta's do, else `0.0.0.0`.
fn listen_any(plan: &AddressPlan) -> IpAddr {
    match plan.v6 {
        Some(_) => Ipv6Addr::UNSPECIFIED.into(),
        None => Ipv4Addr::UNSPECIFIED.into(),
    }
}

/// The `-t`/`-u` forwards to bind before the parent exits; a spec
/// without an address listens on `any` (both families where the guest
/// has IPv6, as pasta's do).
fn forwards_of(args: &PastaArgs, guest: Ipv4Addr, any: IpAddr) -> anyhow::Result<Vec<ForwardSpec>> {
    let mut out = Vec::new();
    for (flag, proto, f) in [("-t", Proto::Tcp, &args.tcp), ("-u", Proto::Udp, &args.udp)] {
        // Not given: pasta's `auto`, made by forward::host_rules.
        let Forwards::Given(specs) = f else {
            continue;
        };
        for spec in specs.iter().filter(|s| !forward::is_rule(s)) {
            out.extend(spec_forwards(flag, proto, spec, guest, any)?);
        }
    }
    Ok(out)
}

fn spec_forwards(
    flag: &str,
    proto: Proto,
    spec: &PortSpec,
    guest: Ipv4Addr,
    any: IpAddr,
) -> anyhow::Result<Vec<ForwardSpec>> {
    let ranges = match &spec.ports {
        Ports::Ranges(r) if spec.iface.is_none() => r,
        _ => bail!("{flag}: %interface is not supported by netferry's pasta mode yet"),
    };
    let host_ip = spec.addr.unwrap_or(any);
    let mut out = Vec::new();
    for r in ranges {
        for (i, port) in r.ports.clone().enumerate() {
            if spec.exclude.iter().any(|x| x.contains(&port)) {
                continue;
            }
            let to = r
                .to_first
                .checked_add(i as u16)
                .context("port out of range")?;
            let guest_ip = match r.to_addr {
                Some(a) if !a.is_unspecified() => a,
                _ => guest.into(),
            };
            out.push(ForwardSpec {
                proto,
                host: SocketAddr::new(host_ip, port),
                guest: SocketAddr::new(guest_ip, to),
            });
        }
    }
    Ok(out)
}

/// The configuration pasta's command line amounts to (for a command,
/// once its child `child` exists).
pub fn config_of(
    args: &PastaArgs,
    child: Option<i32>,
) -> anyhow::Result<(Config, Vec<ForwardSpec>, PathBuf)> {
    let (target, userns_path, netns) = target_of(args, child)?;
    let host = host_v4(args)?;
    let host6 = host_v6(args)?;
    let v4 = args.ip_versions != IpVersions::V6Only;
    let template_mtu = host
        .mtu
        .filter(|_| v4)
        .or(host6.as_ref().and_then(|h| h.mtu));
    let mtu = match args.mtu {
        None => u32::from(super::args::MTU_DEFAULT),
        Some(0) => template_mtu.unwrap_or(1500),
        Some(m) => u32::from(m),
    };
    let mut copy = if v4 {
        host.copy.clone()
    } else {
        InterfaceCopy::default()
    };
    if let Some(h6) = &host6 {
        copy.addrs.extend_from_slice(&h6.copy.addrs);
        copy.routes.extend_from_slice(&h6.copy.routes);
    }
    copy.mtu = (args.mtu != Some(0)).then_some(mtu);
    let mut plan = plan_of(args, &host, host6.as_ref());
    // pasta's DHCP announces the MTU it would give the tap (not with -m 0).
    plan.v4.dhcp_mtu = copy.mtu.and_then(|m| u16::try_from(m).ok());
    let forwards = forwards_of(args, plan.v4.guest, listen_any(&plan))?;
    let tap_name = args
        .ns_ifname
        .clone()
        .or(host.ifname.clone().filter(|_| v4))
        .or(host6.as_ref().and_then(|h| h.ifname.clone()))
        .unwrap_or_else(|| DEFAULT_IFNAME.to_string());
    let cfg = Config {
        target,
        tap_name: Some(tap_name),
        userns_path,
        configure: false,
        copy: args.config_net.then_some(copy),
        loopback_up: true,
        exit_fd: None,
        ready_fd: None,
        mtu,
        mac: args.ns_mac,
        plan,
        offload: true,
        busy_poll: Duration::from_micros(DEFAULT_BUSY_POLL_MICROS),
        outbound_addr: args.outbound4.map(|a| a.to_string()),
        outbound_addr6: args.outbound6.map(|a| a.to_string()),
        tcp_buffer: config::DEFAULT_TCP_BUFFER,
        limits: Limits::default(),
        udp_timeout: config::DEFAULT_UDP_TIMEOUT_SECS,
        api_socket: None,
        // pasta always isolates itself; so does netferry in its place.
        sandbox: true,
        seccomp: true,
        debug: matches!(args.log_level, LogLevel::Debug | LogLevel::Trace),
        warnings: Vec::new(),
    };
    Ok((cfg, forwards, netns))
}

/// What netferry cannot do for some values or combinations of options
/// it otherwise serves (those it never serves are refused by the parser,
/// `options::UNSUPPORTED`): exit 1 naming the option, never ignore it.
fn refuse_unsupported(args: &PastaArgs) -> anyhow::Result<()> {
    const NOT: &str = "is not supported by netferry's pasta mode";
    if args.dhcp_search && args.search != SearchDomains::None {
        bail!("--dhcp-search {NOT}: its DHCP carries no search domains (give -S none)");
    }
    if args.dhcp_dns
        && let Nameservers::List(list) = &args.dns
    {
        if list.iter().filter(|d| d.is_ipv4()).count() > 1 {
            bail!(
                "-D with --dhcp-dns {NOT} for more than one IPv4 name server: its DHCP carries one"
            );
        }
        if list.iter().any(IpAddr::is_ipv6) {
            bail!("-D with --dhcp-dns {NOT} for IPv6 name servers: it announces none over NDP");
        }
    }
    let addressed = |f: &Forwards| match f {
        Forwards::Given(specs) => specs.iter().any(|s| s.addr.is_some()),
        Forwards::Default => false,
    };
    if args.freebind && (addressed(&args.tcp) || addressed(&args.udp)) {
        bail!("--freebind {NOT}: forwarded ports bind only to addresses the host has");
    }
    for (off, flag, forwards) in [
        (args.no_tcp, "TCP", &args.tcp),
        (args.no_udp, "UDP", &args.udp),
    ] {
        if off && matches!(forwards, Forwards::Given(specs) if !specs.is_empty()) {
            // pasta's words.
            bail!("Can't add {flag} forwarding rule, {flag} not enabled");
        }
    }
    Ok(())
}

/// `--runas UID[:GID]|LOGIN[:GROUP]` as pasta reads it: a numeric UID
/// alone is its own GID too, a login its primary group; root by name is
/// refused.
fn runas_ids(spec: &str) -> Option<(u32, u32)> {
    use nix::unistd::{Group, User};
    let number = |s: &str| super::values::ulong(s, 0).and_then(|n| u32::try_from(n).ok());
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid) = match number(user) {
        Some(uid) => (uid, uid),
        None => {
            let u = User::from_name(user).ok()??;
            (u.uid.as_raw(), u.gid.as_raw())
        }
    };
    if number(user).is_none() && uid == 0 {
        return None;
    }
    if let Some(g) = group {
        gid = match number(g) {
            Some(gid) => gid,
            None => Group::from_name(g).ok()??.gid.as_raw(),
        };
    }
    Some((uid, gid))
}

fn serve(args: &PastaArgs) -> anyhow::Result<()> {
    refuse_unsupported(args)?;
    // Opened before any change of user, as pasta does, so the pid file
    // may live where only the starting user can write.
    let mut pid_file = args
        .pid_file
        .as_deref()
        .map(|path| {
            std::fs::File::create(path)
                .map(|file| (file, path))
                .with_context(|| format!("Couldn't open PID file {}", path.display()))
        })
        .transpose()?;
    if let Some(spec) = &args.runas {
        run_as(spec)?;
    }
    if args.foreground {
        if let Some(file) = &mut pid_file {
            write_pid(file, std::process::id() as i32)?;
        }
        return serve_here(args, None);
    }
    // The daemon is forked first and sets everything up itself (a signal
    // fd and its epoll registration belong to the process that made
    // them); the parent waits for its word and leaves once it is ready.
    match setup::daemonize().context("cannot start the daemon")? {
        setup::Daemon::Parent { child, ready } => match ready {
            Ok(()) => {
                if let Some(file) = &mut pid_file {
                    write_pid(file, child)?;
                }
                setup::leave_now(0)
            }
            Err(message) => bail!("{message}"),
        },
        setup::Daemon::Child(ready) => {
            drop(pid_file);
            serve_here(args, Some(ready))
        }
    }
}

/// `--runas`: become that user and group before joining any namespace,
/// as pasta does (so a user namespace it owns gives back the
/// capabilities the change drops).
fn run_as(spec: &str) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let (uid, gid) = runas_ids(spec).with_context(|| format!("Invalid --runas option: {spec}"))?;
    // Without CAP_SETGID this fails, and there are none to drop.
    match setgroups(&[]) {
        Ok(()) | Err(nix::Error::EPERM) => {}
        Err(e) => return Err(e).context("Can't drop supplementary groups"),
    }
    setgid(Gid::from_raw(gid)).with_context(|| format!("Can't set GID to {gid}"))?;
    setuid(Uid::from_raw(uid)).with_context(|| format!("Can't set UID to {uid}"))?;
    Ok(())
}

/// Set up and serve in this process; tell `ready` (the daemon's parent)
/// when everything is in place, or what failed.
fn serve_here(args: &PastaArgs, ready: Option<setup::Readiness>) -> anyhow::Result<()> {
    let mut event_loop = match set_up(args, ready.as_ref(), None) {
        Ok(event_loop) => event_loop,
        Err(e) => {
            // The daemon's parent prints what failed and exits 1; the
            // daemon leaves quietly, or the caller would see it twice.
            if let Some(ready) = ready {
                ready.failed(&format!("{e:#}"));
                setup::leave_now(1);
            }
            return Err(e);
        }
    };
    if let Some(ready) = ready {
        ready.done();
    }
    setup::release_startup_memory();
    let exit = event_loop.run()?;
    log::info!("exiting: {exit:?}");
    Ok(())
}

/// The network served, ready to run: for the namespace the target names,
/// or for the command whose child is `child`.
pub(super) fn set_up(
    args: &PastaArgs,
    ready: Option<&setup::Readiness>,
    child: Option<i32>,
) -> anyhow::Result<EventLoop> {
    let (cfg, forwards, netns) = config_of(args, child)?;
    let outbound = Outbound {
        v4: cfg
            .outbound_addr
            .as_deref()
            .map(crate::host::resolve_outbound_v4)
            .transpose()?,
        v6: cfg
            .outbound_addr6
            .as_deref()
            .map(crate::host::resolve_outbound_v6)
            .transpose()?,
    };
    // -T/-U: sockets inside the namespace, made by the setup child.
    let (ns_forwards, ns_auto) =
        forward::ns_forwards(&args.tcp_ns, &args.udp_ns, forward::ephemeral_ports())?;
    let mut requests: Vec<_> = ns_forwards
        .iter()
        .map(|f| setup::NsRequest::Listen {
            udp: f.proto == RelayProto::Udp,
            port: f.port,
        })
        .collect();
    // -t/-u all and auto; auto reads the namespace's socket tables.
    let rules = forward::host_rules(
        &args.tcp,
        &args.udp,
        (cfg.plan.v4.guest, listen_any(&cfg.plan)),
        forward::ephemeral_ports(),
    )?;
    let (auto, all): (Vec<_>, Vec<_>) = rules.into_iter().partition(|r| r.auto);
    if !auto.is_empty() {
        requests.extend(
            forward::PROC_NET
                .iter()
                .map(|p| setup::NsRequest::Open(p.into())),
        );
    }
    let (tap, offload, mut made) =
        setup::obtain_tap_with(&cfg, &requests).context("cannot set up the namespace")?;
    let proc_net = made.split_off(ns_forwards.len());
    // -T/-U auto reads the host's tables: opened here, in the host's
    // namespace, before the sandbox takes /proc away.
    let host_proc_net = match ns_auto.is_empty() {
        true => Vec::new(),
        false => forward::PROC_NET
            .iter()
            .map(|p| std::fs::File::open(p).or_else(|_| std::fs::File::open("/dev/null")))
            .collect::<Result<Vec<_>, _>>()
            .context("cannot open the host's /proc/net tables for -T/-U auto")?,
    };
    setup::prefer_mmap_for_buffers();
    if let Err(e) = setup::raise_fd_limit() {
        log::warn!("cannot raise the open file limit: {e}");
    }
    let mut engine_cfg = cfg.engine_config();
    engine_cfg.carry = Carry {
        tcp: !args.no_tcp,
        udp: !args.no_udp,
        icmp: !args.no_icmp,
    };
    let mut event_loop = EventLoop::new(
        (tap, offload),
        (&engine_cfg, cfg.busy_poll),
        (outbound, Path::new(RESOLV_CONF)),
        None,
        None,
    )
    .context("cannot start the event loop")?;
    for spec in &forwards {
        event_loop
            .engine_mut()
            .add_forward(*spec)
            .with_context(|| {
                format!(
                    "Failed to bind port {} ({}) for forwarding",
                    spec.host.port(),
                    spec.host.ip()
                )
            })?;
    }
    event_loop
        .engine_mut()
        .host_mut()
        .bind_outbound_to(OutboundDevices {
            v4: args.outbound_if4.clone().map(Into::into),
            v6: args.outbound_if6.clone().map(Into::into),
        });
    forward::bind_all(&all, event_loop.engine_mut());
    let mut ns_scan = (!ns_auto.is_empty())
        .then(|| forward::NsAutoForwarder::new(host_proc_net, ns_auto, (&forwards, &all)));
    let mut scan = (!auto.is_empty()).then(|| {
        let files = proc_net.into_iter().map(std::fs::File::from).collect();
        forward::AutoForwarder::new(files, auto, &ns_forwards)
    });
    if scan.is_some() || ns_scan.is_some() {
        // The first scans once the connector is in place (below).
        event_loop.every_tick(Box::new(move |engine, ns| {
            if let Some(scan) = &mut scan {
                scan.sync(engine, ns_scan.as_ref());
            }
            if let (Some(ns_scan), Some(ns)) = (&mut ns_scan, ns) {
                ns_scan.sync(ns, scan.as_ref());
            }
        }));
    }
    let relayed = ns_forwards.iter().zip(made).map(|(f, socket)| RelayRule {
        proto: f.proto,
        socket,
        to_port: f.to_port,
    });
    event_loop
        .relay(
            relayed.collect(),
            Duration::from_secs(config::DEFAULT_UDP_TIMEOUT_SECS),
        )
        .context("cannot relay the -T/-U ports")?;
    // A command's namespaces end with it (pasta watches none either).
    if !args.no_netns_quit && child.is_none() {
        let watch = setup::NetnsWatch::new(&netns)
            .with_context(|| format!("cannot watch {}", netns.display()))?;
        event_loop.watch_netns(watch)?;
    }
    if let Some(ready) = ready {
        ready.release_stdio();
    }
    // Forked once the caller's stdio is let go of, which it would
    // otherwise hold open.
    let connector = setup::spawn_connector(&cfg).context("cannot set up the loopback splice")?;
    let splice = match args.host_lo_to_ns_lo {
        true => Splice::ToNsLoopback,
        false => Splice::ToGuest,
    };
    event_loop
        .splice_loopback(
            connector,
            splice,
            Duration::from_secs(config::DEFAULT_UDP_TIMEOUT_SECS),
        )
        .context("cannot set up the loopback splice")?;
    event_loop.tick_now();
    setup::lock_down(&cfg, &setup::seccomp::Scope::here(child, None))?;
    Ok(event_loop)
}

fn write_pid((file, path): &mut (std::fs::File, &Path), pid: i32) -> anyhow::Result<()> {
    use std::io::Write;
    file.write_all(format!("{pid}\n").as_bytes())
        .with_context(|| format!("Couldn't write PID file {}", path.display()))
}

/// Write `pid` to the file at `path` (a command's pasta, which changes
/// no user).
pub(super) fn write_pid_at(path: &Path, pid: i32) -> anyhow::Result<()> {
    std::fs::write(path, format!("{pid}\n"))
        .with_context(|| format!("Couldn't write PID file {}", path.display()))
}
