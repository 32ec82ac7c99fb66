//! Snapshot state of virtio-vsock: the CID and socket path. Host-side streams belong to
//! the process that took the snapshot and cannot follow the VM; after a restore the
//! device starts with no connections and sends the driver a TRANSPORT_RESET event (as
//! Firecracker does), so that it drops them; a packet for an old one gets RST. Nothing
//! else reaches the driver's RX queue until it has handled that event (it posts the
//! event buffer again), so a new host connection is never dropped by the reset; host
//! ports carry on from the saved counter. Queue and feature state travel with the
//! transport.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Vsock, VsockConfig, VsockError};
use crate::persist::Persist;

/// What a restored vsock device needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// CID and socket path.
    pub config: VsockConfig,
    /// The host-side port the next host connection gets: a restored device carries on
    /// from it rather than handing out a port the guest may still hold.
    pub next_local_port: u32,
}

/// Removes a socket file nobody listens on any more (left by the snapshotted process).
fn remove_stale_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

impl Persist for Vsock {
    type State = VsockState;
    type Args = ();
    type Error = VsockError;

    fn save(&self) -> VsockState {
        VsockState {
            config: self.config().clone(),
            next_local_port: self.muxer.next_local_port(),
        }
    }

    fn restore(_: (), state: &VsockState) -> Result<Vsock, VsockError> {
        remove_stale_socket(&state.config.socket);
        let mut vsock = Vsock::new(state.config.clone())?;
        vsock.muxer.set_next_local_port(state.next_local_port);
        vsock.owe_transport_reset();
        Ok(vsock)
    }
}
