//! Load and faults on real namespaces: many connections at once, floods,
//! garbage from the guest and from API clients, too few file
//! descriptors, and peers that reset or disappear. Each test prints its
//! figures (run with `--nocapture` to see them) and checks bounds that a
//! slow machine still meets: what is counted is correctness and cleanup,
//! not speed.
//!
//! netferry always runs inside the test's host namespace, so whatever a
//! garbled frame asks for can reach only the test's own peers.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Namespace, Netferry, Options, Served, TestNet, pattern, wait_until};

type Setup = Served;

fn setup_with(extra: &[&str], prefix: &[&str]) -> Setup {
    Served::start_via(extra, prefix)
}

fn setup() -> Setup {
    Served::start(&[])
}

impl Served {
    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.nf.pid())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.nf.pid()))
                .unwrap_or_default()
                .contains(") Z")
    }

    fn guest_connect(&self, port: u16) -> std::io::Result<TcpStream> {
        self.ns
            .in_ns(move || common::connect(([10, 0, 2, 2], port).into(), Duration::from_secs(10)))
    }

    /// An echo server on the host's 127.0.0.1:`port`, a thread per client.
    fn host_echo(&self, port: u16) {
        let l = self
            .net
            .in_host(move || TcpListener::bind(("127.0.0.1", port)).unwrap());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                std::thread::spawn(move || common::echo_until_eof(c));
            }
        });
    }

    /// A guest connection through the gateway still echoes.
    fn echo_works(&self, port: u16) -> bool {
        self.echo(port).is_ok()
    }

    fn echo(&self, port: u16) -> Result<(), String> {
        let mut c = self
            .guest_connect(port)
            .map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 5];
        c.write_all(b"hello").map_err(|e| format!("write: {e}"))?;
        c.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
        if &buf != b"hello" {
            return Err(format!("echoed {buf:?}"));
        }
        Ok(())
    }
}

#[test]
fn a_thousand_concurrent_connections_echo_intact_and_leave_nothing_behind() {
    const N: usize = 1000;
    const LEN: usize = 16 * 1024;
    let s = setup();
    s.host_echo(6100);
    assert!(s.echo_works(6100));
    let (fds0, rss0) = (s.nf.sockets(), s.nf.rss_kib());
    let start = Instant::now();
    // All open at once, then each sends its own data and reads it back.
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|i| {
            s.guest_connect(6100)
                .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", s.nf.output()))
        })
        .collect();
    let held = s.nf.sockets();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&pattern(LEN, i as u32)).unwrap();
    }
    let rss_peak = s.nf.rss_kib();
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut back = vec![0u8; LEN];
        c.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert!(back == pattern(LEN, i as u32), "connection {i} corrupted");
    }
    let elapsed = start.elapsed();
    drop(conns);
    let back_down = wait_until(Duration::from_secs(30), || s.nf.sockets() <= fds0);
    let rss1 = s.nf.rss_kib();
    println!(
        "{N} connections x {LEN} bytes echoed in {elapsed:.2?}; sockets {fds0} -> {held} -> {}; \
         RSS {rss0} -> {rss_peak} -> {rss1} KiB",
        s.nf.sockets()
    );
    assert!(held >= N, "only {held} sockets for {N} connections");
    assert!(back_down, "{} sockets left, {fds0} before", s.nf.sockets());
    // Freed buffers go back to the system (large ones are mapped).
    assert!(
        rss1 < rss0 + 16 * 1024,
        "RSS stayed at {rss1} KiB (was {rss0})"
    );
    assert!(s.echo_works(6100));
}

#[test]
fn a_udp_flood_to_thousands_of_destinations_stays_within_the_cap() {
    let s = setup();
    let fds0 = s.nf.sockets();
    // 5,000 destinations on the test's remote host, ports nobody serves.
    s.ns.in_ns(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..5000u16 {
            let _ = sock.send_to(b"flood", (common::REMOTE_ADDR, 20000 + i));
            if i % 250 == 249 {
                sleep(Duration::from_millis(5));
            }
        }
    });
    sleep(Duration::from_millis(500));
    let udp = s.status()["return"]["flows"]["udp"].as_u64().unwrap();
    let fds = s.nf.sockets();
    println!("after 5000 UDP destinations: {udp} UDP flows, sockets {fds0} -> {fds}");
    assert!(udp <= 1024, "{udp} UDP flows, past the cap");
    assert!(fds <= fds0 + 1024 + 8, "{fds} sockets");
    assert!(s.alive());
    // The guest still gets answers.
    s.host_echo(6101);
    assert!(s.echo_works(6101));
}

#[test]
fn a_guest_udp_firehose_does_not_starve_the_api_or_new_connections() {
    let s = setup();
    s.host_echo(6102);
    let sink = s.net.in_host(|| UdpSocket::bind("127.0.0.1:6103").unwrap());
    let reader = std::thread::spawn(move || {
        sink.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        while sink.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let stop = Instant::now() + Duration::from_secs(3);
    let firehose = s.ns.in_ns(move || {
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            let data = [7u8; 1400];
            let mut sent = 0u64;
            while Instant::now() < stop {
                if sock.send_to(&data, "10.0.2.2:6103").is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    });
    sleep(Duration::from_millis(500));
    let t = Instant::now();
    let status = s.status();
    let api_took = t.elapsed();
    let t = Instant::now();
    let echoed = s.echo(6102);
    let conn_took = t.elapsed();
    let sent = firehose.join().unwrap();
    let got = reader.join().unwrap();
    println!(
        "firehose: {sent} datagrams sent, {got} received; meanwhile the API answered in \
         {api_took:.2?} and a new connection echoed in {conn_took:.2?}"
    );
    assert!(status["return"]["flows"].is_object(), "{status}");
    if let Err(e) = echoed {
        panic!("no echo during the firehose: {e}\n{}", s.nf.output());
    }
    assert!(api_took < Duration::from_secs(2), "API took {api_took:?}");
    // The firehose fills the guest's own tap queue, which drops what does
    // not fit before netferry sees it: a new SYN may need a retry or two
    // of the guest's (1 s, then 3 s), and no more.
    assert!(
        conn_took < Duration::from_secs(10),
        "connection took {conn_took:?}"
    );
    assert!(got > 0);
}

/// What one malformed frame looks like: a valid frame of some kind, then
/// cut, lengthened, flipped or padded.
fn malformed(i: u32, rng: &mut u64) -> Vec<u8> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let gw_mac = [0x52, 0x55, 10, 0, 2, 2];
    let me = [0x02, 0, 0, 0, 0, 0x10];
    let mut f = Vec::new();
    let ipv4 = |proto: u8, body: &[u8], opts: &[u8]| {
        let ihl = 20 + opts.len();
        let total = (ihl + body.len()) as u16;
        let mut p = vec![0x40 | (ihl / 4) as u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 2, 100, 10, 0, 2, 2]);
        p.extend_from_slice(opts);
        let sum = !checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(body);
        p
    };
    let kind = i % 9;
    let (ethertype, payload): (u16, Vec<u8>) = match kind {
        // ARP request for the gateway, and garbage ARP.
        0 => (
            0x0806,
            [
                &[0, 1, 8, 0, 6, 4, 0, 1][..],
                &me,
                &[10, 0, 2, 100],
                &[0; 6],
                &[10, 0, 2, 2],
            ]
            .concat(),
        ),
        // TCP with odd flags and options.
        1 | 2 => {
            let flags = (next() & 0xff) as u8;
            let mut tcp = vec![0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0];
            tcp.push(0x80); // data offset 8: 12 bytes of options
            tcp.push(flags);
            tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            tcp.extend_from_slice(&[2, 4, 0, 0, 3, 3, 14, 8, 10, 0, 0, 0]);
            (0x0800, ipv4(6, &tcp, &[]))
        }
        // UDP to the DNS address and the gateway, odd lengths.
        3 => {
            let mut udp = vec![0x9c, 0x41, 0, 53, 0, 0xff, 0, 0];
            udp.extend_from_slice(&[0x12; 40]);
            (0x0800, ipv4(17, &udp, &[]))
        }
        // ICMP echo with IP options.
        4 => (
            0x0800,
            ipv4(
                1,
                &[8, 0, 0, 0, 0, 1, 0, 1, 1, 2, 3, 4],
                &[7, 7, 4, 0, 0, 0, 0, 0],
            ),
        ),
        // IPv4 fragments that overlap or never complete.
        5 => {
            let mut p = ipv4(17, &[0u8; 64], &[]);
            p[6] = 0x20 | (next() & 0x1f) as u8;
            p[7] = (next() & 0xff) as u8;
            (0x0800, p)
        }
        // IPv6 neighbour solicitation garbage.
        6 => {
            let mut p = vec![0x60, 0, 0, 0, 0, 32, 58, 255];
            p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
            p.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2]);
            p.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
            p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            p.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 0x10]);
            (0x86dd, p)
        }
        // Oversized, then anything at all.
        7 => (0x0800, vec![0x45; 9000 + (next() % 20000) as usize]),
        _ => (
            (next() & 0xffff) as u16,
            (0..(next() % 200)).map(|_| next() as u8).collect(),
        ),
    };
    f.extend_from_slice(&gw_mac);
    f.extend_from_slice(&me);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&payload);
    // Mangle most of them.
    match next() % 6 {
        0 => {}
        1 => f.truncate(14 + (next() as usize % (payload.len() + 1))),
        2 => {
            let at = 14 + (next() as usize % payload.len().max(1));
            if at < f.len() {
                f[at] ^= (next() & 0xff) as u8 | 1;
            }
        }
        3 => {
            // A length field that lies.
            if f.len() > 18 {
                f[16] = 0xff;
                f[17] = 0xff;
            }
        }
        4 => f.extend((0..next() % 64).map(|_| next() as u8)),
        _ => {
            let at = 14 + (next() as usize % payload.len().max(1));
            if at < f.len() {
                f[at] = 0;
            }
        }
    }
    f
}

/// Write whole Ethernet frames into tap0 from inside the namespace, as
/// the guest's kernel would send them (a packet socket); how many went.
fn send_frames(ns: &Namespace, frames: Vec<Vec<u8>>) -> u32 {
    ns.in_ns(move || {
        // SAFETY: plain socket calls on an fd this closure owns;
        // sockaddr_ll is zeroed, then filled with valid values.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let ifindex = libc::if_nametoindex(c"tap0".as_ptr()) as i32;
            assert!(ifindex > 0);
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex;
            to.sll_halen = 6;
            let mut sent = 0;
            for (i, f) in frames.iter().enumerate() {
                let r = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if r >= 0 {
                    sent += 1;
                }
                if i % 200 == 199 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            libc::close(fd);
            sent
        }
    })
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn twenty_thousand_malformed_frames_then_normal_traffic() {
    const N: u32 = 20_000;
    /// Frames written at once: well within the tap's queue (1,000).
    const CHUNK: usize = 500;
    // A large MTU, so oversized frames (for a 1500-byte link) reach it.
    let s = setup_with(&["--mtu=65520"], &[]);
    s.host_echo(6104);
    let fds0 = s.nf.sockets();
    let frames0 = s.status()["return"]["frames_from_guest"].as_u64().unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let frames: Vec<Vec<u8>> = (0..N).map(|i| malformed(i, &mut rng)).collect();
    // In chunks that fit the tap's queue, each given time to be read: a
    // busy machine then slows the test down instead of making the tap
    // drop what netferry had no CPU to read yet.
    let read = || s.status()["return"]["frames_from_guest"].as_u64().unwrap() - frames0;
    let mut sent = 0;
    for chunk in frames.chunks(CHUNK) {
        sent += send_frames(&s.ns, chunk.to_vec());
        let want = u64::from(sent) / 2;
        wait_until(Duration::from_secs(10), || read() >= want);
    }
    sleep(Duration::from_millis(500));
    assert!(s.alive(), "netferry died\n{}", s.nf.output());
    let status = s.status();
    let got = status["return"]["frames_from_guest"].as_u64().unwrap() - frames0;
    let dropped = status["return"]["frames_dropped"].as_u64().unwrap();
    println!(
        "{sent} of {N} malformed frames written; netferry read {got}, dropped {dropped} as malformed"
    );
    assert!(sent > N / 2, "only {sent} frames could be written");
    assert!(got > u64::from(sent) / 2, "netferry read {got}");
    assert!(dropped > 0);
    // Normal traffic, and no TCP flow left over from the garbage (its
    // datagram flows live out their idle timeout, as any would).
    assert!(s.echo_works(6104), "{}", s.nf.output());
    assert!(s.ns.ping("10.0.2.2"));
    let settled = wait_until(Duration::from_secs(70), || {
        let flows = &s.status()["return"]["flows"];
        flows["tcp"].as_u64() == Some(0)
            && s.nf.sockets() as u64
                <= fds0 as u64 + flows["udp"].as_u64().unwrap() + flows["ping"].as_u64().unwrap()
    });
    let flows = s.status()["return"]["flows"].clone();
    println!(
        "afterwards: flows {flows}, sockets {} ({fds0} before)",
        s.nf.sockets()
    );
    assert!(settled, "flows {flows}, {} sockets", s.nf.sockets());
}

#[test]
fn a_handshake_the_guest_never_completes_is_given_up_after_a_minute() {
    // A SYN from an address no guest holds (spoofed): netferry connects
    // to the host, answers with a SYN-ACK that can never be delivered,
    // and must not hold the host connection for ever.
    let s = setup();
    let l = s
        .net
        .in_host(|| TcpListener::bind("127.0.0.1:6109").unwrap());
    let fds0 = s.nf.sockets();
    let src = smoltcp::wire::Ipv4Address::new(10, 0, 2, 200);
    let dst = smoltcp::wire::Ipv4Address::new(10, 0, 2, 2);
    let tcp = smoltcp::wire::TcpRepr {
        src_port: 5555,
        dst_port: 6109,
        control: smoltcp::wire::TcpControl::Syn,
        seq_number: smoltcp::wire::TcpSeqNumber(1),
        ack_number: None,
        window_len: 64240,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let mut seg = vec![0u8; tcp.buffer_len()];
    tcp.emit(
        &mut smoltcp::wire::TcpPacket::new_unchecked(&mut seg[..]),
        &src.into(),
        &dst.into(),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 2, 200, 10, 0, 2, 2]);
    let sum = !checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = vec![0x52, 0x55, 10, 0, 2, 2, 0x02, 0, 0, 0, 0, 0x20, 0x08, 0x00];
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&seg);
    let start = Instant::now();
    assert_eq!(send_frames(&s.ns, vec![frame]), 1);
    let (host_side, _) = l.accept().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || s.nf.sockets() > fds0),
        "no host connect"
    );
    let freed = wait_until(Duration::from_secs(90), || s.nf.sockets() <= fds0);
    let took = start.elapsed();
    println!("a handshake never completed: the host connection was closed after {took:.1?}");
    assert!(freed, "still held after {took:?}");
    assert!(
        took > Duration::from_secs(50),
        "given up after only {took:?}"
    );
    // The host side saw it end.
    host_side
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(!matches!((&host_side).read(&mut buf), Ok(1..)));
}

#[test]
fn two_thousand_abusive_api_requests_then_a_working_forward() {
    let s = setup();
    let deep = "[".repeat(100_000);
    let huge = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{}"}}}}"#,
        "t".repeat(1 << 20)
    );
    let abusive: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{".to_vec(),
        deep.into_bytes(),
        huge.into_bytes(),
        br#"{"execute":42}"#.to_vec(),
        br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":70000,"guest_port":80}}"#.to_vec(),
        br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":-1,"guest_port":80}}"#.to_vec(),
        br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1e30,"guest_port":80}}"#.to_vec(),
        br#"{"execute":"add_hostfwd","arguments":{"proto":["tcp"],"host_port":"80","guest_port":{}}}"#.to_vec(),
        br#"{"execute":"remove_hostfwd","arguments":{"id":18446744073709551615}}"#.to_vec(),
        br#"{"execute":"list_hostfwd","arguments":null}"#.to_vec(),
        vec![0xff, 0xfe, 0, 1, 2],
        Vec::new(),
    ];
    let start = Instant::now();
    let mut errors = 0;
    // Clients that send half a request and hang on, or never read.
    let mut silent = Vec::new();
    for i in 0..2000 {
        match i % 20 {
            0 => {
                if let Ok(mut c) = UnixStream::connect(&s.api) {
                    let _ = c.write_all(br#"{"execute":"add_hos"#);
                    silent.push(c);
                }
            }
            1 => {
                if let Ok(mut c) = UnixStream::connect(&s.api) {
                    let _ = c.write_all(br#"{"execute":"list_hostfwd"}"#);
                    silent.push(c);
                }
            }
            _ => {
                let reply = s.api(&abusive[i % abusive.len()]);
                if reply.contains(r#""error""#) {
                    errors += 1;
                }
                if !reply.is_empty() {
                    let v: serde_json::Value = serde_json::from_str(&reply)
                        .unwrap_or_else(|e| panic!("reply {reply:?} is no JSON: {e}"));
                    assert!(v.get("error").is_some() || v.get("return").is_some());
                }
            }
        }
    }
    let took = start.elapsed();
    assert!(s.alive(), "netferry died\n{}", s.nf.output());
    // With the silent clients still connected, a forward still works.
    let peers = s.ns.in_ns(|| TcpListener::bind("0.0.0.0:80").unwrap());
    std::thread::spawn(move || {
        for c in peers.incoming().flatten() {
            std::thread::spawn(move || common::echo_until_eof(c));
        }
    });
    let reply = s.api(
        br#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":6105,"guest_port":80}}"#,
    );
    println!(
        "2000 abusive API requests in {took:.2?}, {errors} answered with an error, {} silent \
         clients held; then add_hostfwd said {reply}",
        silent.len()
    );
    assert!(reply.starts_with(r#"{"return":{"id":"#), "{reply}");
    let mut c = s
        .net
        .in_host(|| TcpStream::connect("127.0.0.1:6105"))
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"through").unwrap();
    let mut buf = [0u8; 7];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"through");
}

#[test]
fn with_few_file_descriptors_it_refuses_without_spinning_and_recovers() {
    // 64 fds in all: a few are netferry's own, so most of 200 guest
    // connections cannot get a host socket.
    let s = setup_with(&[], &["prlimit", "--nofile=64:64", "--"]);
    s.host_echo(6106);
    let conns: Vec<std::io::Result<TcpStream>> = (0..200).map(|_| s.guest_connect(6106)).collect();
    let ok = conns.iter().filter(|c| c.is_ok()).count();
    assert!(s.alive(), "netferry died\n{}", s.nf.output());
    let cpu0 = s.nf.cpu_seconds();
    sleep(Duration::from_secs(3));
    let idle_cpu = s.nf.cpu_seconds() - cpu0;
    println!(
        "RLIMIT_NOFILE 64: {ok} of 200 connections got through; {:.2} CPU seconds in 3 s \
         of holding them",
        idle_cpu
    );
    assert!(ok > 0 && ok < 200, "{ok} of 200 connected");
    assert!(
        idle_cpu < 0.5,
        "{idle_cpu} CPU seconds while idle: a busy loop"
    );
    drop(conns);
    // Once they close, connections work again.
    assert!(
        wait_until(Duration::from_secs(20), || s.echo_works(6106)),
        "no recovery\n{}",
        s.nf.output()
    );
}

#[test]
fn a_host_reset_mid_transfer_reaches_the_guest_and_frees_the_flow() {
    let s = setup();
    let l = s
        .net
        .in_host(|| TcpListener::bind("127.0.0.1:6107").unwrap());
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < 4 << 20 {
            n += c.read(&mut buf).unwrap();
        }
        // Reset: linger 0, then close with data unread.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on an open socket with a valid linger value.
        unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
        drop(c);
        n
    });
    let fds0 = s.nf.sockets();
    let mut c = s.guest_connect(6107).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = pattern(1 << 16, 7);
    let mut sent = 0usize;
    let err = loop {
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 512 << 20, "the reset never reached the guest");
    };
    let read = server.join().unwrap();
    println!("host reset after reading {read} bytes; the guest had sent {sent}, then: {err}");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || s.nf.sockets() <= fds0),
        "flow not freed"
    );
}

#[test]
fn the_container_dying_mid_transfer_ends_netferry_cleanly() {
    // What podman does when a container dies: its processes are gone and
    // the exit fd hangs up. Mid-transfer, netferry must exit at once,
    // closing the host connection, without hanging on the dead guest.
    let net = TestNet::new();
    let ns = Namespace::new();
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["-c", &pid, "tap0"]);
    opts.exit_fd = true;
    opts.host_netns = Some(net.host.clone());
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    let l = net.in_host(|| TcpListener::bind("127.0.0.1:6108").unwrap());
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let chunk = vec![1u8; 1 << 16];
        let mut sent = 0usize;
        let end = loop {
            match c.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        (sent, end)
    });
    let mut client = ns
        .cmd(&["ncat", "--recv-only", "10.0.2.2", "6108"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(500));
    let _ = client.kill();
    let _ = client.wait();
    drop(ns);
    let t = Instant::now();
    nf.hang_up_exit_fd();
    let status = nf.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    let (sent, end) = server.join().unwrap();
    println!(
        "container gone after {sent} bytes: netferry exited in {took:.2?} with {status:?}; \
         the host's writer got {end}"
    );
    assert!(status.is_some_and(|s| s.success()), "{}", nf.output());
    assert!(sent > 0);
}
