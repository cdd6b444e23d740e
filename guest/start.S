/* start.S: PVH entry (32-bit) -> long mode -> iretq to CPL3; GDT, TSS setup, static IDT and the
 * tiny CPL0 interrupt stubs. CPL0 code is emulated instruction by instruction on PVM hosts, so
 * everything here is kept to a handful of instructions; the rest of the guest runs at CPL3. */
#include "guest.h"

/* ---- PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (type 18), name "Xen" ---- */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4                 /* namesz */
        .long 8                 /* descsz */
        .long 18                /* type */
        .asciz "Xen"
        .balign 4
        .quad entry32

        .section .text.entry, "ax"
/* ---- BSP entry: 32-bit protected mode, paging off, ebx = hvm_start_info ---- */
        .code32
        .globl entry32
entry32:
        cli
        movl %ebx, start_info_ptr
        lgdt gdt_desc
        xorl %esi, %esi                 /* esi = 0: BSP */
        jmp 1f
/* ---- AP entry from trampoline.S: 32-bit protected mode via our GDT (cs = SEL_CODE32) ---- */
        .globl ap_entry32
ap_entry32:
        movl $1, %esi
1:      movl $pml4, %eax
        movl %eax, %cr3
        movl $0x20, %eax                /* CR4.PAE only: no SMEP/SMAP/TSD */
        movl %eax, %cr4
        movl $0xC0000080, %ecx          /* EFER.LME */
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax           /* PG | PE */
        movl %eax, %cr0
        ljmp $SEL_KCODE, $entry64

        .code64
entry64:
        movl $SEL_KDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        testl %esi, %esi
        jnz ap64
        movq $(kstacks + KSTACK_SIZE), %rsp
        movq %rsp, tss_area + 4                 /* RSP0 */
        movw $TSS_IOMAP, tss_area + 0x66        /* I/O bitmap base; bitmap is zero (bss) */
        movb $0xff, tss_area + TSS_IOMAP + 0x2000
        movl $SEL_TSS0, %eax
        ltr %ax
        lidt idt_desc
        movb $0xff, %al                 /* mask both 8259 PICs */
        outb %al, $0x21
        outb %al, $0xa1
        xorl %edi, %edi                 /* cpu 0 */
        pushq $(SEL_UDATA | 3)
        pushq $(ustacks + USTACK_SIZE - 8)
        pushq $USER_RFLAGS
        pushq $(SEL_UCODE | 3)
        pushq $bsp_main
        iretq
ap64:
        movq ap_kstack, %rsp
        movq ap_tr, %rax
        ltr %ax
        lidt idt_desc
        movq ap_cpu, %rdi
        pushq $(SEL_UDATA | 3)
        pushq ap_ustack
        pushq $USER_RFLAGS
        pushq $(SEL_UCODE | 3)
        pushq $ap_main
        iretq

/* ---- halt_unless_changed(volatile u64 *p, u64 seen), CPL3: see gp_stub ---- */
        .globl halt_unless_changed
halt_unless_changed:
        .globl halt_site
halt_site:
        hlt
        ret

/* ---- exception stubs: 16 bytes each; push a dummy error code where the CPU pushes none ---- */
        .balign 16
exc_stubs:
        .set v, 0
        .rept 32
        .balign 16
        .if ((0x60227D00 >> v) & 1) == 0
        pushq $0
        .endif
        pushq $v
        jmp exc_common
        .set v, v + 1
        .endr

/* Rewrites the frame to "return" into exc_report(vector, err, rip, cr2) at CPL3 on a dedicated
 * stack; only the first faulting CPU gets there, the others stop here. */
exc_common:
        lock btsq $0, exc_taken
        jc 2f
        popq %rdi
        popq %rsi
        movq (%rsp), %rdx
        movq %cr2, %rcx
        movq $exc_report, (%rsp)
        movq $(SEL_UCODE | 3), 8(%rsp)
        movq $0x3002, 16(%rsp)          /* IF=0, IOPL=3 */
        movq $(exc_stack + 4096 - 8), 24(%rsp)
        movq $(SEL_UDATA | 3), 32(%rsp)
        iretq
2:      hlt
        jmp 2b

/* ---- LAPIC timer: count and EOI ---- */
irq_timer:
        pushq %rax
        lock incq irq_count
        movl $(LAPIC_BASE + 0xB0), %eax
        movl $0, (%rax)
        popq %rax
        iretq
/* ---- any other vector 32..254: count and EOI ---- */
irq_other:
        pushq %rax
        lock incq irq_other_count
        movl $(LAPIC_BASE + 0xB0), %eax
        movl $0, (%rax)
        popq %rax
        iretq
/* ---- virtio GSIs: vector VEC_VIRTIO+g bumps vec_count[g] and EOIs (32 bytes each) ---- */
        .balign 32
irq_vec_stubs:
        .set g, 0
        .rept VIRTIO_GSIS
        .balign 32
        pushq %rax
        lock incq vec_count + 8 * g
        movl $(LAPIC_BASE + 0xB0), %eax
        movl $0, (%rax)
        popq %rax
        iretq
        .set g, g + 1
        .endr
/* ---- #GP (vector 13). halt_unless_changed(p, seen), called at CPL3, executes hlt at halt_site,
 * which faults here (PVM has no `int n` from CPL3): unless *p != seen already, halt until an
 * interrupt, then return past the hlt. sti's one-instruction shadow keeps an interrupt from
 * landing between the check and hlt; its own stub runs nested and returns to the iretq. Any other
 * #GP is reported as before. ---- */
gp_stub:
        cmpq $halt_site, 8(%rsp)
        jne exc_stubs + 16 * 13
        addq $8, %rsp                   /* the error code */
        cmpq %rsi, (%rdi)
        jne 1f
        sti
        hlt
1:      incq (%rsp)                     /* rip: past the one-byte hlt */
        iretq
/* ---- the ACPI GED (power.c): read its event register and acknowledge what was read (write 1s),
 * EOI; for the power button, "return" into power_button(events) at CPL3 on its own stack with
 * IF=0 (as exc_common does: the guest powers off), else back to the interrupted code. ---- */
irq_ged:
        pushq %rax
        pushq %rdx
        movq ged_reg, %rdx
        movl (%rdx), %eax
        movl %eax, (%rdx)
        movl $(LAPIC_BASE + 0xB0), %edx
        movl $0, (%rdx)
        testl $GED_POWER_BUTTON, %eax
        jnz 1f
        popq %rdx
        popq %rax
        iretq
1:      addq $16, %rsp
        movl %eax, %edi
        movq $power_button, (%rsp)
        movq $(SEL_UCODE | 3), 8(%rsp)
        movq $0x3002, 16(%rsp)          /* IF=0, IOPL=3 */
        movq $(power_stack + 4096 - 8), 24(%rsp)
        movq $(SEL_UDATA | 3), 32(%rsp)
        iretq
/* ---- spurious vector: no EOI ---- */
irq_spurious:
        iretq
        .globl irq_stubs_end
irq_stubs_end:

/* ---- data ---- */
        .data
        .balign 16
        .globl gdt
gdt:
        .quad 0
        .quad 0x00AF9A000000FFFF        /* 0x08 kernel code 64 */
        .quad 0x00CF92000000FFFF        /* 0x10 kernel data */
        .quad 0x00CFF2000000FFFF        /* 0x18 user data (DPL3) */
        .quad 0x00AFFA000000FFFF        /* 0x20 user code 64 (DPL3) */
        .quad 0x00CF9A000000FFFF        /* 0x28 code 32 (AP bring-up) */
        /* 0x30: BSP TSS (64-bit available TSS); APs' descriptors are filled in by lapic.c */
        .word TSS_LIMIT
        .word tss0_base_w0
        .byte tss0_base_b2
        .byte 0x89
        .byte 0
        .byte tss0_base_b3
        .long 0
        .long 0
        .fill (GDT_SIZE - SEL_TSS0 - 16), 1, 0
        .globl gdt_desc
gdt_desc:
        .word GDT_SIZE - 1
        .quad gdt

/* Interrupt gates (DPL0, present, cs = kernel code); the stubs lie in 0x100000..0x10FFFF so the
 * upper offset bits are constant (a link error "relocation truncated" means they moved). */
.macro GATE target
        .word (\target - 0x100000)
        .word SEL_KCODE
        .byte 0
        .byte 0x8E
        .word 0x0010
        .long 0
        .long 0
.endm
        .balign 16
idt:
        .set v, 0
        .rept 256
        .if v == 13
        GATE gp_stub
        .elseif v < 32
        GATE (exc_stubs + 16 * v)
        .elseif v == VEC_TIMER
        GATE irq_timer
        .elseif v == VEC_GED
        GATE irq_ged
        .elseif v == VEC_SPURIOUS
        GATE irq_spurious
        .elseif v >= VEC_VIRTIO && v < VEC_VIRTIO + VIRTIO_GSIS
        GATE (irq_vec_stubs + 32 * (v - VEC_VIRTIO))
        .else
        GATE irq_other
        .endif
        .set v, v + 1
        .endr
idt_desc:
        .word 256 * 16 - 1
        .quad idt

        .balign 8
        .globl start_info_ptr, ap_kstack, ap_ustack, ap_cpu, ap_tr, irq_count, irq_other_count
start_info_ptr: .long 0
        .balign 8
ap_kstack:      .quad 0
ap_ustack:      .quad 0
ap_cpu:         .quad 0
ap_tr:          .quad 0
irq_count:      .quad 0
irq_other_count: .quad 0
exc_taken:      .quad 0
        .globl vec_count
vec_count:      .fill VIRTIO_GSIS, 8, 0

        .section .bss.tss, "aw", @nobits
        .balign 4096
        .globl tss_area
tss_area:       .skip TSS_STRIDE * MAX_CPUS
        .bss
        .balign 4096
        .globl kstacks, ustacks
kstacks:        .skip KSTACK_SIZE * MAX_CPUS
ustacks:        .skip USTACK_SIZE * MAX_CPUS
exc_stack:      .skip 4096
power_stack:    .skip 4096
