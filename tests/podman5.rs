//! Rootless podman 5.4 (Debian trixie's) running netferry in place of
//! slirp4netns. podman 5 defaults to pasta, so containers.conf selects
//! slirp4netns (`[network] default_rootless_network_cmd`) and names
//! netferry (`[engine] network_cmd_path`); podman then passes its usual
//! flags, which the test records and pins.
//!
//! trixie's podman needs a newer glibc than this machine's, so it runs
//! inside a trixie root filesystem that .ci/run builds once per machine
//! with debootstrap (.ci/trixie-rootfs.sh), as `common::podman::InTree`
//! describes, as the tree's own user `nfpodman5`, inside the test's host
//! namespace with its own resolv.conf, as tests/podman.rs does. A
//! wrapper in the scratch directory logs how podman runs netferry.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::Duration;

use common::podman::{
    HTTPD, IMAGE, InTree, MNT, PROBE, PROBE_ANSWER, Run, TRIXIE, assert_probe, assert_sees_client,
    fetch_from_remote, host_web,
};
use common::{TestNet, wait_until};

/// One podman test at a time: they share the user's pause process.
static PODMAN: Mutex<()> = Mutex::new(());

/// netferry's argv from podman 5.4 with `--network slirp4netns`, the
/// namespace path written as `<netns>`; `--api-socket <api>` comes in
/// before `--netns-type` with port_handler=slirp4netns, and
/// `--disable-host-loopback` goes with allow_host_loopback=true.
const ARGV: &str = "--disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp \
                    --enable-ipv6 -c -r 3 -e 4 --netns-type=path <netns> tap0";

struct Podman5 {
    t: InTree,
    _dns: common::KillOnDrop,
}

impl Podman5 {
    /// None only when .ci/run could not reach the Debian archive to
    /// build the tree (a failure under CI: [`common::skip_or_fail`]).
    fn new() -> Option<Self> {
        let t = InTree::new(&TRIXIE, TestNet::new(), "podman5")?;
        fs::copy(common::netferry_bin(), t.dir.path("netferry")).unwrap();
        // How podman runs netferry, one line per run; netferry's log
        // (podman deletes its own copy) shows the API requests.
        let wrapper = t.dir.path("netferry-wrapper");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$@\" >>{MNT}/argv.log\n\
                 RUST_LOG=debug exec {MNT}/netferry \"$@\" 2>>{MNT}/netferry.log\n"
            ),
        )
        .unwrap();
        for f in ["netferry", "netferry-wrapper"] {
            fs::set_permissions(t.dir.path(f), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(
            t.dir.path("containers.conf"),
            format!(
                "[network]\ndefault_rootless_network_cmd = \"slirp4netns\"\n\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nnetwork_cmd_path = \"{MNT}/netferry-wrapper\"\n"
            ),
        )
        .unwrap();
        let dns = common::dns_server(&t.net, "127.0.0.1", &[PROBE_ANSWER]);
        t.import_image(&t.dir.0, |tar| t.inside(tar));
        Some(Podman5 { t, _dns: dns })
    }

    /// How podman ran netferry so far, with the namespace path written as
    /// `<netns>` and the API socket as `<api>`. podman reads `--help`
    /// before each start to see which flags there are: that is checked
    /// and left out.
    fn argvs(&self) -> Vec<String> {
        let log = fs::read_to_string(self.t.dir.path("argv.log")).unwrap_or_default();
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
        fs::read_to_string(self.t.dir.path("netferry.log")).unwrap_or_default()
    }

    /// netferry processes of this test still running.
    fn netferries(&self) -> usize {
        self.t
            .processes()
            .iter()
            .filter(|c| *c == "netferry")
            .count()
    }
}

impl std::ops::Deref for Podman5 {
    type Target = InTree;
    fn deref(&self) -> &InTree {
        &self.t
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
