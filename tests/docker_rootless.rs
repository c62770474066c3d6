//! Docker rootless (`dockerd-rootless.sh`, moby) and nerdctl
//! (`containerd-rootless.sh`) start rootlesskit with a flag set built from
//! their `*_ROOTLESSKIT_*` environment variables, and find slirp4netns on
//! `PATH`. These tests run rootlesskit with exactly those flag sets (in the
//! scripts' order; the helper adds `--net=slirp4netns` and `--state-dir`,
//! which the scripts pass too), netferry installed as `slirp4netns` first
//! in `PATH`, and ports published the way the daemons do, through
//! rootlesskit's API (`rootlessctl add-ports`). No dockerd or containerd
//! runs: a web server in the container's network namespace stands in.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::podman::host_web;
use common::rootless::{Enter, Probe};
use common::{Found, Rootlesskit, TempDir, TestNet, wait_until};

const NET_BIND_ONLY: &str = "0000000000000400";

/// dockerd-rootless.sh of Docker 29.5 and later with no variable set: DETACH_NETNS
/// true, PORT_DRIVER builtin, sandbox and seccomp `auto`, host loopback
/// disabled, MTU 65520.
const DOCKER29_DEFAULTS: &[&str] = &[
    "--mtu=65520",
    "--slirp4netns-sandbox=auto",
    "--slirp4netns-seccomp=auto",
    "--disable-host-loopback",
    "--port-driver=builtin",
    "--copy-up=/etc",
    "--copy-up=/run",
    "--propagation=rslave",
    "--detach-netns",
];

/// dockerd-rootless.sh of Docker 20.10 to 29.4 (Debian 12's docker.io is
/// 20.10) with no variable set: the same without `--detach-netns`.
const DOCKER20_DEFAULTS: &[&str] = &[
    "--mtu=65520",
    "--slirp4netns-sandbox=auto",
    "--slirp4netns-seccomp=auto",
    "--disable-host-loopback",
    "--port-driver=builtin",
    "--copy-up=/etc",
    "--copy-up=/run",
    "--propagation=rslave",
];

/// Docker 29.5 with DOCKERD_ROOTLESS_ROOTLESSKIT_DETACH_NETNS=false,
/// _PORT_DRIVER=slirp4netns, _DISABLE_HOST_LOOPBACK=false, _MTU=1500.
const DOCKER29_SLIRP4NETNS_PORTS: &[&str] = &[
    "--mtu=1500",
    "--slirp4netns-sandbox=auto",
    "--slirp4netns-seccomp=auto",
    "--port-driver=slirp4netns",
    "--copy-up=/etc",
    "--copy-up=/run",
    "--propagation=rslave",
];

/// containerd-rootless.sh (nerdctl, 2026) with
/// CONTAINERD_ROOTLESS_ROOTLESSKIT_IPV6=true and rootlesskit 2, whose
/// `--help` lists `--detach-netns`, so DETACH_NETNS=auto turns it on.
const NERDCTL_IPV6: &[&str] = &[
    "--mtu=65520",
    "--slirp4netns-sandbox=auto",
    "--slirp4netns-seccomp=auto",
    "--disable-host-loopback",
    "--port-driver=builtin",
    "--copy-up=/etc",
    "--copy-up=/run",
    "--copy-up=/var/lib",
    "--propagation=rslave",
    "--ipv6",
    "--detach-netns",
];

struct Session {
    net: TestNet,
    rk: Rootlesskit,
    probe: Probe,
    _web: TempDir,
    _host: common::KillOnDrop,
    _dns: common::KillOnDrop,
}

/// rootlesskit `bin` with `flags`, netferry found on PATH, a guest probe
/// that first runs dockerd-rootless.sh's own first step when `docker` is
/// set (`nsenter -n$netns sysctl -w net.ipv4.ip_forward=1`), and port
/// 8090 published through rootlessctl.
fn session(bin: &str, flags: &[&str], enter: Enter, docker: bool, ipv6: bool) -> Session {
    let net = TestNet::new();
    let web = TempDir::new("dr-web");
    let host = host_web(&net, &web.0);
    // netferry's resolver is the host namespace's 127.0.0.1 (TestNet).
    let dns = common::dns_server(&net, "127.0.0.1", &["198.51.100.2"]);
    let probe = Probe::new(enter).with_dns();
    let before = if docker {
        let netns = match enter {
            Enter::Child => "/proc/self/ns/net",
            Enter::Detached => "$ROOTLESSKIT_STATE_DIR/netns",
        };
        format!(
            "nsenter -n{netns} sysctl -w net.ipv4.ip_forward=1 > {} 2>&1;",
            probe.path("sysctl").display()
        )
    } else {
        String::new()
    };
    let rk = Rootlesskit::start(
        bin,
        Found::OnPath,
        &net,
        flags,
        "published page\n",
        &probe.script(&before, ipv6),
    );
    let s = Session {
        net,
        rk,
        probe,
        _web: web,
        _host: host,
        _dns: dns,
    };
    s.publish(bin, "127.0.0.1:8090:80/tcp");
    s
}

impl Session {
    /// `rootlessctl add-ports`, as dockerd's and nerdctl's port code do
    /// through rootlesskit's API socket, once that socket answers.
    fn publish(&self, rootlesskit: &str, spec: &str) {
        let mut said = String::new();
        let ok = wait_until(Duration::from_secs(20), || {
            let out = self.ctl(rootlesskit, &["add-ports", spec]);
            said = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(
            ok,
            "rootlessctl add-ports {spec}: {said}\n{}",
            self.rk.log()
        );
    }

    /// `rootlessctl` with `args`, run against this rootlesskit.
    fn ctl(&self, rootlesskit: &str, args: &[&str]) -> std::process::Output {
        let ctl = Path::new(rootlesskit).with_file_name("rootlessctl");
        let ctl = if ctl.is_absolute() {
            ctl
        } else {
            "rootlessctl".into()
        };
        Command::new(ctl)
            .arg("--socket")
            .arg(self.rk.state_dir().join("api.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    fn assert_serves(&self) {
        assert!(
            self.rk.serves(
                &self.net,
                "http://127.0.0.1:8090/index.html",
                "published page\n"
            ),
            "no page through the published port\n{}",
            self.rk.log()
        );
        assert!(self.probe.finished(), "{}", self.rk.log());
        self.probe.assert_dns("10.0.2.3", "198.51.100.2");
    }

    fn assert_locked_down(&self, sandbox: bool) {
        assert_eq!(self.rk.helper_status("Seccomp"), "2", "not under seccomp");
        assert_eq!(self.rk.helper_sandboxed(), sandbox, "sandbox");
        if sandbox {
            assert_eq!(self.rk.helper_status("CapEff"), NET_BIND_ONLY);
        }
    }

    fn assert_forwarding_on(&self) {
        assert_eq!(
            self.probe.read("sysctl").trim(),
            "net.ipv4.ip_forward = 1",
            "{}",
            self.rk.log()
        );
    }
}

#[test]
fn the_scripts_pick_slirp4netns_when_netferry_is_on_path_as_it() {
    // Both scripts choose the slirp4netns driver when `slirp4netns` is on
    // PATH and its --help has the word --netns-type.
    let dir = TempDir::new("dr-path");
    std::fs::create_dir_all(dir.path("bin")).unwrap();
    std::os::unix::fs::symlink(common::netferry_bin(), dir.path("bin/slirp4netns")).unwrap();
    let detect = "if command -v slirp4netns > /dev/null 2>&1; then \
                  if slirp4netns --help | grep -qw -- --netns-type; then echo slirp4netns; fi; fi";
    let out = Command::new("sh")
        .args(["-c", detect])
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", dir.path("bin").display()),
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "slirp4netns\n");
}

#[test]
fn docker_29_5_defaults_with_rootlesskit_2() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let s = session(bin, DOCKER29_DEFAULTS, Enter::Detached, true, false);
    s.assert_serves();
    s.assert_forwarding_on();
    s.probe.assert_host_loopback(false, &s.rk.log());
    assert_eq!(s.probe.mtu(), Some(65520));
    assert_eq!(
        s.rk.normalized_argv(),
        "--mtu 65520 -r 3 --disable-host-loopback --enable-seccomp \
         --userns-path=/proc/$PID/ns/user --netns-type=path /proc/$PID/root$STATE/netns tap0"
    );
    s.assert_locked_down(false);
}

#[test]
fn docker_20_to_29_4_defaults_with_rootlesskit_1_1() {
    let s = session("rootlesskit", DOCKER20_DEFAULTS, Enter::Child, true, false);
    s.assert_serves();
    s.assert_forwarding_on();
    s.probe.assert_host_loopback(false, &s.rk.log());
    assert_eq!(
        s.rk.normalized_argv(),
        "--mtu 65520 -r 3 --disable-host-loopback --enable-sandbox --enable-seccomp $PID tap0"
    );
    s.assert_locked_down(true);
}

#[test]
fn docker_29_with_the_slirp4netns_port_driver_host_loopback_and_mtu_1500() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let s = session(bin, DOCKER29_SLIRP4NETNS_PORTS, Enter::Child, true, false);
    s.assert_serves();
    s.assert_forwarding_on();
    s.probe.assert_host_loopback(true, &s.rk.log());
    assert_eq!(s.probe.mtu(), Some(1500));
    // An IPv6 listener on the host, which slirp4netns itself refuses.
    s.publish(bin, "[::1]:8091:80/tcp");
    assert!(
        s.rk.serves(&s.net, "http://[::1]:8091/index.html", "published page\n"),
        "nothing through [::1]:8091\n{}",
        s.rk.log()
    );
    // The reason to pick this port driver: the server sees the client.
    let cgi = s.rk.dir.path("www/cgi-bin/ip");
    std::fs::create_dir_all(cgi.parent().unwrap()).unwrap();
    std::fs::write(
        &cgi,
        "#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n",
    )
    .unwrap();
    for path in [cgi.parent().unwrap(), &cgi] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    s.publish(bin, "0.0.0.0:8092:80/tcp");
    common::podman::assert_sees_client(&s.net, 8092);
    // UDP too: an echo socket inside, a datagram from the host.
    let child = std::fs::read_to_string(s.rk.state_dir().join("child_pid")).unwrap();
    let inside = common::in_netns(&format!("/proc/{}/ns/net", child.trim()), || {
        std::net::UdpSocket::bind("0.0.0.0:5353").unwrap()
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = inside.recv_from(&mut buf) {
            let _ = inside.send_to(&buf[..n], from);
        }
    });
    s.publish(bin, "127.0.0.1:5355:5353/udp");
    let client = s
        .net
        .in_host(|| std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let echoed = wait_until(Duration::from_secs(10), || {
        client.send_to(b"datagram\n", "127.0.0.1:5355").unwrap();
        client
            .recv(&mut buf)
            .is_ok_and(|n| &buf[..n] == b"datagram\n")
    });
    assert!(echoed, "no UDP echo through the published port");
    // Docker unpublishes through the same API when a container stops.
    let list = String::from_utf8_lossy(&s.ctl(bin, &["list-ports", "--json"]).stdout).into_owned();
    let id = list
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|p| p["spec"]["parentPort"] == 8090)
        .and_then(|p| p["id"].as_u64())
        .unwrap_or_else(|| panic!("port 8090 not listed: {list}"));
    let out = s.ctl(bin, &["remove-ports", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // curl's exit code 7: the connection was refused.
    let refused = wait_until(Duration::from_secs(10), || {
        s.net
            .host_cmd(&["curl", "-s", "-m", "2", "http://127.0.0.1:8090/"])
            .status()
            .is_ok_and(|st| st.code() == Some(7))
    });
    assert!(refused, "port 8090 still open after remove-ports");
    assert_eq!(
        s.rk.normalized_argv(),
        "--mtu 1500 -r 3 --api-socket $STATE/.s4nn.sock --enable-sandbox --enable-seccomp $PID tap0"
    );
    s.assert_locked_down(true);
}

#[test]
fn nerdctl_with_ipv6_and_rootlesskit_2() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let s = session(bin, NERDCTL_IPV6, Enter::Detached, false, true);
    s.assert_serves();
    s.probe.assert_host_loopback(false, &s.rk.log());
    let ip6 = s.probe.read("ip6");
    assert!(ip6.contains("inet6 fd00:"), "no SLAAC address: {ip6:?}");
    assert_eq!(
        s.rk.normalized_argv(),
        "--mtu 65520 -r 3 --disable-host-loopback --enable-seccomp --enable-ipv6 \
         --userns-path=/proc/$PID/ns/user --netns-type=path /proc/$PID/root$STATE/netns tap0"
    );
    s.assert_locked_down(false);
}
