#include "lib.h"
#include "io.h"

#define COM1		0x3f8
#define COM1_LSR	(COM1 + 5)
#define LSR_THRE	0x20

void pr_char(char c)
{
	/* Bounded so a missing UART cannot hang the guest. */
	for (int i = 0; i < 100000 && !(inb(COM1_LSR) & LSR_THRE); i++)
		;
	outb(COM1, (uint8_t)c);
}

void pr_str(const char *s)
{
	while (*s)
		pr_char(*s++);
}

void pr_dec(uint64_t v)
{
	char buf[21];
	int i = sizeof(buf);

	buf[--i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	pr_str(&buf[i]);
}

static void pr_hex_digits(uint64_t v, int digits)
{
	for (int i = digits - 1; i >= 0; i--)
		pr_char("0123456789abcdef"[(v >> (4 * i)) & 0xf]);
}

void pr_hex(uint64_t v)
{
	int digits = 1;

	while (digits < 16 && (v >> (4 * digits)))
		digits++;
	pr_str("0x");
	pr_hex_digits(v, digits);
}

void pr_hex16(uint64_t v)
{
	pr_hex_digits(v, 16);
}

/* GCC may emit calls to these even with -ffreestanding. */
void *memset(void *d, int c, size_t n)
{
	uint8_t *p = d;

	while (n--)
		*p++ = (uint8_t)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	uint8_t *p = d;
	const uint8_t *q = s;

	while (n--)
		*p++ = *q++;
	return d;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int starts_with(const char *s, size_t len, const char *prefix)
{
	size_t n = strlen(prefix);

	if (len < n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] != prefix[i])
			return 0;
	return 1;
}

uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;

	/* Every instruction counts under KVM's instruction emulator. */
#pragma GCC unroll 8
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= FNV_PRIME;
	}
	return h;
}

size_t parse_num(const char *s, size_t len, uint64_t *out, int suffix)
{
	size_t i = 0;
	uint64_t v = 0;
	int base = 10;

	if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
	}
	size_t start = i;
	for (; i < len; i++) {
		char c = s[i];
		int d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			break;
		v = v * base + d;
	}
	if (i == start)
		return 0;
	if (suffix && i < len) {
		switch (s[i]) {
		case 'G': case 'g': v <<= 10; /* fall through */
		case 'M': case 'm': v <<= 10; /* fall through */
		case 'K': case 'k': v <<= 10; i++; break;
		}
	}
	*out = v;
	return i;
}
