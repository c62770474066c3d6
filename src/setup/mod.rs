//! Everything that happens before the event loop: joining the target's
//! namespaces, opening the tap, `-c`, and handing the tap fd back; then,
//! last of all, locking netferry down (`sandbox`, `seccomp`).
//!
//! All of netferry's `unsafe` lives in this module, but for the mapping
//! of buffers in `crate::pages`, which the engine uses. Joining a user
//! namespace needs a single-threaded process and cannot be undone, and the
//! host sockets must stay in the caller's network namespace, so the join
//! happens in a forked child that sends the tap fd back over a socketpair
//! (SCM_RIGHTS) and exits. Nothing here runs once the loop has started,
//! but for asking pasta mode's connector (`connector.rs`), a process that
//! stays in the namespace, for a socket made there.

mod connector;
pub use connector::{Connector, spawn_connector};
mod ifconfig;
mod inns;
pub use inns::{NsRequest, NsRequestError};
pub mod netlink;
pub mod sandbox;
pub mod seccomp;
mod watch;
pub use watch::NetnsWatch;
mod tap;
mod userns;

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use thiserror::Error;

pub use ifconfig::{IfConfig, IfconfigError, configure};
pub use tap::{Offload, TapError, offload_of, open_tap};
pub use userns::{Failures, Inside, Isolated, Namespaced, spawn_namespaced};

use crate::config::{Config, InterfaceCopy, Target};

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("cannot open namespace file {path}: {err}")]
    OpenNs { path: PathBuf, err: io::Error },
    #[error("cannot join the network namespace {path}: {err}")]
    JoinNetns { path: PathBuf, err: nix::Error },
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("-c failed: {0}")]
    Configure(#[from] IfconfigError),
    #[error("--config-net failed: {0}")]
    CopyNet(#[from] netlink::NetlinkError),
    #[error("Couldn't set {family} route(s) in guest: {err}")]
    RouteRefused {
        family: &'static str,
        err: io::Error,
    },
    #[error("cannot create the socketpair for passing the tap fd: {0}")]
    SocketPair(nix::Error),
    #[error("cannot fork the namespace-joining child: {0}")]
    Fork(nix::Error),
    #[error("cannot pass the tap fd: {0}")]
    PassFd(nix::Error),
    #[error("the namespace-joining child failed ({0}); its error is above")]
    Child(String),
    #[error("fd {fd} is not usable: {err}")]
    BadFd { fd: RawFd, err: nix::Error },
    #[error(
        "cannot join namespaces from a process with {0} threads: joining a user namespace needs a single-threaded process"
    )]
    Threaded(usize),
    #[error(
        "cannot tell whether netferry is single-threaded, which forking needs \
         (reading {path}: {err}); is /proc mounted?"
    )]
    ThreadsUnknown { path: PathBuf, err: io::Error },
    #[error("{0}")]
    Run(String),
    #[error(transparent)]
    InNamespace(#[from] NsRequestError),
}

/// Get the tap as the configuration says: adopt an inherited fd, or join
/// the namespace in a child and receive the fd from it; then its
/// offloads. The file returned is non-blocking.
pub fn obtain_tap(cfg: &Config) -> Result<(File, Offload), SetupError> {
    let (tap, offload, _) = obtain_tap_with(cfg, &[])?;
    Ok((tap, offload))
}

/// [`obtain_tap`], and what `requests` ask for made inside the namespace
/// too (by the same child, so never with an inherited tap fd), in order.
pub fn obtain_tap_with(
    cfg: &Config,
    requests: &[NsRequest],
) -> Result<(File, Offload, Vec<OwnedFd>), SetupError> {
    precheck(cfg)?;
    let (tap, made) = match &cfg.target {
        Target::TapFd(_) if !requests.is_empty() => {
            return Err(SetupError::Run(
                "sockets inside the namespace need a namespace to join, not a tap fd".into(),
            ));
        }
        Target::TapFd(fd) => (adopt_fd(*fd)?, Vec::new()),
        Target::Pid(pid) => from_child(
            cfg,
            Path::new(&format!("/proc/{pid}/ns/net")).to_path_buf(),
            requests,
        )?,
        Target::Path(path) => from_child(cfg, path.clone(), requests)?,
    };
    set_nonblocking(&tap)?;
    let tap = File::from(tap);
    let offload = offload_of(&tap, cfg.offload)?;
    log::info!("tap offload: {offload}");
    Ok((tap, offload, made))
}

/// What can be checked before forking or joining anything, so a typo
/// fails at once with one clear line and leaves nothing half done.
/// `obtain_tap` calls it too; callers call it first to report its errors
/// as they are, not as a failure to get the tap.
pub fn precheck(cfg: &Config) -> Result<(), SetupError> {
    if let Some(name) = &cfg.tap_name
        && tap::ifreq_for(name).is_none()
    {
        return Err(SetupError::Tap(TapError::Name(name.clone())));
    }
    // (An exit fd that is not open means "exit at once, with 0", as the
    // slirp4netns contract has it; only the ready fd is checked here.)
    if let Some(fd) = cfg.ready_fd
        && !fd_is_open(fd)
    {
        return Err(SetupError::BadFd {
            fd,
            err: nix::Error::EBADF,
        });
    }
    if let Some(path) = &cfg.api_socket {
        check_api_socket_dir(path)?;
    }
    let netns = match &cfg.target {
        Target::Pid(pid) => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(SetupError::Run(format!("no such process: {pid}")));
            }
            PathBuf::from(format!("/proc/{pid}/ns/net"))
        }
        Target::Path(path) => {
            check_netns_file(path)?;
            path.clone()
        }
        Target::TapFd(_) => return Ok(()),
    };
    // A PID typo (or a wait too short for unshare) names netferry's own
    // namespace: as root it would then add tap0 and a default route to
    // the host's own network. Refuse.
    use std::os::unix::fs::MetadataExt;
    if let (Ok(target), Ok(own)) = (
        std::fs::metadata(&netns),
        std::fs::metadata("/proc/self/ns/net"),
    ) && (target.dev(), target.ino()) == (own.dev(), own.ino())
    {
        return Err(SetupError::Run(format!(
            "{} is netferry's own network namespace, not a container's; \
             is the PID right, and has the container made its namespace yet?",
            netns.display()
        )));
    }
    Ok(())
}

/// The API socket's directory must exist: checked before anything starts.
pub fn check_api_socket_dir(path: &Path) -> Result<(), SetupError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(SetupError::Run(format!(
            "cannot create the API socket {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Move this process into the user namespace at `path` for good, as
/// pasta does with `--userns` before it makes a command's namespaces
/// (which the joined namespace then owns). Before any thread exists.
pub fn join_user_namespace(path: &Path) -> Result<(), SetupError> {
    let file = File::open(path).map_err(|err| SetupError::OpenNs {
        path: path.to_path_buf(),
        err,
    })?;
    ensure_single_threaded()?;
    setns(&file, CloneFlags::CLONE_NEWUSER).map_err(|e| {
        SetupError::Run(format!(
            "cannot join the user namespace {}: {e}",
            path.display()
        ))
    })
}

/// The magic of the namespace file system (linux/magic.h).
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
/// `_IO(0xb7, 0x3)` of linux/nsfs.h: the kind of namespace a file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// A `--netns-type=path` argument must be a network namespace file: setns
/// would only say EINVAL.
fn check_netns_file(path: &Path) -> Result<(), SetupError> {
    let file = File::open(path).map_err(|err| SetupError::OpenNs {
        path: path.to_path_buf(),
        err,
    })?;
    let not_netns = |what: &str| {
        SetupError::Run(format!(
            "{} is not a network namespace ({what}); give a namespace file such as \
             /proc/PID/ns/net or /run/netns/NAME",
            path.display()
        ))
    };
    let on_nsfs = nix::sys::statfs::fstatfs(&file)
        .map(|st| st.filesystem_type().0 as libc::c_long == NSFS_MAGIC)
        .unwrap_or(true);
    if !on_nsfs {
        return Err(not_netns("not a namespace file at all"));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads which kind of
    // namespace the open fd refers to.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    // A kernel before 4.11 lacks the ioctl (-1): setns will tell.
    if kind >= 0 && kind != libc::CLONE_NEWNET {
        return Err(not_netns("a namespace of another kind"));
    }
    Ok(())
}

#[derive(Debug, Error)]
pub enum LockDownError {
    #[error("--enable-sandbox failed: {0}")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("--enable-seccomp failed: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// `--enable-sandbox`, then `--enable-seccomp`: the last of setup, once
/// every fd the loop needs is open (the API socket is bound: its
/// directory may lie outside the sandbox) and while netferry is still
/// single-threaded; before ready, so the caller knows they are in force.
/// `scope` says what the filter still lets netferry reach beyond itself.
pub fn lock_down(cfg: &Config, scope: &seccomp::Scope) -> Result<(), LockDownError> {
    if cfg.sandbox {
        sandbox::enter(cfg.userns_path.as_deref())?;
    }
    if cfg.seccomp {
        seccomp::install(scope)?;
    }
    Ok(())
}

/// Leave as the signal `sig` would have ended the process, once cleanup
/// is done: callers (and shells) then see what slirp4netns gives them,
/// death by that signal (status 143 for SIGTERM).
pub fn die_by(sig: nix::sys::signal::Signal) -> ! {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, raise, signal, sigprocmask};
    // SAFETY: restoring the default disposition installs no handler code.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(sig);
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    let _ = raise(sig);
    // Not reached unless the signal was ignored by force.
    std::process::exit(128 + sig as i32)
}

/// Whether `sig` is ignored, as `nohup` leaves SIGHUP for the programs
/// it runs.
pub fn signal_ignored(sig: nix::sys::signal::Signal) -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only reads the current one into `old`,
    // which the kernel fills entirely on success.
    let rc = unsafe { libc::sigaction(sig as libc::c_int, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: initialised by the successful call above.
    rc == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN
}

/// Take ownership of an fd inherited from the caller (`--netns-type=tapfd`).
pub fn adopt_fd(fd: RawFd) -> Result<OwnedFd, SetupError> {
    // Check first, so that a bad number is an error rather than UB.
    fd_flags(fd).map_err(|err| SetupError::BadFd { fd, err })?;
    // SAFETY: the fd is open (checked above) and was handed to us by the
    // caller for our exclusive use; nothing else in netferry owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `fd` is an open descriptor.
pub fn fd_is_open(fd: RawFd) -> bool {
    fd_flags(fd).is_ok()
}

/// The descriptor flags of a number that may name no open fd at all,
/// which nix's `fcntl` (it borrows an fd that must be open) cannot ask.
fn fd_flags(fd: RawFd) -> nix::Result<libc::c_int> {
    // SAFETY: F_GETFD touches no memory and fails with EBADF on a number
    // that is not an open descriptor (negative ones included).
    nix::errno::Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), SetupError> {
    let raw = fd.as_raw_fd();
    let bad = |err| SetupError::BadFd { fd: raw, err };
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(bad)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(bad)?;
    Ok(())
}

/// Where the kernel says how many threads this process has.
const PROC_SELF_STAT: &str = "/proc/self/stat";

/// Threads of the process whose stat file is `stat` (field 20).
fn thread_count(stat: &Path) -> io::Result<usize> {
    let text = std::fs::read_to_string(stat)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "no thread count in it");
    // The command name (field 2) may hold spaces; count from after it.
    let rest = &text[text.rfind(')').ok_or_else(bad)? + 1..];
    rest.split_whitespace()
        .nth(17)
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)
}

/// The precondition of every fork here: one thread, so the child is a
/// sound copy that may run ordinary code (and may join a user namespace).
/// A count that cannot be read (no /proc) fails too: soundness is not
/// assumed.
fn ensure_single_threaded() -> Result<(), SetupError> {
    single_threaded_per(Path::new(PROC_SELF_STAT))
}

fn single_threaded_per(stat: &Path) -> Result<(), SetupError> {
    match thread_count(stat) {
        Ok(1) => Ok(()),
        Ok(n) => Err(SetupError::Threaded(n)),
        Err(err) => Err(SetupError::ThreadsUnknown {
            path: stat.to_path_buf(),
            err,
        }),
    }
}

fn from_child(
    cfg: &Config,
    netns: PathBuf,
    requests: &[NsRequest],
) -> Result<(OwnedFd, Vec<OwnedFd>), SetupError> {
    // Checked, not assumed: the fork below is sound only while this
    // process has one thread, and setns into a user namespace fails in a
    // threaded one anyway.
    ensure_single_threaded()?;
    let (parent_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(SetupError::SocketPair)?;

    // SAFETY: the process has one thread (checked above), so the child is
    // a full copy that may allocate and run ordinary code. It leaves with
    // _exit.
    match unsafe { fork() }.map_err(SetupError::Fork)? {
        ForkResult::Child => {
            drop(parent_end);
            let code = match child(cfg, &netns, requests, &child_end) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("netferry: {e}");
                    1
                }
            };
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or flushing buffers it shares with the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            // The tap, then one fd per request.
            let received = (0..=requests.len())
                .map(|_| recv_fd(&parent_end))
                .collect::<nix::Result<Option<Vec<OwnedFd>>>>();
            let status = waitpid(child, None);
            match (received, status) {
                (Ok(Some(mut fds)), Ok(WaitStatus::Exited(_, 0))) => {
                    let tap = fds.remove(0);
                    Ok((tap, fds))
                }
                (Err(e), _) => Err(SetupError::PassFd(e)),
                (_, Ok(WaitStatus::Exited(_, code))) => {
                    Err(SetupError::Child(format!("exit status {code}")))
                }
                (_, other) => Err(SetupError::Child(format!("{other:?}"))),
            }
        }
    }
}

/// Join the target's user namespace (if one is named) and its network
/// namespace, in the calling (single-threaded, forked) process.
fn join(cfg: &Config, netns: &Path) -> Result<(), SetupError> {
    let open = |path: &Path| {
        File::open(path).map_err(|err| SetupError::OpenNs {
            path: path.to_path_buf(),
            err,
        })
    };
    // Open both before joining either: after the userns join, paths under
    // /proc may resolve differently.
    let userns = cfg.userns_path.as_deref().map(open).transpose()?;
    let netns_file = open(netns)?;
    if let Some(userns) = userns {
        // Ignored on purpose: the caller may already be in that namespace
        // (EINVAL), and the netns join below reports the real problem.
        if let Err(e) = setns(&userns, CloneFlags::CLONE_NEWUSER) {
            log::debug!("joining the user namespace failed ({e}); continuing");
        }
    }
    setns(&netns_file, CloneFlags::CLONE_NEWNET).map_err(|err| SetupError::JoinNetns {
        path: netns.to_path_buf(),
        err,
    })
}

/// The child: join, open, configure, send.
fn child(
    cfg: &Config,
    netns: &Path,
    requests: &[NsRequest],
    sock: &OwnedFd,
) -> Result<(), SetupError> {
    join(cfg, netns)?;
    let name = cfg.tap_name.as_deref().unwrap_or("tap0");
    let tap = open_tap(name, cfg.offload)?;
    if cfg.configure {
        configure(&IfConfig {
            name,
            mtu: cfg.mtu,
            mac: cfg.mac,
            link: &cfg.plan.v4,
        })?;
    }
    if cfg.loopback_up {
        loopback_up()?;
    }
    if let Some(copy) = &cfg.copy {
        copy_onto(name, copy)?;
    }
    // Made before anything is sent: one that fails fails the whole.
    let made = requests
        .iter()
        .map(inns::make)
        .collect::<Result<Vec<_>, _>>()?;
    send_fd(sock, tap.as_raw_fd()).map_err(SetupError::PassFd)?;
    log::info!("sent tapfd={} for {name}", tap.as_raw_fd());
    for fd in &made {
        send_fd(sock, fd.as_raw_fd()).map_err(SetupError::PassFd)?;
    }
    Ok(())
}

/// Which side of [`daemonize`] this is.
pub enum Daemon {
    /// The caller's process: the daemon's pid, and its word on setup
    /// (`Err` with what failed).
    Parent {
        child: i32,
        ready: Result<(), String>,
    },
    /// The daemon: in a session of its own; it tells the parent through
    /// this when it is ready.
    Child(Readiness),
}

/// The daemon's end of the pipe its parent waits on, and /dev/null,
/// opened early: the sandbox has no /dev and the filter no `open`.
pub struct Readiness {
    pipe: OwnedFd,
    null: File,
}

impl Readiness {
    /// Let go of the caller's stdin, stdout and stderr (/dev/null from
    /// now on), so a caller waiting for EOF on them sees it. Called before
    /// [`lock_down`], whose filter allows no `dup2`; what fails after goes
    /// to the parent through [`Readiness::failed`].
    pub fn release_stdio(&self) {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard fds, which this process
            // owns; `null` stays open until after the call.
            unsafe { libc::dup2(self.null.as_raw_fd(), fd) };
        }
    }

    /// Everything is in place: tell the parent.
    pub fn done(self) {
        let _ = nix::unistd::write(&self.pipe, b"1");
    }

    /// Setup failed: the parent prints `message` and exits 1.
    pub fn failed(self, message: &str) {
        let _ = nix::unistd::write(&self.pipe, message.as_bytes());
    }
}

/// Become a daemon as pasta does: fork; the child, in a new session, sets
/// everything up and reports through [`Readiness`]; the parent waits for
/// that word (EOF without one counts as a failure).
pub fn daemonize() -> Result<Daemon, SetupError> {
    ensure_single_threaded()?;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SetupError::Fork)?;
    // SAFETY: the process has one thread (checked above), so the child is
    // a full copy that may go on running ordinary code.
    match unsafe { fork() }.map_err(SetupError::Fork)? {
        ForkResult::Parent { child } => {
            drop(write);
            // One read: "1" is the word (a process the daemon forks while
            // setting up, such as the sandbox's, may hold the pipe open
            // longer); anything else is what failed, to the end.
            let mut pipe = File::from(read);
            let mut word = vec![0u8; 4096];
            let n = loop {
                match pipe.read(&mut word) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other.unwrap_or(0),
                }
            };
            word.truncate(n);
            if !word.is_empty() && word != b"1" {
                let _ = pipe.read_to_end(&mut word);
            }
            let ready = match word.as_slice() {
                b"1" => Ok(()),
                b"" => Err("the daemon ended before it was ready".to_string()),
                message => Err(String::from_utf8_lossy(message).into_owned()),
            };
            Ok(Daemon::Parent {
                child: child.as_raw(),
                ready,
            })
        }
        ForkResult::Child => {
            drop(read);
            let _ = nix::unistd::setsid();
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| SetupError::Run(format!("cannot open /dev/null: {e}")))?;
            Ok(Daemon::Child(Readiness { pipe: write, null }))
        }
    }
}

/// End this process at once with `code`, running no destructors: the
/// parent of [`daemonize`] must not close or remove what the daemon now
/// owns.
pub fn leave_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process without unwinding or running atexit
    // handlers; nothing it skips is needed (the daemon owns the rest).
    unsafe { libc::_exit(code) }
}

/// The namespace's `lo` up, as pasta brings it up.
fn loopback_up() -> Result<(), SetupError> {
    let lo = netlink::link_index("lo")?;
    netlink::set_link(
        lo,
        &netlink::LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )?;
    Ok(())
}

/// pasta's `--config-net`, in the namespace: the tap's MTU, its IPv6
/// link-local address made without duplicate address detection (NOARP
/// while it appears), up; then the addresses and the routes.
fn copy_onto(name: &str, copy: &InterfaceCopy) -> Result<(), SetupError> {
    use netlink::{Addr, LinkChange, Route};
    let tap = netlink::link_index(name)?;
    let mtu = copy.mtu;
    netlink::set_link(
        tap,
        &LinkChange {
            up: Some(true),
            noarp: Some(true),
            mtu,
        },
    )?;
    for a in &copy.addrs {
        let addr = Addr {
            addr: a.addr,
            prefix_len: a.prefix_len,
            no_prefix_route: a.no_prefix_route,
        };
        netlink::add_addr(tap, &addr)?;
    }
    let routes: Vec<Route> = copy
        .routes
        .iter()
        .map(|r| Route {
            dst: r.dst,
            prefix_len: r.prefix_len,
            gateway: r.gateway,
            metric: r.metric,
            onlink: r.onlink,
        })
        .collect();
    for skipped in netlink::add_routes(tap, &routes)? {
        let required = copy.routes.iter().any(|r| {
            r.required
                && (r.dst, r.prefix_len, r.gateway)
                    == (skipped.dst, skipped.prefix_len, skipped.gateway)
        });
        if required {
            // pasta's words; the kernel's error for a gateway off the link.
            let (family, errno) = match skipped.dst {
                std::net::IpAddr::V4(_) => ("IPv4", libc::ENETUNREACH),
                std::net::IpAddr::V6(_) => ("IPv6", libc::EHOSTUNREACH),
            };
            return Err(SetupError::RouteRefused {
                family,
                err: io::Error::from_raw_os_error(errno),
            });
        }
        log::debug!(
            "route {}/{} not copied: its gateway is not reachable",
            skipped.dst,
            skipped.prefix_len
        );
    }
    netlink::set_link(
        tap,
        &LinkChange {
            noarp: Some(false),
            ..Default::default()
        },
    )?;
    Ok(())
}

fn send_fd(sock: &OwnedFd, fd: RawFd) -> nix::Result<()> {
    let fds = [fd];
    let iov = [IoSlice::new(b"\0")];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// `Ok(None)` when the child closed the socket without sending (it failed).
fn recv_fd(sock: &OwnedFd) -> nix::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table for
            // us; nothing else refers to it.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(None)
}

/// Write the single byte `1` to the ready fd and close it.
pub fn signal_ready(fd: RawFd) -> io::Result<()> {
    use std::io::Write;
    // Check first so that a bad fd is an error, not an fd we do not own.
    if !fd_is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the fd is open and the caller gave it to us to write and
    // close; File takes ownership and closes it on drop.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(b"1")
}

/// Raise the soft limit on open files to the hard limit: every guest
/// connection and datagram flow holds a host socket, and the usual soft
/// limit of 1024 is soon reached by a busy container. Returns the limit
/// now in force.
pub fn raise_fd_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Serve large allocations (the per-connection TCP buffers) from fresh
/// mmap()ed pages. glibc otherwise raises its mmap threshold after the
/// first such buffer is freed and hands out recycled heap memory, which
/// calloc must then clear: 2 MiB of memset per connection. Fresh pages
/// are zero already and only the pages a connection uses are touched.
#[cfg(target_env = "gnu")]
pub fn prefer_mmap_for_buffers() {
    const THRESHOLD: libc::c_int = 256 * 1024;
    // SAFETY: mallopt only adjusts allocator tuning; it is called before
    // any thread exists and takes plain integers.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
    if ok != 1 {
        log::debug!("mallopt(M_MMAP_THRESHOLD) was refused");
    }
}

/// Other C libraries have no `mallopt`; their allocators are left alone.
#[cfg(not(target_env = "gnu"))]
pub fn prefer_mmap_for_buffers() {}

/// Give back the heap pages that setup used and freed (argument parsing,
/// configuration, the fork): glibc keeps them resident for reuse, and
/// an idle instance never reuses most of them.
#[cfg(target_env = "gnu")]
pub fn release_startup_memory() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel;
    // no live allocation is touched, and no other thread exists.
    unsafe { libc::malloc_trim(0) };
}

/// Other C libraries trim on their own terms.
#[cfg(not(target_env = "gnu"))]
pub fn release_startup_memory() {}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn thread_count_sees_this_threaded_test_process() {
        let stat = Path::new(PROC_SELF_STAT);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(thread_count(stat).unwrap() >= 2);
        assert!(matches!(
            single_threaded_per(stat),
            Err(SetupError::Threaded(n)) if n >= 2
        ));
        drop(tx);
        let _ = t.join();
    }

    #[test]
    fn an_fd_number_that_names_no_open_fd_is_refused_not_adopted() {
        for fd in [-1, RawFd::MAX] {
            assert!(!fd_is_open(fd));
            let e = adopt_fd(fd).unwrap_err();
            assert!(
                matches!(e, SetupError::BadFd { fd: f, err: nix::Error::EBADF } if f == fd),
                "{e}"
            );
        }
        let (read, _write) = nix::unistd::pipe().unwrap();
        let fd = read.into_raw_fd();
        assert!(fd_is_open(fd));
        let adopted = adopt_fd(fd).unwrap();
        set_nonblocking(&adopted).unwrap();
        let flags = fcntl(&adopted, FcntlArg::F_GETFL).unwrap();
        assert!(OFlag::from_bits_retain(flags).contains(OFlag::O_NONBLOCK));
    }

    #[test]
    fn an_unreadable_thread_count_refuses_the_fork() {
        let missing = Path::new("/nonexistent/proc/self/stat");
        let e = single_threaded_per(missing).unwrap_err();
        assert!(matches!(e, SetupError::ThreadsUnknown { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/proc/self/stat"), "{e}");
        // A file that holds no count is no better.
        let garbage = std::env::temp_dir().join(format!("netferry-stat-{}", std::process::id()));
        std::fs::write(&garbage, "1 (x) S").unwrap();
        let refused = single_threaded_per(&garbage);
        let _ = std::fs::remove_file(&garbage);
        assert!(matches!(refused, Err(SetupError::ThreadsUnknown { .. })));
    }
}
