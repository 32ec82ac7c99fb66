//! Snapshot state of virtio-blk: which file, and its size then. The queue and feature
//! state travels with the transport (`virtio::persist`); requests are completed before a
//! snapshot is taken (the event loop is paused between requests), so none is in flight.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Block, BlockConfig, BlockError};
use crate::persist::Persist;

/// What a restored disk must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The disk image.
    pub path: PathBuf,
    /// Attached read-only.
    pub read_only: bool,
    /// The serial number as configured.
    pub id: Option<String>,
    /// Its capacity in sectors when the snapshot was taken.
    pub capacity: u64,
}

impl Persist for Block {
    type State = BlockState;
    type Args = ();
    type Error = BlockError;

    fn save(&self) -> BlockState {
        let config = self.config().clone();
        BlockState {
            path: config.path,
            read_only: config.read_only,
            id: config.id,
            capacity: self.disk().capacity(),
        }
    }

    fn restore(_: (), state: &BlockState) -> Result<Block, BlockError> {
        let block = Block::new(BlockConfig {
            path: state.path.clone(),
            read_only: state.read_only,
            id: state.id.clone(),
        })?;
        let now = block.disk().capacity();
        if now != state.capacity {
            return Err(BlockError::SizeChanged {
                path: state.path.clone(),
                then: state.capacity,
                now,
            });
        }
        Ok(block)
    }
}
