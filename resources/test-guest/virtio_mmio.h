/*
 * Common virtio-mmio (version 2) driver code: transports from the command
 * line, device initialisation in the order Linux's virtio_mmio driver uses,
 * and polled split virtqueues. Device drivers (virtio_blk.c, ...) sit on top.
 */
#ifndef VIRTIO_MMIO_H
#define VIRTIO_MMIO_H

#include <stdint.h>

/* virtio-mmio registers */
#define VIRTIO_MMIO_MAGIC_VALUE		0x000
#define VIRTIO_MMIO_VERSION		0x004
#define VIRTIO_MMIO_DEVICE_ID		0x008
#define VIRTIO_MMIO_DEVICE_FEATURES	0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL	0x014
#define VIRTIO_MMIO_DRIVER_FEATURES	0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL	0x024
#define VIRTIO_MMIO_QUEUE_SEL		0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX	0x034
#define VIRTIO_MMIO_QUEUE_NUM		0x038
#define VIRTIO_MMIO_QUEUE_READY		0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY	0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS	0x060
#define VIRTIO_MMIO_INTERRUPT_ACK	0x064
#define VIRTIO_MMIO_STATUS		0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW	0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH	0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW	0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH	0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW	0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH	0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION	0x0fc
#define VIRTIO_MMIO_CONFIG		0x100

#define VIRTIO_MMIO_MAGIC		0x74726976	/* "virt" */

/* device IDs */
#define VIRTIO_ID_NET			1
#define VIRTIO_ID_BLOCK			2
#define VIRTIO_ID_RNG			4
#define VIRTIO_ID_VSOCK			19

#define VIRTIO_F_VERSION_1		32

#define VRING_DESC_F_NEXT		1
#define VRING_DESC_F_WRITE		2

#define VQ_MAX_SIZE			16	/* descriptors per queue we use */
#define VIRTIO_MAX_QUEUES		3

/* TSC ticks to wait (the TSC runs at ~2 GHz under hearth). */
#define VIRTIO_REQ_TIMEOUT_TICKS	(20ULL * 1000 * 1000 * 1000)
#define VIRTIO_ISR_TIMEOUT_TICKS	(1ULL * 1000 * 1000 * 1000)

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};

/* One page per queue: descriptor table, available ring, used ring. */
struct vq_mem {
	struct vring_desc desc[VQ_MAX_SIZE];
	struct {
		uint16_t flags;
		uint16_t idx;
		uint16_t ring[VQ_MAX_SIZE];
		uint16_t used_event;
	} avail __attribute__((aligned(2)));
	struct {
		uint16_t flags;
		uint16_t idx;
		struct vring_used_elem ring[VQ_MAX_SIZE];
		uint16_t avail_event;
	} used __attribute__((aligned(4)));
} __attribute__((aligned(4096)));

struct virtq {
	struct vq_mem *mem;
	uint32_t size;
	uint16_t avail_idx;
	uint16_t used_idx;
};

struct virtio_dev {
	uintptr_t base;
	uint64_t features;		/* negotiated */
	unsigned nqueues;
	struct virtq vq[VIRTIO_MAX_QUEUES];
	int ok;				/* initialised */
	int dead;			/* a request timed out: ring state unknown */
};

/* One buffer of a descriptor chain. */
struct vbuf {
	void *addr;
	uint32_t len;
	int device_writes;
};

/* Register a virtio-mmio transport (from a virtio_mmio.device= token). */
void virtio_mmio_add(uint64_t base, uint64_t size);

/* Base of the index-th transport (command-line order) with this device ID,
 * or 0. Transports with a bad magic or version are reported once. */
uintptr_t virtio_find(uint32_t device_id, unsigned index);

/* Resets and initialises the device at base: offers 'wanted' features
 * (VERSION_1 is required), sets up nqueues queues backed by mem[0..nqueues),
 * then DRIVER_OK. Errors are printed as "<name> <d> error: ..." and
 * return -1. */
int virtio_init(struct virtio_dev *dev, uintptr_t base, uint64_t wanted,
		unsigned nqueues, struct vq_mem *mem, const char *name,
		unsigned d);

uint32_t virtio_read(struct virtio_dev *dev, uint32_t off);
void virtio_write(struct virtio_dev *dev, uint32_t off, uint32_t v);
/* A 64-bit config field, re-read while the config generation moves. */
uint64_t virtio_config_read64(struct virtio_dev *dev, uint32_t off);

/* Puts a chain of n buffers in descriptors first..first+n-1 of queue q and
 * makes it available (no notify). */
void vq_add(struct virtio_dev *dev, unsigned q, unsigned first,
	    const struct vbuf *bufs, unsigned n);
void vq_notify(struct virtio_dev *dev, unsigned q);
/* Takes the next used element of queue q if there is one: returns 1 and
 * fills id/len, or 0. */
int vq_take_used(struct virtio_dev *dev, unsigned q, uint32_t *id,
		 uint32_t *len);
/* Waits for the next used element (bounded by timeout ticks): 1 or 0. */
int vq_wait_used(struct virtio_dev *dev, unsigned q, uint64_t timeout,
		 uint32_t *id, uint32_t *len);
/* Reads and acknowledges InterruptStatus, giving the device a moment to
 * set the used-buffer bit; returns the bits seen. */
uint32_t virtio_ack_interrupt(struct virtio_dev *dev);

#endif
