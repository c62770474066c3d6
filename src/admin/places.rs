//! Where `netferry setup` puts things, per scope: the helper directory
//! holding the `pasta` and `slirp4netns` links, the engines' drop-in
//! files, and the record of what was made. `--user` follows the XDG
//! variables (as podman and systemd do); `--system` the fixed system
//! paths. Nothing here touches the file system beyond reading links.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Engine;

/// The helper directory the Debian package installs, with its links to
/// /usr/bin/netferry; `--system` uses it when it is there.
pub const PACKAGE_HELPERS: &str = "/usr/lib/netferry";
/// `--system`'s helper directory otherwise.
pub const SYSTEM_HELPERS: &str = "/usr/local/libexec/netferry";
/// The names callers look for; each a link to netferry.
pub const LINKS: [&str; 2] = ["pasta", "slirp4netns"];
/// The drop-in file name, in containers.conf.d/ and docker.service.d/.
pub const DROP_IN: &str = "netferry.conf";
/// podman's own helper directories (containers.conf's default), kept
/// after ours so that podman still finds netavark, conmon and the rest.
pub const PODMAN_HELPER_DIRS: [&str; 4] = [
    "/usr/local/libexec/podman",
    "/usr/local/lib/podman",
    "/usr/libexec/podman",
    "/usr/lib/podman",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    System,
}

impl Scope {
    pub fn flag(self) -> &'static str {
        match self {
            Scope::User => "--user",
            Scope::System => "--system",
        }
    }
}

/// The paths of one scope.
#[derive(Debug, Clone)]
pub struct Places {
    pub scope: Scope,
    pub helpers: PathBuf,
    /// containers.conf.d/netferry.conf
    pub podman_drop_in: PathBuf,
    /// systemd's user unit drop-in for docker.service
    pub docker_drop_in: PathBuf,
    /// Where dockerd-rootless-setuptool.sh writes docker.service, whose
    /// `Environment=PATH=` the drop-in extends.
    pub docker_unit: PathBuf,
    /// The directory holding each engine's record.
    pub state: PathBuf,
}

impl Places {
    /// The places for `scope`; `exe` is the netferry the links lead to.
    pub fn new(scope: Scope, exe: &Path) -> anyhow::Result<Places> {
        match scope {
            Scope::User => {
                let home = var_path("HOME")
                    .context("HOME is not set: --user needs it to find ~/.config and ~/.local")?;
                let config = var_path("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
                let state = var_path("XDG_STATE_HOME").unwrap_or_else(|| home.join(".local/state"));
                let units = config.join("systemd/user");
                Ok(Places {
                    scope,
                    helpers: home.join(".local/libexec/netferry"),
                    podman_drop_in: config.join("containers/containers.conf.d").join(DROP_IN),
                    docker_drop_in: units.join("docker.service.d").join(DROP_IN),
                    docker_unit: units.join("docker.service"),
                    state: state.join("netferry"),
                })
            }
            Scope::System => {
                let helpers = if links_lead_to(Path::new(PACKAGE_HELPERS), exe) {
                    PACKAGE_HELPERS
                } else {
                    SYSTEM_HELPERS
                };
                Ok(Places {
                    scope,
                    helpers: PathBuf::from(helpers),
                    podman_drop_in: Path::new("/etc/containers/containers.conf.d").join(DROP_IN),
                    docker_drop_in: Path::new("/etc/systemd/user/docker.service.d").join(DROP_IN),
                    docker_unit: PathBuf::from("/etc/systemd/user/docker.service"),
                    state: PathBuf::from("/var/lib/netferry"),
                })
            }
        }
    }

    /// The record of `engine`'s setup in this scope.
    pub fn record(&self, engine: Engine) -> PathBuf {
        self.state.join(format!("setup-{}.json", engine.name()))
    }

    pub fn drop_in(&self, engine: Engine) -> &Path {
        match engine {
            Engine::Podman => &self.podman_drop_in,
            Engine::Docker => &self.docker_drop_in,
        }
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.helpers.join(name)
    }
}

/// An absolute path from the environment; unset, empty or relative
/// values count as unset, as the XDG base directory rules say.
fn var_path(name: &str) -> Option<PathBuf> {
    let v = PathBuf::from(std::env::var_os(name)?);
    v.is_absolute().then_some(v)
}

/// Whether every link of `dir` leads to the same file as `exe`.
pub fn links_lead_to(dir: &Path, exe: &Path) -> bool {
    LINKS.iter().all(|name| same_file(&dir.join(name), exe))
}

/// Whether `a` and `b` (following links) are one file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The running netferry, as the links should name it.
pub fn current_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the netferry binary's own path")?;
    if !exe.is_absolute() {
        bail!(
            "the netferry binary's path {} is not absolute",
            exe.display()
        );
    }
    Ok(exe)
}
