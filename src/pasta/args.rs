//! What pasta's command line asks for, typed: [`PastaArgs`] and the types
//! of its fields, with pasta's limits and defaults. Filled in by
//! [`super::cli::parse`]; the daemon reads it and nothing else.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::ports::Forwards;

/// pasta's largest MTU: a 65535-byte tap frame less the Ethernet header.
pub const MTU_MAX: u16 = 65521;
/// What pasta uses without `-m`: [`MTU_MAX`] rounded down to 4 bytes.
pub const MTU_DEFAULT: u16 = 65520;
/// The smallest `--log-size` pasta takes (5 × BUFSIZ on glibc).
pub const LOG_SIZE_MIN: u64 = 40960;
/// Where `--netns NAME` looks, as `ip netns` puts them.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// pasta keeps at most this many nameservers of each family (MAXNS).
pub const DNS_PER_FAMILY_MAX: usize = 3;
/// pasta keeps at most this many search domains (MAXDNSRCH) ...
pub const SEARCH_MAX: usize = 6;
/// ... each shorter than this (NS_MAXDNAME).
pub const SEARCH_NAME_LEN: usize = 1025;

/// Everything pasta's options set, for the daemon. Per-family values are
/// separate fields because pasta sets each family on its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PastaArgs {
    /// The namespace to serve and how to get there.
    pub target: Target,
    /// `--no-netns-quit`: keep running when the netns file goes away.
    pub no_netns_quit: bool,

    /// `-f`: stay in the foreground, write our own pid to `--pid`.
    pub foreground: bool,
    pub log_level: LogLevel,
    /// `-l`: log only to this file.
    pub log_file: Option<PathBuf>,
    /// `--log-size`, bytes (pasta's default: 1 MiB).
    pub log_size: Option<u64>,
    /// `-P`/`--pid`: where the long-lived process writes its pid.
    pub pid_file: Option<PathBuf>,
    /// `--runas UID[:GID]|LOGIN[:GROUP]`, looked up by the daemon.
    pub runas: Option<String>,

    /// `--config-net`: configure the tap (addresses, routes, MTU).
    pub config_net: bool,
    /// `-I`/`--ns-ifname`: the tap's name (default: the template's).
    pub ns_ifname: Option<String>,
    /// `-m`: `None` for [`MTU_DEFAULT`]; 0 means "leave it alone".
    pub mtu: Option<u16>,
    /// `-M`/`--mac-addr`: pasta's own MAC address on the tap.
    pub our_mac: Option<[u8; 6]>,
    /// `--ns-mac-addr`: the namespace side's MAC address.
    pub ns_mac: Option<[u8; 6]>,
    /// `-a` (IPv4); also stops copying the host's IPv4 addresses.
    pub addr4: Option<Ipv4Addr>,
    /// `-a ADDR/LEN` or `-n`, or the class-based length of an `-a`
    /// without one; `None`: the template's.
    pub prefix4: Option<u8>,
    /// `-a` (IPv6; a prefix length is checked and dropped, as pasta does);
    /// also stops copying the host's IPv6 addresses.
    pub addr6: Option<Ipv6Addr>,
    /// `-g` (IPv4); also stops copying IPv4 routes.
    pub gateway4: Option<Ipv4Addr>,
    /// `-g` (IPv6); also stops copying IPv6 routes.
    pub gateway6: Option<Ipv6Addr>,
    /// `-i`: the host interface used as template, for both families.
    pub template_if: Option<String>,
    /// `-o`: source address of outbound sockets, per family.
    pub outbound4: Option<Ipv4Addr>,
    pub outbound6: Option<Ipv6Addr>,
    /// `--outbound-if4`/`--outbound-if6`: bind outbound sockets there.
    pub outbound_if4: Option<String>,
    pub outbound_if6: Option<String>,
    pub ip_versions: IpVersions,
    /// `--no-copy-routes` (needs `--config-net`; deprecated).
    pub no_copy_routes: bool,
    /// `--no-copy-addrs` (needs `--config-net`; deprecated).
    pub no_copy_addrs: bool,

    /// `-D`: nameservers to advertise.
    pub dns: Nameservers,
    /// `-S`: search domains to advertise.
    pub search: SearchDomains,
    /// `--dns-forward`: DNS sent here goes to `--dns-host`.
    pub dns_forward4: Option<Ipv4Addr>,
    pub dns_forward6: Option<Ipv6Addr>,
    /// `--dns-host`: default: the host's first nameserver.
    pub dns_host4: Option<Ipv4Addr>,
    pub dns_host6: Option<Ipv6Addr>,
    /// `--dhcp-dns`/`--dhcp-search`: pasta advertises nameservers and
    /// search domains over DHCP/NDP only when asked.
    pub dhcp_dns: bool,
    pub dhcp_search: bool,

    /// `--no-map-gw` (or `--map-host-loopback none`): the gateway address
    /// does not reach the host's loopback.
    pub no_map_gw: bool,
    /// `--map-host-loopback`: this address reaches the host's loopback
    /// (default: the gateway's, unless `no_map_gw`).
    pub map_host_loopback4: Option<Ipv4Addr>,
    pub map_host_loopback6: Option<Ipv6Addr>,
    /// `--map-guest-addr`: this address reaches the host's own address.
    pub map_guest_addr4: Option<Ipv4Addr>,
    pub map_guest_addr6: Option<Ipv6Addr>,
    /// `--host-lo-to-ns-lo`: host-loopback clients arrive on the
    /// namespace's loopback.
    pub host_lo_to_ns_lo: bool,
    /// `--freebind`: listen on addresses the host does not have (yet).
    pub freebind: bool,

    pub no_tcp: bool,
    pub no_udp: bool,
    pub no_icmp: bool,
    pub no_dhcp: bool,
    pub no_dhcpv6: bool,
    pub no_ndp: bool,
    pub no_ra: bool,

    /// `-t`: TCP host to namespace.
    pub tcp: Forwards,
    /// `-u`: UDP host to namespace.
    pub udp: Forwards,
    /// `-T`: TCP namespace to host loopback.
    pub tcp_ns: Forwards,
    /// `-U`: UDP namespace to host loopback.
    pub udp_ns: Forwards,

    /// What pasta warns about while parsing, to print on stderr.
    pub warnings: Vec<String>,
}

/// The namespace to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--netns PATH|NAME` (a NAME is under [`NETNS_RUN_DIR`]).
    Netns { path: PathBuf, userns: UserNs },
    /// `PID`: its network namespace, `/proc/PID/ns/net`.
    Pid { pid: u32, userns: UserNs },
    /// `[CMD [ARGS...]]`: new namespaces running CMD, or the user's shell
    /// when empty; pasta exits with its status.
    Command { argv: Vec<OsString>, userns: UserNs },
}

impl Default for Target {
    fn default() -> Self {
        Self::Command {
            argv: Vec::new(),
            userns: UserNs::New,
        }
    }
}

/// Which user namespace pasta enters before the network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNs {
    /// `--userns PATH`, or a PID's own (`/proc/PID/ns/user`).
    Join(PathBuf),
    /// A new one (a command without `--netns-only`).
    New,
    /// The caller's: `--netns` without `--userns`, or `--netns-only`.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// `-q`: warnings and errors only.
    Quiet,
    #[default]
    Info,
    /// `-d`.
    Debug,
    /// `--trace` (implies `-d`; `-d` after it keeps it).
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpVersions {
    #[default]
    Both,
    /// `-4`/`--ipv4-only`.
    V4Only,
    /// `-6`/`--ipv6-only`.
    V6Only,
}

/// `-D`: a list replaces the host's nameservers, `none` advertises none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Nameservers {
    #[default]
    Host,
    None,
    /// At most [`DNS_PER_FAMILY_MAX`] per family; pasta drops the rest.
    List(Vec<IpAddr>),
}

/// `-S`: a list replaces the host's search domains, `none` sends none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SearchDomains {
    #[default]
    Host,
    None,
    List(Vec<String>),
}
