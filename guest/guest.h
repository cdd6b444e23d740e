/* Shared constants (asm + C) and C declarations for the tsvmm test guest. */
#ifndef GUEST_H
#define GUEST_H

#define MAX_CPUS        64
#define KSTACK_SIZE     4096            /* CPL0 stack per CPU (interrupt frames only) */
#define USTACK_SIZE     16384           /* CPL3 stack per CPU */
#define TSS_STRIDE      0x2080          /* 0x68 TSS + 0x2000 I/O bitmap + terminator, rounded */
#define TSS_IOMAP       0x68
#define TSS_LIMIT       0x2069
#define SEL_KCODE       0x08
#define SEL_KDATA       0x10
#define SEL_UDATA       0x18
#define SEL_UCODE       0x20
#define SEL_CODE32      0x28
#define SEL_TSS0        0x30            /* CPU i uses SEL_TSS0 + 16*i */
#define GDT_SIZE        (SEL_TSS0 + 16 * MAX_CPUS)
#define USER_RFLAGS     0x3202          /* IF=1, IOPL=3 */
#define TRAMP_ADDR      0x8000          /* AP real-mode trampoline (SIPI vector 0x08) */
#define VEC_TIMER       0x40
#define VEC_GED         0x41            /* the ACPI GED's interrupt (power.c): the power button */
#define GED_POWER_BUTTON 0x1            /* its event bit (tsvmm's contracts/layout.ts ACPI_GED_POWER_BUTTON) */
#define VEC_SPURIOUS    0xFF
#define LAPIC_BASE      0xFEE00000
#define VEC_VIRTIO      0x50            /* vectors 0x50..0x7F: IOAPIC GSI 0..47 (virtio) */
#define VIRTIO_GSIS     48

#ifndef __ASSEMBLY__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef __builtin_va_list va_list;
#define va_start __builtin_va_start
#define va_end __builtin_va_end
#define va_arg __builtin_va_arg
#define NORETURN __attribute__((noreturn))

/* start.S / trampoline.S */
extern u32 start_info_ptr;
extern u8 gdt[], tss_area[], kstacks[], ustacks[];
extern u8 tramp_start[], tramp_end[];
extern volatile u64 ap_kstack, ap_ustack, ap_cpu, ap_tr;
extern volatile u64 irq_count, irq_other_count;
extern volatile u64 vec_count[];              /* per GSI: bumped by the 0x50+gsi stubs */
extern u8 image_end[];

/* serial.c */
void serial_putc(char c);
void serial_puts_raw(const char *s);                /* text that ends no line (a prompt), under the lock */
void out_line(const char *fmt, ...);          /* formats a whole line, prints it under the lock */
NORETURN void poweroff(u32 status);
NORETURN void fail(const char *what, const char *fmt, ...);
void put_line_bounded(const char *s);          /* waits for the line lock a bounded time (interrupted holders) */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* format.c */
int vformat(char *buf, int size, const char *fmt, va_list ap);
int format(char *buf, int size, const char *fmt, ...);
void *memcpy(void *d, const void *s, unsigned long n);
void *memset(void *d, int c, unsigned long n);
int memcmp(const void *a, const void *b, unsigned long n);
unsigned long strlen(const char *s);
int key_match(const char *s, const char *key, const char **val); /* "key=" prefix */
u64 parse_u64(const char *s);

/* main.c */
struct boot_info {
    u32 cpus;
    u64 mem_bytes;
    u32 tsc_khz;
    const char *cmdline;
    char workload[16];
    u64 n, report;
    int n_set, report_set;
    u64 rsdp;
    u64 heap_start, heap_end;   /* free RAM above the image (from the memmap) */
};
extern struct boot_info boot;
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
void delay_us(u64 us);
NORETURN void spin_forever(void);

/* lapic.c */
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 v);
void lapic_enable(void);
u32 lapic_id(void);
#define LAPIC_TIMER_INIT 0x380                  /* initial count: writing it (re)starts the timer */
void lapic_timer(int periodic);
void lapic_timer_mask(void);
u32 smp_start_aps(u32 cpus);
extern volatile u32 smp_go;

/* acpi.c */
u32 acpi_count_cpus(u64 rsdp);
int acpi_find_ged(u64 rsdp, u64 *reg, u32 *gsi);

/* power.c: the ACPI power button (tsvmm stop) */
extern u64 ged_reg;
void power_init(void);
NORETURN void power_button(u64 events);

/* virtio.c: an IOAPIC redirection entry (edge, active high, fixed, APIC id 0) */
void ioapic_route_vector(u32 gsi, u32 vector, const char *what);

/* cmdline.c: lookups in boot.cmdline (values end at a space) and a bump allocator */
const char *cmdline_get(const char *key, int nth);       /* nth occurrence's value, or 0 */
u64 cmdline_u64(const char *key, u64 def);
int cmdline_is(const char *key, const char *word, int def); /* value == word (def if absent) */
u64 parse_size(const char *s, const char **end);         /* 4K, 0x1000, 512, 1M */
int word_eq(const char *v, const char *word);            /* v (up to a space) == word */
void *heap_alloc(u64 size, u64 align);                   /* zeroed; fails the guest when out */
u64 seconds_to_cycles(u64 s);
static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* blk.c, net.c */
NORETURN void blk_workload(int loop);
NORETURN void net_workload(void);
NORETURN void console_workload(void);

/* workloads.c */
void workload_run(u32 cpu);
#endif
#endif
