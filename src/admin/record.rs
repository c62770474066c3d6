//! What a `netferry setup` made, kept as JSON so that `--undo` removes
//! exactly that. Setup never edits a file that was there before: it
//! makes new directories, links and drop-in files, refusing to replace
//! anything, so removing what it made restores the previous state byte
//! for byte. Undo checks first that each thing is still as made and
//! changes nothing if one is not.
//!
//! podman's and Docker's setups may share things (the helper directory
//! and its links, the record directory, a parent such as ~/.config): the
//! second one to run finds them made and lists them under `uses`. When
//! the first is undone while the other's record is there, what the other
//! needs is handed over to that record instead of being removed.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::places::same_file;

/// One thing a setup made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "made", rename_all = "snake_case")]
pub enum Made {
    Dir { path: PathBuf },
    Link { path: PathBuf, target: PathBuf },
    File { path: PathBuf, text: String },
}

impl Made {
    pub fn path(&self) -> &Path {
        match self {
            Made::Dir { path } | Made::Link { path, .. } | Made::File { path, .. } => path,
        }
    }

    /// Why it is no longer as made, if it is not.
    fn changed(&self) -> Option<String> {
        let path = self.path().display();
        match self {
            Made::Dir { path: p } => match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => None,
                Ok(_) => Some(format!("{path} is no longer a directory")),
                Err(e) => Some(format!("{path}: {e}")),
            },
            Made::Link { path: p, target } => match fs::read_link(p) {
                Ok(t) if &t == target => None,
                Ok(t) => Some(format!(
                    "{path} now leads to {} (was {})",
                    t.display(),
                    target.display()
                )),
                Err(e) => Some(format!("{path} is no longer the link made: {e}")),
            },
            Made::File { path: p, text } => match fs::read(p) {
                Ok(now) if now == text.as_bytes() => None,
                Ok(_) => Some(format!("{path} was edited since")),
                Err(e) => Some(format!("{path}: {e}")),
            },
        }
    }
}

/// The record of one engine's setup in one scope.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub engine: String,
    pub mode: String,
    /// In the order made; undone in reverse.
    pub made: Vec<Made>,
    /// Things this setup relies on that were there already (made by the
    /// other engine's setup, or by the package).
    #[serde(default)]
    pub uses: Vec<PathBuf>,
}

impl Record {
    pub fn load(path: &Path) -> anyhow::Result<Option<Record>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("cannot read the setup record {}", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Write (or rewrite) the record in one step, so a reader never sees
    /// half of it.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self).context("cannot encode the record")?;
        text.push('\n');
        let tmp = path.with_extension("json.new");
        fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Makes things, listing each in the record; on failure, `abandon`
/// removes what was made so far.
#[derive(Debug, Default)]
pub struct Maker {
    pub record: Record,
}

impl Maker {
    /// `path` and any missing parents.
    pub fn dir_all(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        let mut p = path;
        while fs::symlink_metadata(p).is_err() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        if fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) && p != path {
            bail!("{} is not a directory", p.display());
        }
        for dir in missing.into_iter().rev() {
            fs::create_dir(&dir).map_err(|e| hint(e, &dir))?;
            self.record.made.push(Made::Dir { path: dir });
        }
        if !path.is_dir() {
            bail!("{} exists and is not a directory", path.display());
        }
        Ok(())
    }

    /// A link at `path` to `target`; one already there that leads to the
    /// same file is used as it is.
    pub fn link(&mut self, path: &Path, target: &Path) -> anyhow::Result<()> {
        if fs::symlink_metadata(path).is_ok() {
            if same_file(path, target) {
                self.record.uses.push(path.to_path_buf());
                return Ok(());
            }
            bail!(
                "{} exists and does not lead to this netferry ({}); not replacing it",
                path.display(),
                target.display()
            );
        }
        if let Some(parent) = path.parent() {
            self.dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, path).map_err(|e| hint(e, path))?;
        self.record.made.push(Made::Link {
            path: path.to_path_buf(),
            target: target.to_path_buf(),
        });
        Ok(())
    }

    /// A new file at `path` holding `text`; never replaces one.
    pub fn file(&mut self, path: &Path, text: &str) -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            self.dir_all(parent)?;
        }
        let mut f = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
                "{} exists already (netferry setup never replaces a file); \
                 move it away and run again",
                path.display()
            ),
            Err(e) => return Err(hint(e, path)),
        };
        self.record.made.push(Made::File {
            path: path.to_path_buf(),
            text: text.to_string(),
        });
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Remove what was made, newest first (after a failure half way).
    pub fn abandon(self) {
        for made in self.record.made.iter().rev() {
            let _ = remove(made);
        }
    }
}

/// An error on `path`, with what to do when it is a permission problem.
fn hint(e: std::io::Error, path: &Path) -> anyhow::Error {
    let what = format!("cannot create {}: {e}", path.display());
    if e.kind() == ErrorKind::PermissionDenied {
        anyhow::anyhow!("{what} (--system needs root; --user writes only under your home)")
    } else {
        anyhow::anyhow!(what)
    }
}

fn remove(made: &Made) -> std::io::Result<()> {
    match made {
        Made::Dir { path } => fs::remove_dir(path),
        Made::Link { path, .. } | Made::File { path, .. } => fs::remove_file(path),
    }
}

/// Undo the setup recorded at `record_path`, handing what the record at
/// `other_path` relies on over to it. Returns one line per thing removed,
/// handed over or left.
pub fn undo(record_path: &Path, other_path: &Path, retry: &str) -> anyhow::Result<Vec<String>> {
    let Some(record) = Record::load(record_path)? else {
        bail!(
            "nothing to undo: there is no setup record at {} (this setup was never run \
             with this scope, or was undone already)",
            record_path.display()
        );
    };
    let changed: Vec<String> = record.made.iter().filter_map(Made::changed).collect();
    if !changed.is_empty() {
        bail!(
            "not undoing anything: {}; put it back as it was and run `{retry}` again \
             (or remove {} to forget this setup)",
            changed.join("; "),
            record_path.display()
        );
    }
    let mut other = Record::load(other_path)?;
    // What the other setup relies on: its record, what it made and used.
    let needed: Vec<PathBuf> = match &other {
        Some(o) => o
            .made
            .iter()
            .map(|m| m.path().to_path_buf())
            .chain(o.uses.iter().cloned())
            .chain([other_path.to_path_buf()])
            .collect(),
        None => Vec::new(),
    };
    fs::remove_file(record_path)
        .with_context(|| format!("cannot remove {}", record_path.display()))?;
    let mut lines = Vec::new();
    let mut handed = Vec::new();
    for made in record.made.iter().rev() {
        let path = made.path();
        if needed.iter().any(|n| n.starts_with(path)) {
            handed.push(made.clone());
            continue;
        }
        match remove(made) {
            Ok(()) => lines.push(format!("removed {}", path.display())),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => lines.push(format!(
                "left {}: it holds files netferry setup did not make",
                path.display()
            )),
            Err(e) => lines.push(format!("could not remove {}: {e}", path.display())),
        }
    }
    if let (Some(o), false) = (other.as_mut(), handed.is_empty()) {
        handed.reverse();
        for h in &handed {
            o.uses.retain(|u| u != h.path());
            lines.push(format!(
                "kept {}: the {} setup uses it (its --undo removes it)",
                h.path().display(),
                o.engine
            ));
        }
        handed.append(&mut o.made);
        o.made = handed;
        o.save(other_path)?;
    }
    Ok(lines)
}
