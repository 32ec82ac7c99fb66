//! The backing file of a virtio-blk device: opened once (read-write unless read-only),
//! sized in whole sectors, with the serial number GET_ID returns.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{BlockConfig, DISK_ID_LEN, SECTOR_SHIFT};

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file cannot be opened at all.
    #[error("disk {}: cannot open: {source}; check the path and its permissions", .path.display())]
    Open {
        /// The disk path.
        path: PathBuf,
        /// What open(2) said.
        #[source]
        source: io::Error,
    },
    /// The file can be read but not written.
    #[error(
        "disk {}: cannot open for writing: {source}; pass readonly=on to attach it read-only",
        .path.display()
    )]
    OpenWritable {
        /// The disk path.
        path: PathBuf,
        /// What open(2) said.
        #[source]
        source: io::Error,
    },
    /// The path names a directory.
    #[error("disk {}: is a directory; give the path of a raw disk image", .path.display())]
    IsDirectory {
        /// The disk path.
        path: PathBuf,
    },
    /// The size of the file cannot be found (a pipe, a character device).
    #[error(
        "disk {}: cannot find its size: {source}; use a raw image file or a block device",
        .path.display()
    )]
    Size {
        /// The disk path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The serial number does not fit.
    #[error("disk id {id:?} is {len} bytes long; a virtio-blk serial holds at most 20 bytes")]
    IdTooLong {
        /// The id given.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A disk of 0 bytes: nothing a guest could use, most likely a mistake.
    #[error("disk {}: is empty (0 bytes); give it a size, e.g. truncate -s 64M {}", .path.display(), .path.display())]
    Empty {
        /// The disk path.
        path: PathBuf,
    },
}

/// What the request engine counted (Firecracker's block metric names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// Reads served.
    pub read_count: u64,
    /// Their bytes.
    pub read_bytes: u64,
    /// Writes served.
    pub write_count: u64,
    /// Their bytes.
    pub write_bytes: u64,
    /// Flushes served.
    pub flush_count: u64,
    /// Requests refused for their shape (completed with IOERR or UNSUPP).
    pub invalid_reqs_count: u64,
    /// Requests whose file I/O or guest-memory transfer failed.
    pub execute_fails: u64,
}

/// The backing file of a virtio-blk device.
#[derive(Debug)]
pub struct Disk {
    pub(super) file: File,
    /// Size in sectors; a partial sector at the end of the file is not exposed.
    nsectors: u64,
    read_only: bool,
    /// The GET_ID serial, zero-padded.
    id: [u8; DISK_ID_LEN],
    /// Requests served so far.
    pub(super) counters: BlockCounters,
}

impl Disk {
    /// Opens the disk `config` describes (once, read-write unless read-only) and sizes it.
    pub fn open(config: &BlockConfig) -> Result<Disk, DiskError> {
        let path = &config.path;
        let mut file = open_file(path, config.read_only)?;
        let metadata = file.metadata().map_err(|source| DiskError::Size {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            return Err(DiskError::IsDirectory { path: path.clone() });
        }
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.clone(),
                source,
            })?;
        // Only files: a device without a size (/dev/null) stays an empty disk.
        if size == 0 && metadata.is_file() {
            return Err(DiskError::Empty { path: path.clone() });
        }
        let id = match &config.id {
            Some(id) => {
                let mut bytes = [0u8; DISK_ID_LEN];
                bytes
                    .get_mut(..id.len())
                    .ok_or(DiskError::IdTooLong {
                        id: id.clone(),
                        len: id.len(),
                    })?
                    .copy_from_slice(id.as_bytes());
                bytes
            }
            None => derived_id(&metadata),
        };
        Ok(Disk {
            file,
            nsectors: size >> SECTOR_SHIFT,
            read_only: config.read_only,
            id,
            counters: BlockCounters::default(),
        })
    }

    /// What the request engine counted so far.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// The disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.nsectors
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The serial number GET_ID returns (zero-padded, not NUL-terminated when 20 bytes long).
    pub fn id(&self) -> &[u8; DISK_ID_LEN] {
        &self.id
    }

    /// Positions the file at `sector`.
    pub(super) fn seek(&mut self, sector: u64) -> io::Result<()> {
        self.file
            .seek(SeekFrom::Start(sector << SECTOR_SHIFT))
            .map(drop)
    }
}

fn open_file(path: &Path, read_only: bool) -> Result<File, DiskError> {
    let open = |write| OpenOptions::new().read(true).write(write).open(path);
    open(!read_only).map_err(|source| {
        if source.raw_os_error() == Some(libc::EISDIR) {
            return DiskError::IsDirectory {
                path: path.to_path_buf(),
            };
        }
        // Only suggest readonly=on when that would actually work.
        if !read_only && open(false).is_ok() {
            return DiskError::OpenWritable {
                path: path.to_path_buf(),
                source,
            };
        }
        DiskError::Open {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A serial that stays the same for the same file across boots (as Firecracker does it):
/// its device, raw device and inode numbers, cut to 20 bytes.
fn derived_id(metadata: &std::fs::Metadata) -> [u8; DISK_ID_LEN] {
    let text = format!("{}{}{}", metadata.dev(), metadata.rdev(), metadata.ino());
    let mut id = [0u8; DISK_ID_LEN];
    let n = text.len().min(DISK_ID_LEN);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}
