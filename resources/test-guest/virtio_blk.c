/*
 * Polling virtio-blk driver over virtio-mmio (virtio 1.2, §4.2.3 and §5.2),
 * initialised in the same order as Linux's virtio_mmio + virtio_blk drivers.
 * One request is in flight at a time; it always uses descriptors 0..2.
 */
#include "virtio_blk.h"
#include "io.h"
#include "lib.h"

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
#define VIRTIO_ID_BLOCK			2

/* device status */
#define S_ACKNOWLEDGE			1
#define S_DRIVER			2
#define S_DRIVER_OK			4
#define S_FEATURES_OK			8
#define S_FAILED			128

/* feature bits */
#define VIRTIO_BLK_F_SEG_MAX		2
#define VIRTIO_BLK_F_RO			5
#define VIRTIO_BLK_F_BLK_SIZE		6
#define VIRTIO_BLK_F_FLUSH		9
#define VIRTIO_F_VERSION_1		32

/* request types and status */
#define VIRTIO_BLK_T_IN			0
#define VIRTIO_BLK_T_OUT		1
#define VIRTIO_BLK_T_FLUSH		4
#define VIRTIO_BLK_T_GET_ID		8
#define VIRTIO_BLK_ID_BYTES		20

#define VRING_DESC_F_NEXT		1
#define VRING_DESC_F_WRITE		2

#define MAX_TRANSPORTS			8
#define QSZ				16
#define CHUNK_SECTORS			128	/* 64 KiB per request */
#define SECTOR				512

/* TSC ticks to wait (the TSC runs at ~2 GHz under hearth). */
#define REQ_TIMEOUT_TICKS		(20ULL * 1000 * 1000 * 1000)
#define ISR_TIMEOUT_TICKS		(1ULL * 1000 * 1000 * 1000)

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
	struct vring_desc desc[QSZ];
	struct {
		uint16_t flags;
		uint16_t idx;
		uint16_t ring[QSZ];
		uint16_t used_event;
	} avail __attribute__((aligned(2)));
	struct {
		uint16_t flags;
		uint16_t idx;
		struct vring_used_elem ring[QSZ];
		uint16_t avail_event;
	} used __attribute__((aligned(4)));
} __attribute__((aligned(4096)));

struct blk {
	uintptr_t base;
	struct vq_mem *vq;
	uint64_t capacity;	/* 512-byte sectors */
	uint32_t qsz;
	uint16_t avail_idx;
	uint16_t used_idx;
	int ro;
	int ok;			/* initialised */
	int dead;		/* a request timed out: the ring state is unknown */
};

struct blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static uint64_t transports[MAX_TRANSPORTS];
static unsigned n_transports;
static int probed;

static struct blk blks[MAX_TRANSPORTS];
static unsigned n_blks;
static struct vq_mem vqs[MAX_TRANSPORTS];

static struct {
	struct blk_req_hdr hdr;
	uint8_t status;
} req __attribute__((aligned(64)));
static uint8_t data_buf[CHUNK_SECTORS * SECTOR] __attribute__((aligned(4096)));

void virtio_mmio_add(uint64_t base, uint64_t size)
{
	(void)size;
	if (n_transports < MAX_TRANSPORTS)
		transports[n_transports++] = base;
}

static uint32_t rd(struct blk *b, uint32_t off)
{
	return mmio_read32(b->base + off);
}

static void wr(struct blk *b, uint32_t off, uint32_t v)
{
	mmio_write32(b->base + off, v);
}

static void blk_error(unsigned d, const char *msg)
{
	pr_str("blk ");
	pr_dec(d);
	pr_str(" error: ");
	pr_str(msg);
	pr_str("\n");
}

/* §3.1.1 device initialisation; returns 0 on success. */
static int blk_init(struct blk *b, unsigned d)
{
	uint64_t dev_features, features;
	uint32_t num;

	wr(b, VIRTIO_MMIO_STATUS, 0);	/* reset */
	for (int i = 0; i < 1000 && rd(b, VIRTIO_MMIO_STATUS); i++)
		;
	wr(b, VIRTIO_MMIO_STATUS, S_ACKNOWLEDGE);
	wr(b, VIRTIO_MMIO_STATUS, S_ACKNOWLEDGE | S_DRIVER);

	wr(b, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	dev_features = (uint64_t)rd(b, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	wr(b, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	dev_features |= rd(b, VIRTIO_MMIO_DEVICE_FEATURES);

	if (!(dev_features & (1ULL << VIRTIO_F_VERSION_1))) {
		blk_error(d, "VIRTIO_F_VERSION_1 not offered");
		goto fail;
	}
	features = dev_features & ((1ULL << VIRTIO_F_VERSION_1) |
				   (1ULL << VIRTIO_BLK_F_RO) |
				   (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
				   (1ULL << VIRTIO_BLK_F_FLUSH) |
				   (1ULL << VIRTIO_BLK_F_SEG_MAX));
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(b, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	b->ro = !!(features & (1ULL << VIRTIO_BLK_F_RO));

	wr(b, VIRTIO_MMIO_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	if (!(rd(b, VIRTIO_MMIO_STATUS) & S_FEATURES_OK)) {
		blk_error(d, "FEATURES_OK not accepted");
		goto fail;
	}

	/* queue 0 */
	wr(b, VIRTIO_MMIO_QUEUE_SEL, 0);
	if (rd(b, VIRTIO_MMIO_QUEUE_READY)) {
		blk_error(d, "queue 0 already ready");
		goto fail;
	}
	num = rd(b, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (num == 0) {
		blk_error(d, "queue 0 not available");
		goto fail;
	}
	/* split virtqueue sizes are powers of two */
	b->qsz = QSZ;
	while (b->qsz > num)
		b->qsz >>= 1;
	wr(b, VIRTIO_MMIO_QUEUE_NUM, b->qsz);

	uint64_t desc = (uintptr_t)&b->vq->desc;
	uint64_t avail = (uintptr_t)&b->vq->avail;
	uint64_t used = (uintptr_t)&b->vq->used;
	wr(b, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	wr(b, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	wr(b, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	wr(b, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	wr(b, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	wr(b, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	wr(b, VIRTIO_MMIO_QUEUE_READY, 1);

	wr(b, VIRTIO_MMIO_STATUS,
	   S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);

	/* capacity: two 32-bit reads, retried if the config generation moves */
	for (int i = 0; i < 100; i++) {
		uint32_t gen = rd(b, VIRTIO_MMIO_CONFIG_GENERATION);
		uint64_t lo = rd(b, VIRTIO_MMIO_CONFIG + 0);
		uint64_t hi = rd(b, VIRTIO_MMIO_CONFIG + 4);

		b->capacity = (hi << 32) | lo;
		if (gen == rd(b, VIRTIO_MMIO_CONFIG_GENERATION))
			break;
	}
	b->ok = 1;
	return 0;

fail:
	wr(b, VIRTIO_MMIO_STATUS, rd(b, VIRTIO_MMIO_STATUS) | S_FAILED);
	return -1;
}

/* Find the block devices among the registered transports, in order. */
static void probe(void)
{
	if (probed)
		return;
	probed = 1;
	for (unsigned i = 0; i < n_transports; i++) {
		uintptr_t base = transports[i];
		uint32_t magic = mmio_read32(base + VIRTIO_MMIO_MAGIC_VALUE);
		uint32_t version = mmio_read32(base + VIRTIO_MMIO_VERSION);

		if (magic != VIRTIO_MMIO_MAGIC || version != 2) {
			pr_str("virtio-mmio ");
			pr_hex(base);
			pr_str(magic != VIRTIO_MMIO_MAGIC ?
			       " error: bad magic\n" : " error: version is not 2\n");
			continue;
		}
		if (mmio_read32(base + VIRTIO_MMIO_DEVICE_ID) != VIRTIO_ID_BLOCK)
			continue;
		struct blk *b = &blks[n_blks];
		b->base = base;
		b->vq = &vqs[n_blks];
		blk_init(b, n_blks);
		n_blks++;
	}
}

/*
 * Submit one request (header, optional data buffer, status byte) and poll
 * for its completion. Returns the status byte, or -1 on timeout.
 */
static int blk_request(struct blk *b, unsigned d, uint32_t type,
		       uint64_t sector, void *buf, uint32_t len, int dev_writes)
{
	struct vq_mem *vq = b->vq;
	unsigned n = 0;

	req.hdr.type = type;
	req.hdr.reserved = 0;
	req.hdr.sector = sector;
	req.status = 0xff;

	vq->desc[n].addr = (uintptr_t)&req.hdr;
	vq->desc[n].len = sizeof(req.hdr);
	vq->desc[n].flags = VRING_DESC_F_NEXT;
	vq->desc[n].next = n + 1;
	n++;
	if (len) {
		vq->desc[n].addr = (uintptr_t)buf;
		vq->desc[n].len = len;
		vq->desc[n].flags = VRING_DESC_F_NEXT |
				    (dev_writes ? VRING_DESC_F_WRITE : 0);
		vq->desc[n].next = n + 1;
		n++;
	}
	vq->desc[n].addr = (uintptr_t)&req.status;
	vq->desc[n].len = 1;
	vq->desc[n].flags = VRING_DESC_F_WRITE;
	vq->desc[n].next = 0;

	vq->avail.ring[b->avail_idx % b->qsz] = 0;	/* head descriptor */
	mb();				/* ring entry before idx */
	*(volatile uint16_t *)&vq->avail.idx = ++b->avail_idx;
	mb();				/* idx before the notify */
	wr(b, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

	uint64_t t0 = rdtsc();
	while (*(volatile uint16_t *)&vq->used.idx == b->used_idx) {
		if (rdtsc() - t0 > REQ_TIMEOUT_TICKS) {
			b->dead = 1;
			return -1;
		}
	}
	b->used_idx++;
	mb();				/* used idx before the status byte */

	/* The device must have flagged a used-buffer notification. It may set
	 * the bit just after publishing the used ring, so allow it a moment. */
	uint32_t isr = rd(b, VIRTIO_MMIO_INTERRUPT_STATUS);
	t0 = rdtsc();
	while (!(isr & 1) && rdtsc() - t0 < ISR_TIMEOUT_TICKS)
		isr = rd(b, VIRTIO_MMIO_INTERRUPT_STATUS);
	wr(b, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	if (!(isr & 1)) {
		pr_str("blk ");
		pr_dec(d);
		pr_str(" no-interrupt-status\n");
	}
	return *(volatile uint8_t *)&req.status;
}

static void pr_blk(uint64_t d, const char *what)
{
	pr_str("blk ");
	pr_dec(d);
	pr_str(what);
}

/* Returns the device for an action, or NULL after printing why not. */
static struct blk *get_blk(uint64_t d)
{
	probe();
	if (d >= n_blks) {
		pr_blk(d, " no-such-device\n");
		return NULL;
	}
	if (!blks[d].ok) {
		pr_blk(d, " error: not available\n");	/* init failed */
		return NULL;
	}
	if (blks[d].dead) {
		pr_blk(d, " timeout\n");
		return NULL;
	}
	return &blks[d];
}

static void pr_timeout(uint64_t d)
{
	pr_blk(d, " timeout\n");
}

void blk_info(void)
{
	probe();
	for (unsigned d = 0; d < n_blks; d++) {
		struct blk *b = &blks[d];

		if (!b->ok || b->dead) {
			get_blk(d);	/* prints why */
			continue;
		}
		memset(data_buf, 0, VIRTIO_BLK_ID_BYTES);
		int st = blk_request(b, d, VIRTIO_BLK_T_GET_ID, 0, data_buf,
				     VIRTIO_BLK_ID_BYTES, 1);
		if (st < 0) {
			pr_timeout(d);
			continue;
		}
		pr_blk(d, ": capacity=");
		pr_dec(b->capacity);
		pr_str(" ro=");
		pr_dec(b->ro);
		pr_str(" id=");
		for (int i = 0; st == 0 && i < VIRTIO_BLK_ID_BYTES && data_buf[i]; i++) {
			char c = (char)data_buf[i];
			pr_char(c > ' ' && c < 127 ? c : '?');
		}
		pr_str("\n");
	}
}

static void pr_op(uint64_t d, const char *op, uint64_t sector, uint64_t count)
{
	pr_blk(d, op);
	pr_dec(sector);
	pr_char(' ');
	pr_dec(count);
}

void blk_read(uint64_t d, uint64_t sector, uint64_t count)
{
	struct blk *b = get_blk(d);
	uint64_t h = FNV_OFFSET;

	if (!b)
		return;
	for (uint64_t s = sector, left = count; left;) {
		uint32_t n = left < CHUNK_SECTORS ? (uint32_t)left : CHUNK_SECTORS;
		int st = blk_request(b, d, VIRTIO_BLK_T_IN, s, data_buf,
				     n * SECTOR, 1);
		if (st < 0) {
			pr_timeout(d);
			return;
		}
		if (st) {
			pr_op(d, " read ", sector, count);
			pr_str(" status=");
			pr_dec(st);
			pr_str("\n");
			return;
		}
		h = fnv1a(h, data_buf, n * SECTOR);
		s += n;
		left -= n;
	}
	pr_op(d, " read ", sector, count);
	pr_str(" fnv=");
	pr_hex16(h);
	pr_str("\n");
}

void blk_write(uint64_t d, uint64_t sector, uint64_t count, uint8_t byte)
{
	struct blk *b = get_blk(d);
	int st = 0;

	if (!b)
		return;
	memset(data_buf, byte, sizeof(data_buf));
	for (uint64_t s = sector, left = count; left && st == 0;) {
		uint32_t n = left < CHUNK_SECTORS ? (uint32_t)left : CHUNK_SECTORS;
		st = blk_request(b, d, VIRTIO_BLK_T_OUT, s, data_buf,
				 n * SECTOR, 0);
		if (st < 0) {
			pr_timeout(d);
			return;
		}
		s += n;
		left -= n;
	}
	pr_op(d, " write ", sector, count);
	pr_str(" status=");
	pr_dec(st);
	pr_str("\n");
}

void blk_flush(uint64_t d)
{
	struct blk *b = get_blk(d);

	if (!b)
		return;
	int st = blk_request(b, d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0);
	if (st < 0) {
		pr_timeout(d);
		return;
	}
	pr_blk(d, " flush status=");
	pr_dec(st);
	pr_str("\n");
}

void blk_bench(uint64_t d, uint64_t mib)
{
	struct blk *b = get_blk(d);
	uint64_t total = 0, left = mib << 11;	/* in sectors */
	uint64_t s = 0;

	if (!b)
		return;
	if (b->capacity == 0) {
		pr_blk(d, " bench error: empty disk\n");
		return;
	}
	uint64_t t0 = rdtsc();
	while (left) {
		uint32_t n = left < CHUNK_SECTORS ? (uint32_t)left : CHUNK_SECTORS;
		if (s >= b->capacity)
			s = 0;
		if (n > b->capacity - s)
			n = (uint32_t)(b->capacity - s);
		int st = blk_request(b, d, VIRTIO_BLK_T_IN, s, data_buf,
				     n * SECTOR, 1);
		if (st < 0) {
			pr_timeout(d);
			return;
		}
		if (st) {
			pr_blk(d, " bench status=");
			pr_dec(st);
			pr_str("\n");
			return;
		}
		s += n;
		left -= n;
		total += (uint64_t)n * SECTOR;
	}
	uint64_t t1 = rdtsc();
	pr_blk(d, " bench bytes=");
	pr_dec(total);
	pr_str(" tsc=");
	pr_dec(t1 - t0);
	pr_str("\n");
}
