//! Snapshot state of virtio-rng: nothing but its counter; queue and feature state travel
//! with the transport (`virtio::persist`), and entropy is never replayed.

use serde::{Deserialize, Serialize};

use super::{Rng, RngError};
use crate::persist::Persist;

/// What a restored entropy device carries over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Bytes served so far.
    pub bytes_served: u64,
}

impl Persist for Rng {
    type State = RngState;
    type Args = ();
    type Error = RngError;

    fn save(&self) -> RngState {
        RngState {
            bytes_served: self.bytes_served(),
        }
    }

    fn restore(_: (), state: &RngState) -> Result<Rng, RngError> {
        let mut rng = Rng::new()?;
        rng.set_bytes_served(state.bytes_served);
        Ok(rng)
    }
}
