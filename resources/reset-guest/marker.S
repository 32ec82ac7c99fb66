/*
 * The marker guest: writes "boot-marker\n" on the serial port (the line the test guest
 * prints once booted) and resets through the i8042 at once, so that a VMM driven
 * through its API can be timed from the first PUT to the guest's first line with no
 * guest work in between (under an emulating KVM the test guest's own boot costs ~100 ms
 * of emulated instructions, the same under any VMM).
 */
#define COM1	0x3f8

	.section .text, "ax"
	.code64
	.globl _start
_start:
	leaq	msg(%rip), %rsi
	movw	$COM1, %dx
1:	lodsb
	testb	%al, %al
	jz	2f
	outb	%al, %dx
	jmp	1b
2:	movb	$0xfe, %al
	outb	%al, $0x64
3:	hlt				/* not reached: the VMM ends the VM on the reset */
	jmp	3b

	.section .rodata
msg:	.asciz "boot-marker\n"
