//! The Debian package from packaging/deb.sh (with the test build of
//! netferry in it): the files it holds, and a `dpkg -i` into a scratch
//! root (its own dpkg database, `--root`) after which the installed
//! binary runs, and the helper links in /usr/lib/netferry lead to it.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{TempDir, netferry_bin, run_ok};

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_package_installs_the_binary_man_page_docs_and_helper_links() {
    if !has("dpkg-deb") || !has("dpkg") {
        common::skip_or_fail("dpkg-deb is not installed");
        return;
    }
    let dir = TempDir::new("deb");
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
            &deb,
        ],
    );
    let installed = root.join("usr/bin/netferry");
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(
        String::from_utf8_lossy(&version.stdout)
            .starts_with(&format!("netferry version {}\n", env!("CARGO_PKG_VERSION"))),
        "{version:?}"
    );
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    for link in ["pasta", "slirp4netns"] {
        assert_eq!(
            ino(&root.join("usr/lib/netferry").join(link)),
            ino(&installed)
        );
    }
}
