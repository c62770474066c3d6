//! The configuration every front end produces: the slirp4netns command
//! line ([`crate::slirp4netns`]), `netferry run` ([`crate::run`]) and
//! pasta's ([`crate::pasta`]) each validate their own flags into one
//! [`Config`], and everything below (setup, the event loop, the engine)
//! reads only this. Where the guest's addresses lead is its
//! [`AddressPlan`]; nothing here knows a flag's spelling.

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{AddressPlan, EngineConfig, Limits};

pub use crate::engine::DEFAULT_TCP_BUFFER;

pub const MAX_MTU: u32 = 65521;
/// `sun_path` is 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;
/// Per-connection TCP buffer bounds: below 64 KiB window scaling buys
/// nothing; above 64 MiB a few connections would eat the machine.
pub const MIN_TCP_BUFFER: usize = 64 * 1024;
pub const MAX_TCP_BUFFER: usize = 64 * 1024 * 1024;
/// Flow caps above this would outgrow any fd limit a kernel allows.
pub const MAX_FLOW_CAP: u64 = 1 << 20;
pub const DEFAULT_UDP_TIMEOUT_SECS: u64 = 120;
pub const MAX_UDP_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// Long enough to cover a round trip through a busy host's server (see
/// `busy_poll`); the most CPU one wake-up can spend waiting.
pub const DEFAULT_BUSY_POLL_MICROS: u64 = 50;
pub const MAX_BUSY_POLL_MICROS: u64 = 10_000;

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
    /// pasta's `--config-net`: the host's addresses and routes to give
    /// the tap, through netlink, in place of slirp4netns's `-c`.
    pub copy: Option<InterfaceCopy>,
    /// Bring the namespace's `lo` up whatever else is configured (pasta
    /// always does; slirp4netns only with `-c`).
    pub loopback_up: bool,
    pub exit_fd: Option<RawFd>,
    pub ready_fd: Option<RawFd>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// Every address the guest sees and where it leads.
    pub plan: AddressPlan,
    /// Open the tap with a virtio-net header and segmentation offload
    /// where the kernel allows (`--disable-offload` turns it off).
    pub offload: bool,
    /// The most time the event loop polls without sleeping
    /// (`--busy-poll`; zero never).
    pub busy_poll: Duration,
    /// `--outbound-addr` / `--outbound-addr6` as given (an address or an
    /// interface name); resolved at start-up by the setup code.
    pub outbound_addr: Option<String>,
    pub outbound_addr6: Option<String>,
    /// Bytes per TCP buffer, each direction.
    pub tcp_buffer: usize,
    /// Caps on TCP flows and pending connects.
    pub limits: Limits,
    /// Seconds an idle UDP or ICMP echo flow is kept.
    pub udp_timeout: u64,
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

/// What pasta's `--config-net` sets on the tap: its MTU (`None`: left
/// as it is), the addresses and the routes, as copied from the host's
/// template interface or given with `-a`, `-n`, `-g`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCopy {
    pub mtu: Option<u32>,
    pub addrs: Vec<CopiedAddr>,
    pub routes: Vec<CopiedRoute>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopiedAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// The host's address came without its prefix route.
    pub no_prefix_route: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopiedRoute {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub metric: Option<u32>,
    pub onlink: bool,
    /// Set by the front end rather than copied (pasta's one default route
    /// with `-g` or `--no-copy-routes`): the kernel's refusal, even for a
    /// gateway off the link, fails setup. A copied route whose gateway is
    /// unreachable is skipped, as pasta skips it.
    pub required: bool,
}

impl Config {
    /// The engine's settings for this configuration (with a fresh random
    /// seed for smoltcp's initial sequence numbers).
    pub fn engine_config(&self) -> EngineConfig {
        use std::hash::{BuildHasher, Hasher};
        let mut e = EngineConfig::new(self.plan.clone(), self.mtu as usize);
        e.seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        e.tcp_buffer = self.tcp_buffer;
        e.limits = self.limits;
        e.udp_idle_timeout = smoltcp::time::Duration::from_secs(self.udp_timeout);
        e
    }
}
