/* Polling virtio-vsock driver: stream connections to and from the host. */
#ifndef VSOCK_H
#define VSOCK_H

#include <stdint.h>

/* Actions; the device is probed and initialised on first use. */
void vsock_info(void);
void vsock_echo(uint32_t port, uint64_t bytes);
void vsock_send(uint32_t port, const char *marker, uint32_t len);

#endif
