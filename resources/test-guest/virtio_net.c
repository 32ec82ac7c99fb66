/*
 * Polling virtio-net driver (virtio 1.2, §5.1) on the common virtio-mmio code,
 * initialised in the order Linux's virtio_net driver uses. Queue 0 receives,
 * queue 1 transmits. Every buffer carries the 12-byte virtio_net_hdr_v1 first
 * (VIRTIO_F_VERSION_1); no offloads are negotiated, so transmitted headers
 * are all zeros.
 *
 * Receive buffers are posted on the first receive action, one 2 KiB buffer
 * per descriptor (header and frame together, as Linux does), and each is
 * posted again as soon as its frame has been looked at. Transmit chains are
 * two descriptors: the header, then the frame.
 */
#include "virtio_net.h"
#include "virtio_mmio.h"
#include "io.h"
#include "lib.h"

#define VIRTIO_NET_F_MAC		5
#define VRING_USED_F_NO_NOTIFY		1

#define NET_HDR_LEN			12
#define ETH_HDR_LEN			14
#define ETH_MAX_FRAME			1514	/* no VLAN tag, no FCS */
#define ETHERTYPE_LOCAL_EXP		0x88b5	/* IEEE local experimental 1 */

#define RXQ				0
#define TXQ				1
#define MAX_NETS			4
#define RX_BUF_LEN			2048
#define TX_CHAINS			(VQ_MAX_SIZE / 2)	/* 2 descriptors each */
#define PAYLOAD_SHOWN			32

/* ~10 s at hearth's 2 GHz TSC, for a whole receive action. */
#define NET_RX_TIMEOUT_TICKS		(20ULL * 1000 * 1000 * 1000)

struct net {
	struct virtio_dev dev;
	uint8_t mac[6];
	int ok;
	int dead;		/* a transmit timed out: the ring state is unknown */
	int rx_posted;
};

static int probed;
static struct net nets[MAX_NETS];
static unsigned n_nets;
static struct vq_mem vqs[MAX_NETS][2];

static uint8_t rx_bufs[MAX_NETS][VQ_MAX_SIZE][RX_BUF_LEN] __attribute__((aligned(4096)));
static uint8_t tx_hdr[NET_HDR_LEN] __attribute__((aligned(64)));
static uint8_t tx_frame[RX_BUF_LEN] __attribute__((aligned(4096)));

static void pr_net(uint64_t d, const char *what)
{
	pr_str("net ");
	pr_dec(d);
	pr_str(what);
}

static uint8_t config_read8(struct virtio_dev *dev, uint32_t off)
{
	return *(volatile uint8_t *)(dev->base + VIRTIO_MMIO_CONFIG + off);
}

/* Acknowledge whatever InterruptStatus shows, without waiting for a bit. */
static void ack_now(struct virtio_dev *dev)
{
	uint32_t isr = virtio_read(dev, VIRTIO_MMIO_INTERRUPT_STATUS);

	if (isr)
		virtio_write(dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
}

static void probe(void)
{
	uintptr_t base;

	if (probed)
		return;
	probed = 1;
	while (n_nets < MAX_NETS && (base = virtio_find(VIRTIO_ID_NET, n_nets))) {
		struct net *n = &nets[n_nets];

		if (virtio_init(&n->dev, base, 1ULL << VIRTIO_NET_F_MAC, 2,
				vqs[n_nets], "net", n_nets) == 0) {
			if (!(n->dev.features & (1ULL << VIRTIO_NET_F_MAC))) {
				pr_net(n_nets, " error: VIRTIO_NET_F_MAC not offered\n");
			} else {
				/* Byte by byte, as Linux's virtio_cread_bytes. */
				for (int i = 0; i < 6; i++)
					n->mac[i] = config_read8(&n->dev, (uint32_t)i);
				n->ok = 1;
			}
		}
		n_nets++;
	}
}

static struct net *get_net(uint64_t d)
{
	probe();
	if (d >= n_nets) {
		pr_net(d, " no-such-device\n");
		return NULL;
	}
	if (!nets[d].ok) {
		pr_net(d, " error: not available\n");
		return NULL;
	}
	if (nets[d].dead) {
		pr_net(d, " timeout\n");
		return NULL;
	}
	return &nets[d];
}

static void pr_mac(const uint8_t *mac)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			pr_char(':');
		pr_char("0123456789abcdef"[mac[i] >> 4]);
		pr_char("0123456789abcdef"[mac[i] & 0xf]);
	}
}

void net_info(void)
{
	probe();
	for (unsigned d = 0; d < n_nets; d++) {
		if (!get_net(d))
			continue;
		pr_net(d, ": mac=");
		pr_mac(nets[d].mac);
		pr_str("\n");
	}
}

/* ---- transmit ---- */

/* Puts the chain (header, frame of len bytes) in slot s (descriptors 2s,
 * 2s+1) of the transmit queue. */
static void tx_add(struct net *n, unsigned slot, uint32_t len)
{
	struct vbuf bufs[2] = {
		{ tx_hdr, NET_HDR_LEN, 0 },
		{ tx_frame, len, 0 },
	};

	vq_add(&n->dev, TXQ, 2 * slot, bufs, 2);
}

/* Builds a broadcast frame from this device in tx_frame: returns its length. */
static uint32_t build_frame(struct net *n, const void *payload, size_t len)
{
	memset(tx_frame, 0xff, 6);
	memcpy(tx_frame + 6, n->mac, 6);
	tx_frame[12] = ETHERTYPE_LOCAL_EXP >> 8;
	tx_frame[13] = ETHERTYPE_LOCAL_EXP & 0xff;
	if (len > ETH_MAX_FRAME - ETH_HDR_LEN)
		len = ETH_MAX_FRAME - ETH_HDR_LEN;
	if (payload)
		memcpy(tx_frame + ETH_HDR_LEN, payload, len);
	return (uint32_t)(ETH_HDR_LEN + len);
}

/* Sends what is in tx_frame and waits for the buffers to come back. */
static int tx_one(struct net *n, uint64_t d, uint32_t len)
{
	tx_add(n, 0, len);
	vq_notify(&n->dev, TXQ);
	if (!vq_wait_used(&n->dev, TXQ, VIRTIO_REQ_TIMEOUT_TICKS, NULL, NULL)) {
		n->dead = 1;
		pr_net(d, " tx timeout\n");
		return -1;
	}
	if (!(virtio_ack_interrupt(&n->dev) & 1))
		pr_net(d, " no-interrupt-status\n");
	return 0;
}

void net_tx(uint64_t d, const char *marker, size_t len)
{
	struct net *n = get_net(d);

	if (!n)
		return;
	if (tx_one(n, d, build_frame(n, marker, len)) == 0)
		pr_net(d, " tx ok\n");
}

void net_flood(uint64_t d, uint64_t count, uint64_t len)
{
	struct net *n = get_net(d);
	unsigned free_slots[TX_CHAINS], n_free = 0;
	uint64_t queued = 0, done = 0;

	if (!n)
		return;
	if (len < ETH_HDR_LEN || len > ETH_MAX_FRAME) {
		pr_net(d, " flood error: frame length must be 14..1514\n");
		return;
	}
	for (unsigned i = 0; i < TX_CHAINS; i++)
		free_slots[n_free++] = i;
	uint32_t flen = build_frame(n, NULL, len - ETH_HDR_LEN);
	for (uint32_t i = ETH_HDR_LEN; i < flen; i++)
		tx_frame[i] = (uint8_t)i;

	uint64_t t0 = rdtsc();
	while (done < count) {
		/* Fill the ring, kick once, then reap what came back. */
		int added = 0;
		while (n_free && queued < count) {
			tx_add(n, free_slots[--n_free], flen);
			queued++;
			added = 1;
		}
		/* As Linux's virtqueue_kick_prepare: no kick while the device
		 * says it is still draining the queue (VRING_USED_F_NO_NOTIFY). */
		if (added && !(*(volatile uint16_t *)&n->dev.vq[TXQ].mem->used.flags &
			       VRING_USED_F_NO_NOTIFY))
			vq_notify(&n->dev, TXQ);
		uint32_t id;
		if (!vq_wait_used(&n->dev, TXQ, VIRTIO_REQ_TIMEOUT_TICKS, &id, NULL)) {
			n->dead = 1;
			pr_net(d, " flood timeout\n");
			return;
		}
		do {
			free_slots[n_free++] = (id / 2) % TX_CHAINS;
			done++;
		} while (n_free < TX_CHAINS && vq_take_used(&n->dev, TXQ, &id, NULL));
	}
	uint64_t t1 = rdtsc();
	ack_now(&n->dev);	/* once: the driver polls, so the line may stay up */
	pr_net(d, " flood frames=");
	pr_dec(count);
	pr_str(" bytes=");
	pr_dec(count * flen);
	pr_str(" tsc=");
	pr_dec(t1 - t0);
	pr_str("\n");
}

/* ---- receive ---- */

static void rx_post(struct net *n, unsigned slot)
{
	struct vbuf b = { rx_bufs[n - nets][slot], RX_BUF_LEN, 1 };

	vq_add(&n->dev, RXQ, slot, &b, 1);
}

static void rx_post_all(struct net *n)
{
	if (n->rx_posted)
		return;
	n->rx_posted = 1;
	for (unsigned i = 0; i < n->dev.vq[RXQ].size; i++)
		rx_post(n, i);
	vq_notify(&n->dev, RXQ);
}

/* Waits (until the deadline) for the next received frame: its slot and
 * length without the virtio-net header, or -1. */
static int rx_next(struct net *n, uint64_t deadline, uint32_t *slot, uint32_t *len)
{
	uint32_t id, used_len;
	uint64_t now = rdtsc();

	if (now >= deadline ||
	    !vq_wait_used(&n->dev, RXQ, deadline - now, &id, &used_len))
		return -1;
	ack_now(&n->dev);
	*slot = id % n->dev.vq[RXQ].size;
	*len = used_len > NET_HDR_LEN ? used_len - NET_HDR_LEN : 0;
	if (*len > RX_BUF_LEN - NET_HDR_LEN)
		*len = RX_BUF_LEN - NET_HDR_LEN;
	return 0;
}

/* Gives a receive buffer back to the device. */
static void rx_done(struct net *n, uint32_t slot)
{
	rx_post(n, slot);
	vq_notify(&n->dev, RXQ);
}

static void pr_payload(const uint8_t *frame, uint32_t len)
{
	for (uint32_t i = ETH_HDR_LEN; i < len && i < ETH_HDR_LEN + PAYLOAD_SHOWN; i++) {
		char c = (char)frame[i];

		if (!c)
			break;
		pr_char(c > ' ' && c < 127 ? c : '.');
	}
}

void net_rx(uint64_t d, uint64_t count)
{
	struct net *n = get_net(d);

	if (!n)
		return;
	rx_post_all(n);
	uint64_t deadline = rdtsc() + NET_RX_TIMEOUT_TICKS;
	for (uint64_t i = 0; i < count; i++) {
		uint32_t slot, len;

		if (rx_next(n, deadline, &slot, &len)) {
			pr_net(d, " rx timeout\n");
			return;
		}
		const uint8_t *frame = rx_bufs[d][slot] + NET_HDR_LEN;
		pr_net(d, " rx len=");
		pr_dec(len);
		pr_str(" fnv=");
		pr_hex16(fnv1a(FNV_OFFSET, frame, len));
		pr_str(" payload=");
		pr_payload(frame, len);
		pr_str("\n");
		rx_done(n, slot);
	}
}

void net_echo(uint64_t d, uint64_t count)
{
	struct net *n = get_net(d);

	if (!n)
		return;
	rx_post_all(n);
	uint64_t deadline = rdtsc() + NET_RX_TIMEOUT_TICKS;
	for (uint64_t i = 0; i < count; i++) {
		uint32_t slot, len;

		if (rx_next(n, deadline, &slot, &len)) {
			pr_net(d, " rx timeout\n");
			return;
		}
		const uint8_t *frame = rx_bufs[d][slot] + NET_HDR_LEN;
		if (len < ETH_HDR_LEN || len > ETH_MAX_FRAME) {
			pr_net(d, " echo error: bad frame length\n");
			rx_done(n, slot);
			continue;
		}
		memcpy(tx_frame, frame + 6, 6);		/* to its sender */
		memcpy(tx_frame + 6, frame, 6);		/* from whom it was for */
		memcpy(tx_frame + 12, frame + 12, len - 12);
		rx_done(n, slot);
		if (tx_one(n, d, len))
			return;
		pr_net(d, " echoed len=");
		pr_dec(len);
		pr_str("\n");
	}
}

void net_sink(uint64_t d, uint64_t count)
{
	struct net *n = get_net(d);
	uint64_t bytes = 0, got = 0, t0 = 0;

	if (!n)
		return;
	rx_post_all(n);
	uint64_t deadline = rdtsc() + NET_RX_TIMEOUT_TICKS;
	while (got < count) {
		uint32_t slot, len, id, used_len;

		if (rx_next(n, deadline, &slot, &len))
			break;
		if (!got)
			t0 = rdtsc();	/* from the first frame on */
		got++;
		bytes += len;
		rx_post(n, slot);
		/* Take what else is there, as a NAPI poll does, and give all the
		 * buffers back with one notification. */
		while (got < count && vq_take_used(&n->dev, RXQ, &id, &used_len)) {
			got++;
			bytes += used_len > NET_HDR_LEN ? used_len - NET_HDR_LEN : 0;
			rx_post(n, id % n->dev.vq[RXQ].size);
		}
		vq_notify(&n->dev, RXQ);
	}
	uint64_t t1 = rdtsc();
	pr_net(d, " sink frames=");
	pr_dec(got);
	pr_str(" bytes=");
	pr_dec(bytes);
	pr_str(" tsc=");
	pr_dec(got ? t1 - t0 : 0);
	pr_str(got < count ? " timeout\n" : "\n");
}
