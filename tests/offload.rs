//! Segmentation offload through the tap: at MTU 1500 the guest's kernel
//! and netferry exchange TCP segments of up to 64 KiB, which the kernel
//! cuts or takes whole, so a transfer needs a fraction of the frames it
//! would at 1,460 bytes each. Counted, not timed: netferry's own frame
//! count (the status API) for guest to host, tap0's receive counter in
//! the guest for host to guest, with the data checked byte for byte.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{Namespace, Netferry, Options, Served, TempDir, TestNet, pattern};

const LEN: usize = 8 << 20;
/// Frames a transfer of LEN takes at MTU 1500 without offload, at least.
const PLAIN_FRAMES: u64 = (LEN / 1460) as u64;

type Setup = Served;

fn setup(extra: &[&str]) -> Setup {
    let mut flags = vec!["--mtu=1500"];
    flags.extend_from_slice(extra);
    Served::start(&flags)
}

impl Served {
    fn frames_from_guest(&self) -> u64 {
        self.status()["return"]["frames_from_guest"]
            .as_u64()
            .unwrap()
    }

    fn tap_rx_packets(&self) -> u64 {
        let v = self.ns.ip_json(&["-s", "link", "show", "tap0"]);
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    }

    /// LEN bytes from a guest client to a server on the host's loopback.
    fn send_up(&self, port: u16) {
        let listener = self
            .net
            .in_host(move || TcpListener::bind(("127.0.0.1", port)).unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            got
        });
        let mut conn = self.ns.in_ns(move || {
            common::connect(([10, 0, 2, 2], port).into(), Duration::from_secs(20)).unwrap()
        });
        let blob = pattern(LEN, 11);
        conn.write_all(&blob).unwrap();
        drop(conn);
        let got = server.join().unwrap();
        assert!(
            got == blob,
            "guest to host: {} bytes, not intact",
            got.len()
        );
    }

    /// LEN bytes from a server on the host's loopback to a guest client.
    fn send_down(&self, port: u16) {
        let listener = self
            .net
            .in_host(move || TcpListener::bind(("127.0.0.1", port)).unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(&pattern(LEN, 12)).unwrap();
        });
        let mut conn: TcpStream = self.ns.in_ns(move || {
            common::connect(([10, 0, 2, 2], port).into(), Duration::from_secs(20)).unwrap()
        });
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert!(
            got == pattern(LEN, 12),
            "host to guest: {} bytes, not intact",
            got.len()
        );
    }
}

#[test]
fn at_mtu_1500_the_guest_sends_large_segments() {
    let s = setup(&[]);
    assert!(
        s.nf.stderr()
            .contains("tap offload: TCP segmentation and checksums, both ways"),
        "{}",
        s.nf.output()
    );
    let before = s.frames_from_guest();
    s.send_up(7001);
    let frames = s.frames_from_guest() - before;
    println!("guest to host, {LEN} bytes at MTU 1500: {frames} frames from the guest");
    assert!(
        frames < PLAIN_FRAMES / 4,
        "{frames} frames: the guest did not segment for us"
    );
}

#[test]
fn at_mtu_1500_netferry_sends_large_segments() {
    let s = setup(&[]);
    let before = s.tap_rx_packets();
    s.send_down(7002);
    let packets = s.tap_rx_packets() - before;
    println!("host to guest, {LEN} bytes at MTU 1500: {packets} writes to the tap");
    assert!(
        packets < PLAIN_FRAMES / 4,
        "{packets} packets: netferry did not hand the guest large segments"
    );
}

#[test]
fn disable_offload_sends_mtu_sized_frames_both_ways() {
    let s = setup(&["--disable-offload"]);
    assert!(
        s.nf.stderr().contains("tap offload: none"),
        "{}",
        s.nf.output()
    );
    let before = s.frames_from_guest();
    s.send_up(7003);
    assert!(s.frames_from_guest() - before >= PLAIN_FRAMES);
    let before = s.tap_rx_packets();
    s.send_down(7004);
    assert!(s.tap_rx_packets() - before >= PLAIN_FRAMES);
}

#[test]
fn a_callers_tap_fd_with_a_virtio_header_is_understood() {
    // A caller that opened the tap with IFF_VNET_HDR itself and handed it
    // over (--netns-type=tapfd): every frame has a header, which netferry
    // must find out about (TUNGETIFF) and strip.
    callers_tap_fd_session(None);
}

#[test]
fn a_callers_tap_fd_with_a_long_virtio_header_reads_and_writes_alike() {
    // The kernel takes any header length from 10 up; one longer than
    // netferry writes must not have reads strip more than writes put.
    callers_tap_fd_session(Some(100));
}

/// A tap made by a "caller" with a virtio-net header (of `header_len`
/// bytes when given: TUNSETVNETHDRSZ), handed to netferry as a fd; then
/// ping and TCP both ways.
fn callers_tap_fd_session(header_len: Option<u32>) {
    let net = TestNet::new();
    let ns = Namespace::new();
    // Python makes the tap inside the guest's namespace, comes back to
    // the host namespace and execs netferry with the fd inherited.
    let script = format!(
        "import ctypes, fcntl, os, struct, sys\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        def enter(path):\n\
        \x20   f = os.open(path, os.O_RDONLY)\n\
        \x20   assert libc.setns(f, 0x40000000) == 0, ctypes.get_errno()\n\
        \x20   os.close(f)\n\
        enter(sys.argv[1])\n\
        fd = os.open('/dev/net/tun', os.O_RDWR)\n\
        fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'tap0', 0x0002 | 0x1000 | 0x4000))\n\
        {}\n\
        enter(sys.argv[2])\n\
        os.set_inheritable(fd, True)\n\
        os.execv(sys.argv[3], sys.argv[3:] + [str(fd)])\n",
        match header_len {
            // TUNSETVNETHDRSZ
            Some(len) => format!("fcntl.ioctl(fd, 0x400454d8, struct.pack('i', {len}))"),
            None => "pass".to_string(),
        }
    );
    let mut opts = Options::args(&["--netns-type=tapfd"]);
    opts.exec_via = ["python3", "-c", &script, &ns.net_path(), &net.host_path()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    ns.ok(&["ip", "link", "set", "tap0", "mtu", "1500", "up"]);
    ns.ok(&["ip", "addr", "add", "10.0.2.100/24", "dev", "tap0"]);
    ns.ok(&["ip", "route", "add", "default", "via", "10.0.2.2"]);
    assert!(ns.ping("10.0.2.2"), "{}", nf.output());
    assert!(
        nf.stderr().contains("tap offload: TCP segmentation"),
        "{}",
        nf.output()
    );
    let s = Setup {
        net,
        ns,
        nf,
        api: Default::default(),
        dir: TempDir::new("offload"),
    };
    s.send_up(7005);
    s.send_down(7006);
}

/// 200 datagrams from the host that wait together in netferry's host
/// socket (netferry is stopped while they are sent): what the guest
/// receives, in order, and how many tap writes carried them.
fn datagrams_waiting_together(s: &Setup, port: u16) -> (Vec<Vec<u8>>, u64) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let host = s
        .net
        .in_host(move || std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap());
    let guest = s.ns.in_ns(move || {
        let g = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        g.connect(("10.0.2.2", port)).unwrap();
        g
    });
    guest.send(b"hello").unwrap();
    let mut buf = [0u8; 2048];
    let (_, flow) = host.recv_from(&mut buf).unwrap();
    let nf = Pid::from_raw(s.nf.pid());
    kill(nf, Signal::SIGSTOP).unwrap();
    for i in 0..200 {
        host.send_to(&pattern(100, i), flow).unwrap();
    }
    let before = s.tap_rx_packets();
    kill(nf, Signal::SIGCONT).unwrap();
    let mut got = Vec::new();
    while got.len() < 200 {
        let Ok(n) = guest.recv(&mut buf) else { break };
        got.push(buf[..n].to_vec());
    }
    (got, s.tap_rx_packets() - before)
}

/// Whether this kernel's taps carry UDP trains (Linux 6.2+): a tap of
/// our own, in a network namespace of our own, asked for UDP segmentation
/// offload with the ioctl netferry uses. Asked of the kernel rather than
/// of netferry, so a netferry that stops asking fails the tests below
/// instead of skipping them.
fn kernel_taps_carry_udp_trains() -> bool {
    use std::os::fd::AsRawFd;
    std::thread::spawn(|| {
        // This thread alone moves to the new namespace; the tap dies
        // with the fd, and the namespace with the thread.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare -n");
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        // SAFETY: ifreq is plain old data; all-zero bytes are a valid
        // value, and an empty name lets the kernel pick one.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
        // SAFETY: TUNSETIFF reads and fills the ifreq we pass, a valid,
        // exclusive one.
        let made = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        assert_eq!(made, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        let features = libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_USO4
            | libc::TUN_F_USO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let set = unsafe {
            libc::ioctl(
                tun.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                features as libc::c_ulong,
            )
        };
        set == 0
    })
    .join()
    .expect("tap probe thread panicked")
}

/// netferry with offload, when this kernel carries UDP trains through
/// the tap; `None` when it does not (a failure under CI:
/// [`common::skip_or_fail`]).
fn setup_with_udp_trains() -> Option<Setup> {
    if !kernel_taps_carry_udp_trains() {
        common::skip_or_fail("this kernel's taps do not carry UDP trains (Linux 6.2+)");
        return None;
    }
    Some(setup(&[]))
}

#[test]
fn host_datagrams_waiting_together_reach_the_guest_in_few_tap_writes() {
    let Some(s) = setup_with_udp_trains() else {
        return;
    };
    let (got, writes) = datagrams_waiting_together(&s, 5031);
    let sent: Vec<Vec<u8>> = (0..200).map(|i| pattern(100, i)).collect();
    assert!(
        got == sent,
        "{} of 200 arrived whole and in order",
        got.len()
    );
    println!("200 datagrams in {writes} tap writes");
    // recvmmsg takes 16 at a time: 13 trains, a few more if netferry
    // woke before all were queued.
    assert!(writes <= 40, "{writes} tap writes for 200 datagrams");

    let s = setup(&["--disable-offload"]);
    let (got, writes) = datagrams_waiting_together(&s, 5032);
    assert!(got == sent, "without offload: {} of 200", got.len());
    assert!(writes >= 200, "without offload, one write each: {writes}");
}

/// A program in the guest sends 40 datagrams of 1000 bytes and one of 300
/// in one UDP_SEGMENT send (as QUIC stacks do), which the host must
/// receive whole and in order: how many frames netferry read for them.
fn one_segmented_send(s: &Setup, port: u16) -> u64 {
    use nix::sys::socket::{setsockopt, sockopt::UdpGsoSegment};
    let host = s
        .net
        .in_host(move || std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap());
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let guest = s.ns.in_ns(move || {
        let g = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        g.connect(("10.0.2.2", port)).unwrap();
        setsockopt(&g, UdpGsoSegment, &1000).unwrap();
        g
    });
    let sent: Vec<Vec<u8>> = (0..41)
        .map(|i| pattern(if i == 40 { 300 } else { 1000 }, i))
        .collect();
    let before = s.frames_from_guest();
    guest.send(&sent.concat()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < sent.len() {
        let Ok(n) = host.recv(&mut buf) else { break };
        got.push(buf[..n].to_vec());
    }
    assert!(
        got == sent,
        "{} of {} datagrams arrived whole and in order",
        got.len(),
        sent.len()
    );
    s.frames_from_guest() - before
}

#[test]
fn a_guests_segmented_udp_send_crosses_the_tap_as_one_frame() {
    let Some(s) = setup_with_udp_trains() else {
        return;
    };
    let frames = one_segmented_send(&s, 5033);
    println!("41 datagrams sent as one: {frames} frames read from the tap");
    // One train (a stray frame of the guest's own may come alongside).
    assert!(
        frames <= 3,
        "{frames} frames: the train was cut before netferry"
    );

    let s = setup(&["--disable-offload"]);
    let frames = one_segmented_send(&s, 5034);
    assert!(frames >= 41, "without offload, one frame each: {frames}");
}
