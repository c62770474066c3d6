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

use common::{REMOTE_ADDR, TempDir, TestNet, wait_until};

const USER: &str = "nfpodman";
/// Named after what it holds; the test imports it when missing.
const IMAGE: &str = "localhost/netferry-test-busybox:2";
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

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Podman {
    fn new() -> Self {
        let uid = uid();
        // A pause process left from another run would hold an old mount
        // namespace (and resolv.conf): start clean.
        let _ = Command::new("pkill").args(["-9", "-u", USER]).status();
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
        let dns = common::dns_server(&net, "127.0.0.1", &["198.51.100.2"]);
        let p = Podman {
            net,
            dir,
            bin,
            uid,
            _dns: dns,
        };
        let exists = p.podman(&["image", "exists", IMAGE]);
        if !exists.status.success() {
            let tar = p.busybox_tar();
            let out = p.podman(&["import", tar.to_str().unwrap(), IMAGE]);
            assert!(out.status.success(), "podman import: {}", text(&out));
        }
        p
    }

    /// A busybox root filesystem with a web page and a CGI script that
    /// prints the client's address.
    fn busybox_tar(&self) -> PathBuf {
        let root = self.dir.path("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www/cgi-bin"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "ip", "wget", "nslookup", "httpd", "sleep", "cat", "echo",
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
        let tar = self.dir.path("busybox.tar");
        common::run_ok(
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

    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// netferry processes of this test still running.
    fn netferries(&self) -> usize {
        let out = Command::new("pgrep")
            .args(["-f", self.bin.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// busybox httpd serving `dir` on the host's 127.0.0.1:`port`.
    fn host_web(&self, port: u16) -> Child {
        let www = self.dir.path("www-host");
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("index.html"), "hello from the host\n").unwrap();
        let addr = format!("127.0.0.1:{port}");
        let child = self
            .net
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
        Child(child)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        let _ = Command::new("pkill").args(["-9", "-u", USER]).status();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_container_gets_its_addresses_and_reaches_the_host_only_when_allowed() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let p = Podman::new();
    let _web = p.host_web(8001);
    let script = "ip -4 addr show tap0; \
                  for i in 1 2 3 4 5 6 7 8 9 10; do ip -6 addr show tap0 scope global | grep -q fd00 && break; sleep 0.5; done; \
                  ip -6 addr show tap0 scope global; \
                  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.2.2 8001 | grep hello || echo FETCH-FAILED; \
                  nslookup -type=a probe.netferry.test 10.0.2.3";
    let out = p.ok(&[
        "run",
        "--rm",
        "--network",
        "slirp4netns:allow_host_loopback=true",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    assert!(out.contains("inet 10.0.2.100/24"), "{out}");
    assert!(out.contains("inet6 fd00::"), "no SLAAC address: {out}");
    assert!(out.contains("hello from the host"), "{out}");
    // The name resolved through 10.0.2.3 to the test's resolver.
    assert!(out.contains("Address: 198.51.100.2"), "{out}");

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
        script,
    ]);
    assert!(
        out.contains("FETCH-FAILED"),
        "reached the host's loopback: {out}"
    );
    assert!(!out.contains("hello from the host"), "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || p.netferries() == 0),
        "netferry left running after --rm"
    );
}

#[test]
fn published_ports_work_with_both_port_handlers_and_keep_the_clients_address() {
    let _one = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let p = Podman::new();
    let httpd = ["httpd", "-f", "-p", "80", "-h", "/www"];
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
    args.extend_from_slice(&httpd);
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
    args.extend_from_slice(&httpd);
    p.ok(&args);
    assert_eq!(p.netferries(), 2, "one netferry per container");

    // From the remote host to the host's address: the server inside sees
    // the client's real address with netferry's own port handler.
    let fetch = |port: u16| {
        let url = format!("http://198.51.100.1:{port}/cgi-bin/ip");
        let mut got = String::new();
        let ok = wait_until(Duration::from_secs(15), || {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &p.net.remote,
                    "curl",
                    "-s",
                    "-m",
                    "3",
                    &url,
                ])
                .output()
                .unwrap();
            got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            out.status.success() && !got.is_empty()
        });
        assert!(ok, "no answer on port {port}");
        got
    };
    // (busybox httpd listens on IPv6 and shows IPv4 clients v4-mapped.)
    let seen = fetch(8080);
    let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
    assert_eq!(
        seen, REMOTE_ADDR,
        "port_handler=slirp4netns must keep the client's address"
    );
    // rootlesskit's port handler works too (its clients appear as its own).
    assert!(!fetch(8081).is_empty());

    p.ok(&["stop", "-t", "1", "nf-fwd", "nf-rlk"]);
    assert!(
        wait_until(Duration::from_secs(10), || p.netferries() == 0),
        "netferry did not exit when its container stopped"
    );
}
