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
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::podman::{
    HTTPD, IMAGE, PROBE, Run, USER, UserPodman, assert_probe, assert_sees_client, count_processes,
    fetch_from_remote, host_web,
};
use common::wait_until;

/// One podman test at a time: they share the user's pause process.
static PODMAN: Mutex<()> = Mutex::new(());

/// podman as the user, with containers.conf naming netferry as
/// `network_cmd_path`.
fn podman() -> UserPodman {
    let mut p = UserPodman::new("podman");
    fs::write(
        p.dir.path("containers.conf"),
        format!(
            "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\nnetwork_cmd_path = \"{}\"\n",
            p.bin.display()
        ),
    )
    .unwrap();
    let run = format!("/run/user/{}", p.uid);
    fs::create_dir_all(&run).unwrap();
    Command::new("chown")
        .args([&format!("{USER}:"), &run])
        .status()
        .unwrap();
    p.env = format!(
        "HOME=/home/{USER} XDG_RUNTIME_DIR={run} CONTAINERS_CONF={}",
        p.dir.path("containers.conf").display()
    );
    p.import_image(&p.dir.0, |tar| tar.display().to_string());
    p
}

/// netferry processes of this test still running.
fn netferries(p: &UserPodman) -> usize {
    count_processes(p.bin.to_str().unwrap())
}

#[test]
fn a_container_gets_its_addresses_and_reaches_the_host_only_when_allowed() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let p = podman();
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
        wait_until(Duration::from_secs(10), || netferries(&p) == 0),
        "netferry left running after --rm"
    );
}

#[test]
fn published_ports_work_with_both_port_handlers_and_keep_the_clients_address() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let p = podman();
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
    assert_eq!(netferries(&p), 2, "one netferry per container");

    // From the remote host to the host's address: the server inside sees
    // the client's real address with netferry's own port handler.
    assert_sees_client(&p.net, 8080);
    // rootlesskit's port handler works too (its clients appear as its own).
    assert!(!fetch_from_remote(&p.net, 8081).is_empty());

    p.ok(&["stop", "-t", "1", "nf-fwd", "nf-rlk"]);
    assert!(
        wait_until(Duration::from_secs(10), || netferries(&p) == 0),
        "netferry did not exit when its container stopped"
    );
}
