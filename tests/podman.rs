//! Rootless podman 4.3 running netferry in place of slirp4netns, with its
//! own default flags (`--enable-sandbox --enable-seccomp --enable-ipv6
//! --disable-host-loopback --mtu=65520 -c -e -r --api-socket
//! --netns-type=path`): `network_cmd_path` in containers.conf is the only
//! change that matters (runc and cgroupfs are what this machine's podman
//! needs anyway).
//!
//! podman runs as the user `nfpodman` (made by .ci/run, with subordinate
//! ids) inside the test's host namespace, entered with `nsenter --net`
//! (`ip netns exec` would remount /sys and hide the cgroups runc needs),
//! in a private mount namespace whose /etc/resolv.conf names the test's
//! own DNS server: nothing reaches the machine's real resolver or network.
//! The image is a busybox root filesystem imported locally.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::podman::{
    HTTPD, IMAGE, PROBE, Run, assert_probe, assert_sees_client, count_processes, fetch_from_remote,
    host_web, kill_user,
};
use common::{TempDir, TestNet, wait_until};

const USER: &str = "nfpodman";
/// One podman test at a time: they share the user's pause process.
static PODMAN: Mutex<()> = Mutex::new(());

fn uid() -> u32 {
    let out = Command::new("id").args(["-u", USER]).output().unwrap();
    assert!(
        out.status.success(),
        "user {USER} is missing (bash .ci/run creates it)"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

struct Podman {
    net: TestNet,
    dir: TempDir,
    bin: PathBuf,
    uid: u32,
    _dns: common::KillOnDrop,
}

impl Podman {
    fn new() -> Self {
        let uid = uid();
        // A pause process left from another run would hold an old mount
        // namespace (and resolv.conf): start clean.
        kill_user(uid);
        let net = TestNet::new();
        let dir = TempDir::new("podman");
        let bin = dir.path("netferry");
        fs::copy(common::netferry_bin(), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(
            dir.path("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nnetwork_cmd_path = \"{}\"\n",
                bin.display()
            ),
        )
        .unwrap();
        let run = format!("/run/user/{uid}");
        fs::create_dir_all(&run).unwrap();
        Command::new("chown")
            .args([&format!("{USER}:"), &run])
            .status()
            .unwrap();
        // The test's DNS server, named by the host namespace's resolv.conf.
        let dns = common::dns_server(&net, "127.0.0.1", &[common::podman::PROBE_ANSWER]);
        let p = Podman {
            net,
            dir,
            bin,
            uid,
            _dns: dns,
        };
        p.import_image(&p.dir.0, |tar| tar.display().to_string());
        p
    }

    /// netferry processes of this test still running.
    fn netferries(&self) -> usize {
        count_processes(self.bin.to_str().unwrap())
    }
}

impl Run for Podman {
    fn podman(&self, args: &[&str]) -> Output {
        let resolv = format!("/etc/netns/{}/resolv.conf", self.net.host);
        let script = format!(
            "mount --bind {resolv} /etc/resolv.conf && exec nsenter --net=/run/netns/{host} \
             setpriv --reuid={uid} --regid={uid} --init-groups env HOME=/home/{USER} \
             XDG_RUNTIME_DIR=/run/user/{uid} CONTAINERS_CONF={conf} podman \"$@\"",
            host = self.net.host,
            uid = self.uid,
            conf = self.dir.path("containers.conf").display(),
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

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        kill_user(self.uid);
    }
}

#[test]
fn a_container_gets_its_addresses_and_reaches_the_host_only_when_allowed() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let p = Podman::new();
    let _web = host_web(&p.net, &p.dir.0);
    let out = p.ok(&[
        "run",
        "--rm",
        "--network",
        "slirp4netns:allow_host_loopback=true",
        IMAGE,
        "sh",
        "-c",
        PROBE,
    ]);
    assert_probe(&out, true);

    // Without allow_host_loopback (podman's default) the gateway does not
    // lead to the host.
    let out = p.ok(&[
        "run",
        "--rm",
        "--network",
        "slirp4netns",
        IMAGE,
        "sh",
        "-c",
        PROBE,
    ]);
    assert_probe(&out, false);
    assert!(
        wait_until(Duration::from_secs(10), || p.netferries() == 0),
        "netferry left running after --rm"
    );
}

#[test]
fn published_ports_work_with_both_port_handlers_and_keep_the_clients_address() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let p = Podman::new();
    let mut args = vec![
        "run",
        "-d",
        "--name",
        "nf-fwd",
        "-p",
        "8080:80",
        "--network",
        "slirp4netns:port_handler=slirp4netns",
        IMAGE,
    ];
    args.extend_from_slice(&HTTPD);
    p.ok(&args);
    let mut args = vec![
        "run",
        "-d",
        "--name",
        "nf-rlk",
        "-p",
        "8081:80",
        "--network",
        "slirp4netns",
        IMAGE,
    ];
    args.extend_from_slice(&HTTPD);
    p.ok(&args);
    assert_eq!(p.netferries(), 2, "one netferry per container");

    // From the remote host to the host's address: the server inside sees
    // the client's real address with netferry's own port handler.
    assert_sees_client(&p.net, 8080);
    // rootlesskit's port handler works too (its clients appear as its own).
    assert!(!fetch_from_remote(&p.net, 8081).is_empty());

    p.ok(&["stop", "-t", "1", "nf-fwd", "nf-rlk"]);
    assert!(
        wait_until(Duration::from_secs(10), || p.netferries() == 0),
        "netferry did not exit when its container stopped"
    );
}
