//! A virtio queue run with the vm-memory / virtio-queue versions fuse-backend-rs was built
//! against (0.17), over the guest memory hearth mapped with 0.18.
//!
//! fuse-backend-rs reads requests and writes replies straight in guest memory through its
//! `Reader` and `VirtioFsWriter`, which take a virtio-queue 0.17 descriptor chain over a
//! vm-memory 0.17 `GuestMemory`. Both versions describe memory the same way (regions of
//! host mappings at guest addresses), so the device builds a 0.17 view whose regions point
//! at the same host mappings (no copy, no new mapping) and keeps the 0.18 memory alive
//! beside it.

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use log::warn;
use virtio_queue_017::QueueT as _;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMemoryMmap;
use vm_memory_017::GuestAddress as GuestAddress017;

use super::share::Share;
use crate::virtio::ActivateError;

type Memory017 = vm_memory_017::GuestMemoryMmap;

/// One virtio-fs queue.
pub struct FuseQueue {
    /// The 0.17 view of `_mem`'s regions; valid while `_mem` lives.
    alias: Memory017,
    /// Keeps the host mappings `alias` points into alive.
    _mem: GuestMemoryMmap,
    queue: virtio_queue_017::Queue,
    max_size: u16,
    index: usize,
}

impl std::fmt::Debug for FuseQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseQueue")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn bad(index: usize, reason: String) -> ActivateError {
    ActivateError::BadQueue { index, reason }
}

/// A vm-memory 0.17 view of the same host mappings as `mem`.
fn alias_memory(mem: &GuestMemoryMmap, index: usize) -> Result<Memory017, ActivateError> {
    let mut regions = Vec::new();
    for region in mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| bad(index, format!("guest memory region: {e}")))?;
        let len = usize::try_from(region.len())
            .map_err(|_| bad(index, "guest memory region too large".into()))?;
        // SAFETY: `host` is the start of a live mapping of `len` bytes owned by `mem`; the
        // alias does not own it (build_raw never unmaps), and every FuseQueue holding an
        // alias also holds a clone of `mem`, which keeps the mapping alive as long.
        let mapping = unsafe {
            vm_memory_017::MmapRegion::build_raw(
                host,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            )
        }
        .map_err(|e| bad(index, format!("cannot alias guest memory: {e}")))?;
        let region = vm_memory_017::GuestRegionMmap::new(
            mapping,
            GuestAddress017(region.start_addr().raw_value()),
        )
        .ok_or_else(|| bad(index, "guest memory region wraps around".into()))?;
        regions.push(region);
    }
    Memory017::from_regions(regions).map_err(|e| bad(index, format!("guest memory: {e}")))
}

impl FuseQueue {
    /// Takes over a queue the driver set up (its state read from hearth's queue).
    pub fn new(
        mem: &GuestMemoryMmap,
        state: virtio_queue::QueueState,
        index: usize,
    ) -> Result<FuseQueue, ActivateError> {
        let alias = alias_memory(mem, index)?;
        let state017 = virtio_queue_017::QueueState {
            max_size: state.max_size,
            next_avail: state.next_avail,
            next_used: state.next_used,
            event_idx_enabled: state.event_idx_enabled,
            size: state.size,
            ready: state.ready,
            desc_table: state.desc_table,
            avail_ring: state.avail_ring,
            used_ring: state.used_ring,
        };
        let queue =
            virtio_queue_017::Queue::try_from(state017).map_err(|e| bad(index, e.to_string()))?;
        if !queue.is_valid(&alias) {
            return Err(bad(
                index,
                "its rings are not in guest memory or misaligned".into(),
            ));
        }
        Ok(FuseQueue {
            alias,
            _mem: mem.clone(),
            queue,
            max_size: state.max_size,
            index,
        })
    }

    /// The queue's state in hearth's terms (snapshots, the transport).
    pub fn state(&self) -> virtio_queue::QueueState {
        virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.queue.next_avail(),
            next_used: self.queue.next_used(),
            event_idx_enabled: self.queue.event_idx_enabled(),
            size: self.queue.size(),
            ready: self.queue.ready(),
            desc_table: self.queue.desc_table(),
            avail_ring: self.queue.avail_ring(),
            used_ring: self.queue.used_ring(),
        }
    }

    /// Serves every request the driver has made available; returns how many completed.
    /// A malformed request completes with nothing written (the driver sees a reply
    /// shorter than a FUSE header and fails that request).
    pub fn serve(&mut self, server: &Server<Share>) -> u64 {
        let mut served = 0;
        // Stops also when the driver's avail index is impossible: nothing more is served.
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.alias) {
            let head = chain.head_index();
            let written = match (
                Reader::from_descriptor_chain(&self.alias, chain.clone()),
                VirtioFsWriter::new(&self.alias, chain),
            ) {
                (Ok(r), Ok(w)) => match server.handle_message(r, Writer::VirtioFs(w), None, None) {
                    Ok(n) => n,
                    Err(e) => {
                        log::debug!("virtio-fs: bad request: {e}");
                        0
                    }
                },
                (Err(e), _) | (_, Err(e)) => {
                    log::debug!("virtio-fs: bad descriptor chain: {e}");
                    0
                }
            };
            let len = u32::try_from(written).unwrap_or(u32::MAX);
            if let Err(e) = self.queue.add_used(&self.alias, head, len) {
                warn!("virtio-fs: queue {}: {e}", self.index);
                break;
            }
            served += 1;
        }
        served
    }

    /// The queue size the driver chose.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }
}
