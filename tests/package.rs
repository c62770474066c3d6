//! The Debian package from packaging/deb.sh (with the test build of
//! netferry in it): the files it holds, and a `dpkg -i` into a scratch
//! root (its own dpkg database, `--root`) after which the installed
//! binary runs, and the helper links in /usr/lib/netferry lead to it;
//! then, with that root's files seen at their real paths, the installed
//! `netferry setup podman --system` makes this machine's podman run the
//! installed netferry through the package's link.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::podman::{HomePodman, text};
use common::{TempDir, netferry_bin, run_ok};

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Build the package into `dir`/out; its path and `dpkg-deb -c` listing.
fn build(dir: &TempDir) -> (String, String) {
    let out = dir.path("out");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/deb.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .env("NETFERRY_BIN", netferry_bin())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "deb.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert!(deb.ends_with(".deb"), "{deb}");

    let listing = String::from_utf8_lossy(
        &Command::new("dpkg-deb")
            .args(["-c", &deb])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    (deb, listing)
}

/// `dpkg -i` the package into `dir`/root, a scratch root with its own
/// dpkg database; returns the root.
fn install(dir: &TempDir, deb: &str) -> PathBuf {
    let root = dir.path("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // libc6 is the host's, not in the scratch database.
    run_ok(
        "dpkg",
        &[
            &format!("--root={}", root.display()),
            "--force-depends",
            "-i",
            deb,
        ],
    );
    root
}

fn ino(p: &Path) -> u64 {
    fs::metadata(p).unwrap().ino()
}

fn dpkg_ready() -> bool {
    if has("dpkg-deb") && has("dpkg") {
        return true;
    }
    common::skip_or_fail("dpkg-deb is not installed");
    false
}

#[test]
fn the_package_installs_the_binary_man_page_docs_and_helper_links() {
    if !dpkg_ready() {
        return;
    }
    let dir = TempDir::new("deb");
    let (deb, listing) = build(&dir);
    for want in [
        "-rwxr-xr-x root/root",
        " ./usr/bin/netferry\n",
        " ./usr/share/man/man1/netferry.1.gz\n",
        " ./usr/lib/netferry/pasta -> ../../bin/netferry\n",
        " ./usr/lib/netferry/slirp4netns -> ../../bin/netferry\n",
        " ./usr/share/doc/netferry/README.md\n",
        " ./usr/share/doc/netferry/copyright\n",
    ] {
        assert!(listing.contains(want), "no {want:?} in:\n{listing}");
    }
    // Never in /usr/bin: Debian's passt and slirp4netns own those names.
    assert!(!listing.contains("./usr/bin/pasta"), "{listing}");
    assert!(!listing.contains("./usr/bin/slirp4netns"), "{listing}");

    let root = install(&dir, &deb);
    let installed = root.join("usr/bin/netferry");
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(
        String::from_utf8_lossy(&version.stdout)
            .starts_with(&format!("netferry version {}\n", env!("CARGO_PKG_VERSION"))),
        "{version:?}"
    );
    for link in ["pasta", "slirp4netns"] {
        assert_eq!(
            ino(&root.join("usr/lib/netferry").join(link)),
            ino(&installed)
        );
    }
}

/// podman as the user in a private mount namespace where the package's
/// files in `root` are at their real paths (/usr/bin/netferry,
/// /usr/lib/netferry), as after a `dpkg -i` on this machine, which
/// itself stays as it is: a read-only overlay on /usr adds the two mount
/// points, the package's files are bound onto them, and scratch copies
/// take /etc/containers, /var/lib/netferry and /usr/local/libexec/netferry,
/// where `setup --system` writes (the last only when the package's links
/// do not lead to it: then the test, not a read-only file system, says
/// so). Binds keep the files' device and inode, so /proc/PID/exe of a
/// process shows which file it runs.
fn podman_with_the_package(dir: &TempDir, root: &Path) -> HomePodman {
    let points = dir.path("points");
    fs::create_dir_all(points.join("usr/bin")).unwrap();
    fs::create_dir_all(points.join("usr/lib/netferry")).unwrap();
    fs::write(points.join("usr/bin/netferry"), "").unwrap();
    fs::create_dir_all(points.join("usr/local/libexec/netferry")).unwrap();
    fs::create_dir_all(points.join("var/lib/netferry")).unwrap();
    fs::create_dir_all(dir.path("state")).unwrap();
    fs::create_dir_all(dir.path("local-helpers")).unwrap();
    run_ok(
        "cp",
        &[
            "-a",
            "/etc/containers",
            dir.path("etc-containers").to_str().unwrap(),
        ],
    );
    let mounts = format!(
        "mount -t overlay overlay -o ro,lowerdir={p}/usr:/usr /usr\n\
         mount -t overlay overlay -o ro,lowerdir={p}/var/lib:/var/lib /var/lib\n\
         mount --bind {r}/usr/bin/netferry /usr/bin/netferry\n\
         mount --bind {r}/usr/lib/netferry /usr/lib/netferry\n\
         mount --bind {local} /usr/local/libexec/netferry\n\
         mount --bind {state} /var/lib/netferry\n\
         mount --bind {etc} /etc/containers",
        p = points.display(),
        r = root.display(),
        local = dir.path("local-helpers").display(),
        state = dir.path("state").display(),
        etc = dir.path("etc-containers").display(),
    );
    HomePodman::new("package-podman", mounts)
}

/// The installed `netferry setup podman --system ARGS`, as root.
fn setup_system(s: &HomePodman, args: &[&str]) -> String {
    let mut all = vec!["setup", "podman", "--system"];
    all.extend_from_slice(args);
    let out = s.as_root("/usr/bin/netferry", &all);
    assert!(out.status.success(), "netferry {all:?}: {}", text(&out));
    text(&out)
}

#[test]
fn after_dpkg_i_setup_system_makes_podman_run_the_installed_netferry_through_its_link() {
    if !dpkg_ready() {
        return;
    }
    if !Path::new("/usr/bin/podman").exists() {
        common::skip_or_fail("podman is not installed");
        return;
    }
    let dir = TempDir::new("deb-podman");
    let (deb, _) = build(&dir);
    let root = install(&dir, &deb);
    let installed = fs::metadata(root.join("usr/bin/netferry")).unwrap();
    let installed = (installed.dev(), installed.ino());
    let s = podman_with_the_package(&dir, &root);
    let drop_in = dir.path("etc-containers/containers.conf.d/netferry.conf");

    let said = setup_system(&s, &["--mode", "slirp4netns"]);
    assert!(
        said.contains("used /usr/lib/netferry/slirp4netns (there already)"),
        "{said}"
    );
    let conf = fs::read_to_string(&drop_in).unwrap();
    assert!(
        conf.contains("helper_binaries_dir = [\"/usr/lib/netferry\","),
        "{conf}"
    );
    let helper = s.network_of_a_container();
    assert_eq!(helper.argv0, "/usr/lib/netferry/slirp4netns", "{helper:?}");
    assert_eq!(
        helper.file, installed,
        "podman ran {helper:?}, not the installed netferry"
    );

    let said = setup_system(&s, &["--undo"]);
    assert!(said.contains("done"), "{said}");
    assert!(!drop_in.exists(), "{said}");
    // The package's links are the package's: --undo leaves them.
    assert_eq!(
        ino(&root.join("usr/lib/netferry/slirp4netns")),
        installed.1,
        "{said}"
    );
    // The system's slirp4netns, seen through the overlay on /usr: its
    // path shows as /bin/slirp4netns and its device as that overlay's (one
    // per mount namespace); the inode is as the overlay gives it to all.
    let helper = s.network_of_a_container();
    assert_eq!(helper.argv0, "/usr/bin/slirp4netns", "{helper:?}");
    let system = s.as_root("stat", &["-L", "-c", "%i", "/usr/bin/slirp4netns"]);
    assert_eq!(
        String::from_utf8_lossy(&system.stdout).trim(),
        helper.file.1.to_string(),
        "{helper:?}"
    );
}
