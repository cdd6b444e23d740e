/* serial.c: 16550 UART output at 0x3f8 (polling LSR.THRE), whole-line output under a CPL3
 * spinlock, power-off through port 0xf4, and the CPL3 exception reporter. */
#include "guest.h"

#define COM1 0x3f8
static volatile u32 line_lock;

void serial_putc(char c)
{
    /* bounded wait: a VMM whose UART never reports THRE must not hang the guest */
    for (int i = 0; i < 1000 && !(inb(COM1 + 5) & 0x20); i++)
        cpu_relax();
    outb(COM1, (u8)c);
}

static void lock(void)
{
    while (__atomic_exchange_n(&line_lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&line_lock, __ATOMIC_RELAXED))
            cpu_relax();
}

static void unlock(void) { __atomic_store_n(&line_lock, 0, __ATOMIC_RELEASE); }

static void put_line(const char *s)
{
    lock();
    while (*s)
        serial_putc(*s++);
    serial_putc('\n');
    unlock();
}

/* Text that ends no line (a prompt), under the line lock. */
void serial_puts_raw(const char *s)
{
    lock();
    while (*s)
        serial_putc(*s++);
    unlock();
}

void out_line(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vformat(buf, sizeof buf, fmt, ap);
    va_end(ap);
    put_line(buf);
}

NORETURN void poweroff(u32 status)
{
    outl(0xf4, status);
    spin_forever();
}

/* Prints "@error what=WHAT <detail>" and powers off with status 1. */
NORETURN void fail(const char *what, const char *fmt, ...)
{
    char buf[256];
    int n = format(buf, sizeof buf, "@error what=%s ", what);
    va_list ap;
    va_start(ap, fmt);
    vformat(buf + n, sizeof buf - n, fmt, ap);
    va_end(ap);
    put_line(buf);
    poweroff(1);
}

/* A line from code that interrupted this CPU (an exception, the power button): the interrupted
 * code may hold the line lock, so wait for it only a bounded time; a line cut short by taking it
 * anyway is ended first. The lock stays taken: the guest powers off next. */
void put_line_bounded(const char *s)
{
    int forced = 1;
    for (u64 t0 = rdtsc(); rdtsc() - t0 < 1000000000ul;) {
        if (!__atomic_exchange_n(&line_lock, 1, __ATOMIC_ACQUIRE)) {
            forced = 0;
            break;
        }
        cpu_relax();
    }
    line_lock = 1;
    if (forced)
        serial_putc('\n');
    while (*s)
        serial_putc(*s++);
    serial_putc('\n');
}

/* Entered from start.S's exc_common by iretq (CPL3, IF=0, own stack). */
NORETURN void exc_report(u64 vector, u64 err, u64 rip, u64 cr2)
{
    char buf[200];
    format(buf, sizeof buf, "@error what=exception vector=%lu err=0x%lx rip=0x%lx cr2=0x%lx apic=%u",
           vector, err, rip, cr2, lapic_id());
    put_line_bounded(buf);
    poweroff(2);
}
