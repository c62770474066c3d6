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

/// A field of /proc/PID/status as a number ("SigBlk:\t0000..." is hex).
fn status_hex(status: &str, key: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

fn sig_bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

#[test]
fn the_command_starts_with_no_signal_blocked_and_sigpipe_at_its_default() {
    let net = TestNet::new();
    let mut cmd = netferry_run(&net, &["--", "cat", "/proc/self/status"]);
    // netferry's caller blocks a signal; the command must not inherit it.
    // SAFETY: sigprocmask on the forked child's own thread, before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let status = String::from_utf8_lossy(&o.stdout);
    assert_eq!(status_hex(&status, "SigBlk:"), 0, "{status}");
    // Rust's runtime ignores SIGPIPE in netferry; `yes | head` inside
    // must still end.
    assert_eq!(
        status_hex(&status, "SigIgn:") & sig_bit(libc::SIGPIPE),
        0,
        "{status}"
    );
}

/// The pid of `pid`'s child running `comm`, once there is one.
fn child_running(pid: u32, comm: &str) -> Option<u32> {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        found = children.split_whitespace().find_map(|c| {
            let name = std::fs::read_to_string(format!("/proc/{c}/comm")).ok()?;
            (name.trim() == comm).then(|| c.parse().ok())?
        });
        found.is_some()
    });
    found
}

fn gone_or_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z"))
        .unwrap_or(true)
}

#[test]
fn the_command_dies_with_netferry_even_when_netferry_is_killed() {
    let net = TestNet::new();
    let mut nf = netferry_run(&net, &["--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let command = child_running(nf.id(), "sleep").expect("the command never started");
    nf.kill().unwrap();
    let _ = nf.wait();
    let died = wait_until(Duration::from_secs(10), || gone_or_zombie(command));
    if !died {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(command as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(died, "the command {command} outlived a SIGKILLed netferry");
}

#[test]
fn sighup_reaches_the_command_like_sigterm() {
    use std::io::BufRead;
    let net = TestNet::new();
    let mut nf = netferry_run(
        &net,
        &[
            "--",
            "sh",
            "-c",
            "trap 'echo got-hup; exit 3' HUP; echo ready; while :; do sleep 1; done",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut out = std::io::BufReader::new(nf.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let command = child_running(nf.id(), "sh").expect("the command is not running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nf.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = nf.try_wait().unwrap();
        status.is_some()
    });
    if status.and_then(|s| s.code()) != Some(3) {
        // Do not leave the command looping without netferry.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(command as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nf.kill();
        panic!("netferry ended with {status:?}, not the command's 3");
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got-hup\n");
}

#[test]
fn the_resolv_conf_is_private_and_cannot_be_planted_by_another_user() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let net = TestNet::new();
    let tmp = TempDir::new("tmpdir");
    // Start netferry only once its pid is known, and plant a file where a
    // name made from that pid would put the resolv.conf: root's, and
    // writable by anyone, as another user could leave it in /tmp.
    let inner = netferry_run(
        &net,
        &[
            "--no-ipv6",
            "--",
            "sh",
            "-c",
            "stat -c '%a %u' /etc/resolv.conf; cat /etc/resolv.conf",
        ],
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "read go; exec \"$@\"", "sh"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("TMPDIR", &tmp.0)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut nf = cmd.spawn().unwrap();
    let planted = tmp.path(&format!("netferry-run-{}.resolv.conf", nf.id()));
    std::fs::write(&planted, "nameserver 192.0.2.1\n").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut stdin = nf.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let o = nf.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // Readable by the command (root inside, our own user outside), and by
    // no one else.
    assert_eq!(out, "600 0\nnameserver 10.0.2.3\n");
    assert_eq!(
        std::fs::read_to_string(&planted).unwrap(),
        "nameserver 192.0.2.1\n",
        "netferry wrote into a file another user made"
    );
    // Nothing of netferry's is left in TMPDIR.
    let left: Vec<_> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy() != planted.file_name().unwrap().to_string_lossy())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_unknown_option_is_an_error_never_the_command() {
    let net = TestNet::new();
    let o = output(&net, &["--bogus", "10.9.0.0/24", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("'--bogus'"), "{err}");
    assert!(err.contains("Usage: netferry run"), "{err}");
    assert!(!err.contains("cannot run"), "{err}");
    // The first non-option starts CMD: its own options stay its own.
    let o = output(&net, &["sh", "-c", "exit 4", "--no-ipv6"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
}

#[test]
fn help_and_version_exit_0() {
    let net = TestNet::new();
    let o = output(&net, &["--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("Usage: netferry run [OPTIONS]"), "{help}");
    for flag in [
        "--cidr",
        "--cidr6",
        "--outbound-addr",
        "--disable-dns",
        "--disable-host-loopback",
        "--publish",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}:\n{help}");
    }
    let o = output(&net, &["--version"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(o.stdout.starts_with(b"netferry version "), "{}", text(&o));
}

#[test]
fn exit_statuses_say_who_failed() {
    let net = TestNet::new();
    for (args, want, says) in [
        (&["--", "no-such-command-here"][..], 127, "not found"),
        (&["--", "/no/such/file"][..], 127, "No such file"),
        (&["--", "/etc/passwd"][..], 126, "Permission denied"),
        // netferry's own failure, before any namespace.
        (&["--mtu", "0", "--", "true"][..], 125, "MTU"),
    ] {
        let o = output(&net, args);
        assert_eq!(o.status.code(), Some(want), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
}

#[test]
fn the_network_options_of_slirp4netns_mode_apply() {
    let net = TestNet::new();
    let o = output(
        &net,
        &[
            "--no-ipv6",
            "--cidr",
            "10.9.0.0/24",
            "--",
            "sh",
            "-c",
            "ip -4 -br addr show tap0; ip -4 route show default; cat /etc/resolv.conf",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("10.9.0.100/24"), "{out}");
    assert!(out.contains("default via 10.9.0.2"), "{out}");
    assert!(out.contains("nameserver 10.9.0.3"), "{out}");
    // --disable-dns: nothing answers at the DNS address, so CMD is not
    // pointed at it.
    let o = output(
        &net,
        &[
            "--no-ipv6",
            "--disable-dns",
            "--",
            "cat",
            "/etc/resolv.conf",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("nameserver 10.0.2.3"), "{}", text(&o));
    // --outbound-addr is checked before anything starts.
    let o = output(&net, &["--outbound-addr", "no-such-if0", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(text(&o).contains("no-such-if0"), "{}", text(&o));
}

#[test]
fn ipv6_is_usable_as_soon_as_the_command_starts() {
    let net = TestNet::new();
    // The first thing the command does: IPv6 to the gateway, and the
    // address SLAAC gave from --cidr6, not a tentative one.
    let o = output(
        &net,
        &[
            "--",
            "sh",
            "-c",
            "busybox ping -6 -c 1 -W 5 fd00::2 && ip -6 route show default",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("default via"), "{}", text(&o));
    let o = output(
        &net,
        &[
            "--cidr6",
            "fd42:1:2:3::/64",
            "--",
            "sh",
            "-c",
            "busybox ping -6 -c 1 -W 5 fd42:1:2:3::2 && ip -6 -o addr show dev tap0 scope global",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("inet6 fd42:1:2:3:"), "{out}");
    assert!(!out.contains("tentative"), "{out}");
}

#[test]
fn a_tun_device_closed_to_users_is_named_with_the_fix() {
    let net = TestNet::new();
    // /dev/net/tun as root alone may use it, in a mount namespace of the
    // test's own.
    let inner = netferry_run(&net, &["--", "true"]);
    let o = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs none /dev/net && mknod -m 600 /dev/net/tun c 10 200 && exec \"$@\"",
            "sh",
        ])
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("cannot open /dev/net/tun: Permission denied"),
        "{out}"
    );
    assert!(out.contains("chmod 0666 /dev/net/tun"), "{out}");
}

#[test]
fn bad_values_are_named_with_what_would_do() {
    let net = TestNet::new();
    for (args, want) in [
        (
            &["-p", "::1:8080:80", "--", "true"][..],
            "-p ::1:8080:80: an IPv6 host address goes in brackets: -p [::1]:8080:80",
        ),
        (
            &["--mtu", "1000", "--", "true"][..],
            "MTU 1000 is too small for IPv6: 1280-65521 (with --no-ipv6, 68-65521)",
        ),
        (
            &["--no-ipv6", "--mtu", "10", "--", "true"][..],
            "MTU 10 is too small for a tap: -c sets 68-65521",
        ),
        (
            &["-a", "/nonexistent-dir/api.sock", "--", "true"][..],
            "netferry run: cannot create the API socket /nonexistent-dir/api.sock: \
             the directory /nonexistent-dir does not exist",
        ),
    ] {
        let o = output(&net, args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
        assert!(
            !text(&o).contains("cannot get the tap device"),
            "{args:?}: {}",
            text(&o)
        );
    }
}

#[test]
fn a_resolver_that_never_answers_gives_the_guest_servfail_not_silence() {
    let net = TestNet::new();
    // The host namespace's resolv.conf names 127.0.0.1: there, a socket
    // that reads every query and answers none.
    let silent = net.in_host(|| std::net::UdpSocket::bind("127.0.0.1:53").unwrap());
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = heard.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while silent.recv_from(&mut buf).is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // dig waits far longer than netferry may: the answer it prints is
    // netferry's, whenever it came.
    let o = output(
        &net,
        &[
            "--no-ipv6",
            "--",
            "dig",
            "+tries=1",
            "+time=15",
            "@10.0.2.3",
            "probe.netferry.test",
        ],
    );
    let out = text(&o);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(out.contains("probe.netferry.test."), "{out}");
    assert!(
        heard.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the query never reached the host's resolver"
    );
}
