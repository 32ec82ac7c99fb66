/*
 * The PIT guest: a 64-bit ELF at 1 MiB that programs the i8254 PIT with its
 * very first instructions and checks that it behaves like one, then reports on
 * the serial port and ends through hearth's exit port (0x501): 0 when every
 * check passed, otherwise the number of the failed check.
 *
 *  1. control word: channel 0, lobyte/hibyte, mode 0; its read-back status
 *     must be 0x30 (OUT low, access 3, mode 0, binary);
 *  2. loading the count 0x8000 starts the timer: the latched count must
 *     go down;
 *  3. at terminal count OUT goes high (read-back status bit 7).
 */
#define PIT_CH0		0x40
#define PIT_CMD		0x43
#define COM1		0x3f8
#define EXIT_PORT	0x501

/* Writes the NUL-terminated string at \str to COM1; clobbers rax, rdx, rsi. */
.macro puts str
	leaq	\str(%rip), %rsi
	movw	$COM1, %dx
98:	movb	(%rsi), %al
	testb	%al, %al
	jz	99f
	outb	%al, %dx
	incq	%rsi
	jmp	98b
99:
.endm

/* Latches channel 0's count and reads it into %bx; clobbers rax. */
.macro read_count
	movb	$0x00, %al
	outb	%al, $PIT_CMD
	inb	$PIT_CH0, %al
	movb	%al, %bl
	inb	$PIT_CH0, %al
	movb	%al, %bh
.endm

/* Latches channel 0's status into %al. */
.macro read_status
	movb	$0xe2, %al		/* read-back: status only, channel 0 */
	outb	%al, $PIT_CMD
	inb	$PIT_CH0, %al
.endm

	.section .text, "ax"
	.code64
	.globl _start
_start:
	movb	$0x30, %al		/* channel 0, lobyte/hibyte, mode 0, binary */
	outb	%al, $PIT_CMD
	read_status
	cmpb	$0x30, %al
	movb	$1, %cl
	jne	fail

	movb	$0x00, %al		/* count 0x8000: 27 ms */
	outb	%al, $PIT_CH0
	movb	$0x80, %al
	outb	%al, $PIT_CH0
	read_count
	movw	%bx, %r8w
	movl	$10000000, %r9d
1:	read_count
	cmpw	%bx, %r8w
	jne	2f
	decl	%r9d
	jnz	1b
2:	cmpw	%r8w, %bx		/* counting down: the later count is lower */
	movb	$2, %cl
	jae	fail

	movl	$10000000, %r9d
3:	read_status
	testb	$0x80, %al
	jnz	pass
	decl	%r9d
	jnz	3b
	movb	$3, %cl
	jmp	fail

pass:
	puts	ok_msg
	xorl	%eax, %eax
	jmp	out
fail:
	puts	fail_msg
	movb	%cl, %al
	addb	$'0', %al
	movw	$COM1, %dx
	outb	%al, %dx
	movb	$'\n', %al
	outb	%al, %dx
	movb	%cl, %al
out:
	movw	$EXIT_PORT, %dx
	outb	%al, %dx
4:	cli
	hlt
	jmp	4b

	.section .rodata
ok_msg:
	.asciz	"pit: ok\n"
fail_msg:
	.asciz	"pit: failed check "
