/*
 * The zero-cost guest: a 64-bit ELF loaded at 1 MiB whose first instruction
 * resets the machine through the i8042 (the pulse-reset command 0xfe on port
 * 0x64), so that a VMM's start-up and tear-down can be timed without any
 * guest work in between. Booted through the 64-bit Linux entry (e_entry).
 */
	.section .text, "ax"
	.code64
	.globl _start
_start:
	movb	$0xfe, %al
	outb	%al, $0x64
1:	hlt				/* not reached: the VMM ends the VM on the reset */
	jmp	1b
