//! Guest RAM: anonymous mappings laid out around the 32-bit MMIO gap.

use vm_memory::GuestAddress;

pub use hearth_devices::{GuestMemoryMmap, GuestRegionMmap};

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host has less memory than asked for.
    #[error("guest memory of {asked} MiB is more than this host has ({host} MiB of RAM and swap); ask for less with --memory")]
    TooLarge {
        /// MiB asked for.
        asked: u64,
        /// MiB the host has.
        host: u64,
    },
    /// mmap failed.
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
}

/// The RAM ranges for a guest of `size` bytes: below the MMIO gap first, the rest above
/// 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > MMIO_GAP_START {
        ranges.push((GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START));
    }
    ranges
}

/// The host's RAM plus swap, the most guest memory hearth will map.
pub fn host_memory_limit() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    let unit = u64::from(info.mem_unit.max(1));
    (info.totalram as u64)
        .saturating_add(info.totalswap as u64)
        .saturating_mul(unit)
}

/// Maps `size` bytes of guest RAM (lazily: untouched pages cost nothing).
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let host = host_memory_limit();
    if size > host {
        return Err(MemoryError::TooLarge {
            asked: size >> 20,
            host: host >> 20,
        });
    }
    let too_large = || MemoryError::TooLarge {
        asked: size >> 20,
        host: host >> 20,
    };
    let ranges = ram_ranges(size)
        .into_iter()
        .map(|(a, s)| Ok((a, usize::try_from(s).map_err(|_| too_large())?)))
        .collect::<Result<Vec<(GuestAddress, usize)>, MemoryError>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map(size >> 20, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]
        );
    }

    #[test]
    fn refuses_more_than_the_host_has() {
        let err = create(u64::MAX / 2).unwrap_err();
        assert!(err.to_string().contains("more than this host has"), "{err}");
    }
}
