//! Saving a device's state and rebuilding the device from it, shared by every device
//! model (legacy and virtio).

/// Save a device's state, or rebuild it from saved state plus what cannot be saved
/// (files, sockets, guest memory), in the manner of Firecracker's `Persist`.
pub trait Persist: Sized {
    /// The serializable state.
    type State;
    /// What restoring needs besides the state.
    type Args;
    /// The error restoring can fail with.
    type Error;
    /// Captures the state (the VM is paused).
    fn save(&self) -> Self::State;
    /// Rebuilds the device.
    fn restore(args: Self::Args, state: &Self::State) -> Result<Self, Self::Error>;
}
