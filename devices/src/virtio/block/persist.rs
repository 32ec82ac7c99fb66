//! Snapshot state of virtio-blk: which file, and its size then. The queue and feature
//! state travels with the transport (`virtio::persist`); requests are completed before a
//! snapshot is taken (the event loop is paused between requests), so none is in flight.

use serde::{Deserialize, Serialize};

use super::{Block, BlockConfig, BlockError};
use crate::persist::Persist;

/// What a restored disk must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The disk as configured.
    pub config: BlockConfig,
    /// Its capacity in sectors when the snapshot was taken.
    pub capacity: u64,
}

impl Persist for Block {
    type State = BlockState;
    type Args = ();
    type Error = BlockError;

    fn save(&self) -> BlockState {
        BlockState {
            config: self.config().clone(),
            capacity: self.disk().capacity(),
        }
    }

    fn restore(_: (), state: &BlockState) -> Result<Block, BlockError> {
        let block = Block::new(state.config.clone())?;
        let now = block.disk().capacity();
        if now != state.capacity {
            return Err(BlockError::SizeChanged {
                path: state.config.path.clone(),
                then: state.capacity,
                now,
            });
        }
        Ok(block)
    }
}
