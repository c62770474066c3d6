//! Fuzz harnesses: what each fuzz target runs, so that `fuzz/` stays a
//! set of one-line wrappers and the replay test (`tests/fuzz_replay.rs`)
//! runs the committed corpora and past crashes through the very same
//! code without libFuzzer.
//!
//! Each harness takes the raw input, feeds it to library code on the
//! simulated host (never a real socket, file or clock), and panics when
//! an invariant breaks, naming it. Not part of netferry's API.

mod check;
pub mod frames;
pub mod trains;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStringExt;

use arbitrary::Unstructured;
use serde_json::Value;
use smoltcp::time::Instant;
use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress};

pub use check::{FrameCheck, TapWrites, Written};

use crate::api::respond;
use crate::cli::{self, Parsed};
use crate::engine::{DhcpServer, Engine, EngineConfig};
use crate::host::SimHost;
use crate::slirp4netns::Network;

/// What a fuzz target runs on one input; it panics on a broken invariant.
pub type Harness = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/NAME.rs` and the corpus
/// directories name them.
pub const TARGETS: &[(&str, Harness)] = &[
    ("frames", frames::run),
    ("api", api),
    ("dhcp", dhcp),
    ("resolv_conf", resolv_conf),
    ("cli", cli),
];

/// Requests run from one input at most.
const MAX_REQUESTS: usize = 16;
/// Arguments taken from one input at most.
const MAX_ARGS: usize = 32;

/// Each line of the input is one API request (with the client's EOF),
/// against one engine: every reply is JSON of a documented shape.
pub fn api(input: &[u8]) {
    let cfg = EngineConfig::new(crate::slirp4netns::default_plan(true), 1500);
    let mut engine = Engine::new(&cfg, Instant::from_millis(0), SimHost::new(1));
    for request in input.split(|&b| b == b'\n').take(MAX_REQUESTS) {
        let Some(reply) = respond(request, true, &mut engine) else {
            panic!("no reply to a complete request");
        };
        if let Err(e) = reply_shape(&reply, engine.forwards().count()) {
            panic!("reply {reply:?}: {e}");
        }
    }
}

/// `{"return":{}}`, `{"return":{"id":N[,"host_port":P]}}`,
/// `{"return":{"entries":[..]},"entries":[..]}` (with one entry per
/// forward in place) or `{"error":{"desc":"..."}}`.
fn reply_shape(reply: &str, forwards: usize) -> Result<(), String> {
    let value: Value = serde_json::from_str(reply).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    match keys.as_slice() {
        ["error"] => {
            let err = obj["error"].as_object().ok_or("error is not an object")?;
            match err.get("desc").and_then(Value::as_str) {
                Some(desc) if err.len() == 1 && !desc.is_empty() => Ok(()),
                _ => Err("error is not {\"desc\": non-empty string}".into()),
            }
        }
        ["return"] => {
            let ret = obj["return"].as_object().ok_or("return is not an object")?;
            let id = ret.get("id").map(Value::is_u64);
            let port = ret
                .get("host_port")
                .map(|p| p.as_u64().is_some_and(|p| p > 0));
            match (ret.len(), id, port) {
                (0, None, None) | (1, Some(true), None) | (2, Some(true), Some(true)) => Ok(()),
                _ => Err("return is neither {} nor {id[, host_port]}".into()),
            }
        }
        ["entries", "return"] | ["return", "entries"] => {
            let top = obj["entries"].as_array().ok_or("entries is not an array")?;
            let inner = obj["return"].get("entries").and_then(Value::as_array);
            if inner != Some(top) || obj["return"].as_object().map(|o| o.len()) != Some(1) {
                return Err("return.entries differs from entries".into());
            }
            if top.len() != forwards {
                return Err(format!("{} entries for {forwards} forwards", top.len()));
            }
            Ok(())
        }
        _ => Err(format!("top-level keys {keys:?}")),
    }
}

/// DHCP packets, one after another, to one server: every answer is of
/// the right kind, echoes the transaction, offers an address of the pool,
/// and a client keeps its address (until it releases it) while no two
/// clients share one.
pub fn dhcp(input: &[u8]) {
    let net = Network::default();
    let mut server = DhcpServer::new(crate::slirp4netns::default_plan(false).v4);
    let mut leases: HashMap<EthernetAddress, Ipv4Addr> = HashMap::new();
    let mut u = Unstructured::new(input);
    while !u.is_empty() {
        let len = usize::from(u.arbitrary::<u16>().unwrap_or(0)).min(u.len());
        let Ok(bytes) = u.bytes(len) else {
            break;
        };
        let Ok(packet) = DhcpPacket::new_checked(bytes) else {
            continue;
        };
        let Ok(req) = DhcpRepr::parse(&packet) else {
            continue;
        };
        let mac = req.client_hardware_address;
        if req.message_type == DhcpMessageType::Release {
            // The client gives its address up; another may get it.
            leases.remove(&mac);
        }
        let Some(a) = server.handle(Instant::from_secs(0), &req) else {
            continue;
        };
        assert_eq!(a.transaction_id, req.transaction_id, "transaction id");
        assert_eq!(a.client_mac, mac, "client MAC");
        match (req.message_type, a.message_type) {
            (DhcpMessageType::Discover, DhcpMessageType::Offer)
            | (DhcpMessageType::Request, DhcpMessageType::Ack) => {
                let ip = a.your_ip;
                assert!(
                    (net.dhcp_start..=net.dhcp_end).contains(&ip),
                    "{ip} offered, outside the pool"
                );
                let had = *leases.entry(mac).or_insert(ip);
                assert_eq!(had, ip, "{mac} had {had}, now gets {ip}");
                let holders = leases.values().filter(|&&l| l == ip).count();
                assert_eq!(holders, 1, "{ip} given to {holders} clients");
            }
            (DhcpMessageType::Request, DhcpMessageType::Nak) => {
                assert!(a.your_ip.is_unspecified(), "a NAK offering {}", a.your_ip);
            }
            (asked, answered) => panic!("{answered:?} in answer to {asked:?}"),
        }
    }
}

/// A resolv.conf text: the nameserver found is the address on the first
/// `nameserver` line whose address parses, and none is found only when
/// there is no such line.
pub fn resolv_conf(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let found = crate::resolv::first_nameserver(&text);
    let first = text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["nameserver", addr, ..] => addr.parse().ok(),
            _ => None,
        }
    });
    assert_eq!(found, first, "for {text:?}");
}

/// Argument vectors (NUL-separated, after `netferry`) through the parser
/// and validation the binary uses: every refusal says something.
pub fn cli(input: &[u8]) {
    let argv = std::iter::once(OsString::from("netferry")).chain(
        input
            .split(|&b| b == 0)
            .take(MAX_ARGS)
            .map(|a| OsString::from_vec(a.to_vec())),
    );
    match cli::parse(argv) {
        Parsed::Run(args) => match crate::slirp4netns::config(&args) {
            Ok(cfg) => assert!(
                (1..=crate::config::MAX_MTU).contains(&cfg.mtu),
                "MTU {} accepted",
                cfg.mtu
            ),
            Err(e) => assert!(!e.to_string().is_empty(), "an empty error: {e:?}"),
        },
        Parsed::Print(text) => assert!(!text.is_empty(), "nothing to print"),
        Parsed::Usage(text) | Parsed::RunUsage(text) => {
            assert!(!text.trim().is_empty(), "an empty usage error")
        }
        // `netferry run`: every -p spec is either forwards or a clear error.
        Parsed::RunCommand(args) => {
            for spec in &args.publish {
                match crate::run::parse_publish(spec, std::net::Ipv4Addr::new(10, 0, 2, 100)) {
                    Ok(forwards) => assert!(!forwards.is_empty(), "{spec}: no forwards"),
                    Err(e) => assert!(!e.to_string().is_empty(), "an empty error for {spec}"),
                }
            }
        }
        Parsed::Status(path) => assert!(!path.as_os_str().is_empty(), "status without a socket"),
    }
}
