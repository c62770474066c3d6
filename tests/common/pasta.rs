//! The pasta-mode tests' rig: a rootless caller (as podman is), a
//! container's namespace bound at a file in the caller's mount namespace,
//! and the two implementations each end-to-end case runs with: netferry
//! under the name `pasta`, and the real pasta from Debian forky's tree
//! (run with that tree's own libraries), which shows a test checks what
//! pasta's callers get.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{KillOnDrop, NOBODY, REMOTE_ADDR, TempDir, TestNet, as_user_args, wait_until};

/// A rootless caller, as podman is: a user namespace of the unprivileged
/// user nobody (root inside, mapped to nobody) with a mount namespace of
/// its own, held open by a process in the test's host namespace. pasta
/// and the container's namespace files live inside it, as they do under
/// podman, where the real pasta (which drops to nobody when started as
/// root in the init namespace) runs as it does for its users.
pub struct Caller {
    pub holder: KillOnDrop,
    /// A directory the caller may write to.
    pub dir: PathBuf,
}

impl Caller {
    pub fn new(net: &TestNet, dir: &TempDir, tag: &str) -> Self {
        let own = dir.path(&format!("caller-{tag}"));
        std::fs::create_dir_all(&own).unwrap();
        Command::new("chown")
            .arg("65534:65534")
            .arg(&own)
            .status()
            .unwrap();
        let holder = as_nobody(net)
            .args(["unshare", "--user", "--map-root-user", "--mount", "--"])
            .args(["sleep", "infinity"])
            .spawn()
            .unwrap();
        let holder = KillOnDrop(holder);
        let pid = holder.0.id();
        // Wait until the holder is in its own user namespace.
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()
                != std::fs::read_link("/proc/self/ns/user").ok()
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
        }));
        Caller { holder, dir: own }
    }

    /// A command run in the caller's user, mount and (host) network
    /// namespaces.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.holder.0.id()))
            .args(["--user", "--mount", "--net", "--"])
            .args(args);
        cmd
    }
}

/// A container's network namespace bound at a file in the caller's mount
/// namespace, as podman keeps it under `$XDG_RUNTIME_DIR/netns/`.
pub struct NetnsFile<'a> {
    pub caller: &'a Caller,
    pub path: PathBuf,
}

impl<'a> NetnsFile<'a> {
    pub fn new(caller: &'a Caller, name: &str) -> Self {
        let path = caller.dir.join(name);
        let file = path.display().to_string();
        let st = caller
            .cmd(&[
                "sh",
                "-c",
                &format!("touch {file} && unshare --net={file} true"),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "unshare --net={file}");
        NetnsFile { caller, path }
    }

    /// A command inside the container's network namespace (as the test's
    /// root, through the caller's mount namespace, where the file is).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.caller.holder.0.id()))
            .args(["--mount", "--", "nsenter"])
            .arg(format!("--net={}", self.path.display()))
            .arg("--")
            .args(args);
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ARGS` in the container, parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let full: Vec<&str> = ["ip", "-j"].iter().chain(args).copied().collect();
        serde_json::from_str(&self.ok(&full)).unwrap()
    }

    /// A server on the container's port 80 telling each client the
    /// address it came from (`client ADDR`): what a published port's
    /// service sees.
    pub fn client_address_service(&self) -> KillOnDrop {
        KillOnDrop(
            self.cmd(&["ncat", "-l", "-k", "80", "--sh-exec"])
                .arg("echo client $NCAT_REMOTE_ADDR")
                .spawn()
                .unwrap(),
        )
    }

    /// What podman does when the container goes: unmount (MNT_DETACH) and
    /// delete.
    pub fn remove(&self) {
        let file = self.path.display().to_string();
        let _ = self
            .caller
            .cmd(&[
                "sh",
                "-c",
                &format!("umount -l {file} 2>/dev/null; rm -f {file}"),
            ])
            .status();
    }
}

impl Drop for NetnsFile<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// netferry under the name `pasta`, as podman finds it in
/// `helper_binaries_dir`.
pub fn pasta_link(dir: &TempDir) -> PathBuf {
    let link = dir.path("pasta");
    let _ = std::fs::remove_file(&link);
    symlink(super::netferry_bin(), &link).unwrap();
    link
}

/// Where .ci/run builds Debian forky's tree, with its pasta.
pub const FORKY: &str = "/var/cache/netferry-ci/forky-rootfs";

/// The real pasta, run by the forky tree's dynamic loader with that
/// tree's libraries (its glibc is newer than this machine's), through a
/// script named `pasta`.
pub fn real_pasta(dir: &TempDir) -> Option<PathBuf> {
    let bin = format!("{FORKY}/usr/bin/pasta");
    if !Path::new(&format!("{FORKY}/.complete-v1")).exists() || !Path::new(&bin).exists() {
        super::skip_or_fail(&format!(
            "no Debian forky tree with pasta at {FORKY} (bash .ci/run builds it)"
        ));
        return None;
    }
    let script = dir.path("real/pasta");
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {FORKY}/lib64/ld-linux-x86-64.so.2 --library-path \
             {FORKY}/lib/x86_64-linux-gnu:{FORKY}/usr/lib/x86_64-linux-gnu {bin} \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(script)
}

/// netferry as pasta, then the real pasta where its tree exists.
pub fn implementations(dir: &TempDir) -> Vec<(&'static str, PathBuf)> {
    let mut all = vec![("netferry", pasta_link(dir))];
    if let Some(real) = real_pasta(dir) {
        all.push(("pasta", real));
    }
    all
}

/// Run `pasta ARGS` as the caller, as podman does: wait for it to exit
/// and for its stdout and stderr to reach EOF (the daemon must let go of
/// them), within a bound.
pub fn start_pasta(caller: &Caller, pasta: &Path, args: &[String]) -> Output {
    let mut cmd = caller.cmd(&[]);
    cmd.arg(pasta).args(args);
    output_of_parent(cmd)
}

/// [`start_pasta`], insisting that pasta started.
pub fn start_pasta_ok(caller: &Caller, pasta: &Path, args: &[String]) -> Output {
    let out = start_pasta(caller, pasta, args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

/// `cmd`'s output once pasta's parent exits and its stdout and stderr
/// reach EOF (the daemon must let go of them), within a bound.
pub fn output_of_parent(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("pasta's parent did not exit, or the daemon kept its pipes")
        .unwrap()
}

/// A command in the test's host namespace as the unprivileged user
/// nobody, with no supplementary groups; `args` give what it runs.
pub fn as_nobody(net: &TestNet) -> Command {
    let mut cmd = net.host_cmd(&["setpriv"]);
    cmd.args(as_user_args(NOBODY));
    cmd
}

/// pasta's argv with no port forwarding either way (pasta's `auto`
/// default would scan): `--config-net -t none -u none -T none -U none`,
/// then `extra`, then `--netns` and the namespace.
pub fn no_ports_argv(netns: &Path, extra: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = ["--config-net", "-t", "none", "-u", "none"]
        .into_iter()
        .chain(["-T", "none", "-U", "none"])
        .chain(extra.iter().copied())
        .map(String::from)
        .collect();
    argv.extend(["--netns".to_string(), netns.display().to_string()]);
    argv
}

/// podman 5.3 to 6.0's argv (`createPastaArgs`) for a `podman run` whose
/// `-p` options became `ports` (`-t` options), with the netns path in the
/// place podman puts it.
pub fn podman_argv(netns: &Path, ports: &[&str]) -> Vec<String> {
    let path = netns.display().to_string();
    let rest = [
        "--dns-forward",
        "169.254.1.1",
        "-u",
        "none",
        "-T",
        "none",
        "-U",
        "none",
    ];
    let tail = ["--no-map-gw", "--quiet", "--netns", &path];
    let map = ["--map-guest-addr", "169.254.1.2"];
    ["--config-net"]
        .iter()
        .chain(ports)
        .chain(&rest)
        .chain(&tail)
        .chain(&map)
        .map(|a| a.to_string())
        .collect()
}

/// What `cmd` (a client) printed, trimmed.
pub fn stdout_of(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `session` with netferry as pasta, then with the real pasta, in a
/// scratch directory tagged `tag`; it is given the directory, the
/// `pasta` to run and the implementation's name.
pub fn each_implementation(tag: &str, session: impl Fn(&TempDir, &Path, &str)) {
    let dir = TempDir::new(tag);
    for (name, pasta) in implementations(&dir) {
        eprintln!("== {name}");
        session(&dir, &pasta, name);
    }
}

/// The pids of the processes in the host namespace with `arg` on their
/// command line.
pub fn with_arg(net: &TestNet, arg: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "pids", &net.host])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
        .map(String::from)
        .collect()
}

/// The pids of the processes in the host namespace serving `netns`
/// (those with it on their command line).
pub fn serving(net: &TestNet, netns: &Path) -> Vec<String> {
    with_arg(net, &netns.display().to_string())
}

/// Whether, within 3 s, nothing serves `netns` any more (pasta quits
/// within a second of its namespace file's removal).
pub fn none_serving(net: &TestNet, netns: &Path) -> bool {
    wait_until(Duration::from_secs(3), || serving(net, netns).is_empty())
}

pub fn host_net() -> TestNet {
    let net = TestNet::new();
    net.host_ok(&["ip", "route", "add", "default", "via", REMOTE_ADDR]);
    net
}
