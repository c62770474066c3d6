//! Port forwarding through the JSON control socket, as podman and
//! rootlesskit use it, and rootlesskit itself running netferry.
//!
//! netferry runs in a test-made host namespace; clients connect from its
//! loopback or from the remote namespace behind the veth, and servers run
//! inside the container namespace.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    HOST_ADDR, Namespace, Netferry, Options, REMOTE_ADDR, TempDir, TestNet, pattern, wait_until,
};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

struct Setup {
    net: TestNet,
    ns: Namespace,
    nf: Netferry,
    sock: PathBuf,
    _dir: TempDir,
}

fn setup() -> Setup {
    let net = TestNet::new();
    let ns = Namespace::new();
    let dir = TempDir::new("api");
    let sock = dir.path("api.sock");
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["-c", "-a", sock.to_str().unwrap(), &pid, "tap0"]);
    opts.host_netns = Some(net.host.clone());
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    Setup {
        net,
        ns,
        nf,
        sock,
        _dir: dir,
    }
}

#[derive(Clone, Copy)]
enum Style {
    /// podman: the request and a newline, then wait for the reply.
    Podman,
    /// rootlesskit: the request, half-close, read to EOF.
    Rootlesskit,
}

fn api(sock: &Path, req: &str, style: Style) -> String {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    match style {
        Style::Podman => c.write_all(format!("{req}\n").as_bytes()).unwrap(),
        Style::Rootlesskit => {
            c.write_all(req.as_bytes()).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        }
    }
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    reply
}

impl Setup {
    fn api(&self, req: &str) -> String {
        api(&self.sock, req, Style::Rootlesskit)
    }

    fn add(&self, proto: &str, host_addr: &str, host_port: u16, guest_port: u16) -> String {
        self.api(&format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"{host_addr}","host_port":{host_port},"guest_addr":"","guest_port":{guest_port}}}}}"#
        ))
    }

    fn host_connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().unwrap();
        self.net.in_host(move || connect(addr))
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    common::connect(addr, IO_TIMEOUT)
}

/// A guest server that reports each client's address and echoes until EOF.
fn guest_echo(s: &Setup, port: u16) -> std::sync::mpsc::Receiver<SocketAddr> {
    let listener =
        s.ns.in_ns(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let _ = tx.send(conn.peer_addr().unwrap());
            std::thread::spawn(move || common::echo_until_eof(conn));
        }
    });
    rx
}

#[test]
fn both_client_styles_get_exact_replies_and_ids_are_not_reused() {
    let s = setup();
    let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}"#;
    assert_eq!(api(&s.sock, add, Style::Podman), r#"{"return":{"id":1}}"#);
    let list = api(&s.sock, r#"{"execute":"list_hostfwd"}"#, Style::Rootlesskit);
    let entry = r#"{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#;
    assert_eq!(
        list,
        format!(r#"{{"return":{{"entries":[{entry}]}},"entries":[{entry}]}}"#)
    );
    let remove = r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#;
    assert_eq!(api(&s.sock, remove, Style::Podman), r#"{"return":{}}"#);
    assert_eq!(
        api(&s.sock, remove, Style::Rootlesskit),
        r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
    );
    let add2 = add.replace("8080", "8081");
    assert_eq!(api(&s.sock, &add2, Style::Podman), r#"{"return":{"id":2}}"#);
    assert_eq!(
        api(&s.sock, "garbage", Style::Rootlesskit),
        r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#
    );
}

#[test]
fn socket_file_is_private_a_stale_socket_is_replaced_and_it_is_removed_at_exit() {
    let net = TestNet::new();
    let ns = Namespace::new();
    let dir = TempDir::new("stale");
    let sock = dir.path("api.sock");
    // What a netferry killed with SIGKILL leaves: a socket nobody serves.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["-c", "-a", sock.to_str().unwrap(), &pid, "tap0"]);
    opts.host_netns = Some(net.host.clone());
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert!(
        nf.stdout()
            .contains(&format!("* API Socket:      {}", sock.display()))
    );
    assert_eq!(
        api(&sock, r#"{"execute":"list_hostfwd"}"#, Style::Rootlesskit),
        r#"{"return":{"entries":[]},"entries":[]}"#
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nf.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        nf.wait_exit(Duration::from_secs(5)).unwrap().signal(),
        Some(libc::SIGTERM)
    );
    assert!(!sock.exists(), "socket file left behind");
}

/// netferry with `-a sock`, in a fresh empty network namespace; what it
/// exited with and said, once it ended.
fn refused_api_socket(sock: &Path) -> (Option<i32>, String) {
    let ns = Namespace::new();
    let pid = ns.pid.to_string();
    let mut nf = Netferry::spawn(Options::args(&[
        "-c",
        "-a",
        sock.to_str().unwrap(),
        &pid,
        "tap0",
    ]));
    let status = nf.wait_exit(Duration::from_secs(15));
    (status.and_then(|s| s.code()), nf.stderr())
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_and_kept() {
    let dir = TempDir::new("notsock");
    let sock = dir.path("api.sock");
    std::fs::write(&sock, "someone's data").unwrap();
    let (code, stderr) = refused_api_socket(&sock);
    assert_eq!(code, Some(1), "{stderr}");
    let want = format!(
        "cannot create the API socket: {} exists and is not a socket",
        sock.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "someone's data");
}

#[test]
fn a_second_instance_does_not_take_over_a_live_socket() {
    let s = setup();
    let (code, stderr) = refused_api_socket(&s.sock);
    assert_eq!(code, Some(1), "{stderr}");
    let want = format!("another instance is listening on {}", s.sock.display());
    assert!(stderr.contains(&want), "{stderr}");
    // The first instance still answers on its socket.
    assert_eq!(
        api(&s.sock, r#"{"execute":"list_hostfwd"}"#, Style::Podman),
        r#"{"return":{"entries":[]},"entries":[]}"#
    );
}

/// Names of the files in a directory watched by `watch` whose attributes
/// changed (IN_ATTRIB), and of those created (IN_CREATE), in the events
/// waiting on it.
fn inotify_events(fd: &std::os::fd::OwnedFd) -> (Vec<String>, Vec<String>) {
    use std::os::fd::AsRawFd;
    let (mut attrib, mut created) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: reads into a buffer we own, of the length passed.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let mut at = 0;
    // struct inotify_event: wd, mask, cookie, len, then len bytes of name.
    const HEADER: usize = 16;
    while n > 0 && at + HEADER <= n as usize {
        let word = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
        let (mask, len) = (word(4), word(12) as usize);
        let name = &buf[at + HEADER..at + HEADER + len];
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_string();
        if mask & libc::IN_ATTRIB != 0 {
            attrib.push(name.clone());
        }
        if mask & libc::IN_CREATE != 0 {
            created.push(name);
        }
        at += HEADER + len;
    }
    (attrib, created)
}

#[test]
fn the_socket_is_private_from_its_first_instant_whatever_the_umask() {
    use std::os::fd::FromRawFd;
    let dir = TempDir::new("umask");
    let sock = dir.path("api.sock");
    // SAFETY: plain syscalls on a path we own; the fd is owned at once.
    let watch = unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
        assert!(fd >= 0);
        let path = std::ffi::CString::new(dir.0.to_str().unwrap()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_ATTRIB;
        assert!(libc::inotify_add_watch(fd, path.as_ptr(), mask) >= 0);
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    let ns = Namespace::new();
    let pid = ns.pid.to_string();
    let mut opts = Options::args(&["-c", "-a", sock.to_str().unwrap(), &pid, "tap0"]);
    // With umask 0, a socket created first and narrowed after would be
    // open to every user until the chmod.
    opts.exec_via = ["unshare", "-n", "sh", "-c", "umask 0; exec \"$@\"", "sh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let (attrib, created) = inotify_events(&watch);
    assert!(created.contains(&"api.sock".to_string()), "{created:?}");
    assert!(
        !attrib.contains(&"api.sock".to_string()),
        "the socket's mode was changed after it was created"
    );
}

#[test]
fn sighup_ends_netferry_and_removes_the_socket_unless_nohup_ignores_it() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("hup");
    for nohup in [false, true] {
        let ns = Namespace::new();
        let sock = dir.path(&format!("api-{nohup}.sock"));
        let pid = ns.pid.to_string();
        let mut opts = Options::args(&["-c", "-a", sock.to_str().unwrap(), &pid, "tap0"]);
        let via: &[&str] = if nohup {
            &["unshare", "-n", "nohup"]
        } else {
            &["unshare", "-n"]
        };
        opts.exec_via = via.iter().map(|s| s.to_string()).collect();
        let mut nf = Netferry::spawn(opts);
        nf.wait_ready();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(nf.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        if nohup {
            // Still serving: the API answers after the hang-up.
            assert_eq!(
                api(&sock, r#"{"execute":"list_hostfwd"}"#, Style::Podman),
                r#"{"return":{"entries":[]},"entries":[]}"#
            );
            assert!(nf.wait_exit(Duration::ZERO).is_none());
        } else {
            let status = nf.wait_exit(Duration::from_secs(5)).unwrap();
            assert_eq!(status.signal(), Some(libc::SIGHUP), "{}", nf.output());
            assert!(!sock.exists(), "socket file left behind");
        }
    }
}

#[test]
fn tcp_forward_carries_20mb_both_ways_intact() {
    let s = setup();
    let _peers = guest_echo(&s, 5000);
    assert_eq!(
        s.add("tcp", "127.0.0.1", 7000, 5000),
        r#"{"return":{"id":1}}"#
    );
    let mut c = s.host_connect("127.0.0.1:7000").unwrap();
    let data = pattern(20 << 20, 9);
    let sent = data.clone();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    if let Err(e) = c.read_to_end(&mut back) {
        panic!("after {} bytes back: {e}\n{}", back.len(), s.nf.output());
    }
    writer.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "data corrupted through the forward");
}

#[test]
fn guest_sees_the_real_client_address_and_the_gateway_for_loopback() {
    let s = setup();
    let peers = guest_echo(&s, 5001);
    assert_eq!(
        s.add("tcp", "0.0.0.0", 7001, 5001),
        r#"{"return":{"id":1}}"#
    );

    let addr: SocketAddr = format!("{HOST_ADDR}:7001").parse().unwrap();
    let mut far = s.net.in_remote(move || connect(addr)).unwrap();
    far.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    far.read_exact(&mut b).unwrap();
    let seen = peers.recv_timeout(IO_TIMEOUT).unwrap();
    let local = far.local_addr().unwrap();
    assert_eq!(seen.ip().to_string(), REMOTE_ADDR);
    assert_eq!(seen.port(), local.port(), "the client's own port too");

    let mut near = s.host_connect("127.0.0.1:7001").unwrap();
    near.write_all(b"y").unwrap();
    near.read_exact(&mut b).unwrap();
    assert_eq!(
        peers.recv_timeout(IO_TIMEOUT).unwrap().ip().to_string(),
        "10.0.2.2"
    );
}

#[test]
fn ipv6_listener_and_port_zero() {
    let s = setup();
    let _peers = guest_echo(&s, 5002);
    let reply = s.add("tcp", "::1", 0, 5002);
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let port = v["return"]["host_port"].as_u64().expect("no host_port") as u16;
    let mut c = s.host_connect(&format!("[::1]:{port}")).unwrap();
    c.write_all(b"over ipv6").unwrap();
    let mut b = [0u8; 9];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"over ipv6");
}

#[test]
fn guest_refusal_resets_the_host_client() {
    let s = setup();
    s.add("tcp", "127.0.0.1", 7003, 5999); // nothing listens on 5999
    // The reset can beat connect()'s own completion check, or come after.
    let r = s.host_connect("127.0.0.1:7003").and_then(|mut c| {
        let mut b = [0u8; 1];
        c.read(&mut b)
    });
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}\n{}",
        s.nf.output()
    );
}

#[test]
fn udp_forward_keeps_the_client_address() {
    let s = setup();
    let guest = s.ns.in_ns(|| UdpSocket::bind("0.0.0.0:5353").unwrap());
    guest.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(
        s.add("udp", "0.0.0.0", 7004, 5353),
        r#"{"return":{"id":1}}"#
    );
    let client = s.net.in_remote(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .send_to(b"query", format!("{HOST_ADDR}:7004"))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = guest
        .recv_from(&mut buf)
        .expect("nothing reached the guest");
    assert_eq!(&buf[..n], b"query");
    assert_eq!(from.ip().to_string(), REMOTE_ADDR);
    assert_eq!(from.port(), client.local_addr().unwrap().port());
    guest.send_to(b"answer", from).unwrap();
    let (n, back_from) = client.recv_from(&mut buf).expect("no reply");
    assert_eq!(&buf[..n], b"answer");
    assert_eq!(back_from.to_string(), format!("{HOST_ADDR}:7004"));
}

#[test]
fn a_port_in_use_is_refused_with_slirp4netns_text() {
    let s = setup();
    let _taken = s
        .net
        .in_host(|| TcpListener::bind("127.0.0.1:7005").unwrap());
    let reply = s.add("tcp", "127.0.0.1", 7005, 80);
    assert!(
        reply
            .starts_with(r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"#),
        "{reply}"
    );
}

#[test]
fn removal_closes_the_listener_but_open_connections_finish() {
    let s = setup();
    let _peers = guest_echo(&s, 5003);
    s.add("tcp", "127.0.0.1", 7006, 5003);
    let mut open = s.host_connect("127.0.0.1:7006").unwrap();
    open.write_all(b"1").unwrap();
    let mut b = [0u8; 1];
    open.read_exact(&mut b).unwrap();
    assert_eq!(
        s.api(r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#),
        r#"{"return":{}}"#
    );
    let err = s.host_connect("127.0.0.1:7006").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    open.write_all(b"2").unwrap();
    open.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"2", "the open connection must keep working");
}

#[test]
fn silent_and_slow_api_clients_stall_nothing() {
    let s = setup();
    let _peers = guest_echo(&s, 5004);
    // One client connects and says nothing; another sends half a request;
    // a third asks for a big reply and never reads it.
    let _silent = UnixStream::connect(&s.sock).unwrap();
    let mut half = UnixStream::connect(&s.sock).unwrap();
    half.write_all(br#"{"execute":"list_"#).unwrap();
    let mut deaf = UnixStream::connect(&s.sock).unwrap();
    deaf.write_all(br#"{"execute":"list_hostfwd"}"#).unwrap();
    // Meanwhile the API answers others and traffic flows.
    assert_eq!(
        s.add("tcp", "127.0.0.1", 7007, 5004),
        r#"{"return":{"id":1}}"#
    );
    let mut c = s.host_connect("127.0.0.1:7007").unwrap();
    let data = pattern(4 << 20, 3);
    let sent = data.clone();
    let mut w = c.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    t.join().unwrap();
    assert!(back == data);
    assert!(s.ns.ping("10.0.2.2"));
}

/// rootlesskit (Docker rootless's network helper) with netferry in place
/// of slirp4netns, as an unprivileged user with subordinate ids: a page
/// served inside is fetched through `-p`, and inside reaches a host server
/// through 10.0.2.2.
#[test]
fn rootlesskit_runs_netferry_as_an_unprivileged_user() {
    let net = TestNet::new();
    let dir = TempDir::new("rk-out");
    let www = dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("host.txt"), "file from the host\n").unwrap();
    let mut host_httpd = net
        .host_cmd(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "127.0.0.1:8000",
            "-h",
            www.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    // The guest fetches from the host through 10.0.2.2 and waits for its
    // SLAAC address (rootlesskit passes --enable-ipv6 on with --ipv6).
    let script = format!(
        "busybox wget -q -O {out} http://10.0.2.2:8000/host.txt; \
         (for i in $(seq 50); do ip -6 addr show tap0 scope global | grep -q fd00 && break; sleep 0.1; done; \
         ip -6 addr show tap0 scope global > {ip6}) &",
        out = dir.path("fetched").display(),
        ip6 = dir.path("ip6").display(),
    );
    let rk = common::Rootlesskit::spawn(
        &net,
        &[
            "--ipv6",
            "--port-driver=slirp4netns",
            "-p",
            "127.0.0.1:8080:80/tcp",
        ],
        "page from inside\n",
        &script,
    );
    let got = rk.serves(
        &net,
        "http://127.0.0.1:8080/index.html",
        "page from inside\n",
    );
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path("ip6")).is_ok_and(|s| !s.is_empty())
    });
    let fetched = std::fs::read_to_string(dir.path("fetched")).unwrap_or_default();
    let ip6 = std::fs::read_to_string(dir.path("ip6")).unwrap_or_default();
    let _ = host_httpd.kill();
    let _ = host_httpd.wait();
    assert!(got, "no page through the forward\n{}", rk.log());
    assert_eq!(fetched, "file from the host\n", "{}", rk.log());
    assert!(
        ip6.contains("inet6 fd00::"),
        "no SLAAC address with --ipv6: {ip6:?}\n{}",
        rk.log()
    );
}

#[test]
fn rootlesskit_with_disable_host_loopback_and_its_builtin_port_driver() {
    let net = TestNet::new();
    let dir = TempDir::new("rk-out");
    let _host = net.in_host(|| std::net::TcpListener::bind("127.0.0.1:8002").unwrap());
    // The host's loopback must be out of reach from inside.
    let script = format!(
        "busybox nc -w 3 10.0.2.2 8002 </dev/null && echo REACHED > {out} || echo REFUSED > {out};",
        out = dir.path("loopback").display()
    );
    let rk = common::Rootlesskit::spawn(
        &net,
        &[
            "--disable-host-loopback",
            "--port-driver=builtin",
            "-p",
            "127.0.0.1:8081:80/tcp",
        ],
        "builtin driver page\n",
        &script,
    );
    let got = rk.serves(
        &net,
        "http://127.0.0.1:8081/index.html",
        "builtin driver page\n",
    );
    wait_until(Duration::from_secs(10), || dir.path("loopback").exists());
    let loopback = std::fs::read_to_string(dir.path("loopback")).unwrap_or_default();
    assert!(
        got,
        "no page through rootlesskit's builtin port driver\n{}",
        rk.log()
    );
    assert_eq!(loopback.trim(), "REFUSED", "{}", rk.log());
}
