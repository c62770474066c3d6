//! Small helpers every kind of test reaches for: a scratch directory, a
//! process killed on drop, polling with a deadline, running a command
//! that must succeed, running as another user, and the TCP and payload
//! helpers (a timed-out connect, an echo loop, deterministic bytes). They
//! know nothing of netferry or of the test's namespaces.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const NOBODY: u32 = 65534;

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("netferry-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        // World-accessible so unprivileged runs can use it too.
        Command::new("chmod")
            .arg("0777")
            .arg(&path)
            .status()
            .unwrap();
        TempDir(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Wait until `cond` holds, up to `limit`; false on time-out.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn as_user_args(uid: u32) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--".into(),
    ]
}

pub fn run_ok(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic bytes that no off-by-one or reordering survives.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A TCP connection whose connect, reads and writes all give up after
/// `limit`, so a broken path fails the test instead of hanging it.
pub fn connect(
    addr: std::net::SocketAddr,
    limit: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    Ok(s)
}

/// Echo everything `conn` receives back to it until EOF or an error.
pub fn echo_until_eof(conn: std::net::TcpStream) {
    if let Ok(mut reader) = conn.try_clone() {
        let mut writer = conn;
        let _ = std::io::copy(&mut reader, &mut writer);
    }
}

/// A process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
