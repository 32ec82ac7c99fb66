/* Serial console output and the few library routines the guest needs. */
#ifndef LIB_H
#define LIB_H

#include <stdint.h>
#include <stddef.h>

void pr_char(char c);
void pr_str(const char *s);		/* no newline added */
void pr_dec(uint64_t v);
void pr_hex(uint64_t v);		/* "0x" + minimal lower-case hex */
void pr_hex16(uint64_t v);		/* exactly 16 hex digits, no "0x" */

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
size_t strlen(const char *s);
int starts_with(const char *s, size_t len, const char *prefix);

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME  0x100000001b3ULL
uint64_t fnv1a(uint64_t h, const void *p, size_t n);

/* Parse an unsigned number: "0x" hex or decimal, then an optional K/M/G
 * suffix when 'suffix' is set (like Linux's memparse). Returns the number of
 * characters consumed, 0 on error. */
size_t parse_num(const char *s, size_t len, uint64_t *out, int suffix);

#endif
