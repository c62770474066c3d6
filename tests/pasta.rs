//! netferry as `pasta`, run with the command lines its callers pass, in a
//! host namespace the test makes (198.51.100.1/24 with a default route
//! through the "remote" namespace at 198.51.100.2, dnsmasq on its
//! loopback as the resolver): the host's address copied into the
//! container, DNS through the forward address, the host through
//! `--map-guest-addr`, published ports with the client's address kept,
//! and the end when the namespace file goes.
//!
//! Each end-to-end case runs twice: with netferry as `pasta`, and with
//! the real pasta (Debian forky's, from the tree `.ci/forky-rootfs.sh`
//! builds, run with that tree's own libraries), which shows the test
//! checks what pasta's callers get.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pasta::{
    Caller, NetnsFile, each_implementation, host_net, none_serving, pasta_link, podman_argv,
    serving, start_pasta, start_pasta_ok, stdout_of,
};
use common::{HOST_ADDR, KillOnDrop, REMOTE_ADDR, TempDir, dns_server, wait_until};

/// The `-t` options podman gives pasta for `podman run -p 8080:80 -p
/// 127.0.0.1:8081:80`.
const PORTS: [&str; 4] = ["-t", "8080-8080:80-80", "-t", "127.0.0.1/8081-8081:80-80"];

#[test]
fn podmans_argv_gives_the_container_the_hosts_address_dns_the_host_and_ports() {
    each_implementation("pasta", podman_session);
}

fn podman_session(dir: &TempDir, pasta: &Path, tag: &str) {
    let net = host_net();
    let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
    let caller = Caller::new(&net, dir, tag);
    let netns = NetnsFile::new(&caller, "netns-c1");
    start_pasta_ok(&caller, pasta, &podman_argv(&netns.path, &PORTS));
    assert!(
        !serving(&net, &netns.path).is_empty(),
        "a daemon serves the namespace"
    );

    // The host's address, prefix, routes and an MTU of 65520, on an
    // interface named after the host's.
    let addrs = netns.ip_json(&["-4", "addr", "show"]);
    let tap = addrs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == net.host_veth.as_str())
        .unwrap_or_else(|| panic!("no {} in the container: {addrs}", net.host_veth));
    assert_eq!(tap["mtu"], 65520);
    assert_eq!(tap["addr_info"][0]["local"], HOST_ADDR);
    assert_eq!(tap["addr_info"][0]["prefixlen"], 24);
    let routes = netns.ok(&["ip", "-4", "route"]);
    assert!(
        routes.contains(&format!("default via {REMOTE_ADDR}")),
        "{routes}"
    );
    assert!(
        netns
            .ok(&["ip", "-br", "link", "show", "lo"])
            .contains("UNKNOWN")
    );

    // DNS through the forward address, answered by the host's resolver.
    let answer = netns.ok(&[
        "dig",
        "+short",
        "+tries=1",
        "+time=2",
        "@169.254.1.1",
        "probe.netferry.test",
    ]);
    assert_eq!(answer.trim(), "192.0.2.77");

    // host.containers.internal (169.254.1.2) reaches a server on the
    // host's own address.
    let _host_server = KillOnDrop(
        net.host_cmd(&["ncat", "-l", "-k", "9000", "--sh-exec", "echo host here"])
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        netns
            .cmd(&["ncat", "--recv-only", "-w", "2", "169.254.1.2", "9000"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("host here"))
    }));

    // Published ports: the service inside sees a remote client's own
    // address; 8081 listens on the host's loopback only.
    let _service = netns.client_address_service();
    let ask = stdout_of;
    let remote = |port: &str| {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &net.remote,
            "ncat",
            "--recv-only",
            "-w",
            "2",
        ])
        .args([HOST_ADDR, port]);
        c
    };
    assert!(wait_until(Duration::from_secs(5), || ask(&mut remote(
        "8080"
    )) == format!(
        "client {REMOTE_ADDR}"
    )));
    // A host loopback client is spliced to the container's own address,
    // which the service then sees.
    assert_eq!(
        ask(&mut net.host_cmd(&["ncat", "--recv-only", "-w", "2", "127.0.0.1", "8081"])),
        format!("client {HOST_ADDR}"),
        "127.0.0.1:8081 from the host"
    );
    assert_eq!(
        ask(&mut remote("8081")),
        "",
        "8081 is the host's loopback only"
    );

    // podman rm: the namespace file goes, so does netferry, and the next
    // container gets the same ports at once.
    netns.remove();
    assert!(
        none_serving(&net, &netns.path),
        "the daemon outlived its namespace"
    );
    let again = NetnsFile::new(&caller, "netns-c2");
    let out = start_pasta(&caller, pasta, &podman_argv(&again.path, &PORTS));
    assert!(out.status.success(), "rerun on the same ports: {out:?}");
    again.remove();
    assert!(none_serving(&net, &again.path));
}

#[test]
fn the_rootless_network_argv_writes_the_daemons_pid() {
    each_implementation("pasta-pid", rootless_netns_session);
}

fn rootless_netns_session(dir: &TempDir, pasta: &Path, tag: &str) {
    let net = host_net();
    let caller = Caller::new(&net, dir, tag);
    let netns = NetnsFile::new(&caller, "rootless-netns");
    let pid_file = caller.dir.join("rootless-netns-conn.pid");
    let mut argv = vec![
        "--config-net".to_string(),
        "--pid".into(),
        pid_file.display().to_string(),
    ];
    argv.extend(podman_argv(&netns.path, &PORTS).into_iter().skip(5));
    start_pasta_ok(&caller, pasta, &argv);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    // netferry's splice connector is in the host namespace for a moment
    // after it is forked, until it joins the container's.
    wait_until(Duration::from_secs(2), || {
        serving(&net, &netns.path) == vec![pid.trim().to_string()]
    });
    assert_eq!(
        serving(&net, &netns.path),
        vec![pid.trim().to_string()],
        "the pid file names the daemon: {:?}",
        serving(&net, &netns.path)
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .take(8)
                .collect::<Vec<_>>()
                .join(" | "))
            .collect::<Vec<_>>()
    );
    // Isolated, as pasta always is: under a seccomp filter, with
    // no_new_privs, in a mount namespace of its own.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/mnt", pid.trim())).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/mnt", caller.holder.0.id())).unwrap(),
        "a mount namespace of its own"
    );
    // podman ends it with SIGTERM.
    let started = Instant::now();
    Command::new("kill").arg(pid.trim()).status().unwrap();
    assert!(none_serving(&net, &netns.path));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn callers_probes_and_refusals_answer_as_pasta_does() {
    let dir = TempDir::new("pasta-cli");
    let pasta = pasta_link(&dir);
    let run = |args: &[&str]| Command::new(&pasta).args(args).output().unwrap();
    // rootlesskit's probes.
    for probe in [&["--version"][..], &["--host-lo-to-ns-lo", "--version"]] {
        let o = run(probe);
        assert!(o.status.success(), "{probe:?}");
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("pasta "));
    }
    // podman retries without --map-guest-addr on this text (older pasta).
    let o = run(&["--map-guest-addr-x", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "{}: unrecognized option '--map-guest-addr-x'",
            pasta.display()
        )),
        "{err}"
    );
    // `netferry pasta` is the same front end.
    let o = Command::new(common::netferry_bin())
        .args(["pasta", "--version"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("pasta "));
    // A target that does not exist: exit 1 with a message naming it.
    let o = run(&["--config-net", "--netns", "/nonexistent/netns-x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/netns-x"),
        "{o:?}"
    );
}
