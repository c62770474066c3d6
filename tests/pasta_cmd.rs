//! `pasta [OPTIONS] [CMD [ARGS...]]`: with no `--netns` and no PID,
//! pasta makes new namespaces, serves their network, runs the command
//! there and exits with its status. Run as the unprivileged user nobody
//! (pasta refuses root) in the test's host namespace (198.51.100.1/24 via
//! 198.51.100.2, dnsmasq on its loopback as the resolver), each case with
//! netferry as `pasta` and with the real pasta (Debian forky's).
//!
//! One thing differs on purpose and is not tested here: pasta lets the
//! command outlive it (it clears the parent-death signal before exec),
//! netferry ends it with itself, as `netferry run` does.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::pasta::{Caller, host_net, implementations};
use common::{HOST_ADDR, KillOnDrop, REMOTE_ADDR, TempDir, TestNet, dns_server, wait_until};

/// How long any pasta here may take: the commands are short.
const LIMIT: Duration = Duration::from_secs(30);

/// `pasta ARGS` as nobody in the test's host namespace.
fn pasta_cmd(net: &TestNet, pasta: &Path, args: &[&str]) -> Command {
    let mut cmd = net.host_cmd(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ]);
    cmd.arg(pasta)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Wait for `child` with a bound (a pasta that never ends fails the test).
fn finish(child: Child) -> Output {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("pasta did not end within {LIMIT:?}");
        }
    }
}

fn run(net: &TestNet, pasta: &Path, args: &[&str]) -> Output {
    finish(pasta_cmd(net, pasta, args).spawn().unwrap())
}

#[test]
fn the_command_gets_the_hosts_address_reaches_a_remote_server_and_resolves() {
    let dir = TempDir::new("pasta-cmd-net");
    for (name, pasta) in implementations(&dir) {
        eprintln!("== {name}");
        let net = host_net();
        let _dns = dns_server(&net, "127.0.0.1", &["192.0.2.77"]);
        let _remote = KillOnDrop(
            Command::new("ip")
                .args(["netns", "exec", &net.remote])
                .args(["ncat", "-l", "-k", "9000", "--sh-exec", "echo remote here"])
                .spawn()
                .unwrap(),
        );
        assert!(wait_until(Duration::from_secs(5), || {
            Command::new("ip")
                .args(["netns", "exec", &net.remote])
                .args(["ncat", "--recv-only", "-w", "1", REMOTE_ADDR, "9000"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("remote here"))
        }));
        let script = format!(
            "ip -j -4 addr show; echo; ip -4 route; echo; \
             echo pid $$ uid $(id -u) host $(hostname); \
             ncat --recv-only -w 5 {REMOTE_ADDR} 9000; \
             dig +short +tries=2 +time=2 @169.254.1.1 probe.netferry.test; \
             exit 5"
        );
        let out = run(
            &net,
            &pasta,
            &[
                "--config-net",
                // The remote is the gateway, which else leads to the
                // host's loopback.
                "--no-map-gw",
                "--dns-forward",
                "169.254.1.1",
                "--",
                "sh",
                "-c",
                &script,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(5), "{name}: {out:?}");

        // The host's address and prefix, on an interface named after the
        // host's, and its default route.
        let json = text.lines().next().unwrap_or_default();
        let addrs: serde_json::Value = serde_json::from_str(json).unwrap();
        let tap = addrs
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == net.host_veth.as_str())
            .unwrap_or_else(|| panic!("{name}: no {} inside: {text}", net.host_veth));
        assert_eq!(tap["addr_info"][0]["local"], HOST_ADDR, "{name}");
        assert_eq!(tap["addr_info"][0]["prefixlen"], 24, "{name}");
        assert!(
            text.contains(&format!("default via {REMOTE_ADDR}")),
            "{name}: {text}"
        );
        // Root in its namespaces, PID 1 of its own PID namespace, named
        // pasta-HOST.
        let host = String::from_utf8_lossy(&Command::new("hostname").output().unwrap().stdout)
            .trim()
            .to_string();
        assert!(
            text.contains(&format!("pid 1 uid 0 host pasta-{host}")),
            "{name}: {text}"
        );
        assert!(text.contains("remote here"), "{name}: {text}");
        assert!(text.contains("192.0.2.77"), "{name}: {text}");
    }
}

#[test]
fn the_commands_exit_status_is_pastas() {
    let dir = TempDir::new("pasta-cmd-status");
    for (name, pasta) in implementations(&dir) {
        let net = host_net();
        let out = run(&net, &pasta, &["--", "sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7), "{name}: {out:?}");
        // PID 1 ignores a signal it has no handler for, even SIGTERM from
        // itself: the shell goes on.
        let out = run(&net, &pasta, &["--", "sh", "-c", "kill -TERM $$; exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{name}: {out:?}");
    }
}

#[test]
fn a_command_killed_by_a_signal_gives_128_plus_its_number() {
    let dir = TempDir::new("pasta-cmd-signal");
    for (name, pasta) in implementations(&dir) {
        let net = host_net();
        // A sleep no other test runs, to be found and killed from outside.
        let marker = "86399";
        let child = pasta_cmd(&net, &pasta, &["--", "sleep", marker])
            .spawn()
            .unwrap();
        let mut victim = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                victim = sleeping(marker);
                victim.is_some()
            }),
            "{name}: the command never started"
        );
        let victim = victim.unwrap();
        let st = Command::new("kill")
            .args(["-KILL", &victim])
            .status()
            .unwrap();
        assert!(st.success());
        let out = finish(child);
        assert_eq!(out.status.code(), Some(128 + 9), "{name}: {out:?}");
    }
}

/// The pid of a process `sleep SECONDS`, as the test's root sees it.
fn sleeping(seconds: &str) -> Option<String> {
    let want = format!("sleep\0{seconds}\0");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid = e.ok()?.file_name().into_string().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (cmdline == want.as_bytes()).then_some(pid)
    })
}

#[test]
fn a_missing_command_gives_status_1_and_pastas_words() {
    let dir = TempDir::new("pasta-cmd-missing");
    for (name, pasta) in implementations(&dir) {
        let net = host_net();
        let out = run(&net, &pasta, &["--", "/nonexistent/command"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Failed to start command or shell: No such file or directory"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_port_given_with_t_serves_a_remote_client_of_the_command() {
    let dir = TempDir::new("pasta-cmd-port");
    for (name, pasta) in implementations(&dir) {
        eprintln!("== {name}");
        let net = host_net();
        // The command is the server: it answers one client and ends.
        let child = pasta_cmd(
            &net,
            &pasta,
            &[
                "--config-net",
                "-t",
                "8080",
                "--",
                "ncat",
                "-l",
                "8080",
                "--sh-exec",
                "echo client $NCAT_REMOTE_ADDR",
            ],
        )
        .spawn()
        .unwrap();
        let mut got = String::new();
        let answered = wait_until(Duration::from_secs(15), || {
            let o = Command::new("ip")
                .args(["netns", "exec", &net.remote])
                .args(["ncat", "--recv-only", "-w", "2", HOST_ADDR, "8080"])
                .output()
                .unwrap();
            got = String::from_utf8_lossy(&o.stdout).trim().to_string();
            !got.is_empty()
        });
        let out = finish(child);
        assert!(answered, "{name}: no answer on 8080: {out:?}");
        assert_eq!(got, format!("client {REMOTE_ADDR}"), "{name}");
        assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
    }
}

#[test]
fn netns_only_and_userns_run_the_command_in_an_existing_user_namespace() {
    let dir = TempDir::new("pasta-cmd-userns");
    for (name, pasta) in implementations(&dir) {
        let net = host_net();
        let caller = Caller::new(&net, &dir, name);
        let holder = caller.holder.0.id();
        let theirs = std::fs::read_link(format!("/proc/{holder}/ns/user")).unwrap();
        let theirs = theirs.display().to_string();
        let script = "readlink /proc/self/ns/user; ip -br addr; exit 4";

        // --netns-only, by a caller that is root in its user namespace.
        let mut cmd = caller.cmd(&[]);
        cmd.arg(&pasta)
            .args(["--config-net", "--netns-only", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = finish(cmd.spawn().unwrap());
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{name}: {out:?}");
        assert!(text.starts_with(&theirs), "{name}: {text} (want {theirs})");
        assert!(text.contains(HOST_ADDR), "{name}: {text}");

        // --userns: nobody's pasta joins the caller's user namespace.
        let userns = format!("/proc/{holder}/ns/user");
        let args = [
            "--config-net",
            "--userns",
            &userns,
            "--",
            "sh",
            "-c",
            script,
        ];
        let out = run(&net, &pasta, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{name}: {out:?}");
        assert!(text.starts_with(&theirs), "{name}: {text} (want {theirs})");
        assert!(text.contains(HOST_ADDR), "{name}: {text}");
    }
}
