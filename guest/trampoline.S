/* trampoline.S: AP real-mode entry, copied to TRAMP_ADDR (0x8000, SIPI vector 0x08) by lapic.c.
 * Loads the main GDT, enters 32-bit protected mode and jumps to ap_entry32 in start.S, which
 * shares the BSP's path to long mode. Position independent apart from absolute targets. */
#include "guest.h"
        .section .rodata
        .code16
        .globl tramp_start, tramp_end
tramp_start:
        cli
        lgdtl %cs:(tramp_gdt_desc - tramp_start)
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $SEL_CODE32, $ap_entry32
        .balign 4
tramp_gdt_desc:
        .word GDT_SIZE - 1
        .long gdt
tramp_end:
        .code64
