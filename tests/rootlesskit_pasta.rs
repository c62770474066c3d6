//! rootlesskit 2.0.2 (Debian trixie's, the one Docker rootless runs on
//! Debian 13) with `--net=pasta`, finding netferry as `pasta` first in
//! `PATH`, as the unprivileged user `nfrootless` inside the test's host
//! namespace. rootlesskit 2.0 to 2.2 makes the tap itself, starts pasta in
//! the foreground in the background (`--foreground --stderr ... --no-dhcp
//! --no-ra`, no `--config-net`: rootlesskit's child configures the tap)
//! and SIGKILLs it when it stops (`pkg/network/pasta/pasta.go` at v2.0.2).
//! The guest reaches the host's loopback through the gateway, a remote
//! server, and the host's resolver through rootlesskit's DNS address; with
//! `--port-driver=implicit` pasta publishes the ports the child listens
//! on (`--tcp-ports=auto`). Each test compares the whole command line
//! rootlesskit gave pasta with what that source builds.
//!
//! Each case runs with netferry as `pasta` and with the real pasta
//! (Debian forky's) in its place, which shows the test checks what
//! rootlesskit's users get.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pasta::{host_net, real_pasta};
use common::podman::host_web;
use common::rootless::{Enter, Probe};
use common::{
    HOST_ADDR, KillOnDrop, REMOTE_ADDR, Rootlesskit, TempDir, TestNet, dns_server, wait_until,
};

/// What rootlesskit 2.0.2 passes before the port and target options.
const ARGV_2_0: &str = "--foreground --stderr --ns-ifname=tap0 --mtu=65520 --no-dhcp --no-ra \
                        --address=10.0.2.100 --netmask=24 --gateway=10.0.2.2 \
                        --dns-forward=10.0.2.3 --ipv4-only";

/// The port a remote server listens on, in the remote namespace.
const REMOTE_PORT: &str = "9000";

/// `session(rootlesskit, pasta, name)` where rootlesskit 2 is there: with
/// netferry (`pasta` None: found as `pasta`), then with the real pasta
/// where its tree exists.
fn each(tag: &str, session: impl Fn(&'static str, Option<&Path>, &str)) {
    let Some(bin) = common::rootlesskit2() else {
        return;
    };
    let dir = TempDir::new(tag);
    let mut all = vec![("netferry", None)];
    if let Some(real) = real_pasta(&dir) {
        all.push(("pasta", Some(real)));
    }
    for (name, pasta) in all {
        eprintln!("== {name}");
        session(bin, pasta.as_deref(), name);
    }
}

/// Wait (at most 10 s) until pasta has the tap: rootlesskit does not wait
/// for it, so the guest's first packets could find the tap without carrier.
const WAIT_FOR_CARRIER: &str =
    "for i in $(seq 100); do ip link show tap0 | grep -q LOWER_UP && break; sleep 0.1; done;";

#[test]
fn port_driver_none_reaches_the_host_a_remote_server_and_dns() {
    each("rk-pasta", |bin, pasta, name| {
        let net = host_net();
        let web = TempDir::new("rk-web");
        let _host = host_web(&net, &web.0);
        let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
        let _remote = remote_server(&net);
        let probe = Probe::new(Enter::Child).with_dns();
        let before = format!(
            "{WAIT_FOR_CARRIER} ncat --recv-only -w 5 {REMOTE_ADDR} {REMOTE_PORT} > {} 2>&1;",
            probe.path("remote").display()
        );
        let flags = &["--debug", "--port-driver=none"];
        let (rk, context) = start_probed(bin, pasta, &net, flags, &probe, &before, name);
        assert_eq!(probe.read("remote"), "remote here\n", "{context}");
        assert_eq!(probe.mtu(), Some(65520), "{context}");
        assert_eq!(
            rk.normalized_argv(),
            format!("{ARGV_2_0} --tcp-ports=none --udp-ports=none $PID"),
            "{name}"
        );
        // rootlesskit SIGKILLs pasta when it stops; until then, it serves
        // (past a few rounds of its once-a-second look at the namespace,
        // which must work from inside its sandbox).
        if pasta.is_none() {
            std::thread::sleep(Duration::from_millis(2500));
            let helper = rk.helper_pid().expect("no netferry running");
            drop(rk);
            let gone = wait_until(Duration::from_secs(10), || {
                std::fs::read_to_string(format!("/proc/{helper}/stat"))
                    .map_or(true, |s| s.contains(") Z "))
            });
            assert!(gone, "netferry {helper} outlived rootlesskit");
        }
    });
}

/// `--detach-netns`: pasta is given the child's user namespace and the
/// namespace rootlesskit binds in the child's mount namespace, reached
/// through `/proc/PID/root`; the child's commands enter it.
#[test]
fn detach_netns_reaches_the_host_and_dns() {
    each("rk-pasta-detach", |bin, pasta, name| {
        let net = TestNet::new();
        let web = TempDir::new("rk-web");
        let _host = host_web(&net, &web.0);
        let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
        let probe = Probe::new(Enter::Detached).with_dns();
        let enter = "nsenter --net=$ROOTLESSKIT_STATE_DIR/netns --";
        let before = WAIT_FOR_CARRIER.replace("ip link", &format!("{enter} ip link"));
        let flags = &["--debug", "--detach-netns", "--port-driver=none"];
        let (rk, context) = start_probed(bin, pasta, &net, flags, &probe, &before, name);
        assert_eq!(probe.mtu(), Some(65520), "{context}");
        assert_eq!(
            rk.normalized_argv(),
            format!(
                "{ARGV_2_0} --tcp-ports=none --udp-ports=none \
                 --userns=/proc/$PID/ns/user --netns=/proc/$PID/root$STATE/netns"
            ),
            "{name}"
        );
        if pasta.is_none() {
            std::thread::sleep(Duration::from_millis(2500));
            assert!(rk.helper_pid().is_some(), "netferry left early: {context}");
        }
    });
}

/// `--port-driver=implicit`: pasta publishes the child's listening ports
/// on the host by itself (`--tcp-ports=auto`), to host-local and remote
/// clients alike.
#[test]
fn port_driver_implicit_publishes_the_childs_ports() {
    each("rk-pasta-auto", |bin, pasta, name| {
        let net = host_net();
        // The child's server is on port 80, which pasta, as nfrootless,
        // may bind in the test's host namespace only with this.
        net.host_ok(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_unprivileged_port_start=0",
        ]);
        let rk = Rootlesskit::start_pasta(
            bin,
            pasta,
            &net,
            &["--debug", "--port-driver=implicit"],
            "implicit page\n",
            "",
        );
        let context = format!("{name}\n{}", rk.log());
        assert!(
            rk.serves(&net, "http://127.0.0.1:80/index.html", "implicit page\n"),
            "no page on the host's loopback: {context}"
        );
        let from_remote = Command::new("ip")
            .args(["netns", "exec", &net.remote, "curl", "-s", "-m", "5"])
            .arg(format!("http://{HOST_ADDR}:80/index.html"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&from_remote.stdout),
            "implicit page\n",
            "no page for a remote client: {context}"
        );
        assert_eq!(
            rk.normalized_argv(),
            format!("{ARGV_2_0} --tcp-ports=auto --udp-ports=auto $PID"),
            "{name}"
        );
    });
}

/// rootlesskit with `flags`, its child running `probe` after `before`,
/// and what every case checks of that: the probe finished, fetched the
/// host's loopback page through the gateway and resolved through
/// rootlesskit's DNS address. Also the context for failure messages.
fn start_probed(
    bin: &str,
    pasta: Option<&Path>,
    net: &TestNet,
    flags: &[&str],
    probe: &Probe,
    before: &str,
    name: &str,
) -> (Rootlesskit, String) {
    let rk = Rootlesskit::start_pasta(
        bin,
        pasta,
        net,
        flags,
        "page\n",
        &probe.script(before, false),
    );
    let context = format!("{name}\n{}", rk.log());
    assert!(probe.finished(), "the probe never finished: {context}");
    probe.assert_host_loopback(true, &context);
    probe.assert_dns("10.0.2.3", "192.0.2.77");
    (rk, context)
}

/// A server in the remote namespace that says who it is.
fn remote_server(net: &TestNet) -> KillOnDrop {
    let child = Command::new("ip")
        .args(["netns", "exec", &net.remote, "ncat", "-l", "-k"])
        .args([REMOTE_PORT, "--sh-exec", "echo remote here"])
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(5), || {
        Command::new("ip")
            .args(["netns", "exec", &net.remote, "ss", "-Htln"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(":9000"))
    });
    assert!(up, "the remote server did not come up");
    KillOnDrop(child)
}
