//! The real binary's command-line behaviour: what podman, rootlesskit and
//! scripts see on stdout, stderr and in the exit status.

mod common;

use std::process::{Command, Output};

use common::netferry_bin;

fn run(args: &[&str]) -> Output {
    Command::new(netferry_bin()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_exits_0_on_stdout_with_feature_flags() {
    for flag in ["--help", "-h"] {
        let o = run(&[flag]);
        assert_eq!(o.status.code(), Some(0));
        let text = String::from_utf8_lossy(&o.stdout);
        for needle in [
            "--netns-type",
            "--userns-path",
            "--enable-seccomp",
            "--macaddress",
        ] {
            assert!(text.contains(needle), "{flag} lacks {needle}");
        }
    }
}

#[test]
fn help_lists_the_commands_and_keeps_what_callers_grep_for() {
    for args in [&["--help"][..], &["help"][..]] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        for needle in netferry::cli::CALLER_GREPS {
            assert!(text.contains(needle), "{args:?} lacks {needle}:\n{text}");
        }
        for needle in [
            "netferry run [OPTIONS]",
            "netferry status API_SOCKET",
            "netferry pasta",
            "invoked as pasta",
            "netferry setup podman|docker",
            "netferry doctor",
        ] {
            assert!(text.contains(needle), "{args:?} lacks {needle}:\n{text}");
        }
    }
    for (topic, want) in [
        ("run", "Usage: netferry run"),
        ("status", "Usage: netferry status API_SOCKET"),
        ("pasta", "Usage: pasta"),
        ("setup", "Usage: netferry setup"),
        ("doctor", "Usage: netferry doctor"),
    ] {
        let o = run(&["help", topic]);
        assert_eq!(o.status.code(), Some(0), "help {topic}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(want), "help {topic}:\n{text}");
    }
    let o = run(&["help", "bogus"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));
}

#[test]
fn status_needs_a_path_and_its_errors_name_it() {
    for args in [
        &["status"][..],
        &["status", "a", "b"][..],
        &["status", "-x"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("Usage: netferry status API_SOCKET"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = run(&["status", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let o = run(&["status", "/nonexistent/api.sock"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cannot get the status from /nonexistent/api.sock: No such file"),
        "{err}"
    );
    assert!(err.contains("--api-socket /nonexistent/api.sock"), "{err}");
    // A socket file nobody listens on any more.
    let dir = std::env::temp_dir().join(format!("nf-cli-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let o = run(&["status", path.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("has netferry ended?"), "{err}");
}

#[test]
fn version_exits_0_with_config_version() {
    let o = run(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("netferry version "), "{text}");
    assert!(text.lines().any(|l| l == "SLIRP_CONFIG_VERSION_MAX: 4"));
    assert_eq!(run(&["-v"]).status.code(), Some(0));
}

#[test]
fn validation_errors_exit_1_with_slirp4netns_text() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["-m", "0", "1", "tap0"],
            "MTU must be a positive integer (< 65522)\n",
        ),
        (
            &["--mtu=65522", "1", "tap0"],
            "MTU must be a positive integer (< 65522)\n",
        ),
        (&["--cidr", "bogus", "1", "tap0"], "invalid CIDR: bogus\n"),
        (
            &["--cidr=10.0.0.0/26", "1", "tap0"],
            "prefix length needs to be 1-25\n",
        ),
        (
            &["--cidr=10.0.2.100/24", "1", "tap0"],
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24\n",
        ),
        (&["0", "tap0"], "PID must be a positive integer\n"),
        (
            &["--macaddress=02:00:00:00:00:01", "1", "tap0"],
            "--macaddr cannot be specified when --configure or -c is not specified\n",
        ),
        (
            &["--userns-path=/nonexistent", "1", "tap0"],
            "userns path doesn't exist: /nonexistent\n",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&o), *want, "{args:?}");
    }
}

#[test]
fn api_socket_path_too_long_exits_1() {
    let long = format!("/tmp/{}", "s".repeat(103));
    let o = run(&["--api-socket", &long, "1", "tap0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("too long"), "{}", stderr(&o));
}

#[test]
fn missing_arguments_print_usage_and_exit_1() {
    for args in [&[][..], &["1234"][..]] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains("Usage: netferry"), "{}", stderr(&o));
    }
}

#[test]
fn unknown_flag_exits_1() {
    let o = run(&["--no-such-flag", "1", "tap0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--no-such-flag"));
}

#[test]
fn the_flags_podman_and_rootlesskit_pass_are_all_accepted() {
    // podman 4.3's argv, with a namespace path that does not exist: the
    // only complaint may be about that path, never about a flag.
    let o = run(&[
        "--disable-host-loopback",
        "--mtu=65520",
        "--enable-sandbox",
        "--enable-seccomp",
        "--enable-ipv6",
        "-c",
        "-e",
        "3",
        "-r",
        "4",
        "--api-socket",
        "/tmp/nf-cli.net",
        "--netns-type=path",
        "/nonexistent/netns",
        "tap0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "netns path doesn't exist: /nonexistent/netns\n");
    // rootlesskit 1.x's, with a PID above pid_max.
    let o = run(&[
        "--mtu",
        "65520",
        "-r",
        "3",
        "--disable-host-loopback",
        "--cidr",
        "10.0.2.0/24",
        "--enable-sandbox",
        "--enable-seccomp",
        "--enable-ipv6",
        "99999999",
        "tap0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!stderr(&o).contains("not supported"), "{}", stderr(&o));
}

#[test]
fn missing_process_says_no_such_process() {
    // PIDs above pid_max never exist.
    let o = run(&["99999999", "tap0"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no such process: 99999999"), "{err}");
    assert!(!err.contains("its error is above"), "{err}");
}

/// Sections of the man page that are prose, not flags.
const MAN_PROSE: &str = r#".SH "NETFERRY STATUS"
\fBnetferry status\fR API_SOCKET
.PP
Ask the netferry serving API_SOCKET (started with \fB\-\-api\-socket\fR or \fBnetferry run \-a\fR) what it is doing and print it: flows by protocol, forwards, bytes each way, frames from the guest and those dropped as malformed, connections refused at a flow cap. Exactly one argument; without it, usage and exit 1. An error names the socket, the cause and what to check.
.SH "PASTA MODE"
\fBnetferry pasta\fR [OPTION]... [PID|\fB\-\-netns\fR PATH|CMD [ARGS]...], or netferry invoked by the name \fBpasta\fR (a link, as podman and rootlesskit look for it), takes pasta's command line, with pasta's texts and exit statuses; \fBnetferry help pasta\fR lists its options.
.PP
With \fB\-\-config\-net\fR the namespace gets a tap named after the host's interface with the default route, that interface's addresses and routes (IPv4 and IPv6), MTU 65520 (\fB\-m\fR), \fB\-a\fR, \fB\-n\fR, \fB\-g\fR overriding per family; with no such interface, pasta's local mode (169.254.2.1/16 via 169.254.2.2, fe80::1). Without it, the namespace is served by DHCP and router advertisements. The gateway leads to the host's loopback unless \fB\-\-no\-map\-gw\fR; \fB\-\-map\-host\-loopback\fR, \fB\-\-map\-guest\-addr\fR (the host's own address) and \fB\-\-dns\-forward\fR (the host's resolver, or \fB\-\-dns\-host\fR) add such addresses. \fB\-t\fR and \fB\-u\fR forward host ports into the namespace (ranges, \fBall\fR, \fBauto\fR: the default, following the namespace's listening sockets), \fB\-T\fR and \fB\-U\fR the namespace's loopback ports to the host's.
.PP
Without \fB\-f\fR it becomes a daemon: the parent exits 0 once the namespace is set up and every given port bound (1 and a message otherwise), and the daemon quits when the \fB\-\-netns\fR file is deleted or its PID target ends. With a command instead of a target, it runs CMD (or the shell) as root and PID 1 in new namespaces and exits with its status. It always runs under its sandbox and seccomp filter. An option netferry cannot serve is refused by name, never ignored.
.SH "NETFERRY SETUP"
\fBnetferry setup\fR podman|docker [\fB\-\-user\fR|\fB\-\-system\fR] [\fB\-\-mode\fR pasta|slirp4netns] [\fB\-\-undo\fR]
.PP
Make podman (4, 5 or 6) or Docker rootless run netferry: a helper directory holding \fBpasta\fR and \fBslirp4netns\fR links to netferry, and for podman a containers.conf.d drop\-in naming it first in helper_binaries_dir (for Docker, a systemd user drop\-in putting it first in the daemon's PATH). The mode follows podman's version (6: pasta only; 5: pasta; 4: slirp4netns) unless \fB\-\-mode\fR says otherwise, and is reported. Setup only adds files and records them; \fB\-\-undo\fR removes exactly those, and refuses, changing nothing, when there is no record or a recorded file was edited since.
.SH "NETFERRY DOCTOR"
\fBnetferry doctor\fR checks what rootless networking needs here (/dev/net/tun and its mode, subordinate ids, user namespaces allowed, AppArmor's restriction of unprivileged user namespaces, resolv.conf, whether podman or Docker use netferry), one line per check with the fix for each problem.
.SH "API SOCKET"
With \fB\-\-api\-socket\fR PATH, netferry listens on a Unix socket (mode 0600) for one JSON request per connection and answers with one JSON reply:
.PP
.nf
{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}
{"return":{"id":1}}
{"execute":"list_hostfwd"}
{"execute":"remove_hostfwd","arguments":{"id":1}}
{"return":{}}
.fi
.PP
{"execute":"status"} answers flows by protocol, forwards, bytes each way, frames dropped and connections refused at a cap; \fBnetferry status\fR PATH prints that for people. Errors are {"error":{"desc":"..."}} with slirp4netns's texts. \fIhost_port\fR 0 picks a free port; \fIhost_addr\fR and \fIguest_addr\fR may be IPv6.
.SH "EXIT STATUS"
0 after \fB\-\-help\fR, \fB\-\-version\fR, or when the exit fd hangs up; 1 on any error; after SIGTERM or SIGINT netferry ends by that signal, as slirp4netns does. \fBnetferry status\fR: 0, or 1 when the status cannot be read. \fBnetferry run\fR: its command's status; 128+N when signal N ended the command; 125 when netferry itself failed (a bad option, setting up the namespaces or the network); 126 when the command was found but could not be executed; 127 when it was not found. \fBnetferry setup\fR: 0 when done, 1 when refused or failed. \fBnetferry doctor\fR: 0 when every check passes, 1 otherwise.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
log level and filter (error, warn, info, debug, trace); \fB\-\-debug\fR is the same as RUST_LOG=debug.
.SH EXAMPLES
Run a shell in a networked rootless namespace, publishing port 8080:
.PP
.nf
netferry run \-p 8080:80
.fi
.PP
Network an existing rootless namespace, as slirp4netns would:
.PP
.nf
unshare \-Urn sleep infinity & ns=$!
netferry \-c \-6 \-a /tmp/api.sock $ns tap0
.fi
.PP
In podman's containers.conf, [engine] network_cmd_path="/usr/local/bin/netferry"; for rootlesskit, \-\-net=slirp4netns \-\-slirp4netns\-binary=netferry.
.SH "SEE ALSO"
slirp4netns(1), pasta(1), podman(1), rootlesskit(1), unshare(1), nsenter(1)
"#;

/// The man page: NAME, SYNOPSIS, DESCRIPTION and OPTIONS from the clap
/// definitions, `netferry run` and its options likewise, then the prose.
fn man_page() -> Vec<u8> {
    let cmd = netferry::cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out).unwrap();
    out.extend_from_slice(
        b".SH NAME\nnetferry \\- user\\-mode networking for unprivileged network namespaces, a drop\\-in slirp4netns\n",
    );
    man.render_synopsis_section(&mut out).unwrap();
    man.render_description_section(&mut out).unwrap();
    man.render_options_section(&mut out).unwrap();
    let mut run = netferry::cli::run_subcommand();
    run.build();
    out.extend_from_slice(
        b".SH \"NETFERRY RUN\"\n\\fBnetferry run\\fR [OPTIONS] [\\-\\-] [CMD [ARGS]...]\n.PP\n",
    );
    out.extend_from_slice(
        run.get_about()
            .map(|a| a.to_string())
            .unwrap_or_default()
            .replace('-', "\\-")
            .as_bytes(),
    );
    out.push(b'\n');
    for arg in run.get_arguments().filter(|a| !a.is_positional()) {
        let mut names = Vec::new();
        if let Some(c) = arg.get_short() {
            names.push(format!("\\fB\\-{c}\\fR"));
        }
        if let Some(l) = arg.get_long() {
            names.push(format!("\\fB\\-\\-{}\\fR", l.replace('-', "\\-")));
        }
        // An on/off flag has no value to name.
        let value = match arg.get_action().takes_values() {
            true => arg
                .get_value_names()
                .map(|v| format!(" \\fI<{}>\\fR", v.join(" ")))
                .unwrap_or_default(),
            false => String::new(),
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.extend_from_slice(
            format!(
                ".TP\n{}{value}\n{}\n",
                names.join(", "),
                help.replace('-', "\\-")
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(MAN_PROSE.as_bytes());
    out
}

#[test]
fn man_page_is_generated_from_the_flags() {
    let rendered = man_page();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/man/netferry.1");
    if std::env::var_os("NETFERRY_UPDATE_MAN").is_some() {
        std::fs::write(path, &rendered).unwrap();
    }
    let committed = std::fs::read(path).unwrap_or_default();
    assert!(
        committed == rendered,
        "man/netferry.1 is stale: run `NETFERRY_UPDATE_MAN=1 cargo test --test cli`"
    );
}

#[test]
fn the_man_page_names_no_value_for_on_off_flags() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/netferry.1"))
        .unwrap_or_default();
    for cmd in [netferry::cli::command(), netferry::cli::run_subcommand()] {
        let mut cmd = cmd;
        cmd.build();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let name = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
            for line in page
                .lines()
                .filter(|l| l.contains(&name) && !l.starts_with('.'))
            {
                let has_value = line.contains("\\fI");
                if line.starts_with("\\fB") {
                    assert_eq!(
                        has_value,
                        arg.get_action().takes_values(),
                        "man page: --{long}: {line}"
                    );
                }
            }
        }
    }
    // What the page says of the exit statuses is what the code does.
    for claim in [
        "125 when netferry itself failed",
        "126 when the command was found but could not be executed",
        "127 when it was not found",
        "Exactly one argument; without it, usage and exit 1",
    ] {
        assert!(page.contains(claim), "man page lacks: {claim}");
    }
}

#[test]
fn typos_fail_before_anything_is_joined() {
    // Our own network namespace as the target: refused, nothing touched.
    let o = run(&["--netns-type=path", "/proc/self/ns/net", "tap0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is netferry's own network namespace"),
        "{}",
        stderr(&o)
    );
    // A tap name too long for the kernel, a missing API directory, a
    // ready fd that is not open: each one line, before the fork.
    let pid = std::process::id().to_string();
    for (args, want) in [
        (
            vec![pid.as_str(), "a-very-long-tap-name0"],
            "a-very-long-tap-name0",
        ),
        (
            vec!["-a", "/nonexistent-dir/api.sock", pid.as_str(), "tap0"],
            "the directory /nonexistent-dir does not exist",
        ),
        (
            vec!["-r", "99", pid.as_str(), "tap0"],
            "fd 99 is not usable",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(
            !o.stdout.starts_with(b"netferry"),
            "banner printed: {args:?}"
        );
    }
}

#[test]
fn startup_errors_name_the_value_and_no_unrelated_warning() {
    let pid = std::process::id().to_string();
    for (args, want) in [
        (
            vec!["--mtu", "10", "-c", pid.as_str(), "tap0"],
            "MTU 10 is too small for a tap: -c sets 68-65521, the kernel refuses less\n",
        ),
        (
            vec!["-a", "/nonexistent-dir/api.sock", pid.as_str(), "tap0"],
            "netferry: cannot create the API socket /nonexistent-dir/api.sock: \
             the directory /nonexistent-dir does not exist\n",
        ),
        (
            vec!["--netns-type=path", "/etc/passwd", "tap0"],
            "netferry: /etc/passwd is not a network namespace (not a namespace file at all); \
             give a namespace file such as /proc/PID/ns/net or /run/netns/NAME\n",
        ),
        (
            vec!["--netns-type=path", "/proc/self/ns/pid", "tap0"],
            "netferry: /proc/self/ns/pid is not a network namespace (a namespace of another \
             kind); give a namespace file such as /proc/PID/ns/net or /run/netns/NAME\n",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        // The whole of stderr: no host-loopback WARNING before it, no
        // "cannot get the tap device" around it.
        assert_eq!(stderr(&o), want, "{args:?}");
    }
    // Without -c netferry never sets the tap's MTU: still accepted, as by
    // slirp4netns (the engine works with at least 68).
    let o = run(&["--mtu", "10", "99999999", "tap0"]);
    assert!(stderr(&o).contains("no such process"), "{}", stderr(&o));
}

#[test]
fn a_closed_stdout_does_not_abort() {
    use std::os::unix::process::ExitStatusExt;
    // --help with stdout closed: exit 0, not an abort (134).
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("{} --help >&-; echo $?", netferry_bin())])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&status.stdout).trim().to_string();
    assert_eq!(code, "0", "{:?}", status.status.signal());
}

#[test]
fn without_proc_netferry_refuses_to_fork_rather_than_assume_one_thread() {
    use common::{Netferry, Options, TestNet};
    // A namespace file outside /proc (as podman passes), and /proc
    // hidden under a tmpfs in netferry's own mount namespace.
    let net = TestNet::new();
    let target = net.remote_path();
    let mut opts = Options::args(&["--netns-type=path", &target, "tap0"]);
    opts.exec_via = [
        "unshare",
        "-m",
        "-n",
        "sh",
        "-c",
        "mount -t tmpfs none /proc && exec \"$@\"",
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut nf = Netferry::spawn(opts);
    let status = nf.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", nf.output());
    assert!(
        nf.stderr()
            .contains("cannot tell whether netferry is single-threaded"),
        "{}",
        nf.output()
    );
}

#[test]
fn the_host_loopback_warning_comes_once_netferry_serves() {
    use common::{Netferry, Options, TestNet};
    let net = TestNet::new();
    let target = net.remote_path();
    let mut nf = Netferry::spawn(Options::args(&["--netns-type=path", &target, "tap0"]));
    nf.wait_ready();
    assert!(
        nf.stderr()
            .contains("WARNING: 127.0.0.1:* on the host is accessible as 10.0.2.2"),
        "{}",
        nf.output()
    );
}
