//! The virtio-blk device: features, configuration space, and the queue work the event
//! loop runs; the rest of [`VirtioDevice`] is the common part's.

use std::path::PathBuf;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::disk::{Disk, DiskError};
use super::request::{process_queue, process_queue_limited};
use super::{CONFIG_SPACE_SIZE, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX};
use crate::rate_limiter::{
    LimiterSlot, RateLimited, RateLimiter, RateLimiterConfig, RateLimiterError,
};
use crate::virtio::VirtioCommon;

/// What a block device is built from (the VMM's disk configuration maps onto it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw disk image (or host block device).
    pub path: PathBuf,
    /// Attach it read-only: the file is opened read-only and the guest sees VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The serial number the guest reads with GET_ID (at most 20 bytes); derived from the
    /// file's device and inode numbers when absent.
    pub id: Option<String>,
}

/// Why a block device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk could not be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
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
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the block device: {0}")]
    EventFd(#[source] std::io::Error),
    /// The rate limiter's timer could not be made.
    #[error("block device: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// A virtio-blk device over one raw disk.
#[derive(Debug)]
pub struct Block {
    common: VirtioCommon,
    config: BlockConfig,
    disk: Disk,
    pub(super) rate_limiter: RateLimiter,
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
        // stay 0: their features are not offered. Every field is read-only for the driver
        // (VIRTIO_BLK_F_CONFIG_WCE is not offered).
        let mut config_space = vec![0u8; CONFIG_SPACE_SIZE];
        config_space[0..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        #[allow(clippy::cast_possible_truncation)] // 512
        config_space[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());

        let common =
            VirtioCommon::new(VIRTIO_ID_BLOCK, avail_features, &[QUEUE_SIZE], config_space)
                .map_err(BlockError::EventFd)?;
        Ok(Block {
            common,
            config,
            disk,
            rate_limiter: RateLimiter::new(&RateLimiterConfig::default())?,
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

    /// The device's rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// Puts another file behind the disk (Firecracker's drive PATCH), with the same
    /// read-only setting, and tells an active driver that its configuration (the
    /// capacity) changed. On error the old file stays.
    pub fn set_path(&mut self, path: PathBuf) -> Result<(), BlockError> {
        let config = BlockConfig {
            path,
            ..self.config.clone()
        };
        let mut disk = Disk::open(&config)?;
        disk.counters = self.disk.counters;
        self.common.config_space_mut()[0..8].copy_from_slice(&disk.capacity().to_le_bytes());
        self.disk = disk;
        self.config = config;
        if let Some((_, _, interrupt)) = self.common.active_queues() {
            // Fails only when an interrupt is already pending, which the driver will see.
            let _ = interrupt.trigger(crate::virtio::VIRTIO_MMIO_INT_CONFIG);
        }
        Ok(())
    }

    /// Serves what the driver queued (as far as the rate limiter lets it) and interrupts
    /// it if anything completed.
    pub(super) fn process_queue(&mut self) {
        let disk = &mut self.disk;
        let limiter = &mut self.rate_limiter;
        // Errs when the driver broke its own ring: the queue stays stuck until it resets
        // the device (not logged, so that a guest cannot flood the host's log).
        self.common.serve_queue(0, |mem, queue| {
            match limiter.is_unlimited() {
                true => process_queue(disk, mem, queue),
                false => process_queue_limited(disk, limiter, mem, queue),
            }
            .unwrap_or(true)
        });
    }
}

impl RateLimited for Block {
    fn set_rate_limiter(&mut self, _slot: LimiterSlot, config: &RateLimiterConfig) -> bool {
        self.rate_limiter.update(config);
        true
    }
}

crate::virtio_device!(Block);

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::virtio::VirtioDevice;

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
            matches!(err, BlockError::Disk(DiskError::IdTooLong { len: 21, .. })),
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
        assert!(matches!(err, BlockError::Disk(DiskError::Open { .. })));
        assert!(
            err.to_string().contains("/nonexistent/hearth/disk.img"),
            "{err}"
        );

        let dir = std::env::temp_dir();
        for ro in [false, true] {
            let err = Block::new(config(&dir, ro)).err().unwrap();
            assert!(
                matches!(err, BlockError::Disk(DiskError::IsDirectory { .. })),
                "{err}"
            );
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
            assert!(
                matches!(err, BlockError::Disk(DiskError::OpenWritable { .. })),
                "{err}"
            );
            assert!(err.to_string().contains("readonly=on"), "{err}");
            assert!(Block::new(config(f.as_path(), true)).is_ok());
        }
    }
}
