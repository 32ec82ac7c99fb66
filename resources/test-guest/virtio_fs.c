/*
 * Polling virtio-fs driver (virtio 1.2, §5.11) on the common virtio-mmio code: queue 0
 * is the high-priority queue (unused), queue 1 the request queue. Each FUSE request is
 * a chain of two buffers, the request (device-readable) then room for the reply
 * (device-writable), as Linux's virtiofs driver posts them.
 */
#include "virtio_fs.h"
#include "virtio_mmio.h"
#include "io.h"
#include "lib.h"

#define VIRTIO_ID_FS		26
#define FUSE_LOOKUP		1
#define FUSE_GETATTR		3
#define FUSE_OPEN		14
#define FUSE_READ		15
#define FUSE_RELEASE		18
#define FUSE_INIT		26
#define FUSE_OPENDIR		27
#define FUSE_READDIR		28
#define FUSE_RELEASEDIR		29
#define FUSE_ROOT_ID		1
#define IN_HDR			40
#define OUT_HDR			16
#define CHUNK			4096

static int fs_probed, fs_ok;
static uint64_t fs_unique = 1;
static struct virtio_dev fs_dev;
static struct vq_mem fs_vq[2];
static uint8_t req[IN_HDR + 256] __attribute__((aligned(64)));
static uint8_t rsp[OUT_HDR + CHUNK + 256] __attribute__((aligned(64)));

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Sends one request; returns the reply's error (0 or -errno), or 1 when the device
 * gave no usable reply. The reply's body is at rsp + OUT_HDR, *body its length. */
static int fs_call(uint32_t opcode, uint64_t node, const void *body, uint32_t blen,
		   uint32_t *out_len)
{
	uint32_t len = IN_HDR + blen;
	uint64_t unique = fs_unique++;

	memset(req, 0, IN_HDR);
	put32(req, len);
	put32(req + 4, opcode);
	put64(req + 8, unique);
	put64(req + 16, node);
	memcpy(req + IN_HDR, body, blen);
	memset(rsp, 0, OUT_HDR);
	struct vbuf b[2] = { { req, len, 0 }, { rsp, sizeof(rsp), 1 } };
	uint32_t used;

	vq_add(&fs_dev, 1, 0, b, 2);
	vq_notify(&fs_dev, 1);
	if (!vq_wait_used(&fs_dev, 1, VIRTIO_REQ_TIMEOUT_TICKS, NULL, &used)) {
		fs_ok = 0;
		pr_str("fs timeout\n");
		return 1;
	}
	virtio_ack_interrupt(&fs_dev);
	if (used < OUT_HDR || get32(rsp) != used || get64(rsp + 8) != unique) {
		pr_str("fs error: bad reply of ");
		pr_dec(used);
		pr_str(" bytes\n");
		return 1;
	}
	*out_len = used - OUT_HDR;
	return (int)get32(rsp + 4);
}

static void pr_err(int e)
{
	if (e < 0) {
		pr_str("-");
		pr_dec((uint64_t)-e);
	} else {
		pr_dec((uint64_t)e);
	}
}

static int fs_start(void)
{
	if (!fs_probed) {
		uintptr_t base = virtio_find(VIRTIO_ID_FS, 0);
		uint8_t init[16];
		uint32_t n;
		int e;

		fs_probed = 1;
		if (!base) {
			pr_str("fs no-such-device\n");
			return 0;
		}
		if (virtio_init(&fs_dev, base, 0, 2, fs_vq, "fs", 0) != 0)
			return 0;
		put32(init, 7);			/* major */
		put32(init + 4, 31);		/* minor */
		put32(init + 8, 65536);		/* max_readahead */
		put32(init + 12, 0);		/* flags */
		e = fs_call(FUSE_INIT, 0, init, sizeof(init), &n);
		if (e != 0 || n < 8) {
			pr_str("fs init error=");
			pr_err(e);
			pr_str("\n");
			return 0;
		}
		fs_ok = 1;
		pr_str("fs init major=");
		pr_dec(get32(rsp + OUT_HDR));
		pr_str(" minor=");
		pr_dec(get32(rsp + OUT_HDR + 4));
		pr_str("\n");
	}
	return fs_ok;
}

/* LOOKUP of name in the root: 0 and the node id and size, or the error. */
static int fs_lookup(const char *name, size_t len, uint64_t *node, uint64_t *size)
{
	char body[128];
	uint32_t n;
	int e;

	if (len >= sizeof(body))
		return -36;	/* ENAMETOOLONG */
	memcpy(body, name, len);
	body[len] = 0;
	e = fs_call(FUSE_LOOKUP, FUSE_ROOT_ID, body, len + 1, &n);
	if (e == 0 && n >= 56) {
		*node = get64(rsp + OUT_HDR);
		*size = get64(rsp + OUT_HDR + 48);	/* fuse_entry_out.attr.size */
	}
	return e;
}

/* OPEN or OPENDIR: 0 and the handle, or the error. */
static int fs_openx(uint32_t opcode, uint64_t node, uint64_t *fh)
{
	uint8_t body[8] = { 0 };	/* flags O_RDONLY, open_flags 0 */
	uint32_t n;
	int e = fs_call(opcode, node, body, sizeof(body), &n);

	if (e == 0)
		*fh = get64(rsp + OUT_HDR);
	return e;
}

static int fs_readx(uint32_t opcode, uint64_t node, uint64_t fh, uint64_t off, uint32_t *n)
{
	uint8_t body[40] = { 0 };

	put64(body, fh);
	put64(body + 8, off);
	put32(body + 16, CHUNK);
	return fs_call(opcode, node, body, sizeof(body), n);
}

static void fs_releasex(uint32_t opcode, uint64_t node, uint64_t fh)
{
	uint8_t body[24] = { 0 };
	uint32_t n;

	put64(body, fh);
	fs_call(opcode, node, body, sizeof(body), &n);
}

void fs_read(const char *name, size_t len)
{
	uint64_t node = 0, size = 0, fh = 0, got = 0, h = FNV_OFFSET;
	uint32_t n;
	uint8_t body[16] = { 0 };
	int e;

	if (!fs_start())
		return;
	if ((e = fs_lookup(name, len, &node, &size)) != 0)
		goto fail;
	/* GETATTR must agree with LOOKUP (fuse_attr_out.attr.size at 16 + 8). */
	if ((e = fs_call(FUSE_GETATTR, node, body, sizeof(body), &n)) != 0)
		goto fail;
	if (n < 32 || get64(rsp + OUT_HDR + 24) != size) {
		pr_str("fs error: GETATTR size differs from LOOKUP's\n");
		return;
	}
	if ((e = fs_openx(FUSE_OPEN, node, &fh)) != 0)
		goto fail;
	for (;;) {
		if ((e = fs_readx(FUSE_READ, node, fh, got, &n)) != 0)
			goto fail;
		h = fnv1a(h, rsp + OUT_HDR, n);
		got += n;
		if (n < CHUNK)
			break;
	}
	fs_releasex(FUSE_RELEASE, node, fh);
	pr_str("fs read ");
	for (size_t i = 0; i < len; i++)
		pr_char(name[i]);
	pr_str(" size=");
	pr_dec(size);
	pr_str(" bytes=");
	pr_dec(got);
	pr_str(" fnv=");
	pr_hex16(h);
	pr_str("\n");
	return;
fail:
	pr_str("fs read error=");
	pr_err(e);
	pr_str("\n");
}

void fs_ls(void)
{
	uint64_t fh = 0, node = 0, size = 0;
	uint32_t n, at = 0;
	int e;

	if (!fs_start())
		return;
	if ((e = fs_openx(FUSE_OPENDIR, FUSE_ROOT_ID, &fh)) != 0 ||
	    (e = fs_readx(FUSE_READDIR, FUSE_ROOT_ID, fh, 0, &n)) != 0) {
		pr_str("fs ls error=");
		pr_err(e);
		pr_str("\n");
		return;
	}
	pr_str("fs ls");
	/* struct fuse_dirent { u64 ino, off; u32 namelen, type; char name[]; } padded to 8 */
	while (at + 24 <= n) {
		const uint8_t *d = rsp + OUT_HDR + at;
		uint32_t namelen = get32(d + 16);

		if (at + 24 + namelen > n)
			break;
		pr_str(" ");
		for (uint32_t i = 0; i < namelen; i++)
			pr_char((char)d[24 + i]);
		at += (24 + namelen + 7) & ~7u;
	}
	pr_str("\n");
	fs_releasex(FUSE_RELEASEDIR, FUSE_ROOT_ID, fh);
	e = fs_lookup("..", 2, &node, &size);
	pr_str("fs dotdot error=");
	pr_err(e);
	pr_str(" node=");
	pr_dec(node);
	pr_str("\n");
}

void fs_open(const char *name, size_t len)
{
	uint64_t node = 0, size = 0, fh = 0;
	int e;

	if (!fs_start())
		return;
	e = fs_lookup(name, len, &node, &size);
	if (e == 0)
		e = fs_openx(FUSE_OPEN, node, &fh);
	pr_str("fs open ");
	for (size_t i = 0; i < len; i++)
		pr_char(name[i]);
	pr_str(" error=");
	pr_err(e);
	pr_str("\n");
}
