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
use std::ops::Deref;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::podman::{IMAGE, PROBE, Run, USER, UserPodman, assert_probe, text};
use common::wait_until;

const USER_CONF: &str = "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                         events_logger = \"file\"\n";

/// podman as the user with a scratch HOME and runtime directory, and no
/// CONTAINERS_CONF.
struct Session(UserPodman);

impl Deref for Session {
    type Target = UserPodman;
    fn deref(&self) -> &UserPodman {
        &self.0
    }
}

impl Session {
    fn new() -> Session {
        let mut p = UserPodman::new("podman-setup");
        let dir = &p.dir;
        let conf = dir.path("home/.config/containers");
        fs::create_dir_all(&conf).unwrap();
        fs::write(conf.join("containers.conf"), USER_CONF).unwrap();
        fs::create_dir_all(dir.path("run")).unwrap();
        fs::set_permissions(dir.path("run"), fs::Permissions::from_mode(0o700)).unwrap();
        for d in ["home", "run"] {
            let st = Command::new("chown")
                .args(["-R", &format!("{USER}:"), dir.path(d).to_str().unwrap()])
                .status()
                .unwrap();
            assert!(st.success());
        }
        p.env = format!(
            "-u XDG_CONFIG_HOME -u XDG_DATA_HOME -u XDG_STATE_HOME -u CONTAINERS_CONF \
             HOME={home} XDG_RUNTIME_DIR={run} PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            home = dir.path("home").display(),
            run = dir.path("run").display(),
        );
        p.import_image(&p.dir.0, |tar| tar.display().to_string());
        Session(p)
    }

    fn setup(&self, args: &[&str]) -> String {
        let mut all = vec!["setup", "podman", "--user"];
        all.extend_from_slice(args);
        let out = self.as_user(self.bin.to_str().unwrap(), &all);
        assert!(out.status.success(), "netferry {all:?}: {}", text(&out));
        text(&out)
    }

    /// The executables of the user's running `slirp4netns` processes, as
    /// /proc shows them (a link is followed to the file it leads to).
    fn slirp4netns_exes(&self) -> Vec<PathBuf> {
        let mut exes = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let p = e.path();
            let Ok(m) = fs::metadata(&p) else { continue };
            let Ok(cmdline) = fs::read(p.join("cmdline")) else {
                continue;
            };
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if m.uid() == self.uid
                && argv0.ends_with(b"slirp4netns")
                && let Ok(exe) = fs::read_link(p.join("exe"))
            {
                exes.push(exe);
            }
        }
        exes
    }

    /// Run a container in the background and return what runs its
    /// network; the container is removed after `probe` ran in it.
    fn network_of_a_container(&self) -> PathBuf {
        self.ok(&["run", "-d", "--name", "nf-setup", IMAGE, "sleep", "300"]);
        let mut exes = Vec::new();
        assert!(
            wait_until(Duration::from_secs(10), || {
                exes = self.slirp4netns_exes();
                !exes.is_empty()
            }),
            "no slirp4netns process for the container"
        );
        let out = self.ok(&["exec", "nf-setup", "sh", "-c", PROBE]);
        assert_probe(&out, false);
        self.ok(&["rm", "-f", "-t", "0", "nf-setup"]);
        assert_eq!(exes.len(), 1, "{exes:?}");
        exes.remove(0)
    }
}

#[test]
fn setup_makes_podman_run_netferry_and_undo_puts_slirp4netns_back() {
    if !Path::new("/usr/bin/podman").exists() {
        common::skip_or_fail("podman is not installed");
        return;
    }
    let s = Session::new();
    let conf = s.dir.path("home/.config/containers/containers.conf");

    let said = s.setup(&["--mode", "slirp4netns"]);
    assert!(said.contains("mode slirp4netns (as asked)"), "{said}");
    let exe = s.network_of_a_container();
    assert_eq!(exe, s.bin, "podman ran {exe:?}, not netferry");

    let said = s.setup(&["--undo"]);
    assert!(said.contains("done"), "{said}");
    assert!(!s.dir.path("home/.local/libexec").exists(), "{said}");
    assert!(
        !s.dir
            .path("home/.config/containers/containers.conf.d")
            .exists(),
        "{said}"
    );
    assert_eq!(fs::read_to_string(&conf).unwrap(), USER_CONF);
    let exe = s.network_of_a_container();
    assert_eq!(exe, Path::new("/usr/bin/slirp4netns"));
}
