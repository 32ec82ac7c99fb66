//! The virtio-fs device: configuration space (tag, one request queue), activation, and
//! the queue work the event loop runs.

use std::io;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::queue::FuseQueue;
use super::share::Share;
use super::{FsConfig, MAX_TAG_LEN, NUM_QUEUES, QUEUE_SIZE};
use crate::virtio::{ActivateError, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

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

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; NUM_QUEUES];

/// What activation hands the event loop.
pub(super) struct Active {
    pub(super) queues: Vec<FuseQueue>,
    pub(super) interrupt: Arc<Interrupt>,
}

/// A virtio-fs device exporting one host directory.
pub struct Fs {
    config: FsConfig,
    config_space: Vec<u8>,
    server: Server<Share>,
    acked_features: u64,
    pub(super) queue_evts: [EventFd; NUM_QUEUES],
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    pub(super) queue_evts_registered: bool,
    requests: u64,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("config", &self.config)
            .field("activated", &self.active.is_some())
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
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd);
        Ok(Fs {
            config,
            config_space,
            server: Server::new(share),
            acked_features: 0,
            queue_evts: [eventfd()?, eventfd()?],
            activate_evt: eventfd()?,
            active: None,
            queue_evts_registered: false,
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
    /// completed.
    pub fn process_queue(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        let served = queue.serve(&self.server);
        self.requests += served;
        if served > 0 {
            // Fails only when an interrupt is already pending.
            let _ = active.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(FuseQueue::state))
            .collect()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The configuration space is read-only.
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
        let queues: [Queue; NUM_QUEUES] = crate::virtio::expect_queues("virtio-fs", queues, &[])?;
        let queues = queues
            .iter()
            .enumerate()
            .map(|(index, q)| FuseQueue::new(&mem, q.state(), index))
            .collect::<Result<Vec<_>, _>>()?;
        self.activate_evt.write(1).map_err(ActivateError::Notify)?;
        self.active = Some(Active { queues, interrupt });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}
