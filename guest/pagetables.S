/* pagetables.S: static 4-level page tables identity-mapping 0..4 GiB with 2 MiB pages, all
 * user-accessible and writable (the guest runs at CPL3); 3..4 GiB (MMIO, LAPIC) uncached. */
        .section .data.pagetables, "aw"
        .balign 4096
        .globl pml4
pml4:
        .quad pdpt + 7
        .fill 511, 8, 0
pdpt:
        .quad pd + 0x0000 + 7
        .quad pd + 0x1000 + 7
        .quad pd + 0x2000 + 7
        .quad pd + 0x3000 + 7
        .fill 508, 8, 0
pd:
        .set i, 0
        .rept 2048
        /* P|RW|US|PS = 0x87; PWT|PCD = 0x18 for the 4th GiB */
        .quad (i << 21) | 0x87 | (((i >> 9) == 3) & 0x18)
        .set i, i + 1
        .endr
