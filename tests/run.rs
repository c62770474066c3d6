//! `netferry run`, as an unprivileged user would use it: the command
//! reaches the host and a remote network, its exit status becomes
//! netferry's, a published port serves the host while it runs, DNS goes
//! to 10.0.2.3 (and on to the test's resolver), and nothing is left
//! behind. Runs inside the test's host namespace, as `nobody`.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{NOBODY, TempDir, TestNet, as_user_args, wait_until};

fn netferry_run(net: &TestNet, args: &[&str]) -> Command {
    let mut cmd = net.host_cmd(&["setpriv"]);
    cmd.args(as_user_args(NOBODY))
        .arg(common::netferry_bin())
        .arg("run")
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null());
    cmd
}

fn output(net: &TestNet, args: &[&str]) -> Output {
    netferry_run(net, args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_command_is_networked_and_its_status_becomes_ours() {
    let net = TestNet::new();
    let listener = net.in_host(|| std::net::TcpListener::bind("127.0.0.1:6301").unwrap());
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            use std::io::Write;
            let _ = c.write_all(b"host says hi\n");
        }
    });
    let remote = net.in_remote(|| std::net::TcpListener::bind("0.0.0.0:6302").unwrap());
    std::thread::spawn(move || {
        let _ = remote.accept();
    });
    let o = output(
        &net,
        &[
            "--",
            "sh",
            "-c",
            "busybox nc 10.0.2.2 6301 </dev/null && busybox nc -w 3 198.51.100.2 6302 </dev/null && ip -4 -br addr show tap0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("host says hi"), "{out}");
    assert!(out.contains("10.0.2.100/24"), "{out}");

    assert_eq!(
        output(&net, &["--", "sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    // Killed by a signal: 128+N, as a shell reports it.
    assert_eq!(
        output(&net, &["--", "sh", "-c", "kill -9 $$"])
            .status
            .code(),
        Some(137)
    );
}

#[test]
fn dns_inside_goes_to_10_0_2_3_and_on_to_the_hosts_resolver() {
    let net = TestNet::new();
    let _dns = common::dns_server(&net, "127.0.0.1", &["198.51.100.2"]);
    let mut answered = false;
    for _ in 0..25 {
        let o = output(
            &net,
            &[
                "--no-ipv6",
                "--",
                "sh",
                "-c",
                "cat /etc/resolv.conf; busybox nslookup -type=a probe.netferry.test",
            ],
        );
        let out = text(&o);
        assert!(out.contains("nameserver 10.0.2.3"), "{out}");
        if out.contains("Address: 198.51.100.2") {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered, "no answer through 10.0.2.3");
}

#[test]
fn a_published_port_serves_the_host_and_sigterm_reaches_the_command() {
    let net = TestNet::new();
    let www = TempDir::new("www");
    std::fs::write(www.path("index.html"), "served from inside\n").unwrap();
    let dir = www.0.to_str().unwrap().to_string();
    let mut nf = netferry_run(
        &net,
        &[
            "-p",
            "127.0.0.1:8091:80",
            "--",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            &dir,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = nf.id();
    let served = wait_until(Duration::from_secs(10), || {
        net.host_cmd(&["curl", "-s", "-m", "2", "http://127.0.0.1:8091/"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("served from inside"))
            .unwrap_or(false)
    });
    assert!(served, "the published port did not serve");
    // Sandboxed and filtered by default, as podman runs netferry.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(
        status.contains("CapEff:\t0000000000000400")
            || status.contains("CapEff:\t0000000000000000"),
        "{status}"
    );
    // The command (httpd) gets the SIGTERM and netferry leaves with its
    // status; no process of its stays behind.
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = nf.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    for child in children.split_whitespace() {
        assert!(
            !std::path::Path::new(&format!("/proc/{child}")).exists()
                || std::fs::read_to_string(format!("/proc/{child}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true),
            "the command {child} outlived netferry"
        );
    }
}

#[test]
fn bad_publish_specs_are_refused_before_anything_starts() {
    let net = TestNet::new();
    let o = output(&net, &["-p", "8080", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o).contains("-p 8080: expected [HOST_ADDR:]HOST_PORT:GUEST_PORT"),
        "{}",
        text(&o)
    );
    let o = output(&net, &["-p", "1:2/sctp", "--", "true"]);
    assert!(
        text(&o).contains("protocol must be tcp or udp"),
        "{}",
        text(&o)
    );
}

#[test]
fn status_shows_a_forward_and_a_live_flow() {
    let net = TestNet::new();
    let held = net.in_host(|| std::net::TcpListener::bind("127.0.0.1:6310").unwrap());
    let holder = std::thread::spawn(move || held.accept().map(|(c, _)| c));
    let dir = TempDir::new("status");
    let sock = dir.path("api.sock");
    let sock_arg = sock.to_str().unwrap().to_string();
    let mut nf = netferry_run(
        &net,
        &[
            "-a",
            &sock_arg,
            "-p",
            "127.0.0.1:8093:80",
            "--",
            "sh",
            "-c",
            "busybox nc 10.0.2.2 6310 </dev/null & sleep 20",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let _conn = holder.join().unwrap().expect("the command never connected");
    let mut shown = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        let o = Command::new(common::netferry_bin())
            .args(["status", &sock_arg])
            .output()
            .unwrap();
        shown = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success() && shown.contains("flows:     1 TCP")
    });
    let _ = nf.kill();
    let _ = nf.wait();
    assert!(ok, "{shown}");
    assert!(
        shown.contains("#1 tcp 127.0.0.1:8093 -> 10.0.2.100:80"),
        "{shown}"
    );
    assert!(shown.contains("forwards:  1"), "{shown}");
    let o = Command::new(common::netferry_bin())
        .args(["status", "/nonexistent.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("netferry status:"));
}
