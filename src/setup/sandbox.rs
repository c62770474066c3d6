//! `--enable-sandbox`: shut netferry into a filesystem of its own and drop
//! its capabilities, once everything it needs from the host is open.
//!
//! netferry parses frames from an untrusted guest with its user's rights,
//! so after setup it should see as little as possible. It moves into a new
//! mount namespace (private: nothing propagates back to the caller), whose
//! root is a fresh read-only tmpfs holding only `/etc` and `/run`, bound
//! read-only from the host, plus what `/etc/resolv.conf` leads to when it
//! is a symlink out of those two (so the DNS forwarder keeps reading the
//! live file). Then every capability goes except CAP_NET_BIND_SERVICE, and
//! no_new_privs is set.
//!
//! Everything already open (tap, sockets, the API socket's directory, the
//! exit and ready fds) keeps working; only paths opened later are
//! confined. This must run while netferry is single-threaded: joining a
//! user namespace is refused to a process with threads.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{chdir, getegid, geteuid, pivot_root};
use thiserror::Error;

/// The file the DNS forwarder reads (see `resolv.rs`).
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Host directories the sandbox keeps, read-only.
const KEPT_DIRS: [&str; 2] = ["/etc", "/run"];
/// Where the new root is built before pivoting into it. Mounting over it
/// hides nothing from anyone else: the mount namespace is ours alone.
const STAGING: &str = "/tmp";
/// The new root holds only directories and symlinks.
const ROOT_TMPFS_OPTIONS: &str = "size=64k,nr_inodes=256,mode=0755";
/// Symlink hops followed before giving up, as the kernel does (ELOOP).
const MAX_SYMLINKS: usize = 40;

/// Why a sandbox could not be made; each says what to do about it.
const HINT_FORBIDDEN: &str = "mounts and namespaces are forbidden here (a container \
    without CAP_SYS_ADMIN, or a security policy); run netferry without --enable-sandbox";

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("cannot open the user namespace {path}: {err}")]
    OpenUserns { path: PathBuf, err: io::Error },
    #[error(
        "cannot join the user namespace {path}, which an unprivileged netferry needs \
         for the right to mount: {err}"
    )]
    JoinUserns { path: PathBuf, err: nix::Error },
    #[error(
        "cannot create a user namespace for the right to mount ({err}): {HINT_FORBIDDEN}, \
         or pass the container's user namespace with --userns-path"
    )]
    NewUserns { err: nix::Error },
    #[error("cannot map our ids in the new user namespace: {0}")]
    MapIds(io::Error),
    #[error("cannot create a mount namespace ({err}): {HINT_FORBIDDEN}")]
    NewMountNs { err: nix::Error },
    #[error("cannot {what} {path}: {err}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        err: nix::Error,
    },
    #[error("cannot prepare {path} in the new root: {err}")]
    Populate { path: PathBuf, err: io::Error },
    #[error("cannot open {path} to bind it into the sandbox: {err}")]
    OpenSource { path: PathBuf, err: io::Error },
    #[error("cannot pivot_root into the new root: {0}")]
    PivotRoot(nix::Error),
    #[error("cannot drop capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
}

/// Build the sandbox and enter it. `userns` is the target's user
/// namespace (`--userns-path`, or the target pid's): joined first when
/// netferry lacks CAP_SYS_ADMIN, as slirp4netns does, since the user that
/// owns it holds every right inside it.
pub fn enter(userns: Option<&Path>) -> Result<(), SandboxError> {
    // Read before anything moves: the symlinks are resolved in the host's
    // view of the filesystem.
    let plan = Plan::for_resolv_conf(Path::new(RESOLV_CONF));
    gain_mount_rights(userns)?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|err| SandboxError::NewMountNs { err })?;
    // Private, recursively: none of the mounts below may show up in the
    // caller's namespace.
    mount_flags("/", MsFlags::MS_REC | MsFlags::MS_PRIVATE, "make private")?;
    plan.build_root()?;
    pivot_into(Path::new(STAGING))?;
    drop_capabilities()?;
    log::info!(
        "sandbox: root holds {}; capabilities: CAP_NET_BIND_SERVICE only",
        plan.describe()
    );
    Ok(())
}

/// Make sure the next `unshare(CLONE_NEWNS)` is allowed.
fn gain_mount_rights(userns: Option<&Path>) -> Result<(), SandboxError> {
    let admin = caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false);
    if admin {
        return Ok(());
    }
    match userns {
        Some(path) => {
            let file = File::open(path).map_err(|err| SandboxError::OpenUserns {
                path: path.to_path_buf(),
                err,
            })?;
            if is_current_userns(&file) {
                // Already inside, without the right: unshare says why.
                return Ok(());
            }
            setns(&file, CloneFlags::CLONE_NEWUSER).map_err(|err| SandboxError::JoinUserns {
                path: path.to_path_buf(),
                err,
            })
        }
        // --netns-type=tapfd, or path without --userns-path: no target
        // namespace to borrow rights from, so make one of our own.
        None => {
            let (uid, gid) = (geteuid(), getegid());
            unshare(CloneFlags::CLONE_NEWUSER).map_err(|err| SandboxError::NewUserns { err })?;
            // Files cannot be created by an unmapped user; map ours to
            // itself (allowed to anyone once setgroups is denied).
            let write = |file: &str, text: String| fs::write(file, text);
            write("/proc/self/setgroups", "deny".into())
                .and_then(|()| write("/proc/self/uid_map", format!("{uid} {uid} 1")))
                .and_then(|()| write("/proc/self/gid_map", format!("{gid} {gid} 1")))
                .map_err(SandboxError::MapIds)
        }
    }
}

fn is_current_userns(file: &File) -> bool {
    match (file.metadata(), fs::metadata("/proc/self/ns/user")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// What goes into the new root.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Host paths bound read-only at the same path: /etc, /run, and the
    /// directory holding resolv.conf's target when it lies elsewhere.
    binds: Vec<PathBuf>,
    /// Symlinks on the way from /etc/resolv.conf to its target that would
    /// not exist in the new root (path, link text), recreated there.
    links: Vec<(PathBuf, PathBuf)>,
}

impl Plan {
    fn for_resolv_conf(resolv: &Path) -> Plan {
        let mut binds: Vec<PathBuf> = KEPT_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect();
        let (links, target) = follow_symlinks(resolv);
        // The directory, not the file: the usual way to update
        // resolv.conf is to write a new file and rename it over the old
        // one, which a bind of the old file would never show.
        if let Some(target) = target
            && !binds.iter().any(|b| target.starts_with(b))
        {
            match target.parent() {
                Some(dir) if dir != Path::new("/") => binds.push(dir.to_path_buf()),
                // Binding / would undo the sandbox: then the file alone.
                _ => binds.push(target),
            }
        }
        let links = links
            .into_iter()
            .filter(|(path, _)| !binds.iter().any(|b| path.starts_with(b)))
            .collect();
        Plan { binds, links }
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.binds.iter().map(|b| b.display().to_string()).collect();
        parts.extend(
            self.links
                .iter()
                .map(|(p, t)| format!("{} -> {}", p.display(), t.display())),
        );
        parts.join(", ")
    }

    /// Mount a tmpfs on STAGING and fill it; read-only when done.
    fn build_root(&self) -> Result<(), SandboxError> {
        // Open every source first: the tmpfs may hide some of them (a
        // resolv.conf kept under /tmp), and a bind from /proc/self/fd/N
        // reaches the opened object whatever covers its path.
        let sources = self
            .binds
            .iter()
            .map(|path| {
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(|err| SandboxError::OpenSource {
                        path: path.clone(),
                        err,
                    })
            })
            .collect::<Result<Vec<File>, _>>()?;
        let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            Some("tmpfs"),
            STAGING,
            Some("tmpfs"),
            hardened,
            Some(ROOT_TMPFS_OPTIONS),
        )
        .map_err(|err| SandboxError::Mount {
            what: "mount a tmpfs for the new root on",
            path: STAGING.into(),
            err,
        })?;
        let inside = |p: &Path| Path::new(STAGING).join(p.strip_prefix("/").unwrap_or(p));
        let populate = |path: PathBuf| move |err| SandboxError::Populate { path, err };
        for (bind, source) in self.binds.iter().zip(&sources) {
            let at = inside(bind);
            if source.metadata().is_ok_and(|m| m.is_dir()) {
                fs::create_dir_all(&at).map_err(populate(at.clone()))?;
            } else {
                if let Some(parent) = at.parent() {
                    fs::create_dir_all(parent).map_err(populate(at.clone()))?;
                }
                File::create(&at).map_err(populate(at.clone()))?;
            }
        }
        for (path, text) in &self.links {
            let at = inside(path);
            if let Some(parent) = at.parent() {
                fs::create_dir_all(parent).map_err(populate(at.clone()))?;
            }
            std::os::unix::fs::symlink(text, &at).map_err(populate(at.clone()))?;
        }
        for (bind, source) in self.binds.iter().zip(&sources) {
            let at = inside(bind);
            let from = format!("/proc/self/fd/{}", source.as_raw_fd());
            mount(
                Some(from.as_str()),
                &at,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|err| SandboxError::Mount {
                what: "bind-mount",
                path: bind.clone(),
                err,
            })?;
            make_read_only(&at).map_err(|err| SandboxError::Mount {
                what: "make read-only",
                path: bind.clone(),
                err,
            })?;
        }
        drop(sources);
        mount_flags(
            STAGING,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hardened,
            "make read-only",
        )
    }
}

/// Walk `path` as the kernel would, one component at a time, noting every
/// symlink met (its path and text). Returns them with the final file, or
/// `None` for it when the chain ends nowhere (a missing file, a loop): the
/// links met so far are still worth recreating, as the target may appear
/// later under /run.
fn follow_symlinks(path: &Path) -> (Vec<(PathBuf, PathBuf)>, Option<PathBuf>) {
    let mut links = Vec::new();
    let mut resolved = PathBuf::from("/");
    let mut rest: VecDeque<_> = path.components().map(own).collect();
    while let Some(part) = rest.pop_front() {
        match part {
            Part::Root => resolved = PathBuf::from("/"),
            Part::Here => {}
            Part::Up => {
                resolved.pop();
            }
            Part::Name(name) => {
                let next = resolved.join(&name);
                let Ok(meta) = fs::symlink_metadata(&next) else {
                    return (links, None);
                };
                if !meta.file_type().is_symlink() {
                    resolved = next;
                    continue;
                }
                let Ok(text) = fs::read_link(&next) else {
                    return (links, None);
                };
                if links.len() >= MAX_SYMLINKS {
                    return (links, None);
                }
                for c in text.components().rev() {
                    rest.push_front(own(c));
                }
                links.push((next, text));
            }
        }
    }
    (links, Some(resolved))
}

enum Part {
    Root,
    Here,
    Up,
    Name(OsString),
}

fn own(c: Component<'_>) -> Part {
    match c {
        Component::RootDir | Component::Prefix(_) => Part::Root,
        Component::ParentDir => Part::Up,
        Component::CurDir => Part::Here,
        Component::Normal(n) => Part::Name(n.to_os_string()),
    }
}

fn mount_flags(path: &str, flags: MsFlags, what: &'static str) -> Result<(), SandboxError> {
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(|err| {
        SandboxError::Mount {
            what,
            path: path.into(),
            err,
        }
    })
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Read-only, nosuid, nodev, noexec for a bind and everything mounted
/// under it (/run/user/UID, say). mount_setattr (Linux 5.12) does the
/// whole tree and touches no other flag; older kernels get a remount of
/// the top mount that repeats its flags, since a mount namespace owned by
/// a user namespace may not clear flags the host set (noatime, say).
fn make_read_only(path: &Path) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let cpath =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: the path is a valid C string and `attr` a live mount_attr of
    // the size passed; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = nix::Error::last();
    if err != nix::Error::ENOSYS {
        return Err(err);
    }
    let current = statvfs(path)?.flags();
    let mut flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    for (have, keep) in [
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
}

/// Make `new_root` the root and let go of the old one entirely.
fn pivot_into(new_root: &Path) -> Result<(), SandboxError> {
    chdir(new_root).map_err(SandboxError::PivotRoot)?;
    // pivot_root(".", "."): the old root ends up stacked on the new one,
    // where it is detached at once; no directory for it is needed.
    pivot_root(".", ".").map_err(SandboxError::PivotRoot)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|err| SandboxError::Mount {
        what: "detach the old root at",
        path: "/".into(),
        err,
    })?;
    chdir("/").map_err(SandboxError::PivotRoot)
}

/// Keep only CAP_NET_BIND_SERVICE (for forwards of low ports) in every set,
/// and set no_new_privs. Ambient is emptied: it matters only across
/// execve, which netferry never does.
fn drop_capabilities() -> Result<(), SandboxError> {
    let keep_cap = Capability::CAP_NET_BIND_SERVICE;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = permitted
        .contains(&keep_cap)
        .then_some(keep_cap)
        .into_iter()
        .collect();
    caps::clear(None, CapSet::Ambient)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes with the rest below.
    for cap in caps::runtime::thread_all_supported() {
        if cap != keep_cap && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::set(None, CapSet::Inheritable, &keep)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("netferry-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            // Canonical, so expectations compare with resolved paths.
            Scratch(fs::canonicalize(&p).unwrap())
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn follows_absolute_and_relative_links_to_the_file() {
        let s = Scratch::new("follow");
        let d = &s.0;
        fs::create_dir_all(d.join("real/dir")).unwrap();
        fs::write(d.join("real/dir/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        // etc/resolv.conf -> ../alias/resolv.conf, alias -> <abs>/real/dir
        fs::create_dir_all(d.join("etc")).unwrap();
        std::os::unix::fs::symlink(d.join("real/dir"), d.join("alias")).unwrap();
        std::os::unix::fs::symlink("../alias/resolv.conf", d.join("etc/resolv.conf")).unwrap();
        let (links, target) = follow_symlinks(&d.join("etc/resolv.conf"));
        assert_eq!(target, Some(d.join("real/dir/resolv.conf")));
        assert_eq!(
            links,
            [
                (
                    d.join("etc/resolv.conf"),
                    PathBuf::from("../alias/resolv.conf")
                ),
                (d.join("alias"), d.join("real/dir")),
            ]
        );
    }

    #[test]
    fn a_dangling_or_looping_chain_keeps_the_links_met() {
        let s = Scratch::new("dangling");
        let d = &s.0;
        std::os::unix::fs::symlink(d.join("nowhere/x"), d.join("a")).unwrap();
        let (links, target) = follow_symlinks(&d.join("a"));
        assert_eq!(target, None);
        assert_eq!(links, [(d.join("a"), d.join("nowhere/x"))]);
        std::os::unix::fs::symlink(d.join("loop"), d.join("loop")).unwrap();
        let (links, target) = follow_symlinks(&d.join("loop"));
        assert_eq!(target, None);
        assert_eq!(links.len(), MAX_SYMLINKS);
    }

    #[test]
    fn plan_binds_the_directory_of_a_target_outside_etc_and_run() {
        let s = Scratch::new("plan");
        let d = &s.0;
        fs::create_dir_all(d.join("state")).unwrap();
        fs::write(d.join("state/resolv.conf"), "").unwrap();
        std::os::unix::fs::symlink(d.join("state/resolv.conf"), d.join("link")).unwrap();
        let plan = Plan::for_resolv_conf(&d.join("link"));
        assert_eq!(
            plan.binds,
            [
                PathBuf::from("/etc"),
                PathBuf::from("/run"),
                d.join("state")
            ]
        );
        assert_eq!(plan.links, [(d.join("link"), d.join("state/resolv.conf"))]);
        // A target inside /etc needs nothing more.
        let plan = Plan::for_resolv_conf(Path::new("/etc/hostname"));
        assert_eq!(plan.binds, [PathBuf::from("/etc"), PathBuf::from("/run")]);
        assert!(plan.links.is_empty());
    }
}
