/* Polling virtio-net driver over virtio-mmio (version 2). */
#ifndef VIRTIO_NET_H
#define VIRTIO_NET_H

#include <stddef.h>
#include <stdint.h>

/* Actions; devices are probed and initialised on first use. D is the index
 * among network devices in command-line order. */
void net_info(void);
void net_tx(uint64_t d, const char *marker, size_t len);
void net_rx(uint64_t d, uint64_t count);
void net_echo(uint64_t d, uint64_t count);
void net_flood(uint64_t d, uint64_t count, uint64_t len);
void net_sink(uint64_t d, uint64_t count);

#endif
