//! Why a snapshot could not be written, read or restored: one line each, naming the file.

use std::path::PathBuf;

use super::{PREVIOUS_VERSION, VERSION};

/// Errors writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be created, written or read.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Encoding failed.
    #[error("cannot encode the VM state: {0}")]
    Encode(String),
    /// Not a hearth state file.
    #[error("{0} is not a hearth snapshot state file (wrong magic number)")]
    BadMagic(PathBuf),
    /// Written by an older hearth in the bincode format (version 1).
    #[error("{path} has snapshot format version {found} (bincode, written by an older hearth); this hearth reads versions {PREVIOUS_VERSION} and {VERSION} (postcard) only: take the snapshot again with this hearth")]
    BincodeVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Written by another format version.
    #[error("{path} has snapshot format version {found}; this hearth reads versions {PREVIOUS_VERSION} and {VERSION}")]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{0} is truncated")]
    Truncated(PathBuf),
    /// The checksum does not match.
    #[error("{0} is corrupt: its CRC-64 does not match its contents")]
    BadChecksum(PathBuf),
    /// The payload does not decode.
    #[error("{path} cannot be decoded: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The memory file does not match the state.
    #[error("memory file {path} is {found} bytes, but the VM had {expected} bytes of memory")]
    MemorySize {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The VM's memory size.
        expected: u64,
    },
    /// The snapshot directory is a file (or another non-directory).
    #[error("snapshot directory {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    /// The snapshot directory's parent is missing: only the last level is created.
    #[error("cannot create snapshot directory {0}: its parent directory does not exist (hearth creates only the last level)")]
    NoParent(PathBuf),
    /// A memory layer the state names is not in the directory.
    #[error("{path} is missing: the state file names it as its memory, so this snapshot is incomplete (its files do not belong together)")]
    LayerMissing {
        /// The file.
        path: PathBuf,
    },
    /// A memory layer is not the one the state names.
    #[error("memory layer {path} does not belong to this state file: {reason}")]
    LayerMismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The state's list of memory layers is malformed.
    #[error("snapshot in {dir} has a malformed memory chain: {reason}")]
    BadChain {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A diff was asked for, but the layers of the snapshot it builds on are gone.
    #[error("cannot take a diff snapshot: memory layer {path} of the previous snapshot is gone (replaced by a later snapshot into its directory); take a full snapshot")]
    ParentGone {
        /// The missing layer.
        path: PathBuf,
    },
    /// A diff snapshot of a VM that has no earlier snapshot.
    #[error("cannot take a diff snapshot: this VM has no earlier snapshot to build on (take a full one first, or restore it from one)")]
    NoPrevious,
    /// A tap override names a tap the snapshot does not use.
    #[error(
        "cannot restore with --net-tap {0}=...: no network device of the snapshot uses tap {0}"
    )]
    NoSuchTap(String),
    /// A disk override names a disk the snapshot does not have.
    #[error("cannot restore with --disk-path {p}=...: the snapshot has no disk at {p}", p = .0.display())]
    NoSuchDisk(PathBuf),
    /// A vsock override for a snapshot without vsock.
    #[error("cannot restore with --vsock-socket: the snapshot has no vsock device")]
    NoVsock,
    /// A diff chain asked for as one Firecracker-style memory file.
    #[error("snapshot in {0} is a chain of {1} memory layers: a state/memory file pair holds one (fold it first with `hearth snapshot merge`)")]
    NotOneLayer(PathBuf, usize),
    /// No random identifier could be made.
    #[error("cannot make a snapshot identifier: getrandom failed: {0}")]
    Random(#[source] std::io::Error),
    /// Mapping the memory file failed.
    #[error("cannot map memory file {path}: {reason}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
