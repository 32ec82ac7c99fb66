//! The device driven at the FUSE protocol level through a split queue in guest memory,
//! as the guest's virtiofs driver drives it.

// Ring addresses, lengths and flags here are small constants.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::os::unix::fs::symlink;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::{Interrupt, VirtioDevice};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const REQ: u64 = 0x1_0000;
const REPLY: u64 = 0x4_0000;
const REPLY_LEN: u32 = 0x2_0000;
const SIZE: u16 = 16;

// FUSE opcodes (include/uapi/linux/fuse.h).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const MKDIR: u32 = 9;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const RELEASE: u32 = 18;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const CREATE: u32 = 35;

struct Harness {
    fs: Fs,
    mem: GuestMemoryMmap,
    unique: u64,
    avail: u16,
}

impl Harness {
    fn new(dir: &std::path::Path, read_only: bool) -> Harness {
        let mut fs = Fs::new(FsConfig {
            path: dir.to_owned(),
            tag: "t".into(),
            read_only,
        })
        .unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut queues = Vec::new();
        for i in 0..2u64 {
            let mut q = Queue::new(SIZE).unwrap();
            q.set_size(SIZE);
            // The request queue (1) at DESC, AVAIL, USED; the high-priority one above.
            let base = (1 - i) * 0x8000;
            q.set_desc_table_address(Some((DESC + base) as u32), Some(0));
            q.set_avail_ring_address(Some((AVAIL + base) as u32), Some(0));
            q.set_used_ring_address(Some((USED + base) as u32), Some(0));
            q.set_ready(true);
            queues.push(q);
        }
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        crate::virtio::activate_with(&mut fs, &mem, queues, &interrupt);
        Harness {
            fs,
            mem,
            unique: 1,
            avail: 0,
        }
    }

    /// Sends one raw message on the request queue; returns the reply bytes.
    fn raw(&mut self, msg: &[u8]) -> Vec<u8> {
        let slot = u64::from(self.avail % SIZE);
        let (d0, d1) = (2 * (slot % 8), 2 * (slot % 8) + 1);
        self.mem.write_slice(msg, GuestAddress(REQ)).unwrap();
        let mut desc = Vec::new();
        desc.extend_from_slice(&REQ.to_le_bytes());
        desc.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        desc.extend_from_slice(&1u16.to_le_bytes()); // NEXT
        desc.extend_from_slice(&(d1 as u16).to_le_bytes());
        desc.extend_from_slice(&REPLY.to_le_bytes());
        desc.extend_from_slice(&REPLY_LEN.to_le_bytes());
        desc.extend_from_slice(&2u16.to_le_bytes()); // WRITE
        desc.extend_from_slice(&0u16.to_le_bytes());
        self.mem
            .write_slice(&desc, GuestAddress(DESC + 16 * d0))
            .unwrap();
        self.mem
            .write_obj(d0 as u16, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL + 2))
            .unwrap();
        self.fs.process_queue(1);
        let used: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used, self.avail, "the request was not completed");
        let elem = USED + 4 + 8 * u64::from(used.wrapping_sub(1) % SIZE);
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(REPLY))
            .unwrap();
        reply
    }

    /// Sends a request; returns (error, body).
    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        let mut msg = Vec::new();
        msg.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        msg.extend_from_slice(&opcode.to_le_bytes());
        msg.extend_from_slice(&self.unique.to_le_bytes());
        msg.extend_from_slice(&nodeid.to_le_bytes());
        msg.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
        msg.extend_from_slice(body);
        let reply = self.raw(&msg);
        assert!(reply.len() >= 16, "short reply {reply:?}");
        let len = u32::from_le_bytes(reply[0..4].try_into().unwrap());
        assert_eq!(len as usize, reply.len());
        let error = i32::from_le_bytes(reply[4..8].try_into().unwrap());
        let unique = u64::from_le_bytes(reply[8..16].try_into().unwrap());
        assert_eq!(unique, self.unique);
        self.unique += 1;
        (error, reply[16..].to_vec())
    }

    fn init(&mut self) {
        let mut body = Vec::new();
        for v in [7u32, 31, 0x2_0000, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let (err, out) = self.call(INIT, 0, &body);
        assert_eq!(err, 0);
        assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 7);
    }

    /// LOOKUP: (error, nodeid, size, mode).
    fn lookup(&mut self, parent: u64, name: &str) -> (i32, u64, u64, u32) {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let (err, out) = self.call(LOOKUP, parent, &body);
        if err != 0 {
            return (err, 0, 0, 0);
        }
        let u64at = |o: usize| u64::from_le_bytes(out[o..o + 8].try_into().unwrap());
        // fuse_entry_out: nodeid, generation, valid times (24), then fuse_attr (ino, size,
        // blocks, 3 times, 3 nsec, mode at 40+60).
        let mode = u32::from_le_bytes(out[100..104].try_into().unwrap());
        (0, u64at(0), u64at(48), mode)
    }

    fn open(&mut self, node: u64, opcode: u32, flags: u32) -> (i32, u64) {
        let mut body = flags.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        let (err, out) = self.call(opcode, node, &body);
        if err != 0 {
            return (err, 0);
        }
        (0, u64::from_le_bytes(out[0..8].try_into().unwrap()))
    }

    fn read(&mut self, opcode: u32, node: u64, fh: u64, size: u32) -> (i32, Vec<u8>) {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&[0u8; 20]);
        self.call(opcode, node, &body)
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-fs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn config_space_and_bad_configs() {
    let dir = temp_dir("config");
    let fs = Fs::new(FsConfig {
        path: dir.clone(),
        tag: "mytag".into(),
        read_only: true,
    })
    .unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    let mut tag = [0u8; 40];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..6], b"mytag\0");
    assert_eq!(&tag[36..], &1u32.to_le_bytes());
    let bad = |path: std::path::PathBuf, tag: &str| {
        Fs::new(FsConfig {
            path,
            tag: tag.into(),
            read_only: false,
        })
        .unwrap_err()
        .to_string()
    };
    assert!(bad(dir.clone(), "").contains("tag"));
    assert!(bad(dir.clone(), &"x".repeat(37)).contains("tag"));
    assert!(bad("relative".into(), "t").contains("absolute"));
    assert!(bad(dir.join("missing"), "t").contains("not a directory"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn init_lookup_getattr_open_read_readdir() {
    let dir = temp_dir("read");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("file"), &content).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let mut h = Harness::new(&dir, true);
    h.init();

    let (err, node, size, mode) = h.lookup(1, "file");
    assert_eq!(err, 0);
    assert_eq!(size, content.len() as u64);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    let (err, attr) = h.call(GETATTR, node, &[0u8; 16]);
    assert_eq!(err, 0);
    // fuse_attr_out: attr_valid (8), nsec (4), dummy (4), then fuse_attr with size at 8.
    assert_eq!(
        u64::from_le_bytes(attr[24..32].try_into().unwrap()),
        content.len() as u64
    );
    let (err, fh) = h.open(node, OPEN, libc::O_RDONLY as u32);
    assert_eq!(err, 0);
    let (err, data) = h.read(READ, node, fh, 0x2_0000 - 16);
    assert_eq!(err, 0);
    assert_eq!(data, content);
    let mut rel = fh.to_le_bytes().to_vec();
    rel.extend_from_slice(&[0u8; 16]);
    assert_eq!(h.call(RELEASE, node, &rel).0, 0);

    let (err, dh) = h.open(1, OPENDIR, libc::O_RDONLY as u32);
    assert_eq!(err, 0);
    let (err, ents) = h.read(READDIR, 1, dh, 4096);
    assert_eq!(err, 0);
    let mut names = Vec::new();
    let mut at = 0;
    while at + 24 <= ents.len() {
        let namelen = u32::from_le_bytes(ents[at + 16..at + 20].try_into().unwrap()) as usize;
        names.push(String::from_utf8(ents[at + 24..at + 24 + namelen].to_vec()).unwrap());
        at += (24 + namelen + 7) & !7;
    }
    names.sort();
    assert!(names.contains(&"file".to_string()), "{names:?}");
    assert!(names.contains(&"sub".to_string()), "{names:?}");
    assert!(h.fs.requests() >= 8);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_guest_cannot_leave_the_share() {
    let outside = temp_dir("outside");
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    let dir = temp_dir("escape");
    symlink(outside.join("secret"), dir.join("link")).unwrap();
    symlink("../", dir.join("up")).unwrap();
    let mut h = Harness::new(&dir, false);
    h.init();
    // ".." of the root is the root.
    let (err, node, _, _) = h.lookup(1, "..");
    assert_eq!(err, 0);
    assert_eq!(node, 1);
    // Names with a slash are refused.
    assert_eq!(h.lookup(1, "../outside").0, -libc::EINVAL);
    // A symlink is a symlink: its target is text for the guest to resolve, and opening it
    // on the host is refused.
    let (err, link, _, mode) = h.lookup(1, "link");
    assert_eq!(err, 0);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    let (err, target) = h.call(READLINK, link, &[]);
    assert_eq!(err, 0);
    assert_eq!(
        target,
        outside.join("secret").as_os_str().as_encoded_bytes()
    );
    assert_eq!(h.open(link, OPEN, libc::O_RDONLY as u32).0, -libc::ELOOP);
    let (err, up, _, _) = h.lookup(1, "up");
    assert_eq!(err, 0);
    assert_eq!(h.open(up, OPENDIR, libc::O_RDONLY as u32).0, -libc::ELOOP);
    assert_ne!(h.lookup(up, "secret").0, 0);
    // Node ids the server never gave out are refused.
    assert_ne!(h.call(GETATTR, 0xdead_beef, &[0u8; 16]).0, 0);
    // Garbage: a header claiming more than was sent, an unknown opcode, a short message.
    assert!(h.raw(&[1, 2, 3]).len() <= 16);
    assert_ne!(h.call(9999, 1, &[]).0, 0);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn read_only_means_read_only() {
    let dir = temp_dir("ro");
    std::fs::write(dir.join("file"), b"original").unwrap();
    for read_only in [true, false] {
        let mut h = Harness::new(&dir, read_only);
        h.init();
        let (_, node, _, _) = h.lookup(1, "file");
        let want = if read_only { -libc::EROFS } else { 0 };
        let (err, fh) = h.open(node, OPEN, libc::O_RDWR as u32);
        assert_eq!(err, want);
        if !read_only {
            let mut body = fh.to_le_bytes().to_vec();
            body.extend_from_slice(&0u64.to_le_bytes());
            body.extend_from_slice(&3u32.to_le_bytes());
            body.extend_from_slice(&[0u8; 20]);
            body.extend_from_slice(b"NEW");
            assert_eq!(h.call(WRITE, node, &body).0, 0);
        }
        if read_only {
            let trunc = libc::O_RDONLY as u32 | libc::O_TRUNC as u32;
            assert_eq!(h.open(node, OPEN, trunc).0, -libc::EROFS);
        }
        let mut create = Vec::new();
        for v in [libc::O_WRONLY as u32 | libc::O_CREAT as u32, 0o644, 0, 0] {
            create.extend_from_slice(&v.to_le_bytes());
        }
        let name = if read_only { "new-ro\0" } else { "new-rw\0" };
        create.extend_from_slice(name.as_bytes());
        assert_eq!(h.call(CREATE, 1, &create).0, want);
        let mut mkdir = Vec::new();
        mkdir.extend_from_slice(&0o755u32.to_le_bytes());
        mkdir.extend_from_slice(&0u32.to_le_bytes());
        mkdir.extend_from_slice(if read_only { b"d-ro\0" } else { b"d-rw\0" });
        assert_eq!(h.call(MKDIR, 1, &mkdir).0, want);
        let setattr = [0u8; 88];
        if read_only {
            assert_eq!(h.call(SETATTR, node, &setattr).0, -libc::EROFS);
        }
    }
    assert_eq!(std::fs::read(dir.join("file")).unwrap(), b"NEWginal");
    assert!(!dir.join("new-ro").exists() && dir.join("new-rw").exists());
    assert!(!dir.join("d-ro").exists() && dir.join("d-rw").is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}
