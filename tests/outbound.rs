//! Outbound IPv4 through netferry: the guest's TCP, UDP, ping and DNS
//! reaching servers on the host's loopback and on a "remote" host.
//!
//! netferry runs inside a host namespace the test made (`TestNet`); its
//! loopback stands for the host's, and a veth to a remote namespace on
//! 198.51.100.0/24 stands for the internet. Nothing can leave the machine.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{HOST_ADDR, Namespace, Netferry, REMOTE_ADDR, TempDir, TestNet, pattern, serve_from};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

struct Setup {
    net: TestNet,
    ns: Namespace,
    nf: Netferry,
}

fn setup(extra: &[&str]) -> Setup {
    let net = TestNet::new();
    let ns = Namespace::new();
    let nf = serve_from(Some(&net), &ns, extra);
    Setup { net, ns, nf }
}

impl Setup {
    fn guest_connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().unwrap();
        self.ns.in_ns(move || common::connect(addr, IO_TIMEOUT))
    }

    fn guest_udp(&self) -> UdpSocket {
        self.ns.in_ns(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
    }
}

fn listen(addr: &str) -> TcpListener {
    TcpListener::bind(addr).unwrap()
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An echo server on `listener`: one thread per connection.
fn echo_tcp(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || common::echo_until_eof(conn));
        }
    });
}

fn echo_udp(sock: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    });
}

#[test]
fn tcp_20mb_guest_to_host_arrives_intact() {
    let s = setup(&["--mtu=65520"]);
    let dir = TempDir::new("up");
    let blob = pattern(20 << 20, 1);
    std::fs::write(dir.path("blob"), &blob).unwrap();
    let listener = s.net.in_host(|| listen("127.0.0.1:5001"));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    // A real client: ncat in the guest, sending the file.
    let st =
        s.ns.cmd(&["ncat", "--send-only", "10.0.2.2", "5001"])
            .stdin(std::fs::File::open(dir.path("blob")).unwrap())
            .status()
            .unwrap();
    assert!(st.success(), "ncat failed\n{}", s.nf.output());
    let got = server.join().unwrap();
    std::fs::write(dir.path("got"), &got).unwrap();
    assert_eq!(got.len(), blob.len());
    assert_eq!(sha256(&dir.path("got")), sha256(&dir.path("blob")));
}

#[test]
fn tcp_20mb_host_to_guest_arrives_intact() {
    let s = setup(&[]);
    let dir = TempDir::new("down");
    let blob = pattern(20 << 20, 2);
    std::fs::write(dir.path("blob"), &blob).unwrap();
    let listener = s.net.in_host(|| listen("127.0.0.1:5002"));
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&blob).unwrap();
    });
    let st =
        s.ns.cmd(&["ncat", "--recv-only", "10.0.2.2", "5002"])
            .stdout(std::fs::File::create(dir.path("got")).unwrap())
            .status()
            .unwrap();
    assert!(st.success(), "ncat failed\n{}", s.nf.output());
    assert_eq!(std::fs::metadata(dir.path("got")).unwrap().len(), 20 << 20);
    assert_eq!(sha256(&dir.path("got")), sha256(&dir.path("blob")));
}

#[test]
fn two_hundred_concurrent_connections_stay_intact() {
    let s = setup(&[]);
    echo_tcp(s.net.in_host(|| listen("127.0.0.1:5003")));
    // All 200 open at once, then each carries its own data both ways.
    let mut conns: Vec<TcpStream> = (0..200)
        .map(|i| {
            s.guest_connect("10.0.2.2:5003")
                .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", s.nf.output()))
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let data = pattern(32 * 1024, 100 + i as u32);
        c.write_all(&data).unwrap();
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).unwrap();
        assert!(back == data, "connection {i} corrupted");
    }
    drop(conns);
    // Finished flows are removed, not kept around.
    let nf_out = || s.nf.output();
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            let out = s.nf.stderr();
            out.matches(": done").count() >= 200
        }),
        "flows not retired\n{}",
        nf_out()
    );
}

#[test]
fn refused_connect_is_reported_at_once() {
    let s = setup(&[]);
    let start = Instant::now();
    let err = s.guest_connect("10.0.2.2:5999").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // A real client says so too.
    let out = s.ns.run(&["ncat", "-w", "5", "10.0.2.2", "5999"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Connection refused"), "{text}");
}

#[test]
fn half_close_both_ways() {
    let s = setup(&[]);
    let listener = s.net.in_host(|| listen("127.0.0.1:5004"));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap(); // guest's FIN arrives as EOF
        conn.write_all(b"reply after your FIN").unwrap();
        got
    });
    let mut c = s.guest_connect("10.0.2.2:5004").unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(server.join().unwrap(), b"request");
    assert_eq!(reply, "reply after your FIN");
}

#[test]
fn host_reset_reaches_the_guest() {
    let s = setup(&[]);
    let listener = s.net.in_host(|| listen("127.0.0.1:5005"));
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        // Unread data at close makes the kernel send RST.
        std::thread::sleep(Duration::from_millis(300));
        drop(conn);
    });
    let mut c = s.guest_connect("10.0.2.2:5005").unwrap();
    c.write_all(b"unread").unwrap();
    let mut buf = [0u8; 16];
    let r = c.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
}

#[test]
fn disable_host_loopback_says_network_unreachable_but_gateway_pings() {
    let s = setup(&["--disable-host-loopback"]);
    let _listener = s.net.in_host(|| listen("127.0.0.1:5006"));
    let err = s.guest_connect("10.0.2.2:5006").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
    // What a user sees from a real client.
    let out = s.ns.run(&["ncat", "-w", "5", "10.0.2.2", "5006"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Network is unreachable"), "{text}");
    assert!(s.ns.ping("10.0.2.2"));
}

#[test]
fn udp_echo_to_the_host() {
    let s = setup(&[]);
    echo_udp(s.net.in_host(|| UdpSocket::bind("127.0.0.1:5007").unwrap()));
    let sock = s.guest_udp();
    sock.send_to(b"hello host", "10.0.2.2:5007").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).expect("no UDP reply");
    assert_eq!(&buf[..n], b"hello host");
    assert_eq!(
        from,
        "10.0.2.2:5007".parse().unwrap(),
        "reply must come from where we sent"
    );
}

#[test]
fn udp_to_a_closed_port_is_refused() {
    let s = setup(&[]);
    let sock = s.guest_udp();
    sock.connect("10.0.2.2:5998").unwrap();
    let mut buf = [0u8; 16];
    // The ICMP port unreachable may take a datagram or two to come back.
    let refused = (0..5).any(|_| {
        let _ = sock.send(b"anyone?");
        matches!(sock.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(refused, "no port unreachable\n{}", s.nf.output());
}

#[test]
fn tcp_and_udp_reach_a_remote_host() {
    let s = setup(&[]);
    let listener = s.net.in_remote(|| listen("0.0.0.0:6001"));
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"remote says hi").unwrap();
        peer
    });
    let mut c = s.guest_connect(&format!("{REMOTE_ADDR}:6001")).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "remote says hi");
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        HOST_ADDR,
        "the remote sees the host's address"
    );

    echo_udp(s.net.in_remote(|| UdpSocket::bind("0.0.0.0:6002").unwrap()));
    let sock = s.guest_udp();
    sock.send_to(b"udp far", format!("{REMOTE_ADDR}:6002"))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("no UDP reply from the remote");
    assert_eq!(&buf[..n], b"udp far");
    assert_eq!(from.to_string(), format!("{REMOTE_ADDR}:6002"));
}

#[test]
fn outbound_addr_is_the_source_for_tcp_and_udp() {
    let net = TestNet::new();
    run_in_host(
        &net,
        &[
            "ip",
            "addr",
            "add",
            "198.51.100.11/24",
            "dev",
            &net.host_veth,
        ],
    );
    let ns = Namespace::new();
    let nf = serve_from(Some(&net), &ns, &["--outbound-addr=198.51.100.11"]);
    let s = Setup { net, ns, nf };

    let listener = s.net.in_remote(|| listen("0.0.0.0:6003"));
    let server = std::thread::spawn(move || listener.accept().unwrap().1);
    let _c = s.guest_connect(&format!("{REMOTE_ADDR}:6003")).unwrap();
    assert_eq!(server.join().unwrap().ip().to_string(), "198.51.100.11");

    let remote = s.net.in_remote(|| UdpSocket::bind("0.0.0.0:6004").unwrap());
    remote
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    s.guest_udp()
        .send_to(b"who am i", format!("{REMOTE_ADDR}:6004"))
        .unwrap();
    let mut buf = [0u8; 64];
    let (_, from) = remote.recv_from(&mut buf).expect("no datagram");
    assert_eq!(
        from.ip().to_string(),
        "198.51.100.11",
        "UDP must use it too"
    );

    // Through the gateway to the host's loopback too, as slirp4netns
    // does: a server on 127.0.0.1 sees the outbound address.
    let listener = s.net.in_host(|| listen("127.0.0.1:6005"));
    let server = std::thread::spawn(move || listener.accept().unwrap().1);
    let _c = s.guest_connect("10.0.2.2:6005").unwrap();
    assert_eq!(server.join().unwrap().ip().to_string(), "198.51.100.11");
    let host = s.net.in_host(|| UdpSocket::bind("127.0.0.1:6006").unwrap());
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.guest_udp().send_to(b"who am i", "10.0.2.2:6006").unwrap();
    let (_, from) = host.recv_from(&mut buf).expect("no datagram");
    assert_eq!(from.ip().to_string(), "198.51.100.11");
}

#[test]
fn outbound_addr_accepts_an_interface_name_and_rejects_nonsense() {
    let net = TestNet::new();
    let ns = Namespace::new();
    let iface = format!("--outbound-addr={}", net.host_veth);
    let nf = serve_from(Some(&net), &ns, &[&iface]);
    let s = Setup { net, ns, nf };
    let listener = s.net.in_remote(|| listen("0.0.0.0:6005"));
    let server = std::thread::spawn(move || listener.accept().unwrap().1);
    let _c = s.guest_connect(&format!("{REMOTE_ADDR}:6005")).unwrap();
    assert_eq!(server.join().unwrap().ip().to_string(), HOST_ADDR);

    let out = Command::new(common::netferry_bin())
        .args(["--outbound-addr=no-such-if9", "1", "tap0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--outbound-addr: no-such-if9 is neither an IPv4 address nor an interface"),
        "{err}"
    );
}

fn run_in_host(net: &TestNet, args: &[&str]) {
    net.host_ok(args);
}

#[test]
fn ping_reaches_the_remote_when_ping_sockets_are_allowed() {
    let s = setup(&[]);
    run_in_host(
        &s.net,
        &["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"],
    );
    assert!(s.ns.ping(REMOTE_ADDR), "no echo reply\n{}", s.nf.output());
}

#[test]
fn ping_without_ping_sockets_goes_unanswered_and_nothing_breaks() {
    let s = setup(&[]);
    run_in_host(&s.net, &["sysctl", "-qw", "net.ipv4.ping_group_range=1 0"]);
    assert!(!s.ns.ping(REMOTE_ADDR));
    assert!(s.ns.ping("10.0.2.2"), "gateway must still answer");
    assert!(
        s.nf.stderr().contains("ping_group_range"),
        "{}",
        s.nf.output()
    );
}

fn dig(ns: &Namespace, extra: &str) -> std::process::Output {
    ns.run(&[
        "dig",
        "+short",
        "+tries=1",
        "+time=3",
        extra,
        "@10.0.2.3",
        "probe.netferry.test",
    ])
}

#[test]
fn dns_over_udp_and_tcp_reaches_the_hosts_resolver() {
    let s = setup(&[]);
    let _dns = common::dns_server(&s.net, "127.0.0.1", &["198.51.100.2"]);
    for mode in ["+notcp", "+tcp"] {
        let out = dig(&s.ns, mode);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), "198.51.100.2", "dig {mode}\n{}", s.nf.output());
    }
    // busybox's resolver client too.
    let out =
        s.ns.run(&["busybox", "nslookup", "probe.netferry.test", "10.0.2.3"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.51.100.2"));
}

#[test]
fn disable_dns_stops_serving_the_dns_address() {
    let s = setup(&["--disable-dns"]);
    let _dns = common::dns_server(&s.net, "127.0.0.1", &["198.51.100.2"]);
    for mode in ["+notcp", "+tcp"] {
        let out = dig(&s.ns, mode);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("198.51.100.2"),
            "dig {mode} was answered: {text}"
        );
    }
}

#[test]
fn custom_cidr_carries_traffic_too() {
    let s = setup(&["--cidr=172.31.0.0/16"]);
    echo_tcp(s.net.in_host(|| listen("127.0.0.1:5008")));
    let mut c = s.guest_connect("172.31.0.2:5008").unwrap();
    c.write_all(b"cidr").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"cidr");
    let _dns = common::dns_server(&s.net, "127.0.0.1", &["198.51.100.2"]);
    let out = s.ns.run(&[
        "dig",
        "+short",
        "+tries=1",
        "+time=3",
        "@172.31.0.3",
        "probe.netferry.test",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "198.51.100.2");
}

/// Datagrams numbered `from..to`, 64 bytes each, sent in small bursts so
/// that no queue on the way overflows.
fn send_numbered(send: impl Fn(&[u8]), from: u32, to: u32, paced: bool) {
    let mut buf = [0u8; 64];
    for seq in from..to {
        buf[..4].copy_from_slice(&seq.to_be_bytes());
        send(&buf);
        if paced && seq % 20 == 19 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Receive numbered datagrams until `last` arrives or none comes for the
/// socket's read timeout; returns the numbers in arrival order.
fn recv_numbered(recv: impl Fn(&mut [u8]) -> std::io::Result<usize>, last: u32) -> Vec<u32> {
    let mut got = Vec::new();
    let mut buf = [0u8; 128];
    while let Ok(n) = recv(&mut buf) {
        assert_eq!(n, 64, "a datagram changed size");
        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
        got.push(seq);
        if seq == last {
            break;
        }
    }
    got
}

const MANY: u32 = 20_000;

/// MANY numbered datagrams, paced, through `send`; what `receiver` got.
fn numbered_through(receiver: UdpSocket, send: impl Fn(&[u8])) -> Vec<u32> {
    let got = std::thread::spawn(move || recv_numbered(|b| receiver.recv(b), MANY - 1));
    send_numbered(send, 0, MANY, true);
    got.join().unwrap()
}

#[test]
fn many_small_datagrams_arrive_in_order_both_ways() {
    let s = setup(&[]);
    let host = s.net.in_host(|| UdpSocket::bind("127.0.0.1:5010").unwrap());
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let guest = s.guest_udp();
    guest.connect("10.0.2.2:5010").unwrap();
    // Room for a few hundred milliseconds of datagrams at each end: the
    // receiving threads share two cores with the other tests, and what
    // is checked here is netferry, not their scheduling.
    for sock in [&host, &guest] {
        let big = 4 << 20;
        nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::RcvBufForce, &big).unwrap();
    }

    // Guest to host: every datagram, in order.
    let got = numbered_through(host.try_clone().unwrap(), |d| drop(guest.send(d)));
    assert_eq!(
        got,
        (0..MANY).collect::<Vec<_>>(),
        "guest->host lost or reordered\n{}",
        s.nf.output()
    );

    // Host to guest, into the flow the guest opened: the same.
    let mut probe = [0u8; 64];
    guest.send(b"where are you").unwrap();
    let (_, flow) = host.recv_from(&mut probe).expect("the guest's flow");
    let got = numbered_through(guest.try_clone().unwrap(), |d| drop(host.send_to(d, flow)));
    assert_eq!(
        got,
        (0..MANY).collect::<Vec<_>>(),
        "host->guest lost or reordered\n{}",
        s.nf.output()
    );

    // A burst far beyond every socket buffer: what does not fit is
    // dropped, what arrives is in order, and the flow carries on.
    const BURST: u32 = 200_000;
    let receiver = guest.try_clone().unwrap();
    let got = std::thread::spawn(move || recv_numbered(|b| receiver.recv(b), BURST + 99));
    send_numbered(|d| drop(host.send_to(d, flow)), 0, BURST, false);
    std::thread::sleep(Duration::from_millis(500));
    send_numbered(|d| drop(host.send_to(d, flow)), BURST, BURST + 100, true);
    let got = got.join().unwrap();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "burst reordered");
    assert_eq!(
        got.last(),
        Some(&(BURST + 99)),
        "the flow stalled after a burst\n{}",
        s.nf.output()
    );
}

#[test]
fn datagrams_of_one_size_and_of_mixed_sizes_reach_a_remote_host_whole_and_in_order() {
    // Runs of one size go out as one send with segmentation offload;
    // ones larger than the veth's MTU (1500) cannot (EMSGSIZE), and go
    // one by one, in IP fragments. Either way the remote gets each
    // datagram whole, in order.
    let s = setup(&["--mtu=65520"]);
    let remote = s
        .net
        .in_remote(|| UdpSocket::bind((REMOTE_ADDR, 5020)).unwrap());
    remote
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let guest = s.guest_udp();
    guest.connect((REMOTE_ADDR, 5020)).unwrap();
    let mut sizes = Vec::new();
    for (count, size) in [(40, 3000), (40, 1000), (40, 1472)] {
        sizes.extend(std::iter::repeat_n(size, count));
    }
    sizes.extend((0..60).map(|i| 100 + i * 23));
    let datagrams: Vec<Vec<u8>> = (0..sizes.len())
        .map(|i| pattern(sizes[i], i as u32))
        .collect();

    let expected = datagrams.len();
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < expected {
            let Ok(n) = remote.recv(&mut buf) else { break };
            got.push(buf[..n].to_vec());
        }
        got
    });
    for burst in datagrams.chunks(10) {
        for d in burst {
            guest.send(d).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = receiver.join().unwrap();
    let sizes_got: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(
        sizes_got,
        sizes,
        "lost, cut or reordered\n{}",
        s.nf.output()
    );
    assert!(got == datagrams, "a datagram's bytes changed");
}
