/* lapic.c: xAPIC MMIO access from CPL3 (0xFEE00000 is mapped user-accessible, uncached) and AP
 * bring-up: per-AP TSS + GDT descriptor, trampoline copy to 0x8000, INIT/SIPI/SIPI per AP. */
#include "guest.h"

#define ICR_LO 0x300
#define ICR_HI 0x310

volatile u32 smp_go;
volatile u32 ap_checked_in;

u32 lapic_read(u32 reg) { return *(volatile u32 *)(u64)(LAPIC_BASE + reg); }
void lapic_write(u32 reg, u32 v) { *(volatile u32 *)(u64)(LAPIC_BASE + reg) = v; }
u32 lapic_id(void) { return lapic_read(0x20) >> 24; }

void lapic_enable(void)
{
    lapic_write(0x80, 0);                       /* TPR: accept everything */
    lapic_write(0xF0, 0x100 | VEC_SPURIOUS);    /* SVR: software enable */
}

/* The LAPIC timer on VEC_TIMER, divide by 1, one-shot or periodic; it runs once LAPIC_TIMER_INIT is written. */
void lapic_timer(int periodic)
{
    lapic_write(0x3E0, 0xB);                            /* divide configuration: by 1 */
    lapic_write(0x320, VEC_TIMER | (periodic ? 1u << 17 : 0)); /* LVT timer, unmasked */
}

void lapic_timer_mask(void) { lapic_write(0x320, 1u << 16); }

/* CPU i's TSS: RSP0 = top of its CPL0 stack, full zeroed I/O bitmap; and its GDT descriptor. */
static void setup_tss(u32 i)
{
    u8 *t = tss_area + (u64)i * TSS_STRIDE;
    u64 base = (u64)t, rsp0 = (u64)kstacks + (u64)(i + 1) * KSTACK_SIZE;
    memset(t, 0, TSS_STRIDE);
    memcpy(t + 4, &rsp0, 8);
    *(u16 *)(t + 0x66) = TSS_IOMAP;
    t[TSS_IOMAP + 0x2000] = 0xff;
    u8 *d = gdt + SEL_TSS0 + 16 * i;
    u64 lo = (TSS_LIMIT & 0xffff) | ((base & 0xffffff) << 16) | (0x89ul << 40) |
             (((u64)TSS_LIMIT >> 16 & 0xf) << 48) | ((base >> 24 & 0xff) << 56);
    u64 hi = base >> 32;
    memcpy(d, &lo, 8);
    memcpy(d + 8, &hi, 8);
}

static void send_ipi(u32 apic, u32 lo)
{
    lapic_write(ICR_HI, apic << 24);
    lapic_write(ICR_LO, lo);
    for (int i = 0; i < 100000 && (lapic_read(ICR_LO) & (1u << 12)); i++)
        cpu_relax();
}

static int wait_checkin(u32 cpu, u64 us)
{
    u64 khz = boot.tsc_khz ? boot.tsc_khz : 3000000;
    u64 t0 = rdtsc(), lim = us * khz / 1000;
    while (__atomic_load_n(&ap_checked_in, __ATOMIC_ACQUIRE) != cpu)
        if (rdtsc() - t0 > lim)
            return 0;
        else
            cpu_relax();
    return 1;
}

/* Starts CPUs 1..cpus-1 (APIC id == cpu index) one by one; returns how many CPUs are up. */
u32 smp_start_aps(u32 cpus)
{
    memcpy((void *)TRAMP_ADDR, tramp_start, tramp_end - tramp_start);
    for (u32 i = 1; i < cpus; i++) {
        setup_tss(i);
        ap_kstack = (u64)kstacks + (u64)(i + 1) * KSTACK_SIZE;
        ap_ustack = (u64)ustacks + (u64)(i + 1) * USTACK_SIZE - 8;
        ap_tr = SEL_TSS0 + 16 * i;
        ap_cpu = i;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        send_ipi(i, 0x4500);                           /* INIT */
        delay_us(1000);
        send_ipi(i, 0x4600 | (TRAMP_ADDR >> 12));      /* SIPI */
        if (!wait_checkin(i, 2000)) {
            send_ipi(i, 0x4600 | (TRAMP_ADDR >> 12));  /* second SIPI only if needed */
            if (!wait_checkin(i, 5000000))
                fail("smp", "detail=ap_timeout cpu=%u", i);
        }
    }
    return cpus;
}
