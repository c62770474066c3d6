//! pasta's option table: every option pasta knows, in pasta's order (glibc
//! lists ambiguous candidates in table order), the options netferry
//! refuses and why, and `--help` in netferry's words.

use std::fmt::Write;

use super::args::{MTU_DEFAULT, MTU_MAX};
use super::getopt::{HasArg, LongOpt, ShortOpt};

/// Each option pasta knows, whatever its spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    Debug,
    Quiet,
    Foreground,
    Stderr,
    LogFile,
    Help,
    Socket,
    Fd,
    NsIfname,
    Pcap,
    PidFile,
    Mtu,
    Address,
    Netmask,
    MacAddr,
    Gateway,
    Interface,
    Outbound,
    Dns,
    Search,
    Hostname,
    NoTcp,
    NoUdp,
    NoIcmp,
    NoDhcp,
    NoDhcpv6,
    NoNdp,
    NoRa,
    NoSplice,
    SpliceOnly,
    Freebind,
    NoMapGw,
    Ipv4Only,
    Ipv6Only,
    OneOff,
    TcpPorts,
    UdpPorts,
    TcpNs,
    UdpNs,
    Userns,
    Netns,
    NsMacAddr,
    DhcpDns,
    NoDhcpDns,
    DhcpSearch,
    NoDhcpSearch,
    DnsForward,
    NoNetnsQuit,
    Trace,
    Runas,
    LogSize,
    Version,
    OutboundIf4,
    OutboundIf6,
    ConfigNet,
    NoCopyRoutes,
    NoCopyAddrs,
    NetnsOnly,
    MapHostLoopback,
    MapGuestAddr,
    HostLoToNsLo,
    DnsHost,
    VhostUser,
    PrintCapabilities,
    Fqdn,
    RepairPath,
    MigrateExit,
    MigrateNoLinger,
    Stats,
    ConfPath,
    ChrootFallback,
}

const fn flag(name: &'static str, id: Opt) -> LongOpt<Opt> {
    LongOpt {
        name,
        has_arg: HasArg::No,
        id,
    }
}

const fn with_arg(name: &'static str, id: Opt) -> LongOpt<Opt> {
    LongOpt {
        name,
        has_arg: HasArg::Required,
        id,
    }
}

/// The long options, in pasta's order.
pub const LONG: &[LongOpt<Opt>] = &[
    flag("debug", Opt::Debug),
    flag("quiet", Opt::Quiet),
    flag("foreground", Opt::Foreground),
    flag("stderr", Opt::Stderr),
    with_arg("log-file", Opt::LogFile),
    flag("help", Opt::Help),
    with_arg("socket", Opt::Socket),
    with_arg("fd", Opt::Fd),
    with_arg("ns-ifname", Opt::NsIfname),
    with_arg("pcap", Opt::Pcap),
    with_arg("pid", Opt::PidFile),
    with_arg("mtu", Opt::Mtu),
    with_arg("address", Opt::Address),
    with_arg("netmask", Opt::Netmask),
    with_arg("mac-addr", Opt::MacAddr),
    with_arg("gateway", Opt::Gateway),
    with_arg("interface", Opt::Interface),
    with_arg("outbound", Opt::Outbound),
    with_arg("dns", Opt::Dns),
    with_arg("search", Opt::Search),
    with_arg("hostname", Opt::Hostname),
    flag("no-tcp", Opt::NoTcp),
    flag("no-udp", Opt::NoUdp),
    flag("no-icmp", Opt::NoIcmp),
    flag("no-dhcp", Opt::NoDhcp),
    flag("no-dhcpv6", Opt::NoDhcpv6),
    flag("no-ndp", Opt::NoNdp),
    flag("no-ra", Opt::NoRa),
    flag("no-splice", Opt::NoSplice),
    flag("splice-only", Opt::SpliceOnly),
    flag("freebind", Opt::Freebind),
    flag("no-map-gw", Opt::NoMapGw),
    flag("ipv4-only", Opt::Ipv4Only),
    flag("ipv6-only", Opt::Ipv6Only),
    flag("one-off", Opt::OneOff),
    with_arg("tcp-ports", Opt::TcpPorts),
    with_arg("udp-ports", Opt::UdpPorts),
    with_arg("tcp-ns", Opt::TcpNs),
    with_arg("udp-ns", Opt::UdpNs),
    with_arg("userns", Opt::Userns),
    with_arg("netns", Opt::Netns),
    with_arg("ns-mac-addr", Opt::NsMacAddr),
    flag("dhcp-dns", Opt::DhcpDns),
    flag("no-dhcp-dns", Opt::NoDhcpDns),
    flag("dhcp-search", Opt::DhcpSearch),
    flag("no-dhcp-search", Opt::NoDhcpSearch),
    with_arg("dns-forward", Opt::DnsForward),
    flag("no-netns-quit", Opt::NoNetnsQuit),
    flag("trace", Opt::Trace),
    with_arg("runas", Opt::Runas),
    with_arg("log-size", Opt::LogSize),
    flag("version", Opt::Version),
    with_arg("outbound-if4", Opt::OutboundIf4),
    with_arg("outbound-if6", Opt::OutboundIf6),
    flag("config-net", Opt::ConfigNet),
    flag("no-copy-routes", Opt::NoCopyRoutes),
    flag("no-copy-addrs", Opt::NoCopyAddrs),
    flag("netns-only", Opt::NetnsOnly),
    with_arg("map-host-loopback", Opt::MapHostLoopback),
    with_arg("map-guest-addr", Opt::MapGuestAddr),
    flag("host-lo-to-ns-lo", Opt::HostLoToNsLo),
    with_arg("dns-host", Opt::DnsHost),
    flag("vhost-user", Opt::VhostUser),
    flag("print-capabilities", Opt::PrintCapabilities),
    with_arg("socket-path", Opt::Socket),
    with_arg("fqdn", Opt::Fqdn),
    with_arg("repair-path", Opt::RepairPath),
    flag("migrate-exit", Opt::MigrateExit),
    flag("migrate-no-linger", Opt::MigrateNoLinger),
    with_arg("stats", Opt::Stats),
    with_arg("conf-path", Opt::ConfPath),
    flag("chroot-fallback", Opt::ChrootFallback),
];

const fn short(name: u8, has_arg: HasArg, id: Opt) -> ShortOpt<Opt> {
    ShortOpt { name, has_arg, id }
}

/// pasta's optstring `+dqfel:hs:c:F:I:p:P:m:a:n:M:g:i:o:D:S:H:461t:u:T:U:`.
pub const SHORT: &[ShortOpt<Opt>] = &[
    short(b'd', HasArg::No, Opt::Debug),
    short(b'q', HasArg::No, Opt::Quiet),
    short(b'f', HasArg::No, Opt::Foreground),
    short(b'e', HasArg::No, Opt::Stderr),
    short(b'l', HasArg::Required, Opt::LogFile),
    short(b'h', HasArg::No, Opt::Help),
    short(b's', HasArg::Required, Opt::Socket),
    short(b'c', HasArg::Required, Opt::ConfPath),
    short(b'F', HasArg::Required, Opt::Fd),
    short(b'I', HasArg::Required, Opt::NsIfname),
    short(b'p', HasArg::Required, Opt::Pcap),
    short(b'P', HasArg::Required, Opt::PidFile),
    short(b'm', HasArg::Required, Opt::Mtu),
    short(b'a', HasArg::Required, Opt::Address),
    short(b'n', HasArg::Required, Opt::Netmask),
    short(b'M', HasArg::Required, Opt::MacAddr),
    short(b'g', HasArg::Required, Opt::Gateway),
    short(b'i', HasArg::Required, Opt::Interface),
    short(b'o', HasArg::Required, Opt::Outbound),
    short(b'D', HasArg::Required, Opt::Dns),
    short(b'S', HasArg::Required, Opt::Search),
    short(b'H', HasArg::Required, Opt::Hostname),
    short(b'4', HasArg::No, Opt::Ipv4Only),
    short(b'6', HasArg::No, Opt::Ipv6Only),
    short(b'1', HasArg::No, Opt::OneOff),
    short(b't', HasArg::Required, Opt::TcpPorts),
    short(b'u', HasArg::Required, Opt::UdpPorts),
    short(b'T', HasArg::Required, Opt::TcpNs),
    short(b'U', HasArg::Required, Opt::UdpNs),
];

/// Options pasta accepts that netferry's pasta mode refuses whatever
/// their value, each with its spellings and why; the parser reports them
/// as [`super::cli::CliError::Unsupported`], reason included. (pasta itself
/// refuses `-s`, `-1`, `--no-dhcp-dns`, `--no-dhcp-search`, `--migrate-*`
/// and `--repair-path` other than `none` in pasta mode, and so does
/// netferry, with pasta's texts. Options refused only with some values or
/// combinations are the daemon's: see `daemon::refuse_unsupported`.)
pub const UNSUPPORTED: &[(Opt, &str, &str)] = &[
    (
        Opt::Pcap,
        "--pcap, -p",
        "netferry writes no packet captures",
    ),
    (
        Opt::ConfPath,
        "--conf-path, -c",
        "the control socket speaks pesto's protocol, experimental and not implemented",
    ),
    (
        Opt::SpliceOnly,
        "--splice-only",
        "netferry always serves the namespace through its tap",
    ),
    (
        Opt::NoSplice,
        "--no-splice",
        "the loopback path serves -T/-U and --host-lo-to-ns-lo; it cannot be turned off",
    ),
    (
        Opt::Stats,
        "--stats",
        "there is no event statistics display",
    ),
    (
        Opt::ChrootFallback,
        "--chroot-fallback",
        "netferry's sandbox does not use pasta's pivot_root or chroot",
    ),
    (
        Opt::VhostUser,
        "--vhost-user",
        "makes pasta a passt vhost-user back end for a VM",
    ),
    (
        Opt::PrintCapabilities,
        "--print-capabilities",
        "a vhost-user back end's query, for VMs only",
    ),
    (
        Opt::Fd,
        "--fd, -F",
        "a pre-connected socket to a VM is passt's, not pasta's",
    ),
    (
        Opt::Hostname,
        "--hostname, -H",
        "netferry's DHCP offers no host name",
    ),
    (
        Opt::Fqdn,
        "--fqdn",
        "netferry's DHCP offers no FQDN (and it has no DHCPv6)",
    ),
];

/// Why netferry refuses `id`, if it does (see [`UNSUPPORTED`]).
pub fn unsupported(id: Opt) -> Option<&'static str> {
    UNSUPPORTED
        .iter()
        .find(|(opt, _, _)| *opt == id)
        .map(|(_, _, why)| *why)
}

/// The text for `-h`/`--help`.
pub fn usage(argv0: &str) -> String {
    let mut text = format!(
        "Usage: {argv0} [OPTION]... [COMMAND] [ARGS]...
       {argv0} [OPTION]... PID
       {argv0} [OPTION]... --netns [PATH|NAME]

netferry's pasta mode: connects a network namespace to the host's network
as pasta does. Without PID or --netns, runs COMMAND (or a shell) in new
user and network namespaces.

  -d, --debug               more log output
      --trace               even more (implies --debug)
  -q, --quiet               warnings and errors only
  -f, --foreground          do not detach
  -l, --log-file PATH       log to PATH only
      --log-size BYTES      largest log file (default 1 MiB)
      --runas UID[:GID]     user (and group) to run as, numeric or names
  -P, --pid PATH            write the daemon's PID to PATH
  -e, --stderr              accepted, no effect (deprecated)
  -h, --help                this text
      --version             the version

  -I, --ns-ifname NAME      the tap's name (default: the host interface's)
      --config-net          configure the tap: addresses, routes, MTU
  -m, --mtu MTU             0 leaves it alone (default {MTU_DEFAULT}, max {MTU_MAX})
  -a, --address ADDR[/LEN]  the namespace's address, per family
  -n, --netmask MASK|LEN    its IPv4 prefix length
  -g, --gateway ADDR        the default gateway, per family
  -M, --mac-addr MAC        our MAC address on the tap
      --ns-mac-addr MAC     the namespace's MAC address
  -i, --interface NAME      host interface to copy addresses and routes from
  -o, --outbound ADDR       source address for outbound sockets, per family
      --outbound-if4 NAME   bind outbound IPv4 sockets to NAME
      --outbound-if6 NAME   bind outbound IPv6 sockets to NAME
  -4, --ipv4-only           IPv4 only
  -6, --ipv6-only           IPv6 only
      --no-copy-routes      with -g, do not copy the host's routes (deprecated)
      --no-copy-addrs       with -a, do not copy the host's addresses (deprecated)

  -D, --dns ADDR|none       nameserver to advertise (repeatable)
  -S, --search NAME|none    search domain to advertise (repeatable)
      --dhcp-dns            advertise nameservers over DHCP, NDP, DHCPv6
      --dhcp-search         advertise search domains likewise
      --dns-forward ADDR    DNS queries to ADDR go to --dns-host
      --dns-host ADDR       where they go (default: the host's first resolver)
      --no-map-gw           the gateway does not reach the host's loopback
      --map-host-loopback ADDR|none
                            ADDR reaches the host's loopback
      --map-guest-addr ADDR|none
                            ADDR reaches the host's own address
      --host-lo-to-ns-lo    host-loopback clients appear on the namespace's loopback
      --freebind            listen on addresses the host does not have
      --no-tcp, --no-udp, --no-icmp, --no-dhcp, --no-dhcpv6, --no-ndp, --no-ra
                            turn that protocol or service off

  -t, --tcp-ports SPEC      TCP from the host to the namespace (default auto)
  -u, --udp-ports SPEC      UDP likewise
  -T, --tcp-ns SPEC         TCP from the namespace to the host's loopback
  -U, --udp-ns SPEC         UDP likewise
    SPEC: none, or [ADDR[%IFACE]/]PORTS, PORTS a comma list of
    FIRST[-LAST][:[TOADDR/]TOFIRST[-TOLAST]], ~FIRST[-LAST] (excluded),
    all[:TOADDR] and auto (only ports bound on the other side)

      --netns PATH|NAME     the network namespace (NAME: under /run/netns)
      --userns PATH         the user namespace to join first
      --netns-only          join or create no user namespace
      --no-netns-quit       keep running when the namespace file goes away

Refused by netferry's pasta mode:
"
    );
    for (_, option, why) in UNSUPPORTED {
        let _ = writeln!(text, "  {option}: {why}");
    }
    text
}
