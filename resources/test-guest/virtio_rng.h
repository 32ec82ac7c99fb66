/* Polling virtio-rng driver over virtio-mmio (version 2). */
#ifndef VIRTIO_RNG_H
#define VIRTIO_RNG_H

#include <stdint.h>

/* Reads that many bytes from the first entropy device (probed on first use). */
void rng_read(uint64_t bytes);

#endif
