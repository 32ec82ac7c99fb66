/*
 * The idle guest: a 64-bit ELF at 1 MiB that enables interrupts and halts
 * forever, so that a VMM's resident cost with a guest that does nothing can be
 * measured.
 */
	.section .text, "ax"
	.code64
	.globl _start
_start:
	sti
1:	hlt
	jmp	1b
