#!/usr/bin/env python3
"""Writes seed inputs for the fs_request fuzz target (layout: see its header comment) into
fuzz/corpus/fs_request, so that fuzzing starts from well-formed FUSE conversations rather
than from bytes that never get past the request header: lookups, attributes, opening and
reading files and directories, links, and every kind of change (create, write, mkdir,
setattr, rename, link, symlink, unlink, rmdir, xattrs, fallocate), on a read-only and a
writable share. Node ids and file handles are guesses (the device hands them out in
order from 1: the root, then what is looked up)."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "corpus", "fs_request")
NEXT, WRITE = 1, 2
REPLY_AT, REPLY_LEN = 0x20000, 0x1000

# Opcodes (include/uapi/linux/fuse.h).
(LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME,
 LINK, OPEN, READ, WRITE_OP, STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR,
 REMOVEXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, GETLK, SETLK, SETLKW,
 ACCESS, CREATE) = (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22,
                    23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35)
DESTROY, BATCH_FORGET, FALLOCATE, READDIRPLUS, RENAME2, LSEEK, COPY_FILE_RANGE = (
    38, 42, 43, 44, 45, 46, 47)

unique = 0


def req(opcode, nodeid, body=b""):
    global unique
    unique += 1
    return struct.pack("<IIQQIIII", 40 + len(body), opcode, unique, nodeid, 0, 0, 1, 0) + body


def name(*names):
    return b"".join(n.encode() + b"\0" for n in names)


def read_in(fh, offset=0, size=4096):
    return struct.pack("<QQIIQII", fh, offset, size, 0, 0, 0, 0)


def init():
    return req(INIT, 0, struct.pack("<IIII", 7, 31, 0x20000, 0xFFFFFFFF))


def seed(config, requests):
    """Each request a two-descriptor chain: the request, then a reply buffer."""
    descs, heads, data = [], [], bytearray()
    for i, r in enumerate(requests):
        heads.append(len(descs))
        off = len(data)
        data += r + b"\0" * (-len(r) % 16)
        d = len(descs)
        descs.append(struct.pack("<QIHH", off, len(r), NEXT, d + 1))
        descs.append(struct.pack("<QIHH", REPLY_AT + i * REPLY_LEN, REPLY_LEN, WRITE, 0))
    assert len(descs) <= 1 << (config & 7)
    head = bytes([config, len(descs), len(heads)])
    return head + b"".join(descs) + b"".join(struct.pack("<H", h) for h in heads) + data


READS = [
    init(),
    req(LOOKUP, 1, name("file")),
    req(GETATTR, 2, struct.pack("<IIQ", 0, 0, 0)),
    req(OPEN, 2, struct.pack("<II", 0, 0)),
    req(READ, 2, read_in(1)),
    req(LSEEK, 2, struct.pack("<QQII", 1, 3, 3, 0)),
    req(FLUSH, 2, struct.pack("<QIIQ", 1, 0, 0, 0)),
    req(RELEASE, 2, struct.pack("<QIIQ", 1, 0, 0, 0)),
    req(OPENDIR, 1, struct.pack("<II", 0, 0)),
    req(READDIR, 1, read_in(2)),
    req(READDIRPLUS, 1, read_in(2)),
    req(RELEASEDIR, 1, struct.pack("<QIIQ", 2, 0, 0, 0)),
    req(LOOKUP, 1, name("link")),
    req(READLINK, 3),
    req(LOOKUP, 1, name("..")),
    req(STATFS, 1),
]

CHANGES = [
    init(),
    req(CREATE, 1, struct.pack("<IIII", 0o102, 0o644, 0o22, 0) + name("new")),
    req(WRITE_OP, 2, struct.pack("<QQIIQII", 1, 0, 5, 0, 0, 0, 0) + b"hello"),
    req(SETATTR, 2, struct.pack("<IIQQQQQQIIIIIIII", 0x8, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0,
                                0o600, 0, 0, 0, 0)),
    req(FALLOCATE, 2, struct.pack("<QQQII", 1, 0, 4096, 0, 0)),
    req(FSYNC, 2, struct.pack("<QII", 1, 0, 0)),
    req(MKDIR, 1, struct.pack("<II", 0o755, 0o22) + name("dir")),
    req(RENAME, 1, struct.pack("<Q", 3) + name("new", "moved")),
    req(LINK, 2, struct.pack("<Q", 2) + name("hard")),
    req(SYMLINK, 1, name("sym", "/etc/passwd")),
    req(SETXATTR, 2, struct.pack("<II", 1, 0) + name("user.x") + b"v"),
    req(GETXATTR, 2, struct.pack("<II", 64, 0) + name("user.x")),
    req(UNLINK, 1, name("hard")),
    req(RMDIR, 1, name("dir")),
    req(MKNOD, 1, struct.pack("<IIII", 0o10644, 0, 0o22, 0) + name("fifo")),
    req(BATCH_FORGET, 0, struct.pack("<II", 1, 0) + struct.pack("<QQ", 2, 1)),
]

SEEDS = {
    "reads-ro": seed(0x15, READS),
    "reads-rw": seed(0x05, READS),
    "changes-rw": seed(0x05, CHANGES),
    "changes-ro": seed(0x15, CHANGES),
    "escape": seed(0x04, [init(), req(LOOKUP, 1, name("../../etc")),
                          req(LOOKUP, 1, name("sub/..")), req(GETATTR, 99, b"\0" * 16),
                          req(OPEN, 1, struct.pack("<II", 2, 0)),
                          req(RENAME2, 1, struct.pack("<QII", 1, 1, 0) + name("file", "../x")),
                          req(COPY_FILE_RANGE, 2, b"\0" * 56), req(DESTROY, 0)]),
}

os.makedirs(OUT, exist_ok=True)
for seed_name, blob in SEEDS.items():
    with open(os.path.join(OUT, "seed-" + seed_name), "wb") as f:
        f.write(blob)
print(f"{len(SEEDS)} seeds in {os.path.normpath(OUT)}")
