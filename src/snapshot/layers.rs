//! Memory layers: a snapshot's guest RAM is a chain of them, a full layer (`memory-<id>`,
//! RAM regions back to back, zero chunks left as holes) followed by any number of diff
//! layers (`diff-<id>`: a header, a bitmap of the 4 KiB pages it holds, and those pages
//! in order). Restore maps the full layer copy-on-write and copies each diff's pages
//! over it; merge folds a chain into one full layer.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::bitmap::NewBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use super::files::{SnapshotId, TmpFile};
use super::{io_err, SnapshotError};
use crate::memory::{ram_ranges, GuestMemoryMmap, GuestRegionMmap};

/// The page size of dirty tracking and diff layers.
pub const PAGE_SIZE: u64 = 4096;
const PAGE: usize = 4096;
/// First bytes of a diff layer.
pub const DIFF_MAGIC: [u8; 8] = *b"HEARTHDF";
const DIFF_VERSION: u32 = 1;
const DIFF_HEADER_LEN: usize = 64;
/// [`PAGE_SIZE`] as a diff header holds it.
const PAGE_U32: u32 = 4096;
/// Chunk of a full layer looked at (and written) at a time.
const CHUNK: usize = 64 << 10;
const CRC64: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_ECMA_182);

/// What a memory layer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerKind {
    /// All of guest RAM.
    Full,
    /// The pages that changed since the layer before it.
    Diff {
        /// How many.
        pages: u64,
    },
}

/// One memory layer of a snapshot, as its state names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Unique: it names the file.
    pub id: SnapshotId,
    /// Full or diff.
    pub kind: LayerKind,
    /// The file's length in bytes.
    pub len: u64,
    /// CRC-64 (ECMA-182) of the layer: of a diff's whole file; of a full layer's non-zero
    /// 64 KiB chunks, each preceded by its offset (so holes cost nothing).
    pub crc64: u64,
}

impl Layer {
    /// The layer's file name in a snapshot directory.
    pub fn file_name(&self) -> String {
        match self.kind {
            LayerKind::Full => format!("memory-{}", self.id),
            LayerKind::Diff { .. } => format!("diff-{}", self.id),
        }
    }
}

/// A snapshot's guest RAM: its size and the layers that make it, oldest (full) first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryChain {
    /// Guest RAM in bytes.
    pub size: u64,
    /// A full layer, then diffs.
    pub layers: Vec<Layer>,
}

impl MemoryChain {
    /// The layers' file names.
    pub fn file_names(&self) -> Vec<String> {
        self.layers.iter().map(Layer::file_name).collect()
    }

    /// Checks the chain's shape: one full layer first, only diffs after it.
    pub fn check(&self, dir: &Path) -> Result<(), SnapshotError> {
        let bad = |reason: &str| SnapshotError::BadChain {
            dir: dir.to_owned(),
            reason: reason.to_owned(),
        };
        match self.layers.first() {
            None => Err(bad("it names no memory layer")),
            Some(l) if l.kind != LayerKind::Full => {
                Err(bad("its first memory layer is not a full one"))
            }
            Some(_) if self.layers[1..].iter().any(|l| l.kind == LayerKind::Full) => {
                Err(bad("a full memory layer follows another layer"))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The region holding file offset `offset` (regions back to back), and the offset in it.
fn locate(mem: &GuestMemoryMmap, mut offset: u64) -> Option<(&GuestRegionMmap, u64)> {
    for r in mem.iter() {
        if offset < r.len() {
            return Some((r, offset));
        }
        offset -= r.len();
    }
    None
}

fn mem_err(path: &Path) -> impl Fn(vm_memory::GuestMemoryError) -> SnapshotError + '_ {
    move |e| SnapshotError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
}

/// Copies `buf.len()` bytes of RAM at file offset `offset` (within one region) into `buf`.
fn read_ram(
    mem: &GuestMemoryMmap,
    offset: u64,
    buf: &mut [u8],
    path: &Path,
) -> Result<(), SnapshotError> {
    let (region, at) = locate(mem, offset).ok_or_else(|| SnapshotError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(format!("offset {offset:#x} is outside guest memory")),
    })?;
    region
        .read_slice(buf, MemoryRegionAddress(at))
        .map_err(mem_err(path))
}

fn is_zero(b: &[u8]) -> bool {
    let (pre, words, post) = {
        // SAFETY: any bit pattern is a valid u64; align_to only reinterprets the aligned
        // middle of the slice.
        unsafe { b.align_to::<u64>() }
    };
    pre.iter().all(|x| *x == 0) && words.iter().all(|x| *x == 0) && post.iter().all(|x| *x == 0)
}

/// The CRC of a full layer's content, fed chunk by chunk.
struct FullCrc(crc::Digest<'static, u64, crc::Table<16>>);

impl FullCrc {
    fn new() -> Self {
        Self(CRC64.digest())
    }
    /// Feeds the chunk at `offset`; returns whether it holds data (is not all zero).
    fn chunk(&mut self, offset: u64, chunk: &[u8]) -> bool {
        if is_zero(chunk) {
            return false;
        }
        self.0.update(&offset.to_le_bytes());
        self.0.update(chunk);
        true
    }
}

/// Writes all of guest RAM as a full layer (a sparse file: zero chunks stay holes).
/// Returns the layer's length and CRC.
pub fn write_full(t: &mut TmpFile, mem: &GuestMemoryMmap) -> Result<(u64, u64), SnapshotError> {
    let path = t.tmp_path().to_owned();
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    t.file.set_len(total).map_err(io_err(&path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut crc = FullCrc::new();
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let mut at = 0u64;
        while at < region.len() {
            let n = usize::try_from((region.len() - at).min(CHUNK as u64)).unwrap_or(CHUNK);
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, MemoryRegionAddress(at))
                .map_err(mem_err(&path))?;
            if crc.chunk(file_offset + at, chunk) {
                t.file
                    .write_all_at(chunk, file_offset + at)
                    .map_err(io_err(&path))?;
            }
            at += n as u64;
        }
        file_offset += region.len();
    }
    Ok((total, crc.0.finalize()))
}

/// A [`Write`] that keeps a CRC and a count of what went through.
struct Counting<W> {
    inner: W,
    crc: crc::Digest<'static, u64, crc::Table<16>>,
    len: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn diff_header(id: SnapshotId, size: u64, pages: u64) -> [u8; DIFF_HEADER_LEN] {
    let mut h = [0u8; DIFF_HEADER_LEN];
    h[..8].copy_from_slice(&DIFF_MAGIC);
    h[8..12].copy_from_slice(&DIFF_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&PAGE_U32.to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h[24..32].copy_from_slice(&pages.to_le_bytes());
    h[32..48].copy_from_slice(&id.0);
    h
}

/// Writes the `dirty` pages of guest RAM as a diff layer with identifier `id`. Returns
/// the layer.
pub fn write_diff(
    t: &mut TmpFile,
    mem: &GuestMemoryMmap,
    id: SnapshotId,
    dirty: &DirtyPages,
) -> Result<Layer, SnapshotError> {
    let path = t.tmp_path().to_owned();
    let size: u64 = mem.iter().map(|r| r.len()).sum();
    let pages = dirty.count();
    let mut w = Counting {
        inner: BufWriter::with_capacity(1 << 20, &t.file),
        crc: CRC64.digest(),
        len: 0,
    };
    w.write_all(&diff_header(id, size, pages))
        .map_err(io_err(&path))?;
    w.write_all(&dirty.to_bytes()).map_err(io_err(&path))?;
    let mut buf = vec![0u8; CHUNK];
    for (first, n) in dirty.runs() {
        let mut p = first;
        while p < first + n {
            // One region at a time: a run may cross the boundary between two.
            let (region, at) = locate(mem, p * PAGE_SIZE).ok_or_else(|| SnapshotError::Io {
                path: path.clone(),
                source: std::io::Error::other(format!("dirty page {p} is outside guest memory")),
            })?;
            let in_region = (region.len() - at) / PAGE_SIZE;
            let take = (first + n - p).min(in_region).min((CHUNK / PAGE) as u64);
            let bytes = usize::try_from(take * PAGE_SIZE).unwrap_or(CHUNK);
            read_ram(mem, p * PAGE_SIZE, &mut buf[..bytes], &path)?;
            w.write_all(&buf[..bytes]).map_err(io_err(&path))?;
            p += take;
        }
    }
    w.flush().map_err(io_err(&path))?;
    let (crc, len) = (w.crc.finalize(), w.len);
    Ok(Layer {
        id,
        kind: LayerKind::Diff { pages },
        len,
        crc64: crc,
    })
}

/// Opens a layer's file in `dir`, checking that it is the one the state names: present,
/// and of the recorded length.
fn open_layer(dir: &Path, layer: &Layer) -> Result<File, SnapshotError> {
    let path = dir.join(layer.file_name());
    let f = File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SnapshotError::LayerMissing { path: path.clone() }
        } else {
            SnapshotError::Io {
                path: path.clone(),
                source: e,
            }
        }
    })?;
    let len = f.metadata().map_err(io_err(&path))?.len();
    if len != layer.len {
        return Err(SnapshotError::LayerMismatch {
            path,
            reason: format!("it is {len} bytes, the state recorded {}", layer.len),
        });
    }
    Ok(f)
}

/// A diff layer's header and bitmap, checked against what the state says of it.
fn read_diff_head(
    r: &mut impl Read,
    path: &Path,
    layer: &Layer,
    size: u64,
    crc: &mut crc::Digest<'static, u64, crc::Table<16>>,
) -> Result<DirtyPages, SnapshotError> {
    let mismatch = |reason: String| SnapshotError::LayerMismatch {
        path: path.to_owned(),
        reason,
    };
    let mut h = [0u8; DIFF_HEADER_LEN];
    r.read_exact(&mut h).map_err(io_err(path))?;
    crc.update(&h);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if h[..8] != DIFF_MAGIC {
        return Err(mismatch(
            "it is not a hearth diff layer (wrong magic number)".into(),
        ));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != DIFF_VERSION {
        return Err(mismatch(format!(
            "diff layer version {version}; this hearth reads {DIFF_VERSION}"
        )));
    }
    if h[32..48] != layer.id.0 {
        return Err(mismatch(
            "it belongs to another snapshot (its identifier differs)".into(),
        ));
    }
    if u64_at(16) != size || u32::from_le_bytes([h[12], h[13], h[14], h[15]]) != PAGE_U32 {
        return Err(mismatch(format!(
            "it is for {} bytes of memory, the VM has {size}",
            u64_at(16)
        )));
    }
    let mut dirty = DirtyPages::new(size);
    let mut bytes = vec![0u8; dirty.words.len() * 8];
    r.read_exact(&mut bytes).map_err(io_err(path))?;
    crc.update(&bytes);
    for (w, b) in dirty.words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        *w = u64::from_le_bytes(a);
    }
    let pages = dirty.count();
    if pages != u64_at(24) || layer.kind != (LayerKind::Diff { pages }) {
        return Err(mismatch(format!(
            "its bitmap holds {pages} pages, its header or the state says otherwise"
        )));
    }
    Ok(dirty)
}

/// Reads a diff layer and hands each run of its pages to `put(file offset, bytes)`,
/// checking its CRC at the end (before which nothing it read may be trusted: callers
/// fail as a whole on an error).
fn read_diff(
    dir: &Path,
    layer: &Layer,
    size: u64,
    mut put: impl FnMut(u64, &[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let path = dir.join(layer.file_name());
    let mut r = BufReader::with_capacity(1 << 20, open_layer(dir, layer)?);
    let mut crc = CRC64.digest();
    let dirty = read_diff_head(&mut r, &path, layer, size, &mut crc)?;
    let mut buf = vec![0u8; CHUNK];
    for (first, n) in dirty.runs() {
        let mut p = first;
        while p < first + n {
            let take = (first + n - p).min((CHUNK / PAGE) as u64);
            let bytes = usize::try_from(take * PAGE_SIZE).unwrap_or(CHUNK);
            r.read_exact(&mut buf[..bytes]).map_err(io_err(&path))?;
            crc.update(&buf[..bytes]);
            put(p * PAGE_SIZE, &buf[..bytes])?;
            p += take;
        }
    }
    if crc.finalize() != layer.crc64 {
        return Err(SnapshotError::LayerMismatch {
            path,
            reason: "its CRC-64 does not match the state's".into(),
        });
    }
    Ok(())
}

/// Maps a snapshot's memory as guest memory: the full layer copy-on-write (pages read
/// from the file on first touch, the guest's writes private to this process), then each
/// diff's pages copied over it. The dirty bitmaps start clean.
pub fn map_chain(dir: &Path, chain: &MemoryChain) -> Result<GuestMemoryMmap, SnapshotError> {
    chain.check(dir)?;
    let base = &chain.layers[0];
    let path = dir.join(base.file_name());
    if base.len != chain.size {
        return Err(SnapshotError::MemorySize {
            path,
            found: base.len,
            expected: chain.size,
        });
    }
    let file = std::sync::Arc::new(open_layer(dir, base)?);
    let map_err = |reason: String| SnapshotError::Map {
        path: path.clone(),
        reason,
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ram_ranges(chain.size) {
        let n =
            usize::try_from(len).map_err(|_| map_err(format!("{len} bytes cannot be mapped")))?;
        let region = MmapRegionBuilder::new_with_bitmap(n, AtomicBitmap::with_len(n))
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(region, addr)
                .ok_or_else(|| map_err(format!("region at {:#x} overflows", addr.raw_value())))?,
        );
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))?;
    for layer in &chain.layers[1..] {
        let lpath = dir.join(layer.file_name());
        read_diff(dir, layer, chain.size, |at, bytes| {
            let (region, off) = locate(&mem, at).ok_or_else(|| SnapshotError::LayerMismatch {
                path: lpath.clone(),
                reason: format!("a page at {at:#x} lies outside guest memory"),
            })?;
            region
                .write_slice(bytes, MemoryRegionAddress(off))
                .map_err(mem_err(&lpath))
        })?;
    }
    for r in mem.iter() {
        std::ops::Deref::deref(r).bitmap().reset();
    }
    Ok(mem)
}

/// Recomputes a layer's CRC from its file and compares it with the state's (and checks
/// a diff's header); `size` is the VM's memory size.
pub fn verify(dir: &Path, layer: &Layer, size: u64) -> Result<(), SnapshotError> {
    match layer.kind {
        LayerKind::Diff { .. } => read_diff(dir, layer, size, |_, _| Ok(())),
        LayerKind::Full => {
            let path = dir.join(layer.file_name());
            let f = open_layer(dir, layer)?;
            if crc_of_full(&f, layer.len, &path)? != layer.crc64 {
                return Err(SnapshotError::LayerMismatch {
                    path,
                    reason: "its CRC-64 does not match the state's".into(),
                });
            }
            Ok(())
        }
    }
}

fn crc_of_full(f: &File, len: u64, path: &Path) -> Result<u64, SnapshotError> {
    let mut crc = FullCrc::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        f.read_exact_at(&mut buf[..n], at).map_err(io_err(path))?;
        crc.chunk(at, &buf[..n]);
        at += n as u64;
    }
    Ok(crc.0.finalize())
}

/// Folds `chain` (in `dir`) into one full layer written to `t`, with identifier `id`.
pub fn merge(
    dir: &Path,
    chain: &MemoryChain,
    t: &mut TmpFile,
    id: SnapshotId,
) -> Result<Layer, SnapshotError> {
    chain.check(dir)?;
    let tmp = t.tmp_path().to_owned();
    let base = &chain.layers[0];
    let base_path = dir.join(base.file_name());
    let src = open_layer(dir, base)?;
    t.file.set_len(chain.size).map_err(io_err(&tmp))?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < chain.size {
        let n = usize::try_from((chain.size - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        src.read_exact_at(&mut buf[..n], at)
            .map_err(io_err(&base_path))?;
        if !is_zero(&buf[..n]) {
            t.file.write_all_at(&buf[..n], at).map_err(io_err(&tmp))?;
        }
        at += n as u64;
    }
    for layer in &chain.layers[1..] {
        read_diff(dir, layer, chain.size, |off, bytes| {
            t.file.write_all_at(bytes, off).map_err(io_err(&tmp))
        })?;
    }
    let crc = crc_of_full(&t.file, chain.size, &tmp)?;
    Ok(Layer {
        id,
        kind: LayerKind::Full,
        len: chain.size,
        crc64: crc,
    })
}

mod dirty_pages;

pub use dirty_pages::DirtyPages;

#[cfg(test)]
mod tests;
