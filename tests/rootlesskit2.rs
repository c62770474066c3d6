//! rootlesskit 2 (Debian trixie's 2.0.2, unpacked by .ci/run) running
//! netferry as its slirp4netns, as the unprivileged user `nfrootless`
//! inside the test's host namespace: sandbox and seccomp with the
//! slirp4netns port driver, `--ipv6`, `--detach-netns` (new in 2.0), the
//! builtin port driver, and `--disable-host-loopback` on and off in
//! rootlesskit 1.1 and 2. Each test compares the whole command line
//! rootlesskit gave netferry with what rootlesskit's source builds
//! (`pkg/network/slirp4netns/slirp4netns.go`, v1.1.1 and v2.0.2), so a
//! changed caller is noticed.

mod common;

use common::podman::host_web;
use common::rootless::{Enter, Probe};
use std::time::Duration;

use common::{Rootlesskit, TempDir, TestNet, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// CAP_NET_BIND_SERVICE alone: the sandbox's capabilities.
const NET_BIND_ONLY: &str = "0000000000000400";

#[test]
fn sandbox_and_seccomp_with_the_slirp4netns_port_driver() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let net = TestNet::new();
    let rk = Rootlesskit::spawn_with(
        bin,
        &net,
        &[
            "--slirp4netns-sandbox=true",
            "--slirp4netns-seccomp=true",
            "--port-driver=slirp4netns",
            "-p",
            "127.0.0.1:8080:80/tcp",
        ],
        "rootlesskit 2 page\n",
        "",
    );
    let got = rk.serves(
        &net,
        "http://127.0.0.1:8080/index.html",
        "rootlesskit 2 page\n",
    );
    assert!(got, "no page through the forward\n{}", rk.log());
    // rootlesskit reads --help first to decide what it may pass.
    assert!(rk.argv().starts_with("--help\n"), "{}", rk.argv());
    assert_eq!(
        rk.normalized_argv(),
        "--mtu 65520 -r 3 --api-socket $STATE/.s4nn.sock --enable-sandbox --enable-seccomp $PID tap0"
    );
    assert_eq!(rk.helper_status("Seccomp"), "2", "not under seccomp");
    assert_eq!(rk.helper_status("CapEff"), NET_BIND_ONLY);
    assert!(rk.helper_sandboxed(), "netferry's root still has /usr");
}

/// With `--disable-host-loopback` the guest is told "Network is
/// unreachable" for 10.0.2.2; without it, it fetches the host's page.
#[test]
fn host_loopback_on_and_off_in_both_versions() {
    let mut versions = vec!["rootlesskit"];
    versions.extend(common::rootlesskit2());
    for bin in versions {
        for disable in [false, true] {
            let net = TestNet::new();
            let web = TempDir::new("rk-web");
            let _host = host_web(&net, &web.0);
            let probe = Probe::new(Enter::Child);
            let mut flags = vec!["--port-driver=slirp4netns", "-p", "127.0.0.1:8083:80/tcp"];
            if disable {
                flags.insert(0, "--disable-host-loopback");
            }
            let rk = Rootlesskit::spawn_with(
                bin,
                &net,
                &flags,
                "loopback page\n",
                &probe.script("", false),
            );
            let context = format!("{bin} {flags:?}\n{}", rk.log());
            assert!(
                rk.serves(&net, "http://127.0.0.1:8083/index.html", "loopback page\n"),
                "no page through the forward: {context}"
            );
            assert!(probe.finished(), "the probe never finished: {context}");
            probe.assert_host_loopback(!disable, &context);
            let want = if disable {
                "--mtu 65520 -r 3 --disable-host-loopback --api-socket $STATE/.s4nn.sock $PID tap0"
            } else {
                "--mtu 65520 -r 3 --api-socket $STATE/.s4nn.sock $PID tap0"
            };
            assert_eq!(rk.normalized_argv(), want, "{bin}");
        }
    }
}

#[test]
fn ipv6_reaches_the_host_and_gets_a_slaac_address() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let net = TestNet::new();
    let dir = TempDir::new("rk2-v6");
    // A web server on the host's ::1, reached through fd00::2.
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("v6.txt"), "hello over IPv6\n").unwrap();
    common::run_ok("chmod", &["-R", "a+rwX", dir.0.to_str().unwrap()]);
    let _host6 = common::KillOnDrop(
        net.host_cmd(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "[::1]:8004",
            "-h",
            www.to_str().unwrap(),
        ])
        .spawn()
        .unwrap(),
    );
    let probe = Probe::new(Enter::Child);
    let got6 = dir.path("got6");
    let fetch6 = format!(
        "(for i in $(seq 100); do ip -6 addr show tap0 scope global | grep fd00 | grep -qv tentative && break; sleep 0.1; done; \
         busybox wget -O {g} http://[fd00::2]:8004/v6.txt 2> {g}.err) &",
        g = got6.display(),
    );
    let rk = Rootlesskit::spawn_with(
        bin,
        &net,
        &[
            "--ipv6",
            "--port-driver=slirp4netns",
            "-p",
            "127.0.0.1:8084:80/tcp",
        ],
        "v6 page\n",
        &probe.script(&fetch6, true),
    );
    let got = rk.serves(&net, "http://127.0.0.1:8084/index.html", "v6 page\n");
    assert!(got, "no page through the forward\n{}", rk.log());
    assert!(probe.finished(), "{}", rk.log());
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&got6).is_ok_and(|s| !s.is_empty())
    });
    assert_eq!(
        rk.normalized_argv(),
        "--mtu 65520 -r 3 --api-socket $STATE/.s4nn.sock --enable-ipv6 $PID tap0"
    );
    let ip6 = probe.read("ip6");
    assert!(ip6.contains("inet6 fd00:"), "no SLAAC address: {ip6:?}");
    let err = std::fs::read_to_string(dir.path("got6.err")).unwrap_or_default();
    assert_eq!(
        std::fs::read_to_string(&got6).unwrap_or_default(),
        "hello over IPv6\n",
        "{err}\n{}",
        rk.log()
    );
}

/// `--detach-netns`: rootlesskit names the namespace by path with the
/// child's user namespace; the path goes through the child's root
/// (pkg/parent/parent.go), since the file at `$STATE/netns` is a bind mount
/// in the child's mount namespace only. With `--slirp4netns-sandbox=auto` leaves
/// the sandbox out (cmd/rootlesskit/main.go: "Sandbox is known to be
/// incompatible with detach-netns") while `auto` seccomp stays on.
#[test]
fn detach_netns_with_automatic_sandbox_and_seccomp() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let net = TestNet::new();
    let web = TempDir::new("rk-web");
    let _host = host_web(&net, &web.0);
    let probe = Probe::new(Enter::Detached);
    let rk = Rootlesskit::spawn_with(
        bin,
        &net,
        &[
            "--detach-netns",
            "--slirp4netns-sandbox=auto",
            "--slirp4netns-seccomp=auto",
            "--port-driver=slirp4netns",
            "-p",
            "127.0.0.1:8085:80/tcp",
        ],
        "detached page\n",
        &probe.script("", false),
    );
    let got = rk.serves(&net, "http://127.0.0.1:8085/index.html", "detached page\n");
    assert!(got, "no page through the forward\n{}", rk.log());
    assert!(probe.finished(), "{}", rk.log());
    probe.assert_host_loopback(true, &rk.log());
    assert_eq!(
        rk.normalized_argv(),
        "--mtu 65520 -r 3 --api-socket $STATE/.s4nn.sock --enable-seccomp \
         --userns-path=/proc/$PID/ns/user --netns-type=path /proc/$PID/root$STATE/netns tap0"
    );
    assert_eq!(rk.helper_status("Seccomp"), "2", "not under seccomp");
    assert!(!rk.helper_sandboxed(), "sandboxed, though not asked to be");
}

#[test]
fn the_builtin_port_driver_with_netferry_as_the_network() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let net = TestNet::new();
    let rk = Rootlesskit::spawn_with(
        bin,
        &net,
        &["--port-driver=builtin", "-p", "127.0.0.1:8086:80/tcp"],
        "builtin page\n",
        "",
    );
    let got = rk.serves(&net, "http://127.0.0.1:8086/index.html", "builtin page\n");
    assert!(
        got,
        "no page through rootlesskit's builtin driver\n{}",
        rk.log()
    );
    assert_eq!(rk.normalized_argv(), "--mtu 65520 -r 3 $PID tap0");
}

/// rootlesskit ends netferry with SIGKILL when it stops, and starts it
/// with a parent-death signal (SIGKILL) for when rootlesskit itself is
/// killed: either way no netferry is left, sandboxed or not (joining the
/// user namespace for the sandbox must not clear that signal).
#[test]
fn netferry_ends_with_rootlesskit_however_it_ends() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    for (signal, flags) in [
        (
            Signal::SIGTERM,
            &["--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true"][..],
        ),
        (
            Signal::SIGKILL,
            &["--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true"][..],
        ),
        (Signal::SIGKILL, &["--detach-netns"][..]),
    ] {
        let net = TestNet::new();
        let mut all = flags.to_vec();
        all.extend(["--port-driver=builtin", "-p", "127.0.0.1:8087:80/tcp"]);
        // With --detach-netns the server must enter the namespace.
        let enter = if flags.contains(&"--detach-netns") {
            "nsenter --net=$ROOTLESSKIT_STATE_DIR/netns --"
        } else {
            ""
        };
        let mut rk = Rootlesskit::spawn_with(bin, &net, &all, "page\n", enter);
        assert!(
            rk.serves(&net, "http://127.0.0.1:8087/index.html", "page\n"),
            "{}",
            rk.log()
        );
        let helper = rk.helper_pid().expect("no netferry running");
        kill(Pid::from_raw(rk.child.id() as i32), signal).unwrap();
        let _ = rk.child.wait();
        let gone = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{helper}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        });
        assert!(
            gone,
            "netferry {helper} outlived rootlesskit ({signal}, {flags:?})"
        );
    }
}

/// `--cidr` (often put in DOCKERD_ROOTLESS_ROOTLESSKIT_FLAGS to avoid
/// 10.0.2.0/24): rootlesskit configures the guest as network+100 and
/// names network+3 as its DNS server; netferry serves that network.
#[test]
fn another_cidr_with_dns_and_the_slirp4netns_port_driver() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let net = TestNet::new();
    let web = TempDir::new("rk-web");
    let _host = host_web(&net, &web.0);
    let _dns = common::dns_server(&net, "127.0.0.1", &["198.51.100.2"]);
    let probe = Probe::new(Enter::Child).with_dns().via("10.0.3.2");
    let rk = Rootlesskit::spawn_with(
        bin,
        &net,
        &[
            "--cidr=10.0.3.0/24",
            "--port-driver=slirp4netns",
            "-p",
            "127.0.0.1:8088:80/tcp",
        ],
        "cidr page\n",
        &probe.script("", false),
    );
    let got = rk.serves(&net, "http://127.0.0.1:8088/index.html", "cidr page\n");
    assert!(got, "no page through the forward\n{}", rk.log());
    assert!(probe.finished(), "{}", rk.log());
    probe.assert_host_loopback(true, &rk.log());
    probe.assert_dns("10.0.3.3", "198.51.100.2");
    assert_eq!(
        rk.normalized_argv(),
        "--mtu 65520 -r 3 --cidr 10.0.3.0/24 --api-socket $STATE/.s4nn.sock $PID tap0"
    );
}
