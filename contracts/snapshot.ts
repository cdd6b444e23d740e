/**
 * The snapshot memfd the vmm's keeper writes when the vmm dies, and the
 * per-vCPU exit journal the vmm writes while it runs. The layout is defined
 * once, in native/kvm/keeper.h; every offset here comes from the addon's
 * constants (snap_* names), so TypeScript never restates it.
 *
 * Held by the supervisor (it creates and formats it, and reads the header to
 * tell why a vmm died); mapped by the vmm (its vCPU threads write the journal,
 * a restoring vmm reads and verifies the saved state).
 */
import { abi, native } from '../native/kvm';

/** The addon functions implemented in native/kvm/keeper-binding.cc. */
export interface NativeKeeper {
  snapshotTotalSize(ncpus: number): number;
  snapshotFormat(fd: number, ncpus: number): void;
  keeperStart(o: {
    vmFd: number; snapFd: number; vcpus: { fd: number; run: bigint }[]; msrs: number[]; irqfds?: { fd: number; gsi: number }[]; dormant?: boolean;
    /** The keeper's own seccomp filter (native/kvm/keeper.c): 0 none, 1 kill, 2 log (contracts/confinement.ts). */
    seccomp?: number;
  }): number;
  keeperStop(): void;
  /** A new, armed keeper for this running vmm once its keeper has exited: its pid (throws EBUSY while the old one lives). */
  keeperRestart(): number;
  /** Sets a claimed snapshot's state into this VM (native/kvm/restore.c). status 0, or -1: failed. */
  restore(cfg: RestoreConfig): RestoreResult;
  /**
   * A warm standby's wait and takeover, blocking, native end to end: waits up to `timeoutMs` for an
   * unclaimed SAVED snapshot, claims it, restores it, arms the dormant keeper, releases `go`.
   * status 1: resumed; 0: timed out; -1: the restore failed.
   */
  takeover(cfg: RestoreConfig & TakeoverOptions, go: Int32Array, timeoutMs: number): RestoreResult;
  /**
   * A cold restore's wait for the keeper (FUTEX_WAIT on the header's wake_seq, as the warm takeover)
   * and its claim of the saved generation. state: what the keeper left (SnapState), -1 if it did not
   * finish within timeoutMs; claimed: this vmm won the generation.
   */
  snapshotClaim(snap: ArrayBuffer, timeoutMs: number): { state: number; claimed: boolean };
  /** Validates a claimed snapshot and repairs what one copy can (native/kvm/restore.c tsvmm_snap_verify). status 0 or -1. */
  snapshotVerify(snap: ArrayBuffer, ncpus: number): RestoreResult;
  /** keeper.h's name of a save or restore step (KVM_GET_REGS / KVM_SET_REGS, "the checksum", ...). */
  snapshotStepName(step: number, restoring: boolean): string | undefined;
  /** The whole snapshot of this (paused) vmm, saved now by the keeper's code: the keeper's layout, state SAVED or FAILED. */
  snapshotSaveLive(): ArrayBuffer;
  /** The result of this process's successful takeover (published before `notifyFd` is armed). */
  lastTakeover(): RestoreResult;
  /** A non-blocking CLOCK_MONOTONIC timerfd (a takeover's notifyFd). */
  timerfdCreate(): number;
  waitExit(pid: number): Promise<{ code?: number; signal?: number; error?: string }>;
  /** Blocking FUTEX_WAIT (shared) on the u32 at `off` of a mapping or a typed array: 0, or -errno (-ETIMEDOUT = -110). */
  futexWait(buf: ArrayBuffer | Int32Array, off: number, expected: number, timeoutMs: number): number;
  futexWake(buf: ArrayBuffer | Int32Array, off: number): number;
  /** pidfd_open(pid): fd or -errno. */
  pidfdOpen(pid: number): number;
  /** Blocking poll for POLLIN: 1, 0 on timeout, or -errno. */
  pollIn(fd: number, timeoutMs: number): number;
  /** The driver-domain's address-space holder (native/kvm/keeper.c): its pid, or -errno. */
  mmHoldStart(seccompMode: number): number;
  /** This process exits of its own accord: its holder exits with it. */
  mmHoldRelease(): void;
  /** CRC-32 (same as contracts/crc32.ts), native. */
  crc32(buf: ArrayBuffer | ArrayBufferView, off: number, len: number): number;
  /** _exit(code), skipping Node's exit path (which joins worker threads). */
  exitNow(code: number): never;
}
export const keeper = native as unknown as NativeKeeper;

export interface RestoreConfig { vmFd: number; snap: ArrayBuffer; vcpuFds: number[]; irqfds: { fd: number; gsi: number }[] }
export interface TakeoverOptions {
  /** A timerfd the takeover arms (2 ms) once the guest runs: how the vmm's main thread learns of it. */
  notifyFd?: number;
  /** The calling thread's vCPU: the takeover makes its first KVM_RUN unless it has a write to replay. */
  runVcpu?: { id: number; run: bigint };
}

export interface RestoreResult {
  status: number; generation: number; failStep: number; failErrno: number; failVcpu: number;
  /** tsvmm_snap_verify's repairs (REPAIRED bits; describeRepairs). */
  repaired: number;
  /** MSRs KVM refused to set (skipped). */
  refusedMsrs: number[];
  /** The keeper's CLOCK_MONOTONIC stamps (the header's, before the next keeper was armed), then the restorer's. */
  diedNs: bigint; savedNs: bigint; claimedNs: bigint; resumedNs: bigint;
  /** takeover(): it made the first KVM_RUN of `runVcpu` (entered at enteredNs); runRc is its result. */
  ran: boolean; enteredNs: bigint; runRc: number;
}

const c = (n: string) => abi(`snap_${n}`);

export const SNAP = {
  MAGIC: c('TSVMM_SNAP_MAGIC'), VERSION: c('TSVMM_SNAP_VERSION'), MAX_VCPUS: c('TSVMM_MAX_VCPUS'),
  HEADER_SIZE: c('header_size'), JOURNAL_SIZE: c('TSVMM_JOURNAL_SIZE'), LINE_MAX: c('TSVMM_JOURNAL_LINE_MAX'),
  SENTINEL: c('TSVMM_EXIT_SENTINEL'), HANDLED: c('TSVMM_JOURNAL_HANDLED'), REPLAY_DATA_MAX: c('TSVMM_REPLAY_DATA_MAX'),
  VCPU_SIZE: c('sizeof_vcpu'), VM_SIZE: c('sizeof_vm'),
  LEN_MASK: c('TSVMM_JOURNAL_LEN_MASK'), RING_SHIFT: c('TSVMM_JOURNAL_RING_SHIFT'), RING_SIZE: c('TSVMM_RING_SIZE'),
  ACK_INTENT: c('TSVMM_JOURNAL_ACK_INTENT'),
} as const;

export const SnapState = {
  EMPTY: c('TSVMM_SNAP_EMPTY'), ARMED: c('TSVMM_SNAP_ARMED'), SAVING: c('TSVMM_SNAP_SAVING'),
  SAVED: c('TSVMM_SNAP_SAVED'), FAILED: c('TSVMM_SNAP_FAILED'), STOPPED: c('TSVMM_SNAP_STOPPED'),
} as const;
const STATE_NAME: Record<number, string> = Object.fromEntries(Object.entries(SnapState).map(([k, v]) => [v, k.toLowerCase()]));

export const Pending = {
  NONE: c('TSVMM_PENDING_NONE'), REEXEC: c('TSVMM_PENDING_REEXEC'),
  PIO_OUT: c('TSVMM_PENDING_PIO_OUT'), MMIO_WRITE: c('TSVMM_PENDING_MMIO_WRITE'),
} as const;

export const REPAIRED = { BODY: c('TSVMM_REPAIRED_BODY'), LAYOUT: c('TSVMM_REPAIRED_LAYOUT') } as const;

/** What tsvmm_snap_verify repaired, in words ('' when nothing). */
export function describeRepairs(bits: number): string {
  const out: string[] = [];
  if (bits & REPAIRED.BODY) out.push('the saved records failed their checksum: restored from the mirror copy');
  if (bits & REPAIRED.LAYOUT) out.push("a layout field of the header was overwritten: rewritten with this build's");
  return out.join('; ');
}

/** The keeper's idle beat period and its exit codes (keeper.h). */
export const KEEPER = {
  BEAT_MS: c('TSVMM_KEEPER_BEAT_MS'), EXIT_POLL: c('TSVMM_KEEPER_EXIT_POLL'), EXIT_SELFCHECK: c('TSVMM_KEEPER_EXIT_SELFCHECK'),
} as const;

const stepName = (step: number, restoring: boolean) => keeper.snapshotStepName(step, restoring) ?? `step ${step}`;

/** Why native restore() / takeover() failed, as one line. */
export function restoreFailure(r: RestoreResult): string {
  if (r.failStep === c('step_checksum')) return 'snapshot checksum mismatch: refusing to resume a corrupt guest';
  return `restoring ${r.failVcpu >= 0 ? `vCPU ${r.failVcpu}` : 'the VM'} failed at ${stepName(r.failStep, true)} (errno ${r.failErrno})`;
}

const H = (f: string) => c(`off_h_${f}`);
const V = (f: string) => c(`off_${f}`);

/** What a vCPU record says was in flight: the pending kind and, for a write, what to replay. */
export interface PendingWrite {
  pending: number;
  replay?: { addr: number; size: number; count: number; data: Uint8Array };
}

export class SnapshotError extends Error {
  constructor(message: string) { super(message); this.name = 'SnapshotError'; }
}

export function snapshotSize(ncpus: number): number { return keeper.snapshotTotalSize(ncpus); }

/** What a vCPU record says was in flight: the pending kind and, for a write, what to replay. */
export function decodePendingWrite(rec: Uint8Array): PendingWrite {
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const pending = dv.getUint32(V('v_pending'), true);
  if (pending !== Pending.PIO_OUT && pending !== Pending.MMIO_WRITE) return { pending };
  const size = dv.getUint32(V('v_replay_size'), true);
  const count = dv.getUint32(V('v_replay_count'), true);
  const at = V('v_replay_data');
  return {
    pending,
    replay: { addr: Number(dv.getBigUint64(V('v_replay_addr'), true)), size, count, data: rec.slice(at, at + Math.min(size * count, SNAP.REPLAY_DATA_MAX)) },
  };
}

/** A view over a mapping of the snapshot memfd. */
export class SnapshotView {
  readonly dv: DataView;
  readonly bytes: Uint8Array;
  private readonly i32: Int32Array;

  constructor(readonly buf: ArrayBuffer) {
    this.dv = new DataView(buf);
    this.bytes = new Uint8Array(buf);
    this.i32 = new Int32Array(buf);
  }

  /** Maps the snapshot memfd `fd` (all of it, or just the header). */
  static map(fd: number, ncpus: number, headerOnly = false): SnapshotView {
    return new SnapshotView(native.mmap(fd, headerOnly ? SNAP.HEADER_SIZE : snapshotSize(ncpus), 0, true));
  }

  private u32(off: number): number { return Atomics.load(this.i32, off >> 2) >>> 0; }
  get magic(): number { return this.u32(H('magic')); }
  get state(): number { return this.u32(H('state')); }
  get stateName(): string { return STATE_NAME[this.state] ?? `unknown(${this.state})`; }
  get ncpus(): number { return this.u32(H('ncpus')); }
  get generation(): number { return this.u32(H('generation')); }
  get keeperPid(): number { return this.u32(H('keeper_pid')); }
  get vmmPid(): number { return this.u32(H('vmm_pid')); }
  get diedNs(): bigint { return this.dv.getBigUint64(H('died_ns'), true); }
  get savedNs(): bigint { return this.dv.getBigUint64(H('saved_ns'), true); }
  get journalOffset(): number { return this.u32(H('journal_offset')); }
  /** Bumped by an idle keeper every KEEPER.BEAT_MS after checking itself (keeper.h keeper_beat). */
  get keeperBeat(): number { return this.u32(H('keeper_beat')); }
  /** The futex word the keeper bumps when it has saved (or failed). */
  get claimGen(): number { return this.u32(H('claim_gen')); }

  /**
   * Claims the saved snapshot `generation` for this vmm: exactly one vmm (a warm standby or a cold
   * restore) wins each generation. False if another already did.
   */
  claim(generation: number): boolean {
    const i = H('claim_gen') >> 2;
    return Atomics.compareExchange(this.i32, i, (generation - 1) | 0, generation | 0) === ((generation - 1) | 0);
  }

  /**
   * tsvmm run --restore, before the vmm starts: the memfd says SAVING, as while a keeper saves, so a
   * restoring vmm waits for it (claimSaved) while the supervisor still reads the snapshot in.
   */
  markLoading(): void { Atomics.store(this.i32, H('state') >> 2, SnapState.SAVING); }

  /** tsvmm run --restore: the saved state is in place (written with state SAVING): SAVED, and the waiting vmm woken. */
  publishSaved(): void {
    Atomics.store(this.i32, H('state') >> 2, SnapState.SAVED);
    Atomics.add(this.i32, H('wake_seq') >> 2, 1);
    keeper.futexWake(this.buf, H('wake_seq'));
  }

  /** The supervisor: the vmm that claimed `generation` died before resuming it; let another claim it. */
  releaseClaim(generation: number): void {
    Atomics.compareExchange(this.i32, H('claim_gen') >> 2, generation | 0, (generation - 1) | 0);
    Atomics.add(this.i32, H('wake_seq') >> 2, 1);
    keeper.futexWake(this.buf, H('wake_seq'));
  }

  /**
   * The supervisor, when no live vmm can hold a claim (the one it started found `generation` claimed
   * and no standby runs): the claim word is stale or corrupt; set it back so the next vmm can claim.
   */
  resetClaim(generation: number): void {
    Atomics.store(this.i32, H('claim_gen') >> 2, (generation - 1) | 0);
    Atomics.add(this.i32, H('wake_seq') >> 2, 1);
    keeper.futexWake(this.buf, H('wake_seq'));
  }

  /** The keeper's failure as one line. */
  failure(): string {
    const step = this.u32(H('fail_step'));
    const errno = this.dv.getInt32(H('fail_errno'), true);
    const vcpu = this.dv.getInt32(H('fail_vcpu'), true);
    const where = vcpu >= 0 ? `vCPU ${vcpu}` : 'the VM';
    const err = errno > 1000 ? `unexpected exit reason ${errno - 1000}` : `errno ${errno}`;
    return `the keeper failed to save ${where}: ${stepName(step, false)} (${err})`;
  }

  /**
   * Checks magic, version and that the layout matches this build and `ncpus`. `restoring`: only
   * magic and version; a restore validates the rest and repairs a flipped offset or size
   * (verifyClaimed), since a saved header it cannot trust is not a reason to lose the guest.
   */
  checkLayout(ncpus: number, restoring = false): void {
    if (this.magic !== SNAP.MAGIC) throw new SnapshotError('snapshot memfd has a bad magic (not formatted, or corrupted)');
    const version = this.u32(H('version'));
    if (version !== SNAP.VERSION) throw new SnapshotError(`snapshot layout version ${version}, this vmm reads ${SNAP.VERSION}`);
    if (restoring) return;
    if (this.ncpus !== ncpus) throw new SnapshotError(`snapshot is for ${this.ncpus} vCPUs, this VM has ${ncpus}`);
    const want = { vcpu_size: SNAP.VCPU_SIZE, vm_size: SNAP.VM_SIZE, total_size: snapshotSize(ncpus) } as Record<string, number>;
    for (const [k, v] of Object.entries(want)) {
      if (this.u32(H(k)) !== v) throw new SnapshotError(`snapshot header ${k}=${this.u32(H(k))}, this build expects ${v}`);
    }
  }

  /**
   * A cold restore: waits for the keeper to finish (the futex it wakes), then claims the saved
   * generation. Returns it, or undefined if another vmm (a warm standby) claimed it first; throws a
   * SnapshotError that says why when there is nothing good to restore. The checksum is verified
   * once, by the native restore that sets the state.
   */
  claimSaved(ncpus: number, timeoutMs = 3000): number | undefined {
    this.checkLayout(ncpus, true);
    const { state, claimed } = keeper.snapshotClaim(this.buf, timeoutMs);
    if (state < 0) throw new SnapshotError(`the keeper did not finish saving within ${timeoutMs} ms (state ${this.stateName}; keeper pid ${this.keeperPid})`);
    if (state === SnapState.FAILED) throw new SnapshotError(this.failure());
    if (state === SnapState.EMPTY) throw new SnapshotError('no snapshot: the vmm died before its keeper was armed');
    if (state === SnapState.STOPPED) throw new SnapshotError('no snapshot: the guest had already stopped');
    if (state !== SnapState.SAVED) throw new SnapshotError(`snapshot state ${STATE_NAME[state] ?? state}`);
    return claimed ? this.generation : undefined;
  }

  /**
   * A claimed snapshot, before anything reads its records: validated, and repaired from its mirror
   * or this build's layout where one copy was corrupt (native/kvm/restore.c). Returns what was
   * repaired, in words ('' if nothing); throws a SnapshotError when nothing good is left.
   */
  verifyClaimed(ncpus: number): string {
    const r = keeper.snapshotVerify(this.buf, ncpus);
    if (r.status < 0) throw new SnapshotError(restoreFailure(r));
    return describeRepairs(r.repaired);
  }

  /** The MSR indices vCPU 0's record saved (every vCPU saves the same list): the next keeper's list. */
  savedMsrs(): number[] {
    const at = this.u32(H('vcpu_offset'));
    const n = this.u32(at + V('v_nmsrs_saved'));
    const entries = at + V('v_msrs') + 8; // struct kvm_msrs: nmsrs, pad, then 16-byte entries
    return Array.from({ length: n }, (_, k) => this.dv.getUint32(entries + 16 * k, true));
  }

  /** vCPU `id`'s pending write as saved (live memory: read it before this vmm's keeper can save again). */
  pendingWrite(id: number): PendingWrite {
    const at = this.u32(H('vcpu_offset')) + id * SNAP.VCPU_SIZE;
    return decodePendingWrite(this.bytes.subarray(at, at + SNAP.VCPU_SIZE));
  }

  /** vCPU `id`'s saved record in one line (TSVMM_RESTORE_DEBUG). */
  describeVcpu(id: number): string {
    const at = this.u32(H('vcpu_offset')) + id * SNAP.VCPU_SIZE;
    const f = (n: string) => this.u32(at + V(n));
    const rip = (n: string) => this.dv.getBigUint64(at + V(n), true).toString(16);
    const w = this.pendingWrite(id);
    return `vCPU ${id}: pending=${w.pending} exit=${f('v_exit_reason')} handled=${f('v_journal_commit') >>> 31} completed=${f('v_completed')} ` +
      `rip 0x${rip('v_rip_before')} -> 0x${rip('v_rip_after')}` +
      `${w.replay ? ` replay addr=0x${w.replay.addr.toString(16)} size=${w.replay.size} data=${Buffer.from(w.replay.data).toString('hex')}` : ''}`;
  }

  /**
   * The VM's coalesced ring as the dead vmm's keeper copied it (struct kvm_coalesced_mmio_ring, one
   * page), or undefined if that vmm had none. Live memory: read it before this vmm's keeper can save.
   */
  savedRing(): Uint8Array | undefined {
    const at = this.u32(H('vm_offset'));
    if (this.u32(H('vm_size')) < V('vm_ring') + SNAP.RING_SIZE || !this.u32(at + V('vm_ring_saved'))) return undefined;
    return this.bytes.slice(at + V('vm_ring'), at + V('vm_ring') + SNAP.RING_SIZE);
  }

  /** vCPU `id`'s journal, written by its thread while it runs. */
  journal(id: number): Journal {
    return new Journal(this.buf, this.journalOffset + id * SNAP.JOURNAL_SIZE);
  }
}

/**
 * A vCPU's exit journal (keeper.h struct tsvmm_journal). `commit` holds the
 * handled bit, the coalesced ring tag and the committed length of the serial
 * line being assembled, in one word, so "handled", "the byte is in the line"
 * and "the ring entry is consumed" change together.
 */
export class Journal {
  readonly commit: Int32Array;
  readonly replayedGeneration: Int32Array;
  /** SNAP.ACK_INTENT | the device's ACK count before this exit's InterruptACK write, or 0 (keeper.h). */
  readonly ackIntent: Int32Array;
  readonly line: Uint8Array;

  constructor(buf: ArrayBuffer, at: number) {
    this.commit = new Int32Array(buf, at + c('off_j_commit'), 1);
    this.replayedGeneration = new Int32Array(buf, at + c('off_j_replayed_generation'), 1);
    this.ackIntent = new Int32Array(buf, at + c('off_j_ack_intent'), 1);
    this.line = new Uint8Array(buf, at + c('off_j_line'), SNAP.LINE_MAX);
  }

  /** Committed line length. */
  get lineLength(): number { return Atomics.load(this.commit, 0) & SNAP.LEN_MASK; }

  /** 1 + the ring index up to which this vCPU consumed the coalesced ring; 0: none (vmm/coalesced.ts). */
  get ringTag(): number { return (Atomics.load(this.commit, 0) >>> SNAP.RING_SHIFT) & 0xff; }
}
