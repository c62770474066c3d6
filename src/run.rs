//! `netferry run [OPTIONS] [-- CMD [ARGS...]]`: one command for a
//! networked rootless namespace.
//!
//! It makes a child in new user, network and mount namespaces (see
//! `setup::spawn_namespaced`), serves that child's network exactly as
//! `netferry -c -6 --enable-sandbox --enable-seccomp PID tap0` would
//! (`--no-sandbox`, `--no-seccomp` turn those off), publishes the `-p`
//! ports, then lets the child exec CMD and exits with CMD's status. Nothing outlives it:
//! the namespaces belong to the child alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use thiserror::Error;

use crate::api::ApiServer;
use crate::cli::{Args, RunArgs};
use crate::config::{Config, MAX_MTU};
use crate::engine::{ForwardSpec, Proto};
use crate::event_loop::{EventLoop, Exit};
use crate::host::{self, Outbound};
use crate::setup;
use crate::slirp4netns::MIN_TAP_MTU;

const IPV6_MIN_MTU: u32 = crate::engine::IPV6_MIN_MTU as u32;

/// The command's interface.
const TAP: &str = "tap0";
/// tap0's MTU unless `--mtu` says otherwise: the fast one.
pub const RUN_MTU: &str = "65520";
/// The exit status when netferry itself fails (a bad option, setup, the
/// network ending before CMD), as `env`, `chroot` and `podman run` use
/// it; 126 and 127 (CMD not executable, not found) come from the child.
pub const STATUS_FAILED: u8 = 125;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("-p {spec}: expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]")]
    Shape { spec: String },
    #[error("-p {spec}: {what} is not a port or a range of ports (1-65535)")]
    Port { spec: String, what: String },
    #[error("-p {spec}: {what} is not an IP address")]
    Addr { spec: String, what: String },
    #[error("-p {spec}: protocol must be tcp or udp, not {what}")]
    Proto { spec: String, what: String },
    #[error("-p {spec}: the host and guest ranges differ in length")]
    Ranges { spec: String },
    #[error("-p {spec}: an IPv6 host address goes in brackets: -p {bracketed}")]
    Brackets { spec: String, bracketed: String },
}

fn ports(spec: &str, what: &str) -> Result<(u16, u16), PublishError> {
    let bad = || PublishError::Port {
        spec: spec.to_string(),
        what: what.to_string(),
    };
    let one = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
    match what.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(bad());
            }
            Ok((a, b))
        }
        None => one(what).map(|p| (p, p)),
    }
}

/// One `-p` spec, as the forwards it asks for (`guest` is the guest's
/// default address).
pub fn parse_publish(spec: &str, guest: Ipv4Addr) -> Result<Vec<ForwardSpec>, PublishError> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Proto::Tcp),
        Some((rest, "udp")) => (rest, Proto::Udp),
        Some((_, other)) => {
            return Err(PublishError::Proto {
                spec: spec.to_string(),
                what: other.to_string(),
            });
        }
        None => (spec, Proto::Tcp),
    };
    let shape = || PublishError::Shape {
        spec: spec.to_string(),
    };
    let (addr, ports_part) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (addr, after) = bracketed.split_once("]:").ok_or_else(shape)?;
        (Some(addr), after)
    } else {
        match rest.matches(':').count() {
            1 => (None, rest),
            2 => {
                let (addr, after) = rest.split_once(':').ok_or_else(shape)?;
                (Some(addr), after)
            }
            _ => return Err(unbracketed_v6(spec, rest).unwrap_or_else(shape)),
        }
    };
    let host_ip: IpAddr = match addr {
        None | Some("") => Ipv4Addr::UNSPECIFIED.into(),
        Some(a) => a.parse().map_err(|_| PublishError::Addr {
            spec: spec.to_string(),
            what: a.to_string(),
        })?,
    };
    let (hp, gp) = ports_part.split_once(':').ok_or_else(shape)?;
    let (h0, h1) = ports(spec, hp)?;
    let (g0, g1) = ports(spec, gp)?;
    if h1 - h0 != g1 - g0 {
        return Err(PublishError::Ranges {
            spec: spec.to_string(),
        });
    }
    Ok((0..=h1 - h0)
        .map(|i| ForwardSpec {
            proto,
            host: SocketAddr::new(host_ip, h0 + i),
            guest: SocketAddr::new(guest.into(), g0 + i),
        })
        .collect())
}

/// `ADDR:HOST_PORT:GUEST_PORT` whose ADDR is IPv6 without brackets: the
/// error that shows the spec with them.
fn unbracketed_v6(spec: &str, rest: &str) -> Option<PublishError> {
    let mut parts = rest.rsplitn(3, ':');
    let (gp, hp, addr) = (parts.next()?, parts.next()?, parts.next()?);
    addr.parse::<std::net::Ipv6Addr>().ok()?;
    let proto = &spec[rest.len()..];
    Some(PublishError::Brackets {
        spec: spec.to_string(),
        bracketed: format!("[{addr}]:{hp}:{gp}{proto}"),
    })
}

/// The slirp4netns-style configuration that serves `pid`.
fn config_for(args: &RunArgs, pid: i32) -> Result<Config, crate::slirp4netns::ConfigError> {
    let raw = Args {
        configure: true,
        enable_ipv6: !args.no_ipv6,
        mtu: Some(args.mtu.clone().unwrap_or_else(|| RUN_MTU.to_string())),
        api_socket: args.api_socket.clone(),
        cidr: args.cidr.clone(),
        cidr6: args.cidr6.clone(),
        disable_host_loopback: args.disable_host_loopback,
        disable_dns: args.disable_dns,
        outbound_addr: args.outbound_addr.clone(),
        outbound_addr6: args.outbound_addr6.clone(),
        enable_sandbox: !args.no_sandbox,
        enable_seccomp: !args.no_seccomp,
        debug: args.debug,
        positional: vec![pid.to_string(), TAP.to_string()],
        ..Args::default()
    };
    crate::slirp4netns::config(&raw)
}

/// Run the command; the status to exit with.
pub fn run_command(args: &RunArgs) -> anyhow::Result<i32> {
    // Everything that can be checked is checked before any namespace.
    let precheck = config_for(args, 1)?;
    // The kernel takes a smaller MTU but then turns IPv6 off on tap0.
    if precheck.plan.v6.is_some() && precheck.mtu < IPV6_MIN_MTU {
        anyhow::bail!(
            "MTU {} is too small for IPv6: {IPV6_MIN_MTU}-{MAX_MTU} (with --no-ipv6, \
             {MIN_TAP_MTU}-{MAX_MTU})",
            precheck.mtu
        );
    }
    if let Some(path) = &precheck.api_socket {
        setup::check_api_socket_dir(path)?;
    }
    let mut forwards = Vec::new();
    for spec in &args.publish {
        forwards.extend(parse_publish(spec, precheck.plan.v4.guest)?);
    }
    let cmd = if args.cmd.is_empty() {
        vec![std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into())]
    } else {
        args.cmd.clone()
    };
    let outbound = Outbound {
        v4: precheck
            .outbound_addr
            .as_deref()
            .map(host::resolve_outbound_v4)
            .transpose()?,
        v6: precheck
            .outbound_addr6
            .as_deref()
            .map(host::resolve_outbound_v6)
            .transpose()?,
    };
    // With --disable-dns nothing answers at the DNS address: CMD keeps
    // the host's resolv.conf and reaches its servers through netferry.
    let resolv = match args.disable_dns {
        true => None,
        false => Some(ResolvFile::write(&precheck)?),
    };
    let resolv_path = resolv.as_ref().map(|r| r.file.clone());
    let inside = setup::Inside {
        exe: None,
        map_user: args.map_user,
        resolv_conf: resolv_path.as_deref(),
        ipv6_tap: (!args.no_ipv6).then_some(TAP),
        new_user: true,
        isolated: None,
        failures: setup::Failures {
            prefix: "netferry run: ",
            setup: i32::from(STATUS_FAILED),
            exec: None,
        },
    };
    let serving = |child: &setup::Namespaced| serve(args, child, &forwards, outbound);
    // Once spawned, the child's bind mount keeps the resolv.conf.
    let status = serve_command(&cmd, &inside, serving, || drop(resolv))?;
    Ok(status.unwrap_or_else(|| i32::from(STATUS_FAILED)))
}

/// Run `cmd` in new namespaces on a network that `set_up` serves: fork
/// the child, let `set_up` make its network (an event loop ready to run,
/// locked down), start the command, serve until it ends. `spawned` runs
/// once the child exists. The command's status (its exit code, or 128+N
/// for death by signal N, as shells give it), or `None` when serving
/// stopped first and the command was killed. Shared by `netferry run` and
/// pasta's `pasta [CMD]`.
pub fn serve_command(
    cmd: &[String],
    inside: &setup::Inside<'_>,
    set_up: impl FnOnce(&setup::Namespaced) -> anyhow::Result<EventLoop>,
    spawned: impl FnOnce(),
) -> anyhow::Result<Option<i32>> {
    let mut child = setup::spawn_namespaced(cmd, inside).context("cannot create the namespaces")?;
    spawned();
    let end = |child: &setup::Namespaced| {
        let _ = kill(child.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child.pid, None);
    };
    let mut event_loop = match set_up(&child) {
        Ok(event_loop) => event_loop,
        Err(e) => {
            end(&child);
            return Err(e);
        }
    };
    setup::release_startup_memory();
    event_loop.watch_child(child.pid);
    if let Err(e) = child.start() {
        end(&child);
        return Err(e).context("cannot start the command");
    }
    let exit = match event_loop.run() {
        Ok(exit) => exit,
        Err(e) => {
            end(&child);
            return Err(e.into());
        }
    };
    Ok(match exit {
        Exit::Child(WaitStatus::Exited(_, code)) => Some(code),
        Exit::Child(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
        other => {
            log::warn!("stopped serving ({other:?}); ending the command");
            end(&child);
            None
        }
    })
}

/// The network for `netferry run`'s child, ready to serve.
fn serve(
    args: &RunArgs,
    child: &setup::Namespaced,
    forwards: &[ForwardSpec],
    outbound: Outbound,
) -> anyhow::Result<EventLoop> {
    let cfg = config_for(args, child.pid.as_raw())?;
    let (tap, offload) = setup::obtain_tap(&cfg).context("cannot get the tap device")?;
    setup::prefer_mmap_for_buffers();
    let _ = setup::raise_fd_limit();
    let api = match &cfg.api_socket {
        Some(path) => Some(ApiServer::bind(path).context("cannot create the API socket")?),
        None => None,
    };
    let api_dir = api.as_ref().map(ApiServer::dir_fd);
    let host = (outbound, Path::new("/etc/resolv.conf"));
    let mut event_loop = EventLoop::new(
        (tap, offload),
        (&cfg.engine_config(), cfg.busy_poll),
        host,
        None,
        api,
    )
    .context("cannot start the event loop")?;
    for spec in forwards {
        event_loop
            .engine_mut()
            .add_forward(*spec)
            .with_context(|| {
                format!("cannot publish {} port {}", spec.proto.as_str(), spec.host)
            })?;
    }
    // Before the command runs (the sandbox joins its user namespace for
    // the rights).
    let scope = setup::seccomp::Scope::here(Some(child.pid.as_raw()), api_dir);
    setup::lock_down(&cfg, &scope)?;
    Ok(event_loop)
}

/// The resolv.conf the command sees: the virtual DNS addresses. It lives
/// in a directory of its own, made 0700 under a name nobody can guess, and
/// is created there (never opened if it exists), so no other user can
/// plant or change what the command reads. Both are removed on drop (the
/// child's bind mount keeps its own reference).
struct ResolvFile {
    dir: PathBuf,
    file: PathBuf,
}

impl ResolvFile {
    fn write(cfg: &Config) -> anyhow::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let plan = &cfg.plan;
        let servers = [
            plan.v4.dns.map(IpAddr::from),
            plan.v6.and_then(|l| l.dns).map(IpAddr::from),
        ];
        let mut text = String::new();
        for server in servers.into_iter().flatten() {
            text.push_str(&format!("nameserver {server}\n"));
        }
        let template = std::env::temp_dir().join("netferry-run-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("cannot create a directory like {}", template.display()))?;
        let this = ResolvFile {
            file: dir.join("resolv.conf"),
            dir,
        };
        // Readable by the command: it runs as our own uid, mapped inside.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&this.file)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", this.file.display()))?;
        Ok(this)
    }
}

impl Drop for ResolvFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

    fn one(spec: &str) -> ForwardSpec {
        let v = parse_publish(spec, GUEST).unwrap();
        assert_eq!(v.len(), 1);
        v[0]
    }

    #[test]
    fn publish_specs() {
        let f = one("8080:80");
        assert_eq!(
            (f.proto, f.host, f.guest),
            (
                Proto::Tcp,
                "0.0.0.0:8080".parse().unwrap(),
                "10.0.2.100:80".parse().unwrap()
            )
        );
        let f = one("127.0.0.1:8091:80/udp");
        assert_eq!(
            (f.proto, f.host),
            (Proto::Udp, "127.0.0.1:8091".parse().unwrap())
        );
        let f = one("[::1]:8092:80/tcp");
        assert_eq!(f.host, "[::1]:8092".parse().unwrap());
        let v = parse_publish("8000-8002:90-92", GUEST).unwrap();
        assert_eq!(
            v.iter()
                .map(|f| (f.host.port(), f.guest.port()))
                .collect::<Vec<_>>(),
            [(8000, 90), (8001, 91), (8002, 92)]
        );
    }

    #[test]
    fn bad_publish_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("80", "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT"),
            ("0:80", "0 is not a port"),
            ("x:1:2", "x is not an IP address"),
            ("1:2/sctp", "protocol must be tcp or udp"),
            ("8000-8002:80", "ranges differ"),
            ("70000:80", "70000 is not a port"),
            ("::1:80:80", "goes in brackets: -p [::1]:80:80"),
            ("fd00::5:80:80/udp", "-p [fd00::5]:80:80/udp"),
            ("1:2:3:4", "expected"),
        ] {
            let e = parse_publish(spec, GUEST).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
