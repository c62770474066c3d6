//! rootlesskit 2 (Debian trixie's 2.0.2, unpacked by .ci/run) running
//! netferry as its slirp4netns, as the unprivileged user `nfrootless`
//! inside the test's host namespace: the flag sets Docker rootless and
//! nerdctl use, `--detach-netns` (new in 2.0), and rootlesskit 1.1's
//! `--disable-host-loopback` with the slirp4netns port driver. Each test
//! pins the command line rootlesskit gave netferry, so a changed caller is
//! noticed.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Rootlesskit, TempDir, TestNet, wait_until};

/// A directory the unprivileged user may write to.
fn out_dir() -> TempDir {
    let dir = TempDir::new("rk2-out");
    Command::new("chmod")
        .arg("0777")
        .arg(&dir.0)
        .status()
        .unwrap();
    dir
}

/// The `/proc/PID/status` field of the netferry started as `bin`.
fn helper_field(rk: &Rootlesskit, name: &str) -> String {
    let out = Command::new("pgrep")
        .args(["-f", &format!("^{} ", rk.bin.display())])
        .output()
        .unwrap();
    let Some(pid) = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
    else {
        return String::new();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn has(argv: &str, flag: &str) -> bool {
    argv.split_whitespace()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

#[test]
fn docker_rootless_flags_sandbox_seccomp_and_the_slirp4netns_port_driver() {
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
    let seccomp = helper_field(&rk, "Seccomp");
    let argv = rk.serving_argv();
    assert!(got, "no page through the forward\n{}", rk.log());
    assert!(rk.argv().starts_with("--help\n"), "{}", rk.argv());
    for flag in [
        "--mtu",
        "-r",
        "--api-socket",
        "--enable-sandbox",
        "--enable-seccomp",
    ] {
        assert!(has(&argv, flag), "{flag} missing from {argv:?}");
    }
    assert!(argv.ends_with(" tap0"), "{argv:?}");
    assert_eq!(seccomp, "2", "netferry is not under its seccomp filter");
}

#[test]
fn disable_host_loopback_with_the_slirp4netns_port_driver_in_both_versions() {
    let mut versions = vec!["rootlesskit"];
    versions.extend(common::rootlesskit2());
    for bin in versions {
        let net = TestNet::new();
        let dir = out_dir();
        let _host = net.in_host(|| std::net::TcpListener::bind("127.0.0.1:8002").unwrap());
        let script = format!(
            "busybox nc -w 3 10.0.2.2 8002 </dev/null && echo REACHED > {out} || echo REFUSED > {out};",
            out = dir.path("loopback").display()
        );
        let rk = Rootlesskit::spawn_with(
            bin,
            &net,
            &[
                "--disable-host-loopback",
                "--port-driver=slirp4netns",
                "-p",
                "127.0.0.1:8083:80/tcp",
            ],
            "no loopback page\n",
            &script,
        );
        let got = rk.serves(
            &net,
            "http://127.0.0.1:8083/index.html",
            "no loopback page\n",
        );
        wait_until(Duration::from_secs(10), || dir.path("loopback").exists());
        let loopback = std::fs::read_to_string(dir.path("loopback")).unwrap_or_default();
        assert!(got, "{bin}: no page through the forward\n{}", rk.log());
        assert_eq!(loopback.trim(), "REFUSED", "{bin}\n{}", rk.log());
        assert!(
            has(&rk.serving_argv(), "--disable-host-loopback"),
            "{bin}: {}",
            rk.argv()
        );
    }
}

#[test]
fn ipv6_reaches_the_host_and_gets_a_slaac_address() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let net = TestNet::new();
    let dir = out_dir();
    // A web server on the host's ::1, reached through fd00::2.
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("v6.txt"), "hello over IPv6\n").unwrap();
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
    let script = format!(
        "(for i in $(seq 100); do ip -6 addr show tap0 scope global | grep fd00 | grep -qv tentative && break; sleep 0.1; done; \
         ip -6 addr show tap0 scope global > {ip6}; \
         ip -6 route > {got}.route; busybox wget -O {got} http://[fd00::2]:8004/v6.txt 2> {got}.err) &",
        ip6 = dir.path("ip6").display(),
        got = dir.path("got6").display(),
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
        &script,
    );
    let got = rk.serves(&net, "http://127.0.0.1:8084/index.html", "v6 page\n");
    wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(dir.path("got6")).is_ok_and(|s| !s.is_empty())
    });
    let ip6 = std::fs::read_to_string(dir.path("ip6")).unwrap_or_default();
    let got6 = std::fs::read_to_string(dir.path("got6")).unwrap_or_default();
    assert!(got, "no page through the forward\n{}", rk.log());
    assert!(has(&rk.serving_argv(), "--enable-ipv6"), "{}", rk.argv());
    assert!(
        ip6.contains("inet6 fd00:"),
        "no SLAAC address: {ip6:?}\n{}",
        rk.log()
    );
    // On failure: the guest's IPv6 routes and what wget said.
    let routes = std::fs::read_to_string(dir.path("got6.route")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.path("got6.err")).unwrap_or_default();
    assert_eq!(got6, "hello over IPv6\n", "{routes}{err}\n{}", rk.log());
}

#[test]
fn detach_netns_with_automatic_sandbox_and_seccomp() {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let net = TestNet::new();
    // With --detach-netns the child stays in the host's network namespace
    // and enters the container's through the state directory's file.
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
        "nsenter --net=$ROOTLESSKIT_STATE_DIR/netns --",
    );
    let got = rk.serves(&net, "http://127.0.0.1:8085/index.html", "detached page\n");
    let seccomp = helper_field(&rk, "Seccomp");
    let argv = rk.serving_argv();
    assert!(got, "no page through the forward\n{}", rk.log());
    // rootlesskit 2.0 drops the sandbox with --detach-netns (its mount
    // namespace would hide the netns file) but keeps seccomp.
    assert!(has(&argv, "--userns-path"), "{argv:?}");
    assert!(has(&argv, "--netns-type"), "{argv:?}");
    assert!(
        argv.contains("--netns-type=path") || argv.contains("--netns-type path"),
        "{argv:?}"
    );
    assert!(has(&argv, "--enable-seccomp"), "{argv:?}");
    assert!(!has(&argv, "--enable-sandbox"), "{argv:?}");
    assert_eq!(seccomp, "2", "netferry is not under its seccomp filter");
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
    assert!(!has(&rk.serving_argv(), "--api-socket"), "{}", rk.argv());
}
