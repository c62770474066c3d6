//! pasta's command line, read into [`PastaArgs`].
//!
//! pasta's behaviour is the specification: the syntax is glibc's
//! `getopt_long` with pasta's option table (`options.rs`), and each
//! value is checked where and as pasta checks it, with pasta's message, so
//! a caller sees what it would see from pasta. Repeats follow pasta: the
//! last one wins unless noted. What pasta can only check on the host
//! (interface names for `-i`, `--runas` users, whether IPv6 exists) is
//! left to the daemon. Nothing here prints or exits: `--version` and
//! `--help` come back as text, warnings in [`PastaArgs::warnings`].

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::getopt::{Getopt, GetoptError, Spelled};
use super::options::{self, LONG, Opt, SHORT};
use super::ports::{PortError, PortOption};
use super::values;

pub use super::args::*;
pub use super::options::UNSUPPORTED;

/// Paths must be shorter than this (PATH_MAX).
const PATH_MAX: usize = 4096;
/// Interface names are shorter than this (IFNAMSIZ).
const IFNAMSIZ: usize = 16;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `--version`: print this to stdout and exit 0.
    Version(String),
    /// `-h`/`--help`: print this to stdout and exit 0.
    Help(String),
    Run(Box<PastaArgs>),
}

/// A command line pasta would refuse, with the text it prints (before its
/// usage, for getopt errors). Exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("{argv0}: unrecognized option '--{spelled}'")]
    UnrecognizedOption { argv0: String, spelled: String },
    #[error("{argv0}: invalid option -- '{name}'")]
    InvalidOption { argv0: String, name: char },
    #[error("{argv0}: option '--{name}' requires an argument")]
    LongRequiresArgument { argv0: String, name: &'static str },
    #[error("{argv0}: option requires an argument -- '{name}'")]
    ShortRequiresArgument { argv0: String, name: char },
    #[error("{argv0}: option '--{name}' doesn't allow an argument")]
    TakesNoArgument { argv0: String, name: &'static str },
    #[error("{argv0}: option '--{spelled}' is ambiguous; possibilities:{}", quoted(.candidates))]
    Ambiguous {
        argv0: String,
        spelled: String,
        candidates: Vec<&'static str>,
    },
    /// A pasta option netferry does not implement (see [`UNSUPPORTED`]).
    #[error("{argv0}: option '{option}' is not supported by netferry's pasta mode: {why}")]
    Unsupported {
        argv0: String,
        option: String,
        why: &'static str,
    },
    /// An option pasta itself refuses in pasta mode.
    #[error("{option} is for {mode} mode only")]
    WrongMode {
        option: &'static str,
        mode: &'static str,
    },
    /// pasta's "Invalid WHAT: VALUE" messages.
    #[error("Invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
    #[error("Invalid or redundant outbound address: {0}")]
    InvalidOutbound(String),
    #[error("Invalid PID {0}")]
    InvalidPid(String),
    #[error("MTU {mtu} too large (max {MTU_MAX})")]
    MtuTooLarge { mtu: u64 },
    #[error("Redundant prefix length specification")]
    RedundantPrefix,
    #[error("Cannot use DNS address {0}")]
    DnsAddress(String),
    #[error("Cannot use DNS search domain {0}")]
    SearchDomain(String),
    #[error("Network namespace name/path {0} too long")]
    NetnsTooLong(String),
    #[error("{0} needs --config-net")]
    NeedsConfigNet(&'static str),
    #[error("Both --netns and PID or command given")]
    NetnsAndTarget,
    #[error(transparent)]
    Ports(#[from] PortError),
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!(" '--{n}'")).collect()
}

/// The text of `--version`; its first line starts `pasta ` as callers
/// (rootlesskit, `podman info`) expect.
pub fn version_text() -> String {
    format!(
        "pasta netferry {}\nnetferry's pasta mode: netferry serving pasta's command line\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Reads pasta's command line. `argv0` is how the program was called
/// (glibc's messages start with it), `args` what follows it.
pub fn parse(argv0: &str, args: &[OsString]) -> Result<Parsed, CliError> {
    let mut state = State::default();
    let mut getopt = Getopt::new(args, LONG, SHORT);
    loop {
        let found = match getopt.next_opt() {
            Ok(Some(found)) => found,
            Ok(None) => break,
            Err(e) => return Err(getopt_error(argv0, e)),
        };
        match found.id {
            Opt::Version => return Ok(Parsed::Version(version_text())),
            Opt::Help => return Ok(Parsed::Help(options::usage(argv0))),
            id if let Some(why) = options::unsupported(id) => {
                // pasta would take it and go on, so `--version` or `-h`
                // after it still win.
                state.unsupported.get_or_insert((found.name, why));
            }
            id => state.option(id, found.arg.unwrap_or_default())?,
        }
    }
    if let Some((name, why)) = state.unsupported {
        return Err(CliError::Unsupported {
            argv0: argv0.to_owned(),
            option: name.to_string(),
            why,
        });
    }
    state
        .finish(getopt.operands())
        .map(|args| Parsed::Run(Box::new(args)))
}

fn getopt_error(argv0: &str, e: GetoptError) -> CliError {
    let argv0 = argv0.to_owned();
    match e {
        GetoptError::Unrecognized { spelled } => CliError::UnrecognizedOption { argv0, spelled },
        GetoptError::InvalidShort { name } => CliError::InvalidOption { argv0, name },
        GetoptError::LongRequiresArg { name } => CliError::LongRequiresArgument { argv0, name },
        GetoptError::ShortRequiresArg { name } => CliError::ShortRequiresArgument { argv0, name },
        GetoptError::LongTakesNoArg { name } => CliError::TakesNoArgument { argv0, name },
        GetoptError::Ambiguous {
            spelled,
            candidates,
        } => CliError::Ambiguous {
            argv0,
            spelled,
            candidates,
        },
    }
}

/// The parse so far, with what pasta tracks between options.
#[derive(Default)]
struct State<'a> {
    args: PastaArgs,
    /// The first option netferry refuses and why, reported after the loop.
    unsupported: Option<(Spelled, &'static str)>,
    /// `-n` seen (pasta's `opt_n`).
    netmask: Option<u8>,
    /// The last `-a` had a `/LEN`.
    address_had_prefix: bool,
    userns: Option<PathBuf>,
    netns: Option<PathBuf>,
    netns_only: bool,
    /// `-t`/`-u`/`-T`/`-U` values, read after the other options as pasta
    /// does (its second getopt pass).
    ports: Vec<(PortOption, &'a OsStr)>,
}

/// `value` as UTF-8, or pasta's "Invalid WHAT" naming it.
fn text<'v>(what: &'static str, value: &'v OsStr) -> Result<&'v str, CliError> {
    value.to_str().ok_or_else(|| invalid(what, value))
}

fn invalid(what: &'static str, value: &OsStr) -> CliError {
    CliError::Invalid {
        what,
        value: value.to_string_lossy().into_owned(),
    }
}

/// A path option's value: non-empty and shorter than PATH_MAX.
fn path(what: &'static str, value: &OsStr) -> Result<PathBuf, CliError> {
    if value.is_empty() || value.len() >= PATH_MAX {
        return Err(invalid(what, value));
    }
    Ok(PathBuf::from(value))
}

/// An interface name option's value: 1 to 15 bytes.
fn ifname(value: &OsStr) -> Result<String, CliError> {
    let name = text("interface name", value)?;
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(invalid("interface name", value));
    }
    Ok(name.to_owned())
}

impl<'a> State<'a> {
    fn option(&mut self, id: Opt, value: &'a OsStr) -> Result<(), CliError> {
        let a = &mut self.args;
        match id {
            Opt::Debug => {
                if a.log_level != LogLevel::Trace {
                    a.log_level = LogLevel::Debug;
                }
            }
            Opt::Quiet => a.log_level = LogLevel::Quiet,
            Opt::Trace => a.log_level = LogLevel::Trace,
            Opt::Foreground => a.foreground = true,
            Opt::Stderr => a.warnings.push("--stderr will be dropped soon".into()),
            Opt::LogFile => a.log_file = Some(PathBuf::from(value)),
            Opt::LogSize => {
                let size = text("--log-size", value)
                    .ok()
                    .and_then(|v| values::ulong(v, 0))
                    .filter(|&size| size >= LOG_SIZE_MIN);
                a.log_size = Some(size.ok_or_else(|| invalid("--log-size", value))?);
            }
            Opt::Runas => a.runas = Some(text("--runas option", value)?.to_owned()),
            Opt::PidFile => a.pid_file = Some(path("PID file", value)?),
            Opt::Userns => {
                self.userns = Some(path("userns", value)?);
                self.netns_only = false;
            }
            Opt::Netns => self.netns = Some(netns_path(value)?),
            Opt::NetnsOnly => {
                self.netns_only = true;
                self.userns = None;
            }
            Opt::NoNetnsQuit => a.no_netns_quit = true,

            Opt::ConfigNet => a.config_net = true,
            Opt::NsIfname => a.ns_ifname = Some(ifname(value)?),
            Opt::Mtu => a.mtu = Some(mtu(value)?),
            Opt::MacAddr => a.our_mac = Some(mac(value)?),
            Opt::NsMacAddr => a.ns_mac = Some(mac(value)?),
            Opt::Address => self.address(value)?,
            Opt::Netmask => {
                if self.address_had_prefix {
                    return Err(CliError::RedundantPrefix);
                }
                let len = prefix_len(value)?;
                self.args.prefix4 = Some(len);
                self.netmask = Some(len);
            }
            Opt::Gateway => match text("gateway address", value).map(values::inet_pton)? {
                Some(IpAddr::V6(g)) if !g.is_unspecified() && !g.is_loopback() => {
                    a.gateway6 = Some(g)
                }
                Some(IpAddr::V4(g))
                    if !g.is_unspecified() && !g.is_broadcast() && !g.is_loopback() =>
                {
                    a.gateway4 = Some(g)
                }
                _ => return Err(invalid("gateway address", value)),
            },
            Opt::Interface => a.template_if = Some(text("interface name", value)?.to_owned()),
            Opt::Outbound => match value.to_str().and_then(values::inet_pton) {
                Some(IpAddr::V6(o)) if outbound6_ok(&o) => a.outbound6 = Some(o),
                Some(IpAddr::V4(o))
                    if !o.is_unspecified() && !o.is_broadcast() && !o.is_multicast() =>
                {
                    a.outbound4 = Some(o)
                }
                _ => {
                    return Err(CliError::InvalidOutbound(
                        value.to_string_lossy().into_owned(),
                    ));
                }
            },
            Opt::OutboundIf4 => a.outbound_if4 = Some(ifname(value)?),
            Opt::OutboundIf6 => a.outbound_if6 = Some(ifname(value)?),
            Opt::Ipv4Only => a.ip_versions = IpVersions::V4Only,
            Opt::Ipv6Only => a.ip_versions = IpVersions::V6Only,
            Opt::NoCopyRoutes => {
                a.warnings
                    .push("--no-copy-routes will be dropped soon".into());
                a.no_copy_routes = true;
            }
            Opt::NoCopyAddrs => {
                a.warnings
                    .push("--no-copy-addrs will be dropped soon".into());
                a.no_copy_addrs = true;
            }

            Opt::Dns => dns(a, value)?,
            Opt::Search => search(a, value)?,
            Opt::DnsForward => match value.to_str().and_then(values::inet_pton) {
                Some(IpAddr::V6(d)) if !d.is_unspecified() && !d.is_loopback() => {
                    a.dns_forward6 = Some(d)
                }
                Some(IpAddr::V4(d))
                    if !d.is_unspecified() && !d.is_broadcast() && !d.is_loopback() =>
                {
                    a.dns_forward4 = Some(d)
                }
                _ => return Err(invalid("DNS forwarding address", value)),
            },
            Opt::DnsHost => match value.to_str().and_then(values::inet_pton) {
                Some(IpAddr::V6(d)) if !d.is_unspecified() => a.dns_host6 = Some(d),
                Some(IpAddr::V4(d)) if !d.is_unspecified() && !d.is_broadcast() => {
                    a.dns_host4 = Some(d)
                }
                _ => return Err(invalid("host nameserver address", value)),
            },
            Opt::DhcpDns => a.dhcp_dns = true,
            Opt::DhcpSearch => a.dhcp_search = true,
            Opt::NoDhcpDns => return Err(wrong_mode("--no-dhcp-dns", "passt")),
            Opt::NoDhcpSearch => return Err(wrong_mode("--no-dhcp-search", "passt")),

            Opt::NoMapGw => a.no_map_gw = true,
            Opt::MapHostLoopback => match nat(value)? {
                None => {
                    (a.map_host_loopback4, a.map_host_loopback6) = (None, None);
                    a.no_map_gw = true;
                }
                Some(IpAddr::V4(m)) => a.map_host_loopback4 = Some(m),
                Some(IpAddr::V6(m)) => a.map_host_loopback6 = Some(m),
            },
            Opt::MapGuestAddr => match nat(value)? {
                None => (a.map_guest_addr4, a.map_guest_addr6) = (None, None),
                Some(IpAddr::V4(m)) => a.map_guest_addr4 = Some(m),
                Some(IpAddr::V6(m)) => a.map_guest_addr6 = Some(m),
            },
            Opt::HostLoToNsLo => a.host_lo_to_ns_lo = true,
            Opt::Freebind => a.freebind = true,

            Opt::NoTcp => a.no_tcp = true,
            Opt::NoUdp => a.no_udp = true,
            Opt::NoIcmp => a.no_icmp = true,
            Opt::NoDhcp => a.no_dhcp = true,
            Opt::NoDhcpv6 => a.no_dhcpv6 = true,
            Opt::NoNdp => a.no_ndp = true,
            Opt::NoRa => a.no_ra = true,

            Opt::TcpPorts => self.ports.push((PortOption::Tcp, value)),
            Opt::UdpPorts => self.ports.push((PortOption::Udp, value)),
            Opt::TcpNs => self.ports.push((PortOption::TcpNs, value)),
            Opt::UdpNs => self.ports.push((PortOption::UdpNs, value)),

            Opt::Socket => return Err(wrong_mode("-s", "passt / vhost-user")),
            Opt::OneOff => return Err(wrong_mode("--one-off", "passt")),
            Opt::MigrateExit => return Err(wrong_mode("--migrate-exit", "vhost-user")),
            Opt::MigrateNoLinger => return Err(wrong_mode("--migrate-no-linger", "vhost-user")),
            // `none` turns off a socket pasta never opens in pasta mode.
            Opt::RepairPath if value == "none" => {}
            Opt::RepairPath => return Err(wrong_mode("--repair-path", "vhost-user")),

            Opt::Version
            | Opt::Help
            | Opt::Fd
            | Opt::Pcap
            | Opt::SpliceOnly
            | Opt::NoSplice
            | Opt::VhostUser
            | Opt::PrintCapabilities
            | Opt::Stats
            | Opt::ConfPath
            | Opt::ChrootFallback
            | Opt::Hostname
            | Opt::Fqdn => {}
        }
        Ok(())
    }

    /// `-a ADDR[/LEN]`, checked in pasta's order: prefix, then address.
    fn address(&mut self, value: &OsStr) -> Result<(), CliError> {
        let bad = || invalid("guest address", value);
        let arg = value.to_str().ok_or_else(bad)?;
        let (addr, rest) = values::take_addr(arg).ok_or_else(bad)?;
        let (prefix, rest) = match rest.strip_prefix('/') {
            Some(after) => {
                let (len, rest) = values::take_ulong(after, 10).ok_or_else(bad)?;
                if self.netmask.is_some() {
                    return Err(CliError::RedundantPrefix);
                }
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(invalid("prefix length", value));
                }
                (Some(len as u8), rest)
            }
            None => (None, rest),
        };
        let unicast = match addr {
            IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
            IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
        };
        if !rest.is_empty() || !unicast || addr.is_loopback() {
            return Err(bad());
        }
        self.address_had_prefix = prefix.is_some();
        match addr {
            IpAddr::V4(a) => {
                self.args.addr4 = Some(a);
                self.args.prefix4 =
                    Some(prefix.or(self.netmask).unwrap_or_else(|| class_prefix(a)));
            }
            IpAddr::V6(a) => self.args.addr6 = Some(a),
        }
        Ok(())
    }

    /// Ports, then the target, as pasta does after its option loop.
    fn finish(mut self, operands: &[OsString]) -> Result<PastaArgs, CliError> {
        let a = &mut self.args;
        if !a.config_net {
            if a.no_copy_routes {
                return Err(CliError::NeedsConfigNet("--no-copy-routes"));
            }
            if a.no_copy_addrs {
                return Err(CliError::NeedsConfigNet("--no-copy-addrs"));
            }
        }
        for (option, value) in &self.ports {
            let forwards = match option {
                PortOption::Tcp => &mut a.tcp,
                PortOption::Udp => &mut a.udp,
                PortOption::TcpNs => &mut a.tcp_ns,
                PortOption::UdpNs => &mut a.udp_ns,
            };
            let spec = value.to_str().ok_or_else(|| PortError::Invalid {
                spec: value.to_string_lossy().into_owned(),
            })?;
            forwards.add(*option, spec)?;
        }
        a.target = target(self.netns, self.userns, self.netns_only, operands)?;
        Ok(self.args)
    }
}

/// pasta's `conf_pasta_ns`: `--netns`, a PID or a command.
fn target(
    netns: Option<PathBuf>,
    userns: Option<PathBuf>,
    netns_only: bool,
    operands: &[OsString],
) -> Result<Target, CliError> {
    if let Some(path) = netns {
        if !operands.is_empty() {
            return Err(CliError::NetnsAndTarget);
        }
        // Attaching to a netns without --userns stays in our user namespace.
        let userns = userns.map_or(UserNs::Keep, UserNs::Join);
        return Ok(Target::Netns { path, userns });
    }
    if let [only] = operands
        && let Some(pid) = only.to_str().and_then(|p| values::ulong(p, 10))
    {
        let pid = u32::try_from(pid)
            .ok()
            .filter(|&p| p <= i32::MAX as u32)
            .ok_or_else(|| CliError::InvalidPid(only.to_string_lossy().into_owned()))?;
        // A PID's own user namespace, even with --netns-only, as pasta.
        let userns = UserNs::Join(userns.unwrap_or_else(|| format!("/proc/{pid}/ns/user").into()));
        return Ok(Target::Pid { pid, userns });
    }
    let userns = match userns {
        Some(path) => UserNs::Join(path),
        None if netns_only => UserNs::Keep,
        None => UserNs::New,
    };
    Ok(Target::Command {
        argv: operands.to_vec(),
        userns,
    })
}

fn wrong_mode(option: &'static str, mode: &'static str) -> CliError {
    CliError::WrongMode { option, mode }
}

fn netns_path(value: &OsStr) -> Result<PathBuf, CliError> {
    use std::os::unix::ffi::OsStrExt;
    let path = if value.as_bytes().contains(&b'/') {
        PathBuf::from(value)
    } else {
        PathBuf::from(NETNS_RUN_DIR).join(value)
    };
    if path.as_os_str().len() >= PATH_MAX {
        return Err(CliError::NetnsTooLong(value.to_string_lossy().into_owned()));
    }
    Ok(path)
}

fn mtu(value: &OsStr) -> Result<u16, CliError> {
    let mtu = value
        .to_str()
        .and_then(|v| values::ulong(v, 0))
        .ok_or_else(|| invalid("MTU", value))?;
    u16::try_from(mtu)
        .ok()
        .filter(|&m| m <= MTU_MAX)
        .ok_or(CliError::MtuTooLarge { mtu })
}

fn mac(value: &OsStr) -> Result<[u8; 6], CliError> {
    value
        .to_str()
        .and_then(values::mac)
        .ok_or_else(|| invalid("MAC address", value))
}

/// `-n`: a prefix length or a dotted netmask.
fn prefix_len(value: &OsStr) -> Result<u8, CliError> {
    let arg = value
        .to_str()
        .ok_or_else(|| invalid("prefix length", value))?;
    if let Some((mask, "")) = values::take_ipv4(arg) {
        let mask = u32::from(mask);
        // Contiguous ones from the top. pasta's check shifts the mask by
        // its number of ones, 32 for 255.255.255.255, which x86 and arm64
        // take modulo 32: pasta refuses that mask (but not `32`), and so
        // does this.
        let ones = mask.count_ones();
        if ones < 32 && mask << ones == 0 {
            return Ok(ones as u8);
        }
    } else if let Some(len) = values::ulong(arg, 0).filter(|&len| len <= 32) {
        return Ok(len as u8);
    }
    Err(invalid("prefix length", value))
}

/// The length of an IPv4 address's class: what pasta assumes without one.
fn class_prefix(addr: Ipv4Addr) -> u8 {
    match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        192..=223 => 24,
        _ => 32,
    }
}

fn outbound6_ok(a: &Ipv6Addr) -> bool {
    let s = a.segments();
    let v4_compat = s[..6] == [0; 6] && u128::from(*a) > 1;
    !a.is_unspecified()
        && !a.is_loopback()
        && a.to_ipv4_mapped().is_none()
        && !v4_compat
        && !a.is_multicast()
}

/// `--map-host-loopback`/`--map-guest-addr`: `None` for `none`.
fn nat(value: &OsStr) -> Result<Option<IpAddr>, CliError> {
    if value == "none" {
        return Ok(None);
    }
    let usable = |a: &IpAddr| !a.is_unspecified() && !a.is_loopback() && !a.is_multicast();
    match value.to_str().and_then(values::inet_pton) {
        Some(addr) if usable(&addr) => Ok(Some(addr)),
        _ => Err(invalid("address to remap to host", value)),
    }
}

fn dns(a: &mut PastaArgs, value: &OsStr) -> Result<(), CliError> {
    if value == "none" {
        // pasta forgets the DNS forwarding and host addresses too.
        a.dns = Nameservers::None;
        (a.dns_forward4, a.dns_forward6, a.dns_host4, a.dns_host6) = (None, None, None, None);
        return Ok(());
    }
    let addr = value
        .to_str()
        .and_then(values::inet_pton)
        .ok_or_else(|| CliError::DnsAddress(value.to_string_lossy().into_owned()))?;
    if !matches!(a.dns, Nameservers::List(_)) {
        a.dns = Nameservers::List(Vec::new());
    }
    if let Nameservers::List(list) = &mut a.dns
        && list
            .iter()
            .filter(|d| d.is_ipv4() == addr.is_ipv4())
            .count()
            < DNS_PER_FAMILY_MAX
    {
        list.push(addr);
    }
    Ok(())
}

fn search(a: &mut PastaArgs, value: &OsStr) -> Result<(), CliError> {
    if value == "none" {
        a.search = SearchDomains::None;
        return Ok(());
    }
    if !matches!(a.search, SearchDomains::List(_)) {
        a.search = SearchDomains::List(Vec::new());
    }
    let bad = || CliError::SearchDomain(value.to_string_lossy().into_owned());
    let name = value.to_str().ok_or_else(bad)?;
    match &mut a.search {
        SearchDomains::List(list)
            if list.len() < SEARCH_MAX && !name.is_empty() && name.len() < SEARCH_NAME_LEN =>
        {
            list.push(name.to_owned());
            Ok(())
        }
        _ => Err(bad()),
    }
}
