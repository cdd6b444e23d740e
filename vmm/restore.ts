/**
 * What a restoring vmm does in TypeScript around the native restore
 * (native/kvm/restore.c sets the saved vCPU and VM state): the MSR list the
 * keeper saves (KVM_GET_MSR_INDEX_LIST, less what this KVM refuses to read),
 * the replay of a pending guest write, and the serial line journal that makes
 * that replay exactly-once.
 */
import * as fs from 'fs';
import { abi, errnoCode, ioctl } from '../native/kvm';
import { Vcpu } from '../kvm/vcpu';
import { encodeMsrs } from '../kvm/structs';
import { Journal, Pending, PendingWrite, SNAP } from '../contracts/snapshot';
import type { Platform } from './platform';

/** KVM_GET_MSR_INDEX_LIST on /dev/kvm: every MSR KVM can save and restore. */
export function msrIndexList(kvmFd: number): number[] {
  let n = 64;
  for (;;) {
    const b = Buffer.alloc(4 + 4 * n);
    b.writeUInt32LE(n, 0);
    try {
      ioctl(kvmFd, 'KVM_GET_MSR_INDEX_LIST', b);
    } catch (e) {
      if (errnoCode(e) !== 'E2BIG') throw e;
      n = Math.max(b.readUInt32LE(0), n * 2);
      continue;
    }
    const count = b.readUInt32LE(0);
    return Array.from({ length: count }, (_, i) => b.readUInt32LE(4 + 4 * i));
  }
}

/**
 * The MSRs of `list` this vCPU can read (KVM_GET_MSRS stops at the first MSR
 * it refuses, and PVM refuses some it lists), in save/restore order: by index,
 * which puts IA32_TSC (0x10) before IA32_TSC_DEADLINE (0x6e0).
 */
export function probeMsrs(vcpu: Vcpu, list: number[], max: number): number[] {
  const ok: number[] = [];
  for (const index of [...new Set(list)].sort((a, b) => a - b)) {
    const b = encodeMsrs([{ index, data: 0n }]);
    try {
      if (ioctl(vcpu.fd, 'KVM_GET_MSRS', b) === 1) ok.push(index);
    } catch { /* refused */ }
  }
  return ok.slice(0, max);
}

/**
 * Replays the guest write that was in flight when the old vmm died (the
 * keeper completed it in the kernel, so the guest will not repeat it).
 * An InterruptACK the old vmm had already applied (its journal's ack intent,
 * `ackIntent`, names an ACK count that has moved since: keeper.h
 * TSVMM_JOURNAL_ACK_INTENT) is not applied again. Returns a description, or
 * undefined if there was nothing to replay.
 */
export function replayPendingWrite(platform: Platform, s: PendingWrite, ackIntent = 0): string | undefined {
  const r = s.replay;
  if (!r) return undefined;
  const dv = new DataView(r.data.buffer, r.data.byteOffset, r.data.byteLength);
  const read = (at: number, size: number) =>
    size === 1 ? dv.getUint8(at) : size === 2 ? dv.getUint16(at, true) : size === 4 ? dv.getUint32(at, true) : Number(dv.getBigUint64(at, true) & 0xffffffffn);
  if (s.pending === Pending.PIO_OUT) {
    for (let i = 0; i < r.count; i++) platform.pioWrite(r.addr, r.size, read(i * r.size, r.size));
    return `PIO out port 0x${r.addr.toString(16)} size ${r.size} x${r.count}`;
  }
  if (s.pending === Pending.MMIO_WRITE) {
    if (platform.mmioWriteApplied(r.addr, ackIntent)) return `MMIO write 0x${r.addr.toString(16)} len ${r.size} (applied before the vmm died: not replayed)`;
    platform.mmioWrite(r.addr, r.size, read(0, Math.min(r.size, 8)));
    return `MMIO write 0x${r.addr.toString(16)} len ${r.size}`;
  }
  return undefined;
}

/**
 * The serial line a vCPU is assembling, kept in its journal (shared memory)
 * instead of the JS heap, and the journal protocol around KVM_RUN:
 *   beforeRun(): kvm_run.exit_reason = sentinel, then commit = line length (handled bit clear);
 *   handled():   commit = line length | HANDLED, one store after the exit's side effects.
 * A byte of output goes into the line at `len` and only becomes part of it
 * with the handled store, so an OUT the keeper finds unhandled can be replayed
 * (or re-executed) without doubling the byte. A completed line is written out
 * before `handled()`: if the vmm dies between the write and the store the line
 * can appear twice (at-least-once), never torn or lost.
 */
export class SerialLineJournal {
  private len: number;
  /** A byte was pushed since the last settle() (by the exit, or drained from the coalesced ring before it). */
  private grew = false;
  /** The coalesced ring tag (contracts/snapshot.ts Journal.ringTag), shifted into place. */
  private ring: number;
  private readonly exitReasonOffset: number;

  /** Called once, after the first line went out (TSVMM_START_DEBUG's `first serial line`). */
  firstWrite?: () => void;

  /** `dropped(n, err)`: the serial sink refused a line (a full disk, /dev/full, a closed pipe): the guest runs on. */
  constructor(private readonly journal: Journal, private readonly outFd: number, private readonly dropped: (n: number, err: Error) => void = () => undefined) {
    this.len = journal.lineLength;
    this.ring = journal.ringTag << SNAP.RING_SHIFT;
    this.exitReasonOffset = abi('offsetof_kvm_run_exit_reason');
  }

  push(b: number): void {
    this.journal.line[this.len++] = b;
    this.grew = true;
    if (b === 10 || this.len >= SNAP.LINE_MAX) this.flush();
  }

  /**
   * The end of an exit (or a kick): a part line goes out when this exit wrote nothing (the guest's
   * burst of output is over: a shell's prompt ends no line), or at once when `always` (several
   * vCPUs drive the UART by interrupt: a part line one of them held would come out after the bytes
   * the next one wrote). Whole lines go out as they end (push), written before they are committed,
   * so a vmm killed in between repeats a whole line. A part line is committed first (`commit`:
   * handled() at the end of an exit, commitLine() on a kick) and written after, so a vmm killed in
   * between loses it rather than repeating a piece of a line: that window, before the write starts,
   * is a few instructions, the other one the whole write.
   */
  settle(always: boolean, commit: () => void): void {
    if (this.len > 0 && (always || !this.grew)) {
      const n = this.len;
      this.len = 0;
      commit();
      this.write(n);
    }
    this.grew = false;
  }

  flush(): void {
    if (this.len) this.write(this.len);
    this.len = 0;
  }

  private write(n: number): void {
    try {
      fs.writeSync(this.outFd, this.journal.line, 0, n);
      if (this.firstWrite) { const f = this.firstWrite; this.firstWrite = undefined; f(); }
    } catch (e) {
      this.dropped(n, e as Error);
    }
  }

  beforeRun(run: DataView): void {
    run.setUint32(this.exitReasonOffset, SNAP.SENTINEL, true);
    if (Atomics.load(this.journal.ackIntent, 0)) Atomics.store(this.journal.ackIntent, 0, 0);
    Atomics.store(this.journal.commit, 0, this.len | this.ring);
  }

  /** commit = line length, handled bit clear: the line grew while an exit is still being handled. */
  commitLine(): void {
    Atomics.store(this.journal.commit, 0, this.len | this.ring);
  }

  /**
   * The coalesced ring is consumed up to `index` (-1: this vCPU consumes none), committed with the
   * line (handled bit clear) in one store: a byte drained from the ring is in the line exactly when
   * its entry counts as consumed.
   */
  commitRing(index: number): void {
    this.ring = index < 0 ? 0 : (index + 1) << SNAP.RING_SHIFT;
    Atomics.store(this.journal.commit, 0, this.len | this.ring);
  }

  /** The ring index the committed line has consumed up to; undefined: no tag (contracts/snapshot.ts). */
  ringIndex(): number | undefined {
    return this.ring ? (this.ring >>> SNAP.RING_SHIFT) - 1 : undefined;
  }

  handled(): void {
    Atomics.store(this.journal.commit, 0, (this.len | this.ring | SNAP.HANDLED) | 0);
  }
}
