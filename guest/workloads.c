/* workloads.c: counter (every CPU; register+memory counter with a hash chain), exits (PIO and
 * MMIO exit round trips), irq (LAPIC one-shot timer round trips), idle. All at CPL3. */
#include "guest.h"

#define FNV_OFFSET 0xcbf29ce484222325ul
#define FNV_PRIME  0x100000001b3ul

struct percpu {
    u64 counter;                /* the in-memory copy of the counter */
    u64 hash;
} __attribute__((aligned(64)));
static struct percpu pcpu[MAX_CPUS];
static volatile u32 counter_done;

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* Runs `steps` increments. The counter lives in rbx (callee-saved) for the whole loop and in
 * memory; each step increments both, compares them and extends the hash chain. Returns the
 * number of steps not done (nonzero only on a register/memory mismatch). */
static u64 counter_steps(struct percpu *p, u64 *reg, u64 steps)
{
    register u64 c __asm__("rbx") = *reg;
    u64 h = p->hash, left = steps;
    if (!left)
        return 0;
    __asm__ volatile(
        "1:\n\t"
        "incq %[c]\n\t"
        "incq %[m]\n\t"
        "cmpq %[m], %[c]\n\t"
        "jne 2f\n\t"
        "xorq %[c], %[h]\n\t"
        "imulq %[prime], %[h]\n\t"
        "decq %[left]\n\t"
        "jnz 1b\n"
        "2:"
        : [c] "+b"(c), [m] "+m"(p->counter), [h] "+r"(h), [left] "+r"(left)
        : [prime] "r"(FNV_PRIME)
        : "cc");
    *reg = c;
    p->hash = h;
    return left;
}

static void counter(u32 cpu)
{
    struct percpu *p = &pcpu[cpu];
    u64 n = boot.n, report = boot.report ? boot.report : 500000000, reg = 0, last = 0;
    p->counter = 0;
    p->hash = FNV_OFFSET;
    for (;;) {
        u64 chunk = report;
        if (n && n - reg < chunk)
            chunk = n - reg;
        u64 left = counter_steps(p, &reg, chunk);
        u64 mem = p->counter;
        if (left || mem != reg)
            fail("counter", "cpu=%u detail=mismatch reg=%lu mem=%lu", cpu, reg, mem);
        if (reg != last + chunk)
            fail("counter", "cpu=%u detail=backwards last=%lu now=%lu", cpu, last, reg);
        last = reg;
        /* tsc: when this chunk ended, so the host can see from the guest's side how long it was
         * stopped (bench/recovery: a gap between two lines beyond the usual one). */
        out_line("@counter cpu=%u n=%lu hash=%016lx tsc=%lu ok", cpu, reg, p->hash, rdtsc());
        if (n && reg >= n)
            break;
    }
    __atomic_add_fetch(&counter_done, 1, __ATOMIC_ACQ_REL);
    if (cpu != 0)
        spin_forever();
    while (__atomic_load_n(&counter_done, __ATOMIC_ACQUIRE) != boot.cpus)
        cpu_relax();
    out_line("@done ok");
    poweroff(0);
}

static void report_time(const char *line, u64 n, u64 cycles, const char *unit)
{
    u64 per = n ? cycles / n : 0;
    if (boot.tsc_khz) {
        u64 ns = cycles * 1000000ul / boot.tsc_khz;
        out_line("%s n=%lu cycles=%lu cycles_per_%s=%lu ns_per_%s=%lu", line, n, cycles, unit, per,
                 unit, n ? ns / n : 0);
    } else {
        out_line("%s n=%lu cycles=%lu cycles_per_%s=%lu", line, n, cycles, unit, per);
    }
}

static void exits(void)
{
    u64 n = boot.n_set ? boot.n : 100000;
    /* exits_settle_ms=N: N ms without an exit first, so that what a VMM does once its guest runs
     * (tsvmm: the driver-domain's JIT warm-up, the priv-domain's start) is over before the loops */
    u64 settle = cmdline_u64("exits_settle_ms", 0) * (boot.tsc_khz ? boot.tsc_khz : 3000000);
    for (u64 s0 = rdtsc(); rdtsc() - s0 < settle;)
        __asm__ volatile("pause");
    /* bench/exits samples the VMM's per-thread CPU time at this line and at each report line */
    out_line("@exits begin");
    u64 t0 = rdtsc();
    for (u64 i = 0; i < n; i++)
        outb(0x510, (u8)i);
    u64 t1 = rdtsc();
    report_time("@exits kind=pio", n, t1 - t0, "exit");
    volatile u32 *mmio = (volatile u32 *)0xC0000000ul;
    t0 = rdtsc();
    for (u64 i = 0; i < n; i++)
        *mmio = (u32)i;
    t1 = rdtsc();
    report_time("@exits kind=mmio", n, t1 - t0, "exit");
    /* exits_isr=GPA (bench/exits: a virtio device's InterruptStatus): n 32-bit reads of it, an exit
     * tsvmm answers in its native exit loop (rawkvm answers any MMIO read with 0) */
    u64 isr_gpa = cmdline_u64("exits_isr", 0);
    if (isr_gpa) {
        volatile u32 *isr = (volatile u32 *)isr_gpa;
        u32 seen = 0;
        t0 = rdtsc();
        for (u64 i = 0; i < n; i++)
            seen |= *isr;
        t1 = rdtsc();
        report_time("@exits kind=isr", n, t1 - t0, "exit");
        if (seen & ~3u)
            out_line("@error exits isr=0x%x detail=bits_beyond_vring_and_config", seen);
    }
    /* n bytes of serial output (lines of 63 dots): LSR poll + THR write per byte, the UART path */
    t0 = rdtsc();
    for (u64 i = 0; i < n; i++)
        serial_putc(i % 64 == 63 ? '\n' : '.');
    t1 = rdtsc();
    if (n % 64)
        serial_putc('\n');
    report_time("@exits kind=serial", n, t1 - t0, "byte");
    /* ~0.2 s without exits before powering off: the VMM is still there when bench/exits samples
     * its CPU time at the line above */
    u64 until = rdtsc() + (boot.tsc_khz ? boot.tsc_khz : 3000000) * 200;
    while (rdtsc() < until)
        cpu_relax();
    out_line("@done ok");
    poweroff(0);
}

static void irq(void)
{
    u64 n = boot.n_set ? boot.n : 10000, total = 0, min = ~0ul, max = 0;
    u64 khz = boot.tsc_khz ? boot.tsc_khz : 3000000;
    lapic_timer(0);
    for (u64 i = 0; i < n; i++) {
        u64 before = irq_count;
        u64 t0 = rdtsc();
        lapic_write(LAPIC_TIMER_INIT, 16);      /* fire almost at once */
        while (irq_count == before)
            if (rdtsc() - t0 > khz * 1000)      /* 1 s */
                fail("irq", "detail=timeout i=%lu count=%lu other=%lu", i, irq_count,
                     irq_other_count);
        u64 d = rdtsc() - t0;
        total += d;
        min = d < min ? d : min;
        max = d > max ? d : max;
    }
    lapic_timer_mask();
    report_time("@irq", n, total, "irq");
    out_line("@irq-stats min_cycles=%lu max_cycles=%lu other=%lu", n ? min : 0, max,
             irq_other_count);
    out_line("@done ok");
    poweroff(0);
}

void workload_run(u32 cpu)
{
    if (!boot.n_set)
        boot.n = 2000000000;   /* ~3 s at native speed (7e8 steps/s measured) */
    if (streq(boot.workload, "counter") || (cpu && cmdline_u64("ap_counter", 0)))
        counter(cpu);
    else if (cpu == 0 && streq(boot.workload, "exits"))
        exits();
    else if (cpu == 0 && streq(boot.workload, "irq"))
        irq();
    else if (cpu == 0 && streq(boot.workload, "fault"))
        *(volatile u32 *)0x100000000ul = 1;     /* unmapped: #PF -> @error what=exception */
    spin_forever();
}

/* console: prints spam=BYTES of numbered @spam lines (to exercise the console's output path),
 * then "@console-ready", then a prompt ("console> ", ending no line, as a shell's does) and echoes
 * serial input (the UART's receive side): each line typed comes back as "@echo line=<text>",
 * followed by the prompt again; the line "poweroff" powers off with status 0. Input is polled
 * about every millisecond (no IRQ: the guest runs at CPL3 without an IDT for it). */
NORETURN void console_workload(void)
{
    u64 spam = cmdline_u64("spam", 0), done = 0;
    for (u32 i = 0; done < spam; i++) {
        char buf[128];
        int n = format(buf, sizeof buf, "@spam i=%u %s", i, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        out_line("%s", buf);
        done += (u64)n + 1;
    }
    out_line("@console-ready");
    serial_puts_raw("console> ");
    char line[200];
    u32 n = 0;
    for (;;) {
        if (!(inb(0x3f8 + 5) & 1)) {
            delay_us(1000);
            continue;
        }
        char c = (char)inb(0x3f8);
        if (c == '\r' || c == '\n') {
            if (!n)
                continue;
            line[n] = 0;
            out_line("@echo line=%s", line);
            if (streq(line, "poweroff")) {
                out_line("@done ok");
                poweroff(0);
            }
            n = 0;
            serial_puts_raw("console> ");
        } else if (n < sizeof line - 1 && c >= 0x20 && c < 0x7f) {
            line[n++] = c;
        }
    }
}
