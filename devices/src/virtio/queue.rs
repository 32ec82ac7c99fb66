//! Serving a virtqueue: the loop every device that completes one chain at a time runs, and
//! checking and filling the buffers of a chain.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemory, GuestMemoryError, Permissions};

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
    drain_queue_until(mem, queue, |chain| Some(serve(chain)))
}

/// [`drain_queue`] for a device that may have to stop (a rate limiter ran dry): `serve`
/// returns `None` to leave the chain in the ring, unused, for the next drain. Draining
/// stops there with notifications left off, so a driver that honours them does not kick
/// the device until it drains again (when its rate limiter's timer fires).
pub fn drain_queue_until<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    mut serve: impl FnMut(DescriptorChain<&M>) -> Option<u32>,
) -> Result<bool, DrainError> {
    let mut used_any = false;
    let mut idle_rounds = 0;
    loop {
        queue.disable_notification(mem).map_err(DrainError::Queue)?;
        let mut progressed = false;
        while let Some(chain) = queue.iter(mem).map_err(DrainError::Queue)?.next() {
            progressed = true;
            let head = chain.head_index();
            let Some(len) = serve(chain) else {
                queue.go_to_previous_position();
                return match used_any {
                    true => queue.needs_notification(mem).map_err(DrainError::Queue),
                    false => Ok(false),
                };
            };
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

/// Why the buffers of a chain cannot be used. The driver sees only a used length; these
/// say what it got wrong.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The head index is past the queue, so the chain has no descriptor at all.
    #[error("the descriptor chain is empty (its head index is past the descriptor table)")]
    Empty,
    /// virtio-queue stopped the walk early: a loop, a next index past the table, or a bad
    /// indirect table.
    #[error("the descriptor chain is broken (a loop, a next index past the table, or a bad indirect table)")]
    Broken,
    /// More descriptors than the device walks.
    #[error("the descriptor chain is longer than {0} descriptors")]
    TooManyDescriptors(usize),
    /// A buffer the device should read is device-writable, or the other way round.
    #[error("descriptor {index} of the chain points the wrong way: the device needs {expected} buffers here")]
    WrongDirection {
        /// Its position in the chain.
        index: usize,
        /// "device-readable" or "device-writable".
        expected: &'static str,
    },
    /// The buffers hold more than the device takes.
    #[error("the chain carries more than {0} bytes")]
    TooLong(u64),
    /// A buffer is not (entirely) in guest memory.
    #[error("the buffer at {addr:#x} ({len} bytes) is not in guest memory")]
    BadBuffer {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

/// How far [`collect_chain`] walks.
#[derive(Debug, Clone, Copy)]
pub struct ChainLimits {
    /// The most descriptors. Without VIRTIO_RING_F_INDIRECT_DESC a chain cannot be longer
    /// than the queue, but virtio-queue follows indirect tables anyway (up to 65535
    /// entries): longer chains are refused rather than walked.
    pub descriptors: usize,
    /// The most bytes in all.
    pub bytes: u64,
}

/// Walks `chain` within `limits`, checking that every buffer is device-writable (or,
/// with `device_writes` false, device-readable) and in guest memory; returns the
/// descriptors and their total length.
pub fn collect_chain<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    device_writes: bool,
    limits: ChainLimits,
) -> Result<(Vec<Descriptor>, u64), ChainError> {
    let (access, expected) = if device_writes {
        (Permissions::Write, "device-writable")
    } else {
        (Permissions::Read, "device-readable")
    };
    let mut descs = Vec::with_capacity(4);
    let mut total = 0u64;
    // virtio-queue bounds the walk (queue size, or indirect table size) and stops at
    // loops, indices past the table and unreadable descriptors.
    for desc in chain {
        if descs.len() == limits.descriptors {
            return Err(ChainError::TooManyDescriptors(limits.descriptors));
        }
        if desc.is_write_only() != device_writes {
            return Err(ChainError::WrongDirection {
                index: descs.len(),
                expected,
            });
        }
        total += u64::from(desc.len());
        if total > limits.bytes {
            return Err(ChainError::TooLong(limits.bytes));
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return Err(ChainError::BadBuffer {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            });
        }
        descs.push(desc);
    }
    match descs.last() {
        None => Err(ChainError::Empty),
        // The walk ended on a descriptor that still says NEXT: virtio-queue cut it short.
        Some(last) if last.has_next() => Err(ChainError::Broken),
        Some(_) => Ok((descs, total)),
    }
}

/// Copies `bytes` into the buffers `descs` in order, as far as they reach; returns how
/// many were written.
pub fn write_to_buffers<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    bytes: &[u8],
) -> Result<usize, GuestMemoryError> {
    let mut rest = bytes;
    for d in descs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(d.len() as usize);
        let (now, later) = rest.split_at(n);
        mem.write_slice(now, d.addr())?;
        rest = later;
    }
    Ok(bytes.len() - rest.len())
}
