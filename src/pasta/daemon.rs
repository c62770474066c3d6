//! pasta's command line served: [`PastaArgs`] made into a [`Config`]
//! with pasta's address model, then the namespace set up, the daemon
//! started, and the loop run until the namespace goes.
//!
//! The address model: the guest gets the host's own addresses and routes
//! (from the template interface, the one with the default route, or
//! `-i`), or `-a`/`-n`/`-g`; with no usable host interface, pasta's local
//! mode (169.254.2.1/16 via 169.254.2.2). The gateway address leads to
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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use super::cli::{self, LogLevel, Parsed, PastaArgs, Target, UserNs};
use super::forward;
use super::ports::{Forwards, PortSpec, Ports};
use crate::config::{
    self, Config, CopiedAddr, CopiedRoute, DEFAULT_BUSY_POLL_MICROS, InterfaceCopy,
};
use crate::engine::{AddressPlan, ForwardSpec, Limits, Link4, MapTo, Mapping, Proto};
use crate::event_loop::EventLoop;
use crate::host::Outbound;
use crate::relay::{RelayProto, RelayRule};
use crate::setup::{self, netlink};

/// pasta's own MAC on the tap (`-M` changes it).
pub const OUR_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
/// pasta's local mode: the guest's address, prefix and gateway when the
/// host has no interface to copy.
const LOCAL_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);
const LOCAL_PREFIX: u8 = 16;
const LOCAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 2);
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
    if let Err(e) = init_logging(args.log_level, args.log_file.as_deref()) {
        let _ = writeln!(std::io::stderr(), "{e:#}");
        return ExitCode::FAILURE;
    }
    for warning in &args.warnings {
        log::warn!("{warning}");
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

/// The namespace file to join and the user namespace to join first.
fn target_of(args: &PastaArgs) -> anyhow::Result<(config::Target, Option<PathBuf>, PathBuf)> {
    const NO_COMMAND: &str = "netferry's pasta mode cannot run a command in new namespaces yet; \
                              use `netferry run -- CMD`, or give --netns or a PID";
    let userns = |u: &UserNs| match u {
        UserNs::Join(path) => Ok(Some(path.clone())),
        UserNs::Keep => Ok(None),
        UserNs::New => bail!(NO_COMMAND),
    };
    match &args.target {
        Target::Netns { path, userns: u } => {
            Ok((config::Target::Path(path.clone()), userns(u)?, path.clone()))
        }
        Target::Pid { pid, userns: u } => {
            let pid = i32::try_from(*pid).with_context(|| format!("Invalid PID {pid}"))?;
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            Ok((config::Target::Pid(pid), userns(u)?, netns))
        }
        Target::Command { .. } => bail!(NO_COMMAND),
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
    let template = netlink::template(netlink::Family::V4, args.template_if.as_deref())
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
    let default_route = CopiedRoute {
        dst: Ipv4Addr::UNSPECIFIED.into(),
        prefix_len: 0,
        gateway: Some(gateway.into()),
        metric: None,
        onlink: false,
    };
    match &template {
        Some(t) if args.gateway4.is_none() && !local && !args.no_copy_routes => {
            for r in t.routes.iter().filter(|r| r.dst.is_ipv4()) {
                copy.routes.push(CopiedRoute {
                    dst: r.dst,
                    prefix_len: r.prefix_len,
                    gateway: r.gateway,
                    metric: r.metric,
                    onlink: r.onlink,
                });
            }
        }
        _ => copy.routes.push(default_route),
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

/// pasta's maps over the guest's IPv4 link.
fn plan_of(args: &PastaArgs, host: &HostV4) -> AddressPlan {
    let mut maps = Vec::new();
    let mut map = |addr: Ipv4Addr, to: MapTo| {
        if !maps.iter().any(|m: &Mapping| m.addr == IpAddr::V4(addr)) {
            maps.push(Mapping {
                addr: addr.into(),
                to,
            });
        }
    };
    if let Some(dns) = args.dns_forward4 {
        map(dns, MapTo::Resolver);
    }
    if let Some(a) = args.map_guest_addr4 {
        let to = match host.host_addr {
            Some(h) => MapTo::Host(h.into()),
            None => MapTo::HostLoopback,
        };
        map(a, to);
    }
    if let Some(a) = args.map_host_loopback4 {
        map(a, MapTo::HostLoopback);
    }
    if !args.no_map_gw {
        map(host.gateway, MapTo::HostLoopback);
    }
    AddressPlan {
        v4: Link4 {
            guest: host.addr,
            prefix_len: host.prefix_len,
            gateway: host.gateway,
            dhcp_pool: None,
            dns: args.dns_forward4,
        },
        v6: None,
        mac: args.our_mac.unwrap_or(OUR_MAC),
        maps,
        closed_subnets: false,
    }
}

/// The `-t`/`-u` forwards to bind before the parent exits.
fn forwards_of(args: &PastaArgs, guest: Ipv4Addr) -> anyhow::Result<Vec<ForwardSpec>> {
    let mut out = Vec::new();
    for (flag, proto, f) in [("-t", Proto::Tcp, &args.tcp), ("-u", Proto::Udp, &args.udp)] {
        // Not given: pasta's `auto`, made by forward::host_rules.
        let Forwards::Given(specs) = f else {
            continue;
        };
        for spec in specs.iter().filter(|s| !forward::is_rule(s)) {
            out.extend(spec_forwards(flag, proto, spec, guest)?);
        }
    }
    Ok(out)
}

fn spec_forwards(
    flag: &str,
    proto: Proto,
    spec: &PortSpec,
    guest: Ipv4Addr,
) -> anyhow::Result<Vec<ForwardSpec>> {
    let ranges = match &spec.ports {
        Ports::Ranges(r) if spec.iface.is_none() => r,
        _ => bail!("{flag}: %interface is not supported by netferry's pasta mode yet"),
    };
    let host_ip = spec.addr.unwrap_or(Ipv4Addr::UNSPECIFIED.into());
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

/// The configuration pasta's command line amounts to.
pub fn config_of(args: &PastaArgs) -> anyhow::Result<(Config, Vec<ForwardSpec>, PathBuf)> {
    let (target, userns_path, netns) = target_of(args)?;
    let host = host_v4(args)?;
    let mtu = match args.mtu {
        None => u32::from(super::args::MTU_DEFAULT),
        Some(0) => host.mtu.unwrap_or(1500),
        Some(m) => u32::from(m),
    };
    let mut copy = host.copy.clone();
    copy.mtu = (args.mtu != Some(0)).then_some(mtu);
    let plan = plan_of(args, &host);
    let forwards = forwards_of(args, plan.v4.guest)?;
    let tap_name = args
        .ns_ifname
        .clone()
        .or(host.ifname.clone())
        .unwrap_or_else(|| DEFAULT_IFNAME.to_string());
    let cfg = Config {
        target,
        tap_name: Some(tap_name),
        userns_path,
        configure: false,
        copy: args.config_net.then_some(copy),
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

fn serve(args: &PastaArgs) -> anyhow::Result<()> {
    if args.foreground {
        if let Some(path) = &args.pid_file {
            write_pid(path, std::process::id() as i32)?;
        }
        return serve_here(args, None);
    }
    // The daemon is forked first and sets everything up itself (a signal
    // fd and its epoll registration belong to the process that made
    // them); the parent waits for its word and leaves once it is ready.
    match setup::daemonize().context("cannot start the daemon")? {
        setup::Daemon::Parent { child, ready } => match ready {
            Ok(()) => {
                if let Some(path) = &args.pid_file {
                    write_pid(path, child)?;
                }
                setup::leave_now(0)
            }
            Err(message) => bail!("{message}"),
        },
        setup::Daemon::Child(ready) => serve_here(args, Some(ready)),
    }
}

/// Set up and serve in this process; tell `ready` (the daemon's parent)
/// when everything is in place, or what failed.
fn serve_here(args: &PastaArgs, ready: Option<setup::Readiness>) -> anyhow::Result<()> {
    let mut event_loop = match set_up(args, ready.as_ref()) {
        Ok(event_loop) => event_loop,
        Err(e) => {
            if let Some(ready) = ready {
                ready.failed(&format!("{e:#}"));
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

fn set_up(args: &PastaArgs, ready: Option<&setup::Readiness>) -> anyhow::Result<EventLoop> {
    let (cfg, forwards, netns) = config_of(args)?;
    let outbound = Outbound {
        v4: cfg
            .outbound_addr
            .as_deref()
            .map(crate::host::resolve_outbound_v4)
            .transpose()?,
        v6: None,
    };
    // -T/-U: sockets inside the namespace, made by the setup child.
    let ns_forwards = forward::ns_forwards(&args.tcp_ns, &args.udp_ns)?;
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
        cfg.plan.v4.guest,
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
    setup::prefer_mmap_for_buffers();
    if let Err(e) = setup::raise_fd_limit() {
        log::warn!("cannot raise the open file limit: {e}");
    }
    let engine_cfg = cfg.engine_config();
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
    forward::bind_all(&all, event_loop.engine_mut());
    if !auto.is_empty() {
        let files = proc_net.into_iter().map(std::fs::File::from).collect();
        let mut scan = forward::AutoForwarder::new(files, auto, &ns_forwards);
        // The first scan before ready, as pasta's.
        scan.sync(event_loop.engine_mut());
        event_loop.every_tick(Box::new(move |engine| scan.sync(engine)));
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
    if !args.no_netns_quit {
        let watch = setup::NetnsWatch::new(&netns)
            .with_context(|| format!("cannot watch {}", netns.display()))?;
        event_loop.watch_netns(watch)?;
    }
    if let Some(ready) = ready {
        ready.release_stdio();
    }
    setup::lock_down(&cfg, &setup::seccomp::Scope::here(None, None))?;
    Ok(event_loop)
}

fn write_pid(path: &Path, pid: i32) -> anyhow::Result<()> {
    std::fs::write(path, format!("{pid}\n"))
        .with_context(|| format!("Couldn't write PID file {}", path.display()))
}
