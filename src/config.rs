//! A validated configuration, built from the raw command line.
//!
//! Every address of the virtual network is derived here from `--cidr`, so
//! the rest of netferry never does address arithmetic of its own. Error
//! texts are the ones slirp4netns prints (CONTRACT.md section 1); callers
//! and users match on them.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cli::Args;

/// Offsets from the network address (CONTRACT.md section 3).
pub const GATEWAY_OFFSET: u32 = 2;
pub const DNS_OFFSET: u32 = 3;
pub const DHCP_POOL_START: u32 = 15;
pub const DHCP_POOL_END: u32 = 30;
pub const GUEST_OFFSET: u32 = 100;

pub const DEFAULT_CIDR: &str = "10.0.2.0/24";
pub const DEFAULT_MTU: u32 = 1500;
pub const MAX_MTU: u32 = 65521;
/// The largest prefix that still leaves room for network+100.
pub const MAX_PREFIX_LEN: u8 = 25;
/// `sun_path` is 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;
/// Per-connection TCP buffer bounds: below 64 KiB window scaling buys
/// nothing; above 64 MiB a few connections would eat the machine.
pub const DEFAULT_TCP_BUFFER: usize = 1024 * 1024;
pub const MIN_TCP_BUFFER: usize = 64 * 1024;
pub const MAX_TCP_BUFFER: usize = 64 * 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("MTU must be a positive integer (< 65522)")]
    Mtu,
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
    #[error("the API socket path is too long: {0} bytes (the limit is 107)")]
    ApiSocketTooLong(usize),
    #[error("target-type must be netns or bess, not {0}")]
    TargetType(String),
    #[error("target-type bess is not supported by netferry")]
    Bess,
    #[error("--tcp-buffer must be a byte count from 65536 to 67108864, not {0}")]
    TcpBuffer(String),
    #[error("{0} is not supported yet by this netferry version")]
    NotYet(&'static str),
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

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Join the namespaces of this process.
    Pid(i32),
    /// Join the network namespace bound at this path.
    Path(PathBuf),
    /// Adopt an inherited tap fd; no namespace is joined.
    TapFd(RawFd),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub target: Target,
    /// The tap's name; `None` only for `Target::TapFd`.
    pub tap_name: Option<String>,
    /// The user namespace to join before the network namespace.
    pub userns_path: Option<PathBuf>,
    pub configure: bool,
    pub exit_fd: Option<RawFd>,
    pub ready_fd: Option<RawFd>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub net: Network,
    /// The gateway address reaches the host's loopback.
    pub host_loopback: bool,
    /// The DNS address forwards to the host's resolver.
    pub dns: bool,
    /// `--outbound-addr` / `--outbound-addr6` as given (an address or an
    /// interface name); resolved at start-up by the setup code.
    pub outbound_addr: Option<String>,
    pub outbound_addr6: Option<String>,
    /// Bytes per TCP buffer, each direction.
    pub tcp_buffer: usize,
    /// The JSON control socket's path.
    pub api_socket: Option<PathBuf>,
    /// `--enable-sandbox` (or its old name `--create-sandbox`): a mount
    /// namespace of its own and no capabilities but binding low ports.
    pub sandbox: bool,
    /// `--enable-seccomp`: a syscall filter once setup is done.
    pub seccomp: bool,
    pub debug: bool,
    /// Non-fatal remarks for the user (deprecated flags, extra arguments).
    pub warnings: Vec<String>,
}

impl Config {
    /// Validate raw arguments, in the order slirp4netns checks them.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
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
        let net = Network::from_cidr(args.cidr.as_deref().unwrap_or(DEFAULT_CIDR))?;
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

        // Parsed and validated above; refused until their feature lands,
        // so that nobody believes they are in effect.
        let not_yet = [(args.enable_ipv6, "--enable-ipv6")];
        if let Some((_, flag)) = not_yet.iter().find(|(set, _)| *set) {
            return Err(ConfigError::NotYet(flag));
        }

        let tcp_buffer = match args.tcp_buffer.as_deref() {
            None => DEFAULT_TCP_BUFFER,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (MIN_TCP_BUFFER..=MAX_TCP_BUFFER).contains(&n) => n,
                _ => return Err(ConfigError::TcpBuffer(s.to_string())),
            },
        };

        Ok(Config {
            target,
            tap_name,
            userns_path,
            configure: args.configure,
            exit_fd,
            ready_fd,
            mtu,
            mac,
            net,
            host_loopback: !(args.disable_host_loopback || args.no_host_loopback),
            dns: !args.disable_dns,
            outbound_addr: args.outbound_addr.clone(),
            outbound_addr6: args.outbound_addr6.clone(),
            tcp_buffer,
            api_socket: args.api_socket.as_ref().map(PathBuf::from),
            sandbox: args.enable_sandbox || args.create_sandbox,
            seccomp: args.enable_seccomp,
            debug: args.debug,
            warnings,
        })
    }
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
            Parsed::Run(args) => Config::from_args(&args),
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
        let n = c.net;
        assert_eq!(n.network, Ipv4Addr::new(10, 0, 2, 0));
        assert_eq!(n.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(n.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(n.dhcp_start, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(n.dhcp_end, Ipv4Addr::new(10, 0, 2, 30));
        assert_eq!(n.guest, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(n.gateway_mac(), [0x52, 0x55, 10, 0, 2, 2]);
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
        let c = config(&["1", "tap0", "junk"]).unwrap();
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
    fn later_features_are_refused_not_ignored() {
        let e = config(&["--enable-ipv6", "1", "tap0"]).unwrap_err();
        assert_eq!(e, ConfigError::NotYet("--enable-ipv6"));
        assert!(e.to_string().contains("not supported yet"));
        assert_eq!(
            config(&["--api-socket=/tmp/x.sock", "1", "tap0"])
                .unwrap()
                .api_socket,
            Some(PathBuf::from("/tmp/x.sock"))
        );
    }

    #[test]
    fn sandbox_and_seccomp_are_accepted_under_both_names() {
        let plain = config(&["1", "tap0"]).unwrap();
        assert!(!plain.sandbox && !plain.seccomp);
        let c = config(&["--enable-sandbox", "--enable-seccomp", "1", "tap0"]).unwrap();
        assert!(c.sandbox && c.seccomp);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let old = config(&["--create-sandbox", "1", "tap0"]).unwrap();
        assert!(old.sandbox && !old.seccomp);
        assert_eq!(
            old.warnings,
            ["WARNING: --create-sandbox is deprecated, use --enable-sandbox"]
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
        assert!(!c.host_loopback && !c.dns);
        assert_eq!(c.outbound_addr.as_deref(), Some("lo"));
        assert_eq!(c.outbound_addr6.as_deref(), Some("::1"));
        let c = config(&["--no-host-loopback", "1", "tap0"]).unwrap();
        assert!(!c.host_loopback);
        assert!(c.warnings[0].starts_with("WARNING: --no-host-loopback is deprecated"));
        let c = config(&["1", "tap0"]).unwrap();
        assert!(c.host_loopback && c.dns);
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
