//! Connection-rate probe used by `bench/compare.sh`.
//!
//! `connrate serve ADDR` answers every connection with one byte and closes
//! it; `connrate run ADDR SECONDS` connects, reads to EOF and closes, one
//! connection after another, and prints connections per second. Std only,
//! so the client costs the same whichever network helper is measured.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 3 => serve(&args[2]),
        Some("run") if args.len() == 4 => {
            let secs: u64 = args[3].parse().expect("SECONDS must be a number");
            run(&args[2], Duration::from_secs(secs));
        }
        _ => {
            eprintln!("usage: connrate serve ADDR | connrate run ADDR SECONDS");
            std::process::exit(2);
        }
    }
}

fn serve(addr: &str) {
    let listener = TcpListener::bind(addr).expect("bind");
    for mut conn in listener.incoming().flatten() {
        let _ = conn.write_all(b"x");
    }
}

fn run(addr: &str, length: Duration) {
    let start = Instant::now();
    let mut done = 0u64;
    let mut buf = [0u8; 8];
    while start.elapsed() < length {
        let Ok(mut c) = TcpStream::connect(addr) else {
            continue;
        };
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        done += 1;
    }
    println!("{:.0}", done as f64 / start.elapsed().as_secs_f64());
}
