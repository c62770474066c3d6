//! `netferry setup podman|docker`: what to write for each engine, and the
//! report of what was done and how to undo it.
//!
//! podman: a helper directory with `pasta` and `slirp4netns` links to
//! netferry, and a containers.conf.d drop-in (read by podman 4 and later)
//! that puts that directory first in `helper_binaries_dir` (where podman
//! looks for pasta), and for slirp4netns mode names the link as
//! `network_cmd_path`. The mode follows podman's version: podman 6 has
//! only pasta, 5 defaults to it, 4 to slirp4netns.
//!
//! Docker rootless: dockerd-rootless.sh starts rootlesskit, which runs
//! `slirp4netns` or `pasta` found on `PATH`; a systemd drop-in for the
//! user unit docker.service puts the helper directory first in that
//! `PATH` and names the network.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::places::{self, LINKS, PODMAN_HELPER_DIRS, Places, Scope};
use super::record::{self, Made, Maker, Record};
use super::{Engine, Mode, SetupArgs};

/// The PATH a systemd user manager gives its services when neither the
/// unit nor our environment says otherwise.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// podman's version, as `podman --version` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub text: String,
    pub major: u32,
    pub minor: u32,
}

impl Version {
    /// From "podman version 4.3.1" (or any line ending in the version).
    pub fn parse(line: &str) -> Option<Version> {
        let text = line.split_whitespace().last()?.to_string();
        let mut parts = text.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(Version { text, major, minor })
    }
}

/// The mode chosen, and why (for the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub mode: Mode,
    pub why: String,
}

/// podman's mode: the one asked for if this podman has it, else podman's
/// own default.
pub fn choose_podman_mode(
    asked: Option<Mode>,
    version: Option<&Version>,
) -> anyhow::Result<Choice> {
    let Some(v) = version else {
        return match asked {
            Some(mode) => Ok(Choice {
                mode,
                why: "as asked; podman was not found, so its version is unknown".into(),
            }),
            None => bail!(
                "cannot run `podman --version`: install podman first, or name the mode \
                 with --mode pasta|slirp4netns"
            ),
        };
    };
    let p = &v.text;
    let (mode, why) = match (v.major, v.minor, asked) {
        (0..=3, _, _) => bail!("podman {p} is too old: netferry setup supports podman 4, 5 and 6"),
        (6.., _, Some(Mode::Slirp4netns)) => {
            bail!("podman {p} has no slirp4netns (podman 6 removed it); use --mode pasta")
        }
        (6.., _, _) => (Mode::Pasta, format!("podman {p}'s only rootless network")),
        (4, 0..=3, Some(Mode::Pasta)) => {
            bail!("podman {p} cannot run pasta (podman 4.4 added it); use --mode slirp4netns")
        }
        (_, _, Some(mode)) => (mode, "as asked".to_string()),
        (5, _, None) => (
            Mode::Pasta,
            format!("podman {p}'s default rootless network"),
        ),
        (_, _, None) => (
            Mode::Slirp4netns,
            format!("podman {p}'s default rootless network"),
        ),
    };
    Ok(Choice { mode, why })
}

/// `podman --version`, if podman runs.
fn podman_version() -> Option<Version> {
    let out = Command::new("podman").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Version::parse(String::from_utf8_lossy(&out.stdout).trim())
}

/// A TOML basic string (paths need only `"` and `\` escaped).
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn utf8(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| {
        format!(
            "{} is not valid UTF-8, which config files need",
            p.display()
        )
    })
}

/// The containers.conf drop-in.
pub fn podman_drop_in(
    helpers: &Path,
    choice: &Choice,
    version: Option<&Version>,
    header: &str,
) -> anyhow::Result<String> {
    let dir = utf8(helpers)?;
    let dirs: Vec<String> = std::iter::once(dir)
        .chain(PODMAN_HELPER_DIRS)
        .map(toml_str)
        .collect();
    let mut text = format!(
        "{header}[engine]\n# podman finds pasta here first; its own helpers after.\n\
         helper_binaries_dir = [{}]\n",
        dirs.join(", ")
    );
    if choice.mode == Mode::Slirp4netns {
        let link = utf8(&helpers.join("slirp4netns"))?.to_string();
        text.push_str(&format!("network_cmd_path = {}\n", toml_str(&link)));
    }
    // podman 4 before 4.4 knows no such key (and warns about unknown
    // ones); its rootless default is slirp4netns anyway.
    let knows_default_cmd = version.is_none_or(|v| v.major >= 5 || choice.mode == Mode::Pasta);
    if knows_default_cmd {
        text.push_str(&format!(
            "\n[network]\ndefault_rootless_network_cmd = {}\n",
            toml_str(choice.mode.name())
        ));
    }
    Ok(text)
}

/// The `PATH` that docker.service gives dockerd-rootless.sh: its unit's
/// `Environment=PATH=...` (as dockerd-rootless-setuptool.sh writes it),
/// else ours, else systemd's default. The second value says where it
/// came from.
pub fn docker_base_path(unit: &Path) -> (String, String) {
    if let Ok(text) = std::fs::read_to_string(unit) {
        let found = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Environment="))
            .flat_map(unit_words)
            .filter_map(|w| w.strip_prefix("PATH=").map(str::to_string))
            .next_back();
        if let Some(path) = found {
            return (path, format!("the PATH of {}", unit.display()));
        }
    }
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => (p, "this shell's PATH".into()),
        _ => (DEFAULT_PATH.into(), "systemd's default PATH".into()),
    }
}

/// The words of a systemd `Environment=` value: space-separated, each
/// optionally in double quotes.
fn unit_words(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The docker.service drop-in.
pub fn docker_drop_in(
    helpers: &Path,
    base: &str,
    mode: Mode,
    header: &str,
) -> anyhow::Result<String> {
    let path = format!("{}:{base}", utf8(helpers)?);
    if path.contains(['"', '\\', '\n']) {
        bail!("the PATH {path:?} holds characters a systemd unit cannot take as they are");
    }
    // `%` starts a systemd specifier.
    let path = path.replace('%', "%%");
    Ok(format!(
        "{header}[Service]\n\
         # dockerd-rootless.sh and rootlesskit find {} here first.\n\
         Environment=\"PATH={path}\"\n\
         Environment=DOCKERD_ROOTLESS_ROOTLESSKIT_NET={}\n",
        mode.name(),
        mode.name()
    ))
}

/// `netferry setup ...`: returns the report to print.
pub fn run(args: &SetupArgs) -> anyhow::Result<String> {
    let scope = if args.system {
        Scope::System
    } else {
        Scope::User
    };
    let engine = args.engine;
    let exe = places::current_exe()?;
    let places = Places::new(scope, &exe)?;
    let command = format!("netferry setup {} {}", engine.name(), scope.flag());
    let record_path = places.record(engine);
    if args.undo {
        let undo = format!("{command} --undo");
        let lines = record::undo(&record_path, &places.record(engine.other()), &undo)?;
        let mut report = format!("{undo}: done\n");
        for l in lines {
            report.push_str(&format!("  {l}\n"));
        }
        report.push_str(&restart_hint(engine, scope));
        return Ok(report);
    }
    if record_path.exists() {
        bail!(
            "{} is set up already (record {}); run `{command} --undo` first",
            engine.name(),
            record_path.display()
        );
    }

    let version = match engine {
        Engine::Podman => podman_version(),
        Engine::Docker => None,
    };
    let (mode, summary, mut notes) = match engine {
        Engine::Podman => {
            let choice = choose_podman_mode(args.mode, version.as_ref())?;
            let summary = format!("mode {} ({})", choice.mode.name(), choice.why);
            let mut notes = Vec::new();
            if std::env::var_os("CONTAINERS_CONF").is_some() {
                notes.push(
                    "CONTAINERS_CONF is set: podman then reads only that file, not this \
                     drop-in; unset it"
                        .to_string(),
                );
            }
            (choice, summary, notes)
        }
        Engine::Docker => {
            let mode = args.mode.unwrap_or(Mode::Slirp4netns);
            let why = match (args.mode, mode) {
                (None, _) => "the default: rootlesskit 1 and 2 both run it",
                (_, Mode::Pasta) => "as asked; needs Docker 25 or later (rootlesskit 2)",
                _ => "as asked",
            };
            let choice = Choice {
                mode,
                why: why.into(),
            };
            let summary = format!("mode {} ({})", mode.name(), choice.why);
            (choice, summary, Vec::new())
        }
    };
    let header =
        format!("# Made by `{command}`: {summary}.\n# `{command} --undo` removes this file.\n");
    let drop_in_text = match engine {
        Engine::Podman => podman_drop_in(&places.helpers, &mode, version.as_ref(), &header)?,
        Engine::Docker => {
            let (base, from) = docker_base_path(&places.docker_unit);
            notes.push(format!("PATH after the helper directory: {from}"));
            if !places.docker_unit.exists() {
                notes.push(format!(
                    "{} is not there yet: the drop-in applies once \
                     `dockerd-rootless-setuptool.sh install` makes it",
                    places.docker_unit.display()
                ));
            }
            docker_drop_in(&places.helpers, &base, mode.mode, &header)?
        }
    };

    let mut maker = Maker {
        record: Record {
            engine: engine.name().into(),
            mode: mode.mode.name().into(),
            ..Record::default()
        },
    };
    let made = (|| -> anyhow::Result<()> {
        maker.dir_all(&places.helpers)?;
        for name in LINKS {
            maker.link(&places.link(name), &exe)?;
        }
        maker.file(places.drop_in(engine), &drop_in_text)?;
        maker.dir_all(&places.state)?;
        maker.record.save(&record_path)
    })();
    if let Err(e) = made {
        maker.abandon();
        return Err(e);
    }

    let mut report = format!("{command}: {summary}\n");
    for m in &maker.record.made {
        match m {
            Made::Dir { path } => report.push_str(&format!("  made {}/\n", path.display())),
            Made::Link { path, target } => report.push_str(&format!(
                "  made {} -> {}\n",
                path.display(),
                target.display()
            )),
            Made::File { path, text } => {
                report.push_str(&format!("  made {}:\n", path.display()));
                for l in text.lines() {
                    report.push_str(&format!("    {l}\n"));
                }
            }
        }
    }
    for u in &maker.record.uses {
        report.push_str(&format!("  used {} (there already)\n", u.display()));
    }
    report.push_str(&format!("  record: {}\n", record_path.display()));
    for n in notes {
        report.push_str(&format!("  note: {n}\n"));
    }
    report.push_str(&restart_hint(engine, scope));
    report.push_str(&format!("Undo: {command} --undo\n"));
    Ok(report)
}

/// What makes the change take effect.
fn restart_hint(engine: Engine, scope: Scope) -> String {
    match (engine, scope) {
        (Engine::Podman, _) => "New containers get it; running ones keep their network.\n".into(),
        (Engine::Docker, Scope::User) => {
            "Apply: systemctl --user daemon-reload && systemctl --user restart docker\n".into()
        }
        (Engine::Docker, Scope::System) => "Apply, as each user of Docker rootless: \
             systemctl --user daemon-reload && systemctl --user restart docker\n"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn podman_versions_parse() {
        assert_eq!(v("podman version 4.3.1").major, 4);
        assert_eq!(v("podman version 5.4.2").minor, 4);
        assert_eq!(v("podman version 6.0.0-dev").major, 6);
        assert!(Version::parse("podman version x").is_none());
    }

    #[test]
    fn the_mode_follows_podmans_version_unless_asked() {
        let mode = |asked, ver: &str| choose_podman_mode(asked, Some(&v(ver))).map(|c| c.mode);
        assert_eq!(mode(None, "4.3.1").unwrap(), Mode::Slirp4netns);
        assert_eq!(mode(None, "5.4.2").unwrap(), Mode::Pasta);
        assert_eq!(mode(None, "6.0.0").unwrap(), Mode::Pasta);
        assert_eq!(
            mode(Some(Mode::Slirp4netns), "5.4.2").unwrap(),
            Mode::Slirp4netns
        );
        assert_eq!(mode(Some(Mode::Pasta), "4.9.3").unwrap(), Mode::Pasta);
        assert!(mode(Some(Mode::Slirp4netns), "6.1.0").is_err());
        assert!(mode(Some(Mode::Pasta), "4.3.1").is_err());
        assert!(mode(None, "3.4.4").is_err());
        assert!(choose_podman_mode(None, None).is_err());
    }

    #[test]
    fn the_docker_unit_path_is_read_as_systemd_reads_it() {
        assert_eq!(unit_words("\"PATH=/a b:/c\" X=1"), ["PATH=/a b:/c", "X=1"]);
        assert_eq!(unit_words("PATH=/usr/bin:/bin"), ["PATH=/usr/bin:/bin"]);
    }
}
