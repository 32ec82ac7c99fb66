//! The virtio-blk device: opening the backing file, features, configuration space, and
//! the [`VirtioDevice`] side that the transport drives from vCPU threads.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::{Disk, CONFIG_SPACE_SIZE, DISK_ID_LEN, QUEUE_SIZE, SECTOR_SHIFT, SECTOR_SIZE, SEG_MAX};
use crate::virtio::{ActivateError, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

/// What the user asked for on the command line or in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// The raw disk image (or host block device).
    pub path: PathBuf,
    /// Attach it read-only: the file is opened read-only and the guest sees VIRTIO_BLK_F_RO.
    /// Spelled `readonly` as on the command line; `read_only` is accepted too.
    #[serde(default, rename = "readonly", alias = "read_only")]
    pub read_only: bool,
    /// The serial number the guest reads with GET_ID (at most 20 bytes); derived from the
    /// file's device and inode numbers when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// Why a block device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A restored disk is not the size it was when the snapshot was taken.
    #[error("disk {}: its size changed since the snapshot ({then} sectors then, {now} now); restore with the disk as it was", .path.display())]
    SizeChanged {
        /// The disk.
        path: PathBuf,
        /// Sectors in the snapshot.
        then: u64,
        /// Sectors now.
        now: u64,
    },
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
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the block device: {0}")]
    EventFd(#[source] io::Error),
}

impl Disk {
    /// Opens the disk `config` describes (once, read-write unless read-only) and sizes it.
    pub fn open(config: &BlockConfig) -> Result<Disk, BlockError> {
        let path = &config.path;
        let mut file = open_file(path, config.read_only)?;
        let metadata = file.metadata().map_err(|source| BlockError::Size {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            return Err(BlockError::IsDirectory { path: path.clone() });
        }
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.clone(),
                source,
            })?;
        // Only files: a device without a size (/dev/null) stays an empty disk.
        if size == 0 && metadata.is_file() {
            return Err(BlockError::Empty { path: path.clone() });
        }
        let id = match &config.id {
            Some(id) => {
                let mut bytes = [0u8; DISK_ID_LEN];
                bytes
                    .get_mut(..id.len())
                    .ok_or(BlockError::IdTooLong {
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
        })
    }
}

fn open_file(path: &Path, read_only: bool) -> Result<File, BlockError> {
    let open = |write| OpenOptions::new().read(true).write(write).open(path);
    open(!read_only).map_err(|source| {
        if source.raw_os_error() == Some(libc::EISDIR) {
            return BlockError::IsDirectory {
                path: path.to_path_buf(),
            };
        }
        // Only suggest readonly=on when that would actually work.
        if !read_only && open(false).is_ok() {
            return BlockError::OpenWritable {
                path: path.to_path_buf(),
                source,
            };
        }
        BlockError::Open {
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

/// The device's only queue.
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];

/// What activation hands the event loop.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) queue: Queue,
    pub(super) interrupt: Arc<Interrupt>,
}

/// A virtio-blk device over one raw disk.
pub struct Block {
    config: BlockConfig,
    pub(super) disk: Disk,
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    pub(super) queue_evts: [EventFd; 1],
    /// Written by `activate` (on a vCPU thread) so that the event loop starts watching
    /// the queue.
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    /// Whether the event loop watches `queue_evts` (it keeps doing so across resets).
    pub(super) queue_evts_registered: bool,
}

impl Block {
    /// Opens the disk and builds the device (not yet activated by any driver).
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let disk = Disk::open(&config)?;
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if config.read_only {
            avail_features |= 1u64 << VIRTIO_BLK_F_RO;
        }

        // struct virtio_blk_config up to blk_size, little-endian. size_max and geometry
        // stay 0: their features are not offered.
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[0..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config_space[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());

        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd);
        Ok(Block {
            config,
            disk,
            avail_features,
            acked_features: 0,
            config_space,
            queue_evts: [eventfd()?],
            activate_evt: eventfd()?,
            active: None,
            queue_evts_registered: false,
        })
    }

    /// What the device was built from.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// The backing disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The features the driver accepted (0 until FEATURES_OK).
    /// Serves what the driver queued and interrupts it if anything completed.
    pub(super) fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        // Errs when the driver broke its own ring: the queue stays stuck until it resets
        // the device (not logged, so that a guest cannot flood the host's log). Requests
        // completed before that still deserve an interrupt; a spurious one is harmless.
        let notify = self
            .disk
            .process_queue(&active.mem, &mut active.queue)
            .unwrap_or(true);
        if notify {
            // Fails only when the irqfd counter is saturated, i.e. an interrupt is already
            // pending.
            let _ = active.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only for the driver (VIRTIO_BLK_F_CONFIG_WCE is not offered).
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [queue] = crate::virtio::expect_queues("virtio-blk", queues, &[])?;
        self.activate_evt.write(1).map_err(ActivateError::Notify)?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        // The queue eventfds stay registered; the event loop ignores them until the next
        // activation.
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn config(path: &Path, read_only: bool) -> BlockConfig {
        BlockConfig {
            path: path.to_path_buf(),
            read_only,
            id: None,
        }
    }

    fn disk_file(size: usize) -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().write_all(&vec![0u8; size]).unwrap();
        f
    }

    #[test]
    fn features_and_config_space() {
        let f = disk_file(3 * 512 + 7);
        let block = Block::new(config(f.as_path(), false)).unwrap();
        assert_eq!(block.device_type(), 2);
        assert_eq!(block.queue_max_sizes(), &[256]);
        let features = block.avail_features();
        assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_ne!(features & (1 << VIRTIO_BLK_F_BLK_SIZE), 0);
        assert_ne!(features & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);

        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 3);
        let mut word = [0u8; 4];
        block.read_config(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), 254);
        block.read_config(20, &mut word);
        assert_eq!(u32::from_le_bytes(word), 512);
        block.read_config(8, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0);
        // Straddling the end, past it, and at absurd offsets: zeros, no panic.
        let mut tail = [0xffu8; 8];
        block.read_config(20, &mut tail);
        assert_eq!(tail, [0, 2, 0, 0, 0, 0, 0, 0]);
        block.read_config(0xe00, &mut word);
        assert_eq!(word, [0; 4]);
        block.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 8]);

        let ro = Block::new(config(f.as_path(), true)).unwrap();
        assert_ne!(ro.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn acked_features_are_limited_to_offered_ones() {
        let f = disk_file(512);
        let mut block = Block::new(config(f.as_path(), false)).unwrap();
        block.set_acked_features(u64::MAX);
        assert_eq!(block.acked_features(), block.avail_features());
        block.reset();
        assert_eq!(block.acked_features(), 0);
    }

    #[test]
    fn ids_are_given_or_derived() {
        let f = disk_file(512);
        let mut cfg = config(f.as_path(), false);
        cfg.id = Some("x".repeat(20));
        assert_eq!(Block::new(cfg.clone()).unwrap().disk().id(), &[b'x'; 20]);
        cfg.id = Some("y".repeat(21));
        let err = Block::new(cfg).err().unwrap();
        assert!(
            matches!(err, BlockError::IdTooLong { len: 21, .. }),
            "{err}"
        );
        let derived = *Block::new(config(f.as_path(), false)).unwrap().disk().id();
        assert_ne!(derived, [0; 20]);
        assert_eq!(
            Block::new(config(f.as_path(), true)).unwrap().disk().id(),
            &derived
        );
    }

    #[test]
    fn open_errors_name_the_path_and_the_fix() {
        let missing = Path::new("/nonexistent/hearth/disk.img");
        let err = Block::new(config(missing, false)).err().unwrap();
        assert!(matches!(err, BlockError::Open { .. }));
        assert!(
            err.to_string().contains("/nonexistent/hearth/disk.img"),
            "{err}"
        );

        let dir = std::env::temp_dir();
        for ro in [false, true] {
            let err = Block::new(config(&dir, ro)).err().unwrap();
            assert!(matches!(err, BlockError::IsDirectory { .. }), "{err}");
        }

        let err = Block::new(config(Path::new("/dev/null"), true)).map(|b| b.disk().capacity());
        assert_eq!(
            err.ok(),
            Some(0),
            "a character device without size is an empty disk"
        );

        // Root ignores file modes, so only check the read-only hint when it applies.
        let f = disk_file(512);
        std::fs::set_permissions(f.as_path(), std::fs::Permissions::from_mode(0o444)).unwrap();
        if OpenOptions::new().write(true).open(f.as_path()).is_err() {
            let err = Block::new(config(f.as_path(), false)).err().unwrap();
            assert!(matches!(err, BlockError::OpenWritable { .. }), "{err}");
            assert!(err.to_string().contains("readonly=on"), "{err}");
            assert!(Block::new(config(f.as_path(), true)).is_ok());
        }
    }
}
