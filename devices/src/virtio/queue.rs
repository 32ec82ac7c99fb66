//! Serving a virtqueue: the loop every device that completes one chain at a time runs.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

/// Why a queue could not be served: the driver broke the ring itself. The queue stays
/// stuck until the driver resets the device.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// virtio-queue refused the ring (e.g. an available index too far ahead).
    #[error("the virtio queue is unusable: {0}")]
    Queue(#[source] virtio_queue::Error),
    /// The available ring announces buffers that cannot be popped.
    #[error("the available ring announces buffers that cannot be read")]
    StuckRing,
}

/// Serves every chain the driver made available in `queue`: `serve` handles one chain
/// and returns its used length (the bytes it wrote into guest memory), and the chain goes
/// back to the driver. Returns whether the driver should now be interrupted.
///
/// Notifications stay off while draining and the ring is checked again after turning
/// them back on, so a chain added meanwhile is never left waiting. `serve` reports bad
/// chains through their used length (and the device's own status fields): only a broken
/// queue is an error, and chains used before it still deserve an interrupt (the caller
/// usually raises one anyway; a spurious one is harmless).
pub fn drain_queue<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    mut serve: impl FnMut(DescriptorChain<&M>) -> u32,
) -> Result<bool, DrainError> {
    let mut used_any = false;
    let mut idle_rounds = 0;
    loop {
        queue.disable_notification(mem).map_err(DrainError::Queue)?;
        let mut progressed = false;
        while let Some(chain) = queue.iter(mem).map_err(DrainError::Queue)?.next() {
            progressed = true;
            let head = chain.head_index();
            let len = serve(chain);
            // Fails only for a head index past the queue, which the driver cannot be told
            // about anyway; the following chains may still be fine.
            if queue.add_used(mem, head, len).is_ok() {
                used_any = true;
            }
        }
        if !queue.enable_notification(mem).map_err(DrainError::Queue)? {
            break;
        }
        // More is available: normally the driver added it while notifications were off.
        // Twice in a row without popping anything means the ring cannot be read, and
        // looping on would hang the event loop.
        idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
        if idle_rounds > 1 {
            return Err(DrainError::StuckRing);
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(DrainError::Queue)
}
