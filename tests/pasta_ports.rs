//! pasta's port forwarding as its callers use it, end to end: `-T`/`-U`
//! (a client on the container's loopback reaches a service on the host's
//! loopback: podman's `--network pasta:-T,5432`), `-t auto` (rootlesskit's
//! `--tcp-ports=auto`: a server started in the container after pasta is
//! published on the host, and stops being so when it closes), `-t all`
//! with exclusions, and plain refusals for what netferry does not do.
//!
//! Each end-to-end case runs with netferry as `pasta` and with the real
//! pasta (see tests/common/pasta.rs), in the test's host namespace, as a
//! rootless caller.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::pasta::{
    Caller, NetnsFile, each_implementation, host_net, implementations, pasta_link, start_pasta,
    start_pasta_ok, stdout_of,
};
use common::{KillOnDrop, TempDir, TestNet, dns_server, echo_until_eof, wait_until};

/// The argv podman builds for `--network pasta:-T,...`, with `extra` in
/// the place of the user's options.
fn argv(netns: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--config-net", "--no-map-gw", "--quiet"]
        .map(String::from)
        .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--netns".to_string(), netns.display().to_string()]);
    args
}

/// What a client on the host's loopback got from `port` (at once).
fn from_host_loopback(net: &TestNet, port: &str) -> String {
    stdout_of(
        net.host_cmd(&["timeout", "5", "ncat", "--recv-only", "-w", "2"])
            .args(["127.0.0.1", port]),
    )
}

/// `session` run by [`with_netns`] with each implementation.
fn each_with_netns(tag: &str, netns: &str, session: impl Fn(&TestNet, &Caller, &NetnsFile, &Path)) {
    each_implementation(tag, |dir, pasta, name| {
        with_netns(dir, name, netns, |net, caller, netns| {
            session(net, caller, netns, pasta)
        })
    });
}

/// `session` given the test's host network, a rootless caller in it
/// (tagged `name`) and the caller's namespace file `netns`.
fn with_netns(
    dir: &TempDir,
    name: &str,
    netns: &str,
    session: impl FnOnce(&TestNet, &Caller, &NetnsFile),
) {
    let net = host_net();
    let caller = Caller::new(&net, dir, name);
    let netns = NetnsFile::new(&caller, netns);
    session(&net, &caller, &netns);
}

#[test]
fn ns_ports_reach_services_on_the_hosts_loopback() {
    each_with_netns("pasta-ns-ports", "netns-ns-ports", ns_ports_session);
}

fn ns_ports_session(net: &TestNet, caller: &Caller, netns: &NetnsFile, pasta: &Path) {
    // Services on the host's loopback only: TCP on 127.0.0.1 and ::1,
    // DNS (UDP) on 127.0.0.1 port 53.
    let _dns = dns_server(net, "127.0.0.1", &["192.0.2.53"]);
    let echo = net.in_host(|| TcpListener::bind("127.0.0.1:5432").unwrap());
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            std::thread::spawn(move || echo_until_eof(conn));
        }
    });
    let _hello6 = KillOnDrop(
        net.host_cmd(&[
            "ncat",
            "-l",
            "-k",
            "::1",
            "5433",
            "--sh-exec",
            "echo hello on ::1",
        ])
        .spawn()
        .unwrap(),
    );
    let log = caller.dir.join("pasta.log");
    let log = log.display().to_string();
    let debug: &[&str] = match std::env::var("NETFERRY_TEST_DEBUG") {
        Ok(_) => &["-d", "-l", &log],
        Err(_) => &[],
    };
    let mut extra = vec![
        "-t", "none", "-u", "none", "-T", "5432", "-T", "5433", "-U", "5353:53",
    ];
    extra.extend(debug);
    start_pasta_ok(caller, pasta, &argv(&netns.path, &extra));

    // A megabyte through 127.0.0.1:5432 and back (an echo server), with
    // the client's half-close passed on so the server ends the reply.
    let echoed = || {
        stdout_of(&mut netns.cmd(&[
            "sh",
            "-c",
            "head -c 1000000 /dev/zero | timeout 10 ncat -w 3 127.0.0.1 5432 | wc -c",
        ]))
    };
    assert!(
        wait_until(Duration::from_secs(5), || echoed() == "1000000"),
        "127.0.0.1:5432 echoed {}",
        echoed()
    );
    // ::1 in the container leads to ::1 on the host.
    let client = |wait: &str, addr: &str, port: &str| {
        let ncat = ["timeout", "10", "ncat", "--recv-only", "-w", wait];
        stdout_of(netns.cmd(&ncat).args([addr, port]))
    };
    assert_eq!(client("3", "::1", "5433"), "hello on ::1");
    // UDP: the container's 127.0.0.1:5353 is the host's resolver on 53.
    let answer = stdout_of(&mut netns.cmd(&[
        "dig",
        "+short",
        "+tries=2",
        "+time=2",
        "-p",
        "5353",
        "@127.0.0.1",
        "probe.netferry.test",
    ]));
    assert_eq!(answer, "192.0.2.53");
    // A port not given leads nowhere.
    assert_eq!(client("2", "127.0.0.1", "5434"), "");
}

/// Whether something in the test's host namespace listens on TCP `port`.
fn host_listens(net: &TestNet, port: u16) -> bool {
    let filter = format!("sport = :{port}");
    !stdout_of(&mut net.host_cmd(&["ss", "-Hltn", &filter])).is_empty()
}

/// Whether a UDP socket in the test's host namespace is bound to `port`.
fn host_binds_udp(net: &TestNet, port: u16) -> bool {
    let filter = format!("sport = :{port}");
    !stdout_of(&mut net.host_cmd(&["ss", "-Hlun", &filter])).is_empty()
}

#[test]
fn auto_follows_the_containers_listeners() {
    each_with_netns("pasta-auto", "netns-auto", auto_session);
}

fn auto_session(net: &TestNet, caller: &Caller, netns: &NetnsFile, pasta: &Path) {
    // rootlesskit's --tcp-ports=auto --udp-ports=auto.
    let ports = ["-t", "auto", "-u", "auto", "-T", "none", "-U", "none"];
    start_pasta_ok(caller, pasta, &argv(&netns.path, &ports));
    assert!(!host_listens(net, 8080), "nothing listens inside yet");

    // A server started inside after pasta: published within pasta's
    // one-second scan (and a margin).
    let server = KillOnDrop(
        netns
            .cmd(&["ncat", "-l", "-k", "8080", "--sh-exec", "echo auto here"])
            .spawn()
            .unwrap(),
    );
    let ask = || from_host_loopback(net, "8080");
    assert!(
        wait_until(Duration::from_secs(5), || ask() == "auto here"),
        "8080 was not published: {}",
        ask()
    );
    // UDP follows TCP's listening ports too (for iperf3 and the like),
    // and its own bound ports.
    assert!(wait_until(Duration::from_secs(5), || host_binds_udp(
        net, 8080
    )));
    let udp_server = KillOnDrop(
        netns
            .cmd(&["ncat", "-u", "-l", "-k", "5300", "--sh-exec", "cat"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(5), || host_binds_udp(net, 5300)),
        "UDP 5300 was not published"
    );
    // They close: so does the host's side.
    drop(server);
    drop(udp_server);
    assert!(
        wait_until(Duration::from_secs(5), || !host_listens(net, 8080)
            && !host_binds_udp(net, 8080)
            && !host_binds_udp(net, 5300)),
        "8080 or 5300 is still bound on the host"
    );
}

/// Whether something in the container listens on TCP (`-Hltn`) or has
/// UDP bound (`-Hlun`) on `port`.
fn ns_has(netns: &NetnsFile, ss: &str, port: u16) -> bool {
    let filter = format!("sport = :{port}");
    !stdout_of(&mut netns.cmd(&["ss", ss, &filter])).is_empty()
}

#[test]
fn ns_auto_follows_the_hosts_listeners() {
    each_with_netns("pasta-ns-auto", "netns-ns-auto", ns_auto_session);
}

fn ns_auto_session(net: &TestNet, caller: &Caller, netns: &NetnsFile, pasta: &Path) {
    // rootlesskit leaves -T/-U out: auto, pasta's default.
    start_pasta_ok(
        caller,
        pasta,
        &argv(&netns.path, &["-t", "none", "-u", "none"]),
    );
    let client = || {
        let ncat = ["timeout", "5", "ncat", "--recv-only", "-w", "2"];
        stdout_of(netns.cmd(&ncat).args(["127.0.0.1", "8090"]))
    };
    assert!(
        !ns_has(netns, "-Hltn", 8090),
        "nothing listens on the host yet"
    );

    // A server started on the host's loopback after pasta: bound inside
    // within pasta's one-second scan (and a margin), and reachable there.
    let server = KillOnDrop(
        net.host_cmd(&["ncat", "-l", "-k", "127.0.0.1", "8090"])
            .args(["--sh-exec", "echo host here"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(5), || client() == "host here"),
        "8090 on the host is not reachable inside: {:?}",
        client()
    );
    // UDP: a socket bound on the host's loopback is bound inside too, and
    // datagrams go through both ways (an echo).
    let udp_server = KillOnDrop(
        net.host_cmd(&["ncat", "-u", "-l", "-k", "127.0.0.1", "5301"])
            .args(["--sh-exec", "cat"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(5), || ns_has(netns, "-Hlun", 5301)),
        "UDP 5301 was not bound inside"
    );
    let udp_echo = || {
        stdout_of(&mut netns.cmd(&[
            "sh",
            "-c",
            "(echo udp here; sleep 1) | timeout 5 ncat -u 127.0.0.1 5301",
        ]))
    };
    assert!(
        wait_until(Duration::from_secs(10), || udp_echo() == "udp here"),
        "no UDP echo through 5301: {:?}",
        udp_echo()
    );
    // They close on the host: so does the container's side.
    drop(server);
    drop(udp_server);
    assert!(
        wait_until(Duration::from_secs(5), || !ns_has(netns, "-Hltn", 8090)
            && !ns_has(netns, "-Hlun", 5301)),
        "8090 or 5301 is still bound inside"
    );
}

#[test]
fn both_autos_leave_each_others_ports_alone() {
    each_with_netns("pasta-both-auto", "netns-both-auto", both_autos_session);
}

fn both_autos_session(net: &TestNet, caller: &Caller, netns: &NetnsFile, pasta: &Path) {
    // No port options at all: -t, -u, -T and -U are all auto.
    start_pasta_ok(caller, pasta, &argv(&netns.path, &[]));
    let inside = || {
        let ncat = ["timeout", "5", "ncat", "--recv-only", "-w", "2"];
        stdout_of(netns.cmd(&ncat).args(["127.0.0.1", "8091"]))
    };
    let server = KillOnDrop(
        net.host_cmd(&["ncat", "-l", "-k", "127.0.0.1", "8091"])
            .args(["--sh-exec", "echo host here"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(5), || inside() == "host here"),
        "8091 on the host is not reachable inside: {:?}",
        inside()
    );
    // Bound inside by -T auto, 8091 is not for -t auto to publish back
    // on the host once the host's server is gone, nor the host's side
    // that -t auto would bind for -T auto to keep (each side would keep
    // the other bound for good; either exclusion alone breaks the cycle).
    drop(server);
    assert!(
        wait_until(Duration::from_secs(5), || !ns_has(netns, "-Hltn", 8091)),
        "8091 is still bound inside"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !host_listens(net, 8091),
        "8091 was published back on the host"
    );
    assert!(!ns_has(netns, "-Hltn", 8091), "8091 came back inside");
}

#[test]
fn tcp_all_binds_every_port_but_the_excluded_and_ephemeral_ones() {
    // `all` holds one socket per port, some 32000 with either pasta.
    // Under a lower open file limit netferry binds from port 1 up until
    // it is near and warns about the rest (so the ports checked here are
    // low), while the real pasta fails ("All listens failed for HOST TCP
    // */61000-65535", exit 1): it runs here only where the limit is high
    // enough.
    use nix::sys::resource::{Resource, getrlimit};
    const PASTA_NEEDS_FILES: u64 = 70_000;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let dir = TempDir::new("pasta-all");
    for (name, pasta) in implementations(&dir) {
        if name == "pasta" && hard < PASTA_NEEDS_FILES {
            eprintln!("== pasta: not run, the open file limit ({hard}) is too low for its -t all");
            continue;
        }
        eprintln!("== {name}");
        with_netns(&dir, name, "netns-all", |net, caller, netns| {
            all_session(net, caller, netns, &pasta)
        });
    }
}

fn all_session(net: &TestNet, caller: &Caller, netns: &NetnsFile, pasta: &Path) {
    let ephemeral = std::fs::read_to_string(format!(
        "/proc/{}/root/proc/sys/net/ipv4/ip_local_port_range",
        caller.holder.0.id()
    ))
    .unwrap();
    let first_ephemeral: u16 = ephemeral
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let _servers: Vec<KillOnDrop> = ["8050", "8200"]
        .into_iter()
        .map(|port| {
            let text = format!("echo port {port}");
            KillOnDrop(
                netns
                    .cmd(&["ncat", "-l", "-k", port, "--sh-exec", &text])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let ports = ["-t", "all,~8000-8100", "-u", "none"];
    let ports = [&ports[..], &["-T", "none", "-U", "none"]].concat();
    start_pasta_ok(caller, pasta, &argv(&netns.path, &ports));
    let ask = |port: &str| from_host_loopback(net, port);
    assert!(
        wait_until(Duration::from_secs(5), || ask("8200") == "port 8200"),
        "8200: {}",
        ask("8200")
    );
    assert!(
        host_listens(net, 20000),
        "a port nothing serves is bound too"
    );
    assert!(!host_listens(net, 8050), "8050 is excluded");
    assert!(
        !host_listens(net, first_ephemeral + 10),
        "ephemeral ports are left out"
    );
    assert_eq!(ask("8050"), "");
}

#[test]
fn unsupported_port_modes_are_refused_by_name() {
    let dir = TempDir::new("pasta-ports-cli");
    let pasta = pasta_link(&dir);
    let net = host_net();
    let caller = Caller::new(&net, &dir, "refusals");
    let netns = NetnsFile::new(&caller, "netns-refusals");
    for (spec, text) in [
        (["-T", "all"], "-T: 'all' is not supported"),
        (["-U", "all"], "-U: 'all' is not supported"),
    ] {
        let out = start_pasta(&caller, &pasta, &argv(&netns.path, &spec));
        assert_eq!(out.status.code(), Some(1), "{spec:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(text), "{spec:?}: {err}");
    }
}
