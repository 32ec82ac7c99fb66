/*
 * Polling virtio-blk driver (virtio 1.2, §5.2) on the common virtio-mmio code,
 * initialised in the same order as Linux's virtio_blk driver. One request is
 * in flight at a time; it always uses descriptors 0..2.
 */
#include "virtio_blk.h"
#include "virtio_mmio.h"
#include "io.h"
#include "lib.h"

/* feature bits */
#define VIRTIO_BLK_F_SEG_MAX		2
#define VIRTIO_BLK_F_RO			5
#define VIRTIO_BLK_F_BLK_SIZE		6
#define VIRTIO_BLK_F_FLUSH		9

/* request types */
#define VIRTIO_BLK_T_IN			0
#define VIRTIO_BLK_T_OUT		1
#define VIRTIO_BLK_T_FLUSH		4
#define VIRTIO_BLK_T_GET_ID		8
#define VIRTIO_BLK_ID_BYTES		20

#define MAX_BLKS			8
#define CHUNK_SECTORS			128	/* 64 KiB per request */
#define SECTOR				512

struct blk {
	struct virtio_dev dev;
	uint64_t capacity;	/* 512-byte sectors */
	int ro;
	int ok;			/* initialised */
	int dead;		/* a request timed out: the ring state is unknown */
};

struct blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static int probed;
static struct blk blks[MAX_BLKS];
static unsigned n_blks;
static struct vq_mem vqs[MAX_BLKS];

static struct {
	struct blk_req_hdr hdr;
	uint8_t status;
} req __attribute__((aligned(64)));
static uint8_t data_buf[CHUNK_SECTORS * SECTOR] __attribute__((aligned(4096)));

/* Find and initialise the block devices, in command-line order. */
static void probe(void)
{
	uintptr_t base;

	if (probed)
		return;
	probed = 1;
	while (n_blks < MAX_BLKS && (base = virtio_find(VIRTIO_ID_BLOCK, n_blks))) {
		struct blk *b = &blks[n_blks];
		uint64_t wanted = (1ULL << VIRTIO_BLK_F_RO) |
				  (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
				  (1ULL << VIRTIO_BLK_F_FLUSH) |
				  (1ULL << VIRTIO_BLK_F_SEG_MAX);

		if (virtio_init(&b->dev, base, wanted, 1, &vqs[n_blks], "blk",
				n_blks) == 0) {
			b->ro = !!(b->dev.features & (1ULL << VIRTIO_BLK_F_RO));
			b->capacity = virtio_config_read64(&b->dev, 0);
			b->ok = 1;
		}
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
	struct vbuf bufs[3];
	unsigned n = 0;

	req.hdr.type = type;
	req.hdr.reserved = 0;
	req.hdr.sector = sector;
	req.status = 0xff;

	bufs[n++] = (struct vbuf){ &req.hdr, sizeof(req.hdr), 0 };
	if (len)
		bufs[n++] = (struct vbuf){ buf, len, dev_writes };
	bufs[n++] = (struct vbuf){ &req.status, 1, 1 };
	vq_add(&b->dev, 0, 0, bufs, n);
	vq_notify(&b->dev, 0);

	if (!vq_wait_used(&b->dev, 0, VIRTIO_REQ_TIMEOUT_TICKS, NULL, NULL)) {
		b->dead = 1;
		return -1;
	}
	if (!(virtio_ack_interrupt(&b->dev) & 1)) {
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
