/* Polling virtio-blk driver over virtio-mmio (version 2, split virtqueue). */
#ifndef VIRTIO_BLK_H
#define VIRTIO_BLK_H

#include <stdint.h>

/* Actions; devices are probed and initialised on first use. D is the index
 * among block devices in command-line order. */
void blk_info(void);
void blk_read(uint64_t d, uint64_t sector, uint64_t count);
void blk_write(uint64_t d, uint64_t sector, uint64_t count, uint8_t byte);
void blk_flush(uint64_t d);
void blk_bench(uint64_t d, uint64_t mib);

#endif
