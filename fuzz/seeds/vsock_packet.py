#!/usr/bin/env python3
"""Writes seed inputs for the vsock_packet fuzz target (layout: see its header comment)
into fuzz/corpus/vsock_packet, so that fuzzing starts from real conversations: a guest
connection to a host listener (port 1) with data, credit request and shutdown; a refused
connection; a single-descriptor RW; a reset."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "corpus", "vsock_packet")
NEXT = 1


def hdr(op, src_port=1000, dst_port=1, length=0, flags=0, buf_alloc=4096, fwd=0):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, 1, op, flags,
                       buf_alloc, fwd)


def seed(chains, nrx=8):
    """chains: list of packets, each a list of (bytes) buffers in the data area."""
    descs, heads, data = [], [], bytearray()
    for chain in chains:
        heads.append(len(descs))
        for i, buf in enumerate(chain):
            off = len(data)
            data += buf + b"\0" * (-len(buf) % 64)
            last = i == len(chain) - 1
            descs.append(struct.pack("<QIHH", off, len(buf), 0 if last else NEXT,
                                     0 if last else len(descs) + 1))
    head = bytes([0x04, len(descs), len(heads), nrx])  # queue size 16
    return head + b"".join(descs) + b"".join(struct.pack("<H", h) for h in heads) + data


SEEDS = {
    "conversation": seed([
        [hdr(1)],                                  # REQUEST to host port 1
        [hdr(5, length=5), b"hello"],              # RW
        [hdr(7)],                                  # CREDIT_REQUEST
        [hdr(6, fwd=100)],                         # CREDIT_UPDATE
        [hdr(4, flags=3)],                         # SHUTDOWN both
    ]),
    "refused": seed([[hdr(1, dst_port=9)], [hdr(5, dst_port=9, length=2), b"no"]]),
    "fused_rw": seed([[hdr(1, src_port=7)], [hdr(5, src_port=7, length=3) + b"abc"]]),
    "reset": seed([[hdr(1, src_port=8)], [hdr(3, src_port=8)], [hdr(2, src_port=8)]]),
}

os.makedirs(OUT, exist_ok=True)
for name, blob in SEEDS.items():
    with open(os.path.join(OUT, "seed-" + name), "wb") as f:
        f.write(blob)
print(f"{len(SEEDS)} seeds in {os.path.normpath(OUT)}")
