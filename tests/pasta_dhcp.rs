//! pasta mode without `--config-net`: the tap is left to the guest, and
//! pasta's DHCP server configures it. A real client (busybox `udhcpc`)
//! asks in a container namespace and configures the tap from the lease:
//! it gets the host's own address and prefix, the host's gateway, the
//! MTU pasta would give the tap (65520) and, with `--dhcp-dns`, the
//! `--dns-forward` address as its name server (the host's resolver is on
//! its loopback), through which a lookup then answers. Without `--dhcp-dns` no name server is announced (pasta's
//! default in pasta mode); with `--no-dhcp` there is no answer at all.
//!
//! Each case runs with netferry as `pasta` and with the real pasta
//! (Debian forky's), which shows the test checks what pasta does.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::pasta::{Caller, NetnsFile, host_net, implementations, none_serving, start_pasta_ok};
use common::{HOST_ADDR, REMOTE_ADDR, TempDir, TestNet, dns_server};

/// The forward address the lease should name.
const DNS_FORWARD: &str = "169.254.1.1";

/// A udhcpc script that prints the lease and configures the interface
/// with it, as a distribution's default script would.
fn lease_script(dir: &TempDir) -> PathBuf {
    let script = dir.path("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         [ \"$1\" = bound ] || exit 0\n\
         echo \"lease ip=$ip mask=$mask router=$router mtu=$mtu dns=$dns\"\n\
         ip addr add \"$ip/$mask\" dev \"$interface\"\n\
         ip route add default via \"$router\" dev \"$interface\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// What udhcpc printed from its script in `netns` on `ifname` (brought up
/// first: pasta leaves it down without `--config-net`), or "" when no
/// lease came within a few tries.
fn lease(netns: &NetnsFile, ifname: &str, script: &Path) -> String {
    netns.ok(&["ip", "link", "set", ifname, "up"]);
    let out = netns
        .cmd(&["busybox", "udhcpc", "-f", "-q", "-n", "-t", "3", "-T", "1"])
        .args(["-i", ifname, "-s"])
        .arg(script)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("lease "))
        .unwrap_or_default()
        .to_string()
}

/// Start pasta with `extra` on a new namespace of `caller`'s, named
/// `name`, and take a lease there.
fn lease_with(
    net: &TestNet,
    caller: &Caller,
    pasta: &Path,
    script: &Path,
    name: &str,
    extra: &[&str],
) -> (String, String) {
    let netns = NetnsFile::new(caller, name);
    let mut argv: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for flag in ["-t", "-u", "-T", "-U"] {
        argv.extend([flag.to_string(), "none".into()]);
    }
    argv.extend(["--quiet".into(), "--netns".into()]);
    argv.push(netns.path.display().to_string());
    start_pasta_ok(caller, pasta, &argv);
    // Unconfigured: no IPv4 address on the tap before DHCP.
    let before = netns.ok(&["ip", "-4", "-o", "addr", "show", "dev", &net.host_veth]);
    assert_eq!(before, "", "{extra:?}: configured without --config-net");
    // But lo is up: pasta brings it up whatever it configures.
    let lo = netns.ok(&["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{extra:?}: lo down: {lo}");
    let got = lease(&netns, &net.host_veth, script);
    let dig = if got.is_empty() {
        String::new()
    } else {
        netns.ok(&[
            "dig",
            "+short",
            "+tries=1",
            "+time=2",
            &format!("@{DNS_FORWARD}"),
            "probe.netferry.test",
        ])
    };
    netns.remove();
    assert!(
        none_serving(net, &netns.path),
        "the daemon outlived its namespace"
    );
    (got, dig.trim().to_string())
}

#[test]
fn without_config_net_dhcp_hands_out_the_hosts_address_and_gateway() {
    let dir = TempDir::new("pasta-dhcp");
    let script = lease_script(&dir);
    for (name, pasta) in implementations(&dir) {
        eprintln!("== {name}");
        let net = host_net();
        let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
        let caller = Caller::new(&net, &dir, name);
        let host_lease = format!("lease ip={HOST_ADDR} mask=24 router={REMOTE_ADDR} mtu=65520");

        // --dhcp-dns: the host's resolver (127.0.0.1) is announced as the
        // --dns-forward address, and the namespace configured from the
        // lease resolves through it.
        let args = ["--dns-forward", DNS_FORWARD, "--dhcp-dns"];
        let (got, dig) = lease_with(&net, &caller, &pasta, &script, "dhcp-dns", &args);
        assert_eq!(got, format!("{host_lease} dns={DNS_FORWARD}"), "{name}");
        assert_eq!(dig, "192.0.2.77", "{name}: DNS through the lease's server");

        // pasta's default: no name server over DHCP.
        let args = ["--dns-forward", DNS_FORWARD];
        let (got, _) = lease_with(&net, &caller, &pasta, &script, "plain", &args);
        assert_eq!(got, format!("{host_lease} dns="), "{name}");

        // --no-dhcp: nobody answers.
        let args = ["--dns-forward", DNS_FORWARD, "--no-dhcp"];
        let (got, _) = lease_with(&net, &caller, &pasta, &script, "no-dhcp", &args);
        assert_eq!(got, "", "{name}: a lease despite --no-dhcp");
    }
}
