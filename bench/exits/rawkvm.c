/*
 * rawkvm: the smallest VMM that boots tsvmm's PVH test guest, used as the baseline of
 * bench/exits. It does the raw KVM loop (KVM_RUN -> switch on exit_reason -> KVM_RUN) in C with no
 * abstraction, so "tsvmm / rawkvm" is what tsvmm's own exit path costs on top of the kernel's.
 *
 * Usage: rawkvm [-m MiB] [--memfd] KERNEL.elf [CMDLINE]
 *   --memfd: guest RAM is a MAP_SHARED memfd mapping (as tsvmm's) instead of anonymous memory.
 *
 * Guest output (16550 THR at 0x3f8) goes to stdout. At the end one summary line goes to stderr:
 *   @rawkvm status=S tsc_khz=K setup_ns=.. run_ns=.. exits=.. io=.. mmio=.. intr=..
 * The exit status is the guest's power-off status (32-bit out to port 0xf4); 1 on any VMM error.
 *
 * Boot set-up follows the PVH contract (guest/README.md): 32-bit flat protected mode, paging off,
 * ebx = struct hvm_start_info at 0x6000, memory map at 0x6038, command line at 0x7000, boot GDT at
 * 0x500. CPUID is KVM_GET_SUPPORTED_CPUID plus the hypervisor bit and the timing leaf 0x40000010.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TSS_ADDR        0xfffbd000ul
#define IDENT_MAP_ADDR  0xfffbc000ul
#define GDT_ADDR        0x500ul
#define START_INFO_ADDR 0x6000ul
#define MEMMAP_ADDR     0x6038ul
#define CMDLINE_ADDR    0x7000ul
#define CMDLINE_MAX     0x1000ul
#define COM1            0x3f8
#define POWER_PORT      0xf4
#define HVM_START_MAGIC 0x336ec578u
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define TIMING_LEAF     0x40000010u

struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};
struct hvm_memmap_table_entry {
    uint64_t addr, size;
    uint32_t type, reserved;
};
_Static_assert(sizeof(struct hvm_start_info) == 0x38, "hvm_start_info layout");
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24, "memmap entry layout");

static void die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("rawkvm: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what)
{
    int r = ioctl(fd, req, arg);
    if (r < 0)
        die("%s: %s", what, strerror(errno));
    return r;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint8_t *ram;
static uint64_t ram_size;

static void *gpa(uint64_t addr, uint64_t len)
{
    if (addr > ram_size || len > ram_size - addr)
        die("guest address 0x%lx+0x%lx outside RAM", (unsigned long)addr, (unsigned long)len);
    return ram + addr;
}

/* Loads the PT_LOAD segments; returns the PVH 32-bit entry from the Xen note. */
static uint32_t load_pvh_elf(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("%s: %s", path, strerror(errno));
    size_t size = (size_t)st.st_size;
    if (size < sizeof(Elf64_Ehdr))
        die("%s: not an ELF file", path);
    const uint8_t *img = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (img == MAP_FAILED)
        die("mmap %s: %s", path, strerror(errno));
    close(fd);
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_machine != EM_X86_64)
        die("%s: not an ELF64 x86-64 file", path);
    if (eh->e_phoff > size || (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > size - eh->e_phoff)
        die("%s: bad program header table", path);
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(img + eh->e_phoff);
    uint64_t entry = 0;
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *p = &ph[i];
        if (p->p_offset > size || p->p_filesz > size - p->p_offset)
            die("%s: segment %d outside the file", path, i);
        if (p->p_type == PT_LOAD) {
            if (p->p_filesz > p->p_memsz)
                die("%s: segment %d filesz > memsz", path, i);
            uint8_t *dst = gpa(p->p_paddr, p->p_memsz);
            memcpy(dst, img + p->p_offset, p->p_filesz);
            memset(dst + p->p_filesz, 0, p->p_memsz - p->p_filesz);
        } else if (p->p_type == PT_NOTE) {
            uint64_t off = 0;
            while (off + sizeof(Elf64_Nhdr) <= p->p_filesz) {
                const Elf64_Nhdr *n = (const Elf64_Nhdr *)(img + p->p_offset + off);
                uint64_t name_off = off + sizeof(*n);
                uint64_t desc_off = name_off + ((n->n_namesz + 3) & ~3u);
                uint64_t next = desc_off + ((n->n_descsz + 3) & ~3u);
                if (next > p->p_filesz)
                    break;
                const char *name = (const char *)(img + p->p_offset + name_off);
                if (n->n_type == XEN_ELFNOTE_PHYS32_ENTRY && n->n_namesz == 4 &&
                    !memcmp(name, "Xen", 4) && n->n_descsz >= 4) {
                    const uint8_t *desc = img + p->p_offset + desc_off;
                    uint32_t lo;
                    memcpy(&lo, desc, 4);
                    entry = lo;
                }
                off = next;
            }
        }
    }
    munmap((void *)img, size);
    if (!entry)
        die("%s: no XEN_ELFNOTE_PHYS32_ENTRY note (not a PVH kernel)", path);
    return (uint32_t)entry;
}

static void write_start_info(const char *cmdline)
{
    size_t len = strlen(cmdline);
    if (len >= CMDLINE_MAX)
        die("command line too long");
    memcpy(gpa(CMDLINE_ADDR, len + 1), cmdline, len + 1);

    struct hvm_memmap_table_entry mm[3] = {
        { .addr = 0, .size = 0x9fc00, .type = 1 },
        { .addr = 0x9fc00, .size = 0x100000 - 0x9fc00, .type = 2 },
        { .addr = 0x100000, .size = ram_size - 0x100000, .type = 1 },
    };
    memcpy(gpa(MEMMAP_ADDR, sizeof(mm)), mm, sizeof(mm));

    struct hvm_start_info si = {
        .magic = HVM_START_MAGIC,
        .version = 1,
        .cmdline_paddr = CMDLINE_ADDR,
        .memmap_paddr = MEMMAP_ADDR,
        .memmap_entries = 3,
    };
    memcpy(gpa(START_INFO_ADDR, sizeof(si)), &si, sizeof(si));
}

static void write_boot_gdt(void)
{
    const uint64_t gdt[5] = {
        0,
        0,
        0x00cf9b000000ffffull, /* 0x10: code, base 0, limit 4 GiB, 32-bit, type 0xb */
        0x00cf93000000ffffull, /* 0x18: data, base 0, limit 4 GiB, type 3 */
        0x00008b0000000067ull, /* 0x20: TSS (busy), base 0, limit 0x67 */
    };
    memcpy(gpa(GDT_ADDR, sizeof(gdt)), gdt, sizeof(gdt));
}

static void set_cpuid(int kvm, int vcpu, uint32_t tsc_khz)
{
    int nent = 256;
    struct kvm_cpuid2 *c;
    for (;;) {
        c = calloc(1, sizeof(*c) + (size_t)(nent + 2) * sizeof(struct kvm_cpuid_entry2));
        if (!c)
            die("out of memory");
        c->nent = (uint32_t)nent;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0)
            break;
        if (errno != E2BIG)
            die("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
        free(c);
        nent *= 2;
    }
    int have_base = 0, have_timing = 0;
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        if (e->function == 1)
            e->ecx |= 1u << 31; /* hypervisor */
        if (e->function == 0x40000000) {
            have_base = 1;
            if (e->eax < TIMING_LEAF)
                e->eax = TIMING_LEAF;
        }
        if (e->function == TIMING_LEAF) {
            have_timing = 1;
            e->eax = tsc_khz;
            e->ebx = 1000000; /* LAPIC bus: 1 GHz */
        }
    }
    if (!have_base) {
        struct kvm_cpuid_entry2 *e = &c->entries[c->nent++];
        memset(e, 0, sizeof(*e));
        e->function = 0x40000000;
        e->eax = TIMING_LEAF;
        memcpy(&e->ebx, "KVMK", 4);
        memcpy(&e->ecx, "VMKV", 4);
        memcpy(&e->edx, "M\0\0\0", 4);
    }
    if (!have_timing) {
        struct kvm_cpuid_entry2 *e = &c->entries[c->nent++];
        memset(e, 0, sizeof(*e));
        e->function = TIMING_LEAF;
        e->eax = tsc_khz;
        e->ebx = 1000000;
    }
    xioctl(vcpu, KVM_SET_CPUID2, c, "KVM_SET_CPUID2");
    free(c);
}

static void set_boot_state(int vcpu, uint32_t entry)
{
    struct kvm_sregs s;
    xioctl(vcpu, KVM_GET_SREGS, &s, "KVM_GET_SREGS");
    struct kvm_segment code = {
        .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 0xb,
        .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
    };
    struct kvm_segment data = code;
    data.selector = 0x18;
    data.type = 0x3;
    struct kvm_segment tr = {
        .base = 0, .limit = 0x67, .selector = 0x20, .type = 0xb,
        .present = 1, .dpl = 0, .db = 0, .s = 0, .l = 0, .g = 0,
    };
    struct kvm_segment ldt = { .selector = 0, .type = 0x2, .present = 0, .unusable = 1 };
    s.cs = code;
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.tr = tr;
    s.ldt = ldt;
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = 5 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = 0x11; /* PE | ET */
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    xioctl(vcpu, KVM_SET_SREGS, &s, "KVM_SET_SREGS");

    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rip = entry;
    r.rbx = START_INFO_ADDR;
    r.rflags = 2;
    xioctl(vcpu, KVM_SET_REGS, &r, "KVM_SET_REGS");
}

int main(int argc, char **argv)
{
    uint64_t mem_mib = 256;
    int argi = 1, use_memfd = 0;
    for (;;) {
        if (argi + 1 < argc && !strcmp(argv[argi], "-m")) {
            mem_mib = strtoull(argv[argi + 1], NULL, 0);
            argi += 2;
        } else if (argi < argc && !strcmp(argv[argi], "--memfd")) {
            use_memfd = 1;
            argi++;
        } else {
            break;
        }
    }
    if (argi >= argc || mem_mib < 4 || mem_mib > 3072) {
        fprintf(stderr, "usage: rawkvm [-m MiB (4..3072)] [--memfd] KERNEL.elf [CMDLINE]\n");
        return 2;
    }
    const char *kernel = argv[argi];
    const char *cmdline = argi + 1 < argc ? argv[argi + 1] : "";
    uint64_t t_start = now_ns();

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm: %s", strerror(errno));
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        die("unexpected KVM API version");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM: %s", strerror(errno));
    if (ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR) < 0)
        die("KVM_SET_TSS_ADDR: %s", strerror(errno));
    uint64_t ident = IDENT_MAP_ADDR;
    xioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &ident, "KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
        die("KVM_CREATE_IRQCHIP: %s", strerror(errno));
    struct kvm_pit_config pit = { .flags = 0 };
    xioctl(vm, KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");

    ram_size = mem_mib << 20;
    if (use_memfd) {
        int mfd = memfd_create("rawkvm-ram", MFD_CLOEXEC);
        if (mfd < 0 || ftruncate(mfd, (off_t)ram_size) < 0)
            die("memfd guest RAM: %s", strerror(errno));
        ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    } else {
        ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    }
    if (ram == MAP_FAILED)
        die("mmap guest RAM: %s", strerror(errno));
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uint64_t)ram,
    };
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

    uint32_t entry = load_pvh_elf(kernel);
    write_start_info(cmdline);
    write_boot_gdt();

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU: %s", strerror(errno));
    int tsc_khz = ioctl(vcpu, KVM_GET_TSC_KHZ, 0);
    if (tsc_khz < 0)
        tsc_khz = 0;
    set_cpuid(kvm, vcpu, (uint32_t)tsc_khz);
    set_boot_state(vcpu, entry);

    int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < (int)sizeof(struct kvm_run))
        die("KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
    struct kvm_run *run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run: %s", strerror(errno));

    uint64_t counts[64] = { 0 }, exits = 0;
    int status = -1;
    uint64_t t_run = now_ns();
    while (status < 0) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("KVM_RUN: %s", strerror(errno));
        }
        exits++;
        uint32_t reason = run->exit_reason;
        counts[reason < 64 ? reason : 63]++;
        switch (reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            uint16_t port = run->io.port;
            for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
                if (run->io.direction == KVM_EXIT_IO_OUT) {
                    if (port == COM1) {
                        /* whole lines, as tsvmm writes them: bench/exits samples CPU time at lines */
                        putchar(data[0]);
                        if (data[0] == '\n')
                            fflush(stdout);
                    }
                    else if (port == POWER_PORT) {
                        uint32_t v = 0;
                        memcpy(&v, data, run->io.size < 4 ? run->io.size : 4);
                        status = (int)(v & 0xff);
                    }
                } else {
                    /* LSR: THR empty + transmitter empty; everything else reads 0. */
                    memset(data, 0, run->io.size);
                    if (port == COM1 + 5)
                        data[0] = 0x60;
                }
            }
            break;
        }
        case KVM_EXIT_MMIO:
            if (!run->mmio.is_write)
                memset(run->mmio.data, 0, sizeof(run->mmio.data));
            break;
        case KVM_EXIT_INTR:
            break;
        default:
            fflush(stdout);
            fprintf(stderr, "rawkvm: unexpected exit reason %u", reason);
            if (reason == KVM_EXIT_INTERNAL_ERROR)
                fprintf(stderr, " (internal error, suberror %u)", run->internal.suberror);
            if (reason == KVM_EXIT_FAIL_ENTRY)
                fprintf(stderr, " (hardware entry failure 0x%llx)",
                        (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
            fputc('\n', stderr);
            return 1;
        }
    }
    uint64_t t_end = now_ns();
    fflush(stdout);
    fprintf(stderr,
            "@rawkvm status=%d tsc_khz=%d setup_ns=%llu run_ns=%llu exits=%llu io=%llu mmio=%llu "
            "intr=%llu\n",
            status, tsc_khz, (unsigned long long)(t_run - t_start),
            (unsigned long long)(t_end - t_run), (unsigned long long)exits,
            (unsigned long long)counts[KVM_EXIT_IO], (unsigned long long)counts[KVM_EXIT_MMIO],
            (unsigned long long)counts[KVM_EXIT_INTR]);
    return status;
}
