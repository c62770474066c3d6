//! Rootless podman 5.4 (Debian trixie's) running netferry in place of
//! slirp4netns. podman 5 defaults to pasta, so containers.conf selects
//! slirp4netns (`[network] default_rootless_network_cmd`) and names
//! netferry (`[engine] network_cmd_path`); podman then passes its usual
//! flags, which the test records and pins.
//!
//! trixie's podman needs a newer glibc than this machine's, so it runs
//! inside a trixie root filesystem that .ci/run builds once per machine
//! with debootstrap (.ci/trixie-rootfs.sh), entered with pivot_root in a
//! private mount namespace (the kernel refuses to create a user namespace
//! under chroot). The host's /proc, /sys (with its cgroups), /dev (with
//! /dev/net/tun) are bound in, and per test a scratch directory as /mnt
//! (netferry built here, a wrapper that logs how podman runs it,
//! containers.conf), as /run (the user's runtime directory: a directory
//! rather than a tmpfs, since podman's state there must outlive each
//! podman command) and as the user's home (podman's storage), so the
//! cached tree itself is never written. podman runs as the tree's own user
//! `nfpodman5`, with the tree's subordinate ids, inside the test's host
//! namespace with its own resolv.conf, as tests/podman.rs does.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::podman::{
    HTTPD, IMAGE, PROBE, PROBE_ANSWER, Run, assert_probe, assert_sees_client, fetch_from_remote,
    host_web, kill_user,
};
use common::{TempDir, TestNet, wait_until};

/// Built by .ci/trixie-rootfs.sh; the stamp is written last.
const ROOTFS: &str = "/var/cache/netferry-ci/trixie-rootfs";
const ROOTFS_STAMP: &str = "/var/cache/netferry-ci/trixie-rootfs/.complete-v1";
/// Left by .ci/run when the Debian archive could not be reached.
const ROOTFS_UNREACHABLE: &str = "/var/cache/netferry-ci/trixie-rootfs.unreachable";
/// The user inside the tree (its /etc/passwd, /etc/subuid, /etc/subgid).
const USER: &str = "nfpodman5";
const UID: u32 = 4750;
/// Where the test's scratch directory appears inside the tree.
const MNT: &str = "/mnt";
/// One podman test at a time: they share the user's pause process.
static PODMAN: Mutex<()> = Mutex::new(());

/// netferry's argv from podman 5.4 with `--network slirp4netns`, the
/// namespace path written as `<netns>`; `--api-socket <api>` comes in
/// before `--netns-type` with port_handler=slirp4netns, and
/// `--disable-host-loopback` goes with allow_host_loopback=true.
const ARGV: &str = "--disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp \
                    --enable-ipv6 -c -r 3 -e 4 --netns-type=path <netns> tap0";

struct Podman5 {
    net: TestNet,
    dir: TempDir,
    _dns: common::KillOnDrop,
}

impl Podman5 {
    /// None only when .ci/run could not reach the Debian archive to
    /// build the tree (a failure under CI: [`common::skip_or_fail`]).
    fn new() -> Option<Self> {
        if !Path::new(ROOTFS_STAMP).exists() {
            if Path::new(ROOTFS_UNREACHABLE).exists() {
                common::skip_or_fail(
                    "no trixie root filesystem for podman 5: .ci/run could not reach the \
                     Debian archive",
                );
                return None;
            }
            panic!("no trixie root filesystem at {ROOTFS}: bash .ci/run builds it");
        }
        // A pause process left from another run would hold an old mount
        // namespace: start clean.
        kill_user(UID);
        let net = TestNet::new();
        let dir = TempDir::new("podman5");
        let runtime = format!("run/user/{UID}");
        for d in ["home", "tmp", &runtime] {
            fs::create_dir_all(dir.path(d)).unwrap();
            common::run_ok(
                "chown",
                &[&format!("{UID}:{UID}"), dir.path(d).to_str().unwrap()],
            );
        }
        fs::set_permissions(dir.path(&runtime), fs::Permissions::from_mode(0o700)).unwrap();
        fs::copy(common::netferry_bin(), dir.path("netferry")).unwrap();
        // How podman runs netferry, one line per run; netferry's log
        // (podman deletes its own copy) shows the API requests.
        let wrapper = dir.path("netferry-wrapper");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$@\" >>{MNT}/argv.log\n\
                 RUST_LOG=debug exec {MNT}/netferry \"$@\" 2>>{MNT}/netferry.log\n"
            ),
        )
        .unwrap();
        for f in ["netferry", "netferry-wrapper"] {
            fs::set_permissions(dir.path(f), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(
            dir.path("containers.conf"),
            format!(
                "[network]\ndefault_rootless_network_cmd = \"slirp4netns\"\n\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nnetwork_cmd_path = \"{MNT}/netferry-wrapper\"\n"
            ),
        )
        .unwrap();
        let dns = common::dns_server(&net, "127.0.0.1", &[PROBE_ANSWER]);
        let p = Podman5 {
            net,
            dir,
            _dns: dns,
        };
        p.import_image(&p.dir.0, |tar| {
            format!("{MNT}/{}", tar.strip_prefix(&p.dir.0).unwrap().display())
        });
        Some(p)
    }

    /// How podman ran netferry so far, with the namespace path written as
    /// `<netns>` and the API socket as `<api>`. podman reads `--help`
    /// before each start to see which flags there are: that is checked
    /// and left out.
    fn argvs(&self) -> Vec<String> {
        let log = fs::read_to_string(self.dir.path("argv.log")).unwrap_or_default();
        assert!(
            log.starts_with("--help\n"),
            "podman did not ask for --help first: {log}"
        );
        log.lines()
            .filter(|l| *l != "--help")
            .map(|l| {
                let mut words: Vec<&str> = l.split(' ').collect();
                for i in 1..words.len() {
                    if words[i - 1] == "--netns-type=path" {
                        words[i] = "<netns>";
                    }
                    if words[i - 1] == "--api-socket" {
                        assert!(words[i].ends_with(".net"), "api socket {}", words[i]);
                        words[i] = "<api>";
                    }
                }
                words.join(" ")
            })
            .collect()
    }

    fn netferry_log(&self) -> String {
        fs::read_to_string(self.dir.path("netferry.log")).unwrap_or_default()
    }

    /// The user's live processes, by name.
    fn processes(&self) -> Vec<String> {
        let out = Command::new("ps")
            .args(["-u", &UID.to_string(), "-o", "stat=,comm="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(stat, _)| !stat.starts_with('Z'))
            .map(|(_, comm)| comm.trim().to_string())
            .collect()
    }

    /// netferry processes of this test still running.
    fn netferries(&self) -> usize {
        self.processes().iter().filter(|c| *c == "netferry").count()
    }
}

impl Run for Podman5 {
    fn podman(&self, args: &[&str]) -> Output {
        // Run as root in a new mount namespace inside the host namespace:
        // bind what podman needs into the tree, pivot_root into it, drop
        // the old root, then become the user.
        let script = format!(
            "set -e; root={ROOTFS}; t={dir}\n\
             mount --bind $root $root\n\
             mount --rbind /proc $root/proc\n\
             mount --rbind /sys $root/sys\n\
             mount --rbind /dev $root/dev\n\
             mount --bind $t/run $root/run\n\
             mount --bind $t $root{MNT}\n\
             mount --bind $t/home $root/home/{USER}\n\
             mount --bind /etc/netns/{host}/resolv.conf $root/etc/resolv.conf\n\
             cd $root\n\
             pivot_root . .\n\
             umount -l .\n\
             mount --make-rshared /\n\
             exec setpriv --reuid={UID} --regid={UID} --init-groups \
             env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/home/{USER} \
             XDG_RUNTIME_DIR=/run/user/{UID} TMPDIR={MNT}/tmp \
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
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }
}

impl Drop for Podman5 {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        kill_user(UID);
    }
}

#[test]
fn a_container_gets_its_addresses_and_reaches_the_host_only_when_allowed() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Podman5::new() else { return };
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
    assert_eq!(
        p.argvs(),
        [
            ARGV.replace("--disable-host-loopback ", ""),
            ARGV.to_string()
        ],
        "netferry log:\n{}",
        p.netferry_log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || p.netferries() == 0),
        "netferry left running after --rm"
    );
}

#[test]
fn published_ports_work_with_both_port_handlers_and_keep_the_clients_address() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Podman5::new() else { return };
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
    // No --network: containers.conf's default_rootless_network_cmd
    // picks netferry, with rootlesskit's port handler.
    let mut args = vec!["run", "-d", "--name", "nf-rlk", "-p", "8081:80", IMAGE];
    args.extend_from_slice(&HTTPD);
    p.ok(&args);
    assert_eq!(p.netferries(), 2, "one netferry per container");
    assert_eq!(
        p.argvs(),
        [
            ARGV.replace("--netns-type", "--api-socket <api> --netns-type"),
            ARGV.to_string()
        ]
    );
    // podman 5 leaves guest_addr empty, meaning the guest's address.
    let log = p.netferry_log();
    assert!(
        log.contains(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"","guest_port":80}} -> {"return":{"id":1}}"#
        ),
        "{log}"
    );

    assert_sees_client(&p.net, 8080);
    assert!(!fetch_from_remote(&p.net, 8081).is_empty());

    p.ok(&["rm", "-f", "-t", "0", "nf-fwd", "nf-rlk"]);
    assert!(
        wait_until(Duration::from_secs(10), || p.netferries() == 0),
        "netferry left running after podman rm -f"
    );
    // Only podman's pause process stays, as it does for slirp4netns.
    assert!(
        wait_until(Duration::from_secs(10), || p.processes() == ["catatonit"]),
        "left running after podman rm -f: {:?}",
        p.processes()
    );
}
