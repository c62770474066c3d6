//! Noticing that the namespace netferry serves is gone, as pasta does:
//! podman deletes the netns file when the container goes (and starts the
//! next one on the same ports right after), rootlesskit's child process
//! ends. An inotify watch on the file's directory reports its deletion;
//! where inotify cannot see it (procfs paths, a PID target) the file is
//! looked for once a second instead, through a timerfd, in the directory
//! opened at the start: by then netferry lives in its sandbox, whose root
//! has no /proc (pasta does the same with `openat`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How often a path inotify cannot watch is checked.
const POLL_SECONDS: libc::time_t = 1;

pub struct NetnsWatch {
    fd: OwnedFd,
    how: How,
}

enum How {
    /// Deletions in the directory; the file's own name.
    Inotify { name: Vec<u8> },
    /// A timer; the file to look for on each tick, in `dir`.
    Poll { dir: OwnedFd, name: CString },
}

impl NetnsWatch {
    /// Watch `path`, the netns file (or `/proc/PID/ns/net`).
    pub fn new(path: &Path) -> io::Result<Self> {
        let pseudo = path.starts_with("/proc") || path.starts_with("/sys");
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Self::poll(path);
        };
        if pseudo {
            return Self::poll(path);
        }
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // SAFETY: plain inotify_init1; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh inotify instance that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let dir_c = CString::new(dir.as_os_str().as_bytes())?;
        let mask = libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_DELETE_SELF;
        // SAFETY: dir_c is a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir_c.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NetnsWatch {
            fd,
            how: How::Inotify {
                name: name.as_bytes().to_vec(),
            },
        })
    }

    fn poll(path: &Path) -> io::Result<Self> {
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d, n),
            (_, Some(n)) => (Path::new("."), n),
            _ => (Path::new("/"), std::ffi::OsStr::new(".")),
        };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        let name = CString::new(name.as_bytes())?;
        // SAFETY: plain timerfd_create; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh timerfd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let every = libc::timespec {
            tv_sec: POLL_SECONDS,
            tv_nsec: 0,
        };
        let spec = libc::itimerspec {
            it_interval: every,
            it_value: every,
        };
        // SAFETY: spec is a valid itimerspec; the old value is not wanted.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NetnsWatch {
            fd,
            how: How::Poll {
                dir: dir.into(),
                name,
            },
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// After the fd was readable: whether the namespace file is gone.
    /// Reads everything pending, so the next edge comes with new news.
    pub fn gone(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut gone = false;
        loop {
            // SAFETY: buf is writable for its whole length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else {
                break; // EAGAIN: drained
            };
            if n == 0 {
                break;
            }
            if let How::Inotify { name } = &self.how {
                gone |= inotify_names(&buf[..n], name);
            }
        }
        match &self.how {
            How::Inotify { .. } => gone,
            How::Poll { dir, name } => {
                // SAFETY: dir is an open directory fd and name a
                // NUL-terminated string, both outliving the call.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_PATH | libc::O_CLOEXEC,
                    )
                };
                if fd >= 0 {
                    // SAFETY: fd was just opened here and is closed once.
                    unsafe { libc::close(fd) };
                    return false;
                }
                // A procfs entry of another user's process still exists.
                io::Error::last_os_error().raw_os_error() != Some(libc::EACCES)
            }
        }
    }
}

/// Whether the inotify events in `buf` name `name` (or the directory
/// itself went).
fn inotify_names(buf: &[u8], name: &[u8]) -> bool {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut at = 0;
    let mut found = false;
    while let Some(header) = buf.get(at..at + HEADER) {
        let mask = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
        let len = u32::from_ne_bytes([header[12], header[13], header[14], header[15]]) as usize;
        let Some(raw) = buf.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        let event_name = raw.split(|&b| b == 0).next().unwrap_or(&[]);
        if mask & libc::IN_DELETE_SELF != 0 || event_name == name {
            found = true;
        }
        at += HEADER + len;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_the_file_is_seen_and_other_files_are_not() {
        let dir = std::env::temp_dir().join(format!("netferry-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("netns-test");
        let other = dir.join("other");
        std::fs::write(&file, b"").unwrap();
        std::fs::write(&other, b"").unwrap();
        let w = NetnsWatch::new(&file).unwrap();
        assert!(!w.gone());
        std::fs::remove_file(&other).unwrap();
        assert!(!w.gone(), "another file's deletion");
        std::fs::remove_file(&file).unwrap();
        assert!(w.gone());
        std::fs::remove_dir(&dir).unwrap();
    }

    /// The sandbox replaces the root (and hides /proc) after the watch is
    /// made: the file is looked for in the directory opened then, not by
    /// its path, as a moved directory shows.
    #[test]
    fn a_polled_file_is_looked_for_where_it_was_not_by_path() {
        let base = std::env::temp_dir().join(format!("netferry-poll-{}", std::process::id()));
        let (before, after) = (base.join("before"), base.join("after"));
        std::fs::create_dir_all(&before).unwrap();
        std::fs::write(before.join("netns"), b"").unwrap();
        let w = NetnsWatch::poll(&before.join("netns")).unwrap();
        std::fs::rename(&before, &after).unwrap();
        assert!(!w.gone(), "the path went, not the file");
        std::fs::remove_file(after.join("netns")).unwrap();
        assert!(w.gone());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn procfs_paths_are_polled() {
        let w = NetnsWatch::new(Path::new("/proc/self/ns/net")).unwrap();
        assert!(matches!(w.how, How::Poll { .. }));
        assert!(!w.gone());
        // A process that is gone at the start: nothing to watch.
        assert!(NetnsWatch::new(Path::new("/proc/999999999/ns/net")).is_err());
    }
}
