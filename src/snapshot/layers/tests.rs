//! Memory layers: full and diff files, chains, checksums.

use super::*;
use vm_memory::GuestAddress;

#[test]
fn dirty_pages_runs_and_regions() {
    let mut d = DirtyPages::new(1 << 20);
    d.add(0, &[0b1011]);
    d.add(100, &[0b1]);
    d.set(255);
    d.set(256); // past the end: ignored
    assert_eq!(d.count(), 5);
    assert_eq!(d.runs(), vec![(0, 2), (3, 1), (100, 1), (255, 1)]);
}

fn mem(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

#[test]
fn full_and_diffs_round_trip_and_merge() {
    let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-layers-").unwrap();
    let dir = tmp.as_path();
    let size = 1 << 20;
    let m = mem(size);
    m.write_slice(&[1u8; 5000], GuestAddress(0x3000)).unwrap();
    let base_id = SnapshotId::new().unwrap();
    let mut chain = MemoryChain {
        size: size as u64,
        layers: Vec::new(),
    };
    let mut t = TmpFile::create(dir, &format!("memory-{base_id}")).unwrap();
    let (len, crc64) = write_full(&mut t, &m).unwrap();
    t.persist().unwrap();
    chain.layers.push(Layer {
        id: base_id,
        kind: LayerKind::Full,
        len,
        crc64,
    });
    // A diff of two pages, one of them in the middle of the file.
    m.write_slice(&[7u8; 10], GuestAddress(0x8_0000)).unwrap();
    m.write_slice(&[0u8; 4096], GuestAddress(0x3000)).unwrap();
    let mut dirty = DirtyPages::new(size as u64);
    dirty.set(0x80);
    dirty.set(3);
    let id = SnapshotId::new().unwrap();
    let mut t = TmpFile::create(dir, &format!("diff-{id}")).unwrap();
    let layer = write_diff(&mut t, &m, id, &dirty).unwrap();
    t.persist().unwrap();
    assert_eq!(layer.kind, LayerKind::Diff { pages: 2 });
    assert_eq!(
        layer.len,
        64 + 4 * 8 + 2 * PAGE_SIZE,
        "only the dirty pages"
    );
    chain.layers.push(layer);
    for l in &chain.layers {
        verify(dir, l, size as u64).unwrap();
    }
    let back = map_chain(dir, &chain).unwrap();
    let mut a = vec![0u8; size];
    let mut b = vec![0u8; size];
    m.read_slice(&mut a, GuestAddress(0)).unwrap();
    back.read_slice(&mut b, GuestAddress(0)).unwrap();
    assert!(a == b, "the chain restores the memory");
    let mid = SnapshotId::new().unwrap();
    let mut t = TmpFile::create(dir, &format!("memory-{mid}")).unwrap();
    let merged = merge(dir, &chain, &mut t, mid).unwrap();
    t.persist().unwrap();
    let one = MemoryChain {
        size: size as u64,
        layers: vec![merged],
    };
    let back = map_chain(dir, &one).unwrap();
    back.read_slice(&mut b, GuestAddress(0)).unwrap();
    assert!(a == b, "merge == chain");

    // A corrupt diff page is caught by the CRC.
    let p = dir.join(chain.layers[1].file_name());
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let e = map_chain(dir, &chain).unwrap_err().to_string();
    assert!(e.contains("CRC-64 does not match"), "{e}");
    // A diff of another snapshot is refused by identifier.
    let mut other = chain.clone();
    other.layers[1].id = SnapshotId::new().unwrap();
    std::fs::copy(&p, dir.join(other.layers[1].file_name())).unwrap();
    let e = map_chain(dir, &other).unwrap_err().to_string();
    assert!(e.contains("belongs to another snapshot"), "{e}");
}
