//! rootlesskit, the caller Docker rootless uses, for the rootlesskit,
//! Docker-rootless and port-forwarding tests: `Rootlesskit` runs it with
//! netferry as its slirp4netns (or, with `--net=pasta`, netferry or the
//! real pasta as its pasta), as an unprivileged user inside the test's
//! host namespace, and reads back how it started its network helper.
//!
//! What the guest of a rootlesskit run sees: a script run inside (beside
//! the page server that `Rootlesskit` starts) writes its findings to
//! files, which the test reads back once the script says it is done.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::netferry::netferry_bin;
use super::ns::TestNet;
use super::podman::HOST_WEB_PORT;
use super::skip::skip_or_fail;
use super::tools::{TempDir, wait_until};

/// rootlesskit (Docker rootless) running netferry as its slirp4netns (or
/// a pasta, [`Rootlesskit::start_pasta`]), as the unprivileged user `nfrootless` (made by .ci/run) inside the test's
/// host namespace. The child runs `busybox httpd` on port 80 serving
/// `www` (holding `index.html` with `page`), after `script`. Ended, with
/// its background server, on drop.
pub struct Rootlesskit {
    pub child: Child,
    pub dir: TempDir,
    /// The network helper the recording wrapper runs.
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

/// The network helper rootlesskit runs.
enum Helper {
    Slirp4netns(Found),
    /// `--net=pasta`: netferry as `pasta`, or this real pasta.
    Pasta(Option<PathBuf>),
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
        Self::launch(
            rootlesskit,
            Helper::Slirp4netns(found),
            net,
            flags,
            page,
            script,
        )
    }

    /// rootlesskit with `--net=pasta`, finding `pasta` first in `PATH`
    /// (its default `--pasta-binary`): netferry under that name when
    /// `pasta` is `None`, else that program (the real pasta). The command
    /// lines are recorded as for slirp4netns.
    pub fn start_pasta(
        rootlesskit: &str,
        pasta: Option<&Path>,
        net: &TestNet,
        flags: &[&str],
        page: &str,
        script: &str,
    ) -> Self {
        let helper = Helper::Pasta(pasta.map(Path::to_path_buf));
        Self::launch(rootlesskit, helper, net, flags, page, script)
    }

    fn launch(
        rootlesskit: &str,
        helper: Helper,
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
        let copy = dir.path("netferry");
        fs::copy(netferry_bin(), &copy).unwrap();
        fs::create_dir_all(dir.path("bin")).unwrap();
        // What the recording wrapper runs: netferry, under the name
        // `pasta` for pasta (its mode follows its name), or the real pasta.
        let (name, bin) = match &helper {
            Helper::Slirp4netns(_) => ("slirp4netns", copy),
            Helper::Pasta(Some(real)) => ("pasta", real.clone()),
            Helper::Pasta(None) => {
                fs::create_dir_all(dir.path("nf")).unwrap();
                std::os::unix::fs::symlink(&copy, dir.path("nf/pasta")).unwrap();
                ("pasta", dir.path("nf/pasta"))
            }
        };
        let wrapper = dir.path(&format!("bin/{name}"));
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
        match helper {
            Helper::Slirp4netns(Found::ByFlag) => args.extend([
                rootlesskit.into(),
                format!("--slirp4netns-binary={}", wrapper.display()),
            ]),
            Helper::Slirp4netns(Found::OnPath) | Helper::Pasta(_) => args.extend([
                format!("PATH={home}/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                rootlesskit.into(),
            ]),
        }
        args.extend([format!("--net={name}"), format!("--state-dir={home}/state")]);
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

/// How the guest's commands reach the container's network namespace.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Enter {
    /// rootlesskit's child is already in it.
    Child,
    /// `--detach-netns`: the child stays outside and enters the namespace
    /// rootlesskit keeps at `$ROOTLESSKIT_STATE_DIR/netns`.
    Detached,
}

impl Enter {
    fn prefix(self) -> &'static str {
        match self {
            Enter::Child => "",
            Enter::Detached => "nsenter --net=$ROOTLESSKIT_STATE_DIR/netns --",
        }
    }
}

/// The guest's findings: the host's loopback web server through the
/// gateway (10.0.2.2)
/// (see `podman::host_web`), tap0's MTU and, when asked, its SLAAC
/// address.
pub struct Probe {
    dir: TempDir,
    enter: Enter,
    dns: bool,
    gateway: String,
}

impl Probe {
    pub fn new(enter: Enter) -> Self {
        let dir = TempDir::new("rk-probe");
        Probe {
            dir,
            enter,
            dns: false,
            gateway: "10.0.2.2".into(),
        }
    }

    /// Reach the host through `gateway` (for a `--cidr` other than
    /// 10.0.2.0/24).
    pub fn via(mut self, gateway: &str) -> Self {
        self.gateway = gateway.into();
        self
    }

    /// Also look up probe.netferry.test at the first server of the
    /// resolv.conf rootlesskit writes for its child and the daemons
    /// (`$ROOTLESSKIT_STATE_DIR/resolv.conf`, netferry's DNS address); the
    /// test runs the DNS server (`dns_server`) netferry forwards to.
    pub fn with_dns(mut self) -> Self {
        self.dns = true;
        self
    }

    /// The script to hand `Rootlesskit`: `before` (run first, in the
    /// child), the probe in the background, then the prefix that puts the
    /// page server in the container's namespace.
    pub fn script(&self, before: &str, ipv6: bool) -> String {
        let e = self.enter.prefix();
        let gw = &self.gateway;
        let d = self.dir.0.display();
        let wait6 = if ipv6 {
            format!(
                "for i in $(seq 100); do {e} ip -6 addr show tap0 scope global | grep fd00 | grep -qv tentative && break; sleep 0.1; done; \
                 {e} ip -6 addr show tap0 scope global > {d}/ip6;"
            )
        } else {
            String::new()
        };
        let dns = if self.dns {
            // rootlesskit 2 writes it there (bound on /etc/resolv.conf unless
            // detached); rootlesskit 1 only binds it on /etc/resolv.conf.
            format!(
                "rc=$ROOTLESSKIT_STATE_DIR/resolv.conf; [ -e $rc ] || rc=/etc/resolv.conf; \
                 cat $rc > {d}/resolv.conf; {e} busybox nslookup probe.netferry.test \
                 $(awk '/^nameserver/ {{ print $2; exit }}' $rc) > {d}/dns 2>&1;"
            )
        } else {
            String::new()
        };
        format!(
            "{before} ({dns} {e} busybox wget -q -O {d}/host.txt http://{gw}:{HOST_WEB_PORT}/ 2> {d}/host.err; \
             {e} ip -o link show tap0 > {d}/link; {wait6} touch {d}/done) & {e}"
        )
    }

    /// Wait for the script to finish; false on time-out.
    pub fn finished(&self) -> bool {
        wait_until(Duration::from_secs(20), || self.dir.path("done").exists())
    }

    /// Where the guest may write a finding of its own.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path(name)
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path(name)).unwrap_or_default()
    }

    /// Assert the guest reached the host's loopback exactly when
    /// `reachable`; refused, it must have been told "Network is
    /// unreachable" (netferry's ICMP), not timed out.
    pub fn assert_host_loopback(&self, reachable: bool, context: &str) {
        let (got, err) = (self.read("host.txt"), self.read("host.err"));
        if reachable {
            assert_eq!(got, "hello from the host\n", "{err}\n{context}");
        } else {
            assert!(got.is_empty(), "reached the host's loopback\n{context}");
            assert!(
                err.contains("Network is unreachable"),
                "wget said {err:?}\n{context}"
            );
        }
    }

    /// The lookup answered with `addr`, asked of `server` as rootlesskit's
    /// resolv.conf says.
    pub fn assert_dns(&self, server: &str, addr: &str) {
        let resolv = self.read("resolv.conf");
        assert!(
            resolv.lines().next() == Some(&format!("nameserver {server}")),
            "{resolv}"
        );
        let dns = self.read("dns");
        assert!(dns.contains(&format!("Address: {addr}")), "{dns}");
    }

    /// tap0's MTU as `ip -o link` printed it.
    pub fn mtu(&self) -> Option<u32> {
        let link = self.read("link");
        let mut words = link.split_whitespace();
        words.find(|w| *w == "mtu")?;
        words.next()?.parse().ok()
    }
}
