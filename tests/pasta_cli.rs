//! Callers' command lines that the end-to-end caller tests do not run
//! through the caller itself: rootlesskit 2.3+ and 3.x's `--net=pasta`
//! argv (its probes, then pasta as the daemon with `--config-net`, given
//! the child's PID or its detached namespace), and Podman 5.0 to 5.2's
//! argv (`--dns-forward 169.254.0.1`, no `--map-guest-addr`). Each runs
//! against a namespace made as the caller makes it, in the test's host
//! namespace (198.51.100.1/24 via 198.51.100.2, dnsmasq on its loopback),
//! with netferry as `pasta` and with the real pasta (Debian forky's).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::pasta::{
    Caller, NetnsFile, as_nobody, each_implementation, host_net, implementations, none_serving,
    output_of_parent, start_pasta_ok, stdout_of, with_arg,
};
use common::podman::{HOST_WEB_PORT, host_web};
use common::{HOST_ADDR, KillOnDrop, REMOTE_ADDR, TempDir, TestNet, dns_server, wait_until};

/// What rootlesskit 2.3+ and 3.x pass first (`pkg/network/pasta`).
const ROOTLESSKIT: [&str; 8] = [
    "--stderr",
    "--ns-ifname=tap0",
    "--mtu=65520",
    "--config-net",
    "--address=10.0.2.100",
    "--netmask=24",
    "--gateway=10.0.2.2",
    "--dns-forward=10.0.2.3",
];

/// A lookup through rootlesskit's DNS address.
const DIG_RK: [&str; 6] = [
    "dig",
    "+short",
    "+tries=2",
    "+time=2",
    "@10.0.2.3",
    "probe.netferry.test",
];

#[test]
fn rootlesskits_probes_exit_0_with_a_pasta_version() {
    let dir = TempDir::new("pasta-cli-probe");
    for (name, pasta) in implementations(&dir) {
        for probe in [&["--version"][..], &["--host-lo-to-ns-lo", "--version"]] {
            let o = Command::new(&pasta).args(probe).output().unwrap();
            assert!(o.status.success(), "{name} {probe:?}: {o:?}");
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(out.starts_with("pasta "), "{name}: {out}");
        }
    }
}

/// rootlesskit's child: a user, mount and network namespace of the
/// unprivileged user nobody (whom pasta runs as too). With `detached`,
/// the child keeps the host's network and binds a new namespace at
/// `STATE/netns` in its own mount namespace (`--detach-netns`), which
/// pasta reaches through `/proc/PID/root`.
struct Child {
    holder: KillOnDrop,
    /// Where the container's namespace is, for the test's root.
    netns: String,
}

impl Child {
    fn new(net: &TestNet, state: &Path, detached: bool) -> Self {
        let st = Command::new("chown")
            .arg("65534:65534")
            .arg(state)
            .status()
            .unwrap();
        assert!(st.success());
        let file = state.join("netns").display().to_string();
        let (unshare, inner) = if detached {
            (
                "--mount",
                format!("touch {file} && unshare --net={file} true && exec sleep infinity"),
            )
        } else {
            ("--net", "exec sleep infinity".to_string())
        };
        let holder = as_nobody(net)
            .args(["unshare", "--user", "--map-root-user", unshare, "--"])
            .args(["sh", "-c", &inner])
            .spawn()
            .unwrap();
        let pid = holder.id();
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        }));
        let netns = if detached {
            format!("/proc/{pid}/root{file}")
        } else {
            format!("/proc/{pid}/ns/net")
        };
        Child {
            holder: KillOnDrop(holder),
            netns,
        }
    }

    fn pid(&self) -> u32 {
        self.holder.0.id()
    }

    /// A command in the container's namespace, as the test's root.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns))
            .arg("--")
            .args(args);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Run pasta as nobody in the host namespace (rootlesskit's parent), as
/// rootlesskit does: wait for the parent to exit and the pipes to close.
fn run_as_nobody(net: &TestNet, pasta: &Path, args: &[String]) -> Output {
    let mut cmd = as_nobody(net);
    cmd.arg(pasta).args(args);
    output_of_parent(cmd)
}

#[test]
fn rootlesskit_3_argv_with_the_childs_pid() {
    each_implementation("pasta-cli-rk", |dir, pasta, name| {
        rootlesskit_session(dir, pasta, name, false)
    });
}

/// `--detach-netns` with Docker's `--disable-host-loopback` (so
/// `--no-map-gw`) and the `--host-lo-to-ns-lo` its probe enabled.
#[test]
fn rootlesskit_3_argv_with_a_detached_netns_and_no_host_loopback() {
    each_implementation("pasta-cli-rkd", |dir, pasta, name| {
        rootlesskit_session(dir, pasta, name, true)
    });
}

fn rootlesskit_session(dir: &TempDir, pasta: &Path, tag: &str, detached: bool) {
    let net = host_net();
    let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
    let web = TempDir::new("pasta-cli-web");
    let _web = host_web(&net, &web.0);
    let state = dir.path(&format!("state-{tag}-{detached}"));
    std::fs::create_dir_all(&state).unwrap();
    let child = Child::new(&net, &state, detached);
    let pid = child.pid();
    let mut argv: Vec<String> = ROOTLESSKIT.map(String::from).to_vec();
    if detached {
        argv.push("--no-map-gw".into());
    }
    argv.extend(["--ipv4-only", "--tcp-ports=none", "--udp-ports=none"].map(String::from));
    if detached {
        argv.push("--host-lo-to-ns-lo".into());
        argv.push(format!("--userns=/proc/{pid}/ns/user"));
        argv.push(format!("--netns={}", child.netns));
    } else {
        argv.push(pid.to_string());
    }
    let out = run_as_nobody(&net, pasta, &argv);
    assert!(out.status.success(), "{tag}: {out:?}");

    // tap0: 10.0.2.100/24 via 10.0.2.2, MTU 65520, up; lo up.
    let addrs: serde_json::Value =
        serde_json::from_str(&child.ok(&["ip", "-j", "-4", "addr", "show", "tap0"])).unwrap();
    let tap = &addrs[0];
    assert_eq!(tap["mtu"], 65520, "{tag}: {addrs}");
    assert_eq!(tap["addr_info"][0]["local"], "10.0.2.100", "{tag}");
    assert_eq!(tap["addr_info"][0]["prefixlen"], 24, "{tag}");
    let routes = child.ok(&["ip", "-4", "route"]);
    assert!(routes.contains("default via 10.0.2.2"), "{tag}: {routes}");
    let lo = child.ok(&["ip", "-br", "link", "show", "lo"]);
    assert!(lo.contains("UNKNOWN"), "{tag}: {lo}");

    // DNS through rootlesskit's address, answered by the host's resolver.
    let answer = child.ok(&DIG_RK);
    // dig prints a timed-out first try before the answer of a second.
    assert_eq!(answer.lines().last(), Some("192.0.2.77"), "{tag}: {answer}");

    // The host's loopback through the gateway, unless --no-map-gw.
    let page = child
        .cmd(&["curl", "-s", "-m", "3"])
        .arg(format!("http://10.0.2.2:{HOST_WEB_PORT}/"))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    if detached {
        assert_eq!(page, "", "{tag}: the host's loopback despite --no-map-gw");
    } else {
        assert_eq!(page, "hello from the host\n", "{tag}");
    }

    // Still serving after a few rounds of its once-a-second check for
    // the namespace (which must work from inside its sandbox).
    let marker = "--dns-forward=10.0.2.3";
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(with_arg(&net, marker).len(), 1, "{tag}: one daemon");
    let again = child.ok(&DIG_RK);
    assert_eq!(
        again.lines().last(),
        Some("192.0.2.77"),
        "{tag}: DNS after a while: {again}"
    );

    // rootlesskit never stops pasta: it goes when the child does (and,
    // detached, when rootlesskit removes its state directory).
    drop(child);
    if detached {
        std::fs::remove_dir_all(&state).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || with_arg(&net, marker).is_empty()),
        "{tag}: pasta outlived rootlesskit's child"
    );
}

/// Podman 5.1 and 5.2's argv for `podman run -p 8080:80 -p
/// 127.0.0.1:8081:80` (containers/common's `Setup2`): `--dns-forward
/// 169.254.0.1` added, no `--map-guest-addr`; with `dns_option` as
/// containers.conf's `pasta_options` could put it first (5.0's `--dns
/// none`).
fn podman_5_0_argv(netns: &Path, dns_option: bool) -> Vec<String> {
    let mut argv = vec!["--config-net", "-t", "8080-8080:80-80"];
    argv.extend(["-t", "127.0.0.1/8081-8081:80-80"]);
    if dns_option {
        argv.extend(["--dns", "none"]);
    }
    argv.extend(["--dns-forward", "169.254.0.1"]);
    argv.extend(["-u", "none", "-T", "none", "-U", "none", "--no-map-gw"]);
    argv.extend(["--quiet", "--netns"]);
    let mut argv: Vec<String> = argv.into_iter().map(String::from).collect();
    argv.push(netns.display().to_string());
    argv
}

#[test]
fn podman_5_0_to_5_2_argv_gives_the_hosts_address_dns_and_ports() {
    let dir = TempDir::new("pasta-cli-podman");
    for (name, pasta) in implementations(&dir) {
        for dns_option in [false, true] {
            eprintln!("== {name} --dns none: {dns_option}");
            podman_session(&dir, &pasta, name, dns_option);
        }
    }
}

fn podman_session(dir: &TempDir, pasta: &Path, tag: &str, dns_option: bool) {
    let net = host_net();
    let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
    let caller = Caller::new(&net, dir, &format!("{tag}-{dns_option}"));
    let netns = NetnsFile::new(&caller, "netns-c1");
    start_pasta_ok(&caller, pasta, &podman_5_0_argv(&netns.path, dns_option));

    // The host's address and default route, MTU 65520.
    let addrs = netns.ip_json(&["-4", "addr", "show", &net.host_veth]);
    assert_eq!(addrs[0]["mtu"], 65520, "{tag}: {addrs}");
    assert_eq!(addrs[0]["addr_info"][0]["local"], HOST_ADDR, "{tag}");
    let routes = netns.ok(&["ip", "-4", "route"]);
    assert!(
        routes.contains(&format!("default via {REMOTE_ADDR}")),
        "{tag}: {routes}"
    );

    // DNS through 169.254.0.1, where podman 5.0-5.2 points the container.
    let answer = netns.ok(&[
        "dig",
        "+short",
        "+tries=2",
        "+time=2",
        "@169.254.0.1",
        "probe.netferry.test",
    ]);
    // dig prints a timed-out first try before the answer of a second.
    assert_eq!(answer.lines().last(), Some("192.0.2.77"), "{tag}: {answer}");

    // Published ports: a remote client's address is seen inside; 8081
    // is on the host's loopback only.
    let _service = netns.client_address_service();
    let ask = stdout_of;
    let remote = |port: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &net.remote, "ncat", "--recv-only"])
            .args(["-w", "2", HOST_ADDR, port]);
        c
    };
    assert!(
        wait_until(Duration::from_secs(5), || ask(&mut remote("8080"))
            == format!("client {REMOTE_ADDR}")),
        "{tag}: 8080 from a remote client"
    );
    assert!(
        ask(&mut net.host_cmd(&["ncat", "--recv-only", "-w", "2", "127.0.0.1", "8081"]))
            .starts_with("client "),
        "{tag}: 127.0.0.1:8081 from the host"
    );
    assert_eq!(ask(&mut remote("8081")), "", "{tag}: 8081 is loopback only");

    netns.remove();
    assert!(
        none_serving(&net, &netns.path),
        "{tag}: the daemon outlived its namespace"
    );
}

/// A failure in the daemon's setup (here: no such namespace file) reaches
/// the caller once, with exit status 1: podman shows pasta's stderr
/// whole in "pasta failed with exit code 1: ...".
#[test]
fn a_setup_failure_is_reported_once() {
    let dir = TempDir::new("pasta-cli-fail");
    for (name, pasta) in implementations(&dir) {
        let o = Command::new(&pasta)
            .args(["--config-net", "--quiet", "--netns", "/nonexistent/netns"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{name}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "{name}: no message");
        for (i, line) in lines.iter().enumerate() {
            assert!(
                !lines[i + 1..].contains(line),
                "{name}: {line:?} printed twice:\n{err}"
            );
        }
    }
}
