//! Snapshot state of virtio-net: the tap's name, the MAC in use, and a frame read from
//! the tap that was still waiting for a guest buffer. The tap is reopened by name on
//! restore; queue and feature state travel with the transport (`virtio::persist`).

use serde::{Deserialize, Serialize};

use super::{Net, NetConfig, NetError};
use crate::persist::Persist;

/// What a restored network device needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The tap, with the MAC the guest knows (a generated one included).
    pub config: NetConfig,
    /// A received frame (virtio-net header first) not yet given to the guest.
    pub pending_frame: Option<Vec<u8>>,
}

impl Persist for Net {
    type State = NetState;
    type Args = ();
    type Error = NetError;

    fn save(&self) -> NetState {
        let mut config = self.config().clone();
        config.mac = Some(self.mac());
        NetState {
            config,
            pending_frame: self.pending_frame().map(<[u8]>::to_vec),
        }
    }

    fn restore(_: (), state: &NetState) -> Result<Net, NetError> {
        let mut net = Net::new(state.config.clone())?;
        if let Some(frame) = &state.pending_frame {
            net.set_pending_frame(frame);
        }
        Ok(net)
    }
}
