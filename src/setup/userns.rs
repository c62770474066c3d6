//! The namespaces of `netferry run`: a child process in a new user,
//! network and mount namespace, held until its network is ready, then
//! turned into the user's command.
//!
//! The child maps the caller to root (or to itself with `map_user`),
//! makes its mounts private, and bind-mounts a resolv.conf naming the
//! virtual DNS addresses over /etc/resolv.conf, visible in its own mount
//! namespace only. It waits on a pipe for the parent to finish setting up
//! the network, then execs the command with the signal state a shell
//! would give it. It dies with netferry (parent-death signal): a command
//! left without netferry would have no network.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::unistd::{ForkResult, Pid, fork, getgid, getpid, getppid, getuid, pipe2};

use super::SetupError;

/// A namespaced child waiting for `start`.
pub struct Namespaced {
    pub pid: Pid,
    go: Option<OwnedFd>,
}

impl Namespaced {
    /// Let the child run its command.
    pub fn start(&mut self) -> std::io::Result<()> {
        match self.go.take() {
            Some(fd) => fs::File::from(fd).write_all(b"1"),
            None => Ok(()),
        }
    }
}

/// Fork the child; returns once its namespaces exist (or it failed).
pub fn spawn_namespaced(
    cmd: &[String],
    map_user: bool,
    resolv_conf: Option<&Path>,
) -> Result<Namespaced, SetupError> {
    // Everything the child needs, prepared before the fork.
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| SetupError::Run("the command has a NUL byte".into()))?;
    if argv.is_empty() {
        return Err(SetupError::Run("no command to run".into()));
    }
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let (inner_uid, inner_gid) = if map_user { (uid, gid) } else { (0, 0) };
    let uid_map = format!("{inner_uid} {uid} 1\n");
    let gid_map = format!("{inner_gid} {gid} 1\n");
    let pipe = || {
        pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SetupError::Run(format!("cannot create a pipe: {e}")))
    };
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let parent = getpid();
    super::ensure_single_threaded()?;
    // SAFETY: the process has one thread (checked above), so the child is
    // a full copy that may allocate and run ordinary code. It leaves by
    // exec or _exit.
    match unsafe { fork() }.map_err(SetupError::Fork)? {
        ForkResult::Child => {
            drop((ready_r, go_w));
            let (status, err) = match die_with(parent) {
                Ok(()) => child(&ready_w, go_r, &argv, &uid_map, &gid_map, resolv_conf),
                Err(e) => (STATUS_SETUP, e),
            };
            eprintln!("netferry run: {err}");
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or flushing buffers it shares with it.
            unsafe { libc::_exit(status) }
        }
        ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mut byte = [0u8; 1];
            match fs::File::from(ready_r).read(&mut byte) {
                Ok(1) => Ok(Namespaced {
                    pid: child,
                    go: Some(go_w),
                }),
                _ => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(SetupError::Run(
                        "the namespaced child failed; its error is above".into(),
                    ))
                }
            }
        }
    }
}

/// The child's status when it fails before exec (as `netferry run`'s own
/// failures).
const STATUS_SETUP: i32 = 125;
/// The shell's statuses for a command found but not executable, and not
/// found.
const STATUS_NOT_EXECUTABLE: i32 = 126;
const STATUS_NOT_FOUND: i32 = 127;

/// In the child: set up, report ready, wait, exec. Returns only on
/// error: the status to exit with and what failed.
fn child(
    ready: &OwnedFd,
    go: OwnedFd,
    argv: &[CString],
    uid_map: &str,
    gid_map: &str,
    resolv_conf: Option<&Path>,
) -> (i32, String) {
    match prepare(ready, go, uid_map, gid_map, resolv_conf) {
        Ok(()) => exec(argv),
        Err(e) => (STATUS_SETUP, e),
    }
}

/// Exec the command, or say why not with the status a shell would give.
fn exec(argv: &[CString]) -> (i32, String) {
    let e = match nix::unistd::execvp(&argv[0], argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let name = argv[0].to_string_lossy();
    // execvp reports EACCES when a PATH directory was unreadable even if
    // the name is nowhere: a shell says "not found" then, and so do we.
    if !name.contains('/') && !on_path(&name) {
        return (STATUS_NOT_FOUND, format!("{name}: command not found"));
    }
    let status = match e {
        nix::errno::Errno::ENOENT => STATUS_NOT_FOUND,
        _ => STATUS_NOT_EXECUTABLE,
    };
    (status, format!("cannot run {name}: {}", e.desc()))
}

/// Whether some directory of PATH (execvp's default when unset) holds
/// `name`.
fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(name).exists())
}

/// The namespaces, the resolv.conf, then wait for the network.
fn prepare(
    ready: &OwnedFd,
    go: OwnedFd,
    uid_map: &str,
    gid_map: &str,
    resolv_conf: Option<&Path>,
) -> Result<(), String> {
    let flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    unshare(flags).map_err(|e| {
        format!(
            "cannot create user, network and mount namespaces: {e} \
             (are unprivileged user namespaces allowed on this host?)"
        )
    })?;
    for (file, text) in [
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", uid_map),
        ("/proc/self/gid_map", gid_map),
    ] {
        fs::write(file, text).map_err(|e| format!("cannot write {file}: {e}"))?;
    }
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    if let Some(resolv_conf) = resolv_conf {
        mount(
            Some(resolv_conf),
            "/etc/resolv.conf",
            none,
            MsFlags::MS_BIND,
            none,
        )
        .map_err(|e| format!("cannot put a resolv.conf over /etc/resolv.conf: {e}"))?;
    }
    nix::unistd::write(ready, b"1").map_err(|e| format!("cannot report ready: {e}"))?;
    let mut byte = [0u8; 1];
    if !matches!(fs::File::from(go).read(&mut byte), Ok(1)) {
        return Err("the network was not set up; not running the command".into());
    }
    default_signals().map_err(|e| format!("cannot reset the signal mask: {e}"))
}

/// SIGKILL when `parent` (netferry) ends, however it ends. The setting
/// survives the unshare and the exec of an ordinary program.
fn die_with(parent: Pid) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    // netferry may have died before the line above: then nothing would
    // ever send the signal.
    if getppid() != parent {
        return Err("netferry ended before the command started".into());
    }
    Ok(())
}

/// Nothing blocked and SIGPIPE at its default: Rust ignores SIGPIPE in
/// netferry, and an ignored signal stays ignored across exec, so without
/// this a pipeline such as `yes | head` inside would never end.
fn default_signals() -> nix::Result<()> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // SAFETY: SIG_DFL installs no handler code, and this single-threaded
    // child is about to exec.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}
