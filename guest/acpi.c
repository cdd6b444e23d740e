/* acpi.c: the ACPI tables the guest reads. It counts enabled local APICs in the MADT (RSDP ->
 * XSDT/RSDT -> "APIC"; used only when the command line has no cpus=N), and finds tsvmm's Generic
 * Event Device in the DSDT (power.c). Tables above 4 GiB are not mapped and are ignored. */
#include "guest.h"

struct sdt_header { char sig[4]; u32 length; u8 rev, csum; char oem[6], oem_table[8];
                    u32 oem_rev, creator, creator_rev; } __attribute__((packed));

#define BELOW_4G(a) ((a) && (a) < 0x100000000ul)

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

/* The table with signature `sig` that the XSDT (or RSDT) lists, or 0. */
static const struct sdt_header *find_table(u64 rsdp, const char *sig)
{
    const u8 *r = (const u8 *)rsdp;
    if (!BELOW_4G(rsdp) || memcmp(r, "RSD PTR ", 8))
        return 0;
    u64 root = *(const u32 *)(r + 16);
    int wide = 0;
    if (r[15] >= 2 && BELOW_4G(*(const u64 *)(r + 24)))
        root = *(const u64 *)(r + 24), wide = 1;
    if (!BELOW_4G(root))
        return 0;
    const struct sdt_header *t = (const void *)root;
    u32 entries = (t->length - sizeof *t) / (wide ? 8 : 4);
    const u8 *e = (const u8 *)t + sizeof *t;
    for (u32 i = 0; i < entries; i++) {
        u64 a = wide ? *(const u64 *)(e + 8 * i) : *(const u32 *)(e + 4 * i);
        if (BELOW_4G(a) && !memcmp(((const struct sdt_header *)a)->sig, sig, 4))
            return (const void *)a;
    }
    return 0;
}

u32 acpi_count_cpus(u64 rsdp)
{
    const struct sdt_header *madt = find_table(rsdp, "APIC");
    return madt ? madt_count(madt) : 0;
}

/* An AML integer (ZeroOp, OneOp, Byte/Word/DWord/QWordPrefix): its length in bytes, or 0. */
static u32 aml_int(const u8 *p, u64 *v)
{
    switch (p[0]) {
    case 0x00: *v = 0; return 1;
    case 0x01: *v = 1; return 1;
    case 0x0a: *v = p[1]; return 2;
    case 0x0b: *v = *(const u16 *)(p + 1); return 3;
    case 0x0c: *v = *(const u32 *)(p + 1); return 5;
    case 0x0e: *v = *(const u64 *)(p + 1); return 9;
    }
    return 0;
}

/* tsvmm's Generic Event Device, found as tsvmm's vmm writes it (vmm/acpi/dsdt.ts gedAml): in the
 * DSDT of OEM "TSVMM" (another VMM's GED has other event bits), the device whose _HID is the
 * string "ACPI0013"; within it, the Extended Interrupt descriptor of its _CRS (one GSI) and its
 * SystemMemory OperationRegion (the event register). 1 and both found, or 0. */
int acpi_find_ged(u64 rsdp, u64 *reg, u32 *gsi)
{
    const struct sdt_header *fadt = find_table(rsdp, "FACP");
    if (!fadt || fadt->length < 148)
        return 0;
    u64 dsdt = *(const u64 *)((const u8 *)fadt + 140);          /* X_DSDT, else DSDT */
    if (!dsdt)
        dsdt = *(const u32 *)((const u8 *)fadt + 40);
    if (!BELOW_4G(dsdt))
        return 0;
    const struct sdt_header *d = (const void *)dsdt;
    if (memcmp(d->sig, "DSDT", 4) || memcmp(d->oem, "TSVMM ", 6))
        return 0;
    const u8 *p = (const u8 *)d + sizeof *d, *end = (const u8 *)d + d->length;
    while (p + 10 <= end && memcmp(p, "\x0d" "ACPI0013", 10))   /* StringPrefix "ACPI0013" NUL */
        p++;
    if (p + 10 > end)
        return 0;
    const u8 *lim = p + 256 < end ? p + 256 : end;
    int found = 0;
    for (; p + 16 <= lim && found != 3; p++) {
        if (!(found & 1) && p[0] == 0x89 && p[1] == 6 && p[2] == 0 && p[4] == 1) {
            *gsi = *(const u32 *)(p + 5);                       /* Interrupt(...) { gsi } */
            found |= 1;
        } else if (!(found & 2) && p[0] == 0x5b && p[1] == 0x80 && p[6] == 0 && aml_int(p + 7, reg)) {
            found |= 2;                                         /* OperationRegion (NAME, SystemMemory, reg, ...) */
        }
    }
    return found == 3 && BELOW_4G(*reg);
}
