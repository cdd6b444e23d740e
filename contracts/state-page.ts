/**
 * The shared state page: every piece of virtio device state that must
 * outlive a process, laid out at fixed offsets in one byte range (in
 * production an mmap of a memfd the supervisor holds, shared by the vmm and
 * the driver-domain; in tests an ArrayBuffer or SharedArrayBuffer).
 *
 * Nothing here is cached in the JS heap: every getter reads the bytes and
 * every setter writes them, so a typed view over the page *is* the device
 * register. Fields one process writes and another reads use Atomics.
 *
 * Layout (all fields little-endian u32 unless noted; offsets in bytes):
 *
 *   header (256 bytes, at 0)
 *     0  magic 'TSVS' (0x53565354)   4  layout version (1)
 *     8  header size (256)          12  page size (bytes used)
 *    16  max devices                20  number of devices
 *    24  max queues per device      28  max queue size (inflight table entries)
 *    32  device slot size           36  static checksum (CRC-32, see below)
 *    40..64 reserved (0)
 *    64  heartbeat[16] (atomic counters, one per Component)
 *   128..256 reserved
 *
 *   device slot i (at 256 + i * slotSize; slotSize a multiple of 64)
 *     static block (0x140 bytes), written once by the creator:
 *       0x00 device id   0x04 vendor id   0x08 number of queues  0x0c queue num max
 *       0x10 device features lo/hi       0x18 config length     0x1c flags
 *       0x20..0x40 reserved              0x40 config bytes [256]
 *     register block (at 0x140, 64 + 32 * maxQueues bytes), written by the vmm:
 *       +0  seq (atomic; odd while an update is in progress: a seqlock)
 *       +4  register checksum (CRC-32 of +20..end)
 *       +8  status (atomic)  +12 isr (atomic, ISR_WORD: bits 0-15 InterruptStatus, 16-31 ACK count)
 *       +16 config generation (atomic)
 *       +20 device features sel  +24 driver features sel  +28 driver features lo/hi
 *       +36 queue sel            +40..+64 reserved
 *       +64 queue[q] (32 bytes): num, ready, desc lo/hi, driver lo/hi, device lo/hi
 *     progress block per queue (32 + 16 * maxQueueSize bytes), written by the driver-domain
 *     (the vhost-user "inflight I/O tracking" record for a split queue):
 *       +0 last_avail_idx  +4 used_idx  +8 last_batch_head  +12 signalled_used
 *       +16 next submit counter lo/hi   +24 queue size at activation  +28 flags
 *       +32 inflight[head] (16 bytes): inflight flag (atomic), reserved, counter lo/hi
 *
 * The static checksum covers header bytes 0..36 and 40..64 and the static
 * block of every slot; the register checksum of a slot covers its
 * non-atomic registers. `validate()` checks both, the seqlocks, and the
 * invariants a restarted component relies on.
 */

import { crc32 } from './crc32';
import { native } from '../native/kvm';
import { DEVICE_PAGE_OFFSET, DEVICE_PAGE_SIZE } from './fds';
import { Words, isPow2, u64, lo32, hi32 } from './page-words';
import { QueueProgress, queueProgressSize } from './queue-progress';

export { QueueProgress, NO_SIGNAL } from './queue-progress';
import { STATUS_KNOWN_BITS, Status, Interrupt } from './virtio-mmio-layout';

export const STATE_PAGE_MAGIC = 0x53565354; // "TSVS"
export const STATE_PAGE_VERSION = 1;
export const HEADER_SIZE = 256;
export const MAX_HEARTBEATS = 16;
/** How often every component bumps its heartbeat (the supervisor's hang threshold is a multiple of it). */
export const HEARTBEAT_MS = 20;
export const CONFIG_MAX = 256;
/**
 * The isr word: the low half is the virtio InterruptStatus the guest reads; the high half counts
 * the guest's InterruptACK writes applied (mod 2^16), bumped by the same atomic that clears the
 * acknowledged bits. The driver-domain only ORs bits into the low half. A vmm killed in the middle of
 * an ACK records the count it saw in its exit journal (contracts/snapshot.ts Journal.ackIntent), and
 * the next vmm replays the write only if the count has not moved: exactly once. The native exit loop
 * (native/kvm/fastexit.cc) applies ACKs by the same rule, with these constants (vmm/platform.ts).
 */
export const ISR_WORD = { BITS: 0xffff, ACK_SHIFT: 16, ACK_ONE: 0x10000 } as const;

/** Heartbeat counter slots. */
export enum Component {
  Supervisor = 0,
  Vmm = 1,
  DriverDomain = 2,
  PrivDomain = 3,
  VmmStandby = 4,
  DriverDomainStandby = 5,
}

const H = {
  magic: 0, version: 4, headerSize: 8, pageSize: 12, maxDevices: 16, numDevices: 20,
  maxQueues: 24, maxQueueSize: 28, slotSize: 32, staticChecksum: 36, heartbeat: 64,
} as const;

const STATIC_SIZE = 0x140;
const S = { deviceId: 0, vendorId: 4, numQueues: 8, queueNumMax: 12, featLo: 16, featHi: 20, configLen: 24, flags: 28, config: 0x40 } as const;
const R = {
  seq: 0, checksum: 4, status: 8, isr: 12, configGen: 16, devFeatSel: 20, drvFeatSel: 24,
  drvFeatLo: 28, drvFeatHi: 32, queueSel: 36, queues: 64, checksummedFrom: 20,
} as const;
const QREG_SIZE = 32;
const Q = { num: 0, ready: 4, descLo: 8, descHi: 12, driverLo: 16, driverHi: 20, deviceLo: 24, deviceHi: 28 } as const;

/** Geometry of a page; fixed when the page is formatted. */
export interface StatePageGeometry {
  maxDevices: number;
  maxQueues: number;
  maxQueueSize: number;
}
export const DEFAULT_GEOMETRY: StatePageGeometry = { maxDevices: 8, maxQueues: 4, maxQueueSize: 256 };

/** What `addDevice` needs to fill a slot's static block. */
export interface DeviceSpec {
  deviceId: number;
  vendorId: number;
  numQueues: number;
  queueNumMax: number;
  deviceFeatures: bigint;
  config: Uint8Array;
  flags?: number;
}

/** Result of `validate()`. */
export interface ValidationReport {
  ok: boolean;
  errors: string[];
  /** Slots whose register seqlock is odd: their writer died mid-update. */
  tornDevices: number[];
}

export class StatePageError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'StatePageError';
  }
}


/** The isr word after an ACK of `bits` (ISR_WORD): those bits cleared, the ACK count one higher. */
export function ackedIsr(old: number, bits: number): number {
  return (((old & ~bits & ISR_WORD.BITS) >>> 0) | ((old + ISR_WORD.ACK_ONE) & ~ISR_WORD.BITS)) >>> 0;
}

function regBlockSize(g: StatePageGeometry): number {
  return 64 + QREG_SIZE * g.maxQueues;
}
function progressSize(g: StatePageGeometry): number {
  return queueProgressSize(g.maxQueueSize);
}
function slotSize(g: StatePageGeometry): number {
  const raw = STATIC_SIZE + regBlockSize(g) + g.maxQueues * progressSize(g);
  return Math.ceil(raw / 64) * 64;
}
function checkGeometry(g: StatePageGeometry): string | undefined {
  if (!Number.isInteger(g.maxDevices) || g.maxDevices < 1 || g.maxDevices > 64) return `max devices ${g.maxDevices} out of range`;
  if (!Number.isInteger(g.maxQueues) || g.maxQueues < 1 || g.maxQueues > 16) return `max queues ${g.maxQueues} out of range`;
  if (!isPow2(g.maxQueueSize) || g.maxQueueSize > 32768) return `max queue size ${g.maxQueueSize} is not a power of 2 <= 32768`;
  return undefined;
}

export class StatePage {
  readonly bytes: Uint8Array;
  readonly geometry: StatePageGeometry;
  readonly slotSize: number;
  private readonly u32: Uint32Array;
  private readonly hdr: Words;

  /** Bytes a page of this geometry needs (rounded up to 4 KiB). */
  static layoutSize(g: StatePageGeometry = DEFAULT_GEOMETRY): number {
    const err = checkGeometry(g);
    if (err) throw new StatePageError(err);
    return Math.ceil((HEADER_SIZE + g.maxDevices * slotSize(g)) / 4096) * 4096;
  }

  /** Zero `bytes` and write a fresh header; no devices yet. */
  static format(bytes: Uint8Array, g: StatePageGeometry = DEFAULT_GEOMETRY): StatePage {
    const size = StatePage.layoutSize(g);
    if (bytes.byteLength < size) throw new StatePageError(`page of ${bytes.byteLength} bytes is smaller than the ${size} this layout needs`);
    bytes.fill(0, 0, size);
    const u32 = StatePage.words(bytes);
    const w = (off: number, v: number) => (u32[off >>> 2] = v);
    w(H.magic, STATE_PAGE_MAGIC);
    w(H.version, STATE_PAGE_VERSION);
    w(H.headerSize, HEADER_SIZE);
    w(H.pageSize, size);
    w(H.maxDevices, g.maxDevices);
    w(H.numDevices, 0);
    w(H.maxQueues, g.maxQueues);
    w(H.maxQueueSize, g.maxQueueSize);
    w(H.slotSize, slotSize(g));
    const page = new StatePage(bytes, g);
    for (let i = 0; i < g.maxDevices; i++) page.device(i).resetRegisters();
    page.sealStatic();
    return page;
  }

  /**
   * Attach to an existing page (e.g. after a restart). Throws only when the
   * header is too broken to even compute offsets; everything else is for
   * `validate()` to report.
   */
  static attach(bytes: Uint8Array): StatePage {
    if (bytes.byteLength < HEADER_SIZE) throw new StatePageError('page smaller than its header');
    const u32 = StatePage.words(bytes);
    if (u32[H.magic >>> 2] !== STATE_PAGE_MAGIC) throw new StatePageError('bad state page magic');
    if (u32[H.version >>> 2] !== STATE_PAGE_VERSION) throw new StatePageError(`unsupported state page version ${u32[H.version >>> 2]}`);
    const g = { maxDevices: u32[H.maxDevices >>> 2], maxQueues: u32[H.maxQueues >>> 2], maxQueueSize: u32[H.maxQueueSize >>> 2] };
    const err = checkGeometry(g);
    if (err) throw new StatePageError(err);
    if (StatePage.layoutSize(g) > bytes.byteLength) throw new StatePageError('page smaller than its layout');
    return new StatePage(bytes, g);
  }

  private static words(bytes: Uint8Array): Uint32Array {
    if (bytes.byteOffset % 8 !== 0) throw new StatePageError('state page must be 8-byte aligned');
    return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  }

  private constructor(bytes: Uint8Array, g: StatePageGeometry) {
    this.bytes = bytes;
    this.geometry = g;
    this.slotSize = slotSize(g);
    this.u32 = StatePage.words(bytes);
    this.hdr = new Words(this.u32, 0);
  }

  get magic(): number { return this.hdr.get(H.magic); }
  get version(): number { return this.hdr.get(H.version); }
  get pageSize(): number { return this.hdr.get(H.pageSize); }
  get numDevices(): number { return this.hdr.load(H.numDevices); }
  get staticChecksum(): number { return this.hdr.get(H.staticChecksum); }

  /** Bump a component's heartbeat; returns the new value. */
  beat(c: Component | number): number {
    return (this.hdr.add(H.heartbeat + 4 * this.hbIndex(c), 1) + 1) >>> 0;
  }
  /** Current heartbeat counter of a component. */
  heartbeat(c: Component | number): number {
    return this.hdr.load(H.heartbeat + 4 * this.hbIndex(c));
  }
  private hbIndex(c: number): number {
    if (!Number.isInteger(c) || c < 0 || c >= MAX_HEARTBEATS) throw new StatePageError(`no heartbeat slot ${c}`);
    return c;
  }

  /** Slot `i` (0 <= i < maxDevices). */
  device(i: number): DeviceSlot {
    if (!Number.isInteger(i) || i < 0 || i >= this.geometry.maxDevices) throw new StatePageError(`no device slot ${i}`);
    return new DeviceSlot(this.bytes, this.u32, HEADER_SIZE + i * this.slotSize, this.geometry, i);
  }

  /** Fill the next free slot's static block and re-seal the static checksum. Returns the slot index. */
  addDevice(spec: DeviceSpec): number {
    const i = this.numDevices;
    if (i >= this.geometry.maxDevices) throw new StatePageError('state page is full');
    if (spec.numQueues < 1 || spec.numQueues > this.geometry.maxQueues) throw new StatePageError(`device wants ${spec.numQueues} queues, layout has ${this.geometry.maxQueues}`);
    if (!isPow2(spec.queueNumMax) || spec.queueNumMax > this.geometry.maxQueueSize) throw new StatePageError(`queue num max ${spec.queueNumMax} must be a power of 2 <= ${this.geometry.maxQueueSize}`);
    if (spec.config.length > CONFIG_MAX) throw new StatePageError('device config too large');
    const base = HEADER_SIZE + i * this.slotSize;
    const w = new Words(this.u32, base);
    w.set(S.deviceId, spec.deviceId);
    w.set(S.vendorId, spec.vendorId);
    w.set(S.numQueues, spec.numQueues);
    w.set(S.queueNumMax, spec.queueNumMax);
    w.set(S.featLo, Number(spec.deviceFeatures & 0xffffffffn));
    w.set(S.featHi, Number((spec.deviceFeatures >> 32n) & 0xffffffffn));
    w.set(S.configLen, spec.config.length);
    w.set(S.flags, spec.flags ?? 0);
    this.bytes.set(spec.config, base + S.config);
    this.device(i).resetRegisters();
    this.hdr.store(H.numDevices, i + 1);
    this.sealStatic();
    return i;
  }

  /** CRC-32 over the static part (header identity and every slot's static block). */
  computeStaticChecksum(): number {
    let c = crc32(this.bytes.subarray(0, H.staticChecksum));
    c = crc32(this.bytes.subarray(H.staticChecksum + 4, H.heartbeat), c);
    for (let i = 0; i < this.geometry.maxDevices; i++) {
      const base = HEADER_SIZE + i * this.slotSize;
      c = crc32(this.bytes.subarray(base, base + STATIC_SIZE), c);
    }
    return c;
  }
  /** Recompute and store the static checksum (after changing the static part). */
  sealStatic(): void {
    this.hdr.store(H.staticChecksum, this.computeStaticChecksum());
  }

  /**
   * The static part as written (header up to the heartbeats, every slot's static block): the
   * supervisor keeps this copy and repairs the page from it (`repairStatic`).
   */
  staticImage(): Uint8Array[] {
    const parts = [this.bytes.slice(0, H.heartbeat)];
    for (let i = 0; i < this.geometry.maxDevices; i++) {
      const base = HEADER_SIZE + i * this.slotSize;
      parts.push(this.bytes.slice(base, base + STATIC_SIZE));
    }
    return parts;
  }

  /**
   * Compares the static part with `image` (from `staticImage()` of this page when it was sealed)
   * and writes back every byte that differs: nothing but the creator writes it, so a difference is
   * corruption. Returns one line per repaired range (empty: the page was intact).
   */
  repairStatic(image: Uint8Array[]): string[] {
    const out: string[] = [];
    image.forEach((part, k) => {
      const base = k === 0 ? 0 : HEADER_SIZE + (k - 1) * this.slotSize;
      const live = this.bytes.subarray(base, base + part.length);
      if (Buffer.compare(live, part) === 0) return;
      for (let i = 0; i < part.length; i++) {
        if (live[i] !== part[i]) out.push(`${k === 0 ? 'header' : `device ${k - 1} static block`} +0x${i.toString(16)}: 0x${live[i].toString(16)} -> 0x${part[i].toString(16)}`);
      }
      live.set(part);
    });
    return out;
  }

  /** Check magic, version, geometry, checksums, seqlocks and invariants. */
  validate(): ValidationReport {
    const errors: string[] = [];
    const torn: number[] = [];
    const g = this.geometry;
    if (this.magic !== STATE_PAGE_MAGIC) errors.push('bad magic');
    if (this.version !== STATE_PAGE_VERSION) errors.push(`bad layout version ${this.version}`);
    if (this.hdr.get(H.headerSize) !== HEADER_SIZE) errors.push('bad header size');
    if (this.hdr.get(H.slotSize) !== this.slotSize) errors.push('bad slot size');
    if (this.pageSize !== StatePage.layoutSize(g) || this.pageSize > this.bytes.byteLength) errors.push('bad page size');
    const n = this.numDevices;
    if (n > g.maxDevices) errors.push(`device count ${n} exceeds ${g.maxDevices}`);
    if (this.computeStaticChecksum() !== this.staticChecksum) errors.push('static checksum mismatch');
    for (let i = 0; i < Math.min(n, g.maxDevices); i++) {
      const d = this.device(i);
      // One seqlock read decides both (two reads could disagree while a live vmm writes).
      const regs = d.checkRegs();
      if (regs === 'torn') torn.push(i);
      for (const e of d.validate(regs)) errors.push(`device ${i}: ${e}`);
    }
    return { ok: errors.length === 0, errors, tornDevices: torn };
  }
}

/** The checksummed registers of one slot as they last checked out (the supervisor's copy: DeviceSlot.regsCopy). */
export interface RegsCopy {
  seq: number;
  checksum: number;
  bytes: Uint8Array;
}

/** Transport registers of one queue, as the vmm stored them. */
export interface QueueConfig {
  num: number;
  ready: boolean;
  desc: number;
  driver: number;
  device: number;
}

/** One device slot: static block, transport registers, per-queue progress. */
export class DeviceSlot {
  private readonly w: Words;
  private readonly r: Words;
  private updateDepth = 0;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly u32: Uint32Array,
    readonly base: number,
    readonly geometry: StatePageGeometry,
    readonly index: number,
  ) {
    this.w = new Words(u32, base);
    this.r = new Words(u32, base + STATIC_SIZE);
  }

  // ---- static block ----
  get deviceId(): number { return this.w.get(S.deviceId); }
  get vendorId(): number { return this.w.get(S.vendorId); }
  get numQueues(): number { return this.w.get(S.numQueues); }
  get queueNumMax(): number { return this.w.get(S.queueNumMax); }
  get flags(): number { return this.w.get(S.flags); }
  get deviceFeatures(): bigint {
    return BigInt(this.w.get(S.featLo)) | (BigInt(this.w.get(S.featHi)) << 32n);
  }
  get configLen(): number { return Math.min(this.w.get(S.configLen), CONFIG_MAX); }
  /** The device config space (a view into the page, `configLen` bytes). */
  get config(): Uint8Array {
    const o = this.base + S.config;
    return this.bytes.subarray(o, o + this.configLen);
  }

  // ---- atomic registers (not checksummed; several writers) ----
  get status(): number { return this.r.load(R.status); }
  set status(v: number) { this.r.store(R.status, v); }
  /** Set DEVICE_NEEDS_RESET and raise a config-change interrupt (virtio 1.2 2.1.2). */
  setNeedsReset(): void {
    this.r.or(R.status, Status.DEVICE_NEEDS_RESET);
    this.r.or(R.isr, Interrupt.CONFIG);
  }
  get needsReset(): boolean { return (this.status & Status.DEVICE_NEEDS_RESET) !== 0; }
  get interruptStatus(): number { return this.r.load(R.isr) & ISR_WORD.BITS; }
  /** OR bits into InterruptStatus (driver-domain, before signalling the irqfd). Returns the previous InterruptStatus. */
  raiseInterrupt(bits: number): number { return this.r.or(R.isr, bits & ISR_WORD.BITS) & ISR_WORD.BITS; }
  /**
   * Clear acknowledged bits and count the ACK (vmm, on a guest write to InterruptACK), in one
   * compare-and-swap. `intent` (the vCPU's journal word, SNAP.ACK_INTENT) gets `flag | the count
   * before` ahead of each attempt, so a vmm killed around the swap can tell whether it happened.
   */
  ackInterrupt(bits: number, intent?: Int32Array, flag = 0): void {
    for (;;) {
      const old = this.r.load(R.isr);
      if (intent) Atomics.store(intent, 0, flag | (old >>> ISR_WORD.ACK_SHIFT));
      if (this.r.cas(R.isr, old, ackedIsr(old, bits))) return;
    }
  }
  /** The ACK count (the isr word's high half): what a journal's ack intent is compared with. */
  get ackCount(): number { return this.r.load(R.isr) >>> ISR_WORD.ACK_SHIFT; }
  /** The isr word itself, a one-word view of the page (its address goes to the native exit loop: vmm/platform.ts). */
  get isrWord(): Uint32Array { return this.u32.subarray((this.base + STATIC_SIZE + R.isr) >>> 2, ((this.base + STATIC_SIZE + R.isr) >>> 2) + 1); }
  get configGeneration(): number { return this.r.load(R.configGen); }
  bumpConfigGeneration(): number { return this.r.add(R.configGen, 1) + 1; }

  // ---- checksummed registers (vmm writes them under the seqlock) ----
  /** Seqlock counter: odd while an update is in progress. */
  get regsSeq(): number { return this.r.load(R.seq); }
  /** True when a writer died between the two halves of an update. */
  get regsTorn(): boolean { return (this.regsSeq & 1) === 1; }

  /**
   * Run `fn` as one register update: the seqlock goes odd, `fn` writes, the
   * checksum is recomputed, the seqlock goes even. Nested calls join the outer one.
   */
  update(fn: () => void): void {
    if (this.updateDepth++ === 0) this.r.add(R.seq, 1);
    try {
      fn();
    } finally {
      if (--this.updateDepth === 0) {
        this.r.store(R.checksum, this.computeRegsChecksum());
        this.r.add(R.seq, 1);
      }
    }
  }
  /**
   * Recover a torn register block: re-seal the checksum and make the seqlock
   * even (the vmm does this after replaying the interrupted MMIO write).
   */
  repairRegs(): void {
    this.r.store(R.checksum, this.computeRegsChecksum());
    if (this.regsTorn) this.r.add(R.seq, 1);
  }
  computeRegsChecksum(): number {
    const from = this.base + STATIC_SIZE + R.checksummedFrom;
    return crc32(this.bytes.subarray(from, this.base + STATIC_SIZE + regBlockSize(this.geometry)));
  }
  get regsChecksumOk(): boolean { return this.r.load(R.checksum) === this.computeRegsChecksum(); }

  /**
   * The register block checked as a seqlock reader: 'torn' when the seqlock is odd, 'mismatch'
   * only when the checksum is wrong over a stable snapshot. A check that overlaps a live writer's
   * update (the vmm keeps writing while the guest sets up its device) is retried, not reported
   * as corruption; if the writer keeps the block moving, it is alive and reported 'ok'.
   */
  checkRegs(): 'ok' | 'torn' | 'mismatch' {
    for (let attempt = 0; attempt < 100; attempt++) {
      const before = this.regsSeq;
      if (before & 1) {
        if (attempt < 99) continue;
        return 'torn';
      }
      const ok = this.regsChecksumOk;
      if (this.regsSeq === before) return ok ? 'ok' : 'mismatch';
    }
    return 'ok';
  }

  /**
   * The checksummed registers, their checksum and seqlock count, if they check out now (a stable,
   * even seqlock and a matching checksum); undefined otherwise. The supervisor keeps the latest
   * and repairs the block from it (`repairRegsFrom`): the vmm is the only writer, so a block that
   * no longer checks under the same seqlock count was overwritten by something else.
   */
  regsCopy(): RegsCopy | undefined {
    const seq = this.regsSeq;
    if (seq & 1) return undefined;
    const from = this.base + STATIC_SIZE + R.checksummedFrom;
    const bytes = this.bytes.slice(from, this.base + STATIC_SIZE + regBlockSize(this.geometry));
    const checksum = this.r.load(R.checksum);
    if (crc32(bytes) !== checksum || this.regsSeq !== seq) return undefined;
    return { seq, checksum, bytes };
  }

  /**
   * A register block whose checksum fails under the seqlock count of `copy` (nothing wrote it since
   * the copy was taken): the copy's bytes and checksum are written back. Returns one line per
   * repaired byte, [] if there was nothing to repair or the block moved on (a real update: the copy
   * is stale, and the next copy the supervisor takes replaces it).
   */
  repairRegsFrom(copy: RegsCopy): string[] {
    if (this.checkRegs() !== 'mismatch' || this.regsSeq !== copy.seq) return [];
    const from = this.base + STATIC_SIZE + R.checksummedFrom;
    const live = this.bytes.subarray(from, from + copy.bytes.length);
    const out: string[] = [];
    for (let i = 0; i < copy.bytes.length; i++) {
      if (live[i] !== copy.bytes[i]) out.push(`+0x${(STATIC_SIZE + R.checksummedFrom + i).toString(16)}: 0x${live[i].toString(16)} -> 0x${copy.bytes[i].toString(16)}`);
    }
    const sum = this.r.load(R.checksum) >>> 0;
    if (sum !== copy.checksum >>> 0) out.push(`checksum 0x${sum.toString(16)} -> 0x${(copy.checksum >>> 0).toString(16)}`);
    if (this.regsSeq !== copy.seq) return []; // the vmm began an update meanwhile: it re-seals the block
    live.set(copy.bytes);
    this.r.store(R.checksum, copy.checksum);
    return out;
  }

  /**
   * A seqlock left odd although the block it guards checks out (a flipped bit in the count, not a
   * writer that died mid-update: that one leaves the checksum stale): made even again, so readers
   * stop waiting for an update that is not happening. Only for a count seen odd `stuckSeq` at an
   * earlier check (an update takes microseconds). True if it was repaired.
   */
  repairStuckSeq(stuckSeq: number): boolean {
    const seq = this.regsSeq;
    if (!(seq & 1) || seq !== stuckSeq || !this.regsChecksumOk) return false;
    return this.r.cas(R.seq, seq, (seq + 1) >>> 0);
  }

  /** Clears status bits virtio does not define (a stray write: every restarted component refuses them). Returns the bits cleared. */
  clearUnknownStatus(): number {
    const bad = this.status & ~STATUS_KNOWN_BITS;
    if (bad) this.r.and(R.status, STATUS_KNOWN_BITS);
    return bad >>> 0;
  }

  private setReg(off: number, v: number): void {
    this.update(() => this.r.set(off, v));
  }
  get deviceFeaturesSel(): number { return this.r.get(R.devFeatSel); }
  set deviceFeaturesSel(v: number) { this.setReg(R.devFeatSel, v); }
  get driverFeaturesSel(): number { return this.r.get(R.drvFeatSel); }
  set driverFeaturesSel(v: number) { this.setReg(R.drvFeatSel, v); }
  get driverFeatures(): bigint {
    return BigInt(this.r.get(R.drvFeatLo)) | (BigInt(this.r.get(R.drvFeatHi)) << 32n);
  }
  set driverFeatures(v: bigint) {
    this.update(() => {
      this.r.set(R.drvFeatLo, Number(v & 0xffffffffn));
      this.r.set(R.drvFeatHi, Number((v >> 32n) & 0xffffffffn));
    });
  }
  /** Write one 32-bit word of the driver features (sel 0 = bits 0..31, sel 1 = 32..63; others ignored). */
  setDriverFeaturesWord(sel: number, v: number): void {
    if (sel === 0) this.setReg(R.drvFeatLo, v);
    else if (sel === 1) this.setReg(R.drvFeatHi, v);
  }
  /** The 32-bit word of the device features the guest selected. */
  deviceFeaturesWord(sel: number): number {
    const f = this.deviceFeatures;
    return sel === 0 ? Number(f & 0xffffffffn) : sel === 1 ? Number(f >> 32n) : 0;
  }
  get queueSel(): number { return this.r.get(R.queueSel); }
  set queueSel(v: number) { this.setReg(R.queueSel, v); }

  private qoff(q: number): number {
    if (!Number.isInteger(q) || q < 0 || q >= this.geometry.maxQueues) throw new StatePageError(`no queue ${q}`);
    return R.queues + q * QREG_SIZE;
  }
  /** Raw 32-bit queue register write, by Q field name (vmm MMIO path). */
  setQueueReg(q: number, field: keyof typeof Q, v: number): void {
    this.setReg(this.qoff(q) + Q[field], v);
  }
  getQueueReg(q: number, field: keyof typeof Q): number {
    return this.r.get(this.qoff(q) + Q[field]);
  }
  /** Set a queue's whole configuration at once (tests, or the vmm's rebuild). */
  setQueueConfig(q: number, c: QueueConfig): void {
    const o = this.qoff(q);
    this.update(() => {
      this.r.set(o + Q.num, c.num);
      this.r.set(o + Q.ready, c.ready ? 1 : 0);
      this.r.set(o + Q.descLo, lo32(c.desc));
      this.r.set(o + Q.descHi, hi32(c.desc));
      this.r.set(o + Q.driverLo, lo32(c.driver));
      this.r.set(o + Q.driverHi, hi32(c.driver));
      this.r.set(o + Q.deviceLo, lo32(c.device));
      this.r.set(o + Q.deviceHi, hi32(c.device));
    });
  }
  /**
   * A consistent snapshot of a queue's registers (seqlock read: retried while
   * the vmm is mid-update). Returns undefined if it never settles (the writer
   * died mid-update: see `regsTorn`).
   */
  queueConfig(q: number): QueueConfig | undefined {
    const o = this.qoff(q);
    for (let tries = 0; tries < 1000; tries++) {
      const s1 = this.regsSeq;
      if (s1 & 1) continue;
      const c: QueueConfig = {
        num: this.r.get(o + Q.num),
        ready: this.r.get(o + Q.ready) === 1,
        desc: u64(this.r.get(o + Q.descLo), this.r.get(o + Q.descHi)),
        driver: u64(this.r.get(o + Q.driverLo), this.r.get(o + Q.driverHi)),
        device: u64(this.r.get(o + Q.deviceLo), this.r.get(o + Q.deviceHi)),
      };
      if (this.regsSeq === s1) return c;
    }
    return undefined;
  }

  /** Where this slot's blocks lie, page-relative (for `tsvmm inject`, which corrupts them on purpose). */
  layout(): { staticOffset: number; staticLength: number; regsOffset: number; regsLength: number; progressOffset: (q: number) => number; progressLength: number } {
    const regs = this.base + STATIC_SIZE;
    const progress = regs + regBlockSize(this.geometry);
    const len = progressSize(this.geometry);
    return { staticOffset: this.base, staticLength: STATIC_SIZE, regsOffset: regs, regsLength: regBlockSize(this.geometry), progressOffset: (q) => progress + q * len, progressLength: len };
  }

  /** Progress record of queue `q` (driver-domain state). */
  progress(q: number): QueueProgress {
    if (!Number.isInteger(q) || q < 0 || q >= this.geometry.maxQueues) throw new StatePageError(`no queue ${q}`);
    const off = this.base + STATIC_SIZE + regBlockSize(this.geometry) + q * progressSize(this.geometry);
    return new QueueProgress(this.u32, off, this.geometry.maxQueueSize);
  }

  /** Device reset (guest wrote 0 to Status): registers, interrupt status and all queue progress. */
  resetRegisters(): void {
    this.update(() => {
      const from = this.base + STATIC_SIZE + R.checksummedFrom;
      this.bytes.fill(0, from, this.base + STATIC_SIZE + regBlockSize(this.geometry));
    });
    this.r.store(R.status, 0);
    this.r.and(R.isr, ~ISR_WORD.BITS); // the ACK count runs on
    for (let q = 0; q < this.geometry.maxQueues; q++) this.progress(q).reset(0);
  }

  /** Invariant violations of this slot (empty when sane); `regs`: its checkRegs() result, if already read. */
  validate(regs = this.checkRegs()): string[] {
    const e: string[] = [];
    const nq = this.numQueues;
    if (this.deviceId === 0) e.push('device id 0');
    if (nq < 1 || nq > this.geometry.maxQueues) e.push(`queue count ${nq} out of range`);
    if (!isPow2(this.queueNumMax) || this.queueNumMax > this.geometry.maxQueueSize) e.push(`queue num max ${this.queueNumMax} invalid`);
    if (this.w.get(S.configLen) > CONFIG_MAX) e.push('config length too large');
    if (regs === 'torn') e.push('register update torn (seqlock odd)');
    else if (regs === 'mismatch') e.push('register checksum mismatch');
    if ((this.status & ~STATUS_KNOWN_BITS) !== 0) e.push(`unknown status bits 0x${this.status.toString(16)}`);
    for (let q = 0; q < Math.min(nq, this.geometry.maxQueues); q++) {
      const num = this.getQueueReg(q, 'num');
      const ready = this.getQueueReg(q, 'ready');
      if (num > this.queueNumMax) e.push(`queue ${q}: num ${num} > max ${this.queueNumMax}`);
      if (ready > 1) e.push(`queue ${q}: ready ${ready}`);
      for (const pe of this.progress(q).validate()) e.push(`queue ${q}: ${pe}`);
    }
    return e;
  }
}

// The device page sits between the platform page and the control page of the state memfd
// (contracts/fds.ts): a layout that outgrew it would silently overlap the control page.
if (StatePage.layoutSize(DEFAULT_GEOMETRY) > DEVICE_PAGE_SIZE) {
  throw new Error(`the state page layout (${StatePage.layoutSize(DEFAULT_GEOMETRY)} bytes) does not fit its ${DEVICE_PAGE_SIZE} bytes of the state memfd`);
}

/** The device state page of a state memfd, as every component maps it: its own bytes only. */
export function mapDevicePage(stateFd: number): StatePage {
  return StatePage.attach(new Uint8Array(native.mmap(stateFd, DEVICE_PAGE_SIZE, DEVICE_PAGE_OFFSET, true)));
}
