//! The state file: framing, versions, checksums and refusals.

use super::*;

pub(crate) fn sample_state() -> VmState {
    VmState {
        id: SnapshotId([7; 16]),
        parent: None,
        writer: "hearth test".into(),
        taken_at_ns: 1,
        memory: MemoryChain {
            size: 0,
            layers: Vec::new(),
        },
        config: VmConfig::new("/k"),
        execution: Execution::Emulated,
        cmdline: "console=ttyS0".into(),
        vcpus: Vec::new(),
        irqchips: vec![kvm_irqchip::default(); 3],
        pit: Default::default(),
        clock: Default::default(),
        serial: Default::default(),
        virtio: Vec::new(),
    }
}

#[test]
fn a_snapshot_travels_as_a_state_and_memory_pair() {
    use vm_memory::{Bytes, GuestAddress};
    let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-pair-").unwrap();
    let d = tmp.as_path();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    mem.write_slice(b"pair", GuestAddress(0x1234)).unwrap();
    let (p, _) = begin(&d.join("snap"), sample_state(), &mem, MemoryMode::Full).unwrap();
    p.commit().unwrap();
    export_pair(&d.join("snap"), &d.join("vm.state"), &d.join("vm.mem")).unwrap();
    std::fs::create_dir(d.join("load")).unwrap();
    import_pair(&d.join("vm.state"), &d.join("vm.mem"), &d.join("load")).unwrap();
    let s = read_state(&d.join("load")).unwrap();
    let back = layers::map_chain(&d.join("load"), &s.memory).unwrap();
    let mut b = [0u8; 4];
    back.read_slice(&mut b, GuestAddress(0x1234)).unwrap();
    assert_eq!(&b, b"pair");
    // Another snapshot's memory file with this state: refused by its length or CRC.
    std::fs::write(d.join("other.mem"), vec![1u8; 4096]).unwrap();
    std::fs::create_dir(d.join("bad")).unwrap();
    import_pair(&d.join("vm.state"), &d.join("other.mem"), &d.join("bad")).unwrap();
    let s = read_state(&d.join("bad")).unwrap();
    let e = layers::map_chain(&d.join("bad"), &s.memory)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong to this state"), "{e}");
}

#[test]
fn state_round_trips() {
    let bytes = encode_state(&sample_state()).unwrap();
    let back = decode_state(&bytes, Path::new("x")).unwrap();
    assert_eq!(back.config, VmConfig::new("/k"));
    assert_eq!(back.cmdline, "console=ttyS0");
}

#[test]
fn old_bincode_version_is_refused_by_name() {
    let mut bytes = encode_state(&sample_state()).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let e = decode_state(&bytes, Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("version 1 (bincode"), "{e}");
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = decode_state(&bytes, Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("version 7"), "{e}");
}

#[test]
fn snapshot_dir_rules() {
    let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-snapdir-").unwrap();
    let d = tmp.as_path();
    assert!(check_dir(d).is_ok());
    assert!(check_dir(&d.join("new")).is_ok());
    create_dir(&d.join("new")).unwrap();
    assert!(d.join("new").is_dir());
    let e = create_dir(&d.join("a/b/c")).unwrap_err().to_string();
    assert!(e.contains("parent directory does not exist"), "{e}");
    assert!(!d.join("a").exists(), "no parent is created");
    std::fs::write(d.join("file"), b"x").unwrap();
    let e = check_dir(&d.join("file")).unwrap_err().to_string();
    assert!(e.contains("is not a directory"), "{e}");
    let e = check_dir(&d.join("file/sub")).unwrap_err().to_string();
    assert!(e.contains("is not a directory"), "{e}");
}
