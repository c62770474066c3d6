//! The slirp4netns JSON control socket (`--api-socket`).
//!
//! One request per connection: read until a complete JSON value has
//! arrived (podman sends a newline and waits; rootlesskit half-closes),
//! answer, close. Replies and error texts are slirp4netns's, byte for
//! byte (`protocol` builds them). Every socket is non-blocking and served
//! from the event loop, so a client that says nothing, or never reads its
//! answer, holds only its own connection, never the network.

mod protocol;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use thiserror::Error;

pub use protocol::{Control, FlowCounts, MAX_REQUEST, StatusReply, respond};

use crate::tokens::{API_CONN_BASE, API_LISTENER};

/// Clients served at once; past that the oldest connection is dropped.
pub const MAX_CLIENTS: usize = 64;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{path} exists and is not a socket; not replacing it")]
    NotASocket { path: PathBuf },
    #[error("another instance is listening on {path}")]
    Live { path: PathBuf },
    #[error("cannot tell whether {path} is in use: {err}")]
    Probe { path: PathBuf, err: io::Error },
    #[error("cannot remove the stale socket {path}: {err}")]
    Stale { path: PathBuf, err: io::Error },
    #[error("cannot open the directory of {path}: {err}")]
    Dir { path: PathBuf, err: io::Error },
    #[error("cannot listen on {path}: {err}")]
    Bind { path: PathBuf, err: io::Error },
}

/// Only the user who runs netferry may connect: the API adds forwards.
const SOCKET_MODE: u32 = 0o600;

struct Client {
    stream: UnixStream,
    request: Vec<u8>,
    eof: bool,
    reply: Option<Vec<u8>>,
    written: usize,
}

/// The listening socket and its connections. Removes the socket file
/// when dropped.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket's directory, opened at bind time: under
    /// `--enable-sandbox` the path no longer resolves (the directory may lie
    /// outside the sandbox's root), so the file is removed relative to this.
    dir: File,
    clients: Vec<Option<Client>>,
    /// Slots in the order they were opened, to drop the oldest first.
    order: VecDeque<usize>,
}

impl ApiServer {
    /// Listen on `path`, reachable by our own user only from its first
    /// instant. A socket left by an instance that is gone (nobody
    /// accepts: ECONNREFUSED) is replaced, as podman and rootlesskit
    /// expect after a crash; anything else at the path is refused: a file
    /// that is not a socket, or a socket another instance still serves.
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        let owned = || path.to_path_buf();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // O_PATH: a handle to name the directory by, needing no read
        // right. The file is removed relative to it at exit: under
        // `--enable-sandbox` the path no longer resolves, and the seccomp
        // filter allows unlinkat in this directory only.
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .map_err(|err| ApiError::Dir { path: owned(), err })?;
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(ApiError::Probe { path: owned(), err }),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ApiError::NotASocket { path: owned() });
            }
            Ok(_) => match UnixStream::connect(path) {
                // Non-blocking: a listener with a full queue says EAGAIN.
                Ok(_) => return Err(ApiError::Live { path: owned() }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(ApiError::Live { path: owned() });
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    log::info!("api: replacing the stale socket {}", path.display());
                    fs::remove_file(path).map_err(|err| ApiError::Stale { path: owned(), err })?;
                }
                Err(err) => return Err(ApiError::Probe { path: owned(), err }),
            },
        }
        let listener = listen_private(path).map_err(|err| ApiError::Bind { path: owned(), err })?;
        Ok(ApiServer {
            listener,
            path: owned(),
            dir,
            clients: Vec::new(),
            order: VecDeque::new(),
        })
    }

    /// The socket's directory, the one place netferry removes a file
    /// from (for the seccomp filter).
    pub fn dir_fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, API_LISTENER, Interest::READABLE)
    }

    pub fn is_ours(token: Token) -> bool {
        token == API_LISTENER || token.0 >= API_CONN_BASE
    }

    /// Serve whatever is ready: new connections or one client.
    pub fn handle(&mut self, token: Token, registry: &Registry, ctl: &mut impl Control) {
        if token == API_LISTENER {
            self.accept(registry, ctl);
        } else {
            self.serve(token.0 - API_CONN_BASE, registry, ctl);
        }
    }

    fn accept(&mut self, registry: &Registry, ctl: &mut impl Control) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("api: accept failed: {e}");
                    return;
                }
            };
            if self.order.len() >= MAX_CLIENTS
                && let Some(oldest) = self.order.front().copied()
            {
                log::debug!("api: too many clients, dropping the oldest");
                self.close(oldest, registry);
            }
            let slot = match self.clients.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.clients.push(None);
                    self.clients.len() - 1
                }
            };
            let mut client = Client {
                stream,
                request: Vec::new(),
                eof: false,
                reply: None,
                written: 0,
            };
            let token = Token(API_CONN_BASE + slot);
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = registry.register(&mut client.stream, token, interest) {
                log::warn!("api: cannot watch a client: {e}");
                continue;
            }
            self.clients[slot] = Some(client);
            self.order.push_back(slot);
            self.serve(slot, registry, ctl);
        }
    }

    fn serve(&mut self, slot: usize, registry: &Registry, ctl: &mut impl Control) {
        let Some(Some(client)) = self.clients.get_mut(slot) else {
            return;
        };
        if client.reply.is_none() {
            let mut chunk = [0u8; MAX_REQUEST];
            while !client.eof && client.request.len() < MAX_REQUEST {
                match client.stream.read(&mut chunk) {
                    Ok(0) => client.eof = true,
                    Ok(n) => client.request.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("api: read failed: {e}");
                        return self.close(slot, registry);
                    }
                }
            }
            match respond(&client.request, client.eof, ctl) {
                Some(reply) => {
                    log::debug!(
                        "api: {} -> {reply}",
                        String::from_utf8_lossy(&client.request).trim()
                    );
                    client.reply = Some(reply.into_bytes());
                }
                None => return,
            }
        }
        let Some(reply) = &client.reply else { return };
        while client.written < reply.len() {
            match client.stream.write(&reply[client.written..]) {
                Ok(n) => client.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("api: write failed: {e}");
                    break;
                }
            }
        }
        self.close(slot, registry);
    }

    fn close(&mut self, slot: usize, registry: &Registry) {
        if let Some(mut client) = self.clients.get_mut(slot).and_then(Option::take) {
            let _ = registry.deregister(&mut client.stream);
        }
        self.order.retain(|&s| s != slot);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(name) = self.path.file_name() {
            let _ = nix::unistd::unlinkat(&self.dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Bind and listen with mode 0600 from the start. The file bind creates
/// takes the socket's own inode mode less the umask (`unix_bind` in
/// Linux's net/unix/af_unix.c), so the mode is set on the unbound socket:
/// a chmod after bind would leave the umask's mode in place for an
/// instant, long enough for another user to connect.
fn listen_private(path: &Path) -> io::Result<UnixListener> {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use nix::sys::stat::{Mode, fchmod};
    let sock = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    fchmod(&sock, Mode::from_bits_truncate(SOCKET_MODE))?;
    nix::sys::socket::bind(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    // A umask that takes the owner's bits (0277, say) leaves less than
    // 0600: give them back, which opens nothing to anyone else.
    if fs::symlink_metadata(path)?.permissions().mode() & 0o777 != SOCKET_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))?;
    }
    nix::sys::socket::listen(&sock, Backlog::MAXALLOWABLE)?;
    Ok(UnixListener::from_std(
        std::os::unix::net::UnixListener::from(sock),
    ))
}

/// Ask the netferry serving `socket` for its status and say it for people
/// (`netferry status`).
pub fn status_text(socket: &Path) -> io::Result<String> {
    use std::os::unix::net::UnixStream as StdStream;
    let mut c = StdStream::connect(socket)?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    c.write_all(br#"{"execute":"status"}"#)?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    c.read_to_string(&mut reply)?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply: {reply}"),
        )
    };
    let v: serde_json::Value = serde_json::from_str(&reply).map_err(|_| bad())?;
    let r = v.get("return").ok_or_else(bad)?;
    let n = |k: &str| r.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let f = |k: &str| {
        r["flows"]
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let mut text = format!(
        "flows:     {} TCP ({} connecting), {} UDP, {} ping\n\
         forwards:  {}\n\
         to host:   {} bytes\n\
         to guest:  {} bytes\n\
         frames:    {} from the guest, {} dropped as malformed\n\
         refused:   {} connections at a flow cap\n\
         defects:   {} caught (each closed one flow; see the log)\n",
        f("tcp"),
        f("tcp_connecting"),
        f("udp"),
        f("ping"),
        n("forwards"),
        n("bytes_to_host"),
        n("bytes_to_guest"),
        n("frames_from_guest"),
        n("frames_dropped"),
        n("refused_at_cap"),
        n("defects"),
    );
    // The forwards themselves, as list_hostfwd gives them.
    let mut c = StdStream::connect(socket)?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    c.write_all(br#"{"execute":"list_hostfwd"}"#)?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut list = String::new();
    c.read_to_string(&mut list)?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&list)
        && let Some(entries) = v["return"]["entries"].as_array()
    {
        for e in entries {
            text.push_str(&format!(
                "  #{} {} {}:{} -> {}:{}\n",
                e["id"],
                e["proto"].as_str().unwrap_or("?"),
                e["host_addr"].as_str().unwrap_or("?"),
                e["host_port"],
                e["guest_addr"].as_str().unwrap_or("?"),
                e["guest_port"]
            ));
        }
    }
    Ok(text)
}
