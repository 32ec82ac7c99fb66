/*
 * Polling virtio-vsock driver (virtio 1.2, §5.10) on the common virtio-mmio
 * code: stream sockets, one connection at a time.
 *
 * RX: RX_BUFS buffers stay posted on the RX queue, one descriptor each (the
 * header and up to RX_DATA bytes of payload together, as Linux 6.2 on does);
 * each is copied out and posted again as soon as it is used. TX: one packet
 * in flight, header and payload in two descriptors, waited for.
 *
 * Credit is kept as a real peer would: we advertise buf_alloc = GUEST_BUF
 * and fwd_cnt = bytes we have consumed (echoed, or dropped), answer
 * CREDIT_REQUEST, and never send more than the peer's buf_alloc minus what
 * it has not forwarded yet, asking with CREDIT_REQUEST when that is 0.
 */
#include "vsock.h"
#include "virtio_mmio.h"
#include "io.h"
#include "lib.h"

#define RXQ			0
#define TXQ			1
#define EVQ			2

#define HOST_CID		2
#define TYPE_STREAM		1

#define OP_REQUEST		1
#define OP_RESPONSE		2
#define OP_RST			3
#define OP_SHUTDOWN		4
#define OP_RW			5
#define OP_CREDIT_UPDATE	6
#define OP_CREDIT_REQUEST	7

#define SHUTDOWN_RCV		1
#define SHUTDOWN_SEND		2

#define RX_BUFS			8
#define RX_DATA			2048
#define GUEST_BUF		4096	/* our buf_alloc: small, so credit matters */
#define FIRST_GUEST_PORT	49152

/* TSC ticks (the TSC runs at ~2 GHz under hearth). */
#define CONNECT_TIMEOUT		(40ULL * 1000 * 1000 * 1000)	/* ~20 s */
#define IDLE_TIMEOUT		(40ULL * 1000 * 1000 * 1000)	/* ~20 s */
#define CLOSE_TIMEOUT		(10ULL * 1000 * 1000 * 1000)	/* ~5 s */
#define TX_TIMEOUT		VIRTIO_REQ_TIMEOUT_TICKS

struct hdr {
	uint64_t src_cid;
	uint64_t dst_cid;
	uint32_t src_port;
	uint32_t dst_port;
	uint32_t len;
	uint16_t type;
	uint16_t op;
	uint32_t flags;
	uint32_t buf_alloc;
	uint32_t fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct hdr) == 44, "virtio_vsock_hdr is 44 bytes");

struct rx_buf {
	struct hdr h;
	uint8_t data[RX_DATA];
} __attribute__((packed));

/* One connection: ports, and the credit of both directions. */
struct conn {
	uint32_t local_port;	/* ours (guest side) */
	uint32_t peer_port;	/* the host's */
	uint32_t rx_cnt;	/* payload bytes received */
	uint32_t fwd_cnt;	/* payload bytes consumed: what we advertise */
	uint32_t tx_cnt;	/* payload bytes sent */
	uint32_t peer_buf_alloc;
	uint32_t peer_fwd_cnt;
	int peer_shutdown;	/* SHUTDOWN flags the host sent */
	int reset;		/* the host sent RST */
};

/* A received packet, copied out of its RX buffer. */
struct pkt {
	struct hdr h;
	uint8_t data[RX_DATA];
};

static struct virtio_dev dev;
static struct vq_mem vqs[3];
static int probed, ok, dead;
static uint64_t cid;
static uint32_t next_port = FIRST_GUEST_PORT;

static struct rx_buf rx_bufs[RX_BUFS] __attribute__((aligned(64)));
static struct hdr tx_hdr __attribute__((aligned(64)));
static uint8_t tx_data[RX_DATA] __attribute__((aligned(64)));
static struct pkt in;

static void post_rx(unsigned i)
{
	struct vbuf b = { &rx_bufs[i], sizeof(rx_bufs[i]), 1 };

	vq_add(&dev, RXQ, i, &b, 1);
}

static void probe(void)
{
	uintptr_t base;

	if (probed)
		return;
	probed = 1;
	base = virtio_find(VIRTIO_ID_VSOCK, 0);
	if (!base)
		return;
	if (virtio_init(&dev, base, 0, 3, vqs, "vsock", 0))
		return;
	cid = virtio_config_read64(&dev, 0);
	for (unsigned i = 0; i < RX_BUFS; i++)
		post_rx(i);
	/* The device may hold packets for us already (a host connection made
	 * while we booted): tell it there is room. */
	vq_notify(&dev, RXQ);
	ok = 1;
}

static int ready(void)
{
	probe();
	if (!ok) {
		pr_str(probed && virtio_find(VIRTIO_ID_VSOCK, 0) ?
		       "vsock error: not available\n" : "vsock no-such-device\n");
		return 0;
	}
	if (dead) {
		pr_str("vsock timeout\n");
		return 0;
	}
	return 1;
}

/* Sends one packet; returns 0, or -1 if the device did not take it. */
static int tx(const struct hdr *h, const void *data)
{
	struct vbuf b[2];
	unsigned n = 1;

	tx_hdr = *h;
	b[0] = (struct vbuf){ &tx_hdr, sizeof(tx_hdr), 0 };
	if (h->len) {
		memcpy(tx_data, data, h->len);
		b[1] = (struct vbuf){ tx_data, h->len, 0 };
		n = 2;
	}
	vq_add(&dev, TXQ, 0, b, n);
	vq_notify(&dev, TXQ);
	if (!vq_wait_used(&dev, TXQ, TX_TIMEOUT, NULL, NULL)) {
		dead = 1;
		return -1;
	}
	return 0;
}

static void fill(struct hdr *h, const struct conn *c, uint16_t op)
{
	memset(h, 0, sizeof(*h));
	h->src_cid = cid;
	h->dst_cid = HOST_CID;
	h->src_port = c->local_port;
	h->dst_port = c->peer_port;
	h->type = TYPE_STREAM;
	h->op = op;
	h->buf_alloc = GUEST_BUF;
	h->fwd_cnt = c->fwd_cnt;
}

static int send_op(const struct conn *c, uint16_t op, uint32_t flags)
{
	struct hdr h;

	fill(&h, c, op);
	h.flags = flags;
	return tx(&h, NULL);
}

/* Answers a packet that belongs to no connection of ours with RST (never a
 * RST with a RST). */
static void refuse(const struct hdr *p)
{
	struct hdr h;

	if (p->op == OP_RST)
		return;
	memset(&h, 0, sizeof(h));
	h.src_cid = cid;
	h.dst_cid = p->src_cid;
	h.src_port = p->dst_port;
	h.dst_port = p->src_port;
	h.type = TYPE_STREAM;
	h.op = OP_RST;
	tx(&h, NULL);
}

/* Takes the next packet into 'in' (reposting its buffer); 1, or 0 when
 * none came within 'timeout' ticks. */
static int rx(uint64_t timeout)
{
	uint32_t id, len;

	if (!vq_wait_used(&dev, RXQ, timeout, &id, &len))
		return 0;
	if (id >= RX_BUFS)
		return 0;	/* not ours: a broken device */
	in.h = rx_bufs[id].h;
	if (len < sizeof(struct hdr) || in.h.len > RX_DATA ||
	    len - sizeof(struct hdr) < in.h.len)
		in.h.len = 0;	/* malformed: treat as no payload */
	memcpy(in.data, rx_bufs[id].data, in.h.len);
	post_rx(id);
	vq_notify(&dev, RXQ);
	return 1;
}

static int is_for(const struct hdr *h, const struct conn *c)
{
	return h->src_cid == HOST_CID && h->dst_cid == cid &&
	       h->src_port == c->peer_port && h->dst_port == c->local_port;
}

static uint32_t peer_credit(const struct conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;

	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/*
 * Handles the connection-level part of a packet for c (credit, RST,
 * SHUTDOWN, CREDIT_REQUEST); returns its op. Packets for anyone else are
 * refused and return 0.
 */
static uint16_t handle(struct conn *c)
{
	if (!is_for(&in.h, c)) {
		refuse(&in.h);
		return 0;
	}
	c->peer_buf_alloc = in.h.buf_alloc;
	c->peer_fwd_cnt = in.h.fwd_cnt;
	switch (in.h.op) {
	case OP_RST:
		c->reset = 1;
		break;
	case OP_SHUTDOWN:
		c->peer_shutdown |= (int)in.h.flags;
		break;
	case OP_CREDIT_REQUEST:
		send_op(c, OP_CREDIT_UPDATE, 0);
		break;
	}
	return in.h.op;
}

/*
 * Sends len bytes as RW packets within the peer's credit. While it has
 * none, asks once and keeps serving incoming packets; RW payload that
 * arrives meanwhile is consumed (dropped) so that the peer is never stuck
 * on our credit either. Returns 0, or -1 on reset or timeout.
 */
static int send_data(struct conn *c, const uint8_t *data, uint32_t len)
{
	struct hdr h;
	int asked = 0;
	uint64_t t0 = rdtsc();

	while (len) {
		uint32_t credit = peer_credit(c);

		if (c->reset || dead)
			return -1;
		if (!credit) {
			if (!asked) {
				send_op(c, OP_CREDIT_REQUEST, 0);
				asked = 1;
			}
			if (rdtsc() - t0 > IDLE_TIMEOUT)
				return -1;
			if (rx(IDLE_TIMEOUT / 100) && handle(c) == OP_RW) {
				c->rx_cnt += in.h.len;
				c->fwd_cnt += in.h.len;
			}
			continue;
		}
		uint32_t n = len < credit ? len : credit;
		if (n > RX_DATA)
			n = RX_DATA;
		fill(&h, c, OP_RW);
		h.len = n;
		if (tx(&h, data))
			return -1;
		c->tx_cnt += n;
		data += n;
		len -= n;
		asked = 0;
		t0 = rdtsc();
	}
	return 0;
}

/*
 * Closes c: SHUTDOWN with both flags, then waits (bounded) for the host's
 * RST, which hearth sends once everything we sent reached the host socket:
 * ending the VM before that could lose it.
 */
static void close_conn(struct conn *c)
{
	uint64_t t0 = rdtsc();

	if (c->reset || dead)
		return;
	send_op(c, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
	while (!c->reset && !dead && rdtsc() - t0 < CLOSE_TIMEOUT) {
		if (rx(CLOSE_TIMEOUT / 100))
			handle(c);
	}
}

static void pr_port(const char *what, uint64_t port)
{
	pr_str("vsock ");
	pr_str(what);
	pr_str(" port=");
	pr_dec(port);
}

void vsock_info(void)
{
	if (!ready())
		return;
	pr_str("vsock: cid=");
	pr_dec(cid);
	pr_str("\n");
}

void vsock_echo(uint32_t port, uint64_t bytes)
{
	struct conn c;
	uint64_t echoed = 0, t0 = rdtsc();
	int got = 0;

	if (!ready())
		return;
	/* Listen: wait for a REQUEST to our port, refuse anything else. */
	while (rdtsc() - t0 < CONNECT_TIMEOUT) {
		if (!rx(CONNECT_TIMEOUT / 100))
			continue;
		if (in.h.op == OP_REQUEST && in.h.dst_port == port &&
		    in.h.dst_cid == cid && in.h.type == TYPE_STREAM) {
			got = 1;
			break;
		}
		refuse(&in.h);
	}
	if (!got || dead) {
		pr_port("echo", port);
		pr_str(dead ? " timeout\n" : " no-connection\n");
		return;
	}
	memset(&c, 0, sizeof(c));
	c.local_port = port;
	c.peer_port = in.h.src_port;
	c.peer_buf_alloc = in.h.buf_alloc;
	c.peer_fwd_cnt = in.h.fwd_cnt;
	send_op(&c, OP_RESPONSE, 0);

	/* Received payload waits in 'pend' until the host has credit for its
	 * echo. The host may not send more than GUEST_BUF unconsumed bytes,
	 * and a byte counts as consumed (fwd_cnt) when its echo goes out, so
	 * 'pend' never overflows unless the host breaks the protocol. */
	static uint8_t pend[GUEST_BUF];
	uint32_t plen = 0;
	int asked = 0;

	t0 = rdtsc();
	while (echoed < bytes && !c.reset && !dead) {
		if (plen) {
			uint32_t credit = peer_credit(&c);

			if (credit) {
				uint32_t n = plen < credit ? plen : credit;
				struct hdr h;

				if (n > RX_DATA)
					n = RX_DATA;
				c.fwd_cnt += n;	/* the echo carries it */
				fill(&h, &c, OP_RW);
				h.len = n;
				if (tx(&h, pend))
					break;
				c.tx_cnt += n;
				echoed += n;
				for (uint32_t i = n; i < plen; i++)
					pend[i - n] = pend[i];
				plen -= n;
				asked = 0;
				t0 = rdtsc();
				continue;
			}
			if (!asked) {
				send_op(&c, OP_CREDIT_REQUEST, 0);
				asked = 1;
			}
		} else if (c.peer_shutdown & SHUTDOWN_SEND) {
			break;	/* the host sends no more */
		}
		if (rdtsc() - t0 > IDLE_TIMEOUT)
			break;
		if (!rx(IDLE_TIMEOUT / 100) || handle(&c) != OP_RW)
			continue;
		uint32_t n = in.h.len, room = GUEST_BUF - plen;

		c.rx_cnt += n;
		if (n > room) {
			c.fwd_cnt += n - room;	/* over our credit: dropped */
			n = room;
		}
		memcpy(pend + plen, in.data, n);
		plen += n;
		t0 = rdtsc();
	}
	close_conn(&c);
	pr_port("echo", port);
	pr_str(" bytes=");
	pr_dec(echoed);
	pr_str("\n");
}

void vsock_send(uint32_t port, const char *marker, uint32_t len)
{
	struct conn c;
	uint64_t t0 = rdtsc();

	if (!ready())
		return;
	memset(&c, 0, sizeof(c));
	c.local_port = next_port++;
	c.peer_port = port;
	send_op(&c, OP_REQUEST, 0);
	while (!dead && rdtsc() - t0 < CONNECT_TIMEOUT) {
		if (!rx(CONNECT_TIMEOUT / 100))
			continue;
		uint16_t op = handle(&c);
		if (op == OP_RESPONSE || op == OP_RST)
			break;
	}
	pr_port("send", port);
	if (dead) {
		pr_str(" timeout\n");
		return;
	}
	if (c.reset) {
		pr_str(" rst\n");
		return;
	}
	if (!c.peer_buf_alloc) {
		pr_str(" no-response\n");
		return;
	}
	if (send_data(&c, (const uint8_t *)marker, len)) {
		pr_str(c.reset ? " rst\n" : " timeout\n");
		return;
	}
	close_conn(&c);
	pr_str(" ok\n");
}
