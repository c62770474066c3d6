//! The namespaces a test makes for itself: `Namespace`, a fresh
//! user+network namespace standing in for the container; `TestNet`, the
//! test's own little internet (a "host" namespace where netferry runs and
//! a "remote" one behind a veth on a documentation prefix); running code
//! or commands inside them; and `BindMount`, to pin a namespace file as
//! podman does. Nothing here can reach past the machine: the namespaces
//! have no route out.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::tools::{as_user_args, run_ok, wait_until};

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

    /// The remote namespace's end of the veth pair.
    pub fn remote_veth(&self) -> String {
        self.host_veth.replacen("vh", "vr", 1)
    }

    /// IPv6 addresses on the veth pair: `host` (a /64, with no duplicate
    /// address detection to wait for) on the host's end and `remote` on
    /// the remote's.
    pub fn add_ipv6(&self, host: &str, remote: &str) {
        let remote_veth = self.remote_veth();
        for (ns, addr, dev) in [
            (&self.host, host, &self.host_veth),
            (&self.remote, remote, &remote_veth),
        ] {
            let cidr = format!("{addr}/64");
            run_ok("ip", &["-n", ns, "addr", "add", &cidr, "dev", dev, "nodad"]);
        }
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
