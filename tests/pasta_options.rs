//! pasta's options beyond what its callers pass, each with a visible
//! effect, in the test's host namespace (198.51.100.1/24 via
//! 198.51.100.2, dnsmasq on its loopback as the resolver): `--dns-host`,
//! `--outbound-if4`, `--no-udp`. Each case runs with netferry as `pasta`
//! and with the real pasta (Debian forky's), which shows the test checks
//! what pasta does; then the refusals, netferry's own.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pasta::{
    Caller, NetnsFile, each_implementation, host_net, no_ports_argv, pasta_link, start_pasta_ok,
    stdout_of,
};
use common::{KillOnDrop, TempDir, TestNet, dns_server, wait_until};

/// Start `pasta` for a fresh namespace of `caller` with no port
/// forwarding (pasta's `auto` default would scan) and `extra` options.
fn start<'c>(caller: &'c Caller, pasta: &Path, extra: &[&str]) -> NetnsFile<'c> {
    let netns = NetnsFile::new(caller, "netns");
    start_pasta_ok(caller, pasta, &no_ports_argv(&netns.path, extra));
    netns
}

/// `dig` at `server`, with `options` before it.
fn dig(netns: &NetnsFile, options: &[&str], server: &str) -> String {
    let mut cmd = netns.cmd(&["dig", "+short", "+tries=1", "+time=2"]);
    cmd.args(options)
        .arg(format!("@{server}"))
        .arg("probe.netferry.test");
    stdout_of(&mut cmd)
}

#[test]
fn dns_forward_leads_to_the_dns_host_not_the_hosts_first_resolver() {
    each_implementation("pasta-dns-host", |dir, pasta, name| {
        let net = host_net();
        // resolv.conf names 127.0.0.1; another resolver answers on
        // 127.0.0.2.
        let _first = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
        let _other = dns_server(&net, "127.0.0.2", &["192.0.2.88"]);
        let caller = Caller::new(&net, dir, name);
        let netns = start(
            &caller,
            pasta,
            &["--dns-forward", "169.254.1.1", "--dns-host", "127.0.0.2"],
        );
        assert_eq!(dig(&netns, &[], "169.254.1.1"), "192.0.2.88", "{name}");
        drop(netns);

        // Without --dns-host: the host's first resolver.
        let netns = start(&caller, pasta, &["--dns-forward", "169.254.1.1"]);
        assert_eq!(dig(&netns, &[], "169.254.1.1"), "192.0.2.77", "{name}");
    });
}

/// netferry as `pasta` with `args`: its exit code and stderr.
fn refused(pasta: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(pasta).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn options_netferry_cannot_serve_are_refused_by_name_with_exit_1() {
    let dir = TempDir::new("pasta-refused");
    let pasta = pasta_link(&dir);
    let argv0 = pasta.display().to_string();
    // Whatever the value: the parser's refusal, before anything is set up.
    for (args, text) in [
        (
            &["-H", "box", "--netns", "x"][..],
            format!(
                "{argv0}: option '-H' is not supported by netferry's pasta mode: netferry's DHCP offers no host name"
            ),
        ),
        (
            &["--fqdn", "box.example", "--netns", "x"],
            format!(
                "{argv0}: option '--fqdn' is not supported by netferry's pasta mode: netferry's DHCP offers no FQDN (and it has no DHCPv6)"
            ),
        ),
        (
            &["--pcap", "/tmp/p", "--netns", "x"],
            format!(
                "{argv0}: option '--pcap' is not supported by netferry's pasta mode: netferry writes no packet captures"
            ),
        ),
        // pasta's own refusal.
        (
            &["--one-off", "--netns", "x"],
            "--one-off is for passt mode only".to_string(),
        ),
    ] {
        assert_eq!(refused(&pasta, args), (Some(1), text), "{args:?}");
    }
    // Some values or combinations only: the daemon's refusal, naming the
    // option, before it touches the namespace (which does not exist).
    let missing = ["--netns", "/nonexistent/netns-x"];
    for (args, text) in [
        (
            &["--dhcp-search"][..],
            "--dhcp-search is not supported by netferry's pasta mode: its DHCP carries no search domains (give -S none)",
        ),
        (
            &["--dhcp-search", "-S", "example.com"],
            "--dhcp-search is not supported by netferry's pasta mode: its DHCP carries no search domains (give -S none)",
        ),
        (
            &["--dhcp-dns", "-D", "192.0.2.1", "-D", "192.0.2.2"],
            "-D with --dhcp-dns is not supported by netferry's pasta mode for more than one IPv4 name server: its DHCP carries one",
        ),
        (
            &["--dhcp-dns", "-D", "2001:db8::53"],
            "-D with --dhcp-dns is not supported by netferry's pasta mode for IPv6 name servers: it announces none over NDP",
        ),
        (
            &["--runas", "no-such-user-x"],
            "Invalid --runas option: no-such-user-x",
        ),
        (
            &["--freebind", "-t", "192.0.2.9/8080"],
            "--freebind is not supported by netferry's pasta mode: forwarded ports bind only to addresses the host has",
        ),
        (
            &["--no-tcp", "-t", "8080"],
            "Can't add TCP forwarding rule, TCP not enabled",
        ),
        (
            &["--no-udp", "-u", "8080"],
            "Can't add UDP forwarding rule, UDP not enabled",
        ),
    ] {
        let all: Vec<&str> = args.iter().chain(&missing).copied().collect();
        assert_eq!(
            refused(&pasta, &all),
            (Some(1), text.to_string()),
            "{args:?}"
        );
    }
    // Accepted where they change nothing netferry cannot do: -S without
    // --dhcp-search, one -D, --runas (a known user), --freebind
    // without a listening address. These fail on the missing namespace.
    for args in [
        &["-S", "example.com"][..],
        &["--dhcp-search", "-S", "none"],
        &["--dhcp-dns", "-D", "192.0.2.1"],
        &["--runas", "0:0"],
        &["--runas", "65534"],
        &["--freebind", "-t", "8080"],
        &["--no-tcp", "-t", "none"],
    ] {
        let all: Vec<&str> = args.iter().chain(&missing).copied().collect();
        let (code, err) = refused(&pasta, &all);
        assert_eq!(code, Some(1));
        assert!(err.contains("/nonexistent/netns-x"), "{args:?}: {err}");
    }
    // --log-size with -l: accepted, with a note that netferry does not
    // rotate, in the log.
    let log = dir.path("log");
    let log_arg = log.display().to_string();
    let args = ["-l", &log_arg, "--log-size", "50000"];
    let all: Vec<&str> = args.iter().chain(&missing).copied().collect();
    assert_eq!(refused(&pasta, &all).0, Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("--log-size 50000: netferry does not rotate its log file"),
        "{text}"
    );
}

/// A second "remote" namespace behind its own veth from the host
/// namespace (203.0.113.1 on the host, 203.0.113.2 there), for a host
/// with two ways out; removed with whatever runs in it.
struct SecondWay {
    ns: String,
    host_veth: String,
}

impl SecondWay {
    fn new(net: &TestNet) -> Self {
        let id = &net.host[3..];
        let way = SecondWay {
            ns: format!("nfb{id}"),
            host_veth: format!("vb{id}"),
        };
        let peer = format!("vc{id}");
        let (ns, hv, h) = (&way.ns, &way.host_veth, &net.host);
        for args in [
            vec!["netns", "add", ns],
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec!["link", "add", hv, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", hv, "netns", h],
            vec!["link", "set", &peer, "netns", ns],
            vec!["-n", h, "addr", "add", "203.0.113.1/24", "dev", hv],
            vec!["-n", ns, "addr", "add", "203.0.113.2/24", "dev", &peer],
            vec!["-n", h, "link", "set", hv, "up"],
            vec!["-n", ns, "link", "set", &peer, "up"],
        ] {
            common::run_ok("ip", &args);
        }
        way
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args(args);
        cmd
    }
}

impl Drop for SecondWay {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn outbound_if4_sends_the_guests_traffic_out_through_that_interface() {
    each_implementation("pasta-outbound-if", |dir, pasta, name| {
        let net = host_net();
        let way = SecondWay::new(&net);
        // 192.0.2.1 lives behind both ways; the host prefers the first.
        let ask = "192.0.2.1";
        for ns in [&net.remote, &way.ns] {
            common::run_ok("ip", &["-n", ns, "addr", "add", ask, "dev", "lo"]);
        }
        for (to, via, metric) in [
            ("192.0.2.0/24", "198.51.100.2", "100"),
            ("192.0.2.0/24", "203.0.113.2", "200"),
            ("default", "203.0.113.2", "300"),
        ] {
            net.host_ok(&["ip", "route", "add", to, "via", via, "metric", metric]);
        }
        let serve = |cmd: &mut Command| KillOnDrop(cmd.spawn().unwrap());
        let _first = serve(Command::new("ip").args([
            "netns",
            "exec",
            &net.remote,
            "ncat",
            "-l",
            "-k",
            ask,
            "7000",
            "--sh-exec",
            "echo first",
        ]));
        let _second =
            serve(&mut way.cmd(&["ncat", "-l", "-k", ask, "7000", "--sh-exec", "echo second"]));
        let caller = Caller::new(&net, dir, name);
        let reply = |netns: &NetnsFile| {
            let mut got = String::new();
            wait_until(Duration::from_secs(5), || {
                let out = netns
                    .cmd(&["ncat", "--recv-only", "-w", "2", ask, "7000"])
                    .output()
                    .unwrap();
                got = String::from_utf8_lossy(&out.stdout).trim().to_string();
                !got.is_empty()
            });
            got
        };

        let netns = start(&caller, pasta, &["--outbound-if4", &way.host_veth]);
        assert_eq!(reply(&netns), "second", "{name} with --outbound-if4");
        drop(netns);
        // Without: the host's preferred way.
        let netns = start(&caller, pasta, &[]);
        assert_eq!(reply(&netns), "first", "{name} without");
    });
}

/// `dig` through the DNS forward address over UDP, or with `tcp` over TCP.
fn dig_over(netns: &NetnsFile, tcp: bool) -> String {
    let transport = if tcp { "+tcp" } else { "+notcp" };
    dig(netns, &[transport], "169.254.1.1")
}

#[test]
fn no_udp_and_no_tcp_stop_carrying_that_protocol_only() {
    each_implementation("pasta-no-proto", |dir, pasta, name| {
        let net = host_net();
        let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
        let caller = Caller::new(&net, dir, name);
        let forward = ["--dns-forward", "169.254.1.1"];
        let with = |extra: &[&'static str]| {
            let args: Vec<&str> = forward.iter().chain(extra).copied().collect();
            start(&caller, pasta, &args)
        };
        let netns = with(&[]);
        assert_eq!(dig_over(&netns, false), "192.0.2.77", "{name}: UDP");
        assert_eq!(dig_over(&netns, true), "192.0.2.77", "{name}: TCP");
        drop(netns);

        let netns = with(&["--no-udp"]);
        let answer = dig_over(&netns, false);
        assert!(
            !answer.contains("192.0.2.77"),
            "{name} --no-udp: UDP: {answer}"
        );
        assert_eq!(dig_over(&netns, true), "192.0.2.77", "{name} --no-udp: TCP");
        drop(netns);

        let netns = with(&["--no-tcp"]);
        assert_eq!(
            dig_over(&netns, false),
            "192.0.2.77",
            "{name} --no-tcp: UDP"
        );
        let answer = dig_over(&netns, true);
        assert!(
            !answer.contains("192.0.2.77"),
            "{name} --no-tcp: TCP: {answer}"
        );
    });
}

#[test]
fn runas_serves_as_that_user_through_a_user_namespace_it_owns() {
    each_implementation("pasta-runas", |dir, pasta, name| {
        let net = host_net();
        let caller = Caller::new(&net, dir, name);
        let netns = NetnsFile::new(&caller, "netns");
        let holder = caller.holder.0.id();
        let pid_file = caller.dir.join("pasta.pid");
        // Root of the init namespaces, in the caller's mount namespace
        // (where the namespace file is), asks to run as nobody, who owns
        // the caller's user namespace.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={holder}"))
            .args(["--mount", "--net", "--"])
            .arg(pasta)
            .args(no_ports_argv(
                &netns.path,
                &[
                    "--runas",
                    "65534",
                    "--pid",
                    &pid_file.display().to_string(),
                    "--userns",
                    &format!("/proc/{holder}/ns/user"),
                ],
            ));
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uid.split_whitespace().nth(1),
            Some("65534"),
            "{name}: {uid}"
        );
        let addrs = netns.ok(&["ip", "-4", "addr"]);
        assert!(addrs.contains(common::HOST_ADDR), "{name}: {addrs}");
    });
}

#[test]
fn no_copy_addrs_and_routes_keep_one_address_and_the_default_route_per_family() {
    each_implementation("pasta-no-copy", |dir, pasta, name| {
        let net = host_net();
        // Two addresses of each family in one prefix (pasta exits 1 when
        // the one it keeps is not in the gateway's), one more route each.
        let hv = net.host_veth.clone();
        for args in [
            &["ip", "addr", "add", "198.51.100.11/24", "dev", &hv][..],
            &[
                "ip",
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                "198.51.100.2",
            ],
            &["ip", "addr", "add", "2001:db8::1/64", "dev", &hv, "nodad"],
            &["ip", "addr", "add", "2001:db8::11/64", "dev", &hv, "nodad"],
            &["ip", "-6", "route", "add", "default", "via", "2001:db8::2"],
            &[
                "ip",
                "-6",
                "route",
                "add",
                "2001:db8:5::/48",
                "via",
                "2001:db8::2",
            ],
        ] {
            net.host_ok(args);
        }
        let caller = Caller::new(&net, dir, name);
        let copied = |netns: &NetnsFile| {
            let global = |family: &str| {
                netns
                    .ok(&["ip", "-o", family, "addr", "show", "scope", "global"])
                    .lines()
                    .count()
            };
            let routes = netns.ok(&["ip", "-4", "route"]) + &netns.ok(&["ip", "-6", "route"]);
            (
                global("-4"),
                global("-6"),
                routes.contains("203.0.113.0/24"),
                routes.contains("2001:db8:5::/48"),
            )
        };
        let netns = start(&caller, pasta, &[]);
        assert_eq!(copied(&netns), (2, 2, true, true), "{name}: all copied");
        drop(netns);
        let netns = start(&caller, pasta, &["--no-copy-addrs", "--no-copy-routes"]);
        assert_eq!(copied(&netns), (1, 1, false, false), "{name}: one each");
        let default6 = netns.ok(&["ip", "-6", "route", "show", "default"]);
        assert!(default6.contains("via 2001:db8::2"), "{name}: {default6}");
    });
}

#[test]
fn no_netns_quit_outlives_the_namespace_file() {
    each_implementation("pasta-no-quit", |dir, pasta, name| {
        let net = host_net();
        let caller = Caller::new(&net, dir, name);
        let pid_file = caller.dir.join("pasta.pid");
        let pid_arg = pid_file.display().to_string();
        let options = ["--no-netns-quit", "--pid", &pid_arg];
        let netns = start(&caller, pasta, &options);
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_string();
        // A zombie is gone too: whoever reaps it may be slow to.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| !s.contains("State:\tZ"))
        };
        netns.remove();
        // Without the option both quit within a second of this (see
        // tests/pasta.rs); a slow machine can only make this pass wrongly,
        // never fail.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(alive(), "{name} quit with --no-netns-quit");
        Command::new("kill").arg(&pid).status().unwrap();
        assert!(wait_until(Duration::from_secs(3), || !alive()));
    });
}
