//! Busy polling (`--busy-poll`) on a real namespace: request/response
//! traffic through the gateway is answered intact with it on (the
//! default) and off, and once the traffic stops, netferry goes back to
//! sleeping: an idle instance spends no CPU whatever came before.
//! Figures (round trips, CPU) are printed, not judged: speed is the
//! benchmark's business.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use common::{Namespace, TestNet, echo_until_eof, pattern, serve_from};

const ROUND_TRIPS: usize = 5_000;

fn ping_pong(flags: &[&str], port: u16) {
    let net = TestNet::new();
    let listener = net.in_host(move || TcpListener::bind(("127.0.0.1", port)).unwrap());
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        echo_until_eof(conn);
    });
    let ns = Namespace::new();
    let nf = serve_from(Some(&net), &ns, flags);
    let cpu0 = nf.cpu_seconds();
    let started = Instant::now();
    let wrong = ns.in_ns(move || {
        let mut conn =
            common::connect(([10, 0, 2, 2], port).into(), Duration::from_secs(10)).unwrap();
        conn.set_nodelay(true).unwrap();
        let mut wrong = 0;
        let mut answer = [0u8; 64];
        for i in 0..ROUND_TRIPS {
            let request = pattern(64, i as u32);
            conn.write_all(&request).unwrap();
            conn.read_exact(&mut answer).unwrap();
            wrong += usize::from(answer[..] != request[..]);
        }
        wrong
    });
    let busy = started.elapsed();
    let busy_cpu = nf.cpu_seconds() - cpu0;
    assert_eq!(wrong, 0, "{wrong} answers came back wrong\n{}", nf.output());

    sleep(Duration::from_millis(200));
    let cpu1 = nf.cpu_seconds();
    sleep(Duration::from_secs(2));
    let idle_cpu = nf.cpu_seconds() - cpu1;
    println!(
        "{flags:?}: {ROUND_TRIPS} round trips in {busy:.2?} ({:.1} µs each), {busy_cpu:.2} CPU s; \
         then {idle_cpu:.2} CPU s in 2 s idle",
        busy.as_secs_f64() * 1e6 / ROUND_TRIPS as f64
    );
    assert!(
        idle_cpu < 0.1,
        "{idle_cpu} CPU seconds in 2 idle seconds: still polling\n{}",
        nf.output()
    );
    drop(nf);
    server.join().unwrap();
}

#[test]
fn request_response_with_busy_polling_then_idle_costs_nothing() {
    ping_pong(&[], 7301);
}

#[test]
fn request_response_without_busy_polling() {
    ping_pong(&["--busy-poll=0"], 7302);
}

#[test]
fn a_longer_window_still_sleeps_when_idle() {
    ping_pong(&["--busy-poll=5000"], 7303);
}
