//! The slirp4netns JSON control socket (`--api-socket`).
//!
//! One request per connection: read until a complete JSON value has
//! arrived (podman sends a newline and waits; rootlesskit half-closes),
//! answer, close. Replies and error texts are slirp4netns's, byte for
//! byte (CONTRACT.md section 5). Every socket is non-blocking and served
//! from the event loop, so a client that says nothing, or never reads its
//! answer, holds only its own connection, never the network.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde_json::Value;
use thiserror::Error;

use crate::engine::{Engine, FLOW_TOKEN_END, Forward, ForwardError, ForwardSpec, Proto};

/// A request of this many bytes or more is refused.
pub const MAX_REQUEST: usize = 4096;
/// Clients served at once; past that the oldest connection is dropped.
pub const MAX_CLIENTS: usize = 64;
pub const API_LISTENER: Token = Token(3);
/// Connection tokens sit above every flow token.
pub const API_CONN_BASE: usize = FLOW_TOKEN_END;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("cannot remove the stale file {path}: {err}")]
    Stale { path: PathBuf, err: io::Error },
    #[error("cannot listen on {path}: {err}")]
    Bind { path: PathBuf, err: io::Error },
}

/// What the API asks of the rest of netferry.
pub trait Control {
    fn add_forward(&mut self, spec: ForwardSpec) -> Result<Forward, ForwardError>;
    fn remove_forward(&mut self, id: u64) -> Result<(), ForwardError>;
    fn list_forwards(&self) -> Vec<Forward>;
    /// `guest_addr` when the request leaves it out: network+100.
    fn default_guest(&self) -> Ipv4Addr;
}

impl Control for Engine {
    fn add_forward(&mut self, spec: ForwardSpec) -> Result<Forward, ForwardError> {
        Engine::add_forward(self, spec)
    }
    fn remove_forward(&mut self, id: u64) -> Result<(), ForwardError> {
        Engine::remove_forward(self, id)
    }
    fn list_forwards(&self) -> Vec<Forward> {
        self.forwards().copied().collect()
    }
    fn default_guest(&self) -> Ipv4Addr {
        self.network().guest
    }
}

fn error(desc: &str) -> String {
    format!(
        "{{\"error\":{{\"desc\":{}}}}}",
        serde_json::to_string(desc).unwrap_or_default()
    )
}

/// The answer to the bytes received so far, or `None` while the JSON
/// value is still incomplete and the client has not closed its side.
pub fn respond(buf: &[u8], eof: bool, ctl: &mut impl Control) -> Option<String> {
    if buf.len() >= MAX_REQUEST {
        return Some(error("bad request: too large message"));
    }
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => Some(execute(&v, ctl)),
        Some(Err(e)) if e.is_eof() && !eof => None,
        None if !eof => None,
        _ => Some(error("bad request: cannot parse JSON")),
    }
}

fn execute(req: &Value, ctl: &mut impl Control) -> String {
    let Some(obj) = req.as_object() else {
        return error("bad request: json_object() failed");
    };
    let Some(cmd) = obj.get("execute").and_then(Value::as_str) else {
        return error("bad request: no execute found");
    };
    let args = obj.get("arguments");
    match cmd {
        "add_hostfwd" => add_hostfwd(args, ctl),
        "list_hostfwd" => list_hostfwd(ctl),
        "remove_hostfwd" => remove_hostfwd(args, ctl),
        _ => error("bad request: unknown execute"),
    }
}

fn port(v: Option<&Value>, allow_zero: bool) -> Option<u16> {
    let n = v?.as_u64()?;
    let p = u16::try_from(n).ok()?;
    (allow_zero || p != 0).then_some(p)
}

/// A string address that may be missing or empty (then `default`).
fn addr_arg(v: Option<&Value>, default: IpAddr) -> Option<IpAddr> {
    match v {
        None | Some(Value::Null) => Some(default),
        Some(Value::String(s)) if s.is_empty() => Some(default),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    }
}

fn add_hostfwd(args: Option<&Value>, ctl: &mut impl Control) -> String {
    let bad = |field: &str| error(&format!("bad request: add_hostfwd: bad arguments.{field}"));
    let get = |k: &str| args.and_then(|a| a.get(k));
    let proto = match get("proto").and_then(Value::as_str) {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        _ => return bad("proto"),
    };
    let Some(host_ip) = addr_arg(get("host_addr"), Ipv4Addr::UNSPECIFIED.into()) else {
        return bad("host_addr");
    };
    let Some(host_port) = port(get("host_port"), true) else {
        return bad("host_port");
    };
    let guest_ip = match addr_arg(get("guest_addr"), ctl.default_guest().into()) {
        Some(IpAddr::V4(a)) => a,
        _ => return bad("guest_addr"),
    };
    let Some(guest_port) = port(get("guest_port"), false) else {
        return bad("guest_port");
    };
    let spec = ForwardSpec {
        proto,
        host: SocketAddr::new(host_ip, host_port),
        guest: SocketAddrV4::new(guest_ip, guest_port),
    };
    match ctl.add_forward(spec) {
        Ok(fwd) if host_port == 0 => format!(
            "{{\"return\":{{\"id\":{},\"host_port\":{}}}}}",
            fwd.id,
            fwd.spec.host.port()
        ),
        Ok(fwd) => format!("{{\"return\":{{\"id\":{}}}}}", fwd.id),
        Err(ForwardError::Bind { err, .. }) => error(&format!(
            "bad request: add_hostfwd: slirp_add_hostfwd failed: {err}"
        )),
        Err(e) => error(&format!(
            "bad request: add_hostfwd: slirp_add_hostfwd failed: {e}"
        )),
    }
}

fn list_hostfwd(ctl: &mut impl Control) -> String {
    let entries: Vec<String> = ctl
        .list_forwards()
        .iter()
        .map(|f| {
            format!(
                "{{\"id\":{},\"proto\":\"{}\",\"host_addr\":\"{}\",\"host_port\":{},\"guest_addr\":\"{}\",\"guest_port\":{}}}",
                f.id,
                f.spec.proto.as_str(),
                f.spec.host.ip(),
                f.spec.host.port(),
                f.spec.guest.ip(),
                f.spec.guest.port()
            )
        })
        .collect();
    let list = entries.join(",");
    // slirp4netns emits `entries` at top level while its docs read
    // `.return.entries`; callers of both kinds exist.
    format!("{{\"return\":{{\"entries\":[{list}]}},\"entries\":[{list}]}}")
}

fn remove_hostfwd(args: Option<&Value>, ctl: &mut impl Control) -> String {
    let bad = || error("bad request: remove_hostfwd: bad arguments.id");
    let Some(id) = args.and_then(|a| a.get("id")).and_then(Value::as_u64) else {
        return bad();
    };
    match ctl.remove_forward(id) {
        Ok(()) => "{\"return\":{}}".to_string(),
        Err(ForwardError::NoSuchId(_)) => bad(),
        Err(_) => error("bad request: remove_hostfwd: slirp_remove_hostfwd failed"),
    }
}

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
    dir: Option<File>,
    clients: Vec<Option<Client>>,
    /// Slots in the order they were opened, to drop the oldest first.
    order: VecDeque<usize>,
}

impl ApiServer {
    /// Replace a stale file, listen, and allow only our own user in.
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(ApiError::Stale {
                    path: path.to_path_buf(),
                    err,
                });
            }
        }
        let bind_err = |err| ApiError::Bind {
            path: path.to_path_buf(),
            err,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // O_PATH: a handle to name the directory by, needing no read right.
        let dir = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent)
        {
            Ok(dir) => Some(dir),
            Err(e) => {
                // Removal by path still works outside a sandbox.
                log::warn!("api: cannot open {}: {e}", parent.display());
                None
            }
        };
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
            dir,
            clients: Vec::new(),
            order: VecDeque::new(),
        })
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
        match (&self.dir, self.path.file_name()) {
            (Some(dir), Some(name)) => {
                let _ = nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    name,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
            _ => {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Network;
    use crate::engine::EngineConfig;

    /// A real engine (its forwards bind real sockets); only the tap is
    /// absent, and these requests never need it.
    fn engine() -> Engine {
        let poll = mio::Poll::new().unwrap();
        let cfg = EngineConfig::new(Network::default(), 1500);
        Engine::new(
            &cfg,
            smoltcp::time::Instant::from_millis(0),
            poll.registry().try_clone().unwrap(),
        )
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn ask(e: &mut Engine, req: &str) -> String {
        respond(req.as_bytes(), true, e).unwrap()
    }

    #[test]
    fn add_list_remove_replies_are_byte_exact() {
        let mut e = engine();
        let p = free_port();
        let add = format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{p},"guest_addr":"10.0.2.100","guest_port":80}}}}"#
        );
        assert_eq!(ask(&mut e, &add), r#"{"return":{"id":1}}"#);
        let entry = format!(
            r#"{{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":{p},"guest_addr":"10.0.2.100","guest_port":80}}"#
        );
        assert_eq!(
            ask(&mut e, r#"{"execute":"list_hostfwd"}"#),
            format!(r#"{{"return":{{"entries":[{entry}]}},"entries":[{entry}]}}"#)
        );
        assert_eq!(
            ask(
                &mut e,
                r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#
            ),
            r#"{"return":{}}"#
        );
        assert_eq!(
            ask(&mut e, r#"{"execute":"list_hostfwd"}"#),
            r#"{"return":{"entries":[]},"entries":[]}"#
        );
        // Removal closed the listener: the port can be bound again.
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn missing_or_empty_addresses_take_the_defaults() {
        let mut e = engine();
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"","host_port":0,"guest_addr":"","guest_port":5353}}"#;
        assert!(ask(&mut e, add).starts_with(r#"{"return":{"id":1,"host_port":"#));
        let add =
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":2}}"#;
        assert!(ask(&mut e, add).starts_with(r#"{"return":{"id":2,"host_port":"#));
        let list = e.list_forwards();
        assert_eq!(list[0].spec.proto, Proto::Udp);
        assert_eq!(list[1].spec.host.ip(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(list[1].spec.guest, "10.0.2.100:2".parse().unwrap());
    }

    #[test]
    fn host_port_zero_reports_the_port_picked() {
        let mut e = engine();
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":0,"guest_port":80}}"#;
        let reply = ask(&mut e, add);
        let v: Value = serde_json::from_str(&reply).unwrap();
        let port = v["return"]["host_port"].as_u64().unwrap();
        assert_ne!(port, 0);
        // Something really listens there.
        std::net::TcpStream::connect(("::1", port as u16)).unwrap();
        let list = ask(&mut e, r#"{"execute":"list_hostfwd"}"#);
        assert!(
            list.contains(&format!(r#""host_addr":"::1","host_port":{port}"#)),
            "{list}"
        );
    }

    #[test]
    fn every_error_text() {
        let mut e = engine();
        let cases = [
            ("not json", "bad request: cannot parse JSON"),
            ("{\"execute\":", "bad request: cannot parse JSON"),
            ("", "bad request: cannot parse JSON"),
            ("[1,2]", "bad request: json_object() failed"),
            ("\"add_hostfwd\"", "bad request: json_object() failed"),
            ("{}", "bad request: no execute found"),
            ("{\"execute\":7}", "bad request: no execute found"),
            ("{\"execute\":\"reboot\"}", "bad request: unknown execute"),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}"#,
                "bad request: add_hostfwd: bad arguments.proto",
            ),
            (
                r#"{"execute":"add_hostfwd"}"#,
                "bad request: add_hostfwd: bad arguments.proto",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"nowhere","host_port":1,"guest_port":1}}"#,
                "bad request: add_hostfwd: bad arguments.host_addr",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"80","guest_port":1}}"#,
                "bad request: add_hostfwd: bad arguments.host_port",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":65536,"guest_port":1}}"#,
                "bad request: add_hostfwd: bad arguments.host_port",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_addr":"10.0.2.x","guest_port":1}}"#,
                "bad request: add_hostfwd: bad arguments.guest_addr",
            ),
            (
                r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":0}}"#,
                "bad request: add_hostfwd: bad arguments.guest_port",
            ),
            (
                r#"{"execute":"remove_hostfwd","arguments":{"id":99}}"#,
                "bad request: remove_hostfwd: bad arguments.id",
            ),
            (
                r#"{"execute":"remove_hostfwd","arguments":{"id":"1"}}"#,
                "bad request: remove_hostfwd: bad arguments.id",
            ),
            (
                r#"{"execute":"remove_hostfwd"}"#,
                "bad request: remove_hostfwd: bad arguments.id",
            ),
        ];
        for (req, desc) in cases {
            assert_eq!(
                ask(&mut e, req),
                format!("{{\"error\":{{\"desc\":\"{desc}\"}}}}"),
                "request {req:?}"
            );
        }
    }

    #[test]
    fn too_large_message() {
        let mut e = engine();
        let big = format!(
            "{{\"execute\":\"list_hostfwd\",\"pad\":\"{}\"}}",
            "x".repeat(5000)
        );
        assert_eq!(
            ask(&mut e, &big),
            r#"{"error":{"desc":"bad request: too large message"}}"#
        );
    }

    #[test]
    fn a_port_in_use_is_slirp_add_hostfwd_failed() {
        let mut e = engine();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = taken.local_addr().unwrap().port();
        let r = ask(
            &mut e,
            &format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{p},"guest_port":1}}}}"#
            ),
        );
        assert!(
            r.starts_with(
                r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed: "#
            ),
            "{r}"
        );
        assert!(r.contains("in use"), "{r}");
    }

    #[test]
    fn waits_for_a_complete_value_unless_the_client_closed() {
        let mut e = engine();
        let partial = br#"{"execute":"list_hos"#;
        assert_eq!(respond(partial, false, &mut e), None);
        assert!(
            respond(partial, true, &mut e)
                .unwrap()
                .contains("cannot parse JSON")
        );
        assert_eq!(respond(b"  \n", false, &mut e), None);
        // podman: value plus newline, connection still open.
        let full = b"{\"execute\":\"list_hostfwd\"}\n";
        assert!(
            respond(full, false, &mut e)
                .unwrap()
                .starts_with("{\"return\"")
        );
    }

    #[test]
    fn ids_start_at_1_and_are_never_reused() {
        let mut e = engine();
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":0,"guest_port":1}}"#;
        assert!(ask(&mut e, add).starts_with(r#"{"return":{"id":1,"#));
        ask(
            &mut e,
            r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#,
        );
        assert!(ask(&mut e, add).starts_with(r#"{"return":{"id":2,"#));
    }
}
