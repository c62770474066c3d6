//! The API's protocol: one JSON request in, one JSON reply out.
//!
//! Parsing, executing against a [`Control`] (the engine) and building the
//! reply; no sockets here. Replies and error texts are slirp4netns's,
//! byte for byte, built with serde from structs whose field order is the
//! wire order.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use serde_json::Value;

use crate::engine::{Engine, Forward, ForwardError, ForwardSpec, Proto};
use crate::host::Host;

/// A request of this many bytes or more is refused.
pub const MAX_REQUEST: usize = 4096;

/// What the API asks of the rest of netferry.
pub trait Control {
    fn add_forward(&mut self, spec: ForwardSpec) -> Result<Forward, ForwardError>;
    fn remove_forward(&mut self, id: u64) -> Result<(), ForwardError>;
    fn list_forwards(&self) -> Vec<Forward>;
    /// `guest_addr` when the request leaves it out: network+100.
    fn default_guest(&self) -> Ipv4Addr;
    /// What netferry is doing now, for `status`.
    fn status(&self) -> StatusReply;
}

/// The reply to `{"execute":"status"}` (beyond slirp4netns):
/// `{"return":{"flows":{"tcp":N,"tcp_connecting":N,"udp":N,"ping":N},
/// "forwards":N,"frames_from_guest":N,"frames_dropped":N,
/// "bytes_to_host":N,"bytes_to_guest":N,"refused_at_cap":N,"defects":N}}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatusReply {
    pub flows: FlowCounts,
    pub forwards: usize,
    pub frames_from_guest: u64,
    pub frames_dropped: u64,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    pub refused_at_cap: u64,
    /// Panics the engine caught (each a defect, costing one flow).
    pub defects: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FlowCounts {
    pub tcp: usize,
    pub tcp_connecting: usize,
    pub udp: usize,
    pub ping: usize,
}

impl<H: Host> Control for Engine<H> {
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
        self.plan().v4.guest
    }
    fn status(&self) -> StatusReply {
        let (tcp, tcp_connecting, udp, ping) = self.flow_counts();
        let s = self.stats();
        StatusReply {
            flows: FlowCounts {
                tcp,
                tcp_connecting,
                udp,
                ping,
            },
            forwards: self.forwards().count(),
            frames_from_guest: s.frames_from_guest,
            frames_dropped: s.frames_dropped,
            bytes_to_host: s.bytes_to_host,
            bytes_to_guest: s.bytes_to_guest,
            refused_at_cap: s.refused_at_cap,
            defects: s.defects,
        }
    }
}

/// `{"return":...}`
#[derive(Serialize)]
struct Return<T> {
    #[serde(rename = "return")]
    ret: T,
}

/// `{}`
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Added {
    id: u64,
    /// Only when the request asked for port 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    host_port: Option<u16>,
}

#[derive(Serialize)]
struct Entry {
    id: u64,
    proto: &'static str,
    host_addr: IpAddr,
    host_port: u16,
    guest_addr: IpAddr,
    guest_port: u16,
}

#[derive(Serialize)]
struct Entries<'a> {
    entries: &'a [Entry],
}

/// slirp4netns emits `entries` at top level while its docs read
/// `.return.entries`; callers of both kinds exist, so both are there.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(rename = "return")]
    ret: Entries<'a>,
    entries: &'a [Entry],
}

#[derive(Serialize)]
struct Desc<'a> {
    desc: &'a str,
}

#[derive(Serialize)]
struct Error<'a> {
    error: Desc<'a>,
}

fn json(value: &impl Serialize) -> String {
    // Serializing these plain structs to a String cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn error(desc: &str) -> String {
    json(&Error {
        error: Desc { desc },
    })
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
        "status" => json(&Return { ret: ctl.status() }),
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
    // beyond slirp4netns: an IPv6 guest address too.
    let guest_ip = match addr_arg(get("guest_addr"), ctl.default_guest().into()) {
        Some(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_loopback() => a,
        _ => return bad("guest_addr"),
    };
    let Some(guest_port) = port(get("guest_port"), false) else {
        return bad("guest_port");
    };
    let spec = ForwardSpec {
        proto,
        host: SocketAddr::new(host_ip, host_port),
        guest: SocketAddr::new(guest_ip, guest_port),
    };
    match ctl.add_forward(spec) {
        Ok(fwd) => json(&Return {
            ret: Added {
                id: fwd.id,
                host_port: (host_port == 0).then_some(fwd.spec.host.port()),
            },
        }),
        Err(ForwardError::Bind { err, .. }) => error(&format!(
            "bad request: add_hostfwd: slirp_add_hostfwd failed: {err}"
        )),
        Err(e) => error(&format!(
            "bad request: add_hostfwd: slirp_add_hostfwd failed: {e}"
        )),
    }
}

fn list_hostfwd(ctl: &mut impl Control) -> String {
    let entries: Vec<Entry> = ctl
        .list_forwards()
        .iter()
        .map(|f| Entry {
            id: f.id,
            proto: f.spec.proto.as_str(),
            host_addr: f.spec.host.ip(),
            host_port: f.spec.host.port(),
            guest_addr: f.spec.guest.ip(),
            guest_port: f.spec.guest.port(),
        })
        .collect();
    json(&Listed {
        ret: Entries { entries: &entries },
        entries: &entries,
    })
}

fn remove_hostfwd(args: Option<&Value>, ctl: &mut impl Control) -> String {
    let bad = || error("bad request: remove_hostfwd: bad arguments.id");
    let Some(id) = args.and_then(|a| a.get("id")).and_then(Value::as_u64) else {
        return bad();
    };
    match ctl.remove_forward(id) {
        Ok(()) => json(&Return { ret: Empty {} }),
        Err(ForwardError::NoSuchId(_)) => bad(),
        Err(_) => error("bad request: remove_hostfwd: slirp_remove_hostfwd failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::host::SimHost;

    type Engine = crate::engine::Engine<SimHost>;

    /// A real engine on the simulated host: listeners are the host's,
    /// and these requests never need the tap.
    fn engine() -> Engine {
        let cfg = EngineConfig::new(crate::slirp4netns::default_plan(false), 1500);
        Engine::new(
            &cfg,
            smoltcp::time::Instant::from_millis(0),
            SimHost::new(1),
        )
    }

    fn free_port() -> u16 {
        8080
    }

    fn listening(e: &Engine, port: u16) -> bool {
        (0..16).any(|id| e.host().listener(id).is_some_and(|l| l.addr.port() == port))
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
        // Removal closed the listener.
        assert!(!listening(&e, p));
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
        // podman 5 sends `"guest_addr":""`: the guest's own address.
        assert_eq!(list[0].spec.guest, "10.0.2.100:5353".parse().unwrap());
        assert_eq!(list[1].spec.host.ip(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(list[1].spec.guest, "10.0.2.100:2".parse().unwrap());
        assert_eq!(list[1].spec.host.ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
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
        assert!(listening(&e, port as u16));
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
    fn status_counts_forwards_and_flows() {
        let mut e = engine();
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":80}}"#;
        ask(&mut e, add);
        let v: Value = serde_json::from_str(&ask(&mut e, r#"{"execute":"status"}"#)).unwrap();
        assert_eq!(v["return"]["forwards"], 1);
        assert_eq!(v["return"]["flows"]["tcp"], 0);
        assert_eq!(v["return"]["bytes_to_host"], 0);
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
        let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_port":1}}"#;
        assert_eq!(ask(&mut e, add), r#"{"return":{"id":1}}"#);
        let r = ask(&mut e, add);
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
