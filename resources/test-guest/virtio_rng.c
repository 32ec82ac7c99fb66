/*
 * Polling virtio-rng driver (virtio 1.2, §5.4, the entropy device) on the
 * common virtio-mmio code: one queue, one device-writable buffer per request,
 * as Linux's virtio-rng driver posts them.
 */
#include "virtio_rng.h"
#include "virtio_mmio.h"
#include "io.h"
#include "lib.h"

/* Acknowledge whatever InterruptStatus shows, without waiting for a bit. */
static void ack_now(struct virtio_dev *dev)
{
	uint32_t isr = virtio_read(dev, VIRTIO_MMIO_INTERRUPT_STATUS);

	if (isr)
		virtio_write(dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
}

#define RNG_CHUNK			4096

static int rng_probed, rng_ok, rng_dead;
static struct virtio_dev rng_dev;
static struct vq_mem rng_vq;
static uint8_t rng_buf[RNG_CHUNK] __attribute__((aligned(4096)));

void rng_read(uint64_t bytes)
{
	uint64_t got = 0, h = FNV_OFFSET;
	uint8_t seen[256];
	unsigned distinct = 0;

	if (!rng_probed) {
		uintptr_t base = virtio_find(VIRTIO_ID_RNG, 0);

		rng_probed = 1;
		if (!base) {
			pr_str("rng no-such-device\n");
			return;
		}
		rng_ok = virtio_init(&rng_dev, base, 0, 1, &rng_vq, "rng", 0) == 0;
	}
	if (!rng_ok) {
		pr_str(rng_dev.base ? "rng error: not available\n" : "rng no-such-device\n");
		return;
	}
	if (rng_dead) {
		pr_str("rng timeout\n");
		return;
	}
	memset(seen, 0, sizeof(seen));
	while (got < bytes) {
		uint32_t want = bytes - got < RNG_CHUNK ? (uint32_t)(bytes - got) : RNG_CHUNK;
		struct vbuf b = { rng_buf, want, 1 };
		uint32_t len;

		vq_add(&rng_dev, 0, 0, &b, 1);
		vq_notify(&rng_dev, 0);
		if (!vq_wait_used(&rng_dev, 0, VIRTIO_REQ_TIMEOUT_TICKS, NULL, &len)) {
			rng_dead = 1;
			pr_str("rng timeout\n");
			return;
		}
		ack_now(&rng_dev);
		if (len == 0 || len > want) {
			pr_str("rng error: the device returned ");
			pr_dec(len);
			pr_str(" bytes for ");
			pr_dec(want);
			pr_str("\n");
			return;
		}
		h = fnv1a(h, rng_buf, len);
		for (uint32_t i = 0; i < len; i++) {
			distinct += !seen[rng_buf[i]];
			seen[rng_buf[i]] = 1;
		}
		got += len;
	}
	pr_str("rng read ");
	pr_dec(got);
	pr_str(" bytes distinct=");
	pr_dec(distinct);
	pr_str(" fnv=");
	pr_hex16(h);
	pr_str("\n");
}
