//! IPv6 in pasta mode: netferry as `pasta`, with the command lines its
//! callers pass, in a host namespace the test makes with IPv6 on it
//! (2001:db8:2::1/64, a documentation prefix, with a default route
//! through the "remote" namespace at 2001:db8:2::2, beside tests/pasta.rs's
//! IPv4 network): the host's IPv6 address and default route copied into
//! the container and usable at once, connections out from the host's
//! address, `-t` ports published to IPv6 clients with their address kept,
//! the host's services through the gateway and `--map-guest-addr`, DNS
//! forwarded from an IPv6 address; `-4`, `-6`, `-a` and `-g`; a host
//! whose gateway is link-local; and, with no IPv6 on the host, pasta's
//! local mode (a default route through fe80::1).
//!
//! Each case runs with netferry as `pasta` and with the real pasta
//! (Debian forky's), which shows the test checks what pasta's callers get.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pasta::{
    Caller, NetnsFile, each_implementation, host_net, no_ports_argv, podman_argv, serving,
    start_pasta, start_pasta_ok, stdout_of,
};
use common::{HOST_ADDR, KillOnDrop, TempDir, TestNet, dns_server, run_ok, wait_until};

const HOST6: &str = "2001:db8:2::1";
const REMOTE6: &str = "2001:db8:2::2";
/// An address of the host's prefix that nothing holds: the test's
/// `--map-guest-addr`.
const MAPPED6: &str = "2001:db8:2::77";
/// The test's `--dns-forward` for IPv6.
const DNS6: &str = "2001:db8:2::53";

/// tests/pasta.rs's host network, plus IPv6: the host's address and a
/// default route through the remote namespace's global address.
fn host_net6() -> TestNet {
    let net = host_net6_addrs();
    run_ok(
        "ip",
        &[
            "-n", &net.host, "-6", "route", "add", "default", "via", REMOTE6,
        ],
    );
    net
}

/// The remote namespace's link-local address, as a router's often is
/// the only one its hosts know it by.
const REMOTE_LL: &str = "fe80::2";
/// An address of the remote namespace off the host's prefix, reached
/// through the default route.
const FAR6: &str = "2001:db8:3::2";

/// The host network with IPv6 addresses, and the host's default route
/// through the remote's link-local address, which also holds [`FAR6`].
fn host_net6_ll() -> TestNet {
    let net = host_net6_addrs();
    let remote_veth = net.remote_veth();
    let far = format!("{FAR6}/128");
    let ll = format!("{REMOTE_LL}/64");
    for args in [
        vec![
            "-n",
            &net.remote,
            "addr",
            "add",
            &ll,
            "dev",
            &remote_veth,
            "nodad",
        ],
        vec!["-n", &net.remote, "addr", "add", &far, "dev", "lo"],
        vec![
            "-n",
            &net.host,
            "-6",
            "route",
            "add",
            "default",
            "via",
            REMOTE_LL,
            "dev",
            &net.host_veth,
        ],
    ] {
        run_ok("ip", &args);
    }
    net
}

/// The host and remote namespaces' IPv6 addresses on the veth pair.
fn host_net6_addrs() -> TestNet {
    let net = host_net();
    net.add_ipv6(HOST6, REMOTE6);
    net
}

/// The `-t` option podman gives pasta for `podman run -p 8080:80`.
const PORTS: [&str; 2] = ["-t", "8080-8080:80-80"];

/// The container's global IPv6 addresses on `dev`, with their prefix
/// length and whether they are still tentative.
fn global6(netns: &NetnsFile, dev: &str) -> Vec<(String, u64, bool)> {
    let v = netns.ip_json(&["-6", "addr", "show", "dev", dev, "scope", "global"]);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["local"].is_string())
        .map(|a| {
            (
                a["local"].as_str().unwrap_or_default().to_string(),
                a["prefixlen"].as_u64().unwrap_or_default(),
                a["tentative"].as_bool() == Some(true),
            )
        })
        .collect()
}

/// An ncat server in the host namespace telling each client `what`.
fn host_server(net: &TestNet, addr: &str, port: &str, what: &str) -> KillOnDrop {
    let server = KillOnDrop(
        net.host_cmd(&[
            "ncat",
            "-l",
            "-k",
            addr,
            port,
            "--sh-exec",
            &format!("echo {what}"),
        ])
        .spawn()
        .unwrap(),
    );
    let target = format!("{addr} {port}");
    assert!(
        wait_until(Duration::from_secs(5), || net
            .host_cmd(&["ncat", "-z", addr, port])
            .status()
            .is_ok_and(|s| s.success())),
        "server on {target}"
    );
    server
}

/// What the TCP server at `addr` `port` said to a client in the
/// container, asked once (no retry: what is configured works at once).
fn ncat_from(netns: &NetnsFile, addr: &str, port: &str) -> String {
    stdout_of(&mut netns.cmd(&["ncat", "--recv-only", "-w", "3", addr, port]))
}

/// A server on the remote namespace's `addr` port 9000, telling each
/// client the address it came from (`peer ADDR`), once it listens.
fn peer_server(net: &TestNet, addr: &str) -> KillOnDrop {
    let server = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &net.remote])
            .args(["ncat", "-6", "-l", "-k", addr, "9000"])
            .args(["--sh-exec", "echo peer $NCAT_REMOTE_ADDR"])
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        net.host_cmd(&["ncat", "-z", addr, "9000"])
            .status()
            .is_ok_and(|s| s.success())
    }));
    server
}

/// A client in the remote namespace: what the server at `addr` `port`
/// said to it (`-s`, with `source`).
fn remote_client(net: &TestNet, source: Option<&str>, addr: &str, port: &str) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.remote, "ncat"]);
    if let Some(source) = source {
        cmd.args(["-s", source]);
    }
    stdout_of(cmd.args(["--recv-only", "-w", "2", addr, port]))
}

#[test]
fn podmans_argv_gives_the_container_the_hosts_ipv6_address_route_and_ports() {
    each_implementation("pasta6", podman_session);
}

fn podman_session(dir: &TempDir, pasta: &Path, tag: &str) {
    let net = host_net6();
    // A server on the remote namespace's IPv6 address, telling each
    // client the address it came from.
    let _remote_server = peer_server(&net, REMOTE6);
    let caller = Caller::new(&net, dir, tag);
    let netns = NetnsFile::new(&caller, "netns-c1");
    start_pasta_ok(&caller, pasta, &podman_argv(&netns.path, &PORTS));
    assert!(!serving(&net, &netns.path).is_empty());

    // At once, with no waiting: an outbound connection from the host's
    // address (a tentative address would have none to give it).
    assert_eq!(
        ncat_from(&netns, REMOTE6, "9000"),
        format!("peer {HOST6}"),
        "a connection to the remote's IPv6 address, at once"
    );

    // The host's global address, not tentative, and its default route.
    assert_eq!(
        global6(&netns, &net.host_veth),
        vec![(HOST6.to_string(), 64, false)]
    );
    let routes = netns.ok(&["ip", "-6", "route"]);
    assert!(
        routes.contains(&format!("default via {REMOTE6} dev {}", net.host_veth)),
        "{routes}"
    );
    assert!(
        !routes.contains("fe80::1 "),
        "no local-mode route: {routes}"
    );

    // -t 8080: published to IPv6 clients, who keep their address.
    let _service = netns.client_address_service();
    let remote6 = || remote_client(&net, None, HOST6, "8080");
    assert!(
        wait_until(Duration::from_secs(5), || remote6()
            == format!("client {REMOTE6}")),
        "8080 from [{REMOTE6}]: {}",
        remote6()
    );
    // IPv4 clients are still served.
    let remote4 = remote_client(&net, None, HOST_ADDR, "8080");
    assert!(remote4.starts_with("client 198.51.100."), "{remote4}");
}

#[test]
fn the_gateway_map_guest_addr_and_dns_forward_reach_the_host_over_ipv6() {
    each_implementation("pasta6-maps", maps_session);
}

fn maps_session(dir: &TempDir, pasta: &Path, tag: &str) {
    let net = host_net6();
    // pasta forwards an IPv6 --dns-forward address to an IPv6 resolver
    // only (--dns-host, or the host's first IPv6 nameserver); netferry to
    // the host's first nameserver of either family. A host resolver on
    // ::1 serves both.
    std::fs::write(
        format!("/etc/netns/{}/resolv.conf", net.host),
        "nameserver ::1\n",
    )
    .unwrap();
    let _dns = dns_server(&net, "::1", &["192.0.2.77", "2001:db8:2::99"]);
    let _loopback = host_server(&net, "::1", "9001", "host-loopback");
    let _own = host_server(&net, HOST6, "9002", "host-own");
    let caller = Caller::new(&net, dir, tag);
    let netns = NetnsFile::new(&caller, "netns-m");
    let extra = [
        "--dns-forward",
        DNS6,
        "--map-guest-addr",
        MAPPED6,
        "--quiet",
    ];
    start_pasta_ok(&caller, pasta, &no_ports_argv(&netns.path, &extra));

    // Without --no-map-gw the gateway's address leads to the host's ::1.
    assert_eq!(ncat_from(&netns, REMOTE6, "9001"), "host-loopback");
    // --map-guest-addr leads to the host's own address.
    assert_eq!(ncat_from(&netns, MAPPED6, "9002"), "host-own");
    // --dns-forward: the host's resolver answers.
    let answer = netns.ok(&[
        "dig",
        "+short",
        "+tries=1",
        "+time=2",
        "AAAA",
        &format!("@{DNS6}"),
        "probe.netferry.test",
    ]);
    assert_eq!(answer.trim(), "2001:db8:2::99");
}

#[test]
fn ipv4_only_ipv6_only_and_ipv6_values_of_a_and_g() {
    each_implementation("pasta6-families", families_session);
}

/// Start pasta on `netns` with no ports, quiet, and `extra`.
fn start(caller: &Caller, pasta: &Path, netns: &NetnsFile, extra: &[&str]) {
    let quiet_extra: Vec<&str> = ["--quiet"].iter().chain(extra).copied().collect();
    start_pasta_ok(caller, pasta, &no_ports_argv(&netns.path, &quiet_extra));
}

fn families_session(dir: &TempDir, pasta: &Path, tag: &str) {
    let net = host_net6();
    let dev = net.host_veth.clone();
    let caller = Caller::new(&net, dir, tag);

    // -4: no IPv6 address nor route in the container.
    let only4 = NetnsFile::new(&caller, "netns-4");
    start(&caller, pasta, &only4, &["--ipv4-only"]);
    assert_eq!(global6(&only4, &dev), vec![]);
    assert_eq!(only4.ok(&["ip", "-6", "route", "show", "default"]), "");
    assert!(only4.ok(&["ip", "-4", "addr"]).contains(HOST_ADDR));

    // -6: no IPv4 address in the container, IPv6 as the host's.
    let only6 = NetnsFile::new(&caller, "netns-6");
    start(&caller, pasta, &only6, &["-6"]);
    assert_eq!(global6(&only6, &dev), vec![(HOST6.to_string(), 64, false)]);
    assert!(!only6.ok(&["ip", "-4", "addr"]).contains(HOST_ADDR));

    // -a and -g with IPv6 values: that address (as /64, as pasta sets
    // it) and a default route through that gateway only.
    let given = NetnsFile::new(&caller, "netns-a");
    start(
        &caller,
        pasta,
        &given,
        &["-a", "2001:db8:2::42", "-g", REMOTE6],
    );
    assert_eq!(
        global6(&given, &dev),
        vec![("2001:db8:2::42".to_string(), 64, false)]
    );
    let routes = given.ok(&["ip", "-6", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("default via {REMOTE6}")),
        "{routes}"
    );
    // The IPv4 side is still the host's.
    assert!(given.ok(&["ip", "-4", "addr"]).contains(HOST_ADDR));

    // A -g the kernel refuses (off the link of -a's /64) fails setup with
    // pasta's words, rather than leaving the container with no route.
    let off = NetnsFile::new(&caller, "netns-off");
    let extra = ["--quiet", "-a", "2001:db8:5::42", "-g", REMOTE6];
    let out = start_pasta(&caller, pasta, &no_ports_argv(&off.path, &extra));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Couldn't set IPv6 route(s) in guest: No route to host"),
        "{err}"
    );
}

#[test]
fn outbound_ipv6_connections_leave_from_the_address_of_o() {
    each_implementation("pasta6-o", outbound_session);
}

fn outbound_session(dir: &TempDir, pasta: &Path, tag: &str) {
    const SECOND6: &str = "2001:db8:2::5";
    let net = host_net6();
    run_ok(
        "ip",
        &[
            "-n",
            &net.host,
            "addr",
            "add",
            &format!("{SECOND6}/64"),
            "dev",
            &net.host_veth,
            "nodad",
            // Deprecated, so the kernel would never choose it itself.
            "preferred_lft",
            "0",
        ],
    );
    let _remote_server = peer_server(&net, REMOTE6);
    let caller = Caller::new(&net, dir, tag);
    let netns = NetnsFile::new(&caller, "netns-o");
    start(&caller, pasta, &netns, &["--no-map-gw", "-o", SECOND6]);
    assert_eq!(
        ncat_from(&netns, REMOTE6, "9000"),
        format!("peer {SECOND6}")
    );
}

#[test]
fn a_host_without_ipv6_gives_pastas_local_mode() {
    each_implementation("pasta6-local", local_session);
}

fn local_session(dir: &TempDir, pasta: &Path, tag: &str) {
    let net = host_net();
    let _loopback = host_server(&net, "::1", "9001", "host-loopback");
    let caller = Caller::new(&net, dir, tag);
    let netns = NetnsFile::new(&caller, "netns-l");
    start(&caller, pasta, &netns, &[]);
    let dev = net.host_veth.clone();
    // No global address; a default route through fe80::1.
    assert_eq!(global6(&netns, &dev), vec![]);
    let routes = netns.ok(&["ip", "-6", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("default via fe80::1 dev {dev}")),
        "{routes}"
    );
    // fe80::1, the gateway, leads to the host's ::1.
    assert!(
        wait_until(Duration::from_secs(5), || ncat_from(
            &netns,
            &format!("fe80::1%{dev}"),
            "9001"
        ) == "host-loopback"),
        "fe80::1 to the host's ::1"
    );
}

#[test]
fn a_host_whose_ipv6_gateway_is_link_local() {
    each_implementation("pasta6-ll", link_local_gateway_session);
}

fn link_local_gateway_session(dir: &TempDir, pasta: &Path, tag: &str) {
    let net = host_net6_ll();
    let dev = net.host_veth.clone();
    let _far_server = peer_server(&net, FAR6);
    let caller = Caller::new(&net, dir, tag);
    let netns = NetnsFile::new(&caller, "netns-ll");
    start_pasta_ok(&caller, pasta, &podman_argv(&netns.path, &PORTS));

    // The host's route, through the link-local gateway.
    let routes = netns.ok(&["ip", "-6", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("default via {REMOTE_LL} dev {dev}")),
        "{routes}"
    );
    assert_eq!(ncat_from(&netns, FAR6, "9000"), format!("peer {HOST6}"));

    // A published port reaches the container from a client off the
    // host's prefix, which keeps its address.
    let _service = netns.client_address_service();
    let far_client = || remote_client(&net, Some(FAR6), HOST6, "8080");
    assert!(
        wait_until(Duration::from_secs(5), || far_client()
            == format!("client {FAR6}")),
        "8080 from [{FAR6}]: {}",
        far_client()
    );
}
