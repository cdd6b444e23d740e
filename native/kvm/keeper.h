// keeper.h: the vmm keeper and the layout of the snapshot memfd it writes.
//
// The keeper is a clone(CLONE_VM|CLONE_FILES|CLONE_PARENT) child of the vmm:
// it shares the vmm's address space and fd table but is a separate process, so
// it outlives a crash or SIGKILL of the vmm. It waits on a pidfd of the vmm;
// when the vmm dies it completes or records each vCPU's pending exit, saves
// every vCPU's and the VM's state into the snapshot memfd, marks the snapshot
// complete and exits. A new vmm restores from it (vmm/restore.ts).
//
// Snapshot memfd layout (version TSVMM_SNAP_VERSION), all little-endian:
//   [0, 4096)                           struct tsvmm_snap_header
//   [journal_offset, + ncpus * 4096)    struct tsvmm_journal, one per vCPU (written live by the vmm)
//   [vcpu_offset, + ncpus * vcpu_size)  struct tsvmm_snap_vcpu, one per vCPU (written by the keeper)
//   [vm_offset, + vm_size)              struct tsvmm_snap_vm
//   [mirror_offset, + body length)      a second copy of [vcpu_offset, vm_offset + vm_size)
// The checksum (CRC-32) covers [vcpu_offset, vm_offset + vm_size) and is stored
// twice (checksum, checksum_b); the keeper copies the sealed body to the mirror,
// so one flipped bit anywhere in either copy or either checksum word leaves a
// copy whose CRC holds: the restorer (restore.c tsvmm_snap_verify) repairs the
// first copy from it. The header's `state` is written last (SAVED) after the
// checksum, with a release store.
// Every offset and size is exported to TypeScript through the addon's constants
// (snap_* names, see keeper.c), so the layout is defined here only.
#pragma once
#include <stdint.h>
#include <linux/kvm.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TSVMM_SNAP_MAGIC 0x50414e53u /* 'SNAP' */
#define TSVMM_SNAP_VERSION 3u /* 2: tsvmm_snap_vm holds the coalesced ring; 3: the body kept twice (mirror_offset, checksum_b), keeper_beat */
/* The one MSR the keeper and restore treat apart (keeper.c tsc_at_clock, restore.c tsc_follow_clock). */
#define TSVMM_MSR_IA32_TSC 0x10u
#define TSVMM_MAX_VCPUS 256
#define TSVMM_MAX_MSRS 256
#define TSVMM_MAX_IRQFDS 64
#define TSVMM_JOURNAL_SIZE 4096
#define TSVMM_JOURNAL_LINE_MAX 3968
#define TSVMM_REPLAY_DATA_MAX 256

/* kvm_run.exit_reason the vCPU thread stores before each KVM_RUN: "no exit yet". */
#define TSVMM_EXIT_SENTINEL 0x7473766du /* 'tsvm' */
/* Journal commit word: handled bit | coalesced ring tag | committed serial line length. The ring tag
 * is 1 + the index of the VM's coalesced-PIO ring (KVM_COALESCED_MMIO_PAGE_OFFSET) up to which the
 * vCPU has consumed the ring into its line, stored with the line length in one word so the two can
 * never disagree after a crash; 0: the vCPU consumes no ring (vmm/coalesced.ts). */
#define TSVMM_JOURNAL_HANDLED 0x80000000u
#define TSVMM_JOURNAL_LEN_MASK 0xffffu
#define TSVMM_JOURNAL_RING_SHIFT 16
#define TSVMM_JOURNAL_RING_MASK 0xff0000u
/* Journal ack_intent: TSVMM_JOURNAL_ACK_INTENT | the device's ACK count (the high half of its state-page
 * isr word, contracts/state-page.ts) before the vCPU applies a guest write to InterruptACK, stored
 * before the atomic that applies it and cleared before the next KVM_RUN. A vmm killed between the two
 * leaves it; the next vmm replays the write only if that count is unchanged (vmm/restore.ts), so an
 * ACK is applied exactly once whether the native exit loop or JavaScript handled it. */
#define TSVMM_JOURNAL_ACK_INTENT 0x80000000u
/* The coalesced ring: one page (struct kvm_coalesced_mmio_ring), copied whole into the snapshot. */
#define TSVMM_RING_SIZE 4096

/* header.state */
enum {
  TSVMM_SNAP_EMPTY = 0,   /* formatted, no keeper armed yet */
  TSVMM_SNAP_ARMED = 1,   /* a keeper is watching the vmm */
  TSVMM_SNAP_SAVING = 2,  /* the vmm died, the keeper is saving */
  TSVMM_SNAP_SAVED = 3,   /* complete; checksum valid */
  TSVMM_SNAP_FAILED = 4,  /* the keeper hit an error: fail_step / fail_errno */
  TSVMM_SNAP_STOPPED = 5, /* the guest exited normally; the keeper exited without saving */
};

/* snap_vcpu.pending */
enum {
  TSVMM_PENDING_NONE = 0,      /* nothing pending, or completed in the kernel by the keeper */
  TSVMM_PENDING_REEXEC = 1,    /* an unhandled read (PIO in, MMIO read): the guest re-executes it */
  TSVMM_PENDING_PIO_OUT = 2,   /* an unhandled PIO write: completed, the new vmm replays it */
  TSVMM_PENDING_MMIO_WRITE = 3,/* an unhandled MMIO write: completed, the new vmm replays it */
};

/* The steps of a save (keeper.c) and a restore (restore.c), reported in header.fail_step /
 * tsvmm_restore_result.fail_step. One list: the enum and the names TypeScript prints
 * (tsvmm_step_name) come from it. X(NAME, text, ioctl): `ioctl` steps are named KVM_GET_<text> when
 * saving and KVM_SET_<text> when restoring. */
#define TSVMM_STEPS(X)                                                                                     \
  X(NONE, "none", 0) X(COMPLETE_RUN, "KVM_RUN (completing a pending exit)", 0) X(MP_STATE, "MP_STATE", 1)   \
  X(REGS, "REGS", 1) X(SREGS, "SREGS", 1) X(XSAVE, "XSAVE", 1) X(XCRS, "XCRS", 1)                           \
  X(DEBUGREGS, "DEBUGREGS", 1) X(LAPIC, "LAPIC", 1) X(MSRS, "MSRS", 1) X(VCPU_EVENTS, "VCPU_EVENTS", 1)      \
  X(PIT2, "PIT2", 1) X(CLOCK, "CLOCK", 1) X(IRQCHIP, "IRQCHIP", 1)                                         \
  X(REPLAY_TOO_BIG, "a pending PIO write too large to replay", 0)                                          \
  /* restore.c only */                                                                                     \
  X(CHECKSUM, "the checksum", 0) X(VCPU_ID, "the vCPU record id", 0) X(IRQFD, "KVM_IRQFD", 0)          \
  X(LAYOUT, "the snapshot layout", 0) X(RECORD, "a saved record's fields", 0)
enum {
#define TSVMM_STEP_ENUM(name, text, ioctl) TSVMM_STEP_##name,
  TSVMM_STEPS(TSVMM_STEP_ENUM)
#undef TSVMM_STEP_ENUM
  TSVMM_STEP_COUNT
};
/* "KVM_GET_REGS" (saving) / "KVM_SET_REGS" (restoring), "the checksum", ...; NULL past the list. */
const char* tsvmm_step_name(uint32_t step, int restoring);

struct tsvmm_snap_header {
  uint32_t magic;
  uint32_t version;
  uint32_t state;         /* TSVMM_SNAP_*; SAVED written last */
  uint32_t ncpus;
  uint32_t vcpu_size;     /* sizeof(struct tsvmm_snap_vcpu) */
  uint32_t vcpu_offset;
  uint32_t vm_offset;
  uint32_t vm_size;
  uint32_t journal_offset;
  uint32_t checksum;      /* CRC-32 of [vcpu_offset, vm_offset + vm_size) */
  uint32_t generation;    /* incremented by each save */
  uint32_t keeper_pid;
  uint32_t vmm_pid;
  uint32_t fail_step;
  int32_t fail_errno;
  uint32_t fail_vcpu;
  uint64_t died_ns;       /* CLOCK_MONOTONIC when the keeper saw the vmm die */
  uint64_t saved_ns;      /* CLOCK_MONOTONIC when the snapshot was complete */
  uint32_t nmsrs;         /* MSRs saved per vCPU (probed by the vmm) */
  uint32_t total_size;    /* bytes of the snapshot memfd this layout needs */
  /* Futex word: incremented (and FUTEX_WAKEd, shared) by the keeper when it has SAVED or FAILED, and
   * by the supervisor when it releases a claim. A warm-standby vmm waits on it (recovery/standby). */
  uint32_t wake_seq;
  /* The generation a restoring vmm claimed (compare-and-swap generation-1 -> generation): exactly one
   * vmm (the warm standby or a cold one) restores each saved snapshot. */
  uint32_t claim_gen;
  uint32_t mirror_offset; /* the second copy of the body (see the layout above) */
  uint32_t checksum_b;    /* the checksum again: a flip in one of the two words is not a lost snapshot */
  /* Bumped by an armed or dormant keeper every TSVMM_KEEPER_BEAT_MS while it waits, after checking
   * itself (its configuration's CRC, its own locals): a keeper that stops beating is hung or broken
   * while idle, and the supervisor replaces it before the vmm needs it (supervisor/vmm-lifecycle.ts). */
  uint32_t keeper_beat;
};

#define TSVMM_KEEPER_BEAT_MS 200
/* keeper exit codes (the supervisor reads them: supervisor/vmm-lifecycle.ts) */
#define TSVMM_KEEPER_EXIT_POLL 2      /* its poll() failed: its vmm may still live */
#define TSVMM_KEEPER_EXIT_SELFCHECK 5 /* it found itself corrupt while idle: its vmm lives, unprotected */

/* Written by the vmm's vCPU thread while it runs (shared memory, survives the vmm). */
struct tsvmm_journal {
  uint32_t commit;             /* TSVMM_JOURNAL_HANDLED | committed line length */
  uint32_t replayed_generation;/* the snapshot generation whose pending write this vCPU replayed */
  uint32_t ack_intent;         /* TSVMM_JOURNAL_ACK_INTENT | ACK count before this exit's InterruptACK, or 0 */
  uint32_t reserved[29];
  uint8_t line[TSVMM_JOURNAL_LINE_MAX]; /* the serial line being assembled (not yet written out) */
};

#ifndef __cplusplus
/* C only: these embed KVM structs with flexible array members, whose sizes C++ computes
 * differently (see abi.c). C++ code uses the offsets exported in the constants table. */
struct tsvmm_msrs_buf {
  uint32_t nmsrs;
  uint32_t pad;
  struct kvm_msr_entry entries[TSVMM_MAX_MSRS];
};

struct tsvmm_snap_vcpu {
  uint32_t id;
  uint32_t pending;        /* TSVMM_PENDING_* */
  uint32_t exit_reason;    /* kvm_run.exit_reason the keeper found */
  uint32_t journal_commit; /* the journal's commit word the keeper found */
  uint32_t completed;      /* 1 if the keeper ran KVM_RUN(immediate_exit) to complete an exit */
  uint32_t complete_rc;    /* -errno of that KVM_RUN (expect EINTR), or its exit reason */
  uint64_t rip_before;     /* RIP before and after the completing KVM_RUN (diagnostics) */
  uint64_t rip_after;
  /* the pending write to replay (PIO out or MMIO write) */
  uint64_t replay_addr;    /* port or guest-physical address */
  uint32_t replay_size;    /* access size */
  uint32_t replay_count;   /* PIO repeat count (1 for MMIO) */
  uint8_t replay_data[TSVMM_REPLAY_DATA_MAX];
  uint32_t nmsrs_saved;
  uint32_t pad;
  struct kvm_mp_state mp_state;
  struct kvm_regs regs;
  struct kvm_sregs sregs;
  struct kvm_xsave xsave;
  struct kvm_xcrs xcrs;
  struct kvm_debugregs debugregs;
  struct kvm_lapic_state lapic;
  struct kvm_vcpu_events events;
  struct tsvmm_msrs_buf msrs;
};

/* The index of IA32_TSC in a vCPU record's saved MSR list, or -1. */
static inline __attribute__((always_inline)) int tsvmm_snap_tsc_index(const struct tsvmm_snap_vcpu* v) {
  for (uint32_t k = 0; k < v->nmsrs_saved && k < TSVMM_MAX_MSRS; k++) {
    if (v->msrs.entries[k].index == TSVMM_MSR_IA32_TSC) return (int)k;
  }
  return -1;
}

/* `a` for KVM_GET/SET_DEVICE_ATTR of a vCPU's TSC offset (KVM_VCPU_TSC_OFFSET), read or written at `offset`. */
static inline __attribute__((always_inline)) void tsvmm_tsc_offset_attr(struct kvm_device_attr* a, uint64_t* offset) {
  a->flags = 0;
  a->group = KVM_VCPU_TSC_CTRL;
  a->attr = KVM_VCPU_TSC_OFFSET;
  a->addr = (uint64_t)(uintptr_t)offset;
}

/* The fixed-size per-vCPU state, in the order the keeper saves it and restore.c sets it: MP_STATE
 * first (it can change LAPIC state); then the MSRs (variable size, handled apart) and VCPU_EVENTS
 * last. One table for both directions, so the two can never disagree. */
struct tsvmm_vcpu_blob {
  uint32_t step;            /* TSVMM_STEP_* reported if it fails */
  unsigned long get, set;   /* the KVM ioctls */
  uint32_t offset;          /* in struct tsvmm_snap_vcpu */
};
#define TSVMM_VCPU_BLOBS 7
extern const struct tsvmm_vcpu_blob tsvmm_vcpu_blobs[TSVMM_VCPU_BLOBS];

struct tsvmm_snap_vm {
  struct kvm_pit_state2 pit2;
  struct kvm_clock_data clock;
  struct kvm_irqchip irqchip[3]; /* PIC master, PIC slave, IOAPIC */
  /* The VM's coalesced ring as the dead vmm left it (entries it had not consumed), if it had one:
   * the next vmm replays them from the journal's ring tag (vmm/coalesced.ts). */
  uint32_t ring_saved;
  uint32_t ring_pad;
  uint8_t ring[TSVMM_RING_SIZE];
};
#endif

/* What the vmm tells its keeper (filled before keeper_start). */
struct tsvmm_keeper_config {
  int vm_fd;
  int ncpus;
  int vcpu_fd[TSVMM_MAX_VCPUS];
  struct kvm_run* run[TSVMM_MAX_VCPUS];
  uint8_t* snap;            /* mapping of the whole snapshot memfd */
  uint32_t snap_size;
  /* The vmm's mapping of the VM's coalesced ring (shared with the keeper: CLONE_VM), or NULL. */
  const uint8_t* coalesced_ring;
  uint32_t nmsrs;
  uint32_t msr_index[TSVMM_MAX_MSRS];
  int vmm_pidfd;            /* pidfd of the vmm */
  /* The VM's irqfds: deassigned first thing after the vmm died, so an interrupt the driver-domain
   * signals from then on waits in its eventfd for the next VM (an eventfd backs one irqfd at a time). */
  uint32_t nirqfds;
  int irqfd_fd[TSVMM_MAX_IRQFDS];
  uint32_t irqfd_gsi[TSVMM_MAX_IRQFDS];
  int stop_efd;             /* eventfd: the guest exited normally, exit without saving */
  /* 0: dormant (a warm standby's keeper, started before its vmm holds the guest): if the vmm dies,
   * exit without saving. tsvmm_keeper_arm sets it when the vmm takes the guest over. */
  uint32_t armed;
  int keeper_pid;
  int keeper_pidfd;         /* the vmm's pidfd of its keeper: readable once that keeper exited */
  void* stack;              /* the keeper's stack (reused by the next keeper once this one exited) */
  /* 0: no filter of its own; TSVMM_SECCOMP_KILL / _LOG (seccomp.h): the keeper installs the
   * tightest filter of all, built before the clone from the fixed list in keeper.c, on top of the
   * vmm's that it inherits. */
  uint32_t seccomp;
  /* CRC-32 of [vm_fd, armed): what the keeper acts on, sealed by tsvmm_keeper_start / _restart and
   * checked by the keeper at every beat and by _restart before it clones from it. */
  uint32_t cfg_crc;
};

/* Layout helpers. */
uint32_t tsvmm_snap_total_size(uint32_t ncpus);
/* The header's layout fields (ncpus, sizes, offsets) as this build lays out `ncpus` vCPUs. */
void tsvmm_snap_layout(uint32_t ncpus, struct tsvmm_snap_header* h);
void tsvmm_snap_format(uint8_t* snap, uint32_t ncpus);
uint32_t tsvmm_crc32(const uint8_t* p, uint64_t n);
/* Fills the CRC table tsvmm_crc32 uses (idempotent). */
void tsvmm_snap_format_crc_init(void);

/* Clones the keeper; returns its pid or -errno. cfg must stay valid (static). A dormant keeper
 * (armed = 0 in cfg) leaves the snapshot header alone until tsvmm_keeper_arm. */
int tsvmm_keeper_start(struct tsvmm_keeper_config* cfg);
/* Arms a dormant keeper: from now on this vmm's death is saved (header state ARMED). */
void tsvmm_keeper_arm(struct tsvmm_keeper_config* cfg);
/* Clones a new, armed keeper for a running vmm whose keeper died (killed or stopped and killed by the
 * supervisor): same configuration, same stack. Its pid, -EBUSY while the previous keeper has not
 * exited (two keepers must never save the same death), or -errno. */
int tsvmm_keeper_restart(struct tsvmm_keeper_config* cfg);

/* ---- restore.c: putting a SAVED snapshot into this vmm's fresh VM ---- */
struct tsvmm_restore_config {
  int vm_fd;
  int ncpus;
  int vcpu_fd[TSVMM_MAX_VCPUS];
  uint8_t* snap;            /* mapping of the whole snapshot memfd */
  uint32_t nirqfds;         /* registered once the VM holds the guest's state */
  int irqfd_fd[TSVMM_MAX_IRQFDS];
  uint32_t irqfd_gsi[TSVMM_MAX_IRQFDS];
};

#define TSVMM_MAX_REFUSED_MSRS 16
struct tsvmm_restore_result {
  uint32_t repaired;        /* tsvmm_snap_verify's repairs: TSVMM_REPAIRED_* bits */
  uint32_t generation;      /* the generation restored */
  uint32_t fail_step;       /* TSVMM_STEP_* of the failing ioctl, 0 if none */
  int32_t fail_errno;
  int32_t fail_vcpu;        /* -1: the VM */
  uint32_t nrefused;        /* MSRs KVM refused to set (skipped) */
  uint32_t refused_msr[TSVMM_MAX_REFUSED_MSRS];
  uint64_t died_ns;         /* the header's, as saved (arming the next keeper clears them) */
  uint64_t saved_ns;
  uint64_t claimed_ns;      /* CLOCK_MONOTONIC: the takeover claimed the snapshot */
  uint64_t resumed_ns;      /* CLOCK_MONOTONIC: the vCPU threads were released */
  uint64_t entered_ns;      /* CLOCK_MONOTONIC: that first KVM_RUN was entered */
  uint32_t ran;             /* takeover: 1 if it also made the calling vCPU's first KVM_RUN */
  int32_t run_rc;           /* that KVM_RUN's result: 0 (an exit is in kvm_run) or -errno */
};

/* What a warm takeover does besides restoring (tsvmm_takeover). */
struct tsvmm_takeover_opts {
  uint32_t* go;             /* the vCPU threads' release word: set to 1 and FUTEX_WAKEd */
  int notify_timerfd;       /* armed (notify_delay_ns) once the guest runs: the vmm's main thread
                               learns of the takeover without being woken on the vCPU's way to KVM_RUN */
  uint64_t notify_delay_ns;
  /* The calling thread's vCPU: unless it has an MMIO write to replay first (the device models are in
   * TypeScript), its first KVM_RUN is made here, under the vCPU loop's journal protocol. */
  int run_vcpu;             /* index, or -1 */
  struct kvm_run* run;      /* its kvm_run mapping */
  struct tsvmm_restore_result* publish; /* a copy of the result, written before the notify timer is armed */
};

/* tsvmm_snap_verify's repairs */
#define TSVMM_REPAIRED_BODY 1u   /* the first copy failed its CRC: copied back from the mirror */
#define TSVMM_REPAIRED_LAYOUT 2u /* a layout field of the header was not this build's: rewritten */
#define TSVMM_REPAIRED_MIRROR 4u /* the mirror failed its CRC: copied from the first copy */

/* Validates a SAVED snapshot before anything reads it, and repairs what one copy can repair: the
 * header's layout fields (offsets and sizes, known to this build for `ncpus`), the body from its
 * mirror (whichever copy's CRC matches either checksum word), then every record's id and
 * pending-write fields. 0 (with the repairs in *repaired), or -1 with the failure in `res`
 * (TSVMM_STEP_LAYOUT: magic or version; _CHECKSUM: neither copy holds; _VCPU_ID, _RECORD). */
int tsvmm_snap_verify(uint8_t* snap, uint32_t ncpus, uint32_t* repaired, struct tsvmm_restore_result* res);

/* Verifies (tsvmm_snap_verify) and sets every vCPU's state, the VM's (PIT, clock, irqchips), and
 * the irqfds. The caller has claimed the generation. 0, or -1 with the failure in `res`. */
int tsvmm_restore(const struct tsvmm_restore_config* cfg, struct tsvmm_restore_result* res);

/* Waits up to timeout_ms (FUTEX_WAIT on header.wake_seq, which the keeper bumps when it begins saving
 * and when it has SAVED or FAILED; woken to a save in progress, it waits for its end on a CPU, up to
 * 2 ms, yielding) and claims the saved generation (compare-and-swap claim_gen generation-1 -> generation).
 * A cold restore (standby = 0) returns as soon as the keeper is done, whatever the outcome; a standby
 * waits for a SAVED generation nobody claimed. Returns the state found (TSVMM_SNAP_*), *claimed = 1
 * if this caller won it; -1 if the time ran out first. */
int tsvmm_snap_claim(uint8_t* snap, int timeout_ms, int standby, uint32_t* claimed);

/* A live snapshot (tsvmm snapshot): the vmm's vCPUs are parked out of KVM_RUN and the driver-domain
 * is stopped. Copies the snapshot memfd (header, journals) into `image` (cfg->snap_size bytes) and
 * saves every vCPU's and the VM's state there through the keeper's own code, state SAVED and the
 * generation after the live one: a fresh snapshot memfd holding `image` restores like a keeper's
 * save. 0, or -1 with the failure in the image's header (fail_step, fail_errno, fail_vcpu). */
int tsvmm_snap_save_live(const struct tsvmm_keeper_config* cfg, uint8_t* image);

/* A warm standby's takeover, in the calling thread and without returning to JavaScript: waits up to
 * timeout_ms for a SAVED snapshot nobody claimed, claims it, restores it, arms `keeper` (dormant
 * until then), releases the vCPU threads (stores 1 to *go and FUTEX_WAKEs it), arms the notify
 * timer and, where it can, enters the guest (see tsvmm_takeover_opts).
 * 1: resumed; 0: timed out, nothing claimed; -1: claimed but the restore failed (see `res`). */
int tsvmm_takeover(const struct tsvmm_restore_config* cfg, struct tsvmm_keeper_config* keeper,
                   const struct tsvmm_takeover_opts* opts, int timeout_ms, struct tsvmm_restore_result* res);

/* The driver-domain's address-space holder (keeper.c): a CLONE_VM child that closes every fd it was
 * cloned with and exits a while after its parent, so the parent's death does not wait for its
 * address space's teardown. seccomp_mode as the keeper's (0 none, 1 kill, 2 log). Its pid, or
 * -errno (-EBUSY: already started; -EIO: it failed to set itself up). Call before any I/O is set up
 * and before the process confines itself (clone). */
int tsvmm_mm_holder_start(uint32_t seccomp_mode);
/* The driver-domain exits of its own accord: its holder exits with it, without lingering. */
void tsvmm_mm_holder_release(void);

struct tsvmm_abi_const {
  const char* name;
  double value;
};
extern const struct tsvmm_abi_const tsvmm_snap_constants[];
extern const uint64_t tsvmm_snap_constants_count;

#ifdef __cplusplus
}
#endif
