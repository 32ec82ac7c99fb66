/*
 * Common virtio-mmio driver code (virtio 1.2, §4.2.3, §2.7 split queues),
 * polled: no interrupts are taken, InterruptStatus is read and acked.
 */
#include "virtio_mmio.h"
#include "io.h"
#include "lib.h"

#define MAX_TRANSPORTS			8

/* device status */
#define S_ACKNOWLEDGE			1
#define S_DRIVER			2
#define S_DRIVER_OK			4
#define S_FEATURES_OK			8
#define S_FAILED			128

static uint64_t transports[MAX_TRANSPORTS];
static unsigned n_transports;
static int checked;

void virtio_mmio_add(uint64_t base, uint64_t size)
{
	(void)size;
	if (n_transports < MAX_TRANSPORTS)
		transports[n_transports++] = base;
}

static int transport_ok(uintptr_t base)
{
	uint32_t magic = mmio_read32(base + VIRTIO_MMIO_MAGIC_VALUE);
	uint32_t version = mmio_read32(base + VIRTIO_MMIO_VERSION);

	if (magic == VIRTIO_MMIO_MAGIC && version == 2)
		return 1;
	if (!checked) {
		pr_str("virtio-mmio ");
		pr_hex(base);
		pr_str(magic != VIRTIO_MMIO_MAGIC ?
		       " error: bad magic\n" : " error: version is not 2\n");
	}
	return 0;
}

uintptr_t virtio_find(uint32_t device_id, unsigned index)
{
	uintptr_t found = 0;

	for (unsigned i = 0; i < n_transports; i++) {
		uintptr_t base = transports[i];

		if (!transport_ok(base))
			continue;
		if (mmio_read32(base + VIRTIO_MMIO_DEVICE_ID) != device_id)
			continue;
		if (index-- == 0 && !found)
			found = base;
	}
	checked = 1;
	return found;
}

uint32_t virtio_read(struct virtio_dev *dev, uint32_t off)
{
	return mmio_read32(dev->base + off);
}

void virtio_write(struct virtio_dev *dev, uint32_t off, uint32_t v)
{
	mmio_write32(dev->base + off, v);
}

static void init_error(const char *name, unsigned d, const char *msg)
{
	pr_str(name);
	pr_char(' ');
	pr_dec(d);
	pr_str(" error: ");
	pr_str(msg);
	pr_str("\n");
}

static int setup_queue(struct virtio_dev *dev, unsigned q, struct vq_mem *mem,
		       const char *name, unsigned d)
{
	struct virtq *vq = &dev->vq[q];
	uint32_t num;

	virtio_write(dev, VIRTIO_MMIO_QUEUE_SEL, q);
	if (virtio_read(dev, VIRTIO_MMIO_QUEUE_READY)) {
		init_error(name, d, "queue already ready");
		return -1;
	}
	num = virtio_read(dev, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (num == 0) {
		init_error(name, d, "queue not available");
		return -1;
	}
	/* split virtqueue sizes are powers of two */
	vq->size = VQ_MAX_SIZE;
	while (vq->size > num)
		vq->size >>= 1;
	vq->mem = mem;
	vq->avail_idx = 0;
	vq->used_idx = 0;
	memset(mem, 0, sizeof(*mem));
	virtio_write(dev, VIRTIO_MMIO_QUEUE_NUM, vq->size);

	uint64_t desc = (uintptr_t)&mem->desc;
	uint64_t avail = (uintptr_t)&mem->avail;
	uint64_t used = (uintptr_t)&mem->used;
	virtio_write(dev, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	virtio_write(dev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	virtio_write(dev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	virtio_write(dev, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	virtio_write(dev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	virtio_write(dev, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	virtio_write(dev, VIRTIO_MMIO_QUEUE_READY, 1);
	return 0;
}

int virtio_init(struct virtio_dev *dev, uintptr_t base, uint64_t wanted,
		unsigned nqueues, struct vq_mem *mem, const char *name,
		unsigned d)
{
	uint64_t offered;

	dev->base = base;
	dev->ok = 0;
	dev->dead = 0;
	dev->nqueues = nqueues;
	virtio_write(dev, VIRTIO_MMIO_STATUS, 0);	/* reset */
	for (int i = 0; i < 1000 && virtio_read(dev, VIRTIO_MMIO_STATUS); i++)
		;
	virtio_write(dev, VIRTIO_MMIO_STATUS, S_ACKNOWLEDGE);
	virtio_write(dev, VIRTIO_MMIO_STATUS, S_ACKNOWLEDGE | S_DRIVER);

	virtio_write(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	offered = (uint64_t)virtio_read(dev, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	virtio_write(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	offered |= virtio_read(dev, VIRTIO_MMIO_DEVICE_FEATURES);
	if (!(offered & (1ULL << VIRTIO_F_VERSION_1))) {
		init_error(name, d, "VIRTIO_F_VERSION_1 not offered");
		goto fail;
	}
	dev->features = offered & (wanted | (1ULL << VIRTIO_F_VERSION_1));
	virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(dev->features >> 32));
	virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_write(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)dev->features);

	virtio_write(dev, VIRTIO_MMIO_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	if (!(virtio_read(dev, VIRTIO_MMIO_STATUS) & S_FEATURES_OK)) {
		init_error(name, d, "FEATURES_OK not accepted");
		goto fail;
	}
	for (unsigned q = 0; q < nqueues && q < VIRTIO_MAX_QUEUES; q++)
		if (setup_queue(dev, q, &mem[q], name, d))
			goto fail;

	virtio_write(dev, VIRTIO_MMIO_STATUS,
		     S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	dev->ok = 1;
	return 0;

fail:
	virtio_write(dev, VIRTIO_MMIO_STATUS,
		     virtio_read(dev, VIRTIO_MMIO_STATUS) | S_FAILED);
	return -1;
}

uint64_t virtio_config_read64(struct virtio_dev *dev, uint32_t off)
{
	uint64_t v = 0;

	for (int i = 0; i < 100; i++) {
		uint32_t gen = virtio_read(dev, VIRTIO_MMIO_CONFIG_GENERATION);
		uint64_t lo = virtio_read(dev, VIRTIO_MMIO_CONFIG + off);
		uint64_t hi = virtio_read(dev, VIRTIO_MMIO_CONFIG + off + 4);

		v = (hi << 32) | lo;
		if (gen == virtio_read(dev, VIRTIO_MMIO_CONFIG_GENERATION))
			break;
	}
	return v;
}

void vq_add(struct virtio_dev *dev, unsigned q, unsigned first,
	    const struct vbuf *bufs, unsigned n)
{
	struct virtq *vq = &dev->vq[q];
	struct vring_desc *desc = vq->mem->desc;

	for (unsigned i = 0; i < n; i++) {
		unsigned slot = (first + i) % vq->size;

		desc[slot].addr = (uintptr_t)bufs[i].addr;
		desc[slot].len = bufs[i].len;
		desc[slot].flags = (bufs[i].device_writes ? VRING_DESC_F_WRITE : 0) |
				   (i + 1 < n ? VRING_DESC_F_NEXT : 0);
		desc[slot].next = (uint16_t)((slot + 1) % vq->size);
	}
	vq->mem->avail.ring[vq->avail_idx % vq->size] = (uint16_t)(first % vq->size);
	mb();				/* ring entry before idx */
	*(volatile uint16_t *)&vq->mem->avail.idx = ++vq->avail_idx;
	mb();				/* idx before any notify */
}

void vq_notify(struct virtio_dev *dev, unsigned q)
{
	virtio_write(dev, VIRTIO_MMIO_QUEUE_NOTIFY, q);
}

int vq_take_used(struct virtio_dev *dev, unsigned q, uint32_t *id,
		 uint32_t *len)
{
	struct virtq *vq = &dev->vq[q];

	if (*(volatile uint16_t *)&vq->mem->used.idx == vq->used_idx)
		return 0;
	mb();				/* used idx before the element and data */
	volatile struct vring_used_elem *e =
		&vq->mem->used.ring[vq->used_idx % vq->size];
	if (id)
		*id = e->id;
	if (len)
		*len = e->len;
	vq->used_idx++;
	return 1;
}

int vq_wait_used(struct virtio_dev *dev, unsigned q, uint64_t timeout,
		 uint32_t *id, uint32_t *len)
{
	uint64_t t0 = rdtsc();

	while (!vq_take_used(dev, q, id, len))
		if (rdtsc() - t0 > timeout)
			return 0;
	return 1;
}

uint32_t virtio_ack_interrupt(struct virtio_dev *dev)
{
	/* The device may set the bit just after publishing the used ring. */
	uint32_t isr = virtio_read(dev, VIRTIO_MMIO_INTERRUPT_STATUS);
	uint64_t t0 = rdtsc();

	while (!(isr & 1) && rdtsc() - t0 < VIRTIO_ISR_TIMEOUT_TICKS)
		isr = virtio_read(dev, VIRTIO_MMIO_INTERRUPT_STATUS);
	virtio_write(dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	return isr;
}
