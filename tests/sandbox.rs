//! `--enable-sandbox` and `--enable-seccomp` on a real netferry: what the
//! locked-down process holds (capabilities, seccomp, its root, its mounts)
//! and that everything it serves still works inside the lock: traffic, the
//! API, DNS through a resolv.conf that is a symlink out of /etc and /run,
//! signals and the exit fd. As root and as an unprivileged user, with each
//! way of naming the target.
//!
//! netferry runs in a test-made host namespace (`TestNet`), in a private
//! mount namespace where /etc is overlaid so that /etc/resolv.conf is a
//! symlink to a file in the test's scratch directory naming a dnsmasq on
//! the host namespace's loopback. No query leaves the machine.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{NOBODY, Namespace, Netferry, Options, TempDir, TestNet, as_user_args, wait_until};

const IO_TIMEOUT: Duration = Duration::from_secs(20);
const BOTH: &[&str] = &["--enable-sandbox", "--enable-seccomp"];
/// CAP_NET_BIND_SERVICE alone, as /proc/PID/status prints it.
const NET_BIND_ONLY: &str = "0000000000000400";

/// How netferry is pointed at the container.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Pid,
    /// `--netns-type=path` with `--userns-path`, as rootlesskit 2 passes.
    PathWithUserns,
}

struct Run {
    net: TestNet,
    ns: Namespace,
    nf: Netferry,
    dir: TempDir,
    sock: PathBuf,
    _dns: Vec<common::KillOnDrop>,
}

/// A container namespace, DNS servers, and netferry serving it with
/// `flags`, as `uid` (root when `None`), with -c, an API socket and an
/// exit fd.
fn start(uid: Option<u32>, target: Target, flags: &[&str]) -> Run {
    let net = TestNet::new();
    let ns = match uid {
        Some(u) => Namespace::new_as(u),
        None => Namespace::new(),
    };
    let dir = TempDir::new("sbx");
    let sock = dir.path("api.sock");
    let dns = vec![
        common::dns_server(&net, "127.0.0.1", &["198.51.100.2"]),
        common::dns_server(&net, "127.0.0.2", &["198.51.100.7"]),
    ];
    // The resolv.conf netferry sees: /etc/resolv.conf -> DIR/dns/resolv.conf.
    std::fs::create_dir_all(dir.path("dns")).unwrap();
    std::fs::write(dir.path("dns/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    std::fs::create_dir_all(dir.path("upper")).unwrap();
    std::fs::create_dir_all(dir.path("work")).unwrap();
    std::os::unix::fs::symlink(dir.path("dns/resolv.conf"), dir.path("upper/resolv.conf")).unwrap();
    let overlay = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc && exec \"$@\"",
        dir.path("upper").display(),
        dir.path("work").display()
    );

    let pid = ns.pid.to_string();
    let mut args: Vec<String> = vec!["-c".into(), "-a".into(), sock.display().to_string()];
    args.extend(flags.iter().map(|s| s.to_string()));
    match target {
        Target::Pid => args.push(pid),
        Target::PathWithUserns => {
            args.push("--netns-type=path".into());
            args.push(format!("--userns-path={}", ns.user_path()));
            args.push(ns.net_path());
        }
    }
    args.push("tap0".into());
    let mut opts = Options {
        args,
        ready_fd: true,
        exit_fd: true,
        uid,
        ..Default::default()
    };
    // nsenter, unshare and sh all exec: the child is netferry itself.
    opts.exec_via = [
        "nsenter",
        &format!("--net={}", net.host_path()),
        "unshare",
        "-m",
        "sh",
        "-c",
        &overlay,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    Run {
        net,
        ns,
        nf,
        dir,
        sock,
        _dns: dns,
    }
}

fn status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

fn field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn root_entries(pid: i32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

impl Run {
    fn pid(&self) -> i32 {
        self.nf.pid()
    }

    fn api(&self, req: &str) -> String {
        let mut c = UnixStream::connect(&self.sock).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    }

    fn dig(&self, mode: &str) -> String {
        let out = self.ns.run(&[
            "dig",
            "+short",
            "+tries=1",
            "+time=3",
            mode,
            "@10.0.2.3",
            "probe.netferry.test",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Capabilities, no_new_privs and, when asked, seccomp.
    fn assert_locked_down(&self, seccomp: bool) {
        let s = status(self.pid());
        for key in ["CapEff", "CapPrm", "CapBnd", "CapInh"] {
            assert_eq!(field(&s, key), NET_BIND_ONLY, "{key}\n{s}");
        }
        assert_eq!(field(&s, "CapAmb"), "0000000000000000", "{s}");
        assert_eq!(field(&s, "NoNewPrivs"), "1", "{s}");
        let want = if seccomp { "2" } else { "0" };
        assert_eq!(field(&s, "Seccomp"), want, "{s}");
    }

    /// The root holds /etc, /run and the way to resolv.conf's target
    /// (under the scratch directory), nothing else.
    fn assert_root_is_bare(&self) {
        let first = self
            .dir
            .0
            .components()
            .nth(1)
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let want: BTreeSet<String> = ["etc", "run", &first].map(String::from).into();
        assert_eq!(root_entries(self.pid()), want);
        let root = PathBuf::from(format!("/proc/{}/root", self.pid()));
        // Only the directory holding the target, not its siblings.
        let inside = root.join(self.dir.0.strip_prefix("/").unwrap());
        let held: BTreeSet<String> = std::fs::read_dir(&inside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(held, BTreeSet::from(["dns".to_string()]));
        assert!(
            std::fs::write(root.join("etc/netferry-probe"), "x").is_err(),
            "/etc inside the sandbox is writable"
        );
    }

    /// A mount made in netferry's namespace stays there.
    fn assert_mounts_stay_inside(&self) {
        let tag = format!("netferry-probe-{}", self.pid());
        let pid = self.pid().to_string();
        mount_in(self.pid(), Some(&tag), "/run").expect("cannot mount inside netferry's namespace");
        let mounts = |who: &str| std::fs::read_to_string(format!("/proc/{who}/mountinfo")).unwrap();
        assert!(mounts(&pid).contains(&tag));
        assert!(!mounts("self").contains(&tag), "the mount leaked out");
        assert!(!mounts("1").contains(&tag), "the mount leaked out");
        mount_in(self.pid(), None, "/run").expect("cannot unmount it again");
        // Nor did netferry's own mounts (tmpfs root, binds) leak.
        assert!(!mounts("self").contains(&self.dir.0.display().to_string()));
    }

    /// TCP to the host through the gateway, ping, DNS both ways.
    fn assert_traffic(&self) {
        let listener = self
            .net
            .in_host(|| TcpListener::bind("127.0.0.1:0").unwrap());
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || common::echo_until_eof(conn));
            }
        });
        let addr: SocketAddr = format!("10.0.2.2:{port}").parse().unwrap();
        let mut c = self
            .ns
            .in_ns(move || common::connect(addr, IO_TIMEOUT))
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.nf.output()));
        let data = common::pattern(1 << 20, 7);
        let sent = data.clone();
        let mut w = c.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        t.join().unwrap();
        assert!(back == data, "TCP data came back changed");
        self.assert_datagram_stream();
        assert!(self.ns.ping("10.0.2.2"), "{}", self.nf.output());
        for mode in ["+notcp", "+tcp"] {
            assert_eq!(
                self.dig(mode),
                "198.51.100.2",
                "dig {mode}\n{}",
                self.nf.output()
            );
        }
    }

    /// An unpaced stream of small datagrams, fast enough for the event
    /// loop to pause between polls (a sleep, which the filter must
    /// allow), and then datagrams must still get through.
    fn assert_datagram_stream(&self) {
        let sink = self.net.in_host(|| UdpSocket::bind("127.0.0.1:0").unwrap());
        sink.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sink.local_addr().unwrap().port();
        let addr: SocketAddr = format!("10.0.2.2:{port}").parse().unwrap();
        let guest = self.ns.in_ns(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        for i in 0..200_000u32 {
            // Full buffers drop some on the way; what counts is after.
            let _ = guest.send_to(&i.to_be_bytes(), addr);
        }
        // The stream filled the sink's buffer: read it empty while
        // sending a last datagram until one comes through.
        let got_last = wait_until(IO_TIMEOUT, || {
            if let Err(e) = guest.send_to(b"last", addr) {
                panic!("the guest cannot send: {e}\n{}", self.nf.output());
            }
            let mut buf = [0; 16];
            while let Ok(n) = sink.recv(&mut buf) {
                if &buf[..n] == b"last" {
                    return true;
                }
            }
            false
        });
        assert!(got_last, "datagrams stopped\n{}", self.nf.output());
    }

    /// Add a forward, use it, remove it.
    fn assert_forward(&self) {
        let guest = self.ns.in_ns(|| TcpListener::bind("0.0.0.0:8081").unwrap());
        std::thread::spawn(move || {
            for conn in guest.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || common::echo_until_eof(conn));
            }
        });
        let reply = self.api(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":0,"guest_port":8081}}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let port = v["return"]["host_port"]
            .as_u64()
            .unwrap_or_else(|| panic!("{reply}\n{}", self.nf.output()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut c = self
            .net
            .in_host(move || common::connect(addr, IO_TIMEOUT))
            .unwrap();
        c.write_all(b"through the forward").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, "through the forward", "{}", self.nf.output());
        let id = v["return"]["id"].as_u64().unwrap();
        assert_eq!(
            self.api(&format!(
                r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#
            )),
            r#"{"return":{}}"#
        );
        assert!(
            self.net
                .in_host(move || common::connect(addr, IO_TIMEOUT))
                .is_err()
        );
    }

    /// Replace the resolv.conf target (write and rename, as resolvers
    /// do): DNS follows within the re-read interval.
    fn assert_dns_follows_changes(&self) {
        let next = self.dir.path("dns/resolv.conf.new");
        std::fs::write(&next, "nameserver 127.0.0.2\n").unwrap();
        std::fs::rename(&next, self.dir.path("dns/resolv.conf")).unwrap();
        let followed = wait_until(Duration::from_secs(10), || {
            self.dig("+notcp") == "198.51.100.7"
        });
        assert!(
            followed,
            "DNS did not follow the change\n{}",
            self.nf.output()
        );
    }

    /// SIGTERM: death by SIGTERM once the API socket is removed from
    /// inside the sandbox.
    fn assert_sigterm_cleans_up(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        use std::os::unix::process::ExitStatusExt;
        let st = self.nf.wait_exit(Duration::from_secs(10));
        assert_eq!(
            st.and_then(|s| s.signal()),
            Some(libc::SIGTERM),
            "{}",
            self.nf.output()
        );
        assert!(!self.sock.exists(), "API socket left behind");
        assert_no_denials(&self.nf);
    }
}

/// Mount a tmpfs named `tag` on `target` in the mount namespace of
/// `pid` (or unmount `target` when `tag` is `None`). The sandbox holds no
/// binaries, so mount(8) cannot run in there: a forked child joins the
/// namespace and makes the syscall itself, reporting by its exit code.
fn mount_in(pid: i32, tag: Option<&str>, target: &str) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    let ns_fd = ns.as_raw_fd();
    let tag = tag.map(|t| CString::new(t).unwrap());
    let target = CString::new(target).unwrap();
    let fstype = CString::new("tmpfs").unwrap();
    let mut cmd = Command::new("/nonexistent");
    // SAFETY: the closure runs in the forked child and only makes raw
    // syscalls on values prepared above, then _exits; it never returns
    // to exec.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0 {
                -1
            } else if let Some(tag) = &tag {
                libc::mount(
                    tag.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            } else {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH)
            };
            let code = if rc == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
            };
            libc::_exit(code)
        });
    }
    match cmd.status()?.code() {
        Some(0) => Ok(()),
        Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
        None => Err(std::io::Error::other("the mounting child was killed")),
    }
}

/// A syscall the filter refused would show as EPERM ("Operation not
/// permitted") in netferry's log.
fn assert_no_denials(nf: &Netferry) {
    let err = nf.stderr();
    assert!(!err.contains("not permitted"), "{}", nf.output());
}

fn full_session(uid: Option<u32>, target: Target) {
    let mut r = start(uid, target, BOTH);
    r.assert_locked_down(true);
    r.assert_root_is_bare();
    r.assert_mounts_stay_inside();
    r.assert_traffic();
    r.assert_forward();
    r.assert_dns_follows_changes();
    r.assert_sigterm_cleans_up();
}

#[test]
fn both_as_root_with_a_pid() {
    full_session(None, Target::Pid);
}

#[test]
fn both_as_an_unprivileged_user_with_a_pid() {
    full_session(Some(NOBODY), Target::Pid);
}

#[test]
fn both_as_an_unprivileged_user_with_a_path_and_userns_path() {
    let mut r = start(Some(NOBODY), Target::PathWithUserns, BOTH);
    r.assert_locked_down(true);
    r.assert_root_is_bare();
    r.assert_traffic();
    r.assert_forward();
    // The exit fd still works from inside.
    r.nf.hang_up_exit_fd();
    let st = r.nf.wait_exit(Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", r.nf.output());
    assert!(!r.sock.exists(), "API socket left behind");
    assert_no_denials(&r.nf);
}

#[test]
fn sandbox_alone_as_an_unprivileged_user() {
    let mut r = start(Some(NOBODY), Target::Pid, &["--enable-sandbox"]);
    r.assert_locked_down(false);
    r.assert_root_is_bare();
    r.assert_traffic();
    r.assert_dns_follows_changes();
    r.assert_sigterm_cleans_up();
}

#[test]
fn seccomp_alone_as_root() {
    let mut r = start(None, Target::Pid, &["--enable-seccomp"]);
    let s = status(r.pid());
    assert_eq!(field(&s, "Seccomp"), "2", "{s}");
    assert_eq!(field(&s, "NoNewPrivs"), "1", "{s}");
    assert_ne!(
        field(&s, "CapEff"),
        NET_BIND_ONLY,
        "capabilities were dropped"
    );
    assert!(root_entries(r.pid()).contains("usr"), "root was changed");
    r.assert_traffic();
    r.assert_forward();
    r.assert_dns_follows_changes();
    r.assert_sigterm_cleans_up();
}

/// A caller that opens the tap and hands it over: `script` runs in the
/// namespace (as `wrapper` says) and execs netferry with the fd.
fn tapfd_session(wrapper: Vec<String>, uid: Option<u32>, ns: &Namespace) {
    let script = "import fcntl, os, struct, sys\n\
        fd = os.open('/dev/net/tun', os.O_RDWR)\n\
        fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'tap0', 0x0002 | 0x1000))\n\
        os.set_inheritable(fd, True)\n\
        os.execvp(sys.argv[1], sys.argv[1:] + [str(fd)])\n";
    let mut opts = Options::args(&[BOTH[0], BOTH[1], "--netns-type=tapfd"]);
    opts.uid = uid;
    opts.exec_via = wrapper;
    opts.exec_via
        .extend(["python3", "-c", script].map(String::from));
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    let s = status(nf.pid());
    assert_eq!(field(&s, "CapEff"), NET_BIND_ONLY, "{s}");
    assert_eq!(field(&s, "Seccomp"), "2", "{s}");
    assert!(!root_entries(nf.pid()).contains("usr"), "no sandbox root");
    ns.ok(&["ip", "link", "set", "tap0", "up"]);
    ns.ok(&["ip", "addr", "add", "10.0.2.100/24", "dev", "tap0"]);
    assert!(ns.ping("10.0.2.2"), "{}", nf.output());
    assert_no_denials(&nf);
}

#[test]
fn tapfd_inside_the_containers_user_namespace() {
    // Run by the namespace's unprivileged owner, inside its user
    // namespace: root there, with the right to mount.
    let ns = Namespace::new_as(NOBODY);
    let mut wrapper = vec!["setpriv".to_string()];
    wrapper.extend(as_user_args(NOBODY));
    wrapper.extend(
        [
            "nsenter",
            "-t",
            &ns.pid.to_string(),
            "-U",
            "-n",
            "--preserve-credentials",
            "--",
        ]
        .map(String::from),
    );
    tapfd_session(wrapper, None, &ns);
}

#[test]
fn tapfd_as_an_unprivileged_user_outside_any_user_namespace() {
    // No namespace to join: netferry makes a user namespace of its own.
    let ns = Namespace::new();
    let wrapper = ["nsenter", "-t", &ns.pid.to_string(), "-n", "--"].map(String::from);
    tapfd_session(wrapper.to_vec(), Some(NOBODY), &ns);
}

/// rootlesskit (Docker rootless) with both of its slirp4netns hardening
/// flags, as an unprivileged user: a published port reaches a server
/// inside.
#[test]
fn rootlesskit_with_sandbox_and_seccomp_serves_a_published_port() {
    let net = TestNet::new();
    let rk = common::Rootlesskit::spawn(
        &net,
        &[
            "--slirp4netns-sandbox=true",
            "--slirp4netns-seccomp=true",
            "--port-driver=slirp4netns",
            "-p",
            "127.0.0.1:8080:80/tcp",
        ],
        "sandboxed page\n",
        "",
    );
    let got = rk.serves(&net, "http://127.0.0.1:8080/index.html", "sandboxed page\n");
    // The helper rootlesskit started really is locked down.
    let helper = Command::new("pgrep")
        .args(["-f", &format!("^{} ", rk.bin.display())])
        .output()
        .unwrap();
    let helper_pid: Option<i32> = String::from_utf8_lossy(&helper.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok());
    let helper_status = helper_pid.map(status).unwrap_or_default();
    assert!(got, "no page through the forward\n{}", rk.log());
    assert_eq!(field(&helper_status, "Seccomp"), "2", "{helper_status}");
    assert_eq!(
        field(&helper_status, "CapEff"),
        NET_BIND_ONLY,
        "{helper_status}"
    );
}
