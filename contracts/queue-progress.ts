/**
 * One virtqueue's recovery record inside the shared state page: the
 * vhost-user "inflight I/O tracking" region for a split ring
 * (QEMU docs/interop/vhost-user.rst), written only by the driver-domain.
 *
 * Layout (at `base`, 32 + 16 * capacity bytes, u32 little-endian):
 *   +0 last_avail_idx  +4 used_idx  +8 last_batch_head  +12 signalled_used
 *   +16 next submit counter lo/hi   +24 queue size at activation  +28 flags
 *   +32 inflight[head] (16 bytes): inflight flag (atomic), reserved, counter lo/hi
 */

import { Words, isPow2, u64, lo32, hi32 } from './page-words';

const P = { lastAvail: 0, usedIdx: 4, lastBatchHead: 8, signalledUsed: 12, counterLo: 16, counterHi: 20, queueSize: 24, flags: 28, inflight: 32 } as const;
const INFLIGHT_ENTRY = 16;

/** signalledUsed value meaning "no interrupt decision recorded yet". */
export const NO_SIGNAL = 0xffffffff;

/** Bytes of a record whose in-flight table has `capacity` entries. */
export function queueProgressSize(capacity: number): number {
  return P.inflight + INFLIGHT_ENTRY * capacity;
}

/** Thrown only for programming errors (a head outside the table). */
export class QueueProgressError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'QueueProgressError';
  }
}

/**
 * One queue's recovery record (vhost-user inflight tracking for a split
 * ring). The driver-domain is the only writer. Protocol:
 *   pop:      markInflight(head) then lastAvailIdx++
 *   complete: lastBatchHead = head; write used elem; publish used->idx;
 *             clearInflight(head); usedIdx = used->idx
 * A restart reconciles the window between publishing used->idx and
 * recording usedIdx, then resubmits `inflightInOrder()`.
 */
export class QueueProgress {
  /**
   * Plain (not Atomics) word accesses: the driver-domain is this record's
   * only writer and it is read by another process only after the writer died
   * (a restarted or standby driver-domain). Compiled JavaScript keeps stores
   * in program order and x86 keeps stores in order (TSO), so a process killed
   * between two stores leaves exactly the prefix the protocol below expects;
   * Atomics.load/store are calls into V8 builtins (not inlined) on the
   * per-request path.
   */
  private readonly p: Words;
  constructor(u32: Uint32Array, readonly base: number, readonly capacity: number) {
    this.p = new Words(u32, base);
  }
  get lastAvailIdx(): number { return this.p.get(P.lastAvail) & 0xffff; }
  set lastAvailIdx(v: number) { this.p.set(P.lastAvail, v & 0xffff); }
  get usedIdx(): number { return this.p.get(P.usedIdx) & 0xffff; }
  set usedIdx(v: number) { this.p.set(P.usedIdx, v & 0xffff); }
  get lastBatchHead(): number { return this.p.get(P.lastBatchHead); }
  set lastBatchHead(v: number) { this.p.set(P.lastBatchHead, v); }
  /** used idx at the last interrupt decision (EVENT_IDX), or NO_SIGNAL. */
  get signalledUsed(): number { return this.p.get(P.signalledUsed); }
  set signalledUsed(v: number) { this.p.set(P.signalledUsed, v); }
  get queueSize(): number { return this.p.get(P.queueSize); }
  set queueSize(v: number) { this.p.set(P.queueSize, v); }
  get flags(): number { return this.p.get(P.flags); }
  set flags(v: number) { this.p.set(P.flags, v); }
  /** Next submit counter to hand out (monotonic, up to 2^53). */
  get nextCounter(): number { return u64(this.p.get(P.counterLo), this.p.get(P.counterHi)); }
  set nextCounter(v: number) {
    this.p.set(P.counterHi, hi32(v));
    this.p.set(P.counterLo, lo32(v));
  }

  private eoff(head: number): number {
    if (!Number.isInteger(head) || head < 0 || head >= this.capacity) throw new QueueProgressError(`inflight head ${head} out of range`);
    return P.inflight + head * INFLIGHT_ENTRY;
  }
  isInflight(head: number): boolean { return this.p.get(this.eoff(head)) === 1; }
  counterOf(head: number): number {
    const o = this.eoff(head);
    return u64(this.p.get(o + 8), this.p.get(o + 12));
  }
  /**
   * Record `head` as submitted; returns its submit counter. Counter first,
   * then the next counter, flag last: a process killed between any two of
   * these stores leaves a page that validates (an in-flight head's counter
   * is always below the next one; at worst a counter goes unused).
   */
  markInflight(head: number): number {
    const o = this.eoff(head);
    const c = this.nextCounter;
    this.p.set(o + 12, hi32(c));
    this.p.set(o + 8, lo32(c));
    this.nextCounter = c + 1;
    this.p.set(o, 1);
    return c;
  }
  clearInflight(head: number): void { this.p.set(this.eoff(head), 0); }

  /** In-flight heads (< queueSize) sorted by submit counter: the resubmission order. */
  inflightInOrder(): number[] {
    const n = Math.min(this.queueSize, this.capacity);
    const heads: number[] = [];
    for (let h = 0; h < n; h++) if (this.isInflight(h)) heads.push(h);
    return heads.sort((a, b) => this.counterOf(a) - this.counterOf(b));
  }

  /** Clear everything for a queue of `queueSize` entries (activation or device reset). */
  reset(queueSize: number): void {
    for (let h = 0; h < this.capacity; h++) {
      const o = P.inflight + h * INFLIGHT_ENTRY;
      this.p.set(o, 0);
      this.p.set(o + 8, 0);
      this.p.set(o + 12, 0);
    }
    this.lastAvailIdx = 0;
    this.usedIdx = 0;
    this.lastBatchHead = 0;
    this.signalledUsed = NO_SIGNAL;
    this.nextCounter = 1;
    this.flags = 0;
    this.queueSize = queueSize;
  }

  /** Invariant violations that can be seen without guest memory. */
  validate(): string[] {
    const e: string[] = [];
    const size = this.queueSize;
    if (size > this.capacity) {
      e.push(`queue size ${size} exceeds inflight table ${this.capacity}`);
      return e;
    }
    if (size !== 0 && !isPow2(size)) e.push(`queue size ${size} not a power of 2`);
    if (this.p.get(P.lastAvail) > 0xffff || this.p.get(P.usedIdx) > 0xffff) e.push('ring index above 16 bits');
    const next = this.nextCounter;
    let count = 0;
    for (let h = 0; h < this.capacity; h++) {
      const f = this.p.get(P.inflight + h * INFLIGHT_ENTRY);
      if (f > 1) e.push(`inflight flag of head ${h} is ${f}`);
      if (f === 1) {
        if (h >= size) e.push(`head ${h} in flight beyond queue size ${size}`);
        if (this.counterOf(h) >= next) e.push(`head ${h} counter ${this.counterOf(h)} >= next ${next}`);
        count++;
      }
    }
    const outstanding = (this.lastAvailIdx - this.usedIdx) & 0xffff;
    if (outstanding > size) e.push(`avail index ${this.lastAvailIdx} is ${outstanding} ahead of used ${this.usedIdx}, more than queue size ${size}`);
    // pop marks in flight before advancing last_avail (one more in flight than outstanding, at most);
    // a completed batch is cleared head by head before used_idx is recorded (fewer in flight than
    // outstanding, by up to a batch: Virtqueue's reconcile settles that against the used ring).
    if (count > outstanding + 1) e.push(`${count} heads in flight but ${outstanding} outstanding`);
    return e;
  }
}

