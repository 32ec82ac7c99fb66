//! Crash-safe file handling in a snapshot directory: every file is written under a
//! temporary name, synced, and renamed into place (a new inode, so a VM that maps an
//! older file keeps its pages); the directory is synced after each rename; one writer at
//! a time holds the directory's lock; files no state names any more are removed last.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, SnapshotError};

/// The lock file every writer of a snapshot directory holds while it writes.
pub const LOCK_FILE: &str = "lock";
/// The suffix of files still being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// A snapshot's (or memory layer's) unique identifier: 128 random bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// A fresh random identifier (getrandom(2)).
    pub fn new() -> Result<Self, SnapshotError> {
        let mut b = [0u8; 16];
        let mut filled = 0;
        while filled < b.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `b`, which
            // getrandom only writes into.
            let n =
                unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
            match usize::try_from(n) {
                Ok(n) => filled += n,
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(SnapshotError::Random(e));
                    }
                }
            }
        }
        Ok(Self(b))
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Syncs a directory, so that the renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The exclusive lock on a snapshot directory, released on drop.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    /// Waits for the lock on `dir` (another hearth may be writing there).
    pub fn take(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(SnapshotError::Io { path, source: e });
            }
        }
    }
}

/// A file being written under `<name>.tmp`; [`TmpFile::persist`] syncs it and renames it
/// to `<name>`. Dropped unpersisted, it is removed.
#[derive(Debug)]
pub struct TmpFile {
    pub(super) file: File,
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl TmpFile {
    /// Creates `dir/<name>.tmp` (replacing a stale one a crashed writer left).
    pub fn create(dir: &Path, name: &str) -> Result<Self, SnapshotError> {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        Ok(Self {
            file,
            tmp,
            path,
            done: false,
        })
    }

    /// The temporary path (for errors about writing it).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the data and renames the file into place (the directory is not synced).
    pub fn persist(mut self) -> Result<PathBuf, SnapshotError> {
        self.file.sync_all().map_err(io_err(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        self.done = true;
        Ok(self.path.clone())
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dir/<name>` through a synced temporary file and a rename.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut t = TmpFile::create(dir, name)?;
    let tmp = t.tmp_path().to_owned();
    t.file.write_all(bytes).map_err(io_err(&tmp))?;
    t.persist()?;
    Ok(())
}

/// Makes `dir/<name>` the same file as `from` (a hard link; a copy across file systems).
/// An existing `dir/<name>` is kept: layer names are unique, so it is that layer.
pub fn link_into(from: &Path, dir: &Path, name: &str) -> Result<(), SnapshotError> {
    let to = dir.join(name);
    if to.exists() {
        return Ok(());
    }
    match std::fs::hard_link(from, &to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut t = TmpFile::create(dir, name)?;
            let mut src = File::open(from).map_err(io_err(from))?;
            let tmp = t.tmp_path().to_owned();
            std::io::copy(&mut src, &mut t.file).map_err(io_err(&tmp))?;
            t.persist()?;
            Ok(())
        }
        Err(source) => Err(SnapshotError::Io {
            path: from.to_owned(),
            source,
        }),
    }
}

/// Whether `name` is a file hearth writes into snapshot directories (a memory layer or
/// a temporary file), the kind [`remove_unreferenced`] may remove.
fn is_ours(name: &str) -> bool {
    name.ends_with(TMP_SUFFIX) || name.starts_with("memory-") || name.starts_with("diff-")
}

/// Removes the memory layers and temporary files in `dir` that `keep` does not name
/// (those of replaced snapshots, or left by a writer that crashed). A VM that still maps
/// one keeps its pages: only the name goes.
pub fn remove_unreferenced(dir: &Path, keep: &[String]) -> Result<(), SnapshotError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_ours(name) && !keep.iter().any(|k| k == name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    sync_dir(dir)
}
