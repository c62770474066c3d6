//! `--enable-seccomp`: a syscall filter, installed once setup is done.
//!
//! Two filters, which the kernel applies together (the strictest answer
//! wins):
//!
//! 1. a kill list: syscalls that only an attacker who took over netferry
//!    would make (exec, ptrace, mounts, namespaces, modules, reboot, ...)
//!    kill the whole process at once, as in slirp4netns;
//! 2. an allow list of the syscalls the running event loop makes (derived
//!    from `event_loop.rs`, `host/net.rs`, `api/mod.rs`, `resolv.rs` and
//!    what Rust's std and glibc do for them, and checked under strace);
//!    any other syscall fails with EPERM. A rare path that was missed then
//!    shows up as an error in the log instead of a dead container network.
//!
//! A few entries are narrowed by their arguments: `socket` only for IPv4
//! and IPv6, `openat` only read-only (resolv.conf), `ioctl` only for the
//! requests std uses on sockets, no executable memory, and the calls that
//! reach beyond netferry itself only to what is its own (`Scope`): `kill`
//! to `netferry run`'s command, `tgkill` to netferry's own process,
//! `unlinkat` to the API socket's directory. Nothing may be set up after
//! the filter: no thread (`clone` is refused), no new namespace, no exec.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error(
        "--enable-seccomp is not supported on {0} by this netferry version \
         (only x86_64 and aarch64); run without it"
    )]
    UnsupportedArch(&'static str),
    #[error("cannot build the seccomp filter: {0}")]
    Build(seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Install(seccompiler::Error),
}

/// What belongs to netferry, for the rules that compare arguments.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// This process: `tgkill` (abort(), raise() in `die_by`) may signal
    /// nothing else.
    pub pid: i32,
    /// `netferry run`'s command, the one process netferry signals (passing
    /// SIGINT, SIGTERM and SIGHUP, or ending it). None: no `kill` at all.
    pub child: Option<i32>,
    /// The API socket's directory (an fd), the one place netferry removes
    /// a file from, at exit. None: no `unlinkat` at all.
    pub api_dir: Option<RawFd>,
}

impl Scope {
    /// The scope of the calling process.
    pub fn here(child: Option<i32>, api_dir: Option<RawFd>) -> Scope {
        Scope {
            pid: std::process::id() as i32,
            child,
            api_dir,
        }
    }
}

/// Build both filters and install them on the calling (only) thread.
/// Sets no_new_privs, which an unprivileged process needs for this.
pub fn install(scope: &Scope) -> Result<(), SeccompError> {
    let (kill, allow) = filters(scope)?;
    seccompiler::apply_filter(&kill).map_err(SeccompError::Install)?;
    seccompiler::apply_filter(&allow).map_err(SeccompError::Install)?;
    log::info!(
        "seccomp: {} syscalls allowed, {} kill the process, any other fails with EPERM",
        allowed(scope).len(),
        killed().len()
    );
    Ok(())
}

/// The kill filter and the allow filter, in the order to install them.
pub fn filters(scope: &Scope) -> Result<(BpfProgram, BpfProgram), SeccompError> {
    let arch = target_arch()?;
    let kill = SeccompFilter::new(
        killed().iter().map(|&nr| (nr, Vec::new())).collect(),
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        arch,
    )
    .map_err(SeccompError::Build)?;
    let allow = SeccompFilter::new(
        allowed(scope).into_iter().collect(),
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(SeccompError::Build)?;
    Ok((
        kill.try_into().map_err(SeccompError::Build)?,
        allow.try_into().map_err(SeccompError::Build)?,
    ))
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
    }
}

/// slirp4netns's kill list (its seccompfilter.c), plus the rest of the
/// mount family and three favourite doors of kernel exploits.
fn killed() -> Vec<i64> {
    use libc::*;
    vec![
        SYS_execve,
        SYS_execveat,
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_setns,
        SYS_unshare,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_reboot,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_pidfd_open,
        SYS_pidfd_getfd,
        SYS_pidfd_send_signal,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_move_mount,
        SYS_open_tree,
        SYS_mount_setattr,
        SYS_lookup_dcookie,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_userfaultfd,
    ]
}

/// Match when argument `arg` (32 bits) equals `value`.
fn arg_eq(arg: u8, value: u64) -> SeccompRule {
    rule(arg, SeccompCmpOp::Eq, value)
}

/// Match when the bits of `mask` are all clear in argument `arg`.
fn arg_lacks(arg: u8, mask: u64) -> SeccompRule {
    rule(arg, SeccompCmpOp::MaskedEq(mask), 0)
}

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompRule {
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .expect("argument index is below 6");
    SeccompRule::new(vec![cond]).expect("one condition is not empty")
}

/// Every syscall the running process may make, with the rules that narrow
/// it (an empty list: any arguments).
fn allowed(scope: &Scope) -> BTreeMap<i64, Vec<SeccompRule>> {
    use libc::*;
    let any = |nr: i64| (nr, Vec::new());
    let no_exec = vec![arg_lacks(2, PROT_EXEC as u64)];
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = [
        // The event loop: tap and host sockets, epoll, the signalfd.
        any(SYS_read),
        any(SYS_write),
        any(SYS_readv),
        any(SYS_writev),
        any(SYS_close),
        any(SYS_epoll_ctl),
        any(SYS_epoll_pwait),
        any(SYS_epoll_pwait2),
        any(SYS_ppoll),
        // Host sockets: outbound flows, forward listeners, the API socket.
        (
            SYS_socket,
            vec![arg_eq(0, AF_INET as u64), arg_eq(0, AF_INET6 as u64)],
        ),
        any(SYS_connect),
        any(SYS_bind),
        any(SYS_listen),
        any(SYS_accept4),
        any(SYS_getsockopt),
        any(SYS_setsockopt),
        any(SYS_getsockname),
        any(SYS_getpeername),
        any(SYS_sendto),
        any(SYS_recvfrom),
        any(SYS_sendmsg),
        any(SYS_recvmsg),
        any(SYS_sendmmsg),
        any(SYS_recvmmsg),
        any(SYS_shutdown),
        any(SYS_fcntl),
        // The relay's TCP bytes, socket to pipe to socket: a pipe per
        // direction (sized with fcntl), filled and drained by splice.
        any(SYS_pipe2),
        any(SYS_splice),
        // set_nonblocking on forward listeners; bytes waiting on a socket.
        #[allow(clippy::unnecessary_cast)] // c_ulong here, c_int on musl
        (
            SYS_ioctl,
            vec![arg_eq(1, FIONBIO as u64), arg_eq(1, FIONREAD as u64)],
        ),
        // resolv.conf re-reads: stat, open read-only, read, close.
        (
            SYS_openat,
            vec![arg_lacks(2, (O_ACCMODE | O_CREAT | O_TRUNC) as u64)],
        ),
        any(SYS_newfstatat),
        any(SYS_statx),
        any(SYS_fstat),
        any(SYS_lseek),
        // Memory: allocation, TCP buffers served from fresh pages.
        (SYS_mmap, no_exec.clone()),
        (SYS_mprotect, no_exec),
        any(SYS_munmap),
        any(SYS_mremap),
        any(SYS_brk),
        any(SYS_madvise),
        // Runtime: time, randomness, signals, locks, process exit.
        any(SYS_clock_gettime),
        any(SYS_gettimeofday),
        any(SYS_getrandom),
        any(SYS_futex),
        any(SYS_rt_sigaction),
        any(SYS_rt_sigprocmask),
        any(SYS_rt_sigreturn),
        any(SYS_sigaltstack),
        any(SYS_restart_syscall),
        any(SYS_sched_yield),
        // The event loop's pause while datagrams stream: std's sleep,
        // which is nanosleep (glibc makes it clock_nanosleep).
        any(SYS_nanosleep),
        any(SYS_clock_nanosleep),
        any(SYS_getpid),
        any(SYS_gettid),
        // abort() on a panic, and die_by re-raising a signal: both signal
        // this process alone.
        (SYS_tgkill, vec![arg_eq(0, scope.pid as u32 as u64)]),
        // `netferry run` reaping its command.
        any(SYS_wait4),
        any(SYS_exit),
        any(SYS_exit_group),
    ]
    .into_iter()
    .collect();
    if let Some(child) = scope.child {
        // Passing SIGINT, SIGTERM and SIGHUP to `netferry run`'s command,
        // or ending it.
        map.insert(SYS_kill, vec![arg_eq(0, child as u32 as u64)]);
    }
    if let Some(dir) = scope.api_dir {
        // Removing the API socket at exit, relative to its directory.
        map.insert(SYS_unlinkat, vec![arg_eq(0, dir as u32 as u64)]);
    }
    #[cfg(target_arch = "x86_64")]
    {
        // The older calls glibc still makes on x86_64.
        map.insert(SYS_epoll_wait, Vec::new());
        map.insert(SYS_poll, Vec::new());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    /// A scope with everything in it, for the probes that do not test it.
    fn wide_scope() -> Scope {
        Scope::here(Some(1), Some(libc::AT_FDCWD))
    }

    #[test]
    fn kill_and_allow_lists_do_not_overlap() {
        let allowed = allowed(&wide_scope());
        for nr in killed() {
            assert!(!allowed.contains_key(&nr), "syscall {nr} is in both lists");
        }
        filters(&wide_scope()).unwrap();
    }

    /// Run `probe` in a forked child under the filters built for `scope`;
    /// returns how the child ended. The probe reports with its exit code.
    fn in_filtered_child(scope: &Scope, probe: impl FnOnce() -> i32) -> WaitStatus {
        let (kill, allow) = filters(scope).unwrap();
        // SAFETY: the test harness has threads, so the child may only do
        // async-signal-safe work: install the (prebuilt) filters, make raw
        // syscalls, and _exit. The filters were built before the fork, so
        // the child does not allocate.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = match seccompiler::apply_filter(&kill)
                    .and_then(|()| seccompiler::apply_filter(&allow))
                {
                    Ok(()) => probe(),
                    Err(_) => 100,
                };
                // SAFETY: ends the child without running the harness's
                // cleanup, which belongs to the parent.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn a_killed_syscall_kills_the_process() {
        let status = in_filtered_child(&wide_scope(), || {
            // SAFETY: unshare(0) changes nothing even when it is allowed.
            unsafe { libc::unshare(0) };
            0
        });
        assert_eq!(
            status,
            WaitStatus::Signaled(status.pid().unwrap(), nix::sys::signal::SIGSYS, false)
        );
    }

    #[test]
    fn an_unlisted_syscall_fails_with_eperm_and_listed_ones_work() {
        let status = in_filtered_child(&wide_scope(), || {
            // SAFETY: getppid, getcwd (with no buffer), pipe2, fcntl,
            // splice (on fds that are not open) and socket have no
            // preconditions; the fds they may create die with the child.
            unsafe {
                if libc::getpid() <= 0 {
                    return 1;
                }
                // Through syscall(): glibc's getppid() sets no errno.
                if libc::syscall(libc::SYS_getppid) != -1 || errno() != libc::EPERM {
                    return 2;
                }
                let nothing = std::ptr::null_mut::<libc::c_char>();
                if libc::syscall(libc::SYS_getcwd, nothing, 0) != -1 || errno() != libc::EPERM {
                    return 3;
                }
                // The relay's splice: a sized non-blocking pipe, and
                // splice itself (EBADF, not EPERM, on fds not open).
                let mut fds = [0; 2];
                if libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) != 0 {
                    return 11;
                }
                if libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 256 * 1024) < 0 {
                    return 12;
                }
                let none = std::ptr::null_mut();
                if libc::splice(-1, none, -1, none, 1, 0) != -1 || errno() != libc::EBADF {
                    return 13;
                }
                if libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) != -1 {
                    return 4;
                }
                if libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) < 0 {
                    return 5;
                }
                // Executable memory is refused.
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p != libc::MAP_FAILED || errno() != libc::EPERM {
                    return 6;
                }
                // Opening for writing is refused, reading is not.
                let path = c"/proc/self/status";
                if libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_WRONLY) != -1 {
                    return 7;
                }
                if libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) < 0 {
                    return 8;
                }
                // Sleeping, as the event loop's pause does.
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 20_000,
                };
                if libc::nanosleep(&pause, std::ptr::null_mut()) != 0 {
                    return 9;
                }
                let clock = libc::CLOCK_MONOTONIC;
                if libc::clock_nanosleep(clock, 0, &pause, std::ptr::null_mut()) != 0 {
                    return 10;
                }
            }
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "probe failed: {status:?}"
        );
    }

    #[test]
    fn kill_tgkill_and_unlinkat_reach_only_what_is_netferrys() {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStringExt;
        use std::os::unix::fs::OpenOptionsExt;
        // A process of our own to stand for `netferry run`'s command, and
        // the test process (the child's parent) for "ourselves": the child
        // cannot know its own pid before the filter is built, and tgkill
        // compares only the pid it targets.
        let mut command = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("netferry-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["api.sock", "other"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let api_dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&dir)
            .unwrap();
        let elsewhere = std::fs::File::open("/").unwrap();
        let scope = Scope {
            pid: std::process::id() as i32,
            child: Some(command.id() as i32),
            api_dir: Some(api_dir.as_raw_fd()),
        };
        let other_path =
            std::ffi::CString::new(dir.join("other").into_os_string().into_vec()).unwrap();
        let (me, child) = (scope.pid, command.id() as i32);
        let (api_fd, root_fd) = (api_dir.as_raw_fd(), elsewhere.as_raw_fd());
        let status = in_filtered_child(&scope, move || {
            // SAFETY: signal 0 sends nothing; unlinkat gets valid C strings
            // and fds that stay open in the child.
            unsafe {
                if libc::kill(child, 0) != 0 {
                    return 1;
                }
                // The init process, and ourselves: not netferry's to kill.
                if libc::kill(1, 0) != -1 || errno() != libc::EPERM {
                    return 2;
                }
                if libc::kill(me, 0) != -1 || errno() != libc::EPERM {
                    return 3;
                }
                if libc::syscall(libc::SYS_tgkill, me, me, 0) != 0 {
                    return 4;
                }
                if libc::syscall(libc::SYS_tgkill, child, child, 0) != -1 || errno() != libc::EPERM
                {
                    return 5;
                }
                if libc::unlinkat(libc::AT_FDCWD, other_path.as_ptr(), 0) != -1
                    || errno() != libc::EPERM
                {
                    return 6;
                }
                if libc::unlinkat(root_fd, c"tmp/x".as_ptr(), 0) != -1 || errno() != libc::EPERM {
                    return 7;
                }
                if libc::unlinkat(api_fd, c"api.sock".as_ptr(), 0) != 0 {
                    return 8;
                }
            }
            0
        });
        let _ = command.kill();
        let _ = command.wait();
        let api_sock_left = dir.join("api.sock").exists();
        let other_left = dir.join("other").exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "probe failed: {status:?}"
        );
        assert!(!api_sock_left && other_left);
    }

    #[test]
    fn without_a_command_or_an_api_socket_kill_and_unlinkat_are_refused() {
        let scope = Scope::here(None, None);
        let parent = scope.pid;
        let status = in_filtered_child(&scope, move || {
            // SAFETY: signal 0 sends nothing; the path does not exist.
            unsafe {
                if libc::kill(parent, 0) != -1 || errno() != libc::EPERM {
                    return 1;
                }
                let path = c"/nonexistent/netferry";
                if libc::unlinkat(libc::AT_FDCWD, path.as_ptr(), 0) != -1 || errno() != libc::EPERM
                {
                    return 2;
                }
            }
            0
        });
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "probe failed: {status:?}"
        );
    }
}
