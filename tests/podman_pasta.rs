//! Rootless podman with its default network, pasta, finding netferry as
//! `pasta`: podman 5.8 (Debian forky's, whose pasta command line is
//! Podman 6's) and podman 5.4 (Debian trixie's), each run inside its
//! Debian tree as that tree's user (`common::podman::InTree`), in a host
//! namespace the test makes (198.51.100.1/24 with a default route through
//! the "remote" namespace at 198.51.100.2, dnsmasq on its loopback as the
//! resolver).
//!
//! containers.conf names a directory of the test's first in `[engine]
//! helper_binaries_dir`, where podman looks for `pasta` before the
//! tree's own /usr/bin (`FindHelperBinary`). The `pasta` there is a
//! script that logs its arguments and execs netferry by a link named
//! `pasta` (netferry picks its front end by that name), or the tree's
//! real pasta. Every case runs twice, netferry then the real pasta,
//! which shows the test checks what podman's users get; where the two
//! differ (what a client on the host's loopback looks like inside), the
//! case says so and pins each. podman 5.4 and 5.8 pass pasta the same
//! argv here. Besides the default network, podman 5.8's rootless bridge
//! networks (netavark) run on pasta too; `--network pasta:-T,...` waits
//! for netferry's -T.

mod common;

use std::fs;
use std::net::UdpSocket;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::podman::{
    FORKY, HOST_WEB_PORT, HTTPD, IMAGE, InTree, MNT, Run, TRIXIE, Tree, assert_sees_client,
    host_web, text,
};
use common::{HOST_ADDR, KillOnDrop, REMOTE_ADDR, in_netns, wait_until};

/// One podman test at a time: they share the user's pause process.
static PODMAN: Mutex<()> = Mutex::new(());

/// The address the test's DNS server gives probe.netferry.test.
const ANSWER: &str = "192.0.2.77";

/// A web server on all the host's addresses, for host.containers.internal.
const HOST_PORT: u16 = 9000;

/// What podman finds as `pasta`.
#[derive(Clone, Copy, Debug)]
enum Pasta {
    Netferry,
    /// The tree's own /usr/bin/pasta.
    Real,
}

const BOTH: [Pasta; 2] = [Pasta::Netferry, Pasta::Real];

/// podman 5.8's argv for `run -p 8080:80 -p 127.0.0.1:8081:80 -p
/// 5353:5353/udp` (`createPastaArgs`, unchanged through Podman 6.0), the
/// namespace path written as `<netns>`: options from containers.conf and
/// `--network pasta:...` first (none here), then the ports, each a range,
/// `--dns-forward`, a `none` for each direction not given, and the
/// address map for host.containers.internal last. podman groups the
/// mappings by host address in a Go map, so their order changes from run
/// to run: [`PodmanPasta::argvs`] sorts them (`-t 127.0.0.1/...` first).
const ARGV_58: &str = "--config-net -t 127.0.0.1/8081-8081:80-80 -t 8080-8080:80-80 \
     -u 5353-5353:5353-5353 --dns-forward 169.254.1.1 -T none -U none --no-map-gw --quiet \
     --netns <netns> --map-guest-addr 169.254.1.2";

/// podman 5.8's argv for a run without ports.
const ARGV_58_NO_PORTS: &str = "--config-net --dns-forward 169.254.1.1 -t none -u none \
     -T none -U none --no-map-gw --quiet --netns <netns> --map-guest-addr 169.254.1.2";

/// podman 5.4's argv for the same runs.
const ARGV_54: &str = ARGV_58;
const ARGV_54_NO_PORTS: &str = ARGV_58_NO_PORTS;

struct PodmanPasta {
    t: InTree,
    pasta: Pasta,
    _dns: KillOnDrop,
}

impl PodmanPasta {
    /// None only when .ci/run could not reach the Debian archive to
    /// build the tree (a failure under CI: [`common::skip_or_fail`]).
    fn new(tree: &'static Tree, pasta: Pasta) -> Option<Self> {
        let t = InTree::new(tree, common::pasta::host_net(), "podman-pasta")?;
        let exec = match pasta {
            Pasta::Netferry => {
                fs::copy(common::netferry_bin(), t.dir.path("netferry")).unwrap();
                fs::create_dir(t.dir.path("bin")).unwrap();
                symlink(format!("{MNT}/netferry"), t.dir.path("bin/pasta")).unwrap();
                format!("{MNT}/bin/pasta")
            }
            Pasta::Real => "/usr/bin/pasta".to_string(),
        };
        fs::create_dir(t.dir.path("helpers")).unwrap();
        let wrapper = t.dir.path("helpers/pasta");
        fs::write(
            &wrapper,
            format!("#!/bin/sh\necho \"$@\" >>{MNT}/argv.log\nexec {exec} \"$@\"\n"),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        // The tree's own helper directories stay listed, for conmon's
        // catatonit, rootlessport and netavark.
        fs::write(
            t.dir.path("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nhelper_binaries_dir = [\"{MNT}/helpers\", \
                 \"/usr/libexec/podman\", \"/usr/lib/podman\"]\n"
            ),
        )
        .unwrap();
        let dns = common::dns_server(&t.net, "127.0.0.1", &[ANSWER]);
        t.import_image(&t.dir.0, |tar| t.inside(tar));
        Some(PodmanPasta {
            t,
            pasta,
            _dns: dns,
        })
    }

    /// How podman ran pasta so far, with the namespace path written as
    /// `<netns>`, a pid file's as `<pid>`, and the run of port mappings (`-t`/`-u` other than
    /// `none`) sorted, since podman's order of them is not stable.
    fn argvs(&self) -> Vec<String> {
        let log = fs::read_to_string(self.t.dir.path("argv.log")).unwrap_or_default();
        log.lines()
            .map(|l| {
                let mut words: Vec<&str> = l.split(' ').collect();
                let runtime = format!("/run/user/{}/", self.t.tree.uid);
                for i in 1..words.len() {
                    for (flag, name) in [("--netns", "<netns>"), ("--pid", "<pid>")] {
                        if words[i - 1] == flag {
                            assert!(words[i].starts_with(&runtime), "{flag} {}", words[i]);
                            words[i] = name;
                        }
                    }
                }
                let is_mapping =
                    |pair: &[&str]| matches!(pair[0], "-t" | "-u") && pair[1] != "none";
                let Some(start) =
                    (0..words.len().saturating_sub(1)).find(|&i| is_mapping(&words[i..i + 2]))
                else {
                    return words.join(" ");
                };
                let mut pairs: Vec<[&str; 2]> = words[start..]
                    .chunks(2)
                    .take_while(|pair| pair.len() == 2 && is_mapping(pair))
                    .map(|pair| [pair[0], pair[1]])
                    .collect();
                let end = start + 2 * pairs.len();
                pairs.sort();
                let sorted = pairs.concat();
                words.splice(start..end, sorted);
                words.join(" ")
            })
            .collect()
    }

    /// A web server on all the host's addresses, port [`HOST_PORT`],
    /// saying "host here": what host.containers.internal should reach.
    fn host_server(&self) -> KillOnDrop {
        let www = self.t.dir.path("www-all");
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("index.html"), "host here\n").unwrap();
        KillOnDrop(
            (self.t.net)
                .host_cmd(&["busybox", "httpd", "-f", "-p", &HOST_PORT.to_string()])
                .arg("-h")
                .arg(&www)
                .spawn()
                .unwrap(),
        )
    }

    /// pasta processes (netferry's or the real one's) still running.
    fn pastas(&self) -> Vec<String> {
        self.t
            .processes()
            .into_iter()
            .filter(|c| c.starts_with("pasta"))
            .collect()
    }
}

/// Run from inside a container: its addresses, routes and links, its
/// resolv.conf and a lookup through it, and a fetch from
/// host.containers.internal at the address /etc/hosts gives it (the
/// image's static busybox cannot read /etc/hosts itself: glibc's NSS
/// would load libraries the image does not have; and its wget crashes
/// with -T).
const PROBE: &str = "ip -4 addr; ip -4 route; ip link; cat /etc/resolv.conf; \
    nslookup probe.netferry.test; set -- $(grep host.containers.internal /etc/hosts); \
    echo \"hosts: $1 $2\"; \
    printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $1 9000 | grep 'host here' || echo HOST-FAILED";

#[test]
fn podman_58_default_network_gives_the_hosts_address_dns_and_the_host() {
    each(&FORKY, |p| probe_session(p, ARGV_58_NO_PORTS));
}

#[test]
fn podman_58_published_ports_serve_host_and_remote_clients_and_come_back_at_once() {
    each(&FORKY, |p| ports_session(p, ARGV_58));
}

#[test]
fn podman_54_default_network_gives_the_hosts_address_dns_and_the_host() {
    each(&TRIXIE, |p| probe_session(p, ARGV_54_NO_PORTS));
}

#[test]
fn podman_54_published_ports_serve_host_and_remote_clients_and_come_back_at_once() {
    each(&TRIXIE, |p| ports_session(p, ARGV_54));
}

/// `session` with netferry as pasta, then with the real pasta.
fn each(tree: &'static Tree, session: impl Fn(&PodmanPasta)) {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    for pasta in BOTH {
        eprintln!("== {pasta:?} in {}", tree.root);
        let Some(p) = PodmanPasta::new(tree, pasta) else {
            return;
        };
        session(&p);
    }
}

fn probe_session(p: &PodmanPasta, argv: &str) {
    let net = &p.t.net;
    let _host_server = p.host_server();
    let out = p.t.ok(&["run", "--rm", IMAGE, "sh", "-c", PROBE]);
    let why = format!("{:?}: {out}", p.pasta);
    // The host's address and prefix on an interface named after the
    // host's, with an MTU of 65520, and the host's default route.
    let link = out
        .lines()
        .find(|l| l.contains(&format!(": {}:", net.host_veth)))
        .unwrap_or_else(|| panic!("no {} in the container: {why}", net.host_veth));
    assert!(link.contains("mtu 65520"), "{why}");
    assert!(out.contains(&format!("inet {HOST_ADDR}/24")), "{why}");
    assert!(
        out.contains(&format!("default via {REMOTE_ADDR} dev {}", net.host_veth)),
        "{why}"
    );
    // podman's resolv.conf names the forward address first, and a lookup
    // through it is answered by the host's resolver.
    let first_ns = out.lines().find(|l| l.starts_with("nameserver"));
    assert_eq!(first_ns, Some("nameserver 169.254.1.1"), "{why}");
    assert!(out.contains(&format!("Address: {ANSWER}")), "{why}");
    // host.containers.internal is the address pasta maps to the host.
    assert!(
        out.contains("hosts: 169.254.1.2 host.containers.internal"),
        "{why}"
    );
    assert!(out.contains("host here"), "{why}");
    assert_eq!(p.argvs(), [argv], "{:?}", p.pasta);
    assert!(
        wait_until(Duration::from_secs(10), || p.pastas().is_empty()),
        "{:?} left running after --rm: {:?}",
        p.pasta,
        p.pastas()
    );
}

/// A UDP service inside a container's network namespace, answering each
/// datagram with the address it came from; stops on drop.
struct UdpWho(Arc<AtomicBool>);

impl UdpWho {
    fn start(netns: &str, port: u16) -> Self {
        let sock = in_netns(netns, move || UdpSocket::bind(("0.0.0.0", port)).unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !done.load(Ordering::Relaxed) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("udp from {}", from.ip()).as_bytes(), from);
                }
            }
        });
        UdpWho(stop)
    }
}

impl Drop for UdpWho {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A datagram to `addr:port` from the namespace at `netns`, and the
/// answer, within a few tries.
fn udp_ask(netns: &str, addr: &'static str, port: u16) -> Option<String> {
    in_netns(netns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..10 {
            let _ = sock.send_to(b"who", (addr, port));
            if let Ok(n) = sock.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    })
}

/// The page at /cgi-bin/ip through `url` from the host namespace, if any.
fn fetch_from_host(p: &PodmanPasta, url: &str) -> Option<String> {
    let out =
        p.t.net
            .host_cmd(&["curl", "-s", "-m", "3", url])
            .output()
            .unwrap();
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !got.is_empty()).then_some(got)
}

const PORTS: [&str; 6] = [
    "-p",
    "8080:80",
    "-p",
    "127.0.0.1:8081:80",
    "-p",
    "5353:5353/udp",
];

/// `podman run -d` the web server with PORTS as `name`, and the UDP
/// service in its namespace.
fn start_web(p: &PodmanPasta, name: &str) -> UdpWho {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(&PORTS);
    args.push(IMAGE);
    args.extend_from_slice(&HTTPD);
    p.t.ok(&args);
    let pid = p.t.ok(&["inspect", "-f", "{{.State.Pid}}", name]);
    UdpWho::start(&format!("/proc/{}/ns/net", pid.trim()), 5353)
}

fn ports_session(p: &PodmanPasta, argv: &str) {
    let net = &p.t.net;
    let udp = start_web(p, "nf-web");
    assert_eq!(p.argvs(), [argv], "{:?}", p.pasta);
    assert_eq!(p.pastas().len(), 1, "{:?}", p.pasta);

    // A remote client's own address reaches the service inside, over
    // TCP and UDP.
    assert_sees_client(net, 8080);
    assert_eq!(
        udp_ask(&net.remote_path(), HOST_ADDR, 5353).as_deref(),
        Some(format!("udp from {REMOTE_ADDR}").as_str()),
        "{:?}",
        p.pasta
    );
    // The host's own clients, on its loopback: the -p 8080, the
    // loopback-only 8081 and UDP. Both splice a loopback client's TCP
    // connection over the container's lo to the container's own address
    // (pasta's fwd_nat_from_host), so it seems to come from that
    // address. UDP still differs: the real pasta splices it too, while
    // netferry carries it through its tap and does what pasta's tap path
    // does with --no-map-gw, giving it the gateway's address (pasta's
    // our_tap_addr), here the remote side's 198.51.100.2.
    for port in [8080, 8081] {
        assert_eq!(
            fetch_from_host(p, &format!("http://127.0.0.1:{port}/cgi-bin/ip")).as_deref(),
            Some(format!("[::ffff:{HOST_ADDR}]").as_str()),
            "{:?}: 127.0.0.1:{port} from the host",
            p.pasta
        );
    }
    let udp_loopback_client = match p.pasta {
        Pasta::Netferry => REMOTE_ADDR,
        Pasta::Real => HOST_ADDR,
    };
    assert_eq!(
        udp_ask(&net.host_path(), "127.0.0.1", 5353).as_deref(),
        Some(format!("udp from {udp_loopback_client}").as_str()),
        "{:?}: UDP from the host",
        p.pasta
    );
    // 8081 is bound to the host's loopback only.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &net.remote, "curl", "-s", "-m", "3"])
        .arg(format!("http://{HOST_ADDR}:8081/"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "8081 answered a remote client");
    drop(udp);

    // podman rm -f deletes the namespace file and pasta goes; a new
    // container on the same ports, started at once, serves them.
    p.t.ok(&["rm", "-f", "-t", "0", "nf-web"]);
    let _udp = start_web(p, "nf-web2");
    assert_eq!(p.argvs(), [argv, argv], "{:?}", p.pasta);
    assert_sees_client(net, 8080);
    p.t.ok(&["rm", "-f", "-t", "0", "nf-web2"]);
    assert!(
        wait_until(Duration::from_secs(10), || p.pastas().is_empty()),
        "{:?} left running after podman rm -f: {:?}",
        p.pasta,
        p.pastas()
    );
    // Only podman's pause process stays.
    assert!(
        wait_until(Duration::from_secs(10), || p.t.processes() == ["catatonit"]),
        "left running after podman rm -f: {:?}",
        p.t.processes()
    );
}

/// `--network pasta:-T,PORT`: the container's 127.0.0.1:PORT is the
/// host's loopback service.
#[test]
fn podman_58_pasta_dash_t_reaches_a_host_loopback_service() {
    each(&FORKY, |p| {
        let _web = host_web(&p.t.net, &p.t.dir.0);
        let network = format!("pasta:-T,{HOST_WEB_PORT}");
        let fetch = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 127.0.0.1 {HOST_WEB_PORT} \
             || echo FETCH-FAILED"
        );
        let out = p.t.podman(&[
            "run",
            "--rm",
            "--network",
            &network,
            IMAGE,
            "sh",
            "-c",
            &fetch,
        ]);
        assert!(
            text(&out).contains("hello from the host"),
            "{:?}: {}",
            p.pasta,
            text(&out)
        );
    });
}

/// podman 5.8's argv for the rootless network namespace behind its bridge
/// networks (`rootlessnetns.setupPasta`): no ports (rootlessport
/// publishes them), and a pid file, whose pid podman ends with SIGTERM.
const ARGV_58_BRIDGE: &str = "--config-net --pid <pid> --dns-forward 169.254.1.1 -t none -u none \
     -T none -U none --no-map-gw --quiet --netns <netns> --map-guest-addr 169.254.1.2";

/// A rootless bridge network (`podman network create`: netavark with
/// nftables in a rootless network namespace that pasta connects, ports
/// published by rootlessport): a container on it reaches the host
/// through host.containers.internal, resolves names through aardvark-dns
/// and pasta's DNS forward, serves a published port to a remote
/// client, and pasta goes with the last container.
#[test]
fn podman_58_bridge_network_runs_on_pasta_and_publishes_ports() {
    each(&FORKY, |p| {
        let net = &p.t.net;
        let _host_server = p.host_server();
        p.t.ok(&["network", "create", "nfnet"]);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            "nf-br",
            "--network",
            "nfnet",
            "-p",
            "8082:80",
            IMAGE,
        ];
        args.extend_from_slice(&HTTPD);
        p.t.ok(&args);
        assert_eq!(p.argvs(), [ARGV_58_BRIDGE], "{:?}", p.pasta);
        assert_eq!(p.pastas().len(), 1, "{:?}", p.pasta);
        // Names resolve through aardvark-dns on the bridge, which asks
        // the rootless namespace's resolver, pasta's 169.254.1.1.
        let host = "nslookup probe.netferry.test; set -- $(grep host.containers.internal /etc/hosts); echo \"hosts: $1\"; \
            printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $1 9000 | grep 'host here' \
            || echo HOST-FAILED";
        let out = p.t.ok(&["exec", "nf-br", "sh", "-c", host]);
        assert!(
            out.contains(&format!("Address: {ANSWER}")),
            "{:?}: {out}",
            p.pasta
        );
        assert!(out.contains("hosts: 169.254.1.2"), "{:?}: {out}", p.pasta);
        assert!(out.contains("host here"), "{:?}: {out}", p.pasta);
        // rootlessport relays the connection, so the server sees an
        // address on the bridge (10.89.0.0/24, podman's first network),
        // not the client's (podman#8193).
        let seen = common::podman::fetch_from_remote(net, 8082);
        assert!(seen.starts_with("10.89.0."), "{:?}: {seen}", p.pasta);
        p.t.ok(&["rm", "-f", "-t", "0", "nf-br"]);
        assert!(
            wait_until(Duration::from_secs(10), || p.pastas().is_empty()),
            "{:?} left running after the last container on the bridge: {:?}",
            p.pasta,
            p.pastas()
        );
    });
}

/// A tree that was never built fails the test, under CI or not: only a
/// tree the Debian archive could not give may be skipped, and under CI
/// even that fails (`common::skip_or_fail`, tests/skip_policy.rs).
#[test]
fn a_tree_not_built_fails_the_test() {
    let dir = common::TempDir::new("no-tree");
    let root = dir.path("tree").display().to_string();
    let tree = Tree {
        root: Box::leak(root.into_boxed_str()),
        stamp: ".complete-v1",
        script: ".ci/none-rootfs.sh",
        user: "nobody",
        uid: 65534,
    };
    let built = std::panic::catch_unwind(|| tree.ready());
    assert!(
        built.is_err(),
        "a missing tree was taken as ready or skipped"
    );
}
