//! `netferry doctor`: what rootless networking needs on this machine,
//! checked one line each, with the fix for each problem. It reads files
//! and sysctls only; it changes nothing and starts nothing.

use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;

use nix::unistd::{Uid, User};

use super::Engine;
use super::places::{self, Places, Scope};
use super::record::Record;

const TUN: &str = "/dev/net/tun";
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// What one container image's user namespace usually needs.
const SUBIDS_WANTED: u64 = 65536;
/// A free range to suggest when a user has none.
const SUGGESTED_RANGE: &str = "100000-165535";

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub said: String,
    /// What to do; `None` when all is well.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, said: impl Into<String>) -> Check {
        Check {
            name,
            said: said.into(),
            fix: None,
        }
    }

    fn problem(name: &'static str, said: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            said: said.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.fix.is_none()
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fix {
            None => write!(f, "ok       {}: {}", self.name, self.said),
            Some(fix) => write!(f, "problem  {}: {}; fix: {fix}", self.name, self.said),
        }
    }
}

/// Every check, in the order printed.
pub fn run() -> Vec<Check> {
    let uid = Uid::current();
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    vec![
        tun(),
        subids(uid, &name, "/etc/subuid", "uids"),
        subids(uid, &name, "/etc/subgid", "gids"),
        id_mappers(),
        user_namespaces(),
        apparmor(),
        resolv_conf(),
        engine(Engine::Podman, "podman"),
        engine(Engine::Docker, "dockerd-rootless.sh"),
    ]
}

fn tun() -> Check {
    let fix = format!("sudo chmod 0666 {TUN} (and `sudo modprobe tun` if it is missing)");
    match fs::metadata(TUN) {
        Err(e) => Check::problem("tun", format!("{TUN}: {e}"), fix),
        Ok(m) if !m.file_type().is_char_device() => {
            Check::problem("tun", format!("{TUN} is not a character device"), fix)
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o666 == 0o666 {
                Check::ok("tun", format!("{TUN} mode {mode:04o}"))
            } else {
                Check::problem(
                    "tun",
                    format!("{TUN} mode {mode:04o}: users cannot open it"),
                    fix,
                )
            }
        }
    }
}

/// How many subordinate ids `/etc/subuid`-style `text` gives the user.
pub fn subid_count(text: &str, uid: Uid, name: &str) -> u64 {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, _start, count) = (f.next()?, f.next()?, f.next()?);
            (who == name || who == uid).then(|| count.parse::<u64>().ok())?
        })
        .sum()
}

fn subids(uid: Uid, name: &str, file: &str, what: &'static str) -> Check {
    let check = if what == "uids" { "subuids" } else { "subgids" };
    if uid.is_root() {
        return Check::ok(
            check,
            "root needs none (run doctor as the user who runs rootless containers)",
        );
    }
    let fix = format!(
        "sudo usermod --add-subuids {SUGGESTED_RANGE} --add-subgids {SUGGESTED_RANGE} {name} \
         (a range no other user has)"
    );
    match fs::read_to_string(file) {
        Err(e) => Check::problem(check, format!("{file}: {e}"), fix),
        Ok(text) => match subid_count(&text, uid, name) {
            0 => Check::problem(
                check,
                format!("no subordinate {what} for {name} in {file}"),
                fix,
            ),
            n if n < SUBIDS_WANTED => Check::problem(
                check,
                format!("{name} has {n} subordinate {what} in {file}; images need {SUBIDS_WANTED}"),
                fix,
            ),
            n => Check::ok(
                check,
                format!("{name} has {n} subordinate {what} in {file}"),
            ),
        },
    }
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn id_mappers() -> Check {
    let missing: Vec<&str> = ["newuidmap", "newgidmap"]
        .into_iter()
        .filter(|n| on_path(n).is_none())
        .collect();
    if missing.is_empty() {
        Check::ok("uidmap", "newuidmap and newgidmap are installed")
    } else {
        Check::problem(
            "uidmap",
            format!("{} not found on PATH", missing.join(" and ")),
            "sudo apt install uidmap (shadow-utils' newuidmap elsewhere)",
        )
    }
}

fn sysctl(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn user_namespaces() -> Check {
    const CLONE: &str = "/proc/sys/kernel/unprivileged_userns_clone";
    const MAX: &str = "/proc/sys/user/max_user_namespaces";
    if sysctl(CLONE).as_deref() == Some("0") {
        return Check::problem(
            "userns",
            "kernel.unprivileged_userns_clone = 0: users cannot make user namespaces",
            "sudo sysctl -w kernel.unprivileged_userns_clone=1, and the same line in \
             /etc/sysctl.d/90-userns.conf to keep it",
        );
    }
    match sysctl(MAX) {
        Some(n) if n == "0" => Check::problem(
            "userns",
            "user.max_user_namespaces = 0: no user namespaces allowed",
            "sudo sysctl -w user.max_user_namespaces=28633, and the same line in \
             /etc/sysctl.d/90-userns.conf to keep it",
        ),
        Some(n) => Check::ok(
            "userns",
            format!("allowed (user.max_user_namespaces = {n})"),
        ),
        None => Check::problem(
            "userns",
            format!("{MAX} is missing: this kernel has no user namespaces"),
            "a kernel built with CONFIG_USER_NS",
        ),
    }
}

fn apparmor() -> Check {
    const RESTRICT: &str = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns";
    match sysctl(RESTRICT).as_deref() {
        None => Check::ok(
            "apparmor",
            "no AppArmor restriction on user namespaces here",
        ),
        Some("0") => Check::ok(
            "apparmor",
            "kernel.apparmor_restrict_unprivileged_userns = 0",
        ),
        Some(v) => Check::problem(
            "apparmor",
            format!(
                "kernel.apparmor_restrict_unprivileged_userns = {v}: only programs with an \
                 AppArmor profile allowing `userns` may make user namespaces"
            ),
            "an AppArmor profile with `userns,` for podman, rootlesskit and netferry \
             (see /etc/apparmor.d/), or sudo sysctl -w \
             kernel.apparmor_restrict_unprivileged_userns=0",
        ),
    }
}

fn resolv_conf() -> Check {
    let fix = format!("give {RESOLV_CONF} a `nameserver ADDRESS` line (or fix its link)");
    match fs::read_to_string(RESOLV_CONF) {
        Err(e) => Check::problem("dns", format!("cannot read {RESOLV_CONF}: {e}"), fix),
        Ok(text) => match crate::resolv::first_nameserver(&text) {
            Some(addr) => Check::ok("dns", format!("{RESOLV_CONF} names {addr}")),
            None => Check::problem("dns", format!("{RESOLV_CONF} names no nameserver"), fix),
        },
    }
}

/// Whether `engine` (found as `program` on PATH) is set up to run netferry.
fn engine(engine: Engine, program: &str) -> Check {
    let name = engine.name();
    if on_path(program).is_none() {
        return Check::ok(
            name,
            format!("{program} is not installed (nothing to set up)"),
        );
    }
    let exe = places::current_exe().unwrap_or_default();
    for scope in [Scope::User, Scope::System] {
        let Ok(places) = Places::new(scope, &exe) else {
            continue;
        };
        let record = places.record(engine);
        if let Ok(Some(r)) = Record::load(&record) {
            let drop_in = places.drop_in(engine);
            if drop_in.exists() {
                return Check::ok(
                    name,
                    format!(
                        "runs netferry in {} mode ({}; {})",
                        r.mode,
                        scope.flag(),
                        drop_in.display()
                    ),
                );
            }
            return Check::problem(
                name,
                format!(
                    "{} is gone, though {} says it was made",
                    drop_in.display(),
                    record.display()
                ),
                format!(
                    "netferry setup {name} {f} --undo (it reports what changed), then \
                     netferry setup {name} {f}",
                    f = scope.flag()
                ),
            );
        }
    }
    Check::problem(
        name,
        format!("{name} is not set up to run netferry"),
        format!("netferry setup {name} --user (or --system, as root, for every user)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ids_count_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:65536\nbad line\n";
        assert_eq!(subid_count(text, Uid::from_raw(1001), "alice"), 66536);
        assert_eq!(subid_count(text, Uid::from_raw(1002), "carol"), 0);
    }
}
