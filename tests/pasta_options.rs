//! pasta's options beyond what its callers pass, each with a visible
//! effect, in the test's host namespace (198.51.100.1/24 via
//! 198.51.100.2, dnsmasq on its loopback as the resolver): `--dns-host`,
//! `--outbound-if4`, `--no-udp`. Each case runs with netferry as `pasta`
//! and with the real pasta (Debian forky's), which shows the test checks
//! what pasta does; then the refusals, netferry's own.

mod common;

use std::path::Path;

use common::pasta::{Caller, NetnsFile, host_net, implementations, start_pasta};
use common::{TempDir, dns_server};

/// What every case passes: no port forwarding either way (pasta's `auto`
/// default would scan), warnings only.
const QUIET_NO_PORTS: [&str; 9] = [
    "--config-net",
    "-t",
    "none",
    "-u",
    "none",
    "-T",
    "none",
    "-U",
    "none",
];

/// Start `pasta` for a fresh namespace of `caller` with `extra` options.
fn start<'c>(caller: &'c Caller, pasta: &Path, extra: &[&str]) -> NetnsFile<'c> {
    let netns = NetnsFile::new(caller, "netns");
    let mut argv: Vec<String> = QUIET_NO_PORTS.iter().map(|a| a.to_string()).collect();
    argv.extend(extra.iter().map(|a| a.to_string()));
    argv.extend(["--netns".to_string(), netns.path.display().to_string()]);
    let out = start_pasta(caller, pasta, &argv);
    assert!(out.status.success(), "{argv:?}: {out:?}");
    netns
}

fn dig(netns: &NetnsFile, server: &str) -> String {
    let out = netns
        .cmd(&[
            "dig",
            "+short",
            "+tries=1",
            "+time=2",
            &format!("@{server}"),
            "probe.netferry.test",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn dns_forward_leads_to_the_dns_host_not_the_hosts_first_resolver() {
    let dir = TempDir::new("pasta-dns-host");
    for (name, pasta) in implementations(&dir) {
        eprintln!("== {name}");
        let net = host_net();
        // resolv.conf names 127.0.0.1; another resolver answers on
        // 127.0.0.2.
        let _first = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
        let _other = dns_server(&net, "127.0.0.2", &["192.0.2.88"]);
        let caller = Caller::new(&net, &dir, name);
        let netns = start(
            &caller,
            &pasta,
            &["--dns-forward", "169.254.1.1", "--dns-host", "127.0.0.2"],
        );
        assert_eq!(dig(&netns, "169.254.1.1"), "192.0.2.88", "{name}");
        drop(netns);

        // Without --dns-host: the host's first resolver.
        let netns = start(&caller, &pasta, &["--dns-forward", "169.254.1.1"]);
        assert_eq!(dig(&netns, "169.254.1.1"), "192.0.2.77", "{name}");
    }
}
