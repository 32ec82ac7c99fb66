//! One virtio-blk request at a time, in two steps: [`Request::parse`] checks a descriptor
//! chain against guest memory, [`Request::execute`] checks it against the disk and moves
//! the data straight between guest memory and the backing file.
//!
//! The expected layout is the one every driver uses (Linux, FreeBSD, OVMF, SeaBIOS): a
//! 16-byte device-readable header descriptor, the data descriptors, then a device-writable
//! status descriptor whose last byte receives the status. Everything the guest controls is
//! checked before any I/O starts, so a bad request never touches the file; a chain whose
//! status cannot be written is still returned to the driver (used length 0) so that its
//! ring keeps moving.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

use super::{Disk, QUEUE_SIZE, SECTOR_SHIFT, SECTOR_SIZE};
use crate::rate_limiter::{RateLimiter, TokenType};
use crate::virtio::queue::{drain_queue, drain_queue_until, write_to_buffers, DrainError};

/// The size of `struct virtio_blk_outhdr` (type, ioprio, sector).
const HEADER_LEN: u32 = 16;
/// The longest chain served. Without VIRTIO_RING_F_INDIRECT_DESC a chain cannot be longer
/// than the queue, but virtio-queue follows indirect tables anyway (up to 65535 entries):
/// longer chains are failed rather than buffered.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Why a request failed. Except for [`RequestError::Unsupported`] (status UNSUPP), the
/// driver sees all of these as status IOERR; they describe what the driver got wrong.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptor before the status.
    #[error("the descriptor chain has no request header before its status descriptor")]
    NoHeader,
    /// The header is in a device-writable descriptor.
    #[error("the request header descriptor is device-writable; it must be device-readable")]
    HeaderWriteOnly,
    /// The header descriptor is not exactly one `virtio_blk_outhdr`.
    #[error("the request header descriptor is {0} bytes long; it must be exactly 16")]
    HeaderLength(u32),
    /// The header is not in guest memory.
    #[error("cannot read the request header from guest memory: {0}")]
    HeaderUnreadable(#[source] GuestMemoryError),
    /// A data descriptor points the wrong way for the request type.
    #[error(
        "a data descriptor has the wrong direction: reads need device-writable buffers, \
         writes device-readable ones"
    )]
    DataDirection,
    /// A data buffer is not (entirely) in guest memory.
    #[error("the data buffer at {addr:#x} ({len} bytes) is not in guest memory")]
    BadBuffer {
        /// Guest physical address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The data length is not a whole number of sectors.
    #[error("the request moves {0} bytes, which is not a multiple of the 512-byte sector")]
    UnalignedLength(u64),
    /// The request reaches past the end of the disk.
    #[error(
        "sector {sector} plus {len} bytes reaches past the end of the disk ({capacity} sectors)"
    )]
    OutOfRange {
        /// First sector of the request.
        sector: u64,
        /// Bytes it moves.
        len: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// More descriptors than the device accepts.
    #[error("the descriptor chain is longer than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A request type the device does not implement.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// The backing file failed.
    #[error("disk I/O failed: {0}")]
    Io(#[source] io::Error),
    /// Moving data between guest memory and the file failed.
    #[error("moving request data failed: {0}")]
    Transfer(#[source] GuestMemoryError),
}

/// What a request asks the disk to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the serial number.
    GetId,
}

/// A request whose chain is well formed and whose buffers are in guest memory; whether it
/// fits the disk is [`Request::execute`]'s to check.
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub request_type: RequestType,
    /// The first sector (In and Out).
    pub sector: u64,
    /// The data buffers, in order.
    pub data: Vec<Descriptor>,
    /// Their total length.
    pub data_len: u64,
}

/// A chain taken apart: where its status goes, and the request or why it is refused.
#[derive(Debug)]
pub struct ParsedChain {
    /// The status byte.
    pub status: GuestAddress,
    /// The request.
    pub request: Result<Request, RequestError>,
}

impl Request {
    /// Parses `chain`. `None` when it has no writable status byte: nothing can be told to
    /// the driver, the chain goes back with a used length of 0.
    pub fn parse<M: GuestMemory>(mem: &M, chain: DescriptorChain<&M>) -> Option<ParsedChain> {
        let mut descs: Vec<Descriptor> = Vec::with_capacity(4);
        let mut last = None;
        let mut too_many = false;
        // virtio-queue bounds the walk (queue size, or indirect table size) and stops at
        // loops, indices past the table and unreadable descriptors.
        for desc in chain {
            if descs.len() < MAX_DESCRIPTORS {
                descs.push(desc);
            } else {
                too_many = true;
            }
            last = Some(desc);
        }
        // A chain whose last descriptor still says NEXT was cut short by virtio-queue: its
        // real status descriptor is unknown, so nothing in it is written.
        let status = last
            .filter(|d| !d.has_next())
            .and_then(|d| status_address(mem, &d))?;
        let request = if too_many {
            Err(RequestError::TooManyDescriptors)
        } else {
            descs.pop();
            Self::parse_descriptors(mem, &descs)
        };
        Some(ParsedChain { status, request })
    }

    /// Parses header and data (the status left out).
    fn parse_descriptors<M: GuestMemory>(
        mem: &M,
        descs: &[Descriptor],
    ) -> Result<Request, RequestError> {
        let (header, data) = descs.split_first().ok_or(RequestError::NoHeader)?;
        if header.is_write_only() {
            return Err(RequestError::HeaderWriteOnly);
        }
        if header.len() != HEADER_LEN {
            return Err(RequestError::HeaderLength(header.len()));
        }
        let request_type = u32::from_le(
            mem.read_obj(header.addr())
                .map_err(RequestError::HeaderUnreadable)?,
        );
        let sector_addr = header
            .addr()
            .checked_add(8)
            .ok_or(RequestError::HeaderUnreadable(
                GuestMemoryError::InvalidGuestAddress(header.addr()),
            ))?;
        let sector = u64::from_le(
            mem.read_obj(sector_addr)
                .map_err(RequestError::HeaderUnreadable)?,
        );
        let (request_type, device_writes) = match request_type {
            VIRTIO_BLK_T_IN => (RequestType::In, Some(true)),
            VIRTIO_BLK_T_OUT => (RequestType::Out, Some(false)),
            // A flush carries no data: whatever is there is ignored.
            VIRTIO_BLK_T_FLUSH => (RequestType::Flush, None),
            VIRTIO_BLK_T_GET_ID => (RequestType::GetId, Some(true)),
            other => return Err(RequestError::Unsupported(other)),
        };
        let data_len = match device_writes {
            Some(writes) => check_buffers(mem, data, writes)?,
            None => 0,
        };
        if matches!(request_type, RequestType::In | RequestType::Out) && data_len % SECTOR_SIZE != 0
        {
            return Err(RequestError::UnalignedLength(data_len));
        }
        Ok(Request {
            request_type,
            sector,
            data: if device_writes.is_some() {
                data.to_vec()
            } else {
                Vec::new()
            },
            data_len,
        })
    }

    /// Serves the request on `disk`; returns how many data bytes were written into guest
    /// memory.
    pub fn execute<M: GuestMemory>(&self, disk: &mut Disk, mem: &M) -> Result<u32, RequestError> {
        match self.request_type {
            RequestType::In => {
                self.check_range(disk)?;
                disk.seek(self.sector).map_err(RequestError::Io)?;
                for d in &self.data {
                    mem.read_exact_volatile_from(d.addr(), &mut disk.file, d.len() as usize)
                        .map_err(RequestError::Transfer)?;
                }
                // A chain carries less than 4 GiB (virtio-queue stops it there).
                Ok(u32::try_from(self.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if disk.is_read_only() {
                    return Err(RequestError::ReadOnly);
                }
                self.check_range(disk)?;
                disk.seek(self.sector).map_err(RequestError::Io)?;
                for d in &self.data {
                    mem.write_all_volatile_to(d.addr(), &mut disk.file, d.len() as usize)
                        .map_err(RequestError::Transfer)?;
                }
                Ok(0)
            }
            RequestType::Flush => {
                disk.file.sync_data().map_err(RequestError::Io)?;
                Ok(0)
            }
            RequestType::GetId => {
                let written =
                    write_to_buffers(mem, &self.data, disk.id()).map_err(RequestError::Transfer)?;
                // At most DISK_ID_LEN.
                Ok(u32::try_from(written).unwrap_or(u32::MAX))
            }
        }
    }

    /// Checks that the sectors the request moves lie on the disk.
    fn check_range(&self, disk: &Disk) -> Result<(), RequestError> {
        let end = self
            .sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(self.data_len));
        match end {
            // The capacity comes from a file size, so shifting it back cannot overflow.
            Some(end) if end <= disk.capacity() << SECTOR_SHIFT => Ok(()),
            _ => Err(RequestError::OutOfRange {
                sector: self.sector,
                len: self.data_len,
                capacity: disk.capacity(),
            }),
        }
    }
}

/// Serves one chain and returns its used length: the bytes written into guest memory
/// (data read, plus the status byte), or 0 when the chain has no writable status byte.
pub fn execute_chain<M: GuestMemory>(disk: &mut Disk, mem: &M, chain: DescriptorChain<&M>) -> u32 {
    match Request::parse(mem, chain) {
        Some(parsed) => execute_parsed(disk, mem, parsed),
        None => 0,
    }
}

/// Takes a request's tokens (one operation; its bytes for reads and writes), or none
/// when either bucket is short.
fn take_tokens(limiter: &mut RateLimiter, request: &Request) -> bool {
    if !limiter.consume(1, TokenType::Ops) {
        return false;
    }
    let bytes = match request.request_type {
        RequestType::In | RequestType::Out => request.data_len,
        _ => 0,
    };
    if bytes > 0 && !limiter.consume(bytes, TokenType::Bytes) {
        limiter.manual_replenish(1, TokenType::Ops);
        return false;
    }
    true
}

/// [`process_queue`] within `limiter`: a request it has no tokens for stays in the ring
/// until the limiter's timer fires. Malformed requests cost nothing and fail at once.
pub fn process_queue_limited<M: GuestMemory>(
    disk: &mut Disk,
    limiter: &mut RateLimiter,
    mem: &M,
    queue: &mut Queue,
) -> Result<bool, DrainError> {
    drain_queue_until(mem, queue, |chain| {
        let Some(parsed) = Request::parse(mem, chain) else {
            return Some(0);
        };
        if let Ok(request) = &parsed.request {
            if !take_tokens(limiter, request) {
                return None;
            }
        }
        Some(execute_parsed(disk, mem, parsed))
    })
}

fn execute_parsed<M: GuestMemory>(disk: &mut Disk, mem: &M, parsed: ParsedChain) -> u32 {
    let result = parsed.request.and_then(|r| {
        let done = r.execute(disk, mem);
        if done.is_ok() {
            let c = &mut disk.counters;
            match r.request_type {
                RequestType::In => {
                    c.read_count += 1;
                    c.read_bytes += r.data_len;
                }
                RequestType::Out => {
                    c.write_count += 1;
                    c.write_bytes += r.data_len;
                }
                RequestType::Flush => c.flush_count += 1,
                RequestType::GetId => {}
            }
        }
        done
    });
    match &result {
        Ok(_) => {}
        Err(RequestError::Io(_) | RequestError::Transfer(_)) => disk.counters.execute_fails += 1,
        Err(_) => disk.counters.invalid_reqs_count += 1,
    }
    let (status, written) = match result {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(RequestError::Unsupported(_)) => (VIRTIO_BLK_S_UNSUPP, 0),
        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
    };
    // The status byte was checked to be in guest memory when parsing.
    #[allow(clippy::cast_possible_truncation)] // the status values are 0, 1 and 2
    if mem.write_obj(status as u8, parsed.status).is_err() {
        return 0;
    }
    written.saturating_add(1)
}

/// Serves every request the driver made available in `queue` and returns whether the
/// driver should now be interrupted. Failed requests are completed with an error status;
/// only a broken queue is an error.
pub fn process_queue<M: GuestMemory>(
    disk: &mut Disk,
    mem: &M,
    queue: &mut Queue,
) -> Result<bool, DrainError> {
    drain_queue(mem, queue, |chain| execute_chain(disk, mem, chain))
}

/// Checks that every buffer has the given direction and lies in guest memory; returns
/// their total length.
fn check_buffers<M: GuestMemory>(
    mem: &M,
    data: &[Descriptor],
    device_writes: bool,
) -> Result<u64, RequestError> {
    let access = if device_writes {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut len = 0u64;
    for d in data {
        if d.is_write_only() != device_writes {
            return Err(RequestError::DataDirection);
        }
        if !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err(RequestError::BadBuffer {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        len += u64::from(d.len());
    }
    Ok(len)
}

/// Where the status byte goes: the last byte of a device-writable descriptor (the status
/// is the last field of `struct virtio_blk_req`), if that is in guest memory.
fn status_address<M: GuestMemory>(mem: &M, desc: &Descriptor) -> Option<GuestAddress> {
    if !desc.is_write_only() || desc.len() == 0 {
        return None;
    }
    let addr = desc.addr().checked_add(u64::from(desc.len()) - 1)?;
    mem.check_range(addr, 1, Permissions::Write).then_some(addr)
}

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;

    use crate::GuestMemoryMmap;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::virtio::block::BlockConfig;
    pub(crate) use crate::virtio::test_utils::{add_chain, desc, guest_memory, MEM_SIZE};

    const HDR: u64 = 0x2_0000;
    const DATA: u64 = 0x3_0000;
    const STATUS: u64 = 0x4_0000;
    const R: u32 = 0;
    const W: u32 = VRING_DESC_F_WRITE;

    pub(crate) fn write_header(mem: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
        mem.write_obj(request_type.to_le(), GuestAddress(addr))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(addr + 8))
            .unwrap();
    }

    struct Setup {
        mem: GuestMemoryMmap,
        file: TempFile,
        disk: Disk,
    }

    /// A disk of `size` bytes where byte i holds `pattern(i)`.
    fn setup(size: u64, read_only: bool) -> Setup {
        let file = TempFile::new().unwrap();
        let bytes: Vec<u8> = (0..size).map(pattern).collect();
        file.as_file().write_all(&bytes).unwrap();
        let disk = Disk::open(&BlockConfig {
            path: file.as_path().to_path_buf(),
            read_only,
            id: Some("hearth-test".into()),
        })
        .unwrap();
        Setup {
            mem: guest_memory(),
            file,
            disk,
        }
    }

    fn pattern(i: u64) -> u8 {
        (i % 251) as u8
    }

    fn file_bytes(file: &TempFile) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(file.as_path())
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    fn original(size: u64) -> Vec<u8> {
        (0..size).map(pattern).collect()
    }

    impl Setup {
        /// Runs the queue over the given chains; returns (used len per chain, interrupt?).
        fn run(&mut self, chains: &[&[RawDescriptor]]) -> (Vec<u32>, bool) {
            let vq = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
            let mut q: Queue = vq.create_queue().unwrap();
            let mut at = 0;
            for c in chains {
                add_chain(&vq, at, c);
                at += c.len() as u16;
            }
            let notify = process_queue(&mut self.disk, &self.mem, &mut q).unwrap();
            let used = vq.used().idx().load();
            let lens = (0..used)
                .map(|i| vq.used().ring().ref_at(i as usize).unwrap().load().len())
                .collect();
            (lens, notify)
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn poison_status(&self) {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        }
    }

    fn ok_status_layout(
        kind: u32,
        sector: u64,
        data: &[RawDescriptor],
        s: &Setup,
    ) -> Vec<RawDescriptor> {
        write_header(&s.mem, HDR, kind, sector);
        let mut v = vec![desc(HDR, 16, R)];
        v.extend_from_slice(data);
        v.push(desc(STATUS, 1, W));
        v
    }

    #[test]
    fn read_fills_guest_memory_from_the_file() {
        let mut s = setup(8 * 512, false);
        // Two buffers, three sectors, from sector 2.
        let chain = ok_status_layout(
            VIRTIO_BLK_T_IN,
            2,
            &[desc(DATA, 1024, W), desc(DATA + 0x1000, 512, W)],
            &s,
        );
        s.poison_status();
        let (lens, notify) = s.run(&[&chain]);
        assert_eq!(lens, vec![1536 + 1]);
        assert!(notify);
        assert_eq!(s.status(), VIRTIO_BLK_S_OK as u8);
        let mut got = vec![0u8; 1536];
        s.mem
            .read_slice(&mut got[..1024], GuestAddress(DATA))
            .unwrap();
        s.mem
            .read_slice(&mut got[1024..], GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(got, original(8 * 512)[1024..2560]);
    }

    #[test]
    fn write_changes_exactly_the_requested_sectors() {
        let mut s = setup(8 * 512, false);
        s.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        s.mem
            .write_slice(&[0xbb; 512], GuestAddress(DATA + 0x1000))
            .unwrap();
        let chain = ok_status_layout(
            VIRTIO_BLK_T_OUT,
            5,
            &[desc(DATA, 512, R), desc(DATA + 0x1000, 512, R)],
            &s,
        );
        let (lens, _) = s.run(&[&chain]);
        assert_eq!(lens, vec![1]);
        assert_eq!(s.status(), VIRTIO_BLK_S_OK as u8);
        let mut want = original(8 * 512);
        want[5 * 512..6 * 512].fill(0xaa);
        want[6 * 512..7 * 512].fill(0xbb);
        assert_eq!(file_bytes(&s.file), want);
    }

    #[test]
    fn write_then_read_back_through_the_queue() {
        let mut s = setup(4 * 512, false);
        s.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        let out = ok_status_layout(VIRTIO_BLK_T_OUT, 3, &[desc(DATA, 512, R)], &s);
        assert_eq!(s.run(&[&out]).0, vec![1]);
        let in_ = ok_status_layout(VIRTIO_BLK_T_IN, 3, &[desc(DATA + 0x1000, 512, W)], &s);
        assert_eq!(s.run(&[&in_]).0, vec![513]);
        let mut got = [0u8; 512];
        s.mem
            .read_slice(&mut got, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(got, [0x5a; 512]);
    }

    #[test]
    fn requests_past_the_end_fail_without_touching_the_file() {
        let size = 8 * 512;
        let mut s = setup(size, false);
        s.mem
            .write_slice(&[0xcc; 1024], GuestAddress(DATA))
            .unwrap();
        // The last sector is fine, one more is not.
        let last = ok_status_layout(VIRTIO_BLK_T_IN, 7, &[desc(DATA + 0x2000, 512, W)], &s);
        assert_eq!(s.run(&[&last]).0, vec![513]);
        for (sector, len) in [
            (8, 512),
            (7, 1024),
            (u64::MAX, 512),
            (u64::MAX / 512, 512),
            (u64::MAX / 512 + 1, 0),
            ((u64::MAX - 511) / 512, 1024),
        ] {
            for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
                let flags = if kind == VIRTIO_BLK_T_IN { W } else { R };
                let chain = ok_status_layout(kind, sector, &[desc(DATA, len, flags)], &s);
                s.poison_status();
                let (lens, _) = s.run(&[&chain]);
                assert_eq!(lens, vec![1], "sector {sector} len {len}");
                assert_eq!(
                    s.status(),
                    VIRTIO_BLK_S_IOERR as u8,
                    "sector {sector} len {len}"
                );
            }
        }
        assert_eq!(file_bytes(&s.file), original(size));
    }

    #[test]
    fn the_partial_tail_sector_is_not_exposed() {
        let size = 2 * 512 + 100;
        let mut s = setup(size, false);
        assert_eq!(s.disk.capacity(), 2);
        let chain = ok_status_layout(VIRTIO_BLK_T_OUT, 2, &[desc(DATA, 512, R)], &s);
        s.run(&[&chain]);
        assert_eq!(s.status(), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(file_bytes(&s.file), original(size));
    }

    #[test]
    fn lengths_must_be_whole_sectors() {
        let mut s = setup(8 * 512, false);
        for (kind, flags) in [(VIRTIO_BLK_T_IN, W), (VIRTIO_BLK_T_OUT, R)] {
            let chain = ok_status_layout(
                kind,
                0,
                &[desc(DATA, 512, flags), desc(DATA + 0x1000, 100, flags)],
                &s,
            );
            s.poison_status();
            assert_eq!(s.run(&[&chain]).0, vec![1]);
            assert_eq!(s.status(), VIRTIO_BLK_S_IOERR as u8);
        }
        assert_eq!(file_bytes(&s.file), original(8 * 512));
    }

    #[test]
    fn read_only_disks_refuse_writes_but_serve_reads() {
        let mut s = setup(4 * 512, true);
        assert!(s.disk.is_read_only());
        let out = ok_status_layout(VIRTIO_BLK_T_OUT, 0, &[desc(DATA, 512, R)], &s);
        assert_eq!(s.run(&[&out]).0, vec![1]);
        assert_eq!(s.status(), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(file_bytes(&s.file), original(4 * 512));

        let in_ = ok_status_layout(VIRTIO_BLK_T_IN, 1, &[desc(DATA, 512, W)], &s);
        assert_eq!(s.run(&[&in_]).0, vec![513]);
        assert_eq!(s.status(), VIRTIO_BLK_S_OK as u8);
        let flush = ok_status_layout(VIRTIO_BLK_T_FLUSH, 0, &[], &s);
        s.poison_status();
        assert_eq!(s.run(&[&flush]).0, vec![1]);
        assert_eq!(s.status(), VIRTIO_BLK_S_OK as u8);
    }

    #[test]
    fn unknown_types_are_unsupported() {
        let mut s = setup(4 * 512, false);
        for kind in [2, 11, 13, 0xdead_beef] {
            let chain = ok_status_layout(kind, 0, &[desc(DATA, 512, W)], &s);
            s.poison_status();
            assert_eq!(s.run(&[&chain]).0, vec![1]);
            assert_eq!(s.status(), VIRTIO_BLK_S_UNSUPP as u8);
        }
        assert_eq!(file_bytes(&s.file), original(4 * 512));
    }

    #[test]
    fn flush_and_get_id() {
        let mut s = setup(4 * 512, false);
        let flush = ok_status_layout(VIRTIO_BLK_T_FLUSH, 0, &[], &s);
        s.poison_status();
        assert_eq!(s.run(&[&flush]).0, vec![1]);
        assert_eq!(s.status(), VIRTIO_BLK_S_OK as u8);

        s.mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        let get_id = ok_status_layout(VIRTIO_BLK_T_GET_ID, 0, &[desc(DATA, 20, W)], &s);
        assert_eq!(s.run(&[&get_id]).0, vec![21]);
        assert_eq!(s.status(), VIRTIO_BLK_S_OK as u8);
        let mut id = [0u8; 21];
        s.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        let mut want = [0u8; 21];
        want[..11].copy_from_slice(b"hearth-test");
        want[20] = 0xff;
        assert_eq!(id, want, "20 bytes written, nothing past them");

        // A short buffer gets what fits.
        s.mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        let short = ok_status_layout(VIRTIO_BLK_T_GET_ID, 0, &[desc(DATA, 4, W)], &s);
        assert_eq!(s.run(&[&short]).0, vec![5]);
        let mut got = [0u8; 5];
        s.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got, b"hear\xff");

        // The id buffer must be device-writable.
        let wrong = ok_status_layout(VIRTIO_BLK_T_GET_ID, 0, &[desc(DATA, 20, R)], &s);
        assert_eq!(s.run(&[&wrong]).0, vec![1]);
        assert_eq!(s.status(), VIRTIO_BLK_S_IOERR as u8);
    }

    /// Runs `chain` (header at HDR set to `kind`/sector 0) and returns the used length and
    /// the status byte, after checking the file is untouched.
    fn run_malformed(kind: u32, chain: &[RawDescriptor]) -> (u32, u8) {
        let mut s = setup(4 * 512, false);
        write_header(&s.mem, HDR, kind, 0);
        s.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
        s.poison_status();
        let (lens, _) = s.run(&[chain]);
        assert_eq!(
            lens.len(),
            1,
            "the chain must still be returned to the driver"
        );
        assert_eq!(file_bytes(&s.file), original(4 * 512), "file changed");
        (lens[0], s.status())
    }

    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    #[test]
    fn malformed_chains_with_a_status_get_ioerr() {
        let hdr = desc(HDR, 16, R);
        let st = desc(STATUS, 1, W);
        let out = VIRTIO_BLK_T_OUT;
        let in_ = VIRTIO_BLK_T_IN;
        // No header at all.
        assert_eq!(run_malformed(out, &[st]), (1, IOERR));
        // Header device-writable, too short, too long.
        assert_eq!(
            run_malformed(out, &[desc(HDR, 16, W), desc(DATA, 512, R), st]),
            (1, IOERR)
        );
        assert_eq!(
            run_malformed(out, &[desc(HDR, 8, R), desc(DATA, 512, R), st]),
            (1, IOERR)
        );
        assert_eq!(run_malformed(out, &[desc(HDR, 528, R), st]), (1, IOERR));
        // Header outside guest memory.
        assert_eq!(
            run_malformed(out, &[desc(MEM_SIZE as u64 - 8, 16, R), st]),
            (1, IOERR)
        );
        assert_eq!(
            run_malformed(out, &[desc(u64::MAX - 3, 16, R), st]),
            (1, IOERR)
        );
        // Data with the wrong direction.
        assert_eq!(
            run_malformed(out, &[hdr, desc(DATA, 512, W), st]),
            (1, IOERR)
        );
        assert_eq!(
            run_malformed(in_, &[hdr, desc(DATA, 512, R), st]),
            (1, IOERR)
        );
        // Data partly or wholly outside guest memory; the first, valid buffer of the write
        // is not written either.
        assert_eq!(
            run_malformed(
                out,
                &[
                    hdr,
                    desc(DATA, 512, R),
                    desc(MEM_SIZE as u64 - 256, 512, R),
                    st
                ]
            ),
            (1, IOERR)
        );
        assert_eq!(
            run_malformed(out, &[hdr, desc(u64::MAX - 100, 512, R), st]),
            (1, IOERR)
        );
        assert_eq!(
            run_malformed(in_, &[hdr, desc(MEM_SIZE as u64, 512, W), st]),
            (1, IOERR)
        );
    }

    #[test]
    fn chains_without_a_writable_status_are_returned_with_length_zero() {
        let hdr = desc(HDR, 16, R);
        let out = VIRTIO_BLK_T_OUT;
        // Only a header.
        assert_eq!(run_malformed(out, &[hdr]), (0, 0xff));
        // The last descriptor is device-readable, or empty, or outside guest memory.
        assert_eq!(
            run_malformed(out, &[hdr, desc(DATA, 512, R), desc(STATUS, 1, R)]),
            (0, 0xff)
        );
        assert_eq!(
            run_malformed(out, &[hdr, desc(DATA, 512, R), desc(STATUS, 0, W)]),
            (0, 0xff)
        );
        assert_eq!(
            run_malformed(out, &[hdr, desc(DATA, 512, R), desc(MEM_SIZE as u64, 1, W)]),
            (0, 0xff)
        );
        assert_eq!(
            run_malformed(out, &[hdr, desc(DATA, 512, R), desc(u64::MAX, 1, W)]),
            (0, 0xff)
        );
    }

    #[test]
    fn a_wider_status_descriptor_gets_the_status_in_its_last_byte() {
        let mut s = setup(4 * 512, false);
        s.mem.write_slice(&[0xff; 4], GuestAddress(STATUS)).unwrap();
        write_header(&s.mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
        let (lens, _) = s.run(&[&[desc(HDR, 16, R), desc(STATUS, 4, W)]]);
        assert_eq!(lens, vec![1]);
        let mut st = [0u8; 4];
        s.mem.read_slice(&mut st, GuestAddress(STATUS)).unwrap();
        assert_eq!(st, [0xff, 0xff, 0xff, 0]);
    }

    #[test]
    fn broken_chains_do_not_hang_and_the_queue_carries_on() {
        let mut s = setup(4 * 512, false);
        write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 0);
        let vq = MockSplitQueue::new(&s.mem, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        // Chain 0: one descriptor pointing at itself.
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                HDR,
                16,
                VRING_DESC_F_NEXT as u16,
                0,
            ))],
            0,
        )
        .unwrap();
        // Chain 1: header -> a next index past the table.
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                HDR,
                16,
                VRING_DESC_F_NEXT as u16,
                999,
            ))],
            1,
        )
        .unwrap();
        // Chain 2: a two-descriptor loop through a writable status.
        vq.add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 3)),
                RawDescriptor::from(Descriptor::new(
                    STATUS,
                    1,
                    (VRING_DESC_F_NEXT | W) as u16,
                    2,
                )),
            ],
            2,
        )
        .unwrap();
        // Chain 3: a good read.
        add_chain(
            &vq,
            4,
            &[desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)],
        );
        assert!(process_queue(&mut s.disk, &s.mem, &mut q).unwrap());
        assert_eq!(vq.used().idx().load(), 4);
        let lens: Vec<u32> = (0..4)
            .map(|i| vq.used().ring().ref_at(i).unwrap().load().len())
            .collect();
        assert_eq!(lens, vec![0, 0, 0, 513]);
        assert_eq!(s.status(), VIRTIO_BLK_S_OK as u8);
    }

    #[test]
    fn overlong_indirect_chains_are_failed() {
        let mut s = setup(4 * 512, false);
        write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 0);
        // An indirect table: header, 300 empty device-writable buffers, status.
        let table = 0x5_0000u64;
        let n = 302u16;
        for i in 0..n {
            let (addr, len, flags) = match i {
                0 => (HDR, 16, VRING_DESC_F_NEXT),
                _ if i == n - 1 => (STATUS, 1, W),
                _ => (DATA, 0, W | VRING_DESC_F_NEXT),
            };
            let d = Descriptor::new(addr, len, flags as u16, i + 1);
            s.mem
                .write_obj(
                    RawDescriptor::from(d),
                    GuestAddress(table + 16 * u64::from(i)),
                )
                .unwrap();
        }
        let head = desc(table, 16 * u32::from(n), VRING_DESC_F_INDIRECT);
        s.poison_status();
        assert_eq!(s.run(&[&[head]]).0, vec![1]);
        assert_eq!(s.status(), IOERR);
    }

    #[test]
    fn a_bogus_available_index_is_an_error_not_a_hang() {
        let mut s = setup(4 * 512, false);
        let vq = MockSplitQueue::new(&s.mem, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(QUEUE_SIZE + 1);
        assert!(matches!(
            process_queue(&mut s.disk, &s.mem, &mut q),
            Err(DrainError::Queue(_))
        ));
    }

    #[test]
    fn reads_and_writes_reach_the_file_at_the_right_offset() {
        // Cross-check with positioned file I/O rather than the helpers above.
        let mut s = setup(16 * 512, false);
        s.mem.write_slice(&[7u8; 2048], GuestAddress(DATA)).unwrap();
        let out = ok_status_layout(VIRTIO_BLK_T_OUT, 9, &[desc(DATA, 2048, R)], &s);
        assert_eq!(s.run(&[&out]).0, vec![1]);
        let f = File::open(s.file.as_path()).unwrap();
        let mut buf = [0u8; 2048 + 2];
        f.read_exact_at(&mut buf, 9 * 512 - 1).unwrap();
        assert_eq!(buf[0], pattern(9 * 512 - 1));
        assert!(buf[1..2049].iter().all(|&b| b == 7));
        assert_eq!(buf[2049], pattern(13 * 512));
    }
}
