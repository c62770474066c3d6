//! What the podman tests (podman 4 on this machine, podman 5 inside a
//! Debian trixie tree) share: the busybox image they import, the servers
//! on the test's host and remote side, and the checks made from inside a
//! container. Each test brings its own way of running podman as
//! `Run::podman`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{KillOnDrop, REMOTE_ADDR, TestNet, run_ok, wait_until};

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
