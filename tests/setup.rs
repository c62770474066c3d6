//! `netferry setup podman|docker` against a scratch home: what it writes,
//! that `--undo` puts the tree back byte for byte, and when each refuses.
//! podman's version comes from a stand-in `podman` on PATH that only
//! prints `podman --version` (tests/podman_setup.rs runs the real one).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TempDir, netferry_bin};

/// A scratch HOME with a user's own files in it, and a `podman` that
/// says `version`.
struct Home {
    dir: TempDir,
}

impl Home {
    fn new(podman_version: &str) -> Home {
        let dir = TempDir::new("setup");
        let home = Home { dir };
        let bin = home.dir.path("bin");
        fs::create_dir(&bin).unwrap();
        let podman = bin.join("podman");
        fs::write(
            &podman,
            format!("#!/bin/sh\necho 'podman version {podman_version}'\n"),
        )
        .unwrap();
        fs::set_permissions(&podman, fs::Permissions::from_mode(0o755)).unwrap();
        // What a user already has: setup must leave it as it is.
        home.write(
            ".config/containers/containers.conf",
            "[engine]\ncgroup_manager = \"cgroupfs\"\n",
        );
        home.write(".local/bin/tool", "#!/bin/sh\n");
        home
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path("home").join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn netferry(&self, args: &[&str]) -> Output {
        Command::new(netferry_bin())
            .args(args)
            .env_clear()
            .env("HOME", self.path(""))
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.dir.path("bin").display()),
            )
            .output()
            .unwrap()
    }

    /// Run and insist on `ok`; returns stdout and stderr.
    fn expect(&self, args: &[&str], ok: bool) -> String {
        let out = self.netferry(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), ok, "netferry {args:?}: {text}");
        if !ok {
            assert_eq!(out.status.code(), Some(1), "{text}");
        }
        text
    }

    /// Every file, link and directory under HOME: kind, mode and content.
    fn tree(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(&self.path(""), &self.path(""), &mut out);
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let mode = m.permissions().mode();
        if m.file_type().is_symlink() {
            out.insert(rel, format!("link -> {:?}", fs::read_link(&p).unwrap()));
        } else if m.is_dir() {
            out.insert(rel, format!("dir {mode:o}"));
            walk(root, &p, out);
        } else {
            out.insert(rel, format!("file {mode:o} {:?}", fs::read(&p).unwrap()));
        }
    }
}

const DROP_IN: &str = ".config/containers/containers.conf.d/netferry.conf";
const HELPERS: &str = ".local/libexec/netferry";

#[test]
fn podman_setup_makes_links_and_a_drop_in_and_undo_restores_the_tree_byte_for_byte() {
    let home = Home::new("4.3.1");
    let before = home.tree();
    let said = home.expect(&["setup", "podman", "--user"], true);
    assert!(
        said.contains("mode slirp4netns (podman 4.3.1's default rootless network)"),
        "{said}"
    );
    assert!(
        said.contains("Undo: netferry setup podman --user --undo"),
        "{said}"
    );
    for link in ["pasta", "slirp4netns"] {
        let p = home.path(HELPERS).join(link);
        assert_eq!(fs::read_link(&p).unwrap(), Path::new(netferry_bin()));
    }
    let conf = fs::read_to_string(home.path(DROP_IN)).unwrap();
    let helpers = home.path(HELPERS);
    assert!(
        conf.contains(&format!(
            "helper_binaries_dir = [\"{}\", \"/usr/local/libexec/podman\", \
             \"/usr/local/lib/podman\", \"/usr/libexec/podman\", \"/usr/lib/podman\"]",
            helpers.display()
        )),
        "{conf}"
    );
    assert!(
        conf.contains(&format!(
            "network_cmd_path = \"{}/slirp4netns\"",
            helpers.display()
        )),
        "{conf}"
    );
    // podman 4.3 knows no default_rootless_network_cmd.
    assert!(!conf.contains("default_rootless_network_cmd"), "{conf}");
    assert_eq!(
        fs::read_to_string(home.path(".config/containers/containers.conf")).unwrap(),
        "[engine]\ncgroup_manager = \"cgroupfs\"\n"
    );

    let said = home.expect(&["setup", "podman", "--user"], false);
    assert!(said.contains("set up already"), "{said}");

    let said = home.expect(&["setup", "podman", "--user", "--undo"], true);
    assert!(
        said.contains(&format!("removed {}", home.path(DROP_IN).display())),
        "{said}"
    );
    assert_eq!(home.tree(), before);
}

#[test]
fn undo_is_refused_when_nothing_was_set_up() {
    let home = Home::new("5.4.2");
    let before = home.tree();
    let said = home.expect(&["setup", "podman", "--user", "--undo"], false);
    assert!(said.contains("nothing to undo"), "{said}");
    assert!(said.contains("setup-podman.json"), "{said}");
    assert_eq!(home.tree(), before);
}

#[test]
fn undo_is_refused_and_changes_nothing_when_a_made_file_was_edited() {
    let home = Home::new("5.4.2");
    home.expect(&["setup", "podman", "--user"], true);
    let mut conf = fs::read_to_string(home.path(DROP_IN)).unwrap();
    conf.push_str("# mine\n");
    fs::write(home.path(DROP_IN), &conf).unwrap();
    let edited = home.tree();
    let said = home.expect(&["setup", "podman", "--user", "--undo"], false);
    assert!(said.contains("was edited since"), "{said}");
    assert!(said.contains("not undoing anything"), "{said}");
    assert_eq!(home.tree(), edited);
}

#[test]
fn podman_5_and_6_get_pasta_and_6_refuses_slirp4netns() {
    for version in ["5.4.2", "6.0.0"] {
        let home = Home::new(version);
        let said = home.expect(&["setup", "podman"], true);
        assert!(said.contains("mode pasta (podman"), "{said}");
        let conf = fs::read_to_string(home.path(DROP_IN)).unwrap();
        assert!(
            conf.contains("[network]\ndefault_rootless_network_cmd = \"pasta\"\n"),
            "{conf}"
        );
        assert!(!conf.contains("network_cmd_path"), "{conf}");
    }
    let home = Home::new("6.0.0");
    let before = home.tree();
    let said = home.expect(&["setup", "podman", "--mode", "slirp4netns"], false);
    assert!(said.contains("has no slirp4netns"), "{said}");
    assert_eq!(home.tree(), before);

    // podman 5 in slirp4netns mode: the link as network_cmd_path, and
    // slirp4netns named as the rootless network.
    let home = Home::new("5.4.2");
    home.expect(&["setup", "podman", "--mode", "slirp4netns"], true);
    let conf = fs::read_to_string(home.path(DROP_IN)).unwrap();
    assert!(conf.contains("network_cmd_path = "), "{conf}");
    assert!(
        conf.contains("default_rootless_network_cmd = \"slirp4netns\""),
        "{conf}"
    );
}

#[test]
fn setup_replaces_no_file_and_leaves_nothing_behind_when_it_refuses() {
    let home = Home::new("4.3.1");
    home.write(DROP_IN, "# someone else's\n");
    let before = home.tree();
    let said = home.expect(&["setup", "podman", "--user"], false);
    assert!(said.contains("exists already"), "{said}");
    assert_eq!(home.tree(), before);
}

#[test]
fn docker_setup_extends_the_units_path_and_shares_the_links_with_podman() {
    let home = Home::new("4.3.1");
    // As dockerd-rootless-setuptool.sh writes it.
    home.write(
        ".config/systemd/user/docker.service",
        "[Service]\nEnvironment=PATH=/opt/bin:/usr/bin:/bin\n\
         ExecStart=/usr/bin/dockerd-rootless.sh\n",
    );
    let before = home.tree();
    home.expect(&["setup", "podman"], true);
    let said = home.expect(&["setup", "docker", "--user"], true);
    assert!(said.contains("used "), "the links are podman's: {said}");
    let unit = fs::read_to_string(home.path(".config/systemd/user/docker.service.d/netferry.conf"))
        .unwrap();
    assert!(
        unit.contains(&format!(
            "[Service]\n# dockerd-rootless.sh and rootlesskit find slirp4netns here first.\n\
             Environment=\"PATH={}:/opt/bin:/usr/bin:/bin\"\n\
             Environment=DOCKERD_ROOTLESS_ROOTLESSKIT_NET=slirp4netns\n",
            home.path(HELPERS).display()
        )),
        "{unit}"
    );

    // podman's undo leaves what Docker's setup uses...
    let said = home.expect(&["setup", "podman", "--undo"], true);
    assert!(said.contains("the docker setup uses it"), "{said}");
    assert!(fs::read_link(home.path(HELPERS).join("slirp4netns")).is_ok());
    assert!(!home.path(DROP_IN).exists());
    // ...and Docker's removes it.
    home.expect(&["setup", "docker", "--undo"], true);
    assert_eq!(home.tree(), before);
}
