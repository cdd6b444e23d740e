/**
 * Split virtqueue (virtio 1.x, section 2.7), device side, over GuestMemory.
 *
 * Every guest-supplied value is validated before use: ring indexes, head and
 * `next` indexes, descriptor addresses and lengths (through GuestMemory),
 * chain length (loop detection), total byte count, indirect tables (feature
 * negotiated, not nested, not combined with NEXT, length a non-zero multiple
 * of 16 within the cap) and the readable-before-writable order. Each
 * descriptor field is read exactly once (no double fetch).
 *
 * Failure policy: a malformed *chain* fails that request only (`bad-chain`:
 * the head is known, the caller completes it with an error and the queue
 * keeps serving). A malformed *ring* (avail idx moved by more than the queue
 * size, head out of range, a head already in flight, bad ring addresses, a
 * corrupted progress record) makes the queue `broken` and sets the device's
 * DEVICE_NEEDS_RESET status bit (virtio 1.2 2.1.2); it then does nothing
 * until the guest resets the device. Nothing here throws.
 *
 * Queue progress (last_avail_idx, used_idx, signalled used, the in-flight
 * table with submit counters, the last batch head) lives in the state page's
 * QueueProgress record, not in JS fields, so a restarted driver-domain can
 * `activate()` again, reconcile the last batch and resubmit in-flight heads
 * in submit order.
 *
 * Memory ordering: avail->idx is read with Atomics.load before the ring entry
 * and descriptors (acquire); used elements are written before used->idx is
 * published with Atomics.store (release, a full fence on x86), and the
 * EVENT_IDX used_event/avail_event fields are read after that store.
 * Byte order: virtio 1.x is little-endian; typed arrays are host order, and
 * the host is x86-64.
 */

import { GuestMemory } from '../contracts/memory';
import { DeviceSlot, QueueProgress, NO_SIGNAL } from '../contracts/state-page';
import {
  VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY,
  VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTQ_DESC_SIZE, descTableSize, availRingSize, usedRingSize, hasFeature,
} from '../contracts/virtio-mmio-layout';

/** A validated descriptor chain: zero-copy views of guest memory. */
export interface Chain {
  head: number;
  /** Device-readable buffers, in chain order. */
  readable: Uint8Array[];
  /** Device-writable buffers, in chain order (all after the readable ones). */
  writable: Uint8Array[];
  readableLength: number;
  writableLength: number;
}

export type PopResult =
  | { kind: 'empty' }
  | { kind: 'chain'; chain: Chain }
  /** The head is in flight; complete it (push(head, len)) with an error. `writable` holds the writable buffers validated before the fault. */
  | { kind: 'bad-chain'; head: number; error: string; writable: Uint8Array[] }
  /** The queue is unusable until a device reset; NEEDS_RESET is set. */
  | { kind: 'broken'; error: string };

export interface VirtqueueOptions {
  /** Cap on the bytes one chain may describe (default 64 MiB). */
  maxChainBytes?: number;
  /** Cap on entries of an indirect table (default 1024). */
  maxIndirect?: number;
}

export type ActivateResult =
  | { ok: true; recovered: boolean; resubmit: number[] }
  | { ok: false; error: string; broken: boolean };

/**
 * A chain as segments of guest RAM (region index into GuestMemory.regions,
 * byte offset in that region, length), filled in place by popSegments() and
 * segmentsAt(): no views or arrays are allocated per chain. For per-frame
 * hot paths that hand host addresses to the kernel or copy into one region;
 * validated exactly as pop() validates. Segments [0, firstWritable) are
 * device-readable, the rest writable.
 */
export class ChainSegments {
  head = 0;
  count = 0;
  firstWritable = 0;
  readableLength = 0;
  writableLength = 0;
  /** Why the last walk returned 'bad-chain' or 'broken'. */
  error = '';
  // Fixed-type arrays, doubled by grow() when a long chain fills them (rare): every store in the
  // walk is in bounds and of one type, so optimized code warmed up on another instance fits this one.
  region = new Uint32Array(16);
  offset = new Float64Array(16);
  length = new Uint32Array(16);

  /** Doubles the capacity, keeping the segments so far. */
  grow(): void {
    const cap = this.region.length * 2;
    const region = new Uint32Array(cap);
    const offset = new Float64Array(cap);
    const length = new Uint32Array(cap);
    region.set(this.region);
    offset.set(this.offset);
    length.set(this.length);
    this.region = region;
    this.offset = offset;
    this.length = length;
  }
}

/**
 * Views (no copy) of the bytes of segments [first, end) of `s`, less the
 * first `skip` bytes: the slow path of a ChainSegments consumer.
 */
export function segmentViews(mem: GuestMemory, s: ChainSegments, first: number, end: number, skip = 0): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = first; i < end; i++) {
    const len = s.length[i];
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const o = s.offset[i] + skip;
    out.push(mem.regions[s.region[i]].bytes.subarray(o, o + len - skip));
    skip = 0;
  }
  return out;
}

const EMPTY = -1;
const BROKEN = -2;

/** QueueProgress.flags bit: the queue hit a ring-level fault. */
export const QUEUE_BROKEN = 1;

export class Virtqueue {
  readonly progress: QueueProgress;
  private readonly maxChainBytes: number;
  private readonly maxIndirect: number;
  private active = false;
  private num = 0;
  private desc!: DataView;
  /**
   * A DataView over each guest RAM region (by index in mem.regions): an indirect table is read
   * through its region's view at an offset, instead of a new view (a subarray and a DataView, two
   * allocations) per request. Made up front: an array filled lazily starts with another map (no
   * elements), and the code the driver-domain's JIT warm-up optimized on a filled one deoptimized
   * at the guest's first indirect table.
   */
  private readonly regionViews: DataView[];
  private avail!: Uint16Array; // [flags, idx, ring[num], used_event]
  private used16!: Uint16Array; // [flags, idx, ..., avail_event at 2 + 4*num]
  private used32!: Uint32Array; // [flags|idx, {id, len}[num], ...]
  private eventIdx = false;
  private indirect = false;
  /**
   * Between disableNotify() and enableNotify() (EVENT_IDX only): pop() leaves
   * avail_event where disableNotify() put it, so a driver adding buffers
   * while we are still draining does not kick (virtio 1.2 2.7.10: the device
   * suppresses notifications). enableNotify() publishes avail_event and
   * re-checks.
   */
  private quiet = false;
  /** Why take() returned BROKEN. */
  private lastError = '';
  /** The chain pop()/chainAt() walk, before they build views of it. */
  private readonly scratch = new ChainSegments();

  constructor(
    readonly mem: GuestMemory,
    readonly slot: DeviceSlot,
    readonly index: number,
    opts: VirtqueueOptions = {},
  ) {
    this.progress = slot.progress(index);
    this.maxChainBytes = opts.maxChainBytes ?? 64 * 1024 * 1024;
    this.maxIndirect = opts.maxIndirect ?? 1024;
    this.regionViews = mem.regions.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
  }

  /** Queue size negotiated by the driver (0 before activation). */
  get size(): number { return this.num; }
  get isActive(): boolean { return this.active; }
  get isBroken(): boolean { return (this.progress.flags & QUEUE_BROKEN) !== 0; }
  get eventIdxEnabled(): boolean { return this.eventIdx; }

  /**
   * Bind to the ring the registers describe (call once DRIVER_OK is set, and
   * again after a driver-domain restart). A fresh progress record (queue size
   * 0, as after a device reset) is initialised; an existing one is recovered:
   * the last batch is reconciled and the in-flight heads come back in
   * `resubmit`, in submit order.
   */
  activate(): ActivateResult {
    this.active = false;
    this.quiet = false;
    try {
      if (this.isBroken) return { ok: false, error: 'queue is broken until device reset', broken: true };
      const cfg = this.slot.queueConfig(this.index);
      if (!cfg) return { ok: false, error: 'queue registers torn', broken: false };
      if (!cfg.ready) return { ok: false, error: 'queue not ready', broken: false };
      const n = cfg.num;
      if (n < 1 || (n & (n - 1)) !== 0 || n > this.slot.queueNumMax || n > this.progress.capacity) {
        return this.fail(`queue size ${n} invalid`);
      }
      if (cfg.desc % 16 !== 0 || !this.mem.contains(cfg.desc, descTableSize(n))) return this.fail('descriptor table address invalid');
      if (cfg.driver % 2 !== 0 || !this.mem.contains(cfg.driver, availRingSize(n))) return this.fail('avail ring address invalid');
      if (cfg.device % 4 !== 0 || !this.mem.contains(cfg.device, usedRingSize(n))) return this.fail('used ring address invalid');
      const d = this.mem.slice(cfg.desc, descTableSize(n));
      const a = this.mem.slice(cfg.driver, availRingSize(n));
      const u = this.mem.slice(cfg.device, usedRingSize(n));
      if (a.byteOffset % 2 !== 0 || u.byteOffset % 4 !== 0) return this.fail('ring host mapping misaligned');
      this.num = n;
      this.desc = new DataView(d.buffer, d.byteOffset, d.byteLength);
      this.avail = new Uint16Array(a.buffer, a.byteOffset, a.byteLength / 2);
      this.used16 = new Uint16Array(u.buffer, u.byteOffset, u.byteLength / 2);
      this.used32 = new Uint32Array(u.buffer, u.byteOffset, Math.floor(u.byteLength / 4));
      const f = this.slot.driverFeatures & this.slot.deviceFeatures;
      this.eventIdx = hasFeature(f, VIRTIO_F_RING_EVENT_IDX);
      this.indirect = hasFeature(f, VIRTIO_F_INDIRECT_DESC);
      if (this.progress.queueSize === 0) {
        this.progress.reset(n);
        this.active = true;
        return { ok: true, recovered: false, resubmit: [] };
      }
      if (this.progress.queueSize !== n) return this.fail(`queue size ${n} differs from the recorded ${this.progress.queueSize}`);
      const errs = this.progress.validate();
      if (errs.length) return this.fail(`progress record corrupt: ${errs[0]}`);
      this.active = true;
      const r = this.reconcile();
      if (r) return this.fail(r);
      return { ok: true, recovered: true, resubmit: this.resubmitInflight() };
    } catch (e) {
      return this.fail(`activation failed: ${(e as Error).message}`);
    }
  }

  /** Forget the ring binding (device reset or shutdown); the page keeps the progress. */
  deactivate(): void {
    this.active = false;
  }

  /**
   * Reconcile the last batch after a restart (vhost-user inflight): heads
   * whose used element was published (used->idx moved past our recorded
   * used_idx) before the old process died are no longer in flight. Then
   * last_avail_idx = used_idx + in-flight count. Returns an error string if
   * the ring and the record cannot be made consistent.
   */
  private reconcile(): string | undefined {
    const p = this.progress;
    const ringUsed = Atomics.load(this.used16, 1);
    const recorded = p.usedIdx;
    const published = (ringUsed - recorded) & 0xffff;
    let inflight = p.inflightInOrder();
    if (published > this.num) return `used idx ${ringUsed} is ${published} past the record ${recorded}, more than queue size ${this.num}`;
    for (let i = 0; i < published; i++) {
      const id = this.used32[1 + 2 * ((recorded + i) % this.num)];
      if (id >= this.num) return `used element ${id} >= queue size ${this.num}`;
      // Not in flight any more: cleared by the old process, which died in pushMany between
      // clearing this batch's heads and recording used_idx.
      if (p.isInflight(id)) p.clearInflight(id);
    }
    p.usedIdx = ringUsed;
    inflight = p.inflightInOrder();
    const oldLast = p.lastAvailIdx;
    const last = (ringUsed + inflight.length) & 0xffff;
    const diff = (last - oldLast) & 0xffff;
    if (diff !== 0 && diff !== 1) return `recorded last avail ${oldLast} inconsistent with ${inflight.length} in flight after used ${ringUsed}`;
    p.lastAvailIdx = last;
    let max = 0;
    for (const h of inflight) max = Math.max(max, p.counterOf(h));
    if (p.nextCounter <= max) p.nextCounter = max + 1;
    return undefined;
  }

  /** In-flight heads from the state page, in submit order (oldest first). */
  resubmitInflight(): number[] {
    return this.progress.inflightInOrder();
  }

  /** True when the driver has made buffers available that we have not popped. */
  hasAvailable(): boolean {
    if (!this.active || this.isBroken) return false;
    return Atomics.load(this.avail, 1) !== this.progress.lastAvailIdx;
  }

  /** Take the next available chain, marking its head in flight. */
  pop(): PopResult {
    return this.result(this.popSegments(this.scratch), this.scratch);
  }

  /**
   * pop() without allocating: the next available chain's segments go into
   * `out` (its head marked in flight). 'bad-chain': `out.error` says why and
   * the head must be completed with an error; 'broken': as pop().
   */
  popSegments(out: ChainSegments): 'empty' | 'chain' | 'bad-chain' | 'broken' {
    const head = this.take();
    if (head === EMPTY) return 'empty';
    if (head === BROKEN) {
      out.error = this.lastError;
      return 'broken';
    }
    return this.segmentsFrom(head, out);
  }

  /** chainAt() without allocating (see popSegments). */
  segmentsAt(head: number, out: ChainSegments): 'chain' | 'bad-chain' | 'broken' {
    if (!this.active || !Number.isInteger(head) || head < 0 || head >= this.num || !this.progress.isInflight(head)) {
      out.error = `head ${head} is not in flight`;
      return 'broken';
    }
    return this.segmentsFrom(head, out);
  }

  private segmentsFrom(head: number, out: ChainSegments): 'chain' | 'bad-chain' | 'broken' {
    out.head = head;
    try {
      const error = this.walk(out);
      if (error === undefined) return 'chain';
      out.error = error;
      return 'bad-chain';
    } catch (e) {
      out.error = this.breakQueue(`unexpected: ${(e as Error).message}`);
      return 'broken';
    }
  }

  /** Marks the next available head in flight and returns it; EMPTY, or BROKEN (lastError says why). */
  private take(): number {
    if (!this.active) return EMPTY;
    if (this.isBroken) {
      this.lastError = 'queue is broken until device reset';
      return BROKEN;
    }
    try {
      const p = this.progress;
      const availIdx = Atomics.load(this.avail, 1);
      const last = p.lastAvailIdx;
      const pending = (availIdx - last) & 0xffff;
      if (pending === 0) return EMPTY;
      if (pending > this.num) return this.breakTake(`avail idx moved from ${last} to ${availIdx}, more than queue size ${this.num}`);
      // Plain accesses from here on: the ring entry is read after the Atomics.load of avail->idx
      // (loads stay in order on x86), and avail_event needs no fence here: before the device
      // waits for a kick it always goes through enableNotify(), whose Atomics.store is one.
      const head = this.avail[2 + (last % this.num)];
      if (head >= this.num) return this.breakTake(`avail ring head ${head} >= queue size ${this.num}`);
      if (p.isInflight(head)) return this.breakTake(`head ${head} made available while still in flight`);
      p.markInflight(head);
      p.lastAvailIdx = last + 1;
      if (this.eventIdx && !this.quiet) this.used16[2 + 4 * this.num] = (last + 1) & 0xffff;
      return head;
    } catch (e) {
      return this.breakTake(`unexpected: ${(e as Error).message}`);
    }
  }

  private breakTake(error: string): number {
    this.lastError = this.breakQueue(error);
    return BROKEN;
  }

  /** Re-walk the chain of an in-flight head (resubmission after a restart). */
  chainAt(head: number): PopResult {
    return this.result(this.segmentsAt(head, this.scratch), this.scratch);
  }

  /**
   * popSegments/segmentsAt's verdict on `s` as a PopResult with views of the chain's buffers
   * (public for a device's fast path that looked at the segments first and wants pop()'s result).
   */
  result(kind: 'empty' | 'chain' | 'bad-chain' | 'broken', s: ChainSegments): PopResult {
    if (kind === 'empty') return { kind };
    if (kind === 'broken') return { kind, error: s.error };
    const writable = segmentViews(this.mem, s, s.firstWritable, s.count);
    if (kind === 'bad-chain') return { kind, head: s.head, error: s.error, writable };
    const readable = segmentViews(this.mem, s, 0, s.firstWritable);
    return { kind, chain: { head: s.head, readable, writable, readableLength: s.readableLength, writableLength: s.writableLength } };
  }

  /**
   * Walk the chain from `out.head`, filling `out` with its segments (empty
   * descriptors skipped); returns an error string for a malformed chain, with
   * `out` holding the segments validated before the fault.
   */
  private walk(out: ChainSegments): string | undefined {
    out.count = 0;
    out.firstWritable = 0;
    out.readableLength = 0;
    out.writableLength = 0;
    const mem = this.mem;
    let table = this.desc;
    let base = 0; // byte offset of the table in `table`
    let tableSize = this.num;
    let maxCount = this.num;
    let inIndirect = false;
    let idx = out.head;
    let count = 0;
    let total = 0;
    for (;;) {
      if (idx >= tableSize) return `descriptor index ${idx} >= table size ${tableSize}`;
      if (++count > maxCount) return `descriptor chain longer than ${maxCount} (loop?)`;
      const o = base + idx * VIRTQ_DESC_SIZE;
      const addr = table.getUint32(o, true) + table.getUint32(o + 4, true) * 0x1_0000_0000;
      const len = table.getUint32(o + 8, true);
      const flags = table.getUint16(o + 12, true);
      const next = table.getUint16(o + 14, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) return 'indirect descriptor without VIRTIO_F_INDIRECT_DESC';
        if (inIndirect) return 'indirect descriptor inside an indirect table';
        if (flags & VIRTQ_DESC_F_NEXT) return 'indirect descriptor with NEXT set';
        if (len === 0 || len % VIRTQ_DESC_SIZE !== 0 || len / VIRTQ_DESC_SIZE > this.maxIndirect) {
          return `indirect table length ${len} invalid`;
        }
        const r = mem.locate(addr, len);
        if (r < 0) return `indirect table 0x${addr.toString(16)}+${len} outside guest RAM`;
        table = this.regionView(r);
        base = addr - mem.regions[r].gpa;
        tableSize = maxCount = len / VIRTQ_DESC_SIZE;
        inIndirect = true;
        idx = 0;
        count = 0;
        continue;
      }
      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (!writable && out.writableLength > 0) return 'readable descriptor after a writable one';
      if (len > 0) {
        total += len;
        if (total > this.maxChainBytes) return `chain length ${total} exceeds ${this.maxChainBytes}`;
        const r = mem.locate(addr, len);
        if (r < 0) return `buffer 0x${addr.toString(16)}+0x${len.toString(16)} outside guest RAM`;
        const n = out.count;
        if (n === out.region.length) out.grow();
        out.region[n] = r;
        out.offset[n] = addr - mem.regions[r].gpa;
        out.length[n] = len;
        out.count = n + 1;
        if (writable) {
          out.writableLength += len;
        } else {
          out.readableLength += len;
          out.firstWritable = n + 1;
        }
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return undefined;
      idx = next;
    }
  }

  /** A DataView over guest RAM region `r` (index in mem.regions). */
  regionView(r: number): DataView {
    return this.regionViews[r];
  }

  /**
   * Return a head to the driver: write the used element, publish used->idx,
   * then clear the in-flight entry and record used_idx. Returns false (and
   * writes nothing) when the head is not in flight or the queue is unusable.
   */
  push(head: number, len: number): boolean {
    if (!this.active || this.isBroken) return false;
    const p = this.progress;
    if (!Number.isInteger(head) || head < 0 || head >= this.num || !p.isInflight(head)) return false;
    const used = p.usedIdx;
    p.lastBatchHead = head;
    const e = 1 + 2 * (used % this.num);
    this.used32[e] = head;
    this.used32[e + 1] = len >>> 0;
    Atomics.store(this.used16, 1, (used + 1) & 0xffff);
    p.clearInflight(head);
    p.usedIdx = used + 1;
    return true;
  }

  /**
   * Return a batch of heads with one used->idx publish: write every used
   * element, publish used->idx once, then clear their in-flight entries and
   * record used_idx (the same protocol as push(), for several heads; a
   * restart reconciles a batch the same way as one element). Heads that are
   * not in flight are skipped; `heads` must not repeat. Only the first
   * `count` entries are used (default all). Returns how many were published.
   */
  pushMany(heads: readonly number[], lens: readonly number[], count = heads.length): number {
    if (!this.active || this.isBroken) return 0;
    const p = this.progress;
    const start = p.usedIdx;
    let used = start;
    count = Math.min(count, heads.length, lens.length);
    for (let i = 0; i < count; i++) {
      const head = heads[i];
      if (!Number.isInteger(head) || head < 0 || head >= this.num || !p.isInflight(head)) continue;
      p.lastBatchHead = head;
      const e = 1 + 2 * (used % this.num);
      this.used32[e] = head;
      this.used32[e + 1] = lens[i] >>> 0;
      used = (used + 1) & 0xffff;
    }
    const n = (used - start) & 0xffff;
    if (n === 0) return 0;
    Atomics.store(this.used16, 1, used);
    for (let i = 0; i < count; i++) {
      const head = heads[i];
      if (Number.isInteger(head) && head >= 0 && head < this.num) p.clearInflight(head);
    }
    p.usedIdx = used;
    return n;
  }

  /**
   * Whether to interrupt the driver for the used elements published since the
   * last call (EVENT_IDX: used_event; otherwise avail->flags NO_INTERRUPT).
   * Records the decision point in the state page.
   */
  needsNotify(): boolean {
    if (!this.active) return false;
    const p = this.progress;
    const now = p.usedIdx;
    const old = p.signalledUsed;
    p.signalledUsed = now;
    if (old === now) return false;
    if (!this.eventIdx) return (Atomics.load(this.avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    if (old === NO_SIGNAL) return true;
    const usedEvent = Atomics.load(this.avail, 2 + this.num);
    return ((now - usedEvent - 1) & 0xffff) < ((now - old) & 0xffff);
  }

  /**
   * Ask the driver not to kick while we are draining (or polling the ring):
   * with EVENT_IDX, avail_event is set one behind last_avail_idx, which no
   * new avail idx can cross, and stops following our pops until
   * enableNotify(); without EVENT_IDX, the used ring's NO_NOTIFY flag.
   */
  disableNotify(): void {
    if (!this.active) return;
    if (this.eventIdx) {
      this.quiet = true;
      Atomics.store(this.used16, 2 + 4 * this.num, (this.progress.lastAvailIdx - 1) & 0xffff);
    } else {
      Atomics.store(this.used16, 0, VIRTQ_USED_F_NO_NOTIFY);
    }
  }

  /**
   * Ask the driver to kick for the next buffer, then re-check: returns true
   * when buffers arrived meanwhile (the caller must drain again, or it could
   * miss them: the driver may have seen notifications still disabled).
   */
  enableNotify(): boolean {
    if (!this.active || this.isBroken) return false;
    this.quiet = false;
    if (this.eventIdx) Atomics.store(this.used16, 2 + 4 * this.num, this.progress.lastAvailIdx);
    else Atomics.store(this.used16, 0, 0);
    return this.hasAvailable();
  }

  private fail(error: string): ActivateResult {
    this.breakQueue(error);
    return { ok: false, error, broken: true };
  }

  /** Ring faults that broke this queue in this process (the driver-domain logs each, even one the guest reset at once). */
  breaks = 0;

  /** Mark the queue broken (NEEDS_RESET); returns `error`. */
  private breakQueue(error: string): string {
    this.breaks++;
    this.progress.flags = this.progress.flags | QUEUE_BROKEN;
    this.slot.setNeedsReset();
    return error;
  }
}
