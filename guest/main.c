/* main.c: CPL3 entry points. bsp_main reads the PVH start_info (memmap, cmdline, RSDP), works out
 * the CPU count and TSC frequency, prints @boot, starts the APs and runs the workload; ap_main is
 * where each AP lands after its own CPL0 setup. */
#include "guest.h"

/* Xen public/arch-x86/hvm/start_info.h */
struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr;
    u64 memmap_paddr;           /* version >= 1 */
    u32 memmap_entries, reserved;
};
struct hvm_memmap_entry { u64 addr, size; u32 type, reserved; };
#define HVM_START_MAGIC 0x336ec578

struct boot_info boot;

static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

NORETURN void spin_forever(void)
{
    for (;;)
        cpu_relax();
}

void delay_us(u64 us)
{
    u64 khz = boot.tsc_khz ? boot.tsc_khz : 3000000;  /* guess 3 GHz when unknown */
    u64 t0 = rdtsc(), cycles = us * khz / 1000;
    while (rdtsc() - t0 < cycles)
        cpu_relax();
}

/* cpuid 0x40000010 eax (TSC kHz) when the hypervisor range reaches it; else 0. */
static u32 tsc_khz(void)
{
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    if (!(c & (1u << 31)))
        return 0;
    cpuid(0x40000000, &a, &b, &c, &d);
    if (a < 0x40000010 || a > 0x400000ff)
        return 0;
    cpuid(0x40000010, &a, &b, &c, &d);
    return a;
}

static void parse_cmdline(const char *s)
{
    static char copy[2048];
    const char *v;
    int n = 0;
    while (s && s[n] && n < (int)sizeof copy - 1) {
        copy[n] = s[n] == '"' ? '\'' : s[n];   /* keep cmdline="..." parseable */
        n++;
    }
    copy[n] = 0;
    boot.cmdline = copy;
    for (const char *p = copy; *p;) {
        while (*p == ' ')
            p++;
        if (key_match(p, "workload", &v)) {
            int i = 0;
            while (v[i] && v[i] != ' ' && i < (int)sizeof boot.workload - 1)
                boot.workload[i] = v[i], i++;
            boot.workload[i] = 0;
        } else if (key_match(p, "n", &v)) {
            boot.n = parse_u64(v);
            boot.n_set = 1;
        } else if (key_match(p, "report", &v)) {
            boot.report = parse_u64(v);
            boot.report_set = 1;
        } else if (key_match(p, "cpus", &v)) {
            boot.cpus = (u32)parse_u64(v);
        }
        while (*p && *p != ' ')
            p++;
    }
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

NORETURN void bsp_main(void)
{
    const struct hvm_start_info *si = (const void *)(u64)start_info_ptr;
    memcpy(boot.workload, "counter", 8);
    if (!si || si->magic != HVM_START_MAGIC)
        fail("boot", "detail=bad_start_info ptr=0x%x", start_info_ptr);
    if (si->cmdline_paddr && si->cmdline_paddr < 0x100000000ul)
        parse_cmdline((const char *)si->cmdline_paddr);
    else
        parse_cmdline("");
    if (si->version >= 1 && si->memmap_paddr && si->memmap_paddr < 0x100000000ul) {
        const struct hvm_memmap_entry *e = (const void *)si->memmap_paddr;
        u64 start = ((u64)image_end + 0x1fffff) & ~0x1ffffful;   /* 2 MiB above the image */
        for (u32 i = 0; i < si->memmap_entries; i++) {
            if (e[i].type != 1)
                continue;
            boot.mem_bytes += e[i].size;
            u64 end = e[i].addr + e[i].size;
            if (end > 0xC0000000ul)
                end = 0xC0000000ul;                 /* above is uncached MMIO space */
            if (e[i].addr <= start && end > start && end - start > boot.heap_end - boot.heap_start)
                boot.heap_start = start, boot.heap_end = end;
        }
    }
    if (!boot.heap_end) {                           /* no memmap: assume 16 MiB above the image */
        boot.heap_start = ((u64)image_end + 0x1fffff) & ~0x1ffffful;
        boot.heap_end = boot.heap_start + (16ul << 20);
    }
    boot.rsdp = si->rsdp_paddr;
    if (!boot.cpus && boot.rsdp)
        boot.cpus = acpi_count_cpus(boot.rsdp);
    if (!boot.cpus)
        boot.cpus = 1;
    if (boot.cpus > MAX_CPUS)
        boot.cpus = MAX_CPUS;
    boot.tsc_khz = tsc_khz();
    if (!boot.tsc_khz)
        boot.tsc_khz = (u32)cmdline_u64("tsc_khz", 0);   /* e.g. from the host's /proc/cpuinfo */

    serial_putc('\n');     /* firmware (SeaBIOS with -M pc) may leave a partial line */
    out_line("@boot cpus=%u mem_mb=%lu tsc_khz=%u cmdline=\"%s\"", boot.cpus,
             boot.mem_bytes >> 20, boot.tsc_khz, boot.cmdline);
    lapic_enable();
    power_init();
    if (boot.cpus > 1) {
        u32 up = smp_start_aps(boot.cpus);
        out_line("@smp cpus_up=%u", up);
        __atomic_store_n(&smp_go, 1, __ATOMIC_RELEASE);
    }
    if (!streq(boot.workload, "counter") && !streq(boot.workload, "exits") &&
        !streq(boot.workload, "irq") && !streq(boot.workload, "idle") &&
        !streq(boot.workload, "fault") && !streq(boot.workload, "blk") &&
        !streq(boot.workload, "blk-loop") && !streq(boot.workload, "net") &&
        !streq(boot.workload, "console"))
        fail("cmdline", "detail=unknown_workload workload=%s", boot.workload);
    if (streq(boot.workload, "blk") || streq(boot.workload, "blk-loop"))
        blk_workload(streq(boot.workload, "blk-loop"));
    if (streq(boot.workload, "net"))
        net_workload();
    if (streq(boot.workload, "console"))
        console_workload();
    workload_run(0);
    spin_forever();
}

extern volatile u32 ap_checked_in;

NORETURN void ap_main(u64 cpu)
{
    lapic_enable();
    __atomic_store_n(&ap_checked_in, (u32)cpu, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&smp_go, __ATOMIC_ACQUIRE))
        cpu_relax();
    if (streq(boot.workload, "counter") || cmdline_u64("ap_counter", 0))
        workload_run((u32)cpu);
    spin_forever();
}
