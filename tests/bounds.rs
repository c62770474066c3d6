//! What a hostile or broken guest can make netferry hold, tried on real
//! namespaces: a SYN flood to a destination that never answers, with a
//! transfer running beside it, and timers that must keep firing while
//! host connects are pending.
//!
//! "Never answers": a listener on the test host's loopback whose accept
//! queue is full, so the host kernel drops every further SYN to it, and
//! the host connect stays pending until the namespace's
//! `tcp_syn_retries` give up. Everything stays inside namespaces the test
//! made.

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockProtocol, SockType, SockaddrIn, bind, listen, socket,
};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use common::{Namespace, TestNet, serve_from, wait_until};

/// A listener on the host's 127.0.0.1:`port` that never accepts, with its
/// queue already full: further SYNs to it are dropped, unanswered.
fn black_hole(net: &TestNet, port: u16) -> (OwnedFd, TcpStream) {
    net.in_host(move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let filler = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        // The queue holds one; a second connect now goes unanswered.
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "the black hole answered"
        );
        (fd, filler)
    })
}

/// `count` raw SYNs from the guest to 10.0.2.2:`port`, each from its own
/// source port, in paced batches so the tap's queue does not drop them.
fn syn_flood(ns: &Namespace, port: u16, count: u16) {
    ns.in_ns(move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Tcp,
        )
        .unwrap();
        let src = std::net::Ipv4Addr::new(10, 0, 2, 100);
        let dst = std::net::Ipv4Addr::new(10, 0, 2, 2);
        let to = SockaddrIn::new(10, 0, 2, 2, 0);
        for i in 0..count {
            let tcp = TcpRepr {
                src_port: 10_000 + i,
                dst_port: port,
                control: TcpControl::Syn,
                seq_number: TcpSeqNumber(i as i32 * 7919),
                ack_number: None,
                window_len: 64240,
                window_scale: Some(7),
                max_seg_size: Some(1460),
                sack_permitted: true,
                sack_ranges: [None; 3],
                timestamp: None,
                payload: &[],
            };
            let mut seg = vec![0u8; tcp.buffer_len()];
            tcp.emit(
                &mut TcpPacket::new_unchecked(&mut seg[..]),
                &src.into(),
                &dst.into(),
                &ChecksumCapabilities::default(),
            );
            let _ = nix::sys::socket::sendto(
                fd.as_raw_fd(),
                &seg,
                &to,
                nix::sys::socket::MsgFlags::empty(),
            );
            if i % 200 == 199 {
                sleep(Duration::from_millis(5));
            }
        }
    });
}

#[test]
fn a_syn_flood_stays_within_the_caps_while_a_transfer_runs() {
    let net = TestNet::new();
    // Pending connects give up after about 7 s (SYN, then 2 retries).
    net.host_ok(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=2"]);
    let (_hole, _filler) = black_hole(&net, 7001);
    let mut iperf = net
        .host_cmd(&["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "5201"])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 (server)");
    let ns = Namespace::new();
    let pending_cap = 256;
    let nf = serve_from(
        Some(&net),
        &ns,
        &["--max-pending-connects=256", "--max-tcp-flows=2048"],
    );
    sleep(Duration::from_millis(300)); // the iperf3 server is listening
    let baseline = nf.sockets();

    let client = ns
        .cmd(&["iperf3", "-c", "10.0.2.2", "-p", "5201", "-t", "4", "-J"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("iperf3 (client)");
    sleep(Duration::from_millis(500));
    let started = Instant::now();
    syn_flood(&ns, 7001, 20_000);
    let flood_secs = started.elapsed().as_secs_f64();
    let held = nf.sockets();
    println!(
        "20000 SYNs in {flood_secs:.2} s: netferry holds {held} sockets (baseline {baseline}), RSS {} KiB",
        nf.rss_kib()
    );
    assert!(
        held <= baseline + pending_cap + 4,
        "{held} sockets held, cap {pending_cap} over {baseline}\n{}",
        nf.output()
    );

    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "iperf3 failed during the flood");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    println!(
        "iperf3 through the gateway during the flood: {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 0.0, "no transfer during the flood");
    let _ = iperf.wait();

    // Connects still pending: netferry waits on them without spinning.
    assert!(nf.sockets() > baseline, "the pending connects ended early");
    let cpu0 = nf.cpu_seconds();
    sleep(Duration::from_secs(2));
    let idle_cpu = nf.cpu_seconds() - cpu0;
    println!(
        "CPU while {} connects pend: {idle_cpu:.2} s in 2 s",
        nf.sockets() - baseline
    );
    assert!(idle_cpu < 0.5, "{idle_cpu} CPU seconds in 2 s: a busy loop");
    assert!(nf.rss_kib() < 128 * 1024, "RSS {} KiB", nf.rss_kib());

    // Once the host gives up on them, every one of those fds is returned.
    assert!(
        wait_until(Duration::from_secs(30), || nf.sockets() <= baseline),
        "{} sockets held after the flood, baseline {baseline}",
        nf.sockets()
    );
    // And the gateway still serves a new connection.
    let listener = net.in_host(|| std::net::TcpListener::bind("127.0.0.1:7002").unwrap());
    let conn =
        ns.in_ns(|| common::connect("10.0.2.2:7002".parse().unwrap(), Duration::from_secs(10)));
    assert!(conn.is_ok(), "no connection after the flood");
    drop(listener);
}

#[test]
fn a_storm_of_connects_to_a_dead_service_leaves_room_for_a_live_one() {
    // More connects pending to a service that never answers than the
    // default cap (1024) allows, as a client retrying against a dead
    // service makes them; a connection to a live one must still go
    // through at once, not be refused at the cap.
    const CAP: usize = 1024;
    let net = TestNet::new();
    let (_hole, _filler) = black_hole(&net, 7201);
    let live = net.in_host(|| std::net::TcpListener::bind("127.0.0.1:7202").unwrap());
    let ns = Namespace::new();
    let nf = serve_from(Some(&net), &ns, &[]);
    let baseline = nf.sockets();
    syn_flood(&ns, 7201, CAP as u16 + 100);
    assert!(
        wait_until(Duration::from_secs(10), || nf.sockets() >= baseline + CAP),
        "only {} of {CAP} connects pending\n{}",
        nf.sockets() - baseline,
        nf.output()
    );
    let started = Instant::now();
    let conn =
        ns.in_ns(|| common::connect("10.0.2.2:7202".parse().unwrap(), Duration::from_secs(10)));
    let took = started.elapsed();
    println!("a live connect beside {CAP} pending ones took {took:?}");
    assert!(
        conn.is_ok(),
        "the live destination was shut out: {conn:?}\n{}",
        nf.output()
    );
    live.set_nonblocking(false).unwrap();
    assert!(live.accept().is_ok(), "the host never saw the connection");
    let held = nf.sockets();
    assert!(
        held <= baseline + CAP + 2,
        "{held} sockets held, cap {CAP} over {baseline}"
    );
}

#[test]
fn a_udp_idle_timeout_fires_on_time_while_a_host_connect_is_pending() {
    let net = TestNet::new();
    let (_hole, _filler) = black_hole(&net, 7101);
    let ns = Namespace::new();
    let nf = serve_from(Some(&net), &ns, &["--udp-timeout=2"]);
    // A connect that stays pending for the whole test.
    let _pending = ns.in_ns(|| {
        let s = nix::sys::socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let _ = nix::sys::socket::connect(s.as_raw_fd(), &SockaddrIn::new(10, 0, 2, 2, 7101));
        s
    });
    let host_udp = net.in_host(|| UdpSocket::bind("127.0.0.1:7102").unwrap());
    assert!(wait_until(Duration::from_secs(5), || nf.sockets() >= 3));
    let with_pending = nf.sockets();

    let guest = ns.in_ns(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    guest.send_to(b"hello", "10.0.2.2:7102").unwrap();
    let mut buf = [0u8; 16];
    host_udp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    host_udp
        .recv_from(&mut buf)
        .expect("the datagram never came");
    let sent = Instant::now();
    assert_eq!(nf.sockets(), with_pending + 1, "no UDP flow opened");
    // Closed 2 s after its last use, on the next 1 s sweep: within a
    // second of the deadline, not whenever the next event happens.
    assert!(
        wait_until(Duration::from_secs(10), || nf.sockets() == with_pending),
        "the UDP flow was never closed\n{}",
        nf.output()
    );
    let after = sent.elapsed();
    println!("UDP flow closed {after:?} after its last datagram (timeout 2 s)");
    assert!(
        after >= Duration::from_millis(1900) && after <= Duration::from_millis(3200),
        "closed after {after:?}"
    );
}
