//! What the podman tests (podman 4 on this machine, podman 5 inside a
//! Debian trixie tree) share: the busybox image they import, the servers
//! on the test's host and remote side, and the checks made from inside a
//! container. Each test brings its own way of running podman as
//! `Run::podman`.

use std::fs;
use std::ops::Deref;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{KillOnDrop, REMOTE_ADDR, TempDir, TestNet, run_ok, wait_until};

/// Named after what it holds; tests import it when missing.
pub const IMAGE: &str = "localhost/netferry-test-busybox:3";

/// busybox httpd serving the image's /www on port 80 (with a CGI script
/// at /cgi-bin/ip that prints the client's address).
pub const HTTPD: [&str; 6] = ["httpd", "-f", "-p", "80", "-h", "/www"];

/// Port of the web server on the host's 127.0.0.1 that the probe fetches
/// through 10.0.2.2.
pub const HOST_WEB_PORT: u16 = 8001;

/// Run from inside a container: its addresses (waiting for SLAAC), a
/// fetch from the host's loopback through the gateway, and a lookup
/// through 10.0.2.3.
pub const PROBE: &str = "ip -4 addr show tap0; \
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do ip -6 addr show tap0 scope global | grep -q fd00 && break; sleep 0.5; done; \
    ip -6 addr show tap0 scope global; \
    printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 8001 | grep hello || echo FETCH-FAILED; \
    nslookup -type=a probe.netferry.test 10.0.2.3";

/// The address the test's DNS server gives probe.netferry.test.
pub const PROBE_ANSWER: &str = "198.51.100.2";

/// A way of running podman as the test's unprivileged user.
pub trait Run {
    fn podman(&self, args: &[&str]) -> Output;

    /// Run and insist on success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman import` the busybox image unless it is there already.
    fn import_image(&self, scratch: &Path, tar_as_seen_by_podman: impl Fn(&Path) -> String) {
        if self.podman(&["image", "exists", IMAGE]).status.success() {
            return;
        }
        let tar = busybox_tar(scratch);
        let out = self.podman(&["import", &tar_as_seen_by_podman(&tar), IMAGE]);
        assert!(out.status.success(), "podman import: {}", text(&out));
    }
}

/// The machine's user that runs podman 4 (made by .ci/run, with
/// subordinate ids).
pub const USER: &str = "nfpodman";

/// The uid of the machine's user `user`.
pub fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    assert!(
        out.status.success(),
        "user {user} is missing (bash .ci/run creates it)"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// This machine's podman 4 run as [`USER`] inside the test's host
/// namespace, entered with `nsenter --net` (`ip netns exec` would
/// remount /sys and hide the cgroups runc needs), in a private mount
/// namespace whose /etc/resolv.conf names the test's own DNS server, with
/// `env` setting the user's environment (HOME and the like). Besides: a
/// scratch directory with a copy of netferry the user may run.
pub struct UserPodman {
    pub net: TestNet,
    pub dir: TempDir,
    pub bin: PathBuf,
    pub uid: u32,
    /// `NAME=VALUE` (or `-u NAME`) words for `env`.
    pub env: String,
    /// Shell lines run as root first in each private mount namespace:
    /// the file system podman (and its pause process) should see.
    pub mounts: String,
    _dns: KillOnDrop,
}

impl UserPodman {
    pub fn new(tag: &str) -> Self {
        let uid = uid_of(USER);
        // A pause process left from another run would hold an old mount
        // namespace (and resolv.conf): start clean.
        kill_user(uid);
        let net = TestNet::new();
        let dir = TempDir::new(tag);
        let bin = dir.path("netferry");
        fs::copy(super::netferry_bin(), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        // The test's DNS server, named by the host namespace's resolv.conf.
        let dns = super::dns_server(&net, "127.0.0.1", &[PROBE_ANSWER]);
        UserPodman {
            net,
            dir,
            bin,
            uid,
            env: String::new(),
            mounts: String::new(),
            _dns: dns,
        }
    }

    /// `cmd ARGS` as the user, with `env`.
    pub fn as_user(&self, cmd: &str, args: &[&str]) -> Output {
        let setpriv = format!(
            "setpriv --reuid={uid} --regid={uid} --init-groups",
            uid = self.uid
        );
        self.in_namespaces(&setpriv, cmd, args)
    }

    /// `cmd ARGS` as root, with `env`, seeing what the user sees.
    pub fn as_root(&self, cmd: &str, args: &[&str]) -> Output {
        self.in_namespaces("", cmd, args)
    }

    fn in_namespaces(&self, setpriv: &str, cmd: &str, args: &[&str]) -> Output {
        let resolv = format!("/etc/netns/{}/resolv.conf", self.net.host);
        let script = format!(
            "set -e\n{mounts}\nmount --bind {resolv} /etc/resolv.conf\n\
             exec nsenter --net=/run/netns/{host} {setpriv} env {env} {cmd} \"$@\"",
            mounts = self.mounts,
            host = self.net.host,
            env = self.env,
        );
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .expect("unshare")
    }
}

impl Run for UserPodman {
    fn podman(&self, args: &[&str]) -> Output {
        self.as_user("podman", args)
    }
}

impl Drop for UserPodman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        kill_user(self.uid);
    }
}

/// The user's containers.conf in a [`HomePodman`]: no network settings.
pub const USER_CONF: &str = "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                             events_logger = \"file\"\n";

/// podman as the user with a scratch HOME (holding [`USER_CONF`]) and
/// runtime directory, no CONTAINERS_CONF, and the busybox image: a plain
/// `podman run` there takes its network from the configuration files
/// alone, as `netferry setup podman` leaves them.
pub struct HomePodman(UserPodman);

impl Deref for HomePodman {
    type Target = UserPodman;
    fn deref(&self) -> &UserPodman {
        &self.0
    }
}

/// A running `slirp4netns` of the user: how it was started and the file
/// it runs.
#[derive(Debug)]
pub struct Helper {
    pub argv0: String,
    /// /proc/PID/exe as a path (a link followed to the file it leads to).
    pub exe: PathBuf,
    /// Device and inode of that file, which hold where the path is one
    /// only inside podman's mount namespace.
    pub file: (u64, u64),
}

impl HomePodman {
    /// `mounts`: see [`UserPodman::mounts`]; they are in place before the
    /// first podman starts its pause process.
    pub fn new(tag: &str, mounts: String) -> HomePodman {
        let mut p = UserPodman::new(tag);
        p.mounts = mounts;
        let dir = &p.dir;
        let conf = dir.path("home/.config/containers");
        fs::create_dir_all(&conf).unwrap();
        fs::write(conf.join("containers.conf"), USER_CONF).unwrap();
        fs::create_dir_all(dir.path("run")).unwrap();
        fs::set_permissions(dir.path("run"), fs::Permissions::from_mode(0o700)).unwrap();
        for d in ["home", "run"] {
            let st = Command::new("chown")
                .args(["-R", &format!("{USER}:"), dir.path(d).to_str().unwrap()])
                .status()
                .unwrap();
            assert!(st.success());
        }
        p.env = format!(
            "-u XDG_CONFIG_HOME -u XDG_DATA_HOME -u XDG_STATE_HOME -u CONTAINERS_CONF \
             HOME={home} XDG_RUNTIME_DIR={run} PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            home = dir.path("home").display(),
            run = dir.path("run").display(),
        );
        p.import_image(&p.dir.0, |tar| tar.display().to_string());
        HomePodman(p)
    }

    /// The user's running `slirp4netns` processes.
    pub fn slirp4netns_processes(&self) -> Vec<Helper> {
        let mut found = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let p = e.path();
            let Ok(m) = fs::metadata(&p) else { continue };
            let Ok(cmdline) = fs::read(p.join("cmdline")) else {
                continue;
            };
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if m.uid() == self.uid
                && argv0.ends_with(b"slirp4netns")
                && let Ok(exe) = fs::read_link(p.join("exe"))
                && let Ok(file) = fs::metadata(p.join("exe"))
            {
                found.push(Helper {
                    argv0: String::from_utf8_lossy(argv0).into_owned(),
                    exe,
                    file: (file.dev(), file.ino()),
                });
            }
        }
        found
    }

    /// Run a container in the background and return what runs its
    /// network; the container is removed after `PROBE` ran in it.
    pub fn network_of_a_container(&self) -> Helper {
        self.ok(&["run", "-d", "--name", "nf-setup", IMAGE, "sleep", "300"]);
        let mut found = Vec::new();
        assert!(
            wait_until(Duration::from_secs(10), || {
                found = self.slirp4netns_processes();
                !found.is_empty()
            }),
            "no slirp4netns process for the container"
        );
        let out = self.ok(&["exec", "nf-setup", "sh", "-c", PROBE]);
        assert_probe(&out, false);
        self.ok(&["rm", "-f", "-t", "0", "nf-setup"]);
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }
}

/// stdout and stderr, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A busybox root filesystem with a web page and a CGI script that
/// prints the client's address, as a tarball in `dir`.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("image-rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www/cgi-bin"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ip", "wget", "nslookup", "httpd", "sleep", "cat", "echo", "nc", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(root.join("www/index.html"), "hello from the host\n").unwrap();
    let cgi = root.join("www/cgi-bin/ip");
    fs::write(
        &cgi,
        "#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n",
    )
    .unwrap();
    fs::set_permissions(&cgi, fs::Permissions::from_mode(0o755)).unwrap();
    let tar = dir.join("busybox.tar");
    run_ok(
        "tar",
        &[
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
    tar
}

/// busybox httpd on the host namespace's 127.0.0.1:HOST_WEB_PORT, serving
/// "hello from the host" from a directory under `dir`.
pub fn host_web(net: &TestNet, dir: &Path) -> KillOnDrop {
    let www = dir.join("www-host");
    fs::create_dir_all(&www).unwrap();
    fs::write(www.join("index.html"), "hello from the host\n").unwrap();
    let addr = format!("127.0.0.1:{HOST_WEB_PORT}");
    let child = net
        .host_cmd(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            &addr,
            "-h",
            www.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// What PROBE printed, checked: the container got 10.0.2.100 and a SLAAC
/// address, resolved the name through netferry, and reached the host's
/// loopback exactly when `host_loopback` allows it.
pub fn assert_probe(out: &str, host_loopback: bool) {
    assert!(out.contains("inet 10.0.2.100/24"), "{out}");
    assert!(out.contains("inet6 fd00::"), "no SLAAC address: {out}");
    assert!(out.contains(&format!("Address: {PROBE_ANSWER}")), "{out}");
    if host_loopback {
        assert!(out.contains("hello from the host"), "{out}");
    } else {
        assert!(
            out.contains("FETCH-FAILED") && !out.contains("hello from the host"),
            "reached the host's loopback: {out}"
        );
    }
}

/// The page at /cgi-bin/ip fetched from the remote namespace through the
/// host's published `port`: the client address the server inside saw.
pub fn fetch_from_remote(net: &TestNet, port: u16) -> String {
    let url = format!("http://198.51.100.1:{port}/cgi-bin/ip");
    let mut got = String::new();
    let ok = wait_until(Duration::from_secs(15), || {
        let out = Command::new("ip")
            .args(["netns", "exec", &net.remote, "curl", "-s", "-m", "3", &url])
            .output()
            .unwrap();
        got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        out.status.success() && !got.is_empty()
    });
    assert!(ok, "no answer on port {port}");
    // busybox httpd listens on IPv6 and shows IPv4 clients v4-mapped.
    got.trim_start_matches("[::ffff:")
        .trim_end_matches(']')
        .to_string()
}

/// Assert that the server behind `port` (published with
/// port_handler=slirp4netns) saw the remote client's own address.
pub fn assert_sees_client(net: &TestNet, port: u16) {
    assert_eq!(
        fetch_from_remote(net, port),
        REMOTE_ADDR,
        "port_handler=slirp4netns must keep the client's address"
    );
}

/// Processes whose command line contains `pattern`.
pub fn count_processes(pattern: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Kill every process of `uid` (podman's pause process, conmon, netferry,
/// the containers) and wait until none is left alive; false if some
/// survive. (Called from Drop, so it reports rather than panics.)
pub fn kill_user(uid: u32) -> bool {
    let uid = uid.to_string();
    let alive = || {
        let out = Command::new("ps")
            .args(["-u", &uid, "-o", "stat="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|s| !s.starts_with('Z'))
            .count()
    };
    wait_until(Duration::from_secs(10), || {
        let _ = Command::new("pkill").args(["-9", "-u", &uid]).status();
        alive() == 0
    })
}

/// A Debian tree holding a podman newer than this machine's (whose
/// glibc is too old for it), built once per machine by `.ci/run` with
/// `script`, and the tree's own user that runs podman, with subordinate
/// ids in the tree's /etc/subuid and /etc/subgid.
pub struct Tree {
    pub root: &'static str,
    /// Written last by the build; its name changes with what goes in.
    pub stamp: &'static str,
    pub script: &'static str,
    pub user: &'static str,
    pub uid: u32,
}

/// Debian trixie: podman 5.4, slirp4netns-free, with its pasta (passt).
pub const TRIXIE: Tree = Tree {
    root: "/var/cache/netferry-ci/trixie-rootfs",
    stamp: ".complete-v2",
    script: ".ci/trixie-rootfs.sh",
    user: "nfpodman5",
    uid: 4750,
};

/// Debian forky: podman 5.8 (whose pasta command line is Podman 6's),
/// pasta, netavark with aardvark-dns and nftables.
pub const FORKY: Tree = Tree {
    root: "/var/cache/netferry-ci/forky-rootfs",
    stamp: ".complete-v1",
    script: ".ci/forky-rootfs.sh",
    user: "nfpodman6",
    uid: 4760,
};

impl Tree {
    /// Whether the tree is there. When `.ci/run` could not reach the
    /// Debian archive to build it (it leaves `ROOT.unreachable`), false
    /// after [`skip_or_fail`](super::skip_or_fail), which fails under CI;
    /// a tree simply not built yet fails the test.
    pub fn ready(&self) -> bool {
        if Path::new(self.root).join(self.stamp).exists() {
            return true;
        }
        if Path::new(&format!("{}.unreachable", self.root)).exists() {
            super::skip_or_fail(&format!(
                "no Debian tree at {}: .ci/run could not reach the Debian archive",
                self.root
            ));
            return false;
        }
        panic!(
            "no Debian tree at {} (stamp {}): bash .ci/run builds it with {}",
            self.root, self.stamp, self.script
        );
    }
}

/// Where a test's scratch directory appears inside a tree.
pub const MNT: &str = "/mnt";

/// podman run inside a [`Tree`], entered with pivot_root in a private
/// mount namespace (the kernel refuses to create a user namespace under
/// chroot) inside the test's host namespace, whose resolv.conf it gets.
/// The host's /proc, /sys (with its cgroups) and /dev (with /dev/net/tun)
/// are bound in, and from the test's scratch directory: the directory
/// itself as /mnt (containers.conf, helpers, logs), `run` as /run (the
/// user's runtime directory: a directory rather than a tmpfs, since
/// podman's state there must outlive each podman command) and `home` as
/// the user's home (podman's storage), so the cached tree itself is never
/// written. podman runs as the tree's user with `CONTAINERS_CONF` at
/// /mnt/containers.conf, which the test writes.
pub struct InTree {
    pub tree: &'static Tree,
    pub net: TestNet,
    pub dir: super::TempDir,
}

impl InTree {
    /// None when the tree is missing and the test may skip
    /// ([`Tree::ready`]).
    pub fn new(tree: &'static Tree, net: TestNet, tag: &str) -> Option<Self> {
        if !tree.ready() {
            return None;
        }
        // A pause process left from another run would hold an old mount
        // namespace: start clean.
        kill_user(tree.uid);
        let dir = super::TempDir::new(tag);
        let runtime = format!("run/user/{}", tree.uid);
        for d in ["home", "tmp", &runtime] {
            fs::create_dir_all(dir.path(d)).unwrap();
            run_ok(
                "chown",
                &[&format!("{0}:{0}", tree.uid), dir.path(d).to_str().unwrap()],
            );
        }
        fs::set_permissions(dir.path(&runtime), fs::Permissions::from_mode(0o700)).unwrap();
        Some(InTree { tree, net, dir })
    }

    /// A path in the scratch directory as podman sees it.
    pub fn inside(&self, path: &Path) -> String {
        format!(
            "{MNT}/{}",
            path.strip_prefix(&self.dir.0).unwrap().display()
        )
    }

    /// The user's live processes, by name.
    pub fn processes(&self) -> Vec<String> {
        let out = Command::new("ps")
            .args(["-u", &self.tree.uid.to_string(), "-o", "stat=,comm="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(stat, _)| !stat.starts_with('Z'))
            .map(|(_, comm)| comm.trim().to_string())
            .collect()
    }
}

impl Run for InTree {
    fn podman(&self, args: &[&str]) -> Output {
        // Run as root in a new mount namespace inside the host namespace:
        // bind what podman needs into the tree, pivot_root into it, drop
        // the old root, then become the user.
        let Tree {
            root, user, uid, ..
        } = self.tree;
        let script = format!(
            "set -e; root={root}; t={dir}\n\
             mount --bind $root $root\n\
             mount --rbind /proc $root/proc\n\
             mount --rbind /sys $root/sys\n\
             mount --rbind /dev $root/dev\n\
             mount --bind $t/run $root/run\n\
             mount --bind $t $root{MNT}\n\
             mount --bind $t/home $root/home/{user}\n\
             mount --bind /etc/netns/{host}/resolv.conf $root/etc/resolv.conf\n\
             cd $root\n\
             pivot_root . .\n\
             umount -l .\n\
             mount --make-rshared /\n\
             exec setpriv --reuid={uid} --regid={uid} --init-groups \
             env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/home/{user} \
             XDG_RUNTIME_DIR=/run/user/{uid} TMPDIR={MNT}/tmp \
             CONTAINERS_CONF={MNT}/containers.conf PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
             podman \"$@\"",
            dir = self.dir.0.display(),
            host = self.net.host,
        );
        Command::new("nsenter")
            .arg(format!("--net={}", self.net.host_path()))
            .args(["unshare", "-m", "--propagation", "private"])
            .args(["sh", "-c", &script, "sh"])
            .args(args)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("nsenter")
    }
}

impl Drop for InTree {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        kill_user(self.tree.uid);
    }
}
