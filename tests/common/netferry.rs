//! The netferry process under test: how to start it (`Options`: flags,
//! ready and exit pipes, user, host namespace), the running `Netferry`
//! (waiting for its ready byte, its exit, its output and /proc figures;
//! killed on drop), and the usual arrangements of it: `serve` for a
//! container namespace, `Served` with a `TestNet` and an API socket.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::pipe2;

use super::ns::{Namespace, TestNet};
use super::tools::{TempDir, as_user_args};

/// Fd numbers the ready and exit pipes get in netferry; high enough not
/// to collide with anything the test harness has open.
pub const READY_FD: RawFd = 100;
pub const EXIT_FD: RawFd = 101;

pub fn netferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_netferry")
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
