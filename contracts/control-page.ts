/**
 * The control page: the part of the state memfd (at CONTROL_OFFSET, contracts/fds.ts) that the
 * control plane reads and that outlives every component, the priv-domain included.
 *
 *   - the console ring: every byte of guest serial output (vCPU threads write it where they
 *     already write serial lines); the priv-domain copies it to the console log and serves
 *     `tsvmm console` from it, and a restarted priv-domain resumes from the shared offsets;
 *   - vCPU exit counters, per vCPU and exit reason (one writer each: that vCPU's thread);
 *   - virtio request/byte/error counters per device and operation (one writer: the driver-domain);
 *   - the pause request (written by the supervisor) and the number of vCPUs parked (the vmm).
 *
 * Counters are float64 slots with a single writer each, so a reader in another process sees
 * whole values (aligned 8-byte stores) and they keep counting across restarts of their writer.
 *
 * Layout v1 (byte offsets inside the control page; u32 little-endian unless noted):
 *      0 magic 'TSCT'        4 layout version (1)     8 page size
 *     16 pause requested (0 run, 1 pause)   20 vCPUs parked (vmm)   24 vCPUs of the VM
 *     64 console head (u32, bytes ever written, mod 2^32)
 *     68 console logged (u32, how far the priv-domain copied the ring into the log file)
 *     72 console ring size
 *     76 serial output dropped (u32, bytes the --serial sink refused: a full disk, /dev/full; mod 2^32)
 *   4096 device stats: [MAX_STAT_DEVICES][MAX_STAT_OPS] x {requests, bytes, errors} float64
 *   8192 exit counters: [VCPU_SLOTS][MAX_EXIT_REASONS] float64; per vCPU, slot r < NATIVE_EXIT_SLOT.IO
 *        counts every exit of KVM exit reason r, and the NATIVE_EXIT_SLOT slots count the IO and MMIO
 *        exits of those that the native exit loop answered without JavaScript (native/kvm/fastexit.cc;
 *        added to v1 in slots no KVM exit reason uses: an older vmm leaves them 0)
 * 139264 request latency: [MAX_STAT_DEVICES][MAX_STAT_OPS] x {LATENCY_BUCKETS.length + 1 bucket
 *        counts (not cumulative; the last is +Inf), sum of seconds} float64 (one writer: the
 *        driver-domain). Added to v1 in space v1 left zero: a page an older supervisor formatted
 *        reads as no observations.
 * 262144 console ring (CONSOLE_SIZE bytes)
 */
import { native } from '../native/kvm';
import { CONTROL_OFFSET, CONTROL_SIZE } from './fds';
import { MAX_VCPUS } from './layout';
import { VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './virtio-mmio-layout';

export const CONTROL_MAGIC = 0x54435354; // 'TSCT'
export const CONTROL_VERSION = 1;
export const MAX_EXIT_REASONS = 64;
/** The exit-counter slots (past every KVM exit reason) of the IO and MMIO exits the native loop answered. */
export const NATIVE_EXIT_SLOT = { IO: 62, MMIO: 63 } as const;
/** vCPU slots of the exit-counter table (at least layout.ts's MAX_VCPUS). */
export const VCPU_SLOTS = 256;
if (MAX_VCPUS > VCPU_SLOTS) throw new Error(`the control page has exit counters for ${VCPU_SLOTS} vCPUs, a VM may have ${MAX_VCPUS}`);
export const MAX_STAT_DEVICES = 8;
export const MAX_STAT_OPS = 8;
export const CONSOLE_OFFSET = 256 * 1024;
export const CONSOLE_SIZE = 512 * 1024;

const W = { magic: 0, version: 1, size: 2, pauseReq: 4, parked: 5, cpus: 6, conHead: 16, conLogged: 17, conSize: 18, serialDropped: 19 } as const;
const DEV_STATS = 4096;
const EXITS = 8192;
const LATENCY = EXITS + VCPU_SLOTS * MAX_EXIT_REASONS * 8;

/**
 * Upper bounds (seconds) of the virtio request latency histogram's buckets: from taking a request
 * off its ring to completing it (blk; net TX), or from reading a frame off the TAP to completing
 * it into a guest buffer (net RX: the wait for one included).
 */
export const LATENCY_BUCKETS = [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1];
/** float64 slots per device and operation: the buckets, +Inf, the sum. */
const LAT_SLOTS = LATENCY_BUCKETS.length + 2;
if (LATENCY + MAX_STAT_DEVICES * MAX_STAT_OPS * LAT_SLOTS * 8 > 256 * 1024) throw new Error('the latency histograms overlap the console ring');

/** Operations counted per virtio device (index into the stats table). */
export enum StatOp { Read = 0, Write = 1, Flush = 2, GetId = 3, Other = 4, Tx = 5, Rx = 6 }
export const STAT_OP_NAMES = ['read', 'write', 'flush', 'get_id', 'other', 'tx', 'rx'];

export class ControlPage {
  readonly u32: Int32Array;
  readonly f64: Float64Array;
  readonly bytes: Uint8Array;

  constructor(readonly buf: ArrayBuffer) {
    this.u32 = new Int32Array(buf, 0, 1024);
    this.f64 = new Float64Array(buf, 0, CONSOLE_OFFSET / 8);
    this.bytes = new Uint8Array(buf, 0, CONTROL_SIZE);
  }

  /** Maps the control page of the state memfd `fd`. */
  static map(fd: number): ControlPage {
    return new ControlPage(native.mmap(fd, CONTROL_SIZE, CONTROL_OFFSET, true));
  }

  /** Maps it if it is a formatted v1 page, else undefined (an older supervisor): callers then skip their hooks. */
  static tryMap(fd: number): ControlPage | undefined {
    try {
      const p = ControlPage.map(fd);
      return p.valid() ? p : undefined;
    } catch {
      return undefined;
    }
  }

  /** Formats a fresh page (supervisor, before any component starts). */
  init(cpus: number): void {
    this.bytes.fill(0);
    Atomics.store(this.u32, W.size, CONTROL_SIZE);
    Atomics.store(this.u32, W.cpus, cpus);
    Atomics.store(this.u32, W.conSize, CONSOLE_SIZE);
    Atomics.store(this.u32, W.version, CONTROL_VERSION);
    Atomics.store(this.u32, W.magic, CONTROL_MAGIC);
  }

  valid(): boolean {
    return Atomics.load(this.u32, W.magic) === CONTROL_MAGIC && Atomics.load(this.u32, W.version) === CONTROL_VERSION &&
      Atomics.load(this.u32, W.size) === CONTROL_SIZE && Atomics.load(this.u32, W.conSize) === CONSOLE_SIZE;
  }

  get cpus(): number { return Atomics.load(this.u32, W.cpus); }

  // --- pause ---
  get pauseRequested(): boolean { return Atomics.load(this.u32, W.pauseReq) !== 0; }
  set pauseRequested(v: boolean) { Atomics.store(this.u32, W.pauseReq, v ? 1 : 0); }
  get parkedVcpus(): number { return Atomics.load(this.u32, W.parked); }
  set parkedVcpus(n: number) { Atomics.store(this.u32, W.parked, n); }

  // --- exit counters ---
  /** The exit counters of one vCPU (index = KVM exit reason); written only by that vCPU's thread. */
  exitCounters(vcpu: number): Float64Array {
    if (vcpu < 0 || vcpu >= VCPU_SLOTS) throw new Error(`vCPU ${vcpu} has no exit counters`);
    return new Float64Array(this.buf, EXITS + vcpu * MAX_EXIT_REASONS * 8, MAX_EXIT_REASONS);
  }

  // --- device stats ---
  /** [requests, bytes, errors] of one device and operation; written only by the driver-domain. */
  devStat(dev: number, op: StatOp): Float64Array {
    return this.f64.subarray((DEV_STATS >> 3) + (dev * MAX_STAT_OPS + op) * 3, (DEV_STATS >> 3) + (dev * MAX_STAT_OPS + op) * 3 + 3);
  }
  countRequest(dev: number, op: StatOp, bytes: number, ok: boolean): void {
    if (dev < 0 || dev >= MAX_STAT_DEVICES) return;
    const i = (DEV_STATS >> 3) + (dev * MAX_STAT_OPS + op) * 3;
    this.f64[i]++;
    this.f64[i + 1] += bytes;
    if (!ok) this.f64[i + 2]++;
  }

  // --- request latency ---
  /**
   * One request of device `dev`, operation `op` took `seconds`: into its bucket. No allocation:
   * called for every request on the driver-domain's hot path.
   */
  observeLatency(dev: number, op: StatOp, seconds: number): void {
    if (dev < 0 || dev >= MAX_STAT_DEVICES) return;
    const base = (LATENCY >> 3) + (dev * MAX_STAT_OPS + op) * LAT_SLOTS;
    let b = 0;
    while (b < LATENCY_BUCKETS.length && seconds > LATENCY_BUCKETS[b]) b++;
    this.f64[base + b]++;
    this.f64[base + LAT_SLOTS - 1] += seconds;
  }

  /** [bucket counts (not cumulative) ..., +Inf count, sum of seconds] of one device and operation. */
  latency(dev: number, op: StatOp): Float64Array {
    const base = (LATENCY >> 3) + (dev * MAX_STAT_OPS + op) * LAT_SLOTS;
    return this.f64.subarray(base, base + LAT_SLOTS);
  }

  // --- console ring ---
  /** Bytes ever written (mod 2^32). */
  get consoleHead(): number { return Atomics.load(this.u32, W.conHead) >>> 0; }
  get consoleLogged(): number { return Atomics.load(this.u32, W.conLogged) >>> 0; }
  set consoleLogged(v: number) { Atomics.store(this.u32, W.conLogged, v | 0); }

  /** Bytes of guest serial output the serial sink refused (mod 2^32). */
  get serialDropped(): number { return Atomics.load(this.u32, W.serialDropped) >>> 0; }
  /** The serial sink refused `n` bytes (any vCPU thread): they are still in the console ring. */
  countSerialDropped(n: number): void { Atomics.add(this.u32, W.serialDropped, n); }

  /** One byte of guest serial output (any vCPU thread). */
  consolePush(b: number): void {
    const pos = Atomics.add(this.u32, W.conHead, 1) >>> 0;
    this.bytes[CONSOLE_OFFSET + (pos % CONSOLE_SIZE)] = b;
  }

  /**
   * The ring's bytes from position `from` (mod 2^32) up to the head, at most the ring's size:
   * `lost` says how many bytes between `from` and the oldest byte still in the ring were
   * overwritten. Returns the new position.
   */
  consoleRead(from: number): { data: Buffer; next: number; lost: number } {
    const head = this.consoleHead;
    let avail = (head - from) >>> 0;
    let lost = 0;
    if (avail > CONSOLE_SIZE) { lost = avail - CONSOLE_SIZE; avail = CONSOLE_SIZE; }
    const start = ((head - avail) >>> 0) % CONSOLE_SIZE;
    const data = Buffer.alloc(avail);
    const first = Math.min(avail, CONSOLE_SIZE - start);
    data.set(this.bytes.subarray(CONSOLE_OFFSET + start, CONSOLE_OFFSET + start + first), 0);
    if (avail > first) data.set(this.bytes.subarray(CONSOLE_OFFSET, CONSOLE_OFFSET + avail - first), first);
    return { data, next: head, lost };
  }

  /** The oldest position still in the ring. */
  consoleTail(): number {
    const head = this.consoleHead;
    return head >= CONSOLE_SIZE ? (head - CONSOLE_SIZE) >>> 0 : 0;
  }
}

/** virtio-blk request type -> counted operation. */
export function blkOp(type: number): StatOp {
  return type === VIRTIO_BLK_T_IN ? StatOp.Read : type === VIRTIO_BLK_T_OUT ? StatOp.Write : type === VIRTIO_BLK_T_FLUSH ? StatOp.Flush
    : type === VIRTIO_BLK_T_GET_ID ? StatOp.GetId : StatOp.Other;
}

/**
 * One device's counters in the control page, handed to its model in the driver-domain (an object
 * with methods rather than a closure per device: the models' call sites see one target on every
 * device, the JIT warm-up's included, so no optimized code is thrown away for another closure).
 */
export class DeviceCounters {
  constructor(private readonly page: ControlPage, private readonly dev: number) {}
  /**
   * A virtio-blk request of `type` (VIRTIO_BLK_T_*) completed, moving `bytes` of data, `seconds`
   * after it was taken off the ring (virtio/virtio-blk.ts reads the clock per round and batch).
   */
  request(type: number, bytes: number, ok: boolean, seconds: number): void {
    const op = blkOp(type);
    this.page.countRequest(this.dev, op, bytes, ok);
    this.page.observeLatency(this.dev, op, seconds);
  }
  /**
   * A frame of `bytes` of payload went to the TAP (tx) or into the guest (rx); `startMs`:
   * performance.now() when its chain was taken off the ring (tx) or it was read off the TAP (rx).
   */
  frame(dir: 'tx' | 'rx', bytes: number, startMs: number): void {
    const op = dir === 'tx' ? StatOp.Tx : StatOp.Rx;
    this.page.countRequest(this.dev, op, bytes, true);
    this.page.observeLatency(this.dev, op, (performance.now() - startMs) / 1000);
  }
}
