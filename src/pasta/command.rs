//! `pasta [OPTIONS] [CMD [ARGS...]]`: with neither `--netns` nor a PID,
//! pasta makes new namespaces, serves their network and runs CMD (or the
//! user's login shell) in them, in the foreground, and exits with its
//! status.
//!
//! As pasta does: the command is PID 1 of new user (unless `--userns` or
//! `--netns-only`), network, mount, PID, UTS and IPC namespaces, root
//! inside (mapped to the caller), with its own /proc, the hostname
//! `pasta-HOST` and ping allowed for root; the network is configured as
//! the options say (`--config-net` is not implied: without it the tap is
//! left down for DHCP, NDP and DHCPv6). Failures of pasta's own exit 1;
//! a command that cannot be executed exits 1 with pasta's words; death by
//! signal N gives 128+N. The machinery is `netferry run`'s
//! ([`crate::run::serve_command`]); this module only says how pasta wants
//! it.

use std::ffi::OsString;

use anyhow::bail;

use super::cli::{PastaArgs, UserNs};
use crate::setup;

/// pasta's status for its own failures.
const STATUS_FAILED: i32 = 1;
/// The hostname's prefix inside.
const HOSTNAME_PREFIX: &str = "pasta-";
/// The longest hostname Linux takes (HOST_NAME_MAX).
const HOST_NAME_MAX: usize = 64;
/// The shell when `$SHELL` is unset.
const DEFAULT_SHELL: &str = "/bin/sh";

/// Run `argv` (the login shell when empty) in new namespaces on the
/// network `args` describes; the status to exit with.
pub fn run(args: &PastaArgs, argv: &[OsString], userns: &UserNs) -> anyhow::Result<i32> {
    // (The options are checked once the child exists: a bad one ends it
    // at once.)
    let mut cmd = Vec::with_capacity(argv.len());
    for arg in argv {
        match arg.to_str() {
            Some(a) => cmd.push(a.to_string()),
            None => bail!("the command's argument {arg:?} is not UTF-8"),
        }
    }
    // pasta runs `$SHELL` as a login shell: argv[0] `-$SHELL`.
    let shell = std::env::var("SHELL").unwrap_or_else(|_| DEFAULT_SHELL.into());
    let exe = cmd.is_empty().then_some(shell.as_str());
    if cmd.is_empty() {
        cmd.push(format!("-{shell}"));
    }
    if let UserNs::Join(path) = userns {
        // The command's namespaces belong to the one given, as pasta's.
        setup::join_user_namespace(path)?;
    }
    if let Some(path) = &args.pid_file {
        super::daemon::write_pid_at(path, std::process::id() as i32)?;
    }
    let hostname = hostname();
    let inside = setup::Inside {
        exe,
        map_user: false,
        // pasta leaves /etc/resolv.conf as it is.
        resolv_conf: None,
        // Addresses come from --config-net (usable at once) or the
        // command's own DHCP and SLAAC: nothing to wait for.
        ipv6_tap: None,
        new_user: *userns == UserNs::New,
        isolated: Some(setup::Isolated {
            hostname: &hostname,
        }),
        failures: setup::Failures {
            prefix: "",
            setup: STATUS_FAILED,
            exec: Some("Failed to start command or shell"),
        },
    };
    let set_up =
        |child: &setup::Namespaced| super::daemon::set_up(args, None, Some(child.pid.as_raw()));
    let status = crate::run::serve_command(&cmd, &inside, set_up, || ())?;
    Ok(status.unwrap_or(STATUS_FAILED))
}

/// `pasta-` and the host's name, cut to what Linux takes.
fn hostname() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name = format!("{HOSTNAME_PREFIX}{host}");
    while name.len() > HOST_NAME_MAX {
        name.pop();
    }
    name
}
