//! netferry on real namespaces: the tap, `-c`, the ready and exit fds,
//! signals, ping to the virtual hosts and DHCP with busybox udhcpc.
//! Nothing here sends a packet beyond the test's own namespace.

mod common;

use std::time::Duration;

use common::{BindMount, NOBODY, Namespace, Netferry, Options, TempDir, serve};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn addr_info(ns: &Namespace, dev: &str) -> serde_json::Value {
    ns.ip_json(&["addr", "show", "dev", dev])[0].clone()
}

fn ipv4_addrs(link: &serde_json::Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn default_route(ns: &Namespace) -> serde_json::Value {
    ns.ip_json(&["route", "show", "default"])[0].clone()
}

#[test]
fn configure_sets_address_route_mtu_and_mac() {
    let ns = Namespace::new();
    let _nf = serve(&ns, &["--mtu=65520", "--macaddress=02:42:de:ad:be:ef"]);
    let tap = addr_info(&ns, "tap0");
    assert_eq!(ipv4_addrs(&tap), ["10.0.2.100/24"]);
    assert_eq!(tap["mtu"], 65520);
    assert_eq!(tap["address"], "02:42:de:ad:be:ef");
    assert!(tap["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let lo = addr_info(&ns, "lo");
    assert!(lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let route = default_route(&ns);
    assert_eq!(route["gateway"], "10.0.2.2");
    assert_eq!(route["dev"], "tap0");
}

#[test]
fn ready_fd_comes_after_the_tap_is_configured_and_banner_names_the_network() {
    let ns = Namespace::new();
    let nf = serve(&ns, &[]);
    // wait_ready returned, so the address must already be there.
    assert_eq!(ipv4_addrs(&addr_info(&ns, "tap0")), ["10.0.2.100/24"]);
    let banner = nf.stdout();
    for line in [
        "* MTU:             1500",
        "* Network:         10.0.2.0",
        "* Netmask:         255.255.255.0",
        "* Gateway:         10.0.2.2",
        "* DNS:             10.0.2.3",
        "* DHCP begin:      10.0.2.15",
        "* DHCP end:        10.0.2.30",
        "* Recommended IP:  10.0.2.100",
    ] {
        assert!(banner.contains(line), "banner lacks {line:?}:\n{banner}");
    }
}

#[test]
fn gateway_and_dns_answer_ping() {
    let ns = Namespace::new();
    let nf = serve(&ns, &[]);
    assert!(ns.ping("10.0.2.2"), "gateway silent\n{}", nf.output());
    assert!(ns.ping("10.0.2.3"), "DNS address silent\n{}", nf.output());
}

#[test]
fn udhcpc_gets_the_first_pool_address() {
    let ns = Namespace::new();
    let nf = serve(&ns, &[]);
    ns.ok(&["ip", "addr", "flush", "dev", "tap0"]);
    let out = ns.run(&[
        "busybox",
        "udhcpc",
        "-i",
        "tap0",
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "udhcpc failed:\n{text}\n{}",
        nf.output()
    );
    assert!(
        text.contains("lease of 10.0.2.15 obtained from 10.0.2.2"),
        "{text}"
    );
    assert!(text.contains("lease time 86400"), "{text}");
}

#[test]
fn custom_cidr_moves_the_whole_network() {
    let ns = Namespace::new();
    let nf = serve(&ns, &["--cidr=192.168.77.0/24"]);
    assert_eq!(ipv4_addrs(&addr_info(&ns, "tap0")), ["192.168.77.100/24"]);
    assert_eq!(default_route(&ns)["gateway"], "192.168.77.2");
    assert!(ns.ping("192.168.77.2"), "{}", nf.output());
    assert!(ns.ping("192.168.77.3"), "{}", nf.output());
    assert!(nf.stdout().contains("* Gateway:         192.168.77.2"));
}

#[test]
fn exit_fd_hang_up_exits_0() {
    let ns = Namespace::new();
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["-c", &pid, "tap0"]);
    opts.exit_fd = true;
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    assert!(
        nf.wait_exit(Duration::from_millis(300)).is_none(),
        "left early"
    );
    nf.hang_up_exit_fd();
    let status = nf.wait_exit(Duration::from_secs(5)).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", nf.output());
}

#[test]
fn sigterm_and_sigint_end_netferry_by_that_signal_after_cleanup() {
    use std::os::unix::process::ExitStatusExt;
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let ns = Namespace::new();
        let mut nf = serve(&ns, &[]);
        kill(Pid::from_raw(nf.pid()), sig).unwrap();
        let status = nf.wait_exit(Duration::from_secs(5)).expect("still running");
        // As slirp4netns: a shell reports 143 for SIGTERM.
        assert_eq!(status.signal(), Some(sig as i32), "{sig}: {}", nf.output());
        assert!(
            nf.stderr().contains(&format!("received {sig}")),
            "{}",
            nf.output()
        );
    }
}

#[test]
fn deleting_the_tap_ends_netferry() {
    let ns = Namespace::new();
    let mut nf = serve(&ns, &[]);
    ns.ok(&["ip", "link", "del", "tap0"]);
    let status = nf
        .wait_exit(Duration::from_secs(5))
        .expect("netferry kept running without its tap");
    assert_eq!(status.code(), Some(0));
    assert!(
        nf.stderr().contains("tap device is gone"),
        "{}",
        nf.output()
    );
}

#[test]
fn netns_path_with_userns_path() {
    let ns = Namespace::new();
    let dir = TempDir::new("path");
    let pinned = BindMount::new(&ns.net_path(), &dir.path("netns"));
    let mut nf = Netferry::spawn(Options::args(&[
        "-c",
        "--netns-type=path",
        &format!("--userns-path={}", ns.user_path()),
        pinned.0.to_str().unwrap(),
        "tap0",
    ]));
    nf.wait_ready();
    assert_eq!(ipv4_addrs(&addr_info(&ns, "tap0")), ["10.0.2.100/24"]);
    assert!(ns.ping("10.0.2.2"), "{}", nf.output());
}

#[test]
fn attaches_to_a_tap_the_caller_created() {
    // rootlesskit's way: create and configure tap0 itself, then start the
    // helper without -c.
    let ns = Namespace::new();
    ns.ok(&["ip", "tuntap", "add", "name", "tap0", "mode", "tap"]);
    ns.ok(&["ip", "link", "set", "lo", "up"]);
    ns.ok(&["ip", "link", "set", "tap0", "up"]);
    ns.ok(&["ip", "addr", "add", "10.0.2.100/24", "dev", "tap0"]);
    ns.ok(&["ip", "route", "add", "default", "via", "10.0.2.2"]);
    let pid = ns.pid.to_string();
    let mut nf = Netferry::spawn(Options::args(&[&pid, "tap0"]));
    nf.wait_ready();
    assert!(ns.ping("10.0.2.2"), "{}", nf.output());
}

#[test]
fn runs_as_an_unprivileged_user() {
    let tun = std::fs::metadata("/dev/net/tun").expect("no /dev/net/tun");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        tun.permissions().mode() & 0o666,
        0o666,
        "/dev/net/tun must be mode 0666 for rootless use (.ci/run sets it)"
    );
    let ns = Namespace::new_as(NOBODY);
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["-c", &pid, "tap0"]);
    opts.uid = Some(NOBODY);
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    let status = std::fs::read_to_string(format!("/proc/{}/status", nf.pid())).unwrap();
    // Through setpriv, the pid we hold is netferry itself after exec.
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "netferry is not running as nobody:\n{status}"
    );
    assert_eq!(ipv4_addrs(&addr_info(&ns, "tap0")), ["10.0.2.100/24"]);
    assert!(ns.ping("10.0.2.2"), "{}", nf.output());
}

#[test]
fn adopts_an_inherited_tap_fd() {
    // A caller that opened the tap itself hands netferry the fd
    // (--netns-type=tapfd): here a few lines of Python inside the
    // namespace do TUNSETIFF and exec netferry with the fd inherited.
    let ns = Namespace::new();
    let script = "import fcntl, os, struct, sys\n\
        fd = os.open('/dev/net/tun', os.O_RDWR)\n\
        fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'tap0', 0x0002 | 0x1000))\n\
        os.set_inheritable(fd, True)\n\
        os.execv(sys.argv[1], sys.argv[1:] + [str(fd)])\n";
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["--netns-type=tapfd"]);
    opts.exec_via = [
        "nsenter", "-t", &pid, "-U", "-n", "--", "python3", "-c", script,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    ns.ok(&["ip", "link", "set", "tap0", "up"]);
    ns.ok(&["ip", "addr", "add", "10.0.2.100/24", "dev", "tap0"]);
    assert!(ns.ping("10.0.2.2"), "{}", nf.output());
    assert!(nf.stdout().contains("serving tap fd"), "{}", nf.output());
}

#[test]
fn open_file_limit_is_raised_to_the_hard_limit() {
    // Every guest flow holds a host socket; 1024 is soon too few. Start
    // netferry with a low soft limit, as a login session would.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(hard > 512, "hard limit {hard} leaves nothing to raise");
    let ns = Namespace::new();
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["-c", &pid, "tap0"]);
    opts.exec_via = [
        "unshare",
        "-n",
        "prlimit",
        &format!("--nofile=512:{hard}"),
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", nf.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(soft, hard, "soft limit not raised: {line}");
}
