//! Every committed fuzz input, the seed corpora (`fuzz/seeds/TARGET/`)
//! and the inputs of past failures (`fuzz/regressions/TARGET/`), through
//! the same harness the fuzz target runs, so a regression fails
//! `cargo test` without libFuzzer or a nightly toolchain.
//!
//! `cargo test --test fuzz_replay -- --ignored` rewrites the seeds from
//! the frames and requests below (the golden frames are the engine
//! tests' captures of real clients).

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use netferry::fuzzing::TARGETS;
use netferry::fuzzing::frames::{Action, Framing, HostEvent, encode};
use netferry::fuzzing::trains::FragTrain;
use netferry::host::sim::Outcome;
use smoltcp::wire::{IpAddress, UdpPacket};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_past_failure_passes_its_harness() {
    let mut failed = Vec::new();
    for (target, run) in TARGETS {
        let seeds = files(&fuzz_dir().join("seeds").join(target));
        assert!(!seeds.is_empty(), "no seeds for {target}");
        let regressions = files(&fuzz_dir().join("regressions").join(target));
        for file in seeds.iter().chain(&regressions) {
            let input = fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "failing inputs: {failed:#?}");
}

/// The harnesses decode their inputs with `arbitrary`, so a release build
/// whose dependencies leave `arbitrary` out cannot be compiling them: they
/// (and the simulated host) come only with the `test-support` feature,
/// which this test binary is built with.
#[test]
fn a_release_build_leaves_the_harnesses_out() {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--offline", "--locked", "--edges", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("netferry"), "no netferry in {tree}");
    assert!(
        !tree.lines().any(|l| l.starts_with("arbitrary ")),
        "a release build pulls in arbitrary:\n{tree}"
    );
}

// ---- seeds ----

/// Captured from a real client (see src/engine/tests.rs).
const UDHCPC_DISCOVER: &str = "ffffffffffffe610cc2e3e2208004500014800000000401179a600000000ffffffff0044004301347cd2010106009c6ecd430000000000000000000000000000000000000000e610cc2e3e2200000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000638253633501013902024037070103060c0f1c2a3c0c756468637020312e33352e303d0701e610cc2e3e22ff0000000000000000000000000000000000000000";
/// Captured from a real client (see src/engine/tests.rs).
const BUSYBOX_PING: &str = "52550a00020286b2737e18f7080045000054d656400040014bed0a0002640a000202080009bb37dd0000422f743800000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
/// Captured from a real client (see src/engine/tests.rs).
const LINUX_SYN: &str = "52550a00020286b2737e18f708004500003c73c640004006ae900a0002640a000202c1181f90f72edb8b00000000a002faf09fce0000020405b40402080a74166d5e000000000103030a";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NEVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const REFUSE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const UNREACHABLE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
const MTU_1500: u8 = 0;
const MTU_576: u8 = 2;
const MTU_65520: u8 = 3;
/// The simulated host's first three sockets are the harness's forwards;
/// outbound flows follow.
const FIRST_FLOW: u8 = 3;

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn guest6() -> Ipv6Addr {
    v6("fd00::1234")
}

/// An IPv4 header with zero length and checksum (the harness fixes them).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, next, hop];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(data);
    p
}

/// A SYN with MSS 1460 and window scale 7.
fn syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&1000u32.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0x70, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7]);
    p
}

fn echo(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut p = vec![kind, 0, 0, 0, 0x12, 0x34, 0, 1];
    p.extend_from_slice(data);
    p
}

fn frame(framing: Framing, bytes: Vec<u8>) -> Action {
    Action::Frame {
        framing,
        broadcast: false,
        fix: framing != Framing::Raw,
        train: 0,
        bytes,
    }
}

fn v4(bytes: Vec<u8>) -> Action {
    frame(Framing::Ipv4, bytes)
}

fn v6f(bytes: Vec<u8>) -> Action {
    frame(Framing::Ipv6, bytes)
}

/// The guest's answer to the engine's last TCP segment.
fn ack(flags: u8, data: &[u8]) -> Action {
    Action::Answer {
        segment: 0,
        flags,
        window: 0xffff,
        data: data.to_vec(),
    }
}

const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;

fn host(index: u8, event: HostEvent) -> Action {
    Action::Host { index, event }
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&GUEST.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// A UDP datagram with its checksum, as IPv4 fragments of `piece` bytes.
fn udp_fragments(dst: Ipv4Addr, data: &[u8], piece: usize) -> Vec<Action> {
    let mut dgram = udp(40000, 9, data);
    let len = dgram.len() as u16;
    let mut p = UdpPacket::new_unchecked(&mut dgram[..]);
    p.set_len(len);
    p.fill_checksum(&IpAddress::Ipv4(GUEST), &IpAddress::Ipv4(dst));
    let chunks: Vec<&[u8]> = dgram.chunks(piece).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut ip = ipv4(GUEST, dst, 17, chunk);
            let off = (i * piece / 8) as u16 | if i + 1 < chunks.len() { 0x2000 } else { 0 };
            ip[6..8].copy_from_slice(&off.to_be_bytes());
            ip[4..6].copy_from_slice(&77u16.to_be_bytes());
            v4(ip)
        })
        .collect()
}

fn udp6_fragments(dst: Ipv6Addr, data: &[u8], piece: usize) -> Vec<Action> {
    let mut dgram = udp(40000, 9, data);
    let len = dgram.len() as u16;
    let mut p = UdpPacket::new_unchecked(&mut dgram[..]);
    p.set_len(len);
    p.fill_checksum(&IpAddress::Ipv6(guest6()), &IpAddress::Ipv6(dst));
    let chunks: Vec<&[u8]> = dgram.chunks(piece).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let off = (i * piece) as u16 | u16::from(i + 1 < chunks.len());
            let mut body = vec![17, 0];
            body.extend_from_slice(&off.to_be_bytes());
            body.extend_from_slice(&9u32.to_be_bytes());
            body.extend_from_slice(chunk);
            v6f(ipv6(guest6(), dst, 44, 64, &body))
        })
        .collect()
}

/// A UDP datagram of `len` bytes to a remote host as fragments of
/// `piece` bytes, in the order and with the faults `order` and `mangle`
/// say (see `FragTrain`).
fn frag_train(v6: bool, len: u16, piece: u16, order: u8, mangle: u8) -> Action {
    Action::Fragments(FragTrain {
        v6,
        dst: 0,
        proto: 0,
        id: 0x2222,
        len,
        over: 0,
        piece,
        order,
        mangle,
        seed: 3,
    })
}

/// A virtio-net header as a guest's kernel writes it (native byte order).
fn vnet(flags: u8, gso_type: u8, fields: [u16; 4]) -> [u8; 10] {
    let mut h = [flags, gso_type, 0, 0, 0, 0, 0, 0, 0, 0];
    for (i, f) in fields.iter().enumerate() {
        h[2 + 2 * i..4 + 2 * i].copy_from_slice(&f.to_ne_bytes());
    }
    h
}

const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_UDP_L4: u8 = 5;
/// `TapRead`'s index of the 10-byte virtio-net header.
const VNET_10: u8 = 1;

fn ndp(kind: u8, target: Option<Ipv6Addr>) -> Vec<u8> {
    let mut p = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    if let Some(t) = target {
        p.extend_from_slice(&t.octets());
    }
    p.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 1]);
    p
}

/// A solicited neighbour advertisement for `target`, with our MAC.
fn neighbour_advert(target: Ipv6Addr) -> Vec<u8> {
    let mut p = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    p.extend_from_slice(&target.octets());
    p.extend_from_slice(&[2, 1, 2, 0, 0, 0, 0, 1]);
    p
}

fn frames_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use HostEvent::*;
    let gw_ll = v6("fe80::2");
    let mut seeds = vec![
        ("udhcpc-discover", encode(MTU_1500, &[frame(Framing::Raw, unhex(UDHCPC_DISCOVER))])),
        ("busybox-ping", encode(MTU_1500, &[frame(Framing::Raw, unhex(BUSYBOX_PING))])),
        (
            "linux-syn-accepted",
            encode(
                MTU_1500,
                &[
                    frame(Framing::Raw, arp_request(GATEWAY)),
                    frame(Framing::Raw, unhex(LINUX_SYN)),
                    Action::Wake,
                    ack(ACK, b""),
                    ack(PSH_ACK, b"GET / HTTP/1.0\r\n\r\n"),
                    host(FIRST_FLOW, Take(100)),
                    host(FIRST_FLOW, Send(b"HTTP/1.0 200 OK\r\n\r\nhello".to_vec())),
                    host(FIRST_FLOW, Fin),
                    ack(ACK, b""),
                    ack(FIN_ACK, b""),
                    Action::Secs(3),
                ],
            ),
        ),
        (
            // The same with the tap's offload: the guest's MSS widened, a
            // large segment for the tap to split.
            "linux-syn-offload-large-segment",
            encode(
                MTU_1500 | 0x80,
                &[
                    frame(Framing::Raw, arp_request(GATEWAY)),
                    frame(Framing::Raw, unhex(LINUX_SYN)),
                    Action::Wake,
                    ack(ACK, b""),
                    host(FIRST_FLOW, Send(vec![b'x'; 30_000])),
                    Action::Wake,
                    ack(ACK, b""),
                    host(FIRST_FLOW, Fin),
                    Action::Secs(3),
                ],
            ),
        ),
        (
            "arp-then-ping-dns",
            encode(MTU_1500, &[frame(Framing::Raw, arp_request(DNS)), v4(ipv4(GUEST, DNS, 1, &echo(8, b"ping")))]),
        ),
        (
            "dns-query-and-answer",
            encode(
                MTU_1500,
                &[
                    v4(ipv4(GUEST, DNS, 17, &udp(40000, 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01"))),
                    host(FIRST_FLOW, Reply(b"\x12\x34\x81\x80answer".to_vec())),
                    Action::Secs(200),
                    Action::Wake,
                ],
            ),
        ),
        (
            "udp-big-reply-fragmented",
            encode(
                MTU_576,
                &[
                    v4(ipv4(GUEST, REMOTE, 17, &udp(40001, 9, b"hello"))),
                    host(FIRST_FLOW, ReplyPattern(3000)),
                    host(FIRST_FLOW, Refused),
                    v4(ipv4(GUEST, REMOTE, 17, &udp(40001, 9, b"again"))),
                ],
            ),
        ),
        (
            // With offload on: a train of 48-byte datagrams, as a
            // program's UDP_SEGMENT send crosses the tap, and a reply.
            "udp-train",
            encode(
                MTU_1500 | 0x80,
                &[
                    Action::Frame {
                        framing: Framing::Ipv4,
                        broadcast: false,
                        fix: true,
                        train: 2,
                        bytes: ipv4(GUEST, REMOTE, 17, &udp(40040, 443, &[9u8; 200])),
                    },
                    host(FIRST_FLOW, Reply(b"reply".to_vec())),
                ],
            ),
        ),
        (
            "udp-fragments",
            encode(
                MTU_1500,
                &udp_fragments(REMOTE, &[7u8; 100], 48)
                    .into_iter()
                    .chain([host(FIRST_FLOW, Reply(b"reply".to_vec()))])
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "ping-remote",
            encode(
                MTU_1500,
                &[v4(ipv4(GUEST, REMOTE, 1, &echo(8, b"abcdefgh"))), host(FIRST_FLOW, Reply(echo(0, b"abcdefgh")))],
            ),
        ),
        (
            "tcp-refused-unreachable-never",
            encode(
                MTU_1500,
                &[
                    v4(ipv4(GUEST, REFUSE, 6, &syn(40010, 80))),
                    v4(ipv4(GUEST, UNREACHABLE, 6, &syn(40011, 80))),
                    v4(ipv4(GUEST, NEVER, 6, &syn(40012, 80))),
                    Action::Wake,
                    Action::Secs(120),
                    Action::Wake,
                ],
            ),
        ),
        (
            "tcp-gateway-disabled-dns-port",
            encode(MTU_1500, &[v4(ipv4(GUEST, DNS, 6, &syn(40013, 80))), v4(ipv4(GUEST, Ipv4Addr::new(10, 0, 2, 9), 6, &syn(40014, 80)))]),
        ),
        (
            "ipv6-router-solicitation",
            encode(
                MTU_1500,
                &[Action::Frame {
                    framing: Framing::Ipv6,
                    broadcast: true,
                    fix: true,
                    train: 0,
                    bytes: ipv6(v6("fe80::1"), v6("ff02::2"), 58, 255, &ndp(133, None)),
                }],
            ),
        ),
        (
            "ipv6-neighbour-solicitation-gateway",
            encode(
                MTU_1500,
                &[v6f(ipv6(guest6(), v6("ff02::1:ff00:2"), 58, 255, &ndp(135, Some(v6("fd00::2")))))],
            ),
        ),
        (
            "ipv6-ping-gateway-and-remote",
            encode(
                MTU_1500,
                &[
                    v6f(ipv6(guest6(), v6("fd00::2"), 58, 64, &echo(128, b"ping6"))),
                    v6f(ipv6(guest6(), v6("2001:db8::1"), 58, 64, &echo(128, b"ping6"))),
                    host(FIRST_FLOW, Reply(echo(129, b"ping6"))),
                ],
            ),
        ),
        (
            "ipv6-udp-and-tcp",
            encode(
                MTU_1500,
                &[
                    v6f(ipv6(guest6(), v6("2001:db8::1"), 17, 64, &udp(40020, 53, b"query"))),
                    host(FIRST_FLOW, ReplyPattern(4000)),
                    v6f(ipv6(guest6(), v6("ff02::1:ff00:2"), 58, 255, &ndp(135, Some(v6("fd00::2"))))),
                    v6f(ipv6(guest6(), v6("fd00::2"), 6, 64, &syn(40021, 8080))),
                    Action::Wake,
                    v6f(ipv6(guest6(), v6("fe80::2"), 58, 255, &neighbour_advert(guest6()))),
                    Action::Wake,
                    ack(ACK, b""),
                    host(FIRST_FLOW + 1, SendPattern(5000)),
                    ack(ACK, b""),
                    ack(RST, b""),
                    v6f(ipv6(gw_ll, v6("fd00::3"), 6, 64, &syn(40022, 53))),
                ],
            ),
        ),
        (
            "ipv6-fragments",
            encode(
                MTU_1500,
                &udp6_fragments(v6("2001:db8::1"), &[9u8; 100], 48)
                    .into_iter()
                    .chain([host(FIRST_FLOW, Reply(b"reply".to_vec()))])
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "forward-clients",
            encode(
                MTU_1500,
                &[
                    frame(Framing::Raw, arp_request(GATEWAY)),
                    Action::Client { forward: 0, client: 1, port: 50000, data: Vec::new() },
                    ack(SYN_ACK, b""),
                    ack(PSH_ACK, b"hello client"),
                    host(FIRST_FLOW, Take(100)),
                    Action::Client { forward: 1, client: 0, port: 50001, data: b"dgram".to_vec() },
                    Action::Client { forward: 2, client: 3, port: 50002, data: Vec::new() },
                    Action::Wake,
                    Action::Secs(5),
                    Action::Wake,
                ],
            ),
        ),
        (
            "syn-flood-to-caps",
            encode(
                MTU_65520,
                &(0..12)
                    .map(|i| v4(ipv4(GUEST, if i % 2 == 0 { NEVER } else { REMOTE }, 6, &syn(41000 + i, 80))))
                    .chain([Action::Wake, host(FIRST_FLOW, Connect(Outcome::Accept)), Action::Wake])
                    .collect::<Vec<_>>(),
            ),
        ),
    ];
    seeds.extend([
        (
            // The largest datagram IPv4 carries, 45 fragments shuffled.
            "ipv4-fragments-largest-datagram-shuffled",
            encode(
                MTU_1500,
                &[
                    frag_train(false, 65_515, 1480, 2, 0),
                    host(FIRST_FLOW, Reply(b"reply".to_vec())),
                ],
            ),
        ),
        (
            "ipv6-fragments-reversed-duplicate-overlap",
            encode(
                MTU_1500,
                &[
                    frag_train(true, 3000, 1232, 1, 1),
                    frag_train(true, 3000, 1232, 0, 2),
                ],
            ),
        ),
        (
            "ipv4-fragments-one-missing",
            encode(
                MTU_576,
                &[
                    frag_train(false, 4000, 552, 0, 4),
                    Action::Secs(31),
                    Action::Wake,
                ],
            ),
        ),
        (
            // With offload on: a guest's UDP_SEGMENT send of 4-byte
            // datagrams read behind its virtio-net header.
            "vnet-udp-train-small-gso-size",
            encode(
                MTU_1500 | 0x80,
                &[Action::TapRead {
                    header: VNET_10,
                    vnet: vnet(NEEDS_CSUM, GSO_UDP_L4, [42, 4, 34, 6]),
                    framing: Framing::Ipv4,
                    fix: true,
                    head: ipv4(GUEST, REMOTE, 17, &udp(40050, 443, b"")),
                    pad: 100,
                }],
            ),
        ),
        (
            // With offload on: the guest's kernel sends a 30,000-byte TCP
            // segment for netferry to take whole.
            "vnet-guest-tso-segment",
            encode(
                MTU_1500 | 0x80,
                &[
                    frame(Framing::Raw, arp_request(GATEWAY)),
                    frame(Framing::Raw, unhex(LINUX_SYN)),
                    Action::Wake,
                    ack(ACK, b""),
                    Action::BigAnswer {
                        segment: 0,
                        flags: PSH_ACK,
                        window: 0xffff,
                        len: 30_000,
                        header: VNET_10,
                        vnet: vnet(NEEDS_CSUM, GSO_TCPV4, [54, 1448, 34, 16]),
                    },
                    host(FIRST_FLOW, Take(40_000)),
                    host(FIRST_FLOW, SendPattern(60_000)),
                    Action::Wake,
                ],
            ),
        ),
        (
            "big-udp-datagram-and-reply-offload",
            encode(
                MTU_1500 | 0x80,
                &[
                    Action::Big {
                        framing: Framing::Ipv4,
                        broadcast: false,
                        fix: true,
                        train: 0,
                        head: ipv4(GUEST, REMOTE, 17, &udp(40060, 9, b"")),
                        pad: 60_000,
                    },
                    host(FIRST_FLOW, ReplyPattern(60_000)),
                ],
            ),
        ),
    ]);
    seeds.push(("custom-mtu", {
        let mut s = encode(
            200,
            &[
                v4(ipv4(GUEST, REMOTE, 17, &udp(40030, 9, b"x"))),
                host(FIRST_FLOW, ReplyPattern(1000)),
            ],
        );
        s.splice(1..1, [100, 0]);
        s
    }));
    seeds
}

fn dhcp_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let discover = unhex(UDHCPC_DISCOVER)[42..].to_vec();
    let mut request = discover.clone();
    let at = request.windows(3).position(|w| w == [0x35, 1, 1]).unwrap();
    request[at + 2] = 3;
    let end = request.iter().rposition(|&b| b == 0xff).unwrap();
    request.splice(end..end, [0x32, 4, 10, 0, 2, 15]);
    let with_len = |packets: &[&Vec<u8>]| {
        let mut out = Vec::new();
        for p in packets {
            out.extend_from_slice(&(p.len() as u16).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    };
    vec![
        ("udhcpc-discover", with_len(&[&discover])),
        ("discover-then-request", with_len(&[&discover, &request])),
        ("request-only", with_len(&[&request])),
    ]
}

fn api_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let add = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_port":80}}"#;
    let lines = [
        ("add", add.to_string()),
        ("list", r#"{"execute":"list_hostfwd"}"#.to_string()),
        ("add-list-remove-list", format!("{add}\n{{\"execute\":\"list_hostfwd\"}}\n{{\"execute\":\"remove_hostfwd\",\"arguments\":{{\"id\":1}}}}\n{{\"execute\":\"list_hostfwd\"}}")),
        ("add-udp-v6-port0", r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::1","host_port":0,"guest_addr":"fd00::1234","guest_port":53}}"#.to_string()),
        ("add-twice", format!("{add}\n{add}")),
        ("remove-missing", r#"{"execute":"remove_hostfwd","arguments":{"id":7}}"#.to_string()),
        ("bad-args", r#"{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":70000,"guest_port":0}}"#.to_string()),
        ("unknown", r#"{"execute":"nope"}"#.to_string()),
        ("not-json", "{\"execute\":".to_string()),
        ("array", "[1,2,3]".to_string()),
    ];
    lines
        .into_iter()
        .map(|(n, s)| (n, s.into_bytes()))
        .collect()
}

fn resolv_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "systemd",
            b"# generated\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n".to_vec(),
        ),
        (
            "ipv6-scoped",
            b"nameserver fe80::1%eth0\nnameserver 2001:db8::53\n".to_vec(),
        ),
        (
            "comments",
            b";nameserver 1.1.1.1\n#nameserver 8.8.8.8\n  nameserver\t192.0.2.1 # x\n".to_vec(),
        ),
        ("none", b"search example.org\ndomain example.org\n".to_vec()),
    ]
}

fn cli_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let argv = |args: &[&str]| args.join("\0").into_bytes();
    vec![
        (
            "rootlesskit",
            argv(&[
                "--mtu",
                "65520",
                "-r",
                "3",
                "--api-socket",
                "/tmp/api.sock",
                "1234",
                "tap0",
            ]),
        ),
        (
            "podman",
            argv(&[
                "--disable-host-loopback",
                "--mtu=65520",
                "--enable-sandbox",
                "--enable-seccomp",
                "-c",
                "-e",
                "3",
                "-r",
                "4",
                "--netns-type=path",
                "/proc/self/ns/net",
                "tap0",
            ]),
        ),
        (
            "ipv6-cidr",
            argv(&[
                "-6",
                "--cidr=10.0.3.0/24",
                "--cidr6=fd01::/64",
                "-c",
                "--macaddress=02:00:00:00:00:01",
                "1",
                "tap0",
            ]),
        ),
        (
            "caps",
            argv(&[
                "--max-tcp-flows=10",
                "--max-pending-connects=5",
                "--udp-timeout=30",
                "--tcp-buffer=65536",
                "1",
                "tap0",
            ]),
        ),
        ("tapfd", argv(&["--netns-type=tapfd", "-r", "5", "5"])),
        (
            "outbound",
            argv(&[
                "--outbound-addr=127.0.0.1",
                "--outbound-addr6=::1",
                "--disable-dns",
                "--userns-path=/proc/self/ns/user",
                "1",
                "tap0",
                "extra",
            ]),
        ),
        ("help", argv(&["--help"])),
        ("version", argv(&["--version"])),
        (
            "bad",
            argv(&[
                "--mtu",
                "0",
                "--cidr",
                "10.0.2.100/24",
                "--target-type=bess",
            ]),
        ),
    ]
}

#[test]
#[ignore = "rewrites fuzz/seeds; run by hand after changing the input format"]
fn write_seeds() {
    let all = [
        ("frames", frames_seeds()),
        ("api", api_seeds()),
        ("dhcp", dhcp_seeds()),
        ("resolv_conf", resolv_seeds()),
        ("cli", cli_seeds()),
    ];
    for (target, seeds) in all {
        let dir = fuzz_dir().join("seeds").join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
