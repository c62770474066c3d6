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
fn unbuilt_features_are_refused_clearly() {
    let o = run(&["--enable-ipv6", "1", "tap0"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "--enable-ipv6 is not supported yet by this netferry version\n"
    );
}

#[test]
fn missing_process_is_a_setup_error_naming_the_namespace() {
    // PIDs above pid_max never exist.
    let o = run(&["99999999", "tap0"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("/proc/99999999/ns/"), "{err}");
    assert!(err.contains("cannot get the tap device"), "{err}");
}

#[test]
fn man_page_is_generated_from_the_flags() {
    let mut rendered = Vec::new();
    clap_mangen::Man::new(netferry::cli::command())
        .render(&mut rendered)
        .unwrap();
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
