//! A process that stays in the namespace and makes TCP sockets there on
//! request: pasta's loopback splice connects from inside the namespace,
//! and a socket keeps the namespace it was made in, but the loop cannot
//! go there itself (its filter forbids `setns`, and joining a user
//! namespace would need a single-threaded process anyway).
//!
//! The connector is forked by the daemon, joins the namespace as the
//! setup child does, locks itself down as the daemon does (sandbox,
//! seccomp), and then does one thing: for each byte `4` or `6` it reads
//! on its socketpair, it sends back one unconnected, non-blocking TCP
//! socket of that family (SCM_RIGHTS), or an empty reply if the kernel
//! refused one. The loop connects the socket itself. For `L`, a
//! protocol byte (`t`, `u`) and a port (two bytes, big-endian), it sends
//! back a socket listening on the namespace's loopback at that port, as
//! `-T`/`-U` bind (`-T auto` asks for them as host ports come and go),
//! or an empty reply if it could not be bound. It dies with the
//! daemon (PR_SET_PDEATHSIG) and on EOF. The loop keeps a few sockets
//! ready, so a new connection does not wait for a round trip.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, setsockopt, socket, socketpair, sockopt,
};
use nix::sys::time::TimeVal;
use nix::unistd::{ForkResult, fork};

use super::{
    NsRequest, SetupError, ensure_single_threaded, join, lock_down, recv_fd, seccomp, send_fd,
};
use crate::config::{Config, Target};

/// Sockets asked for at once when the pool of a family runs dry.
const POOL: usize = 8;
/// How long the loop waits for the connector's answer before giving up
/// on this connection (the connector answers in microseconds; only a
/// wedged one takes this long).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// The connector's process name (comm): not the daemon's.
const CONNECTOR_NAME: &std::ffi::CStr = c"netferry-splice";
/// The connector's word that it is in place.
const READY: u8 = b'1';
const ASK_V4: u8 = b'4';
const ASK_V6: u8 = b'6';
const ASK_LISTEN: u8 = b'L';
const LISTEN_TCP: u8 = b't';
const LISTEN_UDP: u8 = b'u';

/// The loop's end: a pool of ready sockets per family, and the way to
/// ask for more.
pub struct Connector {
    sock: OwnedFd,
    v4: Vec<OwnedFd>,
    v6: Vec<OwnedFd>,
}

impl Connector {
    /// An unconnected, non-blocking TCP socket inside the namespace, of
    /// IPv6 or IPv4.
    pub fn socket(&mut self, v6: bool) -> io::Result<OwnedFd> {
        let pool = if v6 { &mut self.v6 } else { &mut self.v4 };
        if let Some(fd) = pool.pop() {
            return Ok(fd);
        }
        let ask = [if v6 { ASK_V6 } else { ASK_V4 }; POOL];
        nix::unistd::write(&self.sock, &ask)?;
        for _ in 0..POOL {
            match recv_fd(&self.sock) {
                Ok(Some(fd)) => pool.push(fd),
                // The kernel refused that one (no IPv6, fd limit).
                Ok(None) => {}
                Err(e) => return Err(e.into()),
            }
        }
        pool.pop().ok_or_else(|| {
            io::Error::other("the namespace's connector made no socket of this family")
        })
    }
}

impl Connector {
    /// A socket bound to the namespace's loopback at `port` (listening,
    /// for TCP), as `-T`/`-U` bind; `None` if the port could not be bound
    /// there (in use inside, most likely).
    pub fn listener(&mut self, udp: bool, port: u16) -> io::Result<Option<OwnedFd>> {
        let [hi, lo] = port.to_be_bytes();
        let proto = if udp { LISTEN_UDP } else { LISTEN_TCP };
        nix::unistd::write(&self.sock, &[ASK_LISTEN, proto, hi, lo])?;
        Ok(recv_fd(&self.sock)?)
    }
}

/// Fork the connector into `cfg`'s target namespace. Called once setup
/// no longer needs the caller's stdio (the connector keeps what it
/// inherits open until it ends) and before the loop is locked down.
pub fn spawn_connector(cfg: &Config) -> Result<Connector, SetupError> {
    let netns = match &cfg.target {
        Target::Pid(pid) => Path::new(&format!("/proc/{pid}/ns/net")).to_path_buf(),
        Target::Path(path) => path.clone(),
        Target::TapFd(_) => {
            return Err(SetupError::Run(
                "a loopback connector needs a namespace to join, not a tap fd".into(),
            ));
        }
    };
    ensure_single_threaded()?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(SetupError::SocketPair)?;
    let daemon = nix::unistd::getpid();
    // SAFETY: the process has one thread (checked above), so the child is
    // a full copy that may allocate and run ordinary code. It leaves with
    // _exit.
    match unsafe { fork() }.map_err(SetupError::Fork)? {
        ForkResult::Child => {
            drop(ours);
            let code = match connector(cfg, &netns, daemon, &theirs) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = nix::unistd::write(&theirs, e.to_string().as_bytes());
                    1
                }
            };
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or flushing buffers it shares with the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { .. } => {
            drop(theirs);
            let timeout = TimeVal::new(
                ANSWER_TIMEOUT.as_secs() as _,
                ANSWER_TIMEOUT.subsec_micros() as _,
            );
            // Setup waits for the word without a limit (joining and the
            // sandbox take what they take); at run time, at most this.
            let mut word = [0u8; 512];
            let n = nix::unistd::read(&ours, &mut word).map_err(SetupError::PassFd)?;
            if n != 1 || word[0] != READY {
                let said = String::from_utf8_lossy(&word[..n]);
                return Err(SetupError::Run(format!(
                    "the namespace's loopback connector failed: {}",
                    if said.is_empty() { "it ended" } else { &said }
                )));
            }
            setsockopt(&ours, sockopt::ReceiveTimeout, &timeout).map_err(SetupError::PassFd)?;
            Ok(Connector {
                sock: ours,
                v4: Vec::new(),
                v6: Vec::new(),
            })
        }
    }
}

/// The connector's life: join, lock down, serve until the daemon goes.
fn connector(
    cfg: &Config,
    netns: &Path,
    daemon: nix::unistd::Pid,
    sock: &OwnedFd,
) -> Result<(), SetupError> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and
    // touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // Not one more `pasta` to whoever counts them by name.
    let _ = nix::sys::prctl::set_name(CONNECTOR_NAME);
    // The daemon may have gone between fork and prctl.
    if nix::unistd::getppid() != daemon {
        return Ok(());
    }
    // Nothing the daemon had open is the connector's business: the tap,
    // listeners, the caller's pipes.
    let keep = sock.as_raw_fd() as libc::c_uint;
    // SAFETY: close_range closes fds this process owns and will not use
    // again: it runs no Rust code that holds them before _exit.
    unsafe {
        libc::close_range(3, keep - 1, 0);
        libc::close_range(keep + 1, libc::c_uint::MAX, 0);
    }
    join(cfg, netns)?;
    lock_down(cfg, &seccomp::Scope::here(None, None))
        .map_err(|e| SetupError::Run(e.to_string()))?;
    nix::unistd::write(sock, &[READY]).map_err(SetupError::PassFd)?;
    let mut asks = [0u8; POOL * 4];
    loop {
        let n = match nix::unistd::read(sock, &mut asks) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(SetupError::PassFd(e)),
        };
        let mut at = 0;
        while at < n {
            let ask = asks[at];
            at += 1;
            let made = match ask {
                ASK_LISTEN => {
                    let mut rest = [0u8; 3];
                    let from_buf = (n - at).min(rest.len());
                    rest[..from_buf].copy_from_slice(&asks[at..at + from_buf]);
                    at += from_buf;
                    read_exact(sock, &mut rest[from_buf..])?;
                    let request = NsRequest::Listen {
                        udp: rest[0] == LISTEN_UDP,
                        port: u16::from_be_bytes([rest[1], rest[2]]),
                    };
                    super::inns::make(&request).map_err(|_| nix::Error::EADDRINUSE)
                }
                _ => socket(
                    if ask == ASK_V6 {
                        AddressFamily::Inet6
                    } else {
                        AddressFamily::Inet
                    },
                    SockType::Stream,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    None,
                ),
            };
            let sent = match made {
                Ok(fd) => send_fd(sock, fd.as_raw_fd()),
                Err(_) => nix::unistd::write(sock, b"\0").map(|_| ()),
            };
            sent.map_err(SetupError::PassFd)?;
        }
    }
}

/// Fill `buf` from `sock`: the rest of a request cut by a short read.
fn read_exact(sock: &OwnedFd, mut buf: &mut [u8]) -> Result<(), SetupError> {
    while !buf.is_empty() {
        match nix::unistd::read(sock, buf) {
            Ok(0) => return Err(SetupError::Run("the daemon hung up mid-request".into())),
            Ok(n) => buf = &mut buf[n..],
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(SetupError::PassFd(e)),
        }
    }
    Ok(())
}
