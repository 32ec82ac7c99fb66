/*
 * hearth test guest: reports what the VMM handed over (boot protocol,
 * command line, e820 map, initrd, MP table CPUs) on COM1, then runs the
 * actions named on the command line and ends the VM. See README.md.
 */
#include "io.h"
#include "lib.h"
#include "virtio_blk.h"
#include "virtio_net.h"
#include "virtio_rng.h"
#include "virtio_fs.h"
#include "virtio_mmio.h"
#include "vsock.h"

#define BOOT_LINUX64	1	/* values set in entry.S */
#define BOOT_PVH	2

#define MAX_CMDLINE	4096
#define MAX_E820	128
#define LIMIT_4G	0x100000000ULL	/* end of our identity map */

/* struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h) */
#define BP_EXT_RAMDISK_IMAGE	0x0c0
#define BP_EXT_RAMDISK_SIZE	0x0c4
#define BP_EXT_CMD_LINE_PTR	0x0c8
#define BP_E820_ENTRIES		0x1e8
#define BP_RAMDISK_IMAGE	0x218
#define BP_RAMDISK_SIZE		0x21c
#define BP_CMD_LINE_PTR		0x228
#define BP_E820_TABLE		0x2d0

/* struct hvm_start_info (xen/interface/hvm/start_info.h) */
#define HVM_START_MAGIC		0x336ec578
#define HVM_MAGIC		0
#define HVM_VERSION		4
#define HVM_NR_MODULES		12
#define HVM_MODLIST_PADDR	16
#define HVM_CMDLINE_PADDR	24
#define HVM_MEMMAP_PADDR	40
#define HVM_MEMMAP_ENTRIES	48

#define BOOT_MARKER_ADDR	0xc0000000UL
#define BOOT_MARKER_VALUE	123
#define EXIT_PORT		0x501
#define I8042_COMMAND		0x64
#define I8042_RESET		0xfe

struct e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
};

static char cmdline[MAX_CMDLINE];
static struct e820_entry e820[MAX_E820];
static unsigned n_e820;
static int has_initrd;
static uint64_t initrd_addr, initrd_size;

/* Unaligned little-endian field reads from a boot structure. */
static uint64_t rd(uint64_t base, unsigned off, unsigned size)
{
	const volatile uint8_t *p = phys(base + off);
	uint64_t v = 0;

	for (unsigned i = size; i--;)
		v = (v << 8) | p[i];
	return v;
}

static void copy_cmdline(uint64_t addr)
{
	if (!addr || addr >= LIMIT_4G)
		return;
	const char *s = phys(addr);
	for (unsigned i = 0; i < MAX_CMDLINE - 1 && s[i]; i++)
		cmdline[i] = s[i];
}

static void add_e820(uint64_t addr, uint64_t size, uint32_t type)
{
	if (n_e820 < MAX_E820)
		e820[n_e820++] = (struct e820_entry){ addr, size, type };
}

/* Copy everything we need out of low memory first. */
static void parse_boot_params(uint64_t bp)
{
	copy_cmdline(rd(bp, BP_CMD_LINE_PTR, 4) |
		     rd(bp, BP_EXT_CMD_LINE_PTR, 4) << 32);
	unsigned n = (unsigned)rd(bp, BP_E820_ENTRIES, 1);
	for (unsigned i = 0; i < n && i < MAX_E820; i++) {
		uint64_t e = bp + BP_E820_TABLE + 20 * i;
		add_e820(rd(e, 0, 8), rd(e, 8, 8), (uint32_t)rd(e, 16, 4));
	}
	initrd_size = rd(bp, BP_RAMDISK_SIZE, 4) |
		      rd(bp, BP_EXT_RAMDISK_SIZE, 4) << 32;
	initrd_addr = rd(bp, BP_RAMDISK_IMAGE, 4) |
		      rd(bp, BP_EXT_RAMDISK_IMAGE, 4) << 32;
	has_initrd = initrd_size != 0;
}

static void parse_start_info(uint64_t si)
{
	if (rd(si, HVM_MAGIC, 4) != HVM_START_MAGIC) {
		pr_str("error: bad hvm_start_info magic\n");
		return;
	}
	copy_cmdline(rd(si, HVM_CMDLINE_PADDR, 8));
	/* the memory map fields exist from version 1 on */
	if (rd(si, HVM_VERSION, 4) >= 1) {
		uint64_t map = rd(si, HVM_MEMMAP_PADDR, 8);
		unsigned n = (unsigned)rd(si, HVM_MEMMAP_ENTRIES, 4);
		for (unsigned i = 0; map && i < n && i < MAX_E820; i++) {
			uint64_t e = map + 24 * i;
			add_e820(rd(e, 0, 8), rd(e, 8, 8), (uint32_t)rd(e, 16, 4));
		}
	}
	/* module 0 is the initrd */
	uint64_t mods = rd(si, HVM_MODLIST_PADDR, 8);
	if (rd(si, HVM_NR_MODULES, 4) >= 1 && mods) {
		initrd_addr = rd(mods, 0, 8);
		initrd_size = rd(mods, 8, 8);
		has_initrd = initrd_size != 0;
	}
}

/* ---- Intel MP table, searched the way Linux does ---- */

static int checksum_ok(const volatile uint8_t *p, unsigned len)
{
	uint8_t sum = 0;

	for (unsigned i = 0; i < len; i++)
		sum += p[i];
	return sum == 0;
}

static const volatile uint8_t *mpf_scan(uint64_t base, uint64_t len)
{
	for (uint64_t a = base; a + 16 <= base + len; a += 16) {
		const volatile uint8_t *p = phys(a);

		if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_' &&
		    p[8] == 1 && checksum_ok(p, 16))
			return p;
	}
	return NULL;
}

static unsigned count_cpus(void)
{
	const volatile uint8_t *mpf = NULL;
	uint64_t ebda = rd(0, 0x40e, 2) << 4;

	if (ebda)
		mpf = mpf_scan(ebda, 0x400);
	if (!mpf)
		mpf = mpf_scan(0x9fc00, 0x400);
	if (!mpf)
		mpf = mpf_scan(0xf0000, 0x10000);
	if (!mpf)
		return 0;

	uint64_t mpc = rd((uintptr_t)mpf, 4, 4);	/* physptr */
	if (!mpc)
		return 0;	/* "default configuration": not used by hearth */
	const volatile uint8_t *t = phys(mpc);
	unsigned len = (unsigned)rd(mpc, 4, 2);
	if (t[0] != 'P' || t[1] != 'C' || t[2] != 'M' || t[3] != 'P' ||
	    len < 44 || !checksum_ok(t, len)) {
		pr_str("error: bad MP config table\n");
		return 0;
	}

	unsigned count = (unsigned)rd(mpc, 34, 2), cpus = 0, off = 44;
	for (unsigned i = 0; i < count && off < len; i++) {
		uint8_t type = t[off];

		if (type == 0) {		/* processor */
			if (t[off + 3] & 1)	/* CPU_ENABLED */
				cpus++;
			off += 20;
		} else if (type <= 4) {		/* bus, ioapic, intsrc, lintsrc */
			off += 8;
		} else {
			break;			/* unknown: stop like Linux */
		}
	}
	return cpus;
}

/* ---- command line ---- */

struct token {
	const char *key;	/* whole token */
	size_t len;
	const char *val;	/* after '=', or NULL */
	size_t vlen;
};

/* Iterate over space-separated tokens; returns 0 at the end. */
static int next_token(const char **pos, struct token *t)
{
	const char *p = *pos;

	while (*p == ' ' || *p == '\t' || *p == '\n')
		p++;
	if (!*p)
		return 0;
	t->key = p;
	while (*p && *p != ' ' && *p != '\t' && *p != '\n')
		p++;
	t->len = (size_t)(p - t->key);
	t->val = NULL;
	t->vlen = 0;
	for (size_t i = 0; i < t->len; i++) {
		if (t->key[i] == '=') {
			t->val = t->key + i + 1;
			t->vlen = t->len - i - 1;
			break;
		}
	}
	*pos = p;
	return 1;
}

static int eq(const char *s, size_t len, const char *lit)
{
	return len == strlen(lit) && starts_with(s, len, lit);
}

/* Is the token "key=..." (key ending in '='), or exactly key? */
static int is(const struct token *t, const char *key)
{
	size_t n = strlen(key);

	if (key[n - 1] == '=')
		return starts_with(t->key, t->len, key);
	return eq(t->key, t->len, key);
}

static int parse_dec(const char *s, size_t len, uint64_t *out)
{
	uint64_t v = 0;

	if (!len)
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 1;
}

/* Parse "a:b:c..." of exactly n decimal numbers. */
static int parse_list(const struct token *t, uint64_t *v, unsigned n)
{
	const char *s = t->val;
	size_t len = t->vlen;

	for (unsigned i = 0; i < n; i++) {
		size_t f = 0;

		while (f < len && s[f] != ':')
			f++;
		if (!f || !parse_dec(s, f, &v[i]) || (i + 1 < n) != (f < len))
			return 0;
		s += f + 1;
		len = f < len ? len - f - 1 : 0;
	}
	return 1;
}

/* Parse "D:<text>": a decimal device index, a colon, then any text (which
 * may be empty and may contain colons). */
static int parse_dev_text(const struct token *t, uint64_t *d, const char **text,
			  size_t *len)
{
	size_t f = 0;

	while (f < t->vlen && t->val[f] != ':')
		f++;
	if (f == t->vlen || !parse_dec(t->val, f, d))
		return 0;
	*text = t->val + f + 1;
	*len = t->vlen - f - 1;
	return 1;
}

/* Busy-waits on the TSC (2 GHz under hearth). */
static void sleep_ms(uint64_t ms)
{
	uint64_t t0 = rdtsc();

	while (rdtsc() - t0 < ms * 2000000ULL)
		;
}

/* virtio_mmio.device=<size>@<base>:<irq>[:<id>] (Linux syntax) */
static int parse_virtio_mmio(const struct token *t)
{
	const char *s = t->val;
	size_t len = t->vlen, n;
	uint64_t size, base;

	n = parse_num(s, len, &size, 1);
	if (!n || n >= len || s[n] != '@')
		return 0;
	s += n + 1;
	len -= n + 1;
	n = parse_num(s, len, &base, 1);
	if (!n || n >= len || s[n] != ':')
		return 0;
	virtio_mmio_add(base, size);
	return 1;
}

static void pr_token_error(const struct token *t)
{
	pr_str("error: malformed ");
	for (size_t i = 0; i < t->len; i++)
		pr_char(t->key[i]);
	pr_str("\n");
}

static void fault(const struct token *t)
{
	pr_str("fault: ");
	for (size_t i = 0; i < t->vlen; i++)
		pr_char(t->val[i]);
	pr_str("\n");
	if (eq(t->val, t->vlen, "popcnt"))
		__asm__ volatile(".byte 0xf3, 0x48, 0x0f, 0xb8, 0xc0"	/* popcnt %rax,%rax */
				 : : : "rax");
	else if (eq(t->val, t->vlen, "int3"))
		__asm__ volatile("int3");
	else if (eq(t->val, t->vlen, "ud2"))
		__asm__ volatile("ud2");
}

static void delay_loop(uint64_t iterations)
{
	for (volatile uint64_t i = 0; i < iterations; i++)
		;
}

/* mem.walk: step i rewrites the first WALK_WORDS words of page (i-1) % pages of the
 * region at base_mib MiB, each from its old value (few, as every memory access is
 * emulated here), so every later step's output depends on the whole history of
 * the region: memory restored wrongly shows up as different sums. */
#define WALK_WORDS 16

static void mem_walk(uint64_t base_mib, uint64_t pages, uint64_t steps, uint64_t delay)
{
	volatile uint64_t *region = phys(base_mib << 20);

	for (uint64_t i = 1; i <= steps; i++) {
		volatile uint64_t *page = region + ((i - 1) % pages) * 512;
		uint64_t h = FNV_OFFSET;

		if (i > 1)
			delay_loop(delay);
		for (uint64_t w = 0; w < WALK_WORDS; w++) {
			page[w] = page[w] * 6364136223846793005ULL + i + w;
			h = (h ^ page[w]) * 0x100000001b3ULL;
		}
		for (uint64_t p = 0; p < pages; p++)
			h = (h ^ region[p * 512 + 7]) * 0x100000001b3ULL;
		pr_str("mem step ");
		pr_dec(i);
		pr_str(" sum=");
		pr_hex16(h);
		pr_str("\n");
	}
}

/* mem.dirty: a steady writer for the checkpoint benchmarks. Round r writes r into one
 * word of each of the pages at base_mib MiB (so exactly those pages are dirty after a
 * round, whatever else ran), then prints the round number: rounds per second is the
 * work done. */
static void mem_dirty(uint64_t base_mib, uint64_t pages, uint64_t rounds, uint64_t delay)
{
	volatile uint64_t *region = phys(base_mib << 20);

	for (uint64_t r = 1; r <= rounds; r++) {
		if (r > 1)
			delay_loop(delay);
		for (uint64_t p = 0; p < pages; p++)
			region[p * 512 + (r & 511)] = r;
		pr_str("mem dirty round=");
		pr_dec(r);
		pr_str("\n");
	}
}

/* mem.sum: FNV-1a 64 over the words mem.walk writes, page by page. */
static void mem_sum(uint64_t base_mib, uint64_t pages)
{
	volatile uint64_t *region = phys(base_mib << 20);
	uint64_t h = FNV_OFFSET;

	for (uint64_t p = 0; p < pages; p++)
		for (uint64_t w = 0; w < WALK_WORDS; w++)
			h = (h ^ region[p * 512 + w]) * 0x100000001b3ULL;
	pr_str("mem sum=");
	pr_hex16(h);
	pr_str("\n");
}

/* kvmclock (Linux's pvclock ABI): the time info KVM keeps for this vCPU, and the wall
 * clock at the moment the guest asks for it. */
#define MSR_KVM_WALL_CLOCK_NEW	0x4b564d00
#define MSR_KVM_SYSTEM_TIME_NEW	0x4b564d01

struct pvclock_time {
	uint32_t version;
	uint32_t pad0;
	uint64_t tsc_timestamp;
	uint64_t system_time;
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t pad[2];
} __attribute__((aligned(64)));

static volatile struct pvclock_time pvti;
static volatile struct {
	uint32_t version;
	uint32_t sec;
	uint32_t nsec;
} __attribute__((aligned(16))) pvwall;
static int kvmclock_on;
static uint64_t boot_wall_ns;	/* read once, as Linux reads its persistent clock once */

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

/* clock: prints `clock: ns=<kvmclock ns> wall=<seconds since the epoch>`, the wall
 * clock as Linux keeps it: the boot-time wall clock KVM gave once plus kvmclock. */
static void clock_read(void)
{
	uint32_t v;
	uint64_t ns;

	if (!kvmclock_on) {
		wrmsr(MSR_KVM_WALL_CLOCK_NEW, (uint64_t)(uintptr_t)&pvwall);
		wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)(uintptr_t)&pvti | 1);
		kvmclock_on = 1;
	}
	do {
		v = pvti.version;
		uint64_t delta = rdtsc() - pvti.tsc_timestamp;
		int8_t shift = pvti.tsc_shift;

		if (shift < 0)
			delta >>= -shift;
		else
			delta <<= shift;
		ns = pvti.system_time +
		     (uint64_t)(((unsigned __int128)delta * pvti.tsc_to_system_mul) >> 32);
	} while ((v & 1) || v != pvti.version);
	if (!boot_wall_ns)
		boot_wall_ns = pvwall.sec * 1000000000ULL + pvwall.nsec;
	pr_str("clock: ns=");
	pr_dec(ns);
	pr_str(" wall=");
	pr_dec((boot_wall_ns + ns) / 1000000000ULL);
	pr_str("\n");
}

void guest_main(unsigned kind, uint64_t info);

void guest_main(unsigned kind, uint64_t info)
{
	pr_str(kind == BOOT_PVH ? "hearth-test-guest: boot=pvh\n"
				: "hearth-test-guest: boot=linux64\n");
	if (kind == BOOT_PVH)
		parse_start_info(info);
	else
		parse_boot_params(info);

	pr_str("cmdline: ");
	pr_str(cmdline);
	pr_str("\n");

	uint64_t usable = 0;
	for (unsigned i = 0; i < n_e820; i++) {
		pr_str("e820: ");
		pr_dec(e820[i].type);
		pr_char(' ');
		pr_hex(e820[i].addr);
		pr_char(' ');
		pr_hex(e820[i].size);
		pr_str("\n");
		if (e820[i].type == 1)
			usable += e820[i].size;
	}
	pr_str("mem-usable: ");
	pr_dec(usable);
	pr_str(" bytes\n");

	if (has_initrd) {
		if (initrd_addr + initrd_size > LIMIT_4G) {
			pr_str("error: initrd above 4 GiB\n");
		} else {
			pr_str("initrd: ");
			pr_hex(initrd_addr);
			pr_char(' ');
			pr_dec(initrd_size);
			pr_str(" fnv=");
			pr_hex16(fnv1a(FNV_OFFSET, phys(initrd_addr), initrd_size));
			pr_str("\n");
		}
	}

	pr_str("cpus: ");
	pr_dec(count_cpus());
	pr_str("\n");

	pr_str("boot-marker\n");
	mmio_write8(BOOT_MARKER_ADDR, BOOT_MARKER_VALUE);

	/* settings first, so that their position on the line does not matter */
	uint64_t exit_code = 0, delay = 200000;
	const char *end = "exitport";
	struct token t;
	const char *pos = cmdline;
	while (next_token(&pos, &t)) {
		int ok = 1;

		uint64_t v;

		if (is(&t, "exit=")) {
			ok = parse_dec(t.val, t.vlen, &v) && v < 256;
			if (ok)
				exit_code = v;
		}
		else if (is(&t, "delay="))
			ok = parse_dec(t.val, t.vlen, &delay);
		else if (is(&t, "end=reset"))
			end = "reset";
		else if (is(&t, "end=halt"))
			end = "halt";
		else if (is(&t, "end=exitport"))
			end = "exitport";
		else if (is(&t, "virtio_mmio.device="))
			ok = parse_virtio_mmio(&t);
		if (!ok)
			pr_token_error(&t);
	}

	/* actions, in command-line order */
	pos = cmdline;
	while (next_token(&pos, &t)) {
		uint64_t v[4];
		const char *s;
		size_t n;
		int ok = 1;

		if (is(&t, "fault=")) {
			fault(&t);
		} else if (is(&t, "count=")) {
			if ((ok = parse_dec(t.val, t.vlen, &v[0]))) {
				for (uint64_t i = 1; i <= v[0]; i++) {
					if (i > 1)
						delay_loop(delay);
					pr_str("count: ");
					pr_dec(i);
					pr_str("\n");
				}
			}
		} else if (is(&t, "clock")) {
			clock_read();
		} else if (is(&t, "mem.walk=")) {
			if ((ok = parse_list(&t, v, 3) && v[1] > 0 && v[0] >= 16 &&
				   v[0] < 3072))
				mem_walk(v[0], v[1], v[2], delay);
		} else if (is(&t, "mem.dirty=")) {
			if ((ok = parse_list(&t, v, 3) && v[0] >= 16 && v[0] < 3072 &&
				   v[1] <= (3072 - v[0]) * 256))
				mem_dirty(v[0], v[1], v[2], delay);
		} else if (is(&t, "mem.sum=")) {
			if ((ok = parse_list(&t, v, 2) && v[0] >= 16 && v[0] < 3072))
				mem_sum(v[0], v[1]);
		} else if (is(&t, "blk.info")) {
			blk_info();
		} else if (is(&t, "blk.read=")) {
			if ((ok = parse_list(&t, v, 3)))
				blk_read(v[0], v[1], v[2]);
		} else if (is(&t, "blk.write=")) {
			if ((ok = parse_list(&t, v, 4) && v[3] < 256))
				blk_write(v[0], v[1], v[2], (uint8_t)v[3]);
		} else if (is(&t, "blk.flush=")) {
			if ((ok = parse_list(&t, v, 1)))
				blk_flush(v[0]);
		} else if (is(&t, "blk.bench=")) {
			if ((ok = parse_list(&t, v, 2)))
				blk_bench(v[0], v[1]);
		} else if (is(&t, "sleep=")) {
			if ((ok = parse_dec(t.val, t.vlen, &v[0])))
				sleep_ms(v[0]);
		} else if (is(&t, "net.info")) {
			net_info();
		} else if (is(&t, "net.tx=")) {
			const char *text;
			size_t len;

			if ((ok = parse_dev_text(&t, &v[0], &text, &len)))
				net_tx(v[0], text, len);
		} else if (is(&t, "net.rx=")) {
			if ((ok = parse_list(&t, v, 2)))
				net_rx(v[0], v[1]);
		} else if (is(&t, "net.echo=")) {
			if ((ok = parse_list(&t, v, 2)))
				net_echo(v[0], v[1]);
		} else if (is(&t, "net.flood=")) {
			if ((ok = parse_list(&t, v, 3)))
				net_flood(v[0], v[1], v[2]);
		} else if (is(&t, "net.sink=")) {
			if ((ok = parse_list(&t, v, 2)))
				net_sink(v[0], v[1]);
		} else if (is(&t, "rng.read=")) {
			if ((ok = parse_dec(t.val, t.vlen, &v[0])))
				rng_read(v[0]);
		} else if (is(&t, "fs.read=")) {
			if ((ok = t.vlen > 0))
				fs_read(t.val, t.vlen);
		} else if (is(&t, "fs.open=")) {
			if ((ok = t.vlen > 0))
				fs_open(t.val, t.vlen);
		} else if (is(&t, "fs.ls")) {
			fs_ls();
		} else if (is(&t, "vsock.info")) {
			vsock_info();
		} else if (is(&t, "vsock.echo=")) {
			if ((ok = parse_list(&t, v, 2) && v[0] <= 0xffffffffULL))
				vsock_echo((uint32_t)v[0], v[1]);
		} else if (is(&t, "vsock.send=")) {
			if ((ok = parse_dev_text(&t, &v[0], &s, &n) && n > 0 &&
				   v[0] <= 0xffffffffULL))
				vsock_send((uint32_t)v[0], s, (uint32_t)n);
		}
		if (!ok)
			pr_token_error(&t);
	}

	if (end[0] == 'r') {
		pr_str("exit: reset\n");
		outb(I8042_COMMAND, I8042_RESET);
	} else if (end[0] == 'h') {
		pr_str("exit: halt\n");
		__asm__ volatile("cli; hlt");
	} else {
		pr_str("exit: ");
		pr_dec(exit_code);
		pr_str("\n");
		outb(EXIT_PORT, (uint8_t)exit_code);
	}
	halt_forever();
}
