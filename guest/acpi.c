/* acpi.c: count enabled local APICs in the ACPI MADT (RSDP -> XSDT/RSDT -> "APIC"). Used only
 * when the command line has no cpus=N. Tables above 4 GiB are not mapped and are ignored. */
#include "guest.h"

struct sdt_header { char sig[4]; u32 length; u8 rev, csum; char oem[6], oem_table[8];
                    u32 oem_rev, creator, creator_rev; } __attribute__((packed));

static u32 madt_count(const struct sdt_header *h)
{
    const u8 *p = (const u8 *)h + 44, *end = (const u8 *)h + h->length;
    u32 n = 0;
    while (p + 2 <= end && p[1] >= 2) {
        if (p[0] == 0 && p[1] >= 8 && (*(const u32 *)(p + 4) & 1))          /* local APIC */
            n++;
        else if (p[0] == 9 && p[1] >= 16 && (*(const u32 *)(p + 8) & 1))   /* local x2APIC */
            n++;
        p += p[1];
    }
    return n;
}

u32 acpi_count_cpus(u64 rsdp)
{
    const u8 *r = (const u8 *)rsdp;
    if (rsdp >= 0x100000000ul || memcmp(r, "RSD PTR ", 8))
        return 0;
    u64 root = *(const u32 *)(r + 16);
    int wide = 0;
    if (r[15] >= 2 && *(const u64 *)(r + 24) && *(const u64 *)(r + 24) < 0x100000000ul)
        root = *(const u64 *)(r + 24), wide = 1;
    if (!root || root >= 0x100000000ul)
        return 0;
    const struct sdt_header *t = (const void *)root;
    u32 entries = (t->length - sizeof *t) / (wide ? 8 : 4);
    const u8 *e = (const u8 *)t + sizeof *t;
    for (u32 i = 0; i < entries; i++) {
        u64 a = wide ? *(const u64 *)(e + 8 * i) : *(const u32 *)(e + 4 * i);
        if (a && a < 0x100000000ul && !memcmp(((const struct sdt_header *)a)->sig, "APIC", 4))
            return madt_count((const void *)a);
    }
    return 0;
}
