/*
 * Entry points of the hearth test guest.
 *
 *  linux64_entry  ELF e_entry, 64-bit Linux boot protocol: long mode, paging
 *                 on (VMM tables covering at least the first 1 GiB),
 *                 %rsi = struct boot_params.
 *  pvh_start32    Xen PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected
 *                 mode, paging off, %ebx = struct hvm_start_info.
 *
 * Both end in common64, which switches to the guest's own page tables
 * (identity map of 0..4 GiB in 2 MiB pages, built at assembly time below),
 * GDT, empty IDT and stack, zeroes .bss and calls
 * guest_main(kind, info).
 */

#define BOOT_LINUX64	1
#define BOOT_PVH	2

#define CS64		0x08
#define DS		0x10

#define X86_CR0_PG	0x80000000
#define X86_CR4_PAE	0x00000020
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100

/* XEN_ELFNOTE_PHYS32_ENTRY. The desc is a .quad like in a 64-bit vmlinux
 * (Linux emits it with _ASM_PTR); loaders read the low 32 bits. */
	.pushsection .note.Xen, "a", @note
	.balign 4
	.long 4f - 3f			/* namesz */
	.long 6f - 5f			/* descsz */
	.long 18			/* type: XEN_ELFNOTE_PHYS32_ENTRY */
3:	.asciz "Xen"
4:	.balign 4
5:	.quad pvh_start32
6:	.balign 4
	.popsection

	.section .text.entry, "ax"

	.code64
	.globl linux64_entry
linux64_entry:
	cli
	movl	$BOOT_LINUX64, %edi
	/* %rsi = boot_params, passed through */
	jmp	common64

	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	/* Our page tables are fully built in .data, so just turn paging on. */
	movl	%cr4, %eax
	orl	$X86_CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$X86_CR0_PG, %eax
	movl	%eax, %cr0
	lgdt	gdt_desc		/* reads the 6-byte form */
	ljmp	$CS64, $pvh_long_mode

	.code64
pvh_long_mode:
	movl	$BOOT_PVH, %edi
	movl	%ebx, %esi		/* zero-extends: hvm_start_info */

/* %edi = boot kind, %rsi = info pointer. No usable stack yet. */
common64:
	cli
	cld
	movl	%edi, %r12d
	movq	%rsi, %r13
	movl	$pml4, %eax
	movq	%rax, %cr3
	lgdt	gdt_desc
	lidt	idt_desc		/* empty IDT: any exception triple-faults */

	/* Zero .bss (stack, virtqueues, buffers): the VMM may not have. */
	movl	$__bss_start, %edi
	movl	$__bss_end, %ecx
	subl	%edi, %ecx
	shrl	$3, %ecx
	xorl	%eax, %eax
	rep stosq

	movl	$stack_top, %esp
	movl	$DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	/* Reload CS with our own 64-bit code selector. */
	pushq	$CS64
	pushq	$1f
	lretq
1:
	movl	%r12d, %edi
	movq	%r13, %rsi
	call	guest_main
2:	cli
	hlt
	jmp	2b

	.section .data
	.balign 16
gdt:
	.quad 0				/* null */
	.quad 0x00af9a000000ffff	/* 0x08: 64-bit code, DPL0 */
	.quad 0x00cf92000000ffff	/* 0x10: flat data */
gdt_end:

	.balign 16
	.word 0				/* aligns the base field */
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt			/* 32-bit lgdt uses the low 4 bytes */

	.balign 16
	.word 0
idt_desc:
	.word 0
	.quad 0

/*
 * Identity map of the first 4 GiB with 2 MiB pages, assembled in place so
 * that neither boot path has to build it. Above 3 GiB (MMIO: the boot
 * marker at 0xc0000000, virtio-mmio devices) the pages are uncached.
 */
#define PTE_P		0x001
#define PTE_RW		0x002
#define PTE_PWT		0x008
#define PTE_PCD		0x010
#define PTE_PS		0x080

	.balign 4096
pml4:
	.quad pdpt + PTE_P + PTE_RW
	.fill 511, 8, 0
pdpt:
	.quad pd + 0 * 4096 + PTE_P + PTE_RW
	.quad pd + 1 * 4096 + PTE_P + PTE_RW
	.quad pd + 2 * 4096 + PTE_P + PTE_RW
	.quad pd + 3 * 4096 + PTE_P + PTE_RW
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 2048
	/* gas comparisons yield -1 for true */
	.quad (i << 21) + PTE_P + PTE_RW + PTE_PS + ((i >= 1536) & (PTE_PCD + PTE_PWT))
	.set i, i + 1
	.endr

	.section .bss
	.balign 16
stack:
	.skip 16384
stack_top:
