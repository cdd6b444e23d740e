// keeper.c: the vmm keeper (see keeper.h for the protocol and the layout).
//
// Everything that runs in the keeper process uses raw syscalls (inline asm):
// no libc locks, no malloc, no errno (the keeper shares the vmm's memory, and
// the TLS pointer it inherits is the vmm main thread's), no stack protector
// (its canary lives in that TLS too). It runs on a stack mmapped before the
// clone. Compiled as C: the KVM structs with flexible arrays must have the
// kernel's sizes.
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "keeper.h"
#include "seccomp.h"
#include <linux/seccomp.h>
#include <sys/prctl.h>

#define KEEPER_FN __attribute__((no_stack_protector, noinline))
#define RAW static inline __attribute__((always_inline))

RAW long raw6(long n, long a, long b, long c, long d, long e, long f) {
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
#define raw3(n, a, b, c) raw6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

RAW long k_ioctl(int fd, unsigned long req, void* arg) { return raw3(SYS_ioctl, fd, req, arg); }

RAW uint64_t k_now_ns(void) {
  struct { long sec, nsec; } ts = {0, 0};
  raw3(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, &ts, 0);
  return (uint64_t)ts.sec * 1000000000ull + (uint64_t)ts.nsec;
}

/* ---- layout ---- */

#define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))
#define VCPU_SIZE ALIGN_UP(sizeof(struct tsvmm_snap_vcpu), 64)

static uint32_t journal_offset(void) { return 4096; }
static uint32_t vcpu_offset(uint32_t n) { return journal_offset() + n * TSVMM_JOURNAL_SIZE; }
static uint32_t vm_offset(uint32_t n) { return (uint32_t)ALIGN_UP(vcpu_offset(n) + n * VCPU_SIZE, 64); }

static uint32_t body_size(uint32_t n) { return vm_offset(n) + (uint32_t)sizeof(struct tsvmm_snap_vm) - vcpu_offset(n); }
static uint32_t mirror_offset(uint32_t n) { return (uint32_t)ALIGN_UP(vm_offset(n) + sizeof(struct tsvmm_snap_vm), 64); }

uint32_t tsvmm_snap_total_size(uint32_t ncpus) {
  return (uint32_t)ALIGN_UP(mirror_offset(ncpus) + body_size(ncpus), 4096);
}

/* The header's layout fields as this build lays out a snapshot of `ncpus` vCPUs (restore.c checks
 * a saved header against them). */
void tsvmm_snap_layout(uint32_t ncpus, struct tsvmm_snap_header* h) {
  h->ncpus = ncpus;
  h->vcpu_size = VCPU_SIZE;
  h->journal_offset = journal_offset();
  h->vcpu_offset = vcpu_offset(ncpus);
  h->vm_offset = vm_offset(ncpus);
  h->vm_size = sizeof(struct tsvmm_snap_vm);
  h->total_size = tsvmm_snap_total_size(ncpus);
  h->mirror_offset = mirror_offset(ncpus);
}

static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[n] = c;
  }
}

void tsvmm_snap_format_crc_init(void) {
  if (!crc_table[1]) crc_init();
}

KEEPER_FN uint32_t tsvmm_crc32(const uint8_t* p, uint64_t n) {
  uint32_t c = 0xffffffffu;
  for (uint64_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

/* Writes a fresh header (state EMPTY) and zeroed journals. */
void tsvmm_snap_format(uint8_t* snap, uint32_t ncpus) {
  crc_init();
  memset(snap, 0, tsvmm_snap_total_size(ncpus));
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)snap;
  h->version = TSVMM_SNAP_VERSION;
  tsvmm_snap_layout(ncpus, h);
  __atomic_store_n(&h->magic, TSVMM_SNAP_MAGIC, __ATOMIC_RELEASE);
}

const struct tsvmm_vcpu_blob tsvmm_vcpu_blobs[TSVMM_VCPU_BLOBS] = {
#define BLOB(step, name, field) {step, KVM_GET_##name, KVM_SET_##name, offsetof(struct tsvmm_snap_vcpu, field)}
    BLOB(TSVMM_STEP_MP_STATE, MP_STATE, mp_state), BLOB(TSVMM_STEP_REGS, REGS, regs),
    BLOB(TSVMM_STEP_SREGS, SREGS, sregs), BLOB(TSVMM_STEP_XSAVE, XSAVE, xsave), BLOB(TSVMM_STEP_XCRS, XCRS, xcrs),
    BLOB(TSVMM_STEP_DEBUGREGS, DEBUGREGS, debugregs), BLOB(TSVMM_STEP_LAPIC, LAPIC, lapic),
#undef BLOB
};

static const struct { const char* text; int ioctl; } step_names[TSVMM_STEP_COUNT] = {
#define STEP_NAME(name, text, ioctl) {text, ioctl},
    TSVMM_STEPS(STEP_NAME)
#undef STEP_NAME
};

const char* tsvmm_step_name(uint32_t step, int restoring) {
  static char buf[64];
  if (step >= TSVMM_STEP_COUNT) return NULL;
  if (!step_names[step].ioctl) return step_names[step].text;
  strcpy(buf, restoring ? "KVM_SET_" : "KVM_GET_");
  strcat(buf, step_names[step].text);
  return buf;
}

/* ---- saving (the keeper process, and a live snapshot of a paused vmm) ---- */

KEEPER_FN static void kzero(void* p, uint64_t n) {
  volatile uint8_t* b = (volatile uint8_t*)p;
  for (uint64_t i = 0; i < n; i++) b[i] = 0;
}
KEEPER_FN static void kcopy(void* d, const void* s, uint64_t n) {
  volatile uint8_t* dd = (volatile uint8_t*)d;
  const volatile uint8_t* ss = (const volatile uint8_t*)s;
  for (uint64_t i = 0; i < n; i++) dd[i] = ss[i];
}

KEEPER_FN static __attribute__((noreturn)) void k_exit(int code) {
  for (;;) raw3(SYS_exit_group, code, 0, 0);
}

/* Wakes whoever waits on header.wake_seq (a warm standby vmm in another process: not FUTEX_PRIVATE). */
KEEPER_FN static void k_wake(struct tsvmm_snap_header* h) {
  __atomic_add_fetch(&h->wake_seq, 1, __ATOMIC_RELEASE);
  raw6(SYS_futex, (long)&h->wake_seq, 1 /* FUTEX_WAKE */, 0x7fffffff, 0, 0, 0);
}

/* Records why a save failed in the header; the caller gives up (returns -1). */
KEEPER_FN static int k_fail(struct tsvmm_snap_header* h, uint32_t step, uint32_t vcpu, long err) {
  h->fail_step = step;
  h->fail_vcpu = vcpu;
  h->fail_errno = (int32_t)-err;
  return -1;
}

#define GET(step, fd, req, ptr)                                \
  do {                                                         \
    long r_ = k_ioctl((fd), (req), (ptr));                     \
    if (r_ < 0) return k_fail(h, (step), (uint32_t)i, r_);     \
  } while (0)

KEEPER_FN static uint64_t k_rip(int fd, long* err) {
  struct kvm_regs r;
  *err = k_ioctl(fd, KVM_GET_REGS, &r);
  return *err < 0 ? 0 : r.rip;
}

/* Saves one vCPU. The pending-exit rule (keeper.h, architecture.md):
 *  - journal handled, or exit reason sentinel/INTR/other: complete anything the kernel has pending
 *    with KVM_RUN(immediate_exit=1), which finishes an IO/MMIO exit without entering the guest;
 *  - unhandled PIO in / MMIO read: RIP was not advanced; leave it, the guest re-executes it;
 *  - unhandled PIO out / MMIO write: record it for the new vmm to replay, then complete it so RIP
 *    is past the instruction whichever way the kernel emulated it. */
KEEPER_FN static int save_vcpu(const struct tsvmm_keeper_config* cfg, uint8_t* snap, int i) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)snap;
  struct tsvmm_snap_vcpu* v = (struct tsvmm_snap_vcpu*)(snap + h->vcpu_offset + (uint64_t)i * h->vcpu_size);
  struct tsvmm_journal* j = (struct tsvmm_journal*)(snap + h->journal_offset + (uint64_t)i * TSVMM_JOURNAL_SIZE);
  struct kvm_run* run = cfg->run[i];
  int fd = cfg->vcpu_fd[i];

  kzero(v, offsetof(struct tsvmm_snap_vcpu, mp_state));
  v->id = (uint32_t)i;
  uint32_t reason = __atomic_load_n(&run->exit_reason, __ATOMIC_ACQUIRE);
  uint32_t commit = __atomic_load_n(&j->commit, __ATOMIC_ACQUIRE);
  v->exit_reason = reason;
  v->journal_commit = commit;
  int handled = (commit & TSVMM_JOURNAL_HANDLED) != 0;
  int complete = 1;
  if (!handled && reason == KVM_EXIT_IO) {
    if (run->io.direction == KVM_EXIT_IO_IN) {
      v->pending = TSVMM_PENDING_REEXEC;
      complete = 0;
    } else {
      uint64_t n = (uint64_t)run->io.size * run->io.count;
      if (n > TSVMM_REPLAY_DATA_MAX) return k_fail(h, TSVMM_STEP_REPLAY_TOO_BIG, (uint32_t)i, 0);
      v->pending = TSVMM_PENDING_PIO_OUT;
      v->replay_addr = run->io.port;
      v->replay_size = run->io.size;
      v->replay_count = run->io.count;
      kcopy(v->replay_data, (uint8_t*)run + run->io.data_offset, n);
    }
  } else if (!handled && reason == KVM_EXIT_MMIO) {
    if (!run->mmio.is_write) {
      v->pending = TSVMM_PENDING_REEXEC;
      complete = 0;
    } else {
      v->pending = TSVMM_PENDING_MMIO_WRITE;
      v->replay_addr = run->mmio.phys_addr;
      v->replay_size = run->mmio.len;
      v->replay_count = 1;
      kcopy(v->replay_data, run->mmio.data, 8);
    }
  }
  long err;
  v->rip_before = k_rip(fd, &err);
  if (err < 0) return k_fail(h, TSVMM_STEP_REGS, (uint32_t)i, err);
  v->rip_after = v->rip_before;
  if (complete) {
    __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_RELEASE);
    long r = k_ioctl(fd, KVM_RUN, 0);
    __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_RELEASE);
    v->completed = 1;
    v->complete_rc = r < 0 ? (uint32_t)r : run->exit_reason;
    /* -EINTR is the expected answer. 0 would mean the kernel needs another userspace round trip
     * (a multi-fragment MMIO access or a string PIO): not something a keeper can finish. */
    if (r != -4 /* EINTR */) return k_fail(h, TSVMM_STEP_COMPLETE_RUN, (uint32_t)i, r < 0 ? r : -1000 - (long)run->exit_reason);
    v->rip_after = k_rip(fd, &err);
    if (err < 0) return k_fail(h, TSVMM_STEP_REGS, (uint32_t)i, err);
  }

  for (int b = 0; b < TSVMM_VCPU_BLOBS; b++) {
    const struct tsvmm_vcpu_blob* blob = &tsvmm_vcpu_blobs[b];
    GET(blob->step, fd, blob->get, (uint8_t*)v + blob->offset);
  }
  kzero(&v->msrs, sizeof v->msrs);
  v->msrs.nmsrs = cfg->nmsrs;
  for (uint32_t k = 0; k < cfg->nmsrs; k++) v->msrs.entries[k].index = cfg->msr_index[k];
  long n = k_ioctl(fd, KVM_GET_MSRS, &v->msrs);
  if (n < 0) return k_fail(h, TSVMM_STEP_MSRS, (uint32_t)i, n);
  v->nmsrs_saved = (uint32_t)n; /* the vmm probed them all readable; restore sets what was read */
  GET(TSVMM_STEP_VCPU_EVENTS, fd, KVM_GET_VCPU_EVENTS, &v->events);
  return 0;
}

/* Each vCPU's saved IA32_TSC becomes its guest TSC at the instant of the KVM_GET_CLOCK just made
 * (host_tsc + the vCPU's TSC offset), not at its own earlier KVM_GET_MSRS: the vCPUs are saved one
 * after another and the clock last, and a keeper preempted in between (a loaded host, an emulated
 * CPU) would otherwise restore a TSC that lags kvm-clock by that gap, which the guest's clocksource
 * watchdog reads as a skew ("Marking clocksource 'tsc' as unstable"). Needs the clock's host_tsc
 * (KVM_CLOCK_HOST_TSC: KVM's master clock) and KVM_VCPU_TSC_OFFSET (Linux 5.16); without them the
 * MSR values stay as read. tsvmm never scales the guest TSC, so guest TSC = host TSC + offset. */
KEEPER_FN static void tsc_at_clock(const struct tsvmm_keeper_config* cfg, uint8_t* snap, const struct kvm_clock_data* clock) {
  const struct tsvmm_snap_header* h = (const struct tsvmm_snap_header*)snap;
  if (!(clock->flags & KVM_CLOCK_HOST_TSC)) return;
  for (int i = 0; i < cfg->ncpus; i++) {
    struct tsvmm_snap_vcpu* v = (struct tsvmm_snap_vcpu*)(snap + h->vcpu_offset + (uint64_t)i * h->vcpu_size);
    int k = tsvmm_snap_tsc_index(v);
    uint64_t offset = 0;
    struct kvm_device_attr a;
    tsvmm_tsc_offset_attr(&a, &offset);
    if (k < 0 || k_ioctl(cfg->vcpu_fd[i], KVM_GET_DEVICE_ATTR, &a) < 0) return;
    v->msrs.entries[k].data = clock->host_tsc + offset;
  }
}

/* Saves every vCPU and the VM into `snap` (a snapshot laid out by tsvmm_snap_format, whose journals
 * are the ones the vCPUs wrote) and seals it: checksum, generation + 1, saved_ns. The caller then
 * publishes state SAVED. 0, or -1 with the failure in the header. */
KEEPER_FN static int save_all(const struct tsvmm_keeper_config* cfg, uint8_t* snap) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)snap;
  for (int v = 0; v < cfg->ncpus; v++) if (save_vcpu(cfg, snap, v) < 0) return -1;
  struct tsvmm_snap_vm* vm = (struct tsvmm_snap_vm*)(snap + h->vm_offset);
  int i = -1; /* for GET's error report: the VM, not a vCPU */
  GET(TSVMM_STEP_PIT2, cfg->vm_fd, KVM_GET_PIT2, &vm->pit2);
  GET(TSVMM_STEP_CLOCK, cfg->vm_fd, KVM_GET_CLOCK, &vm->clock);
  tsc_at_clock(cfg, snap, &vm->clock);
  for (int c = 0; c < 3; c++) {
    kzero(&vm->irqchip[c], sizeof vm->irqchip[c]);
    vm->irqchip[c].chip_id = (uint32_t)c;
    GET(TSVMM_STEP_IRQCHIP, cfg->vm_fd, KVM_GET_IRQCHIP, &vm->irqchip[c]);
  }
  /* After the vCPUs: the guest no longer runs, so the ring holds still. */
  vm->ring_saved = cfg->coalesced_ring ? 1u : 0u;
  if (cfg->coalesced_ring) kcopy(vm->ring, cfg->coalesced_ring, TSVMM_RING_SIZE);
  else kzero(vm->ring, TSVMM_RING_SIZE);
  h->nmsrs = cfg->nmsrs;
  /* Sealed twice: the checksum in two words, the body copied to the mirror after it was summed, so
   * a bit flipped later in any one of them still leaves a copy that checks (restore.c). */
  uint32_t len = h->vm_offset + h->vm_size - h->vcpu_offset;
  uint32_t sum = tsvmm_crc32(snap + h->vcpu_offset, len);
  kcopy(snap + h->mirror_offset, snap + h->vcpu_offset, len);
  h->checksum = sum;
  h->checksum_b = sum;
  h->generation = h->generation + 1;
  h->saved_ns = k_now_ns();
  return 0;
}

/* The keeper's seccomp filter (built by tsvmm_keeper_start, installed by the keeper itself): the
 * raw system calls below and nothing else; ioctl only with the KVM requests save_vcpu and
 * keeper_main make. */
static struct tsvmm_bpf keeper_bpf;
static struct sock_fprog keeper_prog;
static const int keeper_syscalls[] = {
    SYS_poll, SYS_futex, SYS_clock_gettime, SYS_nanosleep, SYS_exit_group, SYS_exit, SYS_rt_sigprocmask,
    SYS_getppid, SYS_pidfd_open, SYS_restart_syscall,
};
static const uint64_t keeper_ioctls[] = {
    KVM_RUN, KVM_GET_REGS, KVM_GET_MP_STATE, KVM_GET_SREGS, KVM_GET_XSAVE, KVM_GET_XCRS, KVM_GET_DEBUGREGS,
    KVM_GET_LAPIC, KVM_GET_MSRS, KVM_GET_VCPU_EVENTS, KVM_GET_PIT2, KVM_GET_CLOCK, KVM_GET_IRQCHIP, KVM_IRQFD,
    KVM_GET_DEVICE_ATTR,
};

static int keeper_filter_build(uint32_t mode) {
  uint32_t dflt = tsvmm_seccomp_action((int)mode);
  tsvmm_bpf_begin(&keeper_bpf, dflt);
  tsvmm_bpf_allow_arg_in(&keeper_bpf, SYS_ioctl, 1, keeper_ioctls, sizeof keeper_ioctls / sizeof keeper_ioctls[0], dflt);
  for (unsigned i = 0; i < sizeof keeper_syscalls / sizeof keeper_syscalls[0]; i++) tsvmm_bpf_allow(&keeper_bpf, keeper_syscalls[i]);
  if (tsvmm_bpf_end(&keeper_bpf, dflt) < 0) return -7;
  keeper_prog.len = keeper_bpf.len;
  keeper_prog.filter = keeper_bpf.insn;
  return 0;
}

/* What poll_vmm saw readable. */
#define POLL_VMM 1  /* the vmm's pidfd: it died */
#define POLL_STOP 2 /* the stop eventfd */

/* One poll of the vmm's pidfd and the stop eventfd, on a pollfd array built afresh in this call's
 * own frame (KEEPER_FN: never inlined), so nothing the idle loop keeps in a register across its
 * sleeps decides what is polled. A flipped register holding the loop's array (campaign 6, run 65/9:
 * r13) made a keeper poll other stack memory and sleep through its vmm's death while still beating:
 * "the keeper did not finish saving", the VM lost. Returns POLL_VMM | POLL_STOP, 0 on a timeout (or
 * a wake-up no fd explains), or a negative errno. */
KEEPER_FN static long poll_vmm(const struct tsvmm_keeper_config* cfg, int timeout_ms) {
  struct pollfd p[2];
  p[0].fd = cfg->vmm_pidfd; p[0].events = POLLIN; p[0].revents = 0;
  p[1].fd = cfg->stop_efd; p[1].events = POLLIN; p[1].revents = 0;
  long r = raw3(SYS_poll, p, 2, timeout_ms);
  if (r <= 0) return r;
  return (p[0].revents ? POLL_VMM : 0) | (p[1].revents ? POLL_STOP : 0);
}

/* CRC-32 of what the keeper acts on (keeper.h cfg_crc). */
KEEPER_FN static uint32_t keeper_cfg_crc(const struct tsvmm_keeper_config* cfg) {
  return tsvmm_crc32((const uint8_t*)cfg, offsetof(struct tsvmm_keeper_config, armed));
}

/* The snapshot header, read from the configuration (whose CRC the idle loop checks) where it is
 * used, not kept in a register across the keeper's sleeps: a flipped one would beat and save into
 * other memory. */
#define SNAP_HEADER(cfg) ((struct tsvmm_snap_header*)*(uint8_t* volatile*)&(cfg)->snap)

KEEPER_FN static int keeper_main(void* arg) {
  struct tsvmm_keeper_config* cfg = (struct tsvmm_keeper_config*)arg;

  /* This process only (no TSYNC: the keeper is a process of its own, sharing the vmm's memory). A
   * keeper that cannot confine itself does not run unconfined. */
  if (cfg->seccomp) {
    if (raw3(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0) < 0) k_exit(4);
    if (raw3(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &keeper_prog) < 0) k_exit(4);
  }

  /* Only SIGKILL (and SIGSTOP) reach the keeper: a signal meant for the vmm or its group must not
   * take the VM's last holder with it. The supervisor kills it by pid when it stops. */
  uint64_t all = ~0ull;
  raw6(SYS_rt_sigprocmask, SIG_SETMASK, (long)&all, 0, 8 /* sigsetsize */, 0, 0);

  /* The supervisor's death is not ours to act on: a new supervisor adopts this keeper with the vmm
   * (recovery/adopt.ts), and if none comes, the vmm stops this keeper before it exits. A keeper
   * outlives its vmm only by its save and linger, so it is never left behind.
   * Idle, the keeper wakes every TSVMM_KEEPER_BEAT_MS, checks itself and beats: a keeper broken
   * while it waits (a flipped register or stack, its configuration overwritten) crashes or exits
   * here, or stops beating, and is replaced while its vmm still runs, instead of failing at the
   * vmm's death, when it is needed. */
  long woke;
  for (;;) {
    long r = poll_vmm(cfg, TSVMM_KEEPER_BEAT_MS);
    if (keeper_cfg_crc(cfg) != cfg->cfg_crc) k_exit(TSVMM_KEEPER_EXIT_SELFCHECK);
    if (r > 0) {
      /* A wake-up that no fd explains (a flipped return value) must not save a live VM. */
      woke = poll_vmm(cfg, 0);
      if (woke <= 0) k_exit(TSVMM_KEEPER_EXIT_SELFCHECK);
      break;
    }
    if (r < 0 && r != -4 /* EINTR */) k_exit(TSVMM_KEEPER_EXIT_POLL);
    /* Only the armed keeper beats: a warm standby's dormant one shares the header. */
    if (r == 0 && __atomic_load_n(&cfg->armed, __ATOMIC_ACQUIRE)) __atomic_add_fetch(&SNAP_HEADER(cfg)->keeper_beat, 1, __ATOMIC_RELEASE);
  }
  struct tsvmm_snap_header* h = SNAP_HEADER(cfg);
  if (woke & POLL_STOP) {
    /* A dormant keeper's header is still the previous vmm's snapshot: leave it. */
    if (__atomic_load_n(&cfg->armed, __ATOMIC_ACQUIRE)) __atomic_store_n(&h->state, TSVMM_SNAP_STOPPED, __ATOMIC_RELEASE);
    k_exit(0);
  }
  if (!__atomic_load_n(&cfg->armed, __ATOMIC_ACQUIRE)) k_exit(0); /* a standby that never took over */

  h->died_ns = k_now_ns();
  __atomic_store_n(&h->state, TSVMM_SNAP_SAVING, __ATOMIC_RELEASE);
  /* Wake a waiting standby now, not only once saved: its wake-up (a futex wake, then a CPU for
   * its thread: 0.02-0.7 ms on a loaded host) overlaps the save instead of following it; it waits
   * for SAVED on a CPU (tsvmm_snap_claim). */
  k_wake(h);
  /* Before saving the irqchip: from here an interrupt stays in its eventfd for the next VM. */
  for (uint32_t k = 0; k < cfg->nirqfds; k++) {
    struct kvm_irqfd d;
    kzero(&d, sizeof d);
    d.fd = (uint32_t)cfg->irqfd_fd[k];
    d.gsi = cfg->irqfd_gsi[k];
    d.flags = KVM_IRQFD_FLAG_DEASSIGN;
    k_ioctl(cfg->vm_fd, KVM_IRQFD, &d);
  }
  if (save_all(cfg, cfg->snap) < 0) {
    __atomic_store_n(&h->state, TSVMM_SNAP_FAILED, __ATOMIC_RELEASE);
    k_wake(h);
    k_exit(1);
  }
  __atomic_store_n(&h->state, TSVMM_SNAP_SAVED, __ATOMIC_RELEASE);
  k_wake(h);
  /* Linger before exiting: this exit drops the last hold on the dead vmm's address space and VM,
   * and tearing them down takes milliseconds of CPU, which a small host would otherwise take from
   * the guest just as the next vmm resumes it. */
  struct { long sec, nsec; } linger = {0, 100 * 1000 * 1000};
  raw3(SYS_nanosleep, &linger, 0, 0);
  k_exit(0);
}

#define KEEPER_STACK (256 * 1024)
/* The keeper's clone flags: exported (keeper_clone_flags) so the vmm's seccomp filter can allow
 * exactly this clone besides threads (contracts/confinement.ts). */
#define KEEPER_CLONE_FLAGS (CLONE_VM | CLONE_FILES | CLONE_PARENT)

static void write_armed_header(struct tsvmm_keeper_config* cfg);

static int clone_keeper(struct tsvmm_keeper_config* cfg, uint32_t state_on_failure) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)cfg->snap;
  int armed = cfg->armed;
  cfg->cfg_crc = keeper_cfg_crc(cfg);
  if (armed) h->state = TSVMM_SNAP_ARMED;
  /* CLONE_PARENT: the keeper is the supervisor's child, so the supervisor reaps it and it is never
   * orphaned; its exit signal is the vmm's (SIGCHLD). No CLONE_THREAD: it is its own process. */
  int pid = clone(keeper_main, (uint8_t*)cfg->stack + KEEPER_STACK, KEEPER_CLONE_FLAGS, cfg);
  if (pid < 0) {
    if (armed) h->state = state_on_failure;
    return -1;
  }
  cfg->keeper_pid = pid;
  /* Not the vmm's child, but a pidfd still becomes readable when it exits (tsvmm_keeper_restart). */
  cfg->keeper_pidfd = (int)raw3(SYS_pidfd_open, pid, 0, 0);
  if (armed) write_armed_header(cfg);
  return pid;
}

int tsvmm_keeper_start(struct tsvmm_keeper_config* cfg) {
  crc_init();
  /* Built once, here (normal C): a restarted keeper (tsvmm_keeper_restart) installs the same. */
  if (cfg->seccomp && keeper_filter_build(cfg->seccomp) < 0) return -7;
  void* stack = mmap(NULL, KEEPER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -12;
  cfg->stack = stack;
  int pid = clone_keeper(cfg, TSVMM_SNAP_EMPTY);
  if (pid < 0) {
    munmap(stack, KEEPER_STACK);
    cfg->stack = NULL;
  }
  return pid;
}

int tsvmm_keeper_restart(struct tsvmm_keeper_config* cfg) {
  /* The previous keeper must be gone: it runs on the same stack, and two keepers must never both
   * save one death. Its pidfd is readable once it exited. */
  if (cfg->keeper_pidfd < 0) return -16 /* EBUSY: cannot tell */;
  /* The configuration the new keeper would act on was overwritten since it was sealed. */
  if (keeper_cfg_crc(cfg) != cfg->cfg_crc) return -74 /* EBADMSG */;
  struct pollfd p;
  p.fd = cfg->keeper_pidfd; p.events = POLLIN; p.revents = 0;
  if (raw3(SYS_poll, &p, 1, 0) != 1) return -16 /* EBUSY */;
  raw3(SYS_close, cfg->keeper_pidfd, 0, 0);
  cfg->keeper_pidfd = -1;
  /* Only a vmm that runs the guest gets a new keeper: it saves from its first moment. */
  __atomic_store_n(&cfg->armed, 1, __ATOMIC_RELEASE);
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)cfg->snap;
  int pid = clone_keeper(cfg, h->state);
  return pid < 0 ? -12 : pid;
}

void tsvmm_keeper_arm(struct tsvmm_keeper_config* cfg) {
  /* armed first: the keeper acts only once this whole process is dead, and from here it must save. */
  __atomic_store_n(&cfg->armed, 1, __ATOMIC_RELEASE);
  write_armed_header(cfg);
}

int tsvmm_snap_save_live(const struct tsvmm_keeper_config* cfg, uint8_t* image) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)image;
  memcpy(image, cfg->snap, cfg->snap_size); /* header and journals as the vCPUs left them */
  h->state = TSVMM_SNAP_SAVING;
  h->died_ns = k_now_ns();
  if (save_all(cfg, image) < 0) {
    h->state = TSVMM_SNAP_FAILED;
    return -1;
  }
  h->state = TSVMM_SNAP_SAVED;
  h->wake_seq = 0;
  return 0;
}

static void write_armed_header(struct tsvmm_keeper_config* cfg) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)cfg->snap;
  h->fail_step = 0;
  h->fail_errno = 0;
  h->died_ns = 0;
  h->saved_ns = 0;
  h->vmm_pid = (uint32_t)raw3(SYS_getpid, 0, 0, 0);
  h->keeper_pid = (uint32_t)cfg->keeper_pid;
  __atomic_store_n(&h->state, TSVMM_SNAP_ARMED, __ATOMIC_RELEASE);
}

/* ---- the driver-domain's address-space holder ----
 *
 * A process is dead (its pidfd readable) only once its last thread has torn its address space
 * down, and for a Node process that is milliseconds of CPU (3.5 ms at best for a bare one here, 17
 * with 60 MB more), all of it on the path of a warm standby blocked on that pidfd. The vmm's keeper
 * holds the vmm's address space (CLONE_VM), so a vmm's death costs no teardown; this does the same
 * for the driver-domain: a CLONE_VM child that first closes every fd it was cloned with (it holds
 * no disk, TAP or io_uring: nothing of the driver-domain's I/O outlives the driver-domain's own
 * threads), then waits on a pidfd of its parent, lingers, and exits, tearing the address space down
 * off the recovery path. Raw syscalls on a stack of its own, as the keeper; its own seccomp filter. */

#define HOLDER_STACK (64 * 1024)
#define HOLDER_LINGER_MS 100
static uint32_t holder_ready; /* 1: fds closed, pidfd open, confined; 2: failed */
static uint32_t holder_quit;  /* the parent exits of its own accord: no linger (tsvmm_mm_holder_release) */
static struct tsvmm_bpf holder_bpf;
static struct sock_fprog holder_prog;
static const int holder_syscalls[] = {
    SYS_poll, SYS_futex, SYS_nanosleep, SYS_exit_group, SYS_exit, SYS_restart_syscall,
};

KEEPER_FN static void holder_done(uint32_t v) {
  __atomic_store_n(&holder_ready, v, __ATOMIC_RELEASE);
  raw6(SYS_futex, (long)&holder_ready, 1 /* FUTEX_WAKE */, 1, 0, 0, 0);
}

KEEPER_FN static int holder_main(void* arg) {
  (void)arg;
  uint64_t all = ~0ull;
  raw6(SYS_rt_sigprocmask, SIG_SETMASK, (long)&all, 0, 8 /* sigsetsize */, 0, 0);
  raw3(SYS_close_range, 0, ~0u, 0);
  /* The parent waits for holder_ready, so getppid() is still the driver-domain. */
  int pidfd = (int)raw3(SYS_pidfd_open, raw3(SYS_getppid, 0, 0, 0), 0, 0);
  if (pidfd < 0) { holder_done(2); k_exit(3); }
  if (holder_prog.len) {
    if (raw3(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0) < 0 || raw3(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &holder_prog) < 0) {
      holder_done(2);
      k_exit(4);
    }
  }
  holder_done(1);
  struct pollfd p;
  p.fd = pidfd; p.events = POLLIN; p.revents = 0;
  while (raw3(SYS_poll, &p, 1, -1) <= 0) {}
  /* Killed: a standby takes over now; the teardown waits until it has. */
  if (!__atomic_load_n(&holder_quit, __ATOMIC_ACQUIRE)) {
    struct { long sec, nsec; } linger = {0, HOLDER_LINGER_MS * 1000 * 1000};
    raw3(SYS_nanosleep, &linger, 0, 0);
  }
  k_exit(0);
}

void tsvmm_mm_holder_release(void) { __atomic_store_n(&holder_quit, 1, __ATOMIC_RELEASE); }

int tsvmm_mm_holder_start(uint32_t seccomp_mode) {
  static int started;
  if (started) return -16; /* EBUSY: one per process */
  holder_prog.len = 0;
  if (seccomp_mode) {
    uint32_t dflt = tsvmm_seccomp_action((int)seccomp_mode);
    tsvmm_bpf_begin(&holder_bpf, dflt);
    for (unsigned i = 0; i < sizeof holder_syscalls / sizeof holder_syscalls[0]; i++) tsvmm_bpf_allow(&holder_bpf, holder_syscalls[i]);
    if (tsvmm_bpf_end(&holder_bpf, dflt) < 0) return -7;
    holder_prog.len = holder_bpf.len;
    holder_prog.filter = holder_bpf.insn;
  }
  void* stack = mmap(NULL, HOLDER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -12;
  /* No CLONE_FILES: its own copy of the fd table, which it empties first thing. No exit signal:
   * it outlives its parent (then init reaps it), or dies with a failure its parent is told of. */
  int pid = clone(holder_main, (uint8_t*)stack + HOLDER_STACK, CLONE_VM, NULL);
  if (pid < 0) { munmap(stack, HOLDER_STACK); return -12; }
  struct timespec wait = {1, 0};
  while (__atomic_load_n(&holder_ready, __ATOMIC_ACQUIRE) == 0) {
    if (syscall(SYS_futex, &holder_ready, 0 /* FUTEX_WAIT */, 0, &wait, NULL, 0) < 0 && errno == ETIMEDOUT) break;
  }
  if (__atomic_load_n(&holder_ready, __ATOMIC_ACQUIRE) != 1) return -5; /* EIO: it failed (it exits) */
  started = 1;
  return pid;
}

/* ---- the layout, exported to TypeScript ---- */

const struct tsvmm_abi_const tsvmm_snap_constants[] = {
#define K(name) {"snap_" #name, (double)(name)},
#define SIZE(type, key) {"snap_sizeof_" key, (double)sizeof(struct type)},
#define OFF(type, field, key) {"snap_off_" key, (double)offsetof(struct type, field)},
    K(TSVMM_SNAP_MAGIC) K(TSVMM_SNAP_VERSION) K(TSVMM_MAX_VCPUS) K(TSVMM_MAX_MSRS) K(TSVMM_JOURNAL_SIZE)
    K(TSVMM_JOURNAL_LINE_MAX) K(TSVMM_REPLAY_DATA_MAX) K(TSVMM_EXIT_SENTINEL) K(TSVMM_JOURNAL_HANDLED) K(TSVMM_JOURNAL_LEN_MASK) K(TSVMM_JOURNAL_RING_SHIFT) K(TSVMM_JOURNAL_ACK_INTENT) K(TSVMM_RING_SIZE)
    K(TSVMM_SNAP_EMPTY) K(TSVMM_SNAP_ARMED) K(TSVMM_SNAP_SAVING) K(TSVMM_SNAP_SAVED) K(TSVMM_SNAP_FAILED)
    K(TSVMM_SNAP_STOPPED) K(TSVMM_KEEPER_BEAT_MS) K(TSVMM_KEEPER_EXIT_POLL) K(TSVMM_KEEPER_EXIT_SELFCHECK)
    K(TSVMM_REPAIRED_BODY) K(TSVMM_REPAIRED_LAYOUT) K(TSVMM_REPAIRED_MIRROR)
    {"snap_step_checksum", (double)TSVMM_STEP_CHECKSUM},
    {"keeper_clone_flags", (double)KEEPER_CLONE_FLAGS},
    K(TSVMM_PENDING_NONE) K(TSVMM_PENDING_REEXEC) K(TSVMM_PENDING_PIO_OUT) K(TSVMM_PENDING_MMIO_WRITE)
    {"snap_header_size", 4096},
    SIZE(tsvmm_snap_header, "header") SIZE(tsvmm_journal, "journal") SIZE(tsvmm_snap_vm, "vm")
    {"snap_sizeof_vcpu", (double)VCPU_SIZE},
    OFF(tsvmm_snap_header, magic, "h_magic") OFF(tsvmm_snap_header, version, "h_version")
    OFF(tsvmm_snap_header, state, "h_state") OFF(tsvmm_snap_header, ncpus, "h_ncpus")
    OFF(tsvmm_snap_header, vcpu_size, "h_vcpu_size") OFF(tsvmm_snap_header, vcpu_offset, "h_vcpu_offset")
    OFF(tsvmm_snap_header, vm_offset, "h_vm_offset") OFF(tsvmm_snap_header, vm_size, "h_vm_size")
    OFF(tsvmm_snap_header, journal_offset, "h_journal_offset") OFF(tsvmm_snap_header, checksum, "h_checksum")
    OFF(tsvmm_snap_header, generation, "h_generation") OFF(tsvmm_snap_header, keeper_pid, "h_keeper_pid")
    OFF(tsvmm_snap_header, vmm_pid, "h_vmm_pid") OFF(tsvmm_snap_header, fail_step, "h_fail_step")
    OFF(tsvmm_snap_header, fail_errno, "h_fail_errno") OFF(tsvmm_snap_header, fail_vcpu, "h_fail_vcpu")
    OFF(tsvmm_snap_header, died_ns, "h_died_ns") OFF(tsvmm_snap_header, saved_ns, "h_saved_ns")
    OFF(tsvmm_snap_header, nmsrs, "h_nmsrs") OFF(tsvmm_snap_header, total_size, "h_total_size")
    OFF(tsvmm_snap_header, wake_seq, "h_wake_seq") OFF(tsvmm_snap_header, claim_gen, "h_claim_gen")
    OFF(tsvmm_snap_header, mirror_offset, "h_mirror_offset") OFF(tsvmm_snap_header, checksum_b, "h_checksum_b")
    OFF(tsvmm_snap_header, keeper_beat, "h_keeper_beat")
    OFF(tsvmm_journal, commit, "j_commit") OFF(tsvmm_journal, replayed_generation, "j_replayed_generation")
    OFF(tsvmm_journal, ack_intent, "j_ack_intent")
    OFF(tsvmm_journal, line, "j_line")
    OFF(tsvmm_snap_vcpu, id, "v_id") OFF(tsvmm_snap_vcpu, pending, "v_pending")
    OFF(tsvmm_snap_vcpu, exit_reason, "v_exit_reason") OFF(tsvmm_snap_vcpu, journal_commit, "v_journal_commit")
    OFF(tsvmm_snap_vcpu, completed, "v_completed") OFF(tsvmm_snap_vcpu, complete_rc, "v_complete_rc")
    OFF(tsvmm_snap_vcpu, rip_before, "v_rip_before") OFF(tsvmm_snap_vcpu, rip_after, "v_rip_after")
    OFF(tsvmm_snap_vcpu, replay_addr, "v_replay_addr") OFF(tsvmm_snap_vcpu, replay_size, "v_replay_size")
    OFF(tsvmm_snap_vcpu, replay_count, "v_replay_count") OFF(tsvmm_snap_vcpu, replay_data, "v_replay_data")
    OFF(tsvmm_snap_vcpu, nmsrs_saved, "v_nmsrs_saved")
    OFF(tsvmm_snap_vcpu, mp_state, "v_mp_state") OFF(tsvmm_snap_vcpu, regs, "v_regs")
    OFF(tsvmm_snap_vcpu, sregs, "v_sregs") OFF(tsvmm_snap_vcpu, xsave, "v_xsave") OFF(tsvmm_snap_vcpu, xcrs, "v_xcrs")
    OFF(tsvmm_snap_vcpu, debugregs, "v_debugregs") OFF(tsvmm_snap_vcpu, lapic, "v_lapic")
    OFF(tsvmm_snap_vcpu, events, "v_events") OFF(tsvmm_snap_vcpu, msrs, "v_msrs")
    OFF(tsvmm_snap_vm, pit2, "vm_pit2") OFF(tsvmm_snap_vm, clock, "vm_clock") OFF(tsvmm_snap_vm, irqchip, "vm_irqchip")
    OFF(tsvmm_snap_vm, ring_saved, "vm_ring_saved") OFF(tsvmm_snap_vm, ring, "vm_ring")
    {"snap_sizeof_msrs_buf", (double)sizeof(struct tsvmm_msrs_buf)},
#undef K
#undef SIZE
#undef OFF
};
const uint64_t tsvmm_snap_constants_count = sizeof tsvmm_snap_constants / sizeof tsvmm_snap_constants[0];
