//! The namespaces of a command run on a network netferry serves (`netferry
//! run`, and pasta's `pasta [CMD]`): a child process in a new network and
//! mount namespace (and a new user namespace unless the caller has the
//! rights already), held until its network is ready, then turned into the
//! user's command.
//!
//! The child maps the caller to root (or to itself with `map_user`),
//! makes its mounts private, and bind-mounts a resolv.conf naming the
//! virtual DNS addresses over /etc/resolv.conf, visible in its own mount
//! namespace only. With [`Isolated`] (pasta's way) it is also PID 1 of new
//! PID, UTS and IPC namespaces, with its own /proc and hostname. It waits
//! on a pipe for the parent to finish setting up the network, then execs
//! the command with the signal state a shell would give it. It dies with
//! netferry (parent-death signal): a command left without netferry would
//! have no network.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::unistd::{ForkResult, Pid, getgid, getpid, getppid, getuid, pipe2};

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

/// What the command gets inside besides its network.
pub struct Inside<'a> {
    /// The program to execute when not `cmd[0]` (a login shell runs as
    /// `-sh`).
    pub exe: Option<&'a str>,
    /// Keep the caller's ids (else the caller is root inside).
    pub map_user: bool,
    /// Bind-mounted over /etc/resolv.conf.
    pub resolv_conf: Option<&'a Path>,
    /// With IPv6 on, the tap netferry will create: no duplicate address
    /// detection on it, and the command starts once it has an address and
    /// a default route.
    pub ipv6_tap: Option<&'a str>,
    /// A new user namespace (else the caller's, where it must have the
    /// rights to make the others).
    pub new_user: bool,
    /// pasta's further isolation, or none (`netferry run`).
    pub isolated: Option<Isolated<'a>>,
    /// How the child reports its own failures.
    pub failures: Failures<'a>,
}

/// What pasta gives its command besides the network: new PID, UTS and IPC
/// namespaces with the command as PID 1 and a /proc of its own, a
/// hostname, and ping for root (`ping_group_range` "0 0").
pub struct Isolated<'a> {
    pub hostname: &'a str,
}

/// How the child tells of a failure before the command runs.
pub struct Failures<'a> {
    /// Before each message, e.g. `netferry run: `.
    pub prefix: &'a str,
    /// The status when setting up the namespaces fails.
    pub setup: i32,
    /// When the command cannot be executed: `None` for a shell's
    /// statuses (126, 127) and words; `Some(what)` for status `setup` and
    /// `WHAT: ERROR`.
    pub exec: Option<&'a str>,
}

/// The child's own settings, made before the fork.
struct ChildPlan<'a> {
    /// uid_map and gid_map, for a new user namespace.
    maps: Option<(String, String)>,
    inside: &'a Inside<'a>,
}

/// Fork the child; returns once its namespaces exist (or it failed).
pub fn spawn_namespaced(cmd: &[String], inside: &Inside<'_>) -> Result<Namespaced, SetupError> {
    // Everything the child needs, prepared before the fork.
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| SetupError::Run("the command has a NUL byte".into()))?;
    if argv.is_empty() {
        return Err(SetupError::Run("no command to run".into()));
    }
    let exe = match inside.exe {
        Some(exe) => CString::new(exe.as_bytes())
            .map_err(|_| SetupError::Run("the command has a NUL byte".into()))?,
        None => argv[0].clone(),
    };
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let (inner_uid, inner_gid) = if inside.map_user { (uid, gid) } else { (0, 0) };
    let plan = ChildPlan {
        maps: inside.new_user.then(|| {
            (
                format!("{inner_uid} {uid} 1\n"),
                format!("{inner_gid} {gid} 1\n"),
            )
        }),
        inside,
    };
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    if inside.new_user {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    if inside.isolated.is_some() {
        flags |= CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    }
    let pipe = || {
        pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SetupError::Run(format!("cannot create a pipe: {e}")))
    };
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let parent = getpid();
    let failures = &inside.failures;
    match clone_into(flags)? {
        ForkResult::Child => {
            drop((ready_r, go_w));
            // In a new PID namespace the parent is outside it and getppid()
            // says 0: there the go pipe's end tells of its death.
            let parent = inside.isolated.is_none().then_some(parent);
            let (status, err) = match die_with(parent) {
                Ok(()) => child(&ready_w, go_r, (&exe, &argv), &plan),
                Err(e) => (failures.setup, e),
            };
            eprintln!("{}{err}", failures.prefix);
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

/// fork(), with the child in the new namespaces `flags` names (as
/// clone(2) makes them: a new PID namespace has the child as its PID 1,
/// which unshare(2) cannot give the caller itself).
fn clone_into(flags: CloneFlags) -> Result<ForkResult, SetupError> {
    super::ensure_single_threaded()?;
    // SAFETY: clone without CLONE_VM and with no new stack is fork with
    // namespaces: the child gets a copy of the address space and goes on
    // from here on its copy of this stack. The process has one thread
    // (checked above), so no lock is held by a thread the child lacks,
    // and the child may allocate and run ordinary code; it calls nothing
    // that relies on glibc's cached thread id (no raise, no pthread
    // calls) and leaves by exec or _exit.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        -1 => Err(SetupError::Run(format!(
            "cannot create the {} namespaces: {} (are unprivileged user namespaces allowed on \
             this host?)",
            namespace_names(flags),
            nix::errno::Errno::last()
        ))),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
}

/// "user, network and mount", for messages.
fn namespace_names(flags: CloneFlags) -> String {
    let names: Vec<&str> = [
        (CloneFlags::CLONE_NEWUSER, "user"),
        (CloneFlags::CLONE_NEWNET, "network"),
        (CloneFlags::CLONE_NEWNS, "mount"),
        (CloneFlags::CLONE_NEWPID, "PID"),
        (CloneFlags::CLONE_NEWUTS, "UTS"),
        (CloneFlags::CLONE_NEWIPC, "IPC"),
    ]
    .into_iter()
    .filter(|(f, _)| flags.contains(*f))
    .map(|(_, n)| n)
    .collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The shell's statuses for a command found but not executable, and not
/// found.
const STATUS_NOT_EXECUTABLE: i32 = 126;
const STATUS_NOT_FOUND: i32 = 127;

/// In the child: set up, report ready, wait, exec. Returns only on
/// error: the status to exit with and what failed.
fn child(
    ready: &OwnedFd,
    go: OwnedFd,
    (exe, argv): (&CString, &[CString]),
    plan: &ChildPlan<'_>,
) -> (i32, String) {
    let failures = &plan.inside.failures;
    match prepare(ready, go, plan) {
        Ok(()) => exec(exe, argv, failures),
        Err(e) => (failures.setup, e),
    }
}

/// Exec the command, or say why not with the status a shell would give
/// (or as `failures` asks).
fn exec(exe: &CString, argv: &[CString], failures: &Failures<'_>) -> (i32, String) {
    let e = match nix::unistd::execvp(exe, argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    if let Some(what) = failures.exec {
        return (failures.setup, format!("{what}: {}", e.desc()));
    }
    let name = exe.to_string_lossy();
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
fn prepare(ready: &OwnedFd, go: OwnedFd, plan: &ChildPlan<'_>) -> Result<(), String> {
    if let Some((uid_map, gid_map)) = &plan.maps {
        for (file, text) in [
            ("/proc/self/setgroups", "deny"),
            ("/proc/self/uid_map", uid_map.as_str()),
            ("/proc/self/gid_map", gid_map.as_str()),
        ] {
            fs::write(file, text).map_err(|e| format!("cannot write {file}: {e}"))?;
        }
    }
    // A kernel without IPv6 (ipv6.disable=1, or off by default) gives
    // the tap none: nothing to wait for.
    let ipv6_tap = plan
        .inside
        .ipv6_tap
        .filter(|_| fs::read_to_string(DEFAULT_DISABLE_IPV6).is_ok_and(|v| v.trim() == "0"));
    if ipv6_tap.is_some() {
        // netferry is the tap's only neighbour, so no address on it can be
        // a duplicate: without detection its addresses are usable at once
        // instead of about a second each. The tap does not exist yet and
        // inherits `default`. Should the write fail, the wait below still
        // holds the command until IPv6 works, only longer.
        let _ = fs::write(DEFAULT_ACCEPT_DAD, "0");
    }
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    if let Some(resolv_conf) = plan.inside.resolv_conf {
        mount(
            Some(resolv_conf),
            "/etc/resolv.conf",
            none,
            MsFlags::MS_BIND,
            none,
        )
        .map_err(|e| format!("cannot put a resolv.conf over /etc/resolv.conf: {e}"))?;
    }
    if let Some(isolated) = &plan.inside.isolated {
        isolate(isolated, plan.inside.failures.prefix);
    }
    nix::unistd::write(ready, b"1").map_err(|e| format!("cannot report ready: {e}"))?;
    let mut byte = [0u8; 1];
    if !matches!(fs::File::from(go).read(&mut byte), Ok(1)) {
        return Err("the network was not set up; not running the command".into());
    }
    if let Some(tap) = ipv6_tap
        && !wait_for_ipv6(tap)
    {
        eprintln!(
            "netferry run: WARNING: {tap} has no usable IPv6 address and default route after \
             {}s; starting the command anyway",
            IPV6_READY_LIMIT.as_secs()
        );
    }
    default_signals().map_err(|e| format!("cannot reset the signal mask: {e}"))
}

/// pasta's extras, each only warned about when it fails, as pasta does.
fn isolate(isolated: &Isolated<'_>, prefix: &str) {
    let none: Option<&str> = None;
    // The PID namespace's own processes, not the host's.
    if let Err(e) = mount(Some("proc"), "/proc", Some("proc"), MsFlags::empty(), none) {
        eprintln!("{prefix}Couldn't mount /proc: {e}");
    }
    if fs::write(PING_GROUP_RANGE, "0 0").is_err() {
        eprintln!("{prefix}Cannot set ping_group_range, ICMP requests might fail");
    }
    if let Err(e) = nix::unistd::sethostname(isolated.hostname) {
        eprintln!("{prefix}Unable to set hostname {}: {e}", isolated.hostname);
    }
}

/// Who may open ICMP echo sockets, per network namespace.
const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";
/// New interfaces of the child's namespace copy their settings from here.
const DEFAULT_ACCEPT_DAD: &str = "/proc/sys/net/ipv6/conf/default/accept_dad";
/// "1" when new interfaces get no IPv6; missing without IPv6 in the kernel.
const DEFAULT_DISABLE_IPV6: &str = "/proc/sys/net/ipv6/conf/default/disable_ipv6";
/// How long the command waits for IPv6: far beyond the milliseconds SLAAC
/// takes without duplicate address detection, and beyond the few seconds
/// it takes with it, so only a broken network reaches it.
const IPV6_READY_LIMIT: Duration = Duration::from_secs(10);
const IPV6_READY_POLL: Duration = Duration::from_millis(10);
/// Flags of /proc/net/if_inet6 that make an address unusable.
const IFA_F_TENTATIVE: u32 = 0x40;
const IFA_F_DADFAILED: u32 = 0x08;
/// Scope of a global address in /proc/net/if_inet6.
const SCOPE_GLOBAL: u32 = 0;

/// Wait until `tap` has a usable global IPv6 address and an IPv6 default
/// route through it, as SLAAC gives it from netferry's router
/// advertisement. False when the limit passed first.
fn wait_for_ipv6(tap: &str) -> bool {
    let end = Instant::now() + IPV6_READY_LIMIT;
    loop {
        let addrs = fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        let routes = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        if has_global_address(&addrs, tap) && has_default_route(&routes, tap) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(IPV6_READY_POLL);
    }
}

/// Lines of /proc/net/if_inet6: address, ifindex, prefix length, scope,
/// flags (all hex), name.
fn has_global_address(if_inet6: &str, tap: &str) -> bool {
    if_inet6.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
        let (Some(scope), Some(flags)) = (hex(3), hex(4)) else {
            return false;
        };
        f.get(5) == Some(&tap)
            && scope == SCOPE_GLOBAL
            && flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0
    })
}

/// Lines of /proc/net/ipv6_route: destination, its prefix length, ...,
/// device last. A default route is ::/0.
fn has_default_route(ipv6_route: &str, tap: &str) -> bool {
    ipv6_route.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.first().is_some_and(|d| d.bytes().all(|b| b == b'0'))
            && f.get(1) == Some(&"00")
            && f.last() == Some(&tap)
    })
}

/// SIGKILL when `parent` (netferry) ends, however it ends. The setting
/// survives the exec of an ordinary program. (`None`: the parent is
/// outside the child's PID namespace and cannot be checked here.)
fn die_with(parent: Option<Pid>) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    // netferry may have died before the line above: then nothing would
    // ever send the signal (else the go pipe's end says so).
    if let Some(parent) = parent
        && getppid() != parent
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_settled_global_address_on_the_tap_counts() {
        let lines = "\
fe800000000000000000000000000001 02 40 20 80     tap0
fd000000000000000000000000000064 02 40 00 c0     tap0
00000000000000000000000000000001 01 80 10 80       lo
";
        // Link-local, and a global one still tentative (0xc0).
        assert!(!has_global_address(lines, "tap0"));
        let settled = lines.replace("00 c0     tap0", "00 00     tap0");
        assert!(has_global_address(&settled, "tap0"));
        assert!(!has_global_address(&settled, "tap1"));
        assert!(!has_global_address("garbage\n", "tap0"));
    }

    #[test]
    fn a_default_route_is_zero_slash_zero_on_the_tap() {
        let on_link = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     tap0\n";
        assert!(!has_default_route(on_link, "tap0"));
        let default = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000002 00000400 00000001 00000000 00450003     tap0\n";
        assert!(has_default_route(default, "tap0"));
        assert!(!has_default_route(default, "eth0"));
    }
}
