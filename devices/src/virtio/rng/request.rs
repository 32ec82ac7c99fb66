//! One entropy request at a time: check a chain of device-writable buffers, then fill
//! them (up to [`MAX_REQUEST_LEN`] bytes) from the host's getrandom(2).

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{GuestMemory, GuestMemoryError};

use super::{MAX_REQUEST_LEN, QUEUE_SIZE};
use crate::rate_limiter::{RateLimiter, TokenType};
use crate::virtio::queue::{
    collect_chain, drain_queue, drain_queue_until, write_to_buffers, ChainError, ChainLimits,
    DrainError,
};

/// The longest chain looked at (see the virtio-blk request engine for why a bound).
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Why a request got no bytes (the driver sees a used length of 0).
#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    /// The chain's buffers are unusable (direction, memory, a broken walk).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The host's getrandom failed.
    #[error("getrandom failed: {0}")]
    Random(#[source] io::Error),
    /// Writing into guest memory failed.
    #[error("writing the bytes into guest memory failed: {0}")]
    Memory(#[source] GuestMemoryError),
}

/// Fills `buf` from getrandom(2) (the urandom pool: it does not block once the kernel's
/// pool is initialised, which it is long before a VMM runs).
pub fn host_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which is valid
        // and writable for that long.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Large requests may come back short (at most 32 MiB per call, or a signal).
        filled += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

/// Fills a chain's buffers in order, up to [`MAX_REQUEST_LEN`] bytes in all; returns
/// the bytes written. `scratch` holds them on the way (kept to avoid an allocation per
/// request).
pub fn fill_chain<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    scratch: &mut Vec<u8>,
) -> Result<u32, EntropyError> {
    let limits = ChainLimits {
        descriptors: MAX_DESCRIPTORS,
        bytes: u64::MAX,
    };
    let (descs, capacity) = collect_chain(mem, chain, true, limits)?;
    fill_buffers(mem, &descs, request_len(capacity), scratch)
}

/// The bytes a request with buffers of `capacity` bytes gets.
fn request_len(capacity: u64) -> usize {
    usize::try_from(capacity).map_or(MAX_REQUEST_LEN, |c| c.min(MAX_REQUEST_LEN))
}

fn fill_buffers<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    len: usize,
    scratch: &mut Vec<u8>,
) -> Result<u32, EntropyError> {
    scratch.resize(len, 0);
    host_random(scratch).map_err(EntropyError::Random)?;
    write_to_buffers(mem, descs, scratch).map_err(EntropyError::Memory)?;
    // At most MAX_REQUEST_LEN.
    Ok(u32::try_from(len).unwrap_or(u32::MAX))
}

/// Serves every request the driver made available and returns whether to interrupt it.
/// Errs only when the queue itself is broken.
pub fn process_queue<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    scratch: &mut Vec<u8>,
    bytes_served: &mut u64,
) -> Result<bool, DrainError> {
    drain_queue(mem, queue, |chain| {
        // Not logged: a guest must not be able to flood the host's log.
        let len = fill_chain(mem, chain, scratch).unwrap_or(0);
        *bytes_served += u64::from(len);
        len
    })
}

/// [`process_queue`] within `limiter` (an operation and its bytes per request): a
/// request it has no tokens for stays in the ring until the limiter's timer fires.
pub fn process_queue_limited<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    scratch: &mut Vec<u8>,
    bytes_served: &mut u64,
    limiter: &mut RateLimiter,
) -> Result<bool, DrainError> {
    let limits = ChainLimits {
        descriptors: MAX_DESCRIPTORS,
        bytes: u64::MAX,
    };
    drain_queue_until(mem, queue, |chain| {
        let Ok((descs, capacity)) = collect_chain(mem, chain, true, limits) else {
            return Some(0);
        };
        let len = request_len(capacity);
        if !limiter.consume(1, TokenType::Ops) {
            return None;
        }
        if !limiter.consume(len as u64, TokenType::Bytes) {
            limiter.manual_replenish(1, TokenType::Ops);
            return None;
        }
        let len = fill_buffers(mem, &descs, len, scratch).unwrap_or(0);
        *bytes_served += u64::from(len);
        Some(len)
    })
}

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use crate::GuestMemoryMmap;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::{add_chain, desc, guest_memory, MEM_SIZE};

    const BUF: u64 = 0x2_0000;
    const R: u32 = 0;
    const W: u32 = VRING_DESC_F_WRITE;

    fn mem() -> GuestMemoryMmap {
        guest_memory()
    }

    /// Runs one chain and returns its used length, checking the queue moved on.
    fn run(mem: &GuestMemoryMmap, chain: &[RawDescriptor]) -> u32 {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        add_chain(&vq, 0, chain);
        let mut served = 0;
        assert!(process_queue(mem, &mut q, &mut Vec::new(), &mut served).unwrap());
        assert_eq!(vq.used().idx().load(), 1);
        let len = vq.used().ring().ref_at(0).unwrap().load().len();
        assert_eq!(served, u64::from(len));
        len
    }

    fn distinct(bytes: &[u8]) -> usize {
        let mut seen = [false; 256];
        bytes.iter().for_each(|&b| seen[b as usize] = true);
        seen.iter().filter(|&&s| s).count()
    }

    #[test]
    fn buffers_are_filled_with_random_bytes() {
        let m = mem();
        m.write_slice(&[0u8; 0x3000], GuestAddress(BUF)).unwrap();
        assert_eq!(
            run(&m, &[desc(BUF, 1024, W), desc(BUF + 0x2000, 1024, W)]),
            2048
        );
        let mut a = [0u8; 1024];
        let mut b = [0u8; 1024];
        m.read_slice(&mut a, GuestAddress(BUF)).unwrap();
        m.read_slice(&mut b, GuestAddress(BUF + 0x2000)).unwrap();
        assert!(distinct(&a) > 200 && distinct(&b) > 200);
        assert_ne!(a, b);
        let mut gap = [0xffu8; 16];
        m.read_slice(&mut gap, GuestAddress(BUF + 1024)).unwrap();
        assert_eq!(gap, [0; 16], "nothing written between the buffers");
    }

    #[test]
    fn requests_are_capped() {
        let m = mem();
        m.write_slice(&[0u8; 0x2_0000], GuestAddress(0x4_0000))
            .unwrap();
        assert_eq!(
            run(&m, &[desc(0x4_0000, 0x2_0000, W)]),
            MAX_REQUEST_LEN as u32
        );
        let mut past = [0xffu8; 64];
        m.read_slice(&mut past, GuestAddress(0x4_0000 + MAX_REQUEST_LEN as u64))
            .unwrap();
        assert_eq!(past, [0; 64], "nothing past the cap");
        // Zero-length buffers get zero bytes.
        assert_eq!(run(&m, &[desc(BUF, 0, W)]), 0);
    }

    #[test]
    fn malformed_chains_get_nothing() {
        let m = mem();
        m.write_slice(&[0xeeu8; 64], GuestAddress(BUF)).unwrap();
        let end = MEM_SIZE as u64;
        for chain in [
            vec![desc(BUF, 64, R)],
            vec![desc(BUF, 32, W), desc(BUF + 32, 32, R)],
            vec![desc(end - 8, 64, W)],
            vec![desc(BUF, 32, W), desc(u64::MAX - 2, 64, W)],
        ] {
            assert_eq!(run(&m, &chain), 0, "{chain:?}");
            let mut got = [0u8; 64];
            m.read_slice(&mut got, GuestAddress(BUF)).unwrap();
            assert_eq!(got, [0xee; 64], "untouched: {chain:?}");
        }
    }

    #[test]
    fn broken_and_overlong_chains_get_nothing() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        let next = (VRING_DESC_F_NEXT | W) as u16;
        // A loop, a next index past the table, an indirect table of 300 entries.
        vq.add_desc_chains(&[RawDescriptor::from(Descriptor::new(BUF, 8, next, 0))], 0)
            .unwrap();
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(BUF, 8, next, 999))],
            1,
        )
        .unwrap();
        let table = 0x5_0000u64;
        for i in 0..300u16 {
            let flags = if i < 299 { next } else { W as u16 };
            m.write_obj(
                RawDescriptor::from(Descriptor::new(BUF, 1, flags, i + 1)),
                GuestAddress(table + 16 * u64::from(i)),
            )
            .unwrap();
        }
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                table,
                16 * 300,
                VRING_DESC_F_INDIRECT as u16,
                0,
            ))],
            2,
        )
        .unwrap();
        vq.add_desc_chains(&[desc(BUF, 16, W)], 3).unwrap();
        let mut served = 0;
        assert!(process_queue(&m, &mut q, &mut Vec::new(), &mut served).unwrap());
        let lens: Vec<u32> = (0..4)
            .map(|i| vq.used().ring().ref_at(i).unwrap().load().len())
            .collect();
        assert_eq!(lens, vec![0, 0, 0, 16]);
        assert_eq!(served, 16);
    }

    #[test]
    fn a_bogus_available_index_is_an_error_not_a_hang() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(QUEUE_SIZE + 1);
        assert!(matches!(
            process_queue(&m, &mut q, &mut Vec::new(), &mut 0),
            Err(DrainError::Queue(_))
        ));
    }

    #[test]
    fn host_random_fills_large_buffers() {
        let mut buf = vec![0u8; 1 << 20];
        host_random(&mut buf).unwrap();
        assert_eq!(distinct(&buf), 256);
        assert!(buf[buf.len() - 64..].iter().any(|&b| b != 0));
    }
}
