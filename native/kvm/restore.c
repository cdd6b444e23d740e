// restore.c: the keeper's mirror image (see keeper.h for the layout). Puts a
// SAVED snapshot into this vmm's fresh VM: per vCPU, in the order production
// VMMs use (after CPUID, which the vmm set when it created the vCPU): MP_STATE,
// REGS, SREGS, XSAVE, XCRS, DEBUGREGS, LAPIC, MSRS, VCPU_EVENTS; per VM: PIT2,
// CLOCK, IRQCHIP x3; then the irqfds. And a warm standby's whole takeover —
// wait for the keeper's save, claim it, restore, arm this vmm's keeper,
// release the vCPU threads — in one native call, so nothing between the old
// vmm's death and the guest running again waits for JavaScript.
//
// Compiled as C for the same reason as keeper.c: the KVM structs with
// flexible arrays must have the kernel's sizes.
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <linux/futex.h>
#include <linux/kvm.h>

#include "keeper.h"

#define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long futex(uint32_t* word, int op, uint32_t val, const struct timespec* timeout) {
  return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}

static int fail(struct tsvmm_restore_result* res, uint32_t step, int vcpu, int err) {
  res->fail_step = step;
  res->fail_vcpu = vcpu;
  res->fail_errno = err;
  return -1;
}

#define SET(step, fd, req, ptr) \
  do { if (ioctl((fd), (req), (ptr)) < 0) return fail(res, (step), i, errno); } while (0)

/* KVM_SET_MSRS sets entries in order and stops at the first it refuses: note it, set the rest. */
static int set_msrs(int fd, const struct tsvmm_msrs_buf* saved, uint32_t count, int i, struct tsvmm_restore_result* res) {
  static struct tsvmm_msrs_buf buf; /* 4 KiB: off the stack; one restore at a time per process */
  uint32_t n = count > TSVMM_MAX_MSRS ? TSVMM_MAX_MSRS : count; /* the MSRs the keeper read */
  const struct kvm_msr_entry* next = saved->entries;
  while (n) {
    memset(&buf, 0, offsetof(struct tsvmm_msrs_buf, entries));
    buf.nmsrs = n;
    memcpy(buf.entries, next, n * sizeof *next);
    int r = ioctl(fd, KVM_SET_MSRS, &buf);
    if (r < 0) return fail(res, TSVMM_STEP_MSRS, i, errno);
    if ((uint32_t)r >= n) break;
    if (res->nrefused < TSVMM_MAX_REFUSED_MSRS) res->refused_msr[res->nrefused] = next[r].index;
    res->nrefused++;
    next += r + 1;
    n -= (uint32_t)r + 1;
  }
  return 0;
}

/* A record's fields that the restore and the replay act on, beyond what KVM itself checks. */
static int record_ok(const struct tsvmm_snap_vcpu* v) {
  if (v->nmsrs_saved > TSVMM_MAX_MSRS || v->nmsrs_saved > v->msrs.nmsrs) return 0;
  switch (v->pending) {
    case TSVMM_PENDING_NONE: case TSVMM_PENDING_REEXEC: return 1;
    case TSVMM_PENDING_PIO_OUT:
      return (v->replay_size == 1 || v->replay_size == 2 || v->replay_size == 4) && v->replay_count >= 1 &&
             (uint64_t)v->replay_size * v->replay_count <= TSVMM_REPLAY_DATA_MAX && v->replay_addr <= 0xffff;
    case TSVMM_PENDING_MMIO_WRITE:
      return v->replay_size >= 1 && v->replay_size <= 8 && v->replay_count == 1;
    default: return 0;
  }
}

int tsvmm_snap_verify(uint8_t* snap, uint32_t ncpus, uint32_t* repaired, struct tsvmm_restore_result* res) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)snap;
  *repaired = 0;
  if (h->magic != TSVMM_SNAP_MAGIC || h->version != TSVMM_SNAP_VERSION) return fail(res, TSVMM_STEP_LAYOUT, -1, EPROTO);
  if (ncpus == 0 || ncpus > TSVMM_MAX_VCPUS) return fail(res, TSVMM_STEP_LAYOUT, -1, EINVAL);
  /* The offsets and sizes are this build's for ncpus: a header that says otherwise was overwritten. */
  struct tsvmm_snap_header want;
  memset(&want, 0, sizeof want);
  tsvmm_snap_layout(ncpus, &want);
#define FIX(f) if (h->f != want.f) { h->f = want.f; *repaired |= TSVMM_REPAIRED_LAYOUT; }
  FIX(ncpus) FIX(vcpu_size) FIX(journal_offset) FIX(vcpu_offset) FIX(vm_offset) FIX(vm_size) FIX(total_size) FIX(mirror_offset)
#undef FIX
  tsvmm_snap_format_crc_init();
  uint64_t len = (uint64_t)h->vm_offset + h->vm_size - h->vcpu_offset;
  uint8_t* body = snap + h->vcpu_offset;
  uint32_t sum = tsvmm_crc32(body, len);
  if (sum != h->checksum && sum != h->checksum_b) {
    const uint8_t* mirror = snap + h->mirror_offset;
    uint32_t m = tsvmm_crc32(mirror, len);
    if (m != h->checksum && m != h->checksum_b) return fail(res, TSVMM_STEP_CHECKSUM, -1, EBADMSG);
    memcpy(body, mirror, len);
    *repaired |= TSVMM_REPAIRED_BODY;
  }
  for (uint32_t i = 0; i < ncpus; i++) {
    const struct tsvmm_snap_vcpu* v = (const struct tsvmm_snap_vcpu*)(body + (uint64_t)i * h->vcpu_size);
    if (v->id != i) return fail(res, TSVMM_STEP_VCPU_ID, (int)i, EINVAL);
    if (!record_ok(v)) return fail(res, TSVMM_STEP_RECORD, (int)i, EINVAL);
  }
  return 0;
}

/* After KVM_SET_CLOCK: moves each vCPU's guest TSC to where the restored kvm-clock stands (its saved
 * TSC, which the keeper took at the instant of the saved clock, plus the clock time since the saved
 * value), through KVM_VCPU_TSC_OFFSET. The MSRs were set a while before the clock (every vCPU's
 * state in turn); without this the TSC would lag kvm-clock by that while, and a guest reads a TSC
 * that steps against kvm-clock as a skew ("Marking clocksource 'tsc' as unstable"). Needs what the
 * keeper needed (KVM_CLOCK_HOST_TSC, KVM_VCPU_TSC_OFFSET); otherwise the TSC stays as the MSRs set it.
 * tsvmm never scales the guest TSC: guest TSC = host TSC + offset. */
static void tsc_follow_clock(const struct tsvmm_restore_config* cfg, const struct tsvmm_snap_header* h, const struct kvm_clock_data* saved) {
  if (!(saved->flags & KVM_CLOCK_HOST_TSC)) return;
  struct kvm_clock_data now;
  memset(&now, 0, sizeof now);
  if (ioctl(cfg->vm_fd, KVM_GET_CLOCK, &now) < 0 || !(now.flags & KVM_CLOCK_HOST_TSC) || now.clock < saved->clock) return;
  for (int i = 0; i < cfg->ncpus; i++) {
    const struct tsvmm_snap_vcpu* v = (const struct tsvmm_snap_vcpu*)(cfg->snap + h->vcpu_offset + (uint64_t)i * h->vcpu_size);
    int khz = ioctl(cfg->vcpu_fd[i], KVM_GET_TSC_KHZ, 0);
    if (khz <= 0) return;
    int k = tsvmm_snap_tsc_index(v);
    if (k < 0) continue;
    uint64_t tsc = v->msrs.entries[k].data + (now.clock - saved->clock) * (uint64_t)khz / 1000000u;
    uint64_t offset = tsc - now.host_tsc;
    struct kvm_device_attr a;
    tsvmm_tsc_offset_attr(&a, &offset);
    if (ioctl(cfg->vcpu_fd[i], KVM_SET_DEVICE_ATTR, &a) < 0) return;
  }
}

int tsvmm_restore(const struct tsvmm_restore_config* cfg, struct tsvmm_restore_result* res) {
  const struct tsvmm_snap_header* h = (const struct tsvmm_snap_header*)cfg->snap;
  int i = -1;
  res->generation = h->generation;
  res->died_ns = h->died_ns;
  res->saved_ns = h->saved_ns;
  if (tsvmm_snap_verify(cfg->snap, (uint32_t)cfg->ncpus, &res->repaired, res) < 0) return -1;
  for (i = 0; i < cfg->ncpus; i++) {
    const struct tsvmm_snap_vcpu* v = (const struct tsvmm_snap_vcpu*)(cfg->snap + h->vcpu_offset + (uint64_t)i * h->vcpu_size);
    int fd = cfg->vcpu_fd[i];
    for (int b = 0; b < TSVMM_VCPU_BLOBS; b++) {
      const struct tsvmm_vcpu_blob* blob = &tsvmm_vcpu_blobs[b];
      SET(blob->step, fd, blob->set, (const uint8_t*)v + blob->offset);
    }
    if (set_msrs(fd, &v->msrs, v->nmsrs_saved, i, res) < 0) return -1;
    SET(TSVMM_STEP_VCPU_EVENTS, fd, KVM_SET_VCPU_EVENTS, &v->events);
  }
  i = -1;
  const struct tsvmm_snap_vm* vm = (const struct tsvmm_snap_vm*)(cfg->snap + h->vm_offset);
  SET(TSVMM_STEP_PIT2, cfg->vm_fd, KVM_SET_PIT2, &vm->pit2);
  /* Only the clock value: flags from GET (e.g. KVM_CLOCK_TSC_STABLE) are not settable. */
  struct kvm_clock_data clock = vm->clock;
  clock.flags = 0;
  SET(TSVMM_STEP_CLOCK, cfg->vm_fd, KVM_SET_CLOCK, &clock);
  tsc_follow_clock(cfg, h, &vm->clock);
  for (int c = 0; c < 3; c++) SET(TSVMM_STEP_IRQCHIP, cfg->vm_fd, KVM_SET_IRQCHIP, &vm->irqchip[c]);

  /* An eventfd backs one irqfd at a time: the dead vmm's VM lets go of it as its keeper deassigns
   * (first thing) and exits (just after the save), usually within a fraction of a millisecond. */
  for (uint32_t k = 0; k < cfg->nirqfds; k++) {
    struct kvm_irqfd d;
    memset(&d, 0, sizeof d);
    d.fd = (uint32_t)cfg->irqfd_fd[k];
    d.gsi = cfg->irqfd_gsi[k];
    uint64_t deadline = now_ns() + 2000000000ull;
    while (ioctl(cfg->vm_fd, KVM_IRQFD, &d) < 0) {
      if (errno != EBUSY || now_ns() > deadline) return fail(res, TSVMM_STEP_IRQFD, -1, errno);
      struct timespec pause = {0, 50000};
      nanosleep(&pause, NULL);
    }
  }
  return 0;
}

/* How long a vmm the keeper woke as it began saving waits for SAVED without sleeping. */
#define CLAIM_SPIN_NS 2000000ull

int tsvmm_snap_claim(uint8_t* snap, int timeout_ms, int standby, uint32_t* claimed) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)snap;
  uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
  uint64_t spin_until = 0; /* set once a wake-up found the keeper saving */
  int woken = 0;
  *claimed = 0;
  for (;;) {
    uint32_t seq = __atomic_load_n(&h->wake_seq, __ATOMIC_ACQUIRE);
    uint32_t state = __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
    if (state == TSVMM_SNAP_SAVED) {
      uint32_t gen = h->generation;
      uint32_t expected = gen - 1;
      /* Exactly one vmm (a warm standby or a cold one) restores each saved generation. */
      if (__atomic_compare_exchange_n(&h->claim_gen, &expected, gen, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        *claimed = 1;
        return (int)state;
      }
    }
    if (!standby && state != TSVMM_SNAP_ARMED && state != TSVMM_SNAP_SAVING) return (int)state;
    uint64_t now = now_ns();
    if (now >= deadline) return -1;
    /* The keeper wakes waiters when it begins saving (keeper.c) and again when it is done: in
     * between (~0.1-0.2 ms of its CPU) this thread stays on a CPU, so it claims the moment SAVED
     * is stored instead of waiting for the second wake-up and a CPU. Bounded (a keeper preempted
     * for long is slept on); yielding, so a keeper queued on this CPU runs first. Only after a
     * wake-up: a --restore vmm finds SAVING while the supervisor still reads the snapshot in. */
    if (woken && state == TSVMM_SNAP_SAVING) {
      if (!spin_until) spin_until = now + CLAIM_SPIN_NS;
      if (now < spin_until) {
        sched_yield();
        continue;
      }
    }
    uint64_t left = deadline - now;
    struct timespec ts = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
    futex(&h->wake_seq, FUTEX_WAIT, seq, &ts); /* not PRIVATE: the keeper is another process */
    woken = 1;
  }
}

int tsvmm_takeover(const struct tsvmm_restore_config* cfg, struct tsvmm_keeper_config* keeper,
                   const struct tsvmm_takeover_opts* opts, int timeout_ms, struct tsvmm_restore_result* res) {
  struct tsvmm_snap_header* h = (struct tsvmm_snap_header*)cfg->snap;
  uint32_t claimed;
  if (tsvmm_snap_claim(cfg->snap, timeout_ms, 1, &claimed) < 0) return 0;
  res->claimed_ns = now_ns();
  if (tsvmm_restore(cfg, res) < 0) return -1;
  /* The vCPU record is read before arming: from then on this vmm's keeper may rewrite the snapshot. */
  int run_here = 0;
  if (opts->run_vcpu >= 0 && opts->run_vcpu < cfg->ncpus && opts->run) {
    const struct tsvmm_snap_vcpu* v = (const struct tsvmm_snap_vcpu*)(cfg->snap + h->vcpu_offset + (uint64_t)opts->run_vcpu * h->vcpu_size);
    /* An MMIO write (a virtio register) must be replayed before the guest runs on: the driver-domain
     * or another vCPU could see the register without it. A PIO write (the platform's ports) is
     * replayed by the vCPU loop at its next exit (vmm/vcpu-thread.ts). */
    run_here = v->pending != TSVMM_PENDING_MMIO_WRITE;
  }
  tsvmm_keeper_arm(keeper);
  res->resumed_ns = now_ns();
  __atomic_store_n(opts->go, 1, __ATOMIC_RELEASE);
  futex(opts->go, FUTEX_WAKE, 0x7fffffff, NULL);
  if (opts->publish) {
    *opts->publish = *res;
    __atomic_thread_fence(__ATOMIC_RELEASE);
  }
  if (opts->notify_timerfd >= 0) {
    struct itimerspec when;
    memset(&when, 0, sizeof when);
    when.it_value.tv_sec = (time_t)(opts->notify_delay_ns / 1000000000ull);
    when.it_value.tv_nsec = (long)(opts->notify_delay_ns % 1000000000ull);
    timerfd_settime(opts->notify_timerfd, 0, &when, NULL);
  }
  if (run_here) {
    /* The vCPU loop's beforeRun (vmm/restore.ts SerialLineJournal): exit_reason = sentinel, then the
     * journal's commit word = the committed line length, handled bit clear. */
    struct tsvmm_journal* j = (struct tsvmm_journal*)(cfg->snap + h->journal_offset + (uint64_t)opts->run_vcpu * TSVMM_JOURNAL_SIZE);
    __atomic_store_n(&opts->run->exit_reason, TSVMM_EXIT_SENTINEL, __ATOMIC_RELAXED);
    __atomic_store_n(&j->commit, __atomic_load_n(&j->commit, __ATOMIC_ACQUIRE) & ~TSVMM_JOURNAL_HANDLED, __ATOMIC_RELEASE);
    res->ran = 1;
    res->entered_ns = now_ns();
    res->run_rc = ioctl(cfg->vcpu_fd[opts->run_vcpu], KVM_RUN, 0) < 0 ? -errno : 0;
  }
  return 1;
}
