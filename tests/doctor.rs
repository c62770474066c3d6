//! `netferry doctor` as real users of this machine: one with subordinate
//! ids (`nfpodman`, made by .ci/run) and one without (`nobody`), whose
//! answers about /etc/subuid are known; and podman's line before and
//! after `netferry setup podman` in a scratch home.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::{NOBODY, TempDir};

struct Doctor {
    dir: TempDir,
    bin: PathBuf,
}

impl Doctor {
    fn new() -> Doctor {
        let dir = TempDir::new("doctor");
        // A copy every user can run.
        let bin = dir.path("netferry");
        fs::copy(common::netferry_bin(), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(dir.path("home")).unwrap();
        fs::set_permissions(dir.path("home"), fs::Permissions::from_mode(0o777)).unwrap();
        Doctor { dir, bin }
    }

    fn run_as(&self, uid: u32, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "env",
                "-u",
                "XDG_CONFIG_HOME",
                "-u",
                "XDG_STATE_HOME",
                &format!("HOME={}", self.dir.path("home").display()),
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            ])
            .arg(&self.bin)
            .args(args)
            .output()
            .unwrap()
    }
}

fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", user]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn lines(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_user_without_subordinate_ids_gets_the_problem_and_its_fix() {
    let d = Doctor::new();
    let out = d.run_as(NOBODY, &["doctor"]);
    let said = lines(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "problem  subuids: no subordinate uids for nobody in /etc/subuid; \
             fix: sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 nobody"
        ),
        "{said}"
    );
    // One line per check, each ok or a problem with its fix.
    for l in said.lines() {
        assert!(
            l.starts_with("ok       ") || (l.starts_with("problem  ") && l.contains("; fix: ")),
            "{l}"
        );
    }
    assert!(
        said.contains("ok       tun: /dev/net/tun mode 0666"),
        "{said}"
    );
}

#[test]
fn podman_is_a_problem_until_set_up_for_a_user_with_subordinate_ids() {
    let Some(uid) = uid_of("nfpodman") else {
        common::skip_or_fail("user nfpodman is missing (bash .ci/run creates it)");
        return;
    };
    if !std::path::Path::new("/usr/bin/podman").exists() {
        common::skip_or_fail("podman is not installed");
        return;
    }
    let d = Doctor::new();
    let said = lines(&d.run_as(uid, &["doctor"]));
    assert!(
        said.contains("ok       subuids: nfpodman has 65536 subordinate uids in /etc/subuid"),
        "{said}"
    );
    assert!(
        said.contains(
            "problem  podman: podman is not set up to run netferry; \
             fix: netferry setup podman --user"
        ),
        "{said}"
    );
    let out = d.run_as(uid, &["setup", "podman", "--user", "--mode", "slirp4netns"]);
    assert!(out.status.success(), "{out:?}");
    let said = lines(&d.run_as(uid, &["doctor"]));
    assert!(
        said.contains("ok       podman: runs netferry in slirp4netns mode (--user; "),
        "{said}"
    );
}
