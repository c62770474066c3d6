//! Shared pieces of the integration tests: a real network namespace to
//! stand in for a container, and a real netferry process serving it.
//!
//! Everything here touches only namespaces the test creates itself, so no
//! test traffic can leave the machine. Waits have deadlines and
//! poll for the condition; no test depends on a fixed sleep being enough.

#![allow(dead_code)] // each test binary uses a different part of this

pub mod podman;
pub mod rootless;
pub mod skip;

pub use skip::skip_or_fail;

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::pipe2;

pub const NOBODY: u32 = 65534;
/// Fd numbers the ready and exit pipes get in netferry; high enough not
/// to collide with anything the test harness has open.
pub const READY_FD: RawFd = 100;
pub const EXIT_FD: RawFd = 101;

pub fn netferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_netferry")
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("netferry-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        // World-accessible so unprivileged runs can use it too.
        Command::new("chmod")
            .arg("0777")
            .arg(&path)
            .status()
            .unwrap();
        TempDir(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Wait until `cond` holds, up to `limit`; false on time-out.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    cond()
}

fn ns_link(pid: u32, kind: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

/// A fresh user+network namespace held open by `sleep`: the "container".
pub struct Namespace {
    child: Child,
    pub pid: u32,
}

impl Namespace {
    /// As root (the test's own user).
    pub fn new() -> Self {
        Self::spawn(Command::new("unshare"))
    }

    /// Created by an unprivileged user, as rootless podman does.
    pub fn new_as(uid: u32) -> Self {
        let mut cmd = Command::new("setpriv");
        cmd.args(as_user_args(uid)).arg("unshare");
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .args(["-Urn", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot run unshare (util-linux)");
        let pid = child.id();
        let ours = ns_link(std::process::id(), "net");
        // unshare execs sleep in the same process once the namespaces
        // exist; until then /proc/PID/ns/net still shows ours.
        assert!(
            wait_until(Duration::from_secs(10), || {
                let theirs = ns_link(pid, "net");
                theirs.is_some() && theirs != ours && proc_comm(pid) == "sleep"
            }),
            "namespace holder {pid} never entered its namespace"
        );
        Namespace { child, pid }
    }

    /// A command line run inside the namespace (user and network).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-U", "-n", "--"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("cannot run nsenter")
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed in the namespace: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ...` parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).expect("ip -j printed no JSON")
    }

    /// One `busybox ping` of `addr`; true when it was answered.
    pub fn ping(&self, addr: &str) -> bool {
        self.run(&["busybox", "ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }

    pub fn net_path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid)
    }

    /// Run `f` inside this namespace's network (see `in_netns`).
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.net_path(), f)
    }

    pub fn user_path(&self) -> String {
        format!("/proc/{}/ns/user", self.pid)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn as_user_args(uid: u32) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// How to start netferry.
#[derive(Default)]
pub struct Options {
    pub args: Vec<String>,
    /// Pass a ready pipe as `-r 100`.
    pub ready_fd: bool,
    /// Pass an exit pipe as `-e 101`.
    pub exit_fd: bool,
    /// Run as this user instead of root.
    pub uid: Option<u32>,
    /// Run inside this test-made host namespace (`ip netns` name), so its
    /// host sockets can reach only the test's own peers. Without one,
    /// netferry runs in a fresh empty network namespace: whatever it
    /// might send goes nowhere.
    pub host_netns: Option<String>,
    /// Run netferry through this command line instead (it gets netferry's
    /// path and arguments appended), e.g. to hand it an inherited fd.
    pub exec_via: Vec<String>,
}

impl Options {
    pub fn args(args: &[&str]) -> Self {
        Options {
            args: args.iter().map(|s| s.to_string()).collect(),
            ready_fd: true,
            ..Default::default()
        }
    }
}

/// A running netferry; killed on drop. stdout and stderr go to files so a
/// failing test can show them.
pub struct Netferry {
    pub child: Option<Child>,
    ready: Option<OwnedFd>,
    exit_writer: Option<OwnedFd>,
    dir: TempDir,
}

impl Netferry {
    pub fn spawn(opts: Options) -> Self {
        let dir = TempDir::new("nf");
        // ip netns exec also bind-mounts /etc/netns/NAME/resolv.conf over
        // /etc/resolv.conf, which is how DNS tests point netferry at their
        // own server.
        let mut cmd = match &opts.host_netns {
            _ if !opts.exec_via.is_empty() => {
                let mut c = Command::new(&opts.exec_via[0]);
                c.args(&opts.exec_via[1..]);
                c
            }
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]);
                c
            }
            None => {
                let mut c = Command::new("unshare");
                c.arg("-n");
                c
            }
        };
        if let Some(uid) = opts.uid {
            cmd.arg("setpriv").args(as_user_args(uid));
        }
        cmd.arg(netferry_bin());
        let mut fd_map: Vec<(RawFd, RawFd)> = Vec::new();
        let mut ready = None;
        let mut exit_writer = None;
        let mut keep: Vec<OwnedFd> = Vec::new();
        if opts.ready_fd {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
            fd_map.push((w.as_raw_fd(), READY_FD));
            cmd.args(["-r", &READY_FD.to_string()]);
            ready = Some(r);
            keep.push(w);
        }
        if opts.exit_fd {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
            fd_map.push((r.as_raw_fd(), EXIT_FD));
            cmd.args(["-e", &EXIT_FD.to_string()]);
            exit_writer = Some(w);
            keep.push(r);
        }
        cmd.args(&opts.args)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path("stdout")).unwrap())
            .stderr(File::create(dir.path("stderr")).unwrap())
            .env("RUST_LOG", "debug");
        // SAFETY: dup2 is async-signal-safe, and the closure touches only
        // the fd numbers captured by value. The pipes are O_CLOEXEC in the
        // test process so that no other concurrently spawned child inherits
        // them; only this child gets copies, at the numbers it was told.
        unsafe {
            cmd.pre_exec(move || {
                for &(src, dst) in &fd_map {
                    if libc::dup2(src, dst) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("cannot start netferry");
        drop(keep); // the child has its copies; ours would hold pipes open
        Netferry {
            child: Some(child),
            ready,
            exit_writer,
            dir,
        }
    }

    /// Wait for the ready byte; panics with netferry's output on failure.
    pub fn wait_ready(&mut self) {
        let fd = self.ready.take().expect("started without a ready fd");
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(15_000u16)).unwrap();
        let mut byte = Vec::new();
        if n > 0 {
            File::from(fd).read_to_end(&mut byte).unwrap();
        }
        assert_eq!(
            byte,
            b"1",
            "no ready byte; netferry said:\n{}",
            self.output()
        );
    }

    /// Close our end of the exit pipe, as podman does when the container
    /// stops.
    pub fn hang_up_exit_fd(&mut self) {
        self.exit_writer.take().expect("started without an exit fd");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Wait for exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path("stdout")).unwrap_or_default()
    }

    /// Sockets netferry holds open now.
    pub fn sockets(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        fs::read_link(e.path())
                            .map(|l| l.to_string_lossy().starts_with("socket:"))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// CPU seconds netferry has used (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path("stderr")).unwrap_or_default()
    }

    pub fn output(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }
}

impl Drop for Netferry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// netferry serving a fresh container namespace with `-c`, an API socket
/// and extra flags, from inside a test host namespace.
pub struct Served {
    pub net: TestNet,
    pub ns: Namespace,
    pub nf: Netferry,
    pub api: PathBuf,
    /// Holds the API socket; removed with it.
    pub dir: TempDir,
}

impl Served {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_via(extra, &[])
    }

    /// The same, run through `prefix` (e.g. `prlimit ... --`).
    pub fn start_via(extra: &[&str], prefix: &[&str]) -> Self {
        let net = TestNet::new();
        let ns = Namespace::new();
        let dir = TempDir::new("served");
        let api = dir.path("api.sock");
        let api_arg = format!("--api-socket={}", api.display());
        let pid = ns.pid.to_string();
        let mut args = vec!["-c", &api_arg];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&pid, "tap0"]);
        let mut opts = Options::args(&args);
        if prefix.is_empty() {
            opts.host_netns = Some(net.host.clone());
        } else {
            let host = format!("--net={}", net.host_path());
            opts.exec_via = ["nsenter", &host, "--"]
                .iter()
                .chain(prefix)
                .map(|s| s.to_string())
                .collect();
        }
        let mut nf = Netferry::spawn(opts);
        nf.wait_ready();
        Served {
            net,
            ns,
            nf,
            api,
            dir,
        }
    }

    /// One API request and its reply (empty when the connection failed).
    pub fn api(&self, request: &[u8]) -> String {
        use std::io::Write;
        let Ok(mut c) = std::os::unix::net::UnixStream::connect(&self.api) else {
            return String::new();
        };
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(request);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        reply
    }

    /// The `status` command's reply.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.api(br#"{"execute":"status"}"#)).unwrap()
    }
}

/// Start netferry for `ns` with `-c` and extra flags, and wait until ready.
pub fn serve(ns: &Namespace, extra: &[&str]) -> Netferry {
    serve_from(None, ns, extra)
}

/// The same, with netferry inside the test's host namespace `host`.
pub fn serve_from(host: Option<&TestNet>, ns: &Namespace, extra: &[&str]) -> Netferry {
    let mut args: Vec<&str> = vec!["-c"];
    args.extend_from_slice(extra);
    let pid = ns.pid.to_string();
    args.extend_from_slice(&[&pid, "tap0"]);
    let mut opts = Options::args(&args);
    opts.host_netns = host.map(|h| h.host.clone());
    let mut nf = Netferry::spawn(opts);
    nf.wait_ready();
    nf
}

/// Run `f` on a thread inside the network namespace at `path` and return
/// its result. Sockets keep the namespace they were made in, so a socket
/// created here can be used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_string();
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// The test's own little internet: a "host" namespace, where netferry
/// runs and whose loopback plays the host's, and a "remote" namespace
/// behind a veth pair on 198.51.100.0/24 (a documentation prefix). The
/// host has no other route, so nothing can leave the machine.
pub struct TestNet {
    pub host: String,
    pub remote: String,
    pub host_veth: String,
}

pub const HOST_ADDR: &str = "198.51.100.1";
pub const REMOTE_ADDR: &str = "198.51.100.2";

impl TestNet {
    pub fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let net = TestNet {
            host: format!("nfh{id}"),
            remote: format!("nfr{id}"),
            host_veth: format!("vh{id}"),
        };
        let remote_veth = format!("vr{id}");
        let resolv_dir = format!("/etc/netns/{}", net.host);
        fs::create_dir_all(&resolv_dir).unwrap();
        fs::write(
            format!("{resolv_dir}/resolv.conf"),
            "nameserver 127.0.0.1\n",
        )
        .unwrap();
        let (h, r, hv) = (&net.host, &net.remote, &net.host_veth);
        let host_cidr = format!("{HOST_ADDR}/24");
        let remote_cidr = format!("{REMOTE_ADDR}/24");
        for args in [
            vec!["netns", "add", h],
            vec!["netns", "add", r],
            vec!["-n", h, "link", "set", "lo", "up"],
            vec!["-n", r, "link", "set", "lo", "up"],
            vec![
                "link",
                "add",
                hv,
                "type",
                "veth",
                "peer",
                "name",
                &remote_veth,
            ],
            vec!["link", "set", hv, "netns", h],
            vec!["link", "set", &remote_veth, "netns", r],
            vec!["-n", h, "addr", "add", &host_cidr, "dev", hv],
            vec!["-n", r, "addr", "add", &remote_cidr, "dev", &remote_veth],
            vec!["-n", h, "link", "set", hv, "up"],
            vec!["-n", r, "link", "set", &remote_veth, "up"],
        ] {
            run_ok("ip", &args);
        }
        net
    }

    pub fn host_path(&self) -> String {
        format!("/run/netns/{}", self.host)
    }

    /// Run `f` inside the host namespace (see `in_netns`).
    pub fn in_host<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.host_path(), f)
    }

    /// Run `f` inside the remote namespace (see `in_netns`).
    pub fn in_remote<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.remote_path(), f)
    }

    pub fn remote_path(&self) -> String {
        format!("/run/netns/{}", self.remote)
    }

    /// A command run inside the host namespace.
    pub fn host_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host]).args(args);
        cmd
    }

    pub fn host_ok(&self, args: &[&str]) {
        let st = self.host_cmd(args).status().unwrap();
        assert!(st.success(), "{args:?} failed in the host namespace");
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Anything a test left running in its namespaces goes with them.
        for ns in [&self.host, &self.remote] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.remote])
            .status();
        let _ = fs::remove_dir_all(format!("/etc/netns/{}", self.host));
    }
}

pub fn run_ok(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bind-mount a file over `target` (as podman pins namespaces); unmounted
/// on drop.
pub struct BindMount(pub PathBuf);

impl BindMount {
    pub fn new(source: &str, target: &Path) -> Self {
        File::create(target).unwrap();
        let st = Command::new("mount")
            .args(["--bind", source])
            .arg(target)
            .status()
            .unwrap();
        assert!(st.success(), "mount --bind {source} failed");
        BindMount(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Deterministic bytes that no off-by-one or reordering survives.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A TCP connection whose connect, reads and writes all give up after
/// `limit`, so a broken path fails the test instead of hanging it.
pub fn connect(
    addr: std::net::SocketAddr,
    limit: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    Ok(s)
}

/// Echo everything `conn` receives back to it until EOF or an error.
pub fn echo_until_eof(conn: std::net::TcpStream) {
    if let Ok(mut reader) = conn.try_clone() {
        let mut writer = conn;
        let _ = std::io::copy(&mut reader, &mut writer);
    }
}

/// A process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq on `addr` port 53 of the test's host namespace, answering
/// probe.netferry.test with each of `answers` (A or AAAA records by their
/// form); returns once it answers. The tests' only DNS server: nothing
/// ever asks the machine's real resolver.
pub fn dns_server(net: &TestNet, addr: &str, answers: &[&str]) -> KillOnDrop {
    let mut args = vec![
        "dnsmasq".to_string(),
        "--no-daemon".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--listen-address={addr}"),
        "--bind-interfaces".into(),
        "--port=53".into(),
        "--pid-file=".into(),
        "--user=root".into(),
    ];
    args.extend(
        answers
            .iter()
            .map(|a| format!("--address=/probe.netferry.test/{a}")),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = net
        .host_cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (package dnsmasq-base) is needed");
    let guard = KillOnDrop(child);
    let first = answers.first().copied().unwrap_or_default();
    let up = wait_until(Duration::from_secs(5), || {
        net.host_cmd(&["dig", "+short", "+tries=1", "+time=1", &format!("@{addr}")])
            .arg("probe.netferry.test")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(first))
    });
    assert!(up, "dnsmasq on {addr} did not come up");
    guard
}

/// rootlesskit (Docker rootless) running netferry as its slirp4netns, as
/// the unprivileged user `nfrootless` (made by .ci/run) inside the test's
/// host namespace. The child runs `busybox httpd` on port 80 serving
/// `www` (holding `index.html` with `page`), after `script`. Ended, with
/// its background server, on drop.
pub struct Rootlesskit {
    pub child: Child,
    pub dir: TempDir,
    pub bin: PathBuf,
}

/// Where .ci/run unpacks rootlesskit 2 (Debian trixie's); Debian 12's
/// rootlesskit 1.1 is on PATH.
pub const ROOTLESSKIT2: &str = "/var/cache/netferry-ci/rootlesskit2/usr/bin/rootlesskit";

/// rootlesskit 2's binary, or `None` where .ci/run could not reach the
/// Debian archive to fetch it (a failure under CI: [`skip_or_fail`]).
pub fn rootlesskit2() -> Option<&'static str> {
    if Path::new(ROOTLESSKIT2).exists() {
        return Some(ROOTLESSKIT2);
    }
    let unreachable = Path::new("/var/cache/netferry-ci/rootlesskit2.unreachable");
    assert!(
        unreachable.exists(),
        "{ROOTLESSKIT2} is missing: bash .ci/run fetches it"
    );
    skip_or_fail("no rootlesskit 2 (the Debian archive was out of reach for .ci/run)");
    None
}

/// How rootlesskit finds netferry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `--slirp4netns-binary=PATH`.
    ByFlag,
    /// As `slirp4netns` first in `PATH`, rootlesskit's default binary
    /// name: how dockerd-rootless.sh and containerd-rootless.sh find it,
    /// and how they decide to pick the slirp4netns driver at all.
    OnPath,
}

impl Rootlesskit {
    pub fn spawn(net: &TestNet, flags: &[&str], page: &str, script: &str) -> Self {
        Self::spawn_with("rootlesskit", net, flags, page, script)
    }

    /// The same with another rootlesskit binary. netferry is started
    /// through a wrapper that records each command line it gets
    /// ([`Rootlesskit::argv`]).
    pub fn spawn_with(
        rootlesskit: &str,
        net: &TestNet,
        flags: &[&str],
        page: &str,
        script: &str,
    ) -> Self {
        Self::start(rootlesskit, Found::ByFlag, net, flags, page, script)
    }

    /// The same, with netferry found as rootlesskit is told (`found`).
    pub fn start(
        rootlesskit: &str,
        found: Found,
        net: &TestNet,
        flags: &[&str],
        page: &str,
        script: &str,
    ) -> Self {
        let user = "nfrootless";
        let out = Command::new("id").args(["-u", user]).output().unwrap();
        let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            !uid.is_empty(),
            "user {user} with subordinate ids is needed (.ci/run creates it)"
        );
        let dir = TempDir::new("rk");
        let www = dir.path("www");
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("index.html"), page).unwrap();
        // A copy the unprivileged user can surely execute.
        let bin = dir.path("netferry");
        fs::copy(netferry_bin(), &bin).unwrap();
        fs::create_dir_all(dir.path("bin")).unwrap();
        let wrapper = dir.path("bin/slirp4netns");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n",
                dir.path("argv").display(),
                bin.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(&dir.0)
            .status()
            .unwrap();
        let home = dir.0.display().to_string();
        let inner = format!(
            "{script} busybox httpd -f -p 80 -h {} & sleep 30",
            www.display()
        );
        let mut args: Vec<String> = vec![
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "--".into(),
            "env".into(),
            format!("HOME={home}"),
            format!("XDG_RUNTIME_DIR={home}"),
        ];
        match found {
            Found::ByFlag => args.extend([
                rootlesskit.into(),
                format!("--slirp4netns-binary={}", wrapper.display()),
            ]),
            Found::OnPath => args.extend([
                format!("PATH={home}/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                rootlesskit.into(),
            ]),
        }
        args.extend([
            "--net=slirp4netns".into(),
            format!("--state-dir={home}/state"),
        ]);
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend(["sh".into(), "-c".into(), inner]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = net
            .host_cmd(&args)
            .stdout(Stdio::null())
            .stderr(File::create(dir.path("rk.log")).unwrap())
            .spawn()
            .unwrap();
        Rootlesskit { child, dir, bin }
    }

    /// rootlesskit's state directory (`$ROOTLESSKIT_STATE_DIR` inside).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path("state")
    }

    /// The serving command line with the state directory written `$STATE`
    /// and the child's pid `$PID`, so it can be compared whole.
    pub fn normalized_argv(&self) -> String {
        let argv = self.serving_argv();
        let state = self.state_dir().display().to_string();
        let pid = fs::read_to_string(self.state_dir().join("child_pid")).unwrap_or_default();
        let pid = pid.trim();
        argv.split(' ')
            .map(|a| {
                let a = a.replace(&state, "$STATE");
                if pid.is_empty() {
                    a
                } else if a == pid {
                    "$PID".into()
                } else {
                    a.replace(&format!("/proc/{pid}/"), "/proc/$PID/")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path("rk.log")).unwrap_or_default()
    }

    /// The command lines netferry was started with, one a line (rootlesskit
    /// runs `--help` first to see what it may pass).
    pub fn argv(&self) -> String {
        fs::read_to_string(self.dir.path("argv")).unwrap_or_default()
    }

    /// The command line that started the netferry serving the network.
    pub fn serving_argv(&self) -> String {
        self.argv()
            .lines()
            .find(|l| *l != "--help")
            .unwrap_or_default()
            .to_string()
    }

    /// The pid of the netferry serving the network (not its `--help`).
    pub fn helper_pid(&self) -> Option<u32> {
        let out = Command::new("pgrep")
            .args(["-f", &format!("^{} ", self.bin.display())])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// A field of that netferry's /proc/PID/status ("" when gone).
    pub fn helper_status(&self, name: &str) -> String {
        let Some(pid) = self.helper_pid() else {
            return String::new();
        };
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Whether that netferry lives in its sandbox: a root without /usr.
    pub fn helper_sandboxed(&self) -> bool {
        let pid = self.helper_pid().expect("netferry is not running");
        fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .all(|e| e.unwrap().file_name() != "usr")
    }

    /// Wait until `url`, fetched in the host namespace, gives `want`.
    pub fn serves(&self, net: &TestNet, url: &str, want: &str) -> bool {
        wait_until(Duration::from_secs(20), || {
            net.host_cmd(&["curl", "-s", "-m", "2", url])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == want)
        })
    }
}

impl Drop for Rootlesskit {
    fn drop(&mut self) {
        // rootlesskit passes SIGTERM on to its child and stops its helper;
        // the server was started in the background and needs its own end.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let www = self.dir.path("www");
        let _ = Command::new("pkill")
            .args(["-f", &format!("httpd -f -p 80 -h {}", www.display())])
            .status();
    }
}
