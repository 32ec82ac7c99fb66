//! The virtio-fs device: configuration space (tag, one request queue), activation, and
//! the queue work the event loop runs.

use std::io;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use fuse_backend_rs::api::server::Server;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::QueueT;

use super::queue::FuseQueue;
use super::share::Share;
use super::{FsConfig, MAX_TAG_LEN, NUM_QUEUES, QUEUE_SIZE};
use crate::virtio::{ActivateError, Interrupt, VirtioCommon, VIRTIO_MMIO_INT_VRING};

/// Why a virtio-fs device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A tag that is empty, too long or has a NUL byte.
    #[error("virtio-fs tag '{0}' is not valid: give 1 to 36 bytes without NUL")]
    Tag(String),
    /// The shared path is not an absolute path to a directory.
    #[error("cannot share {path}: {reason}")]
    Path {
        /// The path.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The passthrough filesystem could not open the directory.
    #[error("cannot share {path}: {source}")]
    Open {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the virtio-fs device: {0}")]
    EventFd(#[source] io::Error),
}

/// A virtio-fs device exporting one host directory.
pub struct Fs {
    common: VirtioCommon,
    config: FsConfig,
    server: Server<Share>,
    /// The queues as served (built from `common`'s at activation; see [`FuseQueue`]).
    fuse_queues: Vec<FuseQueue>,
    requests: u64,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("config", &self.config)
            .field("common", &self.common)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Opens the shared directory and builds the device.
    pub fn new(config: FsConfig) -> Result<Fs, FsError> {
        let tag = config.tag.as_bytes();
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains(&0) {
            return Err(FsError::Tag(config.tag.clone()));
        }
        let path_err = |reason: &str| FsError::Path {
            path: config.path.clone(),
            reason: reason.into(),
        };
        if !config.path.is_absolute() {
            return Err(path_err("give an absolute path"));
        }
        if !config.path.is_dir() {
            return Err(path_err("not a directory (or it does not exist)"));
        }
        let root = config
            .path
            .to_str()
            .ok_or_else(|| path_err("the path is not valid UTF-8"))?;
        let share = Share::new(root, config.read_only).map_err(|source| FsError::Open {
            path: config.path.clone(),
            source,
        })?;
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config_space = vec![0u8; MAX_TAG_LEN + 4];
        config_space[..tag.len()].copy_from_slice(tag);
        config_space[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let common = VirtioCommon::new(
            VIRTIO_ID_FS,
            1u64 << VIRTIO_F_VERSION_1,
            &[QUEUE_SIZE; NUM_QUEUES],
            config_space,
        )
        .map_err(FsError::EventFd)?;
        Ok(Fs {
            common,
            config,
            server: Server::new(share),
            fuse_queues: Vec::new(),
            requests: 0,
        })
    }

    /// What the device exports.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// FUSE requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Serves what the driver queued on queue `index` and interrupts it if anything
    /// completed. Does nothing while the device is reset.
    pub fn process_queue(&mut self, index: usize) {
        let Some((_, queues, interrupt)) = self.common.active_queues() else {
            return;
        };
        let Some(fuse_queue) = self.fuse_queues.get_mut(index) else {
            return;
        };
        let served = fuse_queue.serve(&self.server);
        self.requests += served;
        // hearth's own copy of the queue follows, for whoever reads it.
        if let Some(q) = queues.get_mut(index) {
            let state = fuse_queue.state();
            q.set_next_avail(state.next_avail);
            q.set_next_used(state.next_used);
        }
        if served > 0 {
            // Fails only when an interrupt is already pending.
            let _ = interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }

    fn start(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        // The event loop serves the queues once this returns (it waits for the device's
        // lock), so the 0.17 queues are ready by then.
        self.common.activate(mem.clone(), interrupt)?;
        let queues = self
            .common
            .queues()
            .iter()
            .enumerate()
            .map(|(index, q)| FuseQueue::new(&mem, q.state(), index))
            .collect::<Result<Vec<_>, _>>();
        match queues {
            Ok(q) => {
                self.fuse_queues = q;
                Ok(())
            }
            Err(e) => {
                self.common.reset();
                Err(e)
            }
        }
    }
}

crate::virtio_device!(Fs {
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.start(mem, interrupt)
    }

    fn reset_device(&mut self) {
        self.fuse_queues.clear();
    }
});
