//! The slirp4netns front end: its command line ([`crate::cli`]) validated
//! into a [`Config`], and its address plan.
//!
//! Every address of the virtual network is derived here from `--cidr` and
//! `--cidr6` (gateway .2, DNS .3, DHCP .15-.30, guest .100), so nothing
//! below does address arithmetic of its own. Error texts are the ones
//! slirp4netns prints; callers and users match on them.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cli::Args;
use crate::config::*;
use crate::engine::{AddressPlan, Limits, Link4, Link6, MapTo, Mapping};

/// Offsets from the network address, as slirp4netns places them.
pub const GATEWAY_OFFSET: u32 = 2;
pub const DNS_OFFSET: u32 = 3;
pub const DHCP_POOL_START: u32 = 15;
pub const DHCP_POOL_END: u32 = 30;
pub const GUEST_OFFSET: u32 = 100;

pub const DEFAULT_CIDR: &str = "10.0.2.0/24";
pub const DEFAULT_CIDR6: &str = "fd00::/64";
/// SLAAC needs a /64: guests make their address from the other 64 bits.
pub const PREFIX6_LEN: u8 = 64;
pub const DEFAULT_MTU: u32 = 1500;
/// The smallest MTU the kernel sets on an Ethernet device (ETH_MIN_MTU).
pub const MIN_TAP_MTU: u32 = 68;
/// The largest prefix that still leaves room for network+100.
pub const MAX_PREFIX_LEN: u8 = 25;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("MTU must be a positive integer (< 65522)")]
    Mtu,
    #[error(
        "MTU {0} is too small for a tap: -c sets {MIN_TAP_MTU}-{MAX_MTU}, the kernel refuses less"
    )]
    MtuBelowTap(u32),
    #[error("invalid CIDR: {0}")]
    InvalidCidr(String),
    #[error("prefix length needs to be 1-25")]
    PrefixLen,
    #[error("CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24")]
    CidrNotNetwork,
    #[error("exit-fd must be a non-negative integer")]
    ExitFd,
    #[error("ready-fd must be a non-negative integer")]
    ReadyFd,
    #[error("PID must be a positive integer")]
    Pid,
    #[error("FD must be a non-negative integer")]
    TapFd,
    #[error("netns-type must be pid, path or tapfd, not {0}")]
    NetnsType(String),
    #[error("userns path doesn't exist: {0}")]
    UsernsPath(String),
    #[error("netns path doesn't exist: {0}")]
    NetnsPath(String),
    #[error("--macaddr cannot be specified when --configure or -c is not specified")]
    MacWithoutConfigure,
    #[error("invalid MAC address: {0} (expected xx:xx:xx:xx:xx:xx)")]
    Mac(String),
    #[error("invalid IPv6 prefix: {0} (expected a /64 network such as fd00::/64)")]
    InvalidCidr6(String),
    #[error("the API socket path is too long: {0} bytes (the limit is 107)")]
    ApiSocketTooLong(usize),
    #[error("target-type must be netns or bess, not {0}")]
    TargetType(String),
    #[error("target-type bess is not supported by netferry")]
    Bess,
    #[error("--tcp-buffer must be a byte count from 65536 to 67108864, not {0}")]
    TcpBuffer(String),
    #[error("{flag} must be a whole number from {min} to {max}, not {value}")]
    Count {
        flag: &'static str,
        value: String,
        min: u64,
        max: u64,
    },
    #[error("{first} and {second} name the same fd {fd}; each needs its own")]
    SameFd {
        first: &'static str,
        second: &'static str,
        fd: RawFd,
    },
    /// Missing PID/PATH/FD or TAPNAME: the caller prints the usage.
    #[error("missing arguments")]
    MissingArguments,
}

/// The addresses of the virtual network, all derived from one CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub netmask: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
    pub dhcp_start: Ipv4Addr,
    pub dhcp_end: Ipv4Addr,
    pub guest: Ipv4Addr,
}

impl Network {
    /// Parse `a.b.c.d/N` with slirp4netns's checks, in its order.
    pub fn from_cidr(cidr: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidCidr(cidr.to_string());
        let (addr, len) = cidr.split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = len.parse().map_err(|_| invalid())?;
        if prefix_len > 32 {
            return Err(invalid());
        }
        if !(1..=MAX_PREFIX_LEN).contains(&prefix_len) {
            return Err(ConfigError::PrefixLen);
        }
        let mask = u32::MAX << (32 - prefix_len);
        if u32::from(addr) & !mask != 0 {
            return Err(ConfigError::CidrNotNetwork);
        }
        let base = u32::from(addr);
        let at = |offset: u32| Ipv4Addr::from(base + offset);
        Ok(Network {
            network: addr,
            prefix_len,
            netmask: Ipv4Addr::from(mask),
            gateway: at(GATEWAY_OFFSET),
            dns: at(DNS_OFFSET),
            dhcp_start: at(DHCP_POOL_START),
            dhcp_end: at(DHCP_POOL_END),
            guest: at(GUEST_OFFSET),
        })
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.netmask) == u32::from(self.network)
    }

    /// The gateway's fixed, locally administered MAC: 52:55 followed by the
    /// gateway address, as libslirp does (52:55:0a:00:02:02 by default).
    pub fn gateway_mac(&self) -> [u8; 6] {
        let g = self.gateway.octets();
        [0x52, 0x55, g[0], g[1], g[2], g[3]]
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::from_cidr(DEFAULT_CIDR).expect("the default CIDR is valid")
    }
}

/// slirp4netns's address plan: `net` (10.0.2.0/24 unless `--cidr`) with
/// the gateway (.2) leading to the host's loopback, or nowhere with
/// `--disable-host-loopback`, and the DNS address (.3) to the host's
/// resolver, or refusing with `--disable-dns`; with `-6`, `net6`
/// (fd00::/64) likewise, link-local ::2 and ::3 too. Nothing else lives
/// on either network.
pub fn slirp_plan(
    net: &Network,
    net6: Option<&Network6>,
    host_loopback: bool,
    dns: bool,
) -> AddressPlan {
    let gateway = if host_loopback {
        MapTo::HostLoopback
    } else {
        MapTo::Unreachable
    };
    let resolver = if dns { MapTo::Resolver } else { MapTo::Refused };
    let mut maps = vec![
        Mapping {
            addr: net.gateway.into(),
            to: gateway,
        },
        Mapping {
            addr: net.dns.into(),
            to: resolver,
        },
    ];
    if let Some(n6) = net6 {
        for (addr, to) in [
            (n6.gateway, gateway),
            (n6.dns, resolver),
            (n6.gateway_ll, gateway),
            (n6.dns_ll, resolver),
        ] {
            maps.push(Mapping {
                addr: addr.into(),
                to,
            });
        }
    }
    AddressPlan {
        v4: Link4 {
            guest: net.guest,
            prefix_len: net.prefix_len,
            gateway: net.gateway,
            dhcp: true,
            dhcp_pool: Some((net.dhcp_start, net.dhcp_end)),
            dns: Some(net.dns),
            dhcp_mtu: None,
        },
        v6: net6.map(|n6| Link6 {
            prefix: n6.prefix,
            gateway: n6.gateway,
            gateway_ll: n6.gateway_ll,
            dns: dns.then_some(n6.dns),
            guest: None,
            router_adverts: true,
        }),
        mac: net.gateway_mac(),
        maps,
        closed_subnets: true,
    }
}

/// The plan of `netferry -c` (with `-6` when `ipv6`) on the default
/// networks.
pub fn default_plan(ipv6: bool) -> AddressPlan {
    let net6 = ipv6.then(Network6::default);
    slirp_plan(&Network::default(), net6.as_ref(), true, true)
}

/// The IPv6 side of the virtual network (`-6`): a /64 whose ::2 is the
/// gateway (and the host's alias) and ::3 the DNS address, each with a
/// link-local twin (fe80::2, fe80::3), as a real router has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network6 {
    pub prefix: Ipv6Addr,
    pub gateway: Ipv6Addr,
    pub dns: Ipv6Addr,
    pub gateway_ll: Ipv6Addr,
    pub dns_ll: Ipv6Addr,
}

impl Network6 {
    /// Parse `PREFIX/64` (the prefix length may be left out).
    pub fn from_cidr(cidr: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidCidr6(cidr.to_string());
        let (addr, len) = cidr.split_once('/').unwrap_or((cidr, "64"));
        let prefix: Ipv6Addr = addr.parse().map_err(|_| invalid())?;
        if len != PREFIX6_LEN.to_string() || u128::from(prefix) & u128::from(u64::MAX) != 0 {
            return Err(invalid());
        }
        if prefix.is_loopback() || prefix.is_multicast() || prefix.is_unspecified() {
            return Err(invalid());
        }
        let at = |offset: u32| Ipv6Addr::from(u128::from(prefix) + u128::from(offset));
        let ll = |offset: u32| Ipv6Addr::from((0xfe80u128 << 112) + u128::from(offset));
        Ok(Network6 {
            prefix,
            gateway: at(GATEWAY_OFFSET),
            dns: at(DNS_OFFSET),
            gateway_ll: ll(GATEWAY_OFFSET),
            dns_ll: ll(DNS_OFFSET),
        })
    }

    /// Whether `addr` is in the /64.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) >> 64 == u128::from(self.prefix) >> 64
    }

    /// The virtual hosts' own addresses, global and link-local.
    pub fn is_virtual(&self, addr: Ipv6Addr) -> bool {
        [self.gateway, self.dns, self.gateway_ll, self.dns_ll].contains(&addr)
    }
}

impl Default for Network6 {
    fn default() -> Self {
        Network6::from_cidr(DEFAULT_CIDR6).expect("the default IPv6 prefix is valid")
    }
}

/// Validate the slirp4netns command line, in the order slirp4netns
/// checks it, into a [`Config`].
pub fn config(args: &Args) -> Result<Config, ConfigError> {
    Config::from_slirp4netns(args)
}

impl Config {
    /// Validate raw arguments, in the order slirp4netns checks them.
    fn from_slirp4netns(args: &Args) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let exit_fd = parse_fd(args.exit_fd.as_deref(), ConfigError::ExitFd)?;
        let ready_fd = parse_fd(args.ready_fd.as_deref(), ConfigError::ReadyFd)?;
        let mtu = match args.mtu.as_deref() {
            None => DEFAULT_MTU,
            Some(s) => match s.parse::<u32>() {
                Ok(m) if (1..=MAX_MTU).contains(&m) => m,
                _ => return Err(ConfigError::Mtu),
            },
        };
        // Without -c netferry never sets the tap's MTU, and the engine
        // works with any (it uses at least IPv4's minimum).
        if args.configure && mtu < MIN_TAP_MTU {
            return Err(ConfigError::MtuBelowTap(mtu));
        }
        let net = Network::from_cidr(args.cidr.as_deref().unwrap_or(DEFAULT_CIDR))?;
        let net6 = Network6::from_cidr(args.cidr6.as_deref().unwrap_or(DEFAULT_CIDR6))?;
        if let Some(path) = &args.api_socket
            && path.len() > MAX_SOCKET_PATH
        {
            return Err(ConfigError::ApiSocketTooLong(path.len()));
        }
        let mac = match &args.macaddress {
            None => None,
            Some(_) if !args.configure => return Err(ConfigError::MacWithoutConfigure),
            Some(s) => Some(parse_mac(s).ok_or_else(|| ConfigError::Mac(s.clone()))?),
        };
        match args.target_type.as_deref() {
            None | Some("netns") => {}
            Some("bess") => return Err(ConfigError::Bess),
            Some(other) => return Err(ConfigError::TargetType(other.to_string())),
        }
        if args.no_host_loopback {
            warnings.push(
                "WARNING: --no-host-loopback is deprecated, use --disable-host-loopback".into(),
            );
        }
        if !(args.disable_host_loopback || args.no_host_loopback) {
            // slirp4netns says so too; a user should know what the
            // container can reach.
            warnings.push(format!(
                "WARNING: 127.0.0.1:* on the host is accessible as {} (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)",
                net.gateway
            ));
        }
        if args.create_sandbox {
            warnings.push("WARNING: --create-sandbox is deprecated, use --enable-sandbox".into());
        }

        let netns_type = args.netns_type.as_deref().unwrap_or("pid");
        let pos = &args.positional;
        let wanted = if netns_type == "tapfd" { 1 } else { 2 };
        if pos.len() < wanted {
            return Err(ConfigError::MissingArguments);
        }
        if pos.len() > wanted {
            warnings.push(format!(
                "WARNING: ignoring extra arguments: {}",
                pos[wanted..].join(" ")
            ));
        }
        let target = match netns_type {
            "pid" => match pos[0].parse::<i32>() {
                Ok(pid) if pid > 0 => Target::Pid(pid),
                _ => return Err(ConfigError::Pid),
            },
            "path" => {
                if !Path::new(&pos[0]).exists() {
                    return Err(ConfigError::NetnsPath(pos[0].clone()));
                }
                Target::Path(PathBuf::from(&pos[0]))
            }
            "tapfd" => match pos[0].parse::<RawFd>() {
                Ok(fd) if fd >= 0 => Target::TapFd(fd),
                _ => return Err(ConfigError::TapFd),
            },
            other => return Err(ConfigError::NetnsType(other.to_string())),
        };
        let tap_name = (wanted == 2).then(|| pos[1].clone());

        let userns_path = match (&args.userns_path, &target) {
            (Some(p), _) => {
                if !Path::new(p).exists() {
                    return Err(ConfigError::UsernsPath(p.clone()));
                }
                Some(PathBuf::from(p))
            }
            (None, Target::Pid(pid)) => Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
            (None, _) => None,
        };

        let tcp_buffer = match args.tcp_buffer.as_deref() {
            None => DEFAULT_TCP_BUFFER,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (MIN_TCP_BUFFER..=MAX_TCP_BUFFER).contains(&n) => n,
                _ => return Err(ConfigError::TcpBuffer(s.to_string())),
            },
        };

        let count = |flag, value: &Option<String>, default: u64, (min, max): (u64, u64)| match value
        {
            None => Ok(default),
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ConfigError::Count {
                    flag,
                    value: s.clone(),
                    min,
                    max,
                }),
        };
        let defaults = Limits::default();
        let limits = Limits {
            tcp_flows: count(
                "--max-tcp-flows",
                &args.max_tcp_flows,
                defaults.tcp_flows as u64,
                (1, MAX_FLOW_CAP),
            )? as usize,
            pending_connects: count(
                "--max-pending-connects",
                &args.max_pending_connects,
                defaults.pending_connects as u64,
                (1, MAX_FLOW_CAP),
            )? as usize,
        };
        let udp_timeout = count(
            "--udp-timeout",
            &args.udp_timeout,
            DEFAULT_UDP_TIMEOUT_SECS,
            (1, MAX_UDP_TIMEOUT_SECS),
        )?;
        let busy_poll = Duration::from_micros(count(
            "--busy-poll",
            &args.busy_poll,
            DEFAULT_BUSY_POLL_MICROS,
            (0, MAX_BUSY_POLL_MICROS),
        )?);

        // The same fd given for two roles would be closed by one while
        // the other still uses it (`-r 3 --netns-type=tapfd 3`).
        let fds = [
            ("--ready-fd", ready_fd),
            ("--exit-fd", exit_fd),
            (
                "the tap fd",
                match target {
                    Target::TapFd(fd) => Some(fd),
                    _ => None,
                },
            ),
        ];
        for (i, (first, a)) in fds.iter().enumerate() {
            for (second, b) in &fds[i + 1..] {
                if let (Some(fd), Some(other)) = (a, b)
                    && fd == other
                {
                    return Err(ConfigError::SameFd {
                        first,
                        second,
                        fd: *fd,
                    });
                }
            }
        }

        Ok(Config {
            target,
            tap_name,
            userns_path,
            configure: args.configure,
            copy: None,
            loopback_up: false,
            exit_fd,
            ready_fd,
            mtu,
            mac,
            plan: slirp_plan(
                &net,
                args.enable_ipv6.then_some(&net6),
                !(args.disable_host_loopback || args.no_host_loopback),
                !args.disable_dns,
            ),
            offload: !args.disable_offload,
            busy_poll,
            outbound_addr: args.outbound_addr.clone(),
            outbound_addr6: args.outbound_addr6.clone(),
            tcp_buffer,
            limits,
            udp_timeout,
            api_socket: args.api_socket.as_ref().map(PathBuf::from),
            sandbox: args.enable_sandbox || args.create_sandbox,
            seccomp: args.enable_seccomp,
            debug: args.debug,
            warnings,
        })
    }
}

/// What netferry prints once it serves the tap, in slirp4netns's layout
/// (its values from the address plan).
pub fn banner(cfg: &Config, tap: &str) -> String {
    let link = &cfg.plan.v4;
    let netmask = link.netmask();
    let network = Ipv4Addr::from(u32::from(link.guest) & u32::from(netmask));
    let (pool_start, pool_end) = link.pool();
    let dns = link.dns.unwrap_or(link.gateway);
    let api = cfg
        .api_socket
        .as_ref()
        .map(|p| format!("\n* API Socket:      {}", p.display()))
        .unwrap_or_default();
    format!(
        "netferry {} serving {tap}\n\
         * MTU:             {}\n\
         * Network:         {network}\n\
         * Netmask:         {netmask}\n\
         * Gateway:         {}\n\
         * DNS:             {dns}\n\
         * DHCP begin:      {pool_start}\n\
         * DHCP end:        {pool_end}\n\
         * Recommended IP:  {}{api}",
        env!("CARGO_PKG_VERSION"),
        cfg.mtu,
        link.gateway,
        link.guest,
    )
}

fn parse_fd(value: Option<&str>, err: ConfigError) -> Result<Option<RawFd>, ConfigError> {
    match value {
        None => Ok(None),
        Some(s) => match s.parse::<RawFd>() {
            Ok(fd) if fd >= 0 => Ok(Some(fd)),
            _ => Err(err),
        },
    }
}

/// `xx:xx:xx:xx:xx:xx`, hex digits of either case.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Parsed, parse};

    fn config(argv: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["netferry"];
        full.extend_from_slice(argv);
        match parse(full) {
            Parsed::Run(args) => super::config(&args),
            _ => panic!("{argv:?} did not parse"),
        }
    }

    #[test]
    fn defaults_derive_the_slirp4netns_addresses() {
        let c = config(&["1234", "tap0"]).unwrap();
        assert_eq!(c.target, Target::Pid(1234));
        assert_eq!(c.tap_name.as_deref(), Some("tap0"));
        assert_eq!(c.userns_path, Some(PathBuf::from("/proc/1234/ns/user")));
        assert_eq!(c.mtu, 1500);
        let l = c.plan.v4;
        assert_eq!(l.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(l.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(l.dns, Some(Ipv4Addr::new(10, 0, 2, 3)));
        assert_eq!(l.pool().0, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.guest, Ipv4Addr::new(10, 0, 2, 100));
        assert!(c.plan.closed_subnets);
        let to = |a: [u8; 4]| c.plan.target(Ipv4Addr::from(a).into());
        assert_eq!(to([10, 0, 2, 2]), Some(MapTo::HostLoopback));
        assert_eq!(to([10, 0, 2, 3]), Some(MapTo::Resolver));
        assert_eq!(to([10, 0, 2, 4]), None);
        assert_eq!(l.pool().1, Ipv4Addr::new(10, 0, 2, 30));
        assert_eq!(c.plan.mac, [0x52, 0x55, 10, 0, 2, 2]);
    }

    #[test]
    fn custom_cidr_moves_every_address() {
        let n = Network::from_cidr("192.168.96.0/19").unwrap();
        assert_eq!(n.netmask, Ipv4Addr::new(255, 255, 224, 0));
        assert_eq!(n.gateway, Ipv4Addr::new(192, 168, 96, 2));
        assert_eq!(n.dns, Ipv4Addr::new(192, 168, 96, 3));
        assert_eq!(n.dhcp_start, Ipv4Addr::new(192, 168, 96, 15));
        assert_eq!(n.guest, Ipv4Addr::new(192, 168, 96, 100));
        assert!(n.contains(Ipv4Addr::new(192, 168, 127, 255)));
        assert!(!n.contains(Ipv4Addr::new(192, 168, 128, 0)));
        let n = Network::from_cidr("10.0.0.0/25").unwrap();
        assert_eq!(n.guest, Ipv4Addr::new(10, 0, 0, 100));
    }

    #[test]
    fn cidr_errors_in_slirp4netns_order() {
        let msg = |c: &str| Network::from_cidr(c).unwrap_err().to_string();
        assert_eq!(msg("foo"), "invalid CIDR: foo");
        assert_eq!(msg("10.0.2.0"), "invalid CIDR: 10.0.2.0");
        assert_eq!(msg("10.0.2.0/x"), "invalid CIDR: 10.0.2.0/x");
        assert_eq!(msg("10.0.2.0/33"), "invalid CIDR: 10.0.2.0/33");
        assert_eq!(msg("10.0.2.0/26"), "prefix length needs to be 1-25");
        assert_eq!(msg("0.0.0.0/0"), "prefix length needs to be 1-25");
        assert_eq!(
            msg("10.0.2.100/24"),
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"
        );
        // A bad prefix is reported before a host address.
        assert_eq!(msg("10.0.2.100/30"), "prefix length needs to be 1-25");
    }

    #[test]
    fn mtu_must_be_1_to_65521() {
        let msg = "MTU must be a positive integer (< 65522)";
        for bad in ["0", "65522", "-1", "abc", ""] {
            let e = config(&["-m", bad, "1", "tap0"]).unwrap_err();
            assert_eq!(e.to_string(), msg, "for -m {bad:?}");
        }
        assert_eq!(config(&["--mtu=65521", "1", "tap0"]).unwrap().mtu, 65521);
        assert_eq!(config(&["-m1", "1", "tap0"]).unwrap().mtu, 1);
    }

    #[test]
    fn fds_must_be_non_negative() {
        assert_eq!(
            config(&["-e", "-1", "1", "tap0"]).unwrap_err().to_string(),
            "exit-fd must be a non-negative integer"
        );
        assert_eq!(
            config(&["--ready-fd=x", "1", "tap0"])
                .unwrap_err()
                .to_string(),
            "ready-fd must be a non-negative integer"
        );
        let c = config(&["-e", "0", "-r", "7", "1", "tap0"]).unwrap();
        assert_eq!((c.exit_fd, c.ready_fd), (Some(0), Some(7)));
    }

    #[test]
    fn one_fd_for_two_roles_is_refused() {
        assert_eq!(
            config(&["-r", "3", "--netns-type=tapfd", "3"])
                .unwrap_err()
                .to_string(),
            "--ready-fd and the tap fd name the same fd 3; each needs its own"
        );
        assert_eq!(
            config(&["-r", "4", "-e", "4", "1", "tap0"])
                .unwrap_err()
                .to_string(),
            "--ready-fd and --exit-fd name the same fd 4; each needs its own"
        );
        assert!(config(&["-r", "3", "-e", "4", "--netns-type=tapfd", "5"]).is_ok());
    }

    #[test]
    fn busy_poll_window() {
        let micros = |args: &[&str]| config(args).map(|c| c.busy_poll.as_micros());
        assert_eq!(micros(&["1", "tap0"]).unwrap(), 50);
        assert_eq!(micros(&["--busy-poll=0", "1", "tap0"]).unwrap(), 0);
        assert_eq!(micros(&["--busy-poll", "200", "1", "tap0"]).unwrap(), 200);
        assert_eq!(
            micros(&["--busy-poll=-1", "1", "tap0"])
                .unwrap_err()
                .to_string(),
            "--busy-poll must be a whole number from 0 to 10000, not -1"
        );
        assert!(micros(&["--busy-poll=20000", "1", "tap0"]).is_err());
    }

    #[test]
    fn flow_caps_and_udp_timeout() {
        let c = config(&["1", "tap0"]).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.udp_timeout, 120);
        let c = config(&[
            "--max-tcp-flows=100",
            "--max-pending-connects",
            "10",
            "--udp-timeout=2",
            "1",
            "tap0",
        ])
        .unwrap();
        assert_eq!(
            (c.limits.tcp_flows, c.limits.pending_connects, c.udp_timeout),
            (100, 10, 2)
        );
        assert_eq!(
            config(&["--max-tcp-flows=0", "1", "tap0"])
                .unwrap_err()
                .to_string(),
            "--max-tcp-flows must be a whole number from 1 to 1048576, not 0"
        );
        assert!(config(&["--udp-timeout=x", "1", "tap0"]).is_err());
    }

    #[test]
    fn pid_must_be_positive() {
        for bad in ["0", "abc", "12x"] {
            assert_eq!(
                config(&[bad, "tap0"]).unwrap_err().to_string(),
                "PID must be a positive integer"
            );
        }
        // As with getopt, "-5" is an unknown option: a usage error.
        assert!(matches!(
            parse(["netferry", "-5", "tap0"]),
            Parsed::Usage(_)
        ));
    }

    #[test]
    fn missing_arguments_and_extra_arguments() {
        assert_eq!(config(&["1"]), Err(ConfigError::MissingArguments));
        assert_eq!(config(&[]), Err(ConfigError::MissingArguments));
        let c = config(&["--disable-host-loopback", "1", "tap0", "junk"]).unwrap();
        assert_eq!(c.warnings, ["WARNING: ignoring extra arguments: junk"]);
    }

    #[test]
    fn netns_types() {
        let c = config(&["--netns-type=path", "/proc/self/ns/net", "tap0"]).unwrap();
        assert_eq!(c.target, Target::Path("/proc/self/ns/net".into()));
        assert_eq!(c.userns_path, None);
        let c = config(&[
            "--netns-type",
            "path",
            "--userns-path=/proc/self/ns/user",
            "/proc/self/ns/net",
            "tap0",
        ])
        .unwrap();
        assert_eq!(c.userns_path, Some("/proc/self/ns/user".into()));
        let c = config(&["--netns-type=tapfd", "5"]).unwrap();
        assert_eq!((c.target, c.tap_name), (Target::TapFd(5), None));
        assert_eq!(
            config(&["--netns-type=bogus", "1", "tap0"])
                .unwrap_err()
                .to_string(),
            "netns-type must be pid, path or tapfd, not bogus"
        );
        assert_eq!(
            config(&["--netns-type=path", "/nonexistent/ns", "tap0"])
                .unwrap_err()
                .to_string(),
            "netns path doesn't exist: /nonexistent/ns"
        );
        assert_eq!(
            config(&["--userns-path=/nonexistent/user", "1", "tap0"])
                .unwrap_err()
                .to_string(),
            "userns path doesn't exist: /nonexistent/user"
        );
    }

    #[test]
    fn macaddress_needs_configure() {
        assert_eq!(
            config(&["--macaddress=02:00:00:00:00:01", "1", "tap0"])
                .unwrap_err()
                .to_string(),
            "--macaddr cannot be specified when --configure or -c is not specified"
        );
        let c = config(&["-c", "--macaddress", "02:AB:00:00:00:01", "1", "tap0"]).unwrap();
        assert_eq!(c.mac, Some([2, 0xab, 0, 0, 0, 1]));
        assert!(matches!(
            config(&["-c", "--macaddress=02:00:00", "1", "tap0"]),
            Err(ConfigError::Mac(_))
        ));
    }

    #[test]
    fn target_type() {
        assert!(config(&["--target-type=netns", "1", "tap0"]).is_ok());
        assert_eq!(
            config(&["--target-type=bess", "1", "tap0"]),
            Err(ConfigError::Bess)
        );
        assert!(matches!(
            config(&["--target-type=x", "1", "tap0"]),
            Err(ConfigError::TargetType(_))
        ));
    }

    #[test]
    fn api_socket_path_of_108_bytes_is_refused() {
        let long = format!("/tmp/{}", "a".repeat(103));
        assert_eq!(long.len(), 108);
        assert_eq!(
            config(&["-a", &long, "1", "tap0"]),
            Err(ConfigError::ApiSocketTooLong(108))
        );
    }

    #[test]
    fn api_socket_path_is_carried_through() {
        assert_eq!(
            config(&["--api-socket=/tmp/x.sock", "1", "tap0"])
                .unwrap()
                .api_socket,
            Some(PathBuf::from("/tmp/x.sock"))
        );
    }

    #[test]
    fn ipv6_network_and_its_prefix() {
        assert_eq!(config(&["1", "tap0"]).unwrap().plan.v6, None);
        let plan = config(&["-6", "1", "tap0"]).unwrap().plan;
        let n = plan.v6.unwrap();
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            (n.gateway, n.dns, n.gateway_ll),
            (v6("fd00::2"), Some(v6("fd00::3")), v6("fe80::2"))
        );
        for (addr, to) in [
            ("fd00::2", MapTo::HostLoopback),
            ("fe80::2", MapTo::HostLoopback),
            ("fd00::3", MapTo::Resolver),
            ("fe80::3", MapTo::Resolver),
        ] {
            assert_eq!(plan.target(v6(addr).into()), Some(to), "{addr}");
        }
        assert!(n.contains(v6("fd00::1234:5678")) && !n.contains(v6("fd01::2")));
        let n = config(&["-6", "--cidr6=fd42:1:2:3::/64", "1", "tap0"])
            .unwrap()
            .plan
            .v6
            .unwrap();
        assert_eq!(n.gateway, v6("fd42:1:2:3::2"));
        for bad in ["fd00::/48", "fd00::1/64", "x::/64", "::1/64", "ff02::/64"] {
            let e = config(&["-6", &format!("--cidr6={bad}"), "1", "tap0"]).unwrap_err();
            assert!(matches!(e, ConfigError::InvalidCidr6(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn sandbox_and_seccomp_are_accepted_under_both_names() {
        let plain = config(&["1", "tap0"]).unwrap();
        assert!(!plain.sandbox && !plain.seccomp);
        let c = config(&["--enable-sandbox", "--enable-seccomp", "1", "tap0"]).unwrap();
        assert!(c.sandbox && c.seccomp);
        assert!(
            !c.warnings.iter().any(|w| w.contains("deprecated")),
            "{:?}",
            c.warnings
        );
        let old = config(&["--create-sandbox", "1", "tap0"]).unwrap();
        assert!(old.sandbox && !old.seccomp);
        assert!(old.warnings.contains(
            &"WARNING: --create-sandbox is deprecated, use --enable-sandbox".to_string()
        ));
    }

    #[test]
    fn host_loopback_is_announced_as_slirp4netns_does() {
        let c = config(&["1", "tap0"]).unwrap();
        assert_eq!(
            c.warnings,
            [
                "WARNING: 127.0.0.1:* on the host is accessible as 10.0.2.2 (set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)"
            ]
        );
        assert!(
            config(&["--disable-host-loopback", "1", "tap0"])
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn outbound_features_are_carried_through() {
        let c = config(&[
            "--disable-host-loopback",
            "--disable-dns",
            "--outbound-addr=lo",
            "--outbound-addr6=::1",
            "1",
            "tap0",
        ])
        .unwrap();
        let to = |c: &Config, a: [u8; 4]| c.plan.target(Ipv4Addr::from(a).into());
        assert_eq!(to(&c, [10, 0, 2, 2]), Some(MapTo::Unreachable));
        assert_eq!(to(&c, [10, 0, 2, 3]), Some(MapTo::Refused));
        assert_eq!(c.outbound_addr.as_deref(), Some("lo"));
        assert_eq!(c.outbound_addr6.as_deref(), Some("::1"));
        let c = config(&["--no-host-loopback", "1", "tap0"]).unwrap();
        assert_eq!(to(&c, [10, 0, 2, 2]), Some(MapTo::Unreachable));
        assert!(c.warnings[0].starts_with("WARNING: --no-host-loopback is deprecated"));
        let c = config(&["1", "tap0"]).unwrap();
        assert_eq!(to(&c, [10, 0, 2, 2]), Some(MapTo::HostLoopback));
        assert_eq!(to(&c, [10, 0, 2, 3]), Some(MapTo::Resolver));
        assert_eq!(c.tcp_buffer, DEFAULT_TCP_BUFFER);
    }

    #[test]
    fn tcp_buffer_is_bounded() {
        assert_eq!(
            config(&["--tcp-buffer=262144", "1", "tap0"])
                .unwrap()
                .tcp_buffer,
            262144
        );
        for bad in ["1000", "x", "999999999999"] {
            assert!(matches!(
                config(&["--tcp-buffer", bad, "1", "tap0"]),
                Err(ConfigError::TcpBuffer(_))
            ));
        }
    }

    #[test]
    fn mac_parser() {
        assert_eq!(
            parse_mac("52:55:0a:00:02:02"),
            Some([0x52, 0x55, 10, 0, 2, 2])
        );
        assert_eq!(parse_mac("52:55:0a:00:02"), None);
        assert_eq!(parse_mac("52:55:0a:00:02:02:03"), None);
        assert_eq!(parse_mac("5:55:0a:00:02:02"), None);
        assert_eq!(parse_mac("zz:55:0a:00:02:02"), None);
    }
}
