//! The host's DNS resolver, as named by `/etc/resolv.conf`.
//!
//! The DNS address of the virtual network forwards to the first
//! `nameserver` line. The file is re-read when it changes (checked at most
//! once a second, following symlinks such as systemd-resolved's), so a
//! laptop that changes networks keeps working.

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use smoltcp::time::Instant;

const RECHECK: Duration = Duration::from_secs(1);

pub struct Resolver {
    path: PathBuf,
    next_check: Option<Instant>,
    stamp: Option<(SystemTime, u64)>,
    addr: Option<IpAddr>,
}

impl Resolver {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Resolver {
            path: path.into(),
            next_check: None,
            stamp: None,
            addr: None,
        }
    }

    /// The current first nameserver, if the file names one.
    pub fn nameserver(&mut self, now: Instant) -> Option<IpAddr> {
        if self.next_check.is_some_and(|t| now < t) {
            return self.addr;
        }
        self.next_check = Some(now + RECHECK.into());
        let stamp = fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp != self.stamp || stamp.is_none() {
            self.stamp = stamp;
            let addr = fs::read_to_string(&self.path)
                .ok()
                .and_then(|t| first_nameserver(&t));
            if addr != self.addr {
                log::info!(
                    "DNS: forwarding to {} (from {})",
                    addr.map_or("nothing".to_string(), |a| a.to_string()),
                    self.path.display()
                );
            }
            self.addr = addr;
        }
        self.addr
    }
}

/// The first `nameserver` address of a resolv.conf text. A scope suffix
/// (`fe80::1%eth0`) cannot be used from here and is skipped.
pub fn first_nameserver(text: &str) -> Option<IpAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "nameserver")
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nameserver_wins_and_comments_are_skipped() {
        let text = "# generated\nsearch example\n;nameserver 1.1.1.1\nnameserver 127.0.0.53\nnameserver 9.9.9.9\n";
        assert_eq!(first_nameserver(text), Some("127.0.0.53".parse().unwrap()));
        assert_eq!(
            first_nameserver("nameserver ::1\n"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("nameserver fe80::1%eth0\nnameserver 10.1.1.1"),
            Some("10.1.1.1".parse().unwrap())
        );
        assert_eq!(first_nameserver("options ndots:5\n"), None);
    }

    #[test]
    fn changes_to_the_file_are_picked_up() {
        let dir = std::env::temp_dir().join(format!("netferry-resolv-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        let mut r = Resolver::new(&path);
        let t0 = Instant::from_secs(0);
        assert_eq!(r.nameserver(t0), Some("127.0.0.1".parse().unwrap()));
        fs::write(&path, "nameserver 127.0.0.2\nnameserver 127.0.0.3\n").unwrap();
        assert_eq!(
            r.nameserver(Instant::from_secs(2)),
            Some("127.0.0.2".parse().unwrap())
        );
        fs::remove_file(&path).unwrap();
        assert_eq!(r.nameserver(Instant::from_secs(4)), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
