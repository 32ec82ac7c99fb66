/*
 * The PIT ticks guest: programs PIT channel 0 as a rate generator (mode 2,
 * count 0x8000: a period of 27.5 ms) at once, then polls its count and prints
 * "tick" on the serial port each time the count reloads, and ends through
 * hearth's exit port (0x501) with status 0 after 200 ticks (5.5 s). A snapshot taken
 * between ticks must bring the counting PIT back: otherwise the restored guest
 * never sees another tick.
 */
#define PIT_CH0		0x40
#define PIT_CMD		0x43
#define COM1		0x3f8
#define EXIT_PORT	0x501
#define TICKS		200

	.section .text, "ax"
	.code64
	.globl _start
_start:
	movb	$0x34, %al		/* channel 0, lobyte/hibyte, mode 2, binary */
	outb	%al, $PIT_CMD
	movb	$0x00, %al
	outb	%al, $PIT_CH0
	movb	$0x80, %al
	outb	%al, $PIT_CH0
	xorl	%r12d, %r12d		/* ticks seen */
	movw	$0xffff, %r8w		/* previous count: above any count */
1:	movb	$0x00, %al		/* latch channel 0's count into %bx */
	outb	%al, $PIT_CMD
	inb	$PIT_CH0, %al
	movb	%al, %bl
	inb	$PIT_CH0, %al
	movb	%al, %bh
	cmpw	%r8w, %bx
	movw	%bx, %r8w
	jbe	1b			/* still counting down */
	/* The count went up: the channel reloaded. */
	movw	$COM1, %dx
	movb	$'t', %al
	outb	%al, %dx
	movb	$'i', %al
	outb	%al, %dx
	movb	$'c', %al
	outb	%al, %dx
	movb	$'k', %al
	outb	%al, %dx
	movb	$'\n', %al
	outb	%al, %dx
	incl	%r12d
	cmpl	$TICKS, %r12d
	jb	1b
	xorl	%eax, %eax
	movw	$EXIT_PORT, %dx
	outb	%al, %dx
2:	cli
	hlt
	jmp	2b
