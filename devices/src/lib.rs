//! Device models for the hearth VMM.
//!
//! Each device keeps its wire handling, event wiring and snapshot state side by side in
//! its own folder. The VMM reaches every device through [`bus::BusDevice`]: vCPU threads
//! forward port I/O and MMIO exits to a [`bus::Bus`], while anything that can wait (queue
//! notifications, tap and socket readiness) runs on the event loop.

pub mod bus;
pub mod legacy;
pub mod persist;
pub mod rate_limiter;
pub mod stale_socket;
pub mod virtio;

/// Guest memory as hearth and its devices use it: vm-memory's mmap backend with a
/// dirty-page bitmap, so that the pages the devices write (used rings, received data)
/// reach incremental snapshots beside the ones KVM logs for the guest.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;
/// A slice of [`GuestMemoryMmap`]: writes through it mark its pages dirty.
pub type GuestSlice<'a> =
    vm_memory::VolatileSlice<'a, vm_memory::bitmap::BS<'a, vm_memory::bitmap::AtomicBitmap>>;
