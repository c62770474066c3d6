//! IPv6 through netferry (`-6`) on real namespaces: the guest configures
//! itself by SLAAC from netferry's router advertisements, then reaches the
//! host's ::1 through fd00::2, a remote IPv6 network, DNS through fd00::3,
//! and is reached through an IPv6 port forward; large datagrams cross an
//! MTU of 1500 in fragments in both families.
//!
//! The remote network is 2001:db8:1::/64 (a documentation prefix) on the
//! test's own veth; nothing can leave the machine.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Namespace, Netferry, TempDir, TestNet, serve_from, wait_until};

const HOST6: &str = "2001:db8:1::1";
const REMOTE6: &str = "2001:db8:1::2";
const IO: Duration = Duration::from_secs(10);

struct Setup {
    net: TestNet,
    ns: Namespace,
    nf: Netferry,
    /// The guest's SLAAC address.
    guest6: String,
}

/// A test network with IPv6 on the veth, a guest, and netferry `-6 -c`,
/// waited for until the guest has its global address.
fn setup(extra: &[&str]) -> Setup {
    setup_with(|_| {}, extra)
}

/// The same, with `prepare` run on the test network before netferry
/// starts (addresses it must find at start-up).
fn setup_with(prepare: impl FnOnce(&TestNet), extra: &[&str]) -> Setup {
    let net = TestNet::new();
    net.add_ipv6(HOST6, REMOTE6);
    prepare(&net);
    let ns = Namespace::new();
    let mut args = vec!["-6"];
    args.extend_from_slice(extra);
    let nf = serve_from(Some(&net), &ns, &args);
    let mut guest6 = String::new();
    let configured = wait_until(Duration::from_secs(15), || {
        let v = ns.ip_json(&["-6", "addr", "show", "dev", "tap0", "scope", "global"]);
        let addr = v[0]["addr_info"].as_array().and_then(|a| {
            a.iter()
                .find(|i| i["tentative"].as_bool() != Some(true))
                .and_then(|i| i["local"].as_str().map(str::to_string))
        });
        match addr {
            Some(a) => {
                guest6 = a;
                true
            }
            None => false,
        }
    });
    assert!(configured, "no SLAAC address on tap0\n{}", nf.output());
    Setup {
        net,
        ns,
        nf,
        guest6,
    }
}

impl Setup {
    fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().unwrap();
        self.ns.in_ns(move || common::connect(addr, IO))
    }

    fn udp(&self, bind: &str) -> UdpSocket {
        let bind = bind.to_string();
        self.ns.in_ns(move || {
            let s = UdpSocket::bind(bind).unwrap();
            s.set_read_timeout(Some(IO)).unwrap();
            s
        })
    }

    /// A UDP socket in the host's namespace, as `udp` makes the guest's.
    fn host_udp(&self, bind: &'static str) -> UdpSocket {
        let s = self.net.in_host(move || UdpSocket::bind(bind).unwrap());
        s.set_read_timeout(Some(IO)).unwrap();
        s
    }
}

#[test]
fn slaac_address_default_route_and_rdnss_from_router_advertisements() {
    let s = setup(&[]);
    assert!(s.guest6.starts_with("fd00::"), "{}", s.guest6);
    let routes = s.ns.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "fe80::2", "{routes}");
    assert_eq!(routes[0]["dev"], "tap0");
    // A real client reads the RA: prefix, MTU and the DNS address.
    let out = s.ns.ok(&["rdisc6", "-1", "-r", "3", "-w", "2000", "tap0"]);
    assert!(out.contains("fd00::/64"), "{out}");
    assert!(
        out.contains("Recursive DNS server") && out.contains("fd00::3"),
        "{out}"
    );
    assert!(out.contains("MTU") && out.contains("1500"), "{out}");
    assert!(out.contains("from fe80::2"), "{out}");
}

#[test]
fn ping6_of_gateway_dns_and_the_remote() {
    let s = setup(&[]);
    s.net
        .host_ok(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    for dst in ["fd00::2", "fd00::3", REMOTE6] {
        let out = s.ns.run(&["busybox", "ping6", "-c", "1", "-W", "3", dst]);
        assert!(
            out.status.success(),
            "ping6 {dst} failed\n{}",
            s.nf.output()
        );
    }
}

#[test]
fn tcp_and_udp_reach_the_hosts_ipv6_loopback_through_fd00_2() {
    let s = setup(&[]);
    let listener = s.net.in_host(|| TcpListener::bind("[::1]:6101").unwrap());
    let server = std::thread::spawn(move || {
        let (mut c, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(b"pong!").unwrap();
        (buf, peer)
    });
    let mut c = s.connect("[fd00::2]:6101").expect("connect to fd00::2");
    c.write_all(b"ping!").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong!");
    let (got, peer) = server.join().unwrap();
    assert_eq!(&got, b"ping!");
    assert!(peer.ip().is_loopback());

    let host = s.host_udp("[::1]:6102");
    let guest = s.udp("[::]:0");
    guest.send_to(b"udp6", "[fd00::2]:6102").unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = host.recv_from(&mut buf).expect("no datagram on ::1");
    host.send_to(&buf[..n], from).unwrap();
    let (n, from) = guest.recv_from(&mut buf).expect("no reply");
    assert_eq!(&buf[..n], b"udp6");
    assert_eq!(from, "[fd00::2]:6102".parse().unwrap());
}

#[test]
fn disabled_host_loopback_makes_fd00_2_unreachable() {
    let s = setup(&["--disable-host-loopback"]);
    let _l = s.net.in_host(|| TcpListener::bind("[::1]:6103").unwrap());
    let err = s.connect("[fd00::2]:6103").expect_err("reached the host");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
}

#[test]
fn tcp_and_udp_reach_a_remote_ipv6_host_from_the_hosts_address() {
    let s = setup(&[]);
    let listener = s.net.in_remote(|| TcpListener::bind("[::]:6104").unwrap());
    let server = std::thread::spawn(move || listener.accept().unwrap().1);
    let _c = s.connect(&format!("[{REMOTE6}]:6104")).expect("connect");
    assert_eq!(server.join().unwrap().ip().to_string(), HOST6);

    let remote = s.net.in_remote(|| UdpSocket::bind("[::]:6105").unwrap());
    remote.set_read_timeout(Some(IO)).unwrap();
    s.udp("[::]:0")
        .send_to(b"hi", format!("[{REMOTE6}]:6105"))
        .unwrap();
    let mut buf = [0u8; 8];
    let (_, from) = remote.recv_from(&mut buf).expect("no datagram");
    assert_eq!(from.ip().to_string(), HOST6);
}

#[test]
fn outbound_addr6_is_the_source_for_tcp_and_udp() {
    let net_probe = "2001:db8:1::11";
    let flag = format!("--outbound-addr6={net_probe}");
    let s = setup_with(
        |net| {
            let cidr = format!("{net_probe}/64");
            let args = [
                "-n",
                &net.host,
                "addr",
                "add",
                &cidr,
                "dev",
                &net.host_veth,
                "nodad",
            ];
            common::run_ok("ip", &args);
        },
        &[&flag],
    );
    let listener = s.net.in_remote(|| TcpListener::bind("[::]:6106").unwrap());
    let server = std::thread::spawn(move || listener.accept().unwrap().1);
    let _c = s.connect(&format!("[{REMOTE6}]:6106")).expect("connect");
    assert_eq!(server.join().unwrap().ip().to_string(), net_probe);
    let remote = s.net.in_remote(|| UdpSocket::bind("[::]:6107").unwrap());
    remote.set_read_timeout(Some(IO)).unwrap();
    s.udp("[::]:0")
        .send_to(b"hi", format!("[{REMOTE6}]:6107"))
        .unwrap();
    let mut buf = [0u8; 8];
    let (_, from) = remote.recv_from(&mut buf).expect("no datagram");
    assert_eq!(from.ip().to_string(), net_probe, "UDP must use it too");
}

#[test]
fn dns_through_fd00_3_answers_a_and_aaaa_over_udp_and_tcp() {
    let s = setup(&[]);
    // The test's resolver on the host's loopback (TestNet's resolv.conf
    // names 127.0.0.1): never the machine's own.
    let _dns = common::dns_server(&s.net, "127.0.0.1", &["198.51.100.2", "2001:db8:1::2"]);
    for (kind, want) in [("A", "198.51.100.2"), ("AAAA", "2001:db8:1::2")] {
        for transport in ["+notcp", "+tcp"] {
            let ok = wait_until(Duration::from_secs(5), || {
                let out = s.ns.run(&[
                    "dig",
                    "+short",
                    "+tries=1",
                    "+time=2",
                    transport,
                    "@fd00::3",
                    "probe.netferry.test",
                    kind,
                ]);
                String::from_utf8_lossy(&out.stdout).trim() == want
            });
            assert!(ok, "{kind} {transport} through fd00::3\n{}", s.nf.output());
        }
    }
}

fn api(sock: &std::path::Path, req: &str) -> String {
    let mut c = UnixStream::connect(sock).unwrap();
    c.write_all(req.as_bytes()).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn an_ipv6_forward_reaches_the_guest_over_ipv6_with_the_clients_address() {
    let dir = TempDir::new("api6");
    let sock = dir.path("api.sock");
    let sock_arg = format!("--api-socket={}", sock.display());
    let s = setup(&[&sock_arg]);
    let guest = s.ns.in_ns(|| TcpListener::bind("[::]:8080").unwrap());
    let server = std::thread::spawn(move || {
        let (mut c, peer) = guest.accept().unwrap();
        c.write_all(b"hello from the guest").unwrap();
        peer
    });
    let reply = api(
        &sock,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::","host_port":6180,"guest_addr":"","guest_port":8080}}"#,
    );
    assert_eq!(reply, r#"{"return":{"id":1}}"#);
    let mut c = s
        .net
        .in_remote(|| common::connect(format!("[{HOST6}]:6180").parse().unwrap(), IO))
        .expect("connect to the forward");
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from the guest");
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        REMOTE6,
        "the guest must see the client's address"
    );
}

#[test]
fn an_ipv6_client_reaches_a_guest_service_that_listens_on_ipv4_only() {
    // The service inside listens on 0.0.0.0 only, so the guest refuses
    // the forward's IPv6 clients over IPv6; they must come over IPv4, from
    // the gateway, as slirp4netns brings them, not get a reset.
    let dir = TempDir::new("api6v4");
    let sock = dir.path("api.sock");
    let sock_arg = format!("--api-socket={}", sock.display());
    let s = setup(&[&sock_arg]);
    let guest = s.ns.in_ns(|| TcpListener::bind("0.0.0.0:8081").unwrap());
    let server = std::thread::spawn(move || {
        let mut peers = Vec::new();
        for _ in 0..2 {
            let (mut c, peer) = guest.accept().unwrap();
            c.write_all(b"hello over ipv4").unwrap();
            peers.push(peer);
        }
        peers
    });
    let reply = api(
        &sock,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::","host_port":6181,"guest_addr":"","guest_port":8081}}"#,
    );
    assert_eq!(reply, r#"{"return":{"id":1}}"#);
    let from_loopback = s
        .net
        .in_host(|| common::connect("[::1]:6181".parse().unwrap(), IO));
    let from_remote = s
        .net
        .in_remote(|| common::connect(format!("[{HOST6}]:6181").parse().unwrap(), IO));
    for (who, c) in [("::1", from_loopback), (REMOTE6, from_remote)] {
        let mut c = c.unwrap_or_else(|e| panic!("{who}: connect: {e}"));
        let mut got = String::new();
        let r = c.read_to_string(&mut got);
        assert!(
            r.is_ok() && got == "hello over ipv4",
            "{who}: {r:?} {got:?}\n{}",
            s.nf.output()
        );
    }
    let peers = server.join().unwrap();
    for peer in peers {
        assert_eq!(peer.ip().to_string(), "10.0.2.2", "seen as the gateway");
    }
}

#[test]
fn a_4000_byte_udp_reply_reaches_a_guest_at_mtu_1500_in_both_families() {
    let s = setup(&[]);
    for (bind, dst, guest_bind) in [
        ("127.0.0.1:6201", "10.0.2.2:6201", "0.0.0.0:0"),
        ("[::1]:6202", "[fd00::2]:6202", "[::]:0"),
    ] {
        let host = s.net.in_host(move || UdpSocket::bind(bind).unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            if let Ok((_, peer)) = host.recv_from(&mut buf) {
                let big = common::pattern(4000, 7);
                let _ = host.send_to(&big, peer);
            }
        });
        let guest = s.udp(guest_bind);
        guest.send_to(b"big please", dst).unwrap();
        let mut buf = vec![0u8; 8192];
        let (n, _) = guest
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{dst}: {e}\n{}", s.nf.output()));
        assert_eq!(n, 4000, "{dst}");
        assert_eq!(buf[..n], common::pattern(4000, 7)[..]);
    }
}

#[test]
fn a_fragmented_guest_datagram_arrives_whole_in_both_families() {
    let s = setup(&[]);
    for (bind, dst, guest_bind) in [
        ("127.0.0.1:6203", "10.0.2.2:6203", "0.0.0.0:0"),
        ("[::1]:6204", "[fd00::2]:6204", "[::]:0"),
    ] {
        let host = s.host_udp(bind);
        let big = common::pattern(5000, 9);
        // The guest's kernel fragments it at the tap's MTU of 1500.
        s.udp(guest_bind).send_to(&big, dst).unwrap();
        let mut buf = vec![0u8; 8192];
        let (n, _) = host
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{dst}: {e}\n{}", s.nf.output()));
        assert_eq!(buf[..n], big[..], "{dst}");
    }
}

#[test]
fn a_segmented_udp_send_arrives_as_its_datagrams_in_both_families() {
    use nix::sys::socket::{setsockopt, sockopt::UdpGsoSegment};
    let s = setup(&[]);
    // On Linux 6.2+ the send crosses the tap as one train, which netferry
    // cuts (tests/offload.rs counts the frames); elsewhere the guest's
    // kernel cuts it. Either way the host gets the datagrams as sent.
    for (bind, dst, guest_bind) in [
        ("127.0.0.1:6205", "10.0.2.2:6205", "0.0.0.0:0"),
        ("[::1]:6206", "[fd00::2]:6206", "[::]:0"),
    ] {
        let host = s.host_udp(bind);
        let guest = s.udp(guest_bind);
        setsockopt(&guest, UdpGsoSegment, &1000).unwrap();
        let sent: Vec<Vec<u8>> = (0..11)
            .map(|i| common::pattern(if i == 10 { 300 } else { 1000 }, i))
            .collect();
        guest.send_to(&sent.concat(), dst).unwrap();
        let mut buf = vec![0u8; 2048];
        for (i, want) in sent.iter().enumerate() {
            let n = host
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{dst}: datagram {i}: {e}\n{}", s.nf.output()));
            assert_eq!(buf[..n], want[..], "{dst}: datagram {i}");
        }
    }
}
