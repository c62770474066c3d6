//! The command lines pasta's callers send (as recorded in PASTA.md from
//! podman's, rootlesskit's and Docker's sources), and each of pasta's
//! refusals with its text.

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::cli::{
    CliError, IpVersions, LogLevel, Nameservers, Parsed, PastaArgs, SearchDomains, Target,
    UNSUPPORTED, UserNs, parse, version_text,
};
use super::ports::{Forwards, PortRange, PortSpec, Ports};

const ARGV0: &str = "/usr/bin/pasta";

fn os(args: &str) -> Vec<OsString> {
    args.split_whitespace().map(OsString::from).collect()
}

fn run(args: &str) -> PastaArgs {
    match parse(ARGV0, &os(args)) {
        Ok(Parsed::Run(a)) => *a,
        other => panic!("{args}: {other:?}"),
    }
}

fn error(args: &str) -> String {
    match parse(ARGV0, &os(args)) {
        Err(e) => e.to_string(),
        other => panic!("{args}: {other:?}"),
    }
}

fn ranges(list: &[(u16, u16, u16)]) -> Ports {
    Ports::Ranges(
        list.iter()
            .map(|&(first, last, to_first)| PortRange {
                ports: first..=last,
                to_addr: None,
                to_first,
            })
            .collect(),
    )
}

fn spec(addr: Option<&str>, ports: Ports) -> PortSpec {
    PortSpec {
        addr: addr.map(|a| a.parse().unwrap()),
        iface: None,
        ports,
        exclude: Vec::new(),
        auto: false,
    }
}

fn netns(path: &str) -> Target {
    Target::Netns {
        path: path.into(),
        userns: UserNs::Keep,
    }
}

const PODMAN_NETNS: &str = "/run/user/1000/netns/netns-ef11";

#[test]
fn podman_5_3_to_6_default_network() {
    let a = run(&format!(
        "--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw --quiet \
         --netns {PODMAN_NETNS} --map-guest-addr 169.254.1.2"
    ));
    assert!(a.config_net && a.no_map_gw);
    assert_eq!(a.dns_forward4, Some(Ipv4Addr::new(169, 254, 1, 1)));
    assert_eq!(a.map_guest_addr4, Some(Ipv4Addr::new(169, 254, 1, 2)));
    assert_eq!(a.log_level, LogLevel::Quiet);
    for forwards in [&a.tcp, &a.udp, &a.tcp_ns, &a.udp_ns] {
        assert_eq!(*forwards, Forwards::Given(vec![]));
    }
    assert_eq!(a.target, netns(PODMAN_NETNS));
    assert!(a.warnings.is_empty());
}

#[test]
fn podman_published_ports_including_host_ips() {
    let a = run(&format!(
        "--config-net -t 8080-8080:80-80 -t 127.0.0.1/8081-8081:80-80 -t ::1/8082-8082:80-80 -u 5353-5354:53-54 \
         --dns-forward 169.254.1.1 -T none -U none --no-map-gw --quiet --netns {PODMAN_NETNS} \
         --map-guest-addr 169.254.1.2"
    ));
    assert_eq!(
        a.tcp,
        Forwards::Given(vec![
            spec(None, ranges(&[(8080, 8080, 80)])),
            spec(Some("127.0.0.1"), ranges(&[(8081, 8081, 80)])),
            spec(Some("::1"), ranges(&[(8082, 8082, 80)])),
        ])
    );
    assert_eq!(
        a.udp,
        Forwards::Given(vec![spec(None, ranges(&[(5353, 5354, 53)]))])
    );
}

#[test]
fn podman_network_pasta_options_come_first() {
    // `--network pasta:-T,5201,-d` is split on commas only.
    let a = run(&format!(
        "--config-net -T 5201 -d --dns-forward 169.254.1.1 -t none -u none -U none --no-map-gw \
         --netns {PODMAN_NETNS} --map-guest-addr 169.254.1.2"
    ));
    assert_eq!(
        a.tcp_ns,
        Forwards::Given(vec![spec(None, ranges(&[(5201, 5201, 5201)]))])
    );
    assert_eq!(a.log_level, LogLevel::Debug);
}

#[test]
fn podman_one_token_option_gets_none_added_and_pasta_refuses() {
    // podman#22653: `pasta_options=["-T 80,443"]` is one token, so podman
    // still adds `-T none`.
    let args: Vec<OsString> = ["--config-net", "-T 80,443", "-T", "none"]
        .map(OsString::from)
        .to_vec();
    // strtoul skips the blank, so pasta takes ` 80,443` and then refuses
    // the `none`.
    let e = parse(ARGV0, &args).unwrap_err();
    assert_eq!(e.to_string(), "-T none conflicts with previous options");
    assert_eq!(
        error("-T 80,443 -T none"),
        "-T none conflicts with previous options"
    );
}

#[test]
fn podman_5_0_to_5_2_variants() {
    let a = run(&format!(
        "--config-net -t none -u none -T none -U none --no-map-gw --dns none --quiet --netns {PODMAN_NETNS}"
    ));
    assert_eq!(a.dns, Nameservers::None);
    let a = run(&format!(
        "--config-net --dns-forward 169.254.0.1 -t none -u none -T none -U none --no-map-gw --quiet \
         --netns {PODMAN_NETNS}"
    ));
    assert_eq!(a.dns_forward4, Some(Ipv4Addr::new(169, 254, 0, 1)));
    assert_eq!(a.map_guest_addr4, None);
}

#[test]
fn podman_rootless_bridge_network_writes_a_pid_file() {
    let dir = "/run/user/1000/containers/networks/rootless-netns";
    let a = run(&format!(
        "--config-net --pid {dir}/rootless-netns-conn.pid --dns-forward 169.254.1.1 -t none -u none -T none \
         -U none --no-map-gw --quiet --netns {dir}/rootless-netns --map-guest-addr 169.254.1.2"
    ));
    assert_eq!(
        a.pid_file,
        Some(PathBuf::from(format!("{dir}/rootless-netns-conn.pid")))
    );
    assert_eq!(a.target, netns(&format!("{dir}/rootless-netns")));
}

const ROOTLESSKIT: &str = "--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 --netmask=24 \
                           --gateway=10.0.2.2 --dns-forward=10.0.2.3";

#[test]
fn rootlesskit_2_3_and_3_with_a_pid() {
    let a = run(&format!(
        "{ROOTLESSKIT} --no-map-gw --ipv4-only --tcp-ports=auto --udp-ports=auto --host-lo-to-ns-lo 4242"
    ));
    assert_eq!(a.ns_ifname.as_deref(), Some("tap0"));
    assert_eq!(a.mtu, Some(65520));
    assert_eq!(a.addr4, Some(Ipv4Addr::new(10, 0, 2, 100)));
    assert_eq!(a.prefix4, Some(24));
    assert_eq!(a.gateway4, Some(Ipv4Addr::new(10, 0, 2, 2)));
    assert_eq!(a.dns_forward4, Some(Ipv4Addr::new(10, 0, 2, 3)));
    assert_eq!(a.ip_versions, IpVersions::V4Only);
    assert!(a.host_lo_to_ns_lo && a.no_map_gw && a.config_net);
    let auto = PortSpec {
        auto: true,
        ..spec(None, Ports::All { to_addr: None })
    };
    assert_eq!(a.tcp, Forwards::Given(vec![auto.clone()]));
    assert_eq!(a.udp, Forwards::Given(vec![auto]));
    assert_eq!(
        (&a.tcp_ns, &a.udp_ns),
        (&Forwards::Default, &Forwards::Default)
    );
    assert_eq!(
        a.target,
        Target::Pid {
            pid: 4242,
            userns: UserNs::Join("/proc/4242/ns/user".into())
        }
    );
    assert_eq!(a.warnings, ["--stderr will be dropped soon"]);
}

#[test]
fn rootlesskit_with_a_detached_netns() {
    let a = run(&format!(
        "{ROOTLESSKIT} --tcp-ports=none --udp-ports=none --userns=/proc/4242/ns/user \
         --netns=/proc/4242/root/run/user/1000/rootlesskit/netns"
    ));
    assert_eq!(a.tcp, Forwards::Given(vec![]));
    assert_eq!(
        a.target,
        Target::Netns {
            path: "/proc/4242/root/run/user/1000/rootlesskit/netns".into(),
            userns: UserNs::Join("/proc/4242/ns/user".into()),
        }
    );
}

#[test]
fn rootlesskit_2_0_to_2_2_runs_in_the_foreground() {
    let a = run(
        "--foreground --stderr --ns-ifname=tap0 --mtu=65520 --address=10.0.2.100 --netmask=24 --gateway=10.0.2.2 \
         --dns-forward=10.0.2.3 --no-map-gw --ipv4-only --tcp-ports=auto --udp-ports=auto --no-dhcp --no-ra 4242",
    );
    assert!(a.foreground && a.no_dhcp && a.no_ra && !a.config_net);
}

#[test]
fn version_probes_exit_before_anything_else() {
    for probe in [
        "--version",
        "--host-lo-to-ns-lo --version",
        "--pcap x --version",
        "--vers",
    ] {
        let Ok(Parsed::Version(text)) = parse(ARGV0, &os(probe)) else {
            panic!("{probe}");
        };
        assert!(text.starts_with("pasta netferry "), "{text}");
        assert_eq!(text, version_text());
    }
    assert_eq!(
        error("--bogus --version"),
        "/usr/bin/pasta: unrecognized option '--bogus'"
    );
    assert_eq!(
        error("-m 70000 --version"),
        "MTU 70000 too large (max 65521)"
    );
}

#[test]
fn help_lists_the_refused_options() {
    let Ok(Parsed::Help(text)) = parse(ARGV0, &os("-h")) else {
        panic!("-h");
    };
    assert!(text.starts_with("Usage: /usr/bin/pasta [OPTION]..."));
    for (_, option, _) in UNSUPPORTED {
        assert!(text.contains(option), "{option}");
    }
}

#[test]
fn a_command_with_its_own_options() {
    let a = run("--config-net -t 8080 -- ls -l /");
    assert_eq!(
        a.target,
        Target::Command {
            argv: os("ls -l /"),
            userns: UserNs::New,
        }
    );
    let a = run("-4 ip -d addr");
    assert_eq!(a.ip_versions, IpVersions::V4Only);
    assert_eq!(a.log_level, LogLevel::Info);
    let Target::Command { argv, .. } = a.target else {
        panic!()
    };
    assert_eq!(argv, os("ip -d addr"));
    // No command: the user's shell; two operands are a command even if
    // the first is a number.
    assert_eq!(
        run("--netns-only").target,
        Target::Command {
            argv: vec![],
            userns: UserNs::Keep
        }
    );
    assert!(matches!(run("123 x").target, Target::Command { .. }));
}

#[test]
fn targets_and_their_user_namespaces() {
    assert_eq!(run("--netns foo").target, netns("/run/netns/foo"));
    assert_eq!(
        run("--netns-only 42").target,
        Target::Pid {
            pid: 42,
            userns: UserNs::Join("/proc/42/ns/user".into())
        }
    );
    assert_eq!(
        run("--netns-only --userns /u --netns ./n").target,
        Target::Netns {
            path: "./n".into(),
            userns: UserNs::Join("/u".into())
        }
    );
    assert_eq!(
        run("--userns /u --netns-only --netns /n").target,
        netns("/n")
    );
    assert_eq!(
        error("--netns /n 42"),
        "Both --netns and PID or command given"
    );
    assert_eq!(
        error("--netns /n sh"),
        "Both --netns and PID or command given"
    );
    assert_eq!(error("2147483648"), "Invalid PID 2147483648");
    assert_eq!(error("-- -1"), "Invalid PID -1");
}

#[test]
fn getopt_errors_carry_glibcs_texts() {
    // podman retries without --map-guest-addr when it reads this.
    let old = parse(ARGV0, &os("--map-guest-addr-x 1")).unwrap_err();
    assert!(
        old.to_string()
            .contains("unrecognized option '--map-guest-addr")
    );
    assert_eq!(error("-x"), "/usr/bin/pasta: invalid option -- 'x'");
    assert_eq!(error("-4x"), "/usr/bin/pasta: invalid option -- 'x'");
    assert_eq!(
        error("--map-guest-addr"),
        "/usr/bin/pasta: option '--map-guest-addr' requires an argument"
    );
    assert_eq!(
        error("--map-g"),
        "/usr/bin/pasta: option '--map-guest-addr' requires an argument"
    );
    assert_eq!(
        error("-t"),
        "/usr/bin/pasta: option requires an argument -- 't'"
    );
    assert_eq!(
        error("--debug=1"),
        "/usr/bin/pasta: option '--debug' doesn't allow an argument"
    );
    assert_eq!(
        error("--no-d"),
        "/usr/bin/pasta: option '--no-d' is ambiguous; possibilities: '--no-dhcp' '--no-dhcpv6' '--no-dhcp-dns' \
         '--no-dhcp-search'"
    );
    assert_eq!(
        error("--tcp=80"),
        "/usr/bin/pasta: option '--tcp=80' is ambiguous; possibilities: '--tcp-ports' '--tcp-ns'"
    );
    // `--socket` and `--socket-path` are one option to glibc.
    assert_eq!(error("--socke x"), "-s is for passt / vhost-user mode only");
}

#[test]
fn unsupported_options_are_named_as_given_with_why() {
    let refused = |spelled: &str, why: &str| {
        format!(
            "/usr/bin/pasta: option '{spelled}' is not supported by netferry's pasta mode: {why}"
        )
    };
    for (args, spelled, why) in [
        (
            "--pcap /tmp/x",
            "--pcap",
            "netferry writes no packet captures",
        ),
        ("-p/tmp/x", "-p", "netferry writes no packet captures"),
        (
            "-c /tmp/s",
            "-c",
            "the control socket speaks pesto's protocol, experimental and not implemented",
        ),
        (
            "--splice-only --no-splice",
            "--splice-only",
            "netferry always serves the namespace through its tap",
        ),
        ("-H box", "-H", "netferry's DHCP offers no host name"),
        (
            "--hostname=box",
            "--hostname",
            "netferry's DHCP offers no host name",
        ),
        (
            "--fqdn box.example",
            "--fqdn",
            "netferry's DHCP offers no FQDN (and it has no DHCPv6)",
        ),
        (
            "--fd 3",
            "--fd",
            "a pre-connected socket to a VM is passt's, not pasta's",
        ),
    ] {
        assert_eq!(error(args), refused(spelled, why), "{args}");
    }
    // Every refused option says why.
    for (_, spelled, why) in UNSUPPORTED {
        assert!(!why.is_empty(), "{spelled}");
    }
    assert_eq!(error("--one-off"), "--one-off is for passt mode only");
    assert_eq!(error("-1"), "--one-off is for passt mode only");
    assert_eq!(
        error("--no-dhcp-dns"),
        "--no-dhcp-dns is for passt mode only"
    );
    assert_eq!(
        error("--no-dhcp-search"),
        "--no-dhcp-search is for passt mode only"
    );
    assert_eq!(
        error("--repair-path /x"),
        "--repair-path is for vhost-user mode only"
    );
    assert_eq!(
        error("--migrate-exit"),
        "--migrate-exit is for vhost-user mode only"
    );
    run("--repair-path none");
}

#[test]
fn values_are_checked_with_pastas_texts() {
    for (args, text) in [
        ("-m abc", "Invalid MTU: abc"),
        ("-m 65522", "MTU 65522 too large (max 65521)"),
        ("-a 10.0.0.1/33", "Invalid prefix length: 10.0.0.1/33"),
        ("-a fd00::1/129", "Invalid prefix length: fd00::1/129"),
        ("-a 127.0.0.1", "Invalid guest address: 127.0.0.1"),
        ("-a 224.0.0.1", "Invalid guest address: 224.0.0.1"),
        ("-a 10.0.0.1x", "Invalid guest address: 10.0.0.1x"),
        (
            "-n 24 -a 10.0.0.1/24",
            "Redundant prefix length specification",
        ),
        (
            "-a 10.0.0.1/24 -n 24",
            "Redundant prefix length specification",
        ),
        ("-n 33", "Invalid prefix length: 33"),
        ("-n 255.0.255.0", "Invalid prefix length: 255.0.255.0"),
        (
            "-n 255.255.255.255",
            "Invalid prefix length: 255.255.255.255",
        ),
        ("-g 127.0.0.1", "Invalid gateway address: 127.0.0.1"),
        ("-g ::", "Invalid gateway address: ::"),
        (
            "-o 255.255.255.255",
            "Invalid or redundant outbound address: 255.255.255.255",
        ),
        (
            "-o ::ffff:10.0.0.1",
            "Invalid or redundant outbound address: ::ffff:10.0.0.1",
        ),
        ("-M 00:11:22:33:44", "Invalid MAC address: 00:11:22:33:44"),
        (
            "--ns-mac-addr 00:11:22:33:44:5z",
            "Invalid MAC address: 00:11:22:33:44:5z",
        ),
        ("-D foo", "Cannot use DNS address foo"),
        (
            "-S a -S b -S c -S d -S e -S f -S g",
            "Cannot use DNS search domain g",
        ),
        (
            "--dns-forward 127.0.0.1",
            "Invalid DNS forwarding address: 127.0.0.1",
        ),
        (
            "--dns-host 0.0.0.0",
            "Invalid host nameserver address: 0.0.0.0",
        ),
        (
            "--map-guest-addr 127.0.0.1",
            "Invalid address to remap to host: 127.0.0.1",
        ),
        (
            "--map-host-loopback ff02::1",
            "Invalid address to remap to host: ff02::1",
        ),
        (
            "-I sixteen-chars-xx",
            "Invalid interface name: sixteen-chars-xx",
        ),
        ("--outbound-if4=", "Invalid interface name: "),
        ("--log-size 4096", "Invalid --log-size: 4096"),
        ("--pid=", "Invalid PID file: "),
        ("--userns=", "Invalid userns: "),
        ("--no-copy-routes", "--no-copy-routes needs --config-net"),
        ("--no-copy-addrs", "--no-copy-addrs needs --config-net"),
    ] {
        assert_eq!(error(args), text, "{args}");
    }
    let long_netns = "n".repeat(4096);
    assert_eq!(
        error(&format!("--netns {long_netns}")),
        format!("Network namespace name/path {long_netns} too long")
    );
}

#[test]
fn addresses_and_masks_per_family() {
    let a = run(
        "-a 10.0.2.100 -a fd00::100 -n 255.255.255.0 -g 10.0.2.2 -g fe80::1 -o 10.0.0.5 -o 2001:db8::5",
    );
    assert_eq!(
        (a.addr4, a.prefix4),
        (Some(Ipv4Addr::new(10, 0, 2, 100)), Some(24))
    );
    assert_eq!(a.addr6, Some("fd00::100".parse().unwrap()));
    assert_eq!(a.gateway6, Some("fe80::1".parse::<Ipv6Addr>().unwrap()));
    assert_eq!(a.outbound4, Some(Ipv4Addr::new(10, 0, 0, 5)));
    // Without a length or -n, the address's class gives one.
    assert_eq!(run("-a 172.16.0.1").prefix4, Some(16));
    assert_eq!(run("-n 20 -a 10.0.0.1").prefix4, Some(20));
    assert_eq!(run("-n 0x18").prefix4, Some(24));
    assert_eq!(run("-n 32").prefix4, Some(32));
    assert_eq!(run("-n [255.255.0.0]").prefix4, Some(16));
    assert_eq!(run("-n 0.0.0.0").prefix4, Some(0));
}

#[test]
fn repeats_and_resets_follow_pasta() {
    let a = run("-D 1.1.1.1 -D 2.2.2.2 -D 3.3.3.3 -D 4.4.4.4 -D ::1 -S a.example -S none");
    let dns = ["1.1.1.1", "2.2.2.2", "3.3.3.3", "::1"]
        .map(|d| d.parse().unwrap())
        .to_vec();
    assert_eq!(a.dns, Nameservers::List(dns));
    assert_eq!(a.search, SearchDomains::None);
    // `-D none` also forgets --dns-forward and --dns-host.
    let a = run("--dns-forward 169.254.1.1 --dns-host 127.0.0.53 -D none -D 9.9.9.9");
    assert_eq!((a.dns_forward4, a.dns_host4), (None, None));
    assert_eq!(a.dns, Nameservers::List(vec!["9.9.9.9".parse().unwrap()]));
    assert_eq!(run("--trace -d").log_level, LogLevel::Trace);
    assert_eq!(run("--trace -q -d").log_level, LogLevel::Debug);
    assert_eq!(run("-d -q").log_level, LogLevel::Quiet);
    assert_eq!(run("-46").ip_versions, IpVersions::V6Only);
    let a = run("--map-host-loopback 169.254.1.3 --map-host-loopback none");
    assert_eq!((a.map_host_loopback4, a.no_map_gw), (None, true));
    let a = run("-t none -t 80 -m 0 --config-net --no-copy-routes");
    assert_eq!(
        a.tcp,
        Forwards::Given(vec![spec(None, ranges(&[(80, 80, 80)]))])
    );
    assert_eq!(a.mtu, Some(0));
    assert_eq!(a.warnings, ["--no-copy-routes will be dropped soon"]);
}

#[test]
fn port_specs_are_checked_after_the_other_options() {
    // pasta reads -t/-u/-T/-U in a second pass, so a later bad value of
    // another option is reported first.
    assert_eq!(error("-t 80x -m abc"), "Invalid MTU: abc");
    assert_eq!(error("-t 80x"), "Invalid port specifier '80x'");
    // Within a spec, pasta checks each range before refusing what is left
    // over: `0x50` reads as port 0 followed by `x50`.
    assert_eq!(
        error("-t 0x50"),
        "Forwarding rule attempts to map from port 0"
    );
    assert_eq!(error("-t 0,x"), "Invalid port specifier '0,x'");
    assert_eq!(
        error("-T 127.0.0.1/80"),
        "Listening address not allowed for -T 127.0.0.1/80"
    );
}

#[test]
fn non_utf8_values_are_refused_not_panicked_on() {
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(vec![b'8', 0xff]);
    for option in ["-t", "-m", "-a", "-D", "--netns-x", "-I"] {
        let args = vec![OsString::from(option), bad.clone()];
        assert!(parse(ARGV0, &args).is_err(), "{option}");
    }
    let args = vec![OsString::from("--netns"), bad.clone()];
    assert!(matches!(parse(ARGV0, &args), Ok(Parsed::Run(_))));
    let args = vec![OsString::from_vec(vec![b'-', 0xff])];
    assert!(matches!(
        parse(ARGV0, &args),
        Err(CliError::InvalidOption { .. })
    ));
}
