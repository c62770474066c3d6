//! `netferry setup podman --user --mode slirp4netns` with the real podman
//! 4.3 of this machine: after it, a plain `podman run` (no flag, no
//! CONTAINERS_CONF) gets its network from netferry through the link the
//! setup made; after `--undo`, from the system's slirp4netns again, and
//! the user's configuration is as it was.
//!
//! podman runs as the user `nfpodman` (see tests/podman.rs) with a
//! scratch HOME and runtime directory, inside the test's host namespace
//! and a private mount namespace whose resolv.conf names the test's own
//! DNS server: nothing reaches the real network or the user's real home.

mod common;

use std::fs;
use std::path::Path;

use common::podman::{HomePodman, USER_CONF, text};

/// `netferry setup podman --user ARGS` with the test's copy of netferry.
fn setup(s: &HomePodman, args: &[&str]) -> String {
    let mut all = vec!["setup", "podman", "--user"];
    all.extend_from_slice(args);
    let out = s.as_user(s.bin.to_str().unwrap(), &all);
    assert!(out.status.success(), "netferry {all:?}: {}", text(&out));
    text(&out)
}

#[test]
fn setup_makes_podman_run_netferry_and_undo_puts_slirp4netns_back() {
    if !Path::new("/usr/bin/podman").exists() {
        common::skip_or_fail("podman is not installed");
        return;
    }
    let s = HomePodman::new("podman-setup", String::new());
    let conf = s.dir.path("home/.config/containers/containers.conf");

    let said = setup(&s, &["--mode", "slirp4netns"]);
    assert!(said.contains("mode slirp4netns (as asked)"), "{said}");
    let helper = s.network_of_a_container();
    assert_eq!(helper.exe, s.bin, "podman ran {helper:?}, not netferry");

    let said = setup(&s, &["--undo"]);
    assert!(said.contains("done"), "{said}");
    assert!(!s.dir.path("home/.local/libexec").exists(), "{said}");
    assert!(
        !s.dir
            .path("home/.config/containers/containers.conf.d")
            .exists(),
        "{said}"
    );
    assert_eq!(fs::read_to_string(&conf).unwrap(), USER_CONF);
    let helper = s.network_of_a_container();
    assert_eq!(helper.exe, Path::new("/usr/bin/slirp4netns"));
}
