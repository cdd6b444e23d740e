/**
 * virtio-blk device model (virtio 1.2 section 5.2) over a BlockBackend.
 *
 * A request is a chain: a 16-byte device-readable header
 * (virtio_blk_outhdr: u32 type, u32 reserved, u64 sector), data, and a final
 * device-writable status byte; the header and status may be split or merged
 * across descriptors arbitrarily. IN/OUT/FLUSH/GET_ID are served; other
 * types get S_UNSUPP. OUT on a read-only disk gets S_IOERR and writes
 * nothing (5.2.6.2). Data lengths must be multiples of 512 and the sector
 * range must lie inside the disk, else S_IOERR.
 *
 * I/O goes straight between the guest-memory views of the chain and the
 * backend, asynchronously: `kick()` starts every available request (with a
 * batched backend, io_uring, the whole drained batch is submitted with one
 * syscall) and returns. A completion writes the status byte and is staged;
 * staged completions are published together (one used->idx update, the
 * state page's in-flight entries cleared in the same step) and the driver is
 * interrupted at most once per batch, if it wants one (EVENT_IDX): per
 * reaped io_uring batch, per kick for requests failed on the spot, per
 * event-loop turn for Promise-based backends; within one kick's run of
 * submit rounds (see kick()), once per SIGNAL_BYTES and at the end. A
 * request reaches the used ring only after its I/O finished. A malformed
 * chain fails that request (S_IOERR in its last writable byte when it has
 * one, used length 0 otherwise).
 */

import { performance } from 'perf_hooks';
import { GuestMemory } from '../contracts/memory';
import { DeviceSlot, DeviceSpec } from '../contracts/state-page';
import { Virtqueue, Chain, ChainSegments, PopResult, ActivateResult, VirtqueueOptions, segmentViews } from './virtqueue';
import { BatchedBlockBackend, BlockBackend, isBatched } from './block-backend';
import { Notify, deviceRunning, drain, signal, signalIfNeeded } from './queue-runner';
import { iovLength, iovRead, iovSlice, iovWrite } from './iov';
import { RateLimiter, RetryTimer } from './rate-limiter';
import { VIRTIO_QUEUES } from '../contracts/layout';
import {
  DeviceId, TSVMM_VENDOR_ID, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1, features,
} from '../contracts/virtio-mmio-layout';

export { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID } from '../contracts/virtio-mmio-layout';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID } from '../contracts/virtio-mmio-layout';
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;
export const SECTOR_SIZE = 512;
export const VIRTIO_BLK_ID_BYTES = 20;
export const BLK_OUTHDR_SIZE = 16;
/** Bytes of config space we expose: capacity, size_max, seg_max, geometry, blk_size. */
export const BLK_CONFIG_SIZE = 24;
/**
 * Bytes of requests handed to a batched backend per submit round in kick() (env
 * TSVMM_BLK_ROUND_BYTES, for experiments). 1 MiB reads, qd 8, polled: 256 KiB rounds (one request
 * each) ~3.7-4.8 GB/s, 2 MiB ~4.0-5.2, 8 MiB (a whole drained batch) ~3.6-4.1, at a time when a
 * single-threaded page-cache copy ran at ~6 GB/s here. Later, same session, alternating bench/blk
 * seqread runs (2 rounds each, 4 runs per setting): 4 MiB rounds polled median ~10.1 GB/s, irq
 * ~9.9; 2 MiB ~9.6 and ~8.6; 1 MiB ~8.2 and ~7.8.
 */
export const SUBMIT_BYTES = Number(process.env.TSVMM_BLK_ROUND_BYTES) || 4 * 1024 * 1024;
/** Inside one kick(), the interrupt decision is taken once per this many bytes of requests served. */
export const SIGNAL_BYTES = 4 * 1024 * 1024;
/** How long one kick() keeps serving rounds before it yields to the event loop (ms). */
export const KICK_BUDGET_MS = 2;

export interface BlkOptions {
  /** Queue size the device offers (power of 2). Default 256. */
  queueNumMax?: number;
  /** Max data segments per request (config seg_max). Default 126. */
  segMax?: number;
  /** Logical block size advertised (config blk_size). Default 512. */
  blkSize?: number;
}

/** Features a blk device offers. */
export function blkFeatures(readOnly: boolean): bigint {
  const f = features(VIRTIO_F_VERSION_1, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH);
  return readOnly ? f | features(VIRTIO_BLK_F_RO) : f;
}

/** virtio_blk_config bytes: capacity (512-byte sectors), seg_max, blk_size. */
export function blkConfig(capacitySectors: number, segMax: number, blkSize: number): Uint8Array {
  const b = new Uint8Array(BLK_CONFIG_SIZE);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(capacitySectors), true);
  v.setUint32(8, 0, true); // size_max (feature not offered)
  v.setUint32(12, segMax, true);
  v.setUint32(20, blkSize, true);
  return b;
}

/** The state-page static block for a blk device on `backend`. */
export function blkDeviceSpec(backend: BlockBackend, opts: BlkOptions = {}): DeviceSpec {
  return {
    deviceId: DeviceId.Block,
    vendorId: TSVMM_VENDOR_ID,
    numQueues: VIRTIO_QUEUES.blk,
    queueNumMax: opts.queueNumMax ?? 256,
    deviceFeatures: blkFeatures(backend.readOnly),
    config: blkConfig(Math.floor(backend.size / SECTOR_SIZE), opts.segMax ?? 126, opts.blkSize ?? SECTOR_SIZE),
  };
}

/** A parsed request, or the status to fail it with. */
export type BlkRequest =
  | { ok: true; type: number; sector: number; data: Uint8Array[]; dataLength: number; status: Uint8Array }
  | { ok: false; status: number; statusByte?: Uint8Array; error: string };

/** Scratch for the request header being parsed (virtio is little-endian, and so is the x86-64 host). */
const hdrWords = new Uint32Array(BLK_OUTHDR_SIZE / 4);
const hdrBytes = new Uint8Array(hdrWords.buffer);

/** Why `len` data bytes from `sector` are not a valid transfer on a disk of `capacity` sectors, or undefined. */
function rangeError(sector: number, len: number, capacity: number): string | undefined {
  if (len % SECTOR_SIZE !== 0) return `data length ${len} not a multiple of ${SECTOR_SIZE}`;
  if (!Number.isSafeInteger(sector) || sector + len / SECTOR_SIZE > capacity) return `sectors ${sector}+${len / SECTOR_SIZE} beyond capacity ${capacity}`;
  return undefined;
}

function failed(status: number, error: string, statusByte: Uint8Array): BlkRequest {
  return { ok: false, status, statusByte, error };
}

/**
 * Parse and validate a chain as a virtio-blk request against a disk of `capacity` sectors.
 * (No closures here: two per request were allocated on the hot path.)
 */
export function parseBlkRequest(chain: Chain, capacity: number, readOnly: boolean): BlkRequest {
  if (chain.writableLength < 1) return { ok: false, status: VIRTIO_BLK_S_IOERR, error: 'no status byte' };
  const last = chain.writable[chain.writable.length - 1];
  const statusByte = last.length === 1 ? last : last.subarray(last.length - 1); // a 1-byte status descriptor: its own view
  if (chain.readableLength < BLK_OUTHDR_SIZE) return failed(VIRTIO_BLK_S_IOERR, 'request header too short', statusByte);
  iovRead(chain.readable, hdrBytes); // copied once (no double fetch), into a scratch buffer reused by every request
  const type = hdrWords[0];
  const sector = hdrWords[2] + hdrWords[3] * 0x1_0000_0000;
  const inLen = chain.writableLength - 1;
  const outLen = chain.readableLength - BLK_OUTHDR_SIZE;
  switch (type) {
    case VIRTIO_BLK_T_IN: {
      if (outLen !== 0) return failed(VIRTIO_BLK_S_IOERR, 'IN request with device-readable data', statusByte);
      const e = rangeError(sector, inLen, capacity);
      if (e) return failed(VIRTIO_BLK_S_IOERR, e, statusByte);
      return { ok: true, type, sector, data: iovSlice(chain.writable, 0, inLen), dataLength: inLen, status: statusByte };
    }
    case VIRTIO_BLK_T_OUT: {
      if (readOnly) return failed(VIRTIO_BLK_S_IOERR, 'write to a read-only disk', statusByte);
      if (inLen !== 0) return failed(VIRTIO_BLK_S_IOERR, 'OUT request with device-writable data', statusByte);
      const e = rangeError(sector, outLen, capacity);
      if (e) return failed(VIRTIO_BLK_S_IOERR, e, statusByte);
      return { ok: true, type, sector, data: iovSlice(chain.readable, BLK_OUTHDR_SIZE), dataLength: outLen, status: statusByte };
    }
    case VIRTIO_BLK_T_FLUSH:
      return { ok: true, type, sector: 0, data: [], dataLength: 0, status: statusByte };
    case VIRTIO_BLK_T_GET_ID:
      return { ok: true, type, sector: 0, data: iovSlice(chain.writable, 0, inLen), dataLength: inLen, status: statusByte };
    default:
      return failed(VIRTIO_BLK_S_UNSUPP, `unsupported request type ${type}`, statusByte);
  }
}

/** The bytes a request moves, for a bandwidth limit: data of reads and writes only. */
function dataBytes(req: Extract<BlkRequest, { ok: true }>): number {
  return req.type === VIRTIO_BLK_T_IN || req.type === VIRTIO_BLK_T_OUT ? req.dataLength : 0;
}

/** errno values of a full file system (held, not failed: VirtioBlk.holdFull), and how often a held write is tried again. */
const ENOSPC = 28;
const EDQUOT = 122;
const FULL_RETRY_MS = 100;

export interface BlkStats {
  completed: number;
  errors: number;
  badChains: number;
  /** Highest number of requests in flight at once. */
  maxInflight: number;
}

export class VirtioBlk {
  readonly vq: Virtqueue;
  readonly capacity: number;
  readonly stats: BlkStats = { completed: 0, errors: 0, badChains: 0, maxInflight: 0 };
  /** Last problem seen (bad chain, broken ring), for logs. */
  lastError?: string;
  /** Counts each completed request: its virtio-blk type, data bytes, success (metrics; contracts/control-page.ts DeviceCounters). */
  counters?: { request(type: number, bytes: number, ok: boolean, seconds: number): void };
  /**
   * The latency clock (only with `counters`): performance.now() when the current drain round
   * started, the time its requests count as taken off the ring, and when the completions staged
   * since the last publish were first seen (-1: not yet). One clock read per round and one per
   * published batch, not two per request: a clock read costs ~0.2 us on a PVM host.
   */
  private roundAt = 0;
  private doneAt = -1;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  /** Completions waiting to be published together (heads, used lengths; `stagedIo` of them were in flight). */
  private readonly stagedHeads: number[] = [];
  private readonly stagedLens: number[] = [];
  private stagedIo = 0;
  private flushScheduled = false;
  /** Data bytes queued in the current submit round of kick(). */
  private roundBytes = 0;
  /** Inside kick()'s rounds: flushCompletions publishes but leaves the interrupt decision to kick(). */
  private holdSignal = false;
  /** flushCompletions published while holdSignal was set: the interrupt decision is pending. */
  private signalHeld = false;
  private kickScheduled = false;
  private readonly batched: BatchedBlockBackend | undefined;
  /**
   * The device's rate limit (--disk ...,iops=,bw=; virtio/rate-limiter.ts): a request the limiter
   * refuses is parked, popped but not started (the state page keeps it in flight, so a recovery
   * resubmits it), and no more requests are taken from the ring until the parked ones could go.
   */
  limiter?: RateLimiter;
  private parked: { head: number; req: Extract<BlkRequest, { ok: true }>; t0: number }[] = [];
  /** drainFast's chain segments, filled in place per request. */
  private readonly segs = new ChainSegments();
  private readonly retry = new RetryTimer(() => this.unpark());

  constructor(
    readonly mem: GuestMemory,
    readonly slot: DeviceSlot,
    readonly backend: BlockBackend,
    readonly notify: Notify,
    vqOpts: VirtqueueOptions = {},
  ) {
    this.vq = new Virtqueue(mem, slot, 0, vqOpts);
    this.capacity = Math.floor(backend.size / SECTOR_SIZE);
    if (isBatched(backend)) {
      this.batched = backend;
      backend.sink = this;
    }
  }

  /**
   * Bind the queue once the driver set DRIVER_OK, or again after a restart:
   * in-flight requests recorded in the state page are resubmitted in submit
   * order, then the queue is signalled once in case a completion interrupt
   * was lost, and any new requests are started.
   */
  activate(): ActivateResult {
    const r = this.vq.activate();
    if (!r.ok) {
      this.lastError = r.error;
      return r;
    }
    this.parked = [];
    this.retry.cancel();
    if (this.counters) this.roundAt = performance.now();
    for (const head of r.resubmit) this.handle(this.vq.chainAt(head));
    if (r.recovered) signal(this.vq, this.notify);
    this.kick();
    this.submit();
    return r;
  }

  /**
   * The guest kicked (or we were told to look): start every available
   * request and publish whatever completed already. Returns how many
   * requests were taken.
   *
   * With a batched backend (io_uring) the ring is served in rounds of about
   * SUBMIT_BYTES: pop requests until that many bytes are queued, submit them
   * (page-cache reads and writes complete inside that io_uring_enter),
   * publish them, and look at the avail ring again, until it is empty; the
   * interrupt decision is taken once per SIGNAL_BYTES and when the run ends.
   * With 1 MiB requests a round is four of them: the driver sees them
   * complete and reuses their slots while the next ones are being copied,
   * instead of the whole drained batch completing at once. Kicks stay suppressed for as
   * long as the rounds go on (Virtqueue.disableNotify); after KICK_BUDGET_MS
   * the rest continues from setImmediate so timers and other fds get a turn.
   */
  kick(): number {
    if (!this.vq.isActive || !deviceRunning(this.slot)) return 0;
    if (!this.batched) {
      if (this.counters) this.roundAt = performance.now();
      const n = drain(this.vq, (r) => this.handle(r), () => this.parked.length === 0);
      this.submit();
      return n;
    }
    const until = performance.now() + KICK_BUDGET_MS;
    const take = () => this.roundBytes < SUBMIT_BYTES && this.parked.length === 0;
    let n = 0;
    let unsignalled = 0;
    this.holdSignal = true;
    try {
      for (;;) {
        this.roundBytes = 0;
        if (this.counters) this.roundAt = performance.now();
        n += this.drainFast(take);
        this.submit();
        if (this.parked.length) return n; // rate-limited: unpark() goes on when the limiter lets it
        if (take()) return n; // the ring ran empty and kicks are enabled again
        // Interrupt moderation inside a run of rounds: every round is published at once (a polling
        // driver sees it), but the interrupt decision is taken once per SIGNAL_BYTES (and when the
        // run ends), so an interrupt-driven driver is not interrupted for every 1 MiB request.
        unsignalled += this.roundBytes;
        if (unsignalled >= SIGNAL_BYTES) {
          unsignalled = 0;
          this.releaseSignal();
        }
        if (performance.now() > until) {
          if (!this.kickScheduled) {
            this.kickScheduled = true;
            setImmediate(() => { this.kickScheduled = false; this.kick(); });
          }
          return n;
        }
      }
    } finally {
      this.holdSignal = false;
      this.releaseSignal();
    }
  }

  /**
   * queue-runner's drain() for the batched path, with a fast path for the usual request: the
   * chain is walked into `segs` (no views), and a read or write whose 16-byte header is one
   * readable segment and whose status byte is the last, 1-byte, writable segment is started
   * from the segments: the header is read through its region's DataView, and only the data and
   * status views are made. Anything else (and any request the fast path would fail) goes through
   * pop()'s result and handle(), exactly as drain() does.
   */
  private drainFast(take: () => boolean): number {
    const vq = this.vq;
    const segs = this.segs;
    let n = 0;
    for (;;) {
      vq.disableNotify();
      while (take()) {
        const kind = vq.popSegments(segs);
        if (kind === 'empty') break;
        n++;
        if (kind === 'chain' && this.startFast(segs)) continue;
        const r = vq.result(kind, segs);
        if (r.kind === 'empty' || !this.handle(r) || r.kind === 'broken') return n;
      }
      if (!take() || !vq.enableNotify()) return n;
    }
  }

  /** Starts a well-formed IN or OUT request straight from its segments; false: take the general path. */
  private startFast(s: ChainSegments): boolean {
    const count = s.count;
    const fw = s.firstWritable;
    if (fw < 1 || count < 2 || s.length[0] !== BLK_OUTHDR_SIZE || s.length[count - 1] !== 1) return false;
    const mem = this.mem;
    const hv = this.vq.regionView(s.region[0]);
    const ho = s.offset[0];
    const type = hv.getUint32(ho, true);
    const sector = hv.getUint32(ho + 8, true) + hv.getUint32(ho + 12, true) * 0x1_0000_0000;
    let data: Uint8Array[];
    let len: number;
    if (type === VIRTIO_BLK_T_IN) {
      if (fw !== 1) return false; // device-readable data: an error, the general path reports it
      len = s.writableLength - 1;
      data = segmentViews(mem, s, 1, count - 1);
    } else if (type === VIRTIO_BLK_T_OUT) {
      if (fw !== count - 1 || this.backend.readOnly) return false;
      len = s.readableLength - BLK_OUTHDR_SIZE;
      data = segmentViews(mem, s, 1, fw);
    } else {
      return false;
    }
    if (rangeError(sector, len, this.capacity) !== undefined) return false;
    const so = s.offset[count - 1];
    const status = mem.regions[s.region[count - 1]].bytes.subarray(so, so + 1);
    this.startParsed(s.head, { ok: true, type, sector, data, dataLength: len, status });
    return true;
  }

  /** Take the interrupt decision flushCompletions() held back, if it held one. */
  private releaseSignal(): void {
    if (!this.signalHeld) return;
    this.signalHeld = false;
    signalIfNeeded(this.vq, this.notify);
  }

  /** Requests started and not yet completed (published). */
  get inflightCount(): number {
    return this.inflight;
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Publish every staged completion with one used->idx update and interrupt
   * the driver once if it wants one (EVENT_IDX rules in needsNotify). The
   * state page records them as completed in the same step (Virtqueue.pushMany).
   */
  flushCompletions(): void {
    const n = this.stagedHeads.length;
    if (n === 0) return;
    this.doneAt = -1;
    this.vq.pushMany(this.stagedHeads, this.stagedLens);
    this.stagedHeads.length = 0;
    this.stagedLens.length = 0;
    if (this.holdSignal) this.signalHeld = true;
    else signalIfNeeded(this.vq, this.notify);
    const io = this.stagedIo;
    this.stagedIo = 0;
    this.inflight -= io;
    if (io > 0 && this.inflight === 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Hand queued I/O to the backend (one syscall for io_uring), then publish what completed. */
  private submit(): void {
    this.batched?.submit();
    this.flushCompletions();
  }

  private stage(head: number, len: number, wasInflight: boolean): void {
    this.stagedHeads.push(head);
    this.stagedLens.push(len);
    if (wasInflight) this.stagedIo++;
  }

  private handle(r: PopResult): boolean {
    switch (r.kind) {
      case 'empty':
        return false;
      case 'broken':
        this.lastError = r.error;
        return false;
      case 'bad-chain': {
        this.stats.badChains++;
        this.stats.errors++;
        this.lastError = r.error;
        const last = r.writable[r.writable.length - 1];
        if (last && last.length > 0) {
          last[last.length - 1] = VIRTIO_BLK_S_IOERR;
          this.stage(r.head, 1, false);
        } else {
          this.stage(r.head, 0, false);
        }
        return true;
      }
      case 'chain':
        this.start(r.chain);
        return true;
    }
  }

  private start(chain: Chain): void {
    const req = parseBlkRequest(chain, this.capacity, this.backend.readOnly);
    if (!req.ok) {
      this.stats.errors++;
      this.lastError = req.error;
      if (req.statusByte) {
        req.statusByte[0] = req.status;
        this.stage(chain.head, 1, false);
      } else {
        this.stage(chain.head, 0, false);
      }
      return;
    }
    this.startParsed(chain.head, req);
  }

  /** A parsed, valid request: start it, or park it for the rate limiter. */
  private startParsed(head: number, req: Extract<BlkRequest, { ok: true }>): void {
    const lim = this.limiter;
    if (lim && (this.parked.length > 0 || !lim.consume(1, dataBytes(req)))) {
      this.parked.push({ head, req, t0: this.roundAt });
      if (this.parked.length === 1) this.retry.in(lim.waitMs(1, dataBytes(req)));
      return;
    }
    this.startIo(head, req);
  }

  /** The rate limiter's timer: start the parked requests it now allows, then take more from the ring. */
  private unpark(): void {
    const lim = this.limiter;
    if (!lim || !this.vq.isActive || !deviceRunning(this.slot)) {
      this.parked = []; // the driver reset the device: those requests are gone with it
      return;
    }
    while (this.parked.length > 0) {
      const { head, req, t0 } = this.parked[0];
      if (!lim.consume(1, dataBytes(req))) {
        this.retry.in(lim.waitMs(1, dataBytes(req)));
        break;
      }
      this.parked.shift();
      this.startIo(head, req, t0);
    }
    this.submit();
    if (this.parked.length === 0) this.kick();
  }

  /** `t0`: when it was taken off the ring (its latency, metrics, runs to its completion; a wait for the rate limiter included). */
  private startIo(head: number, req: Extract<BlkRequest, { ok: true }>, t0 = this.roundAt): void {
    this.inflight++;
    if (this.inflight > this.stats.maxInflight) this.stats.maxInflight = this.inflight;
    if (req.type === VIRTIO_BLK_T_GET_ID) {
      // No I/O: answered on the spot, published with this kick's other completions.
      this.succeeded(head, req, this.getId(req.data), t0);
      return;
    }
    this.issue(head, req, t0);
  }

  /** Hands a parsed request to the backend; a write the disk has no room for is held and issued again (holdFull). */
  private issue(head: number, req: Extract<BlkRequest, { ok: true }>, t0: number): void {
    const b = this.batched;
    if (b) {
      // Batched backend: queue now, submitted with the rest of this round.
      this.roundBytes += req.dataLength;
      const written = req.type === VIRTIO_BLK_T_IN ? req.dataLength : 0;
      const done = (err: Error | null) => {
        if (err && this.holdFull(head, req, err, t0)) return;
        if (err) this.failed(head, req, err, t0);
        else this.succeeded(head, req, written, t0);
      };
      const offset = req.sector * SECTOR_SIZE;
      if (req.type === VIRTIO_BLK_T_IN) b.queueRead(req.data, offset, done);
      else if (req.type === VIRTIO_BLK_T_OUT) b.queueWrite(req.data, offset, done);
      else b.queueFlush(done);
      return;
    }
    let io: Promise<number>;
    try {
      io = this.io(req);
    } catch (e) {
      io = Promise.reject(e);
    }
    io.then(
      (written) => { this.succeeded(head, req, written, t0); this.scheduleFlush(); },
      (e: Error) => { if (!this.holdFull(head, req, e, t0)) { this.failed(head, req, e, t0); this.scheduleFlush(); } },
    );
  }

  /** Requests waiting for the disk's file system to have room again, and since when (performance.now()). */
  private held = 0;
  private fullSince = 0;
  /** Told when the disk's file system fills up, and when it has room again (held for `ms`). */
  onFull?: (full: boolean, ms: number) => void;

  /**
   * ENOSPC or EDQUOT on a write or flush: the file system under the image is full, which the outside
   * world can undo (as QEMU's werror=enospc stops the VM instead of failing the request). The
   * request stays in flight and is issued again every FULL_RETRY_MS: the guest sees a slow write,
   * not an error, and its own timeout still bounds the wait. True if it was held.
   */
  private holdFull(head: number, req: Extract<BlkRequest, { ok: true }>, e: Error, t0: number): boolean {
    const errno = Math.abs((e as NodeJS.ErrnoException).errno ?? 0);
    const code = (e as NodeJS.ErrnoException).code;
    if (req.type === VIRTIO_BLK_T_IN || !(errno === ENOSPC || errno === EDQUOT || code === 'ENOSPC' || code === 'EDQUOT')) return false;
    this.held++;
    if (!this.fullSince) { this.fullSince = performance.now(); this.onFull?.(true, 0); }
    setTimeout(() => {
      this.held--;
      if (!this.vq.isActive) return; // reset or deactivated meanwhile: a restarted driver-domain resubmits it
      this.issue(head, req, t0);
      this.submit();
    }, FULL_RETRY_MS);
    return true;
  }

  /** A held request completed: the disk has room again once none is waiting. */
  private unheld(): void {
    if (this.fullSince && this.held === 0) {
      this.onFull?.(false, performance.now() - this.fullSince);
      this.fullSince = 0;
    }
  }

  private succeeded(head: number, req: Extract<BlkRequest, { ok: true }>, written: number, t0: number): void {
    if (this.fullSince) this.unheld();
    this.counters?.request(req.type, req.dataLength, true, this.latency(t0));
    this.finish(head, req.status, VIRTIO_BLK_S_OK, written + 1);
  }

  /** Called on every request the backend failed (the driver-domain logs them, rate-limited). */
  onIoError?: (sector: number, op: 'read' | 'write' | 'flush', e: Error) => void;

  private failed(head: number, req: Extract<BlkRequest, { ok: true }>, e: Error, t0: number): void {
    this.lastError = `I/O error: ${e.message}`;
    this.onIoError?.(req.sector, req.type === VIRTIO_BLK_T_OUT ? 'write' : req.type === VIRTIO_BLK_T_FLUSH ? 'flush' : 'read', e);
    this.counters?.request(req.type, req.dataLength, false, this.latency(t0));
    this.finish(head, req.status, VIRTIO_BLK_S_IOERR, 1);
  }

  /** Seconds from `t0` (a round's start) to this batch of completions (the clock read once per batch). */
  private latency(t0: number): number {
    if (this.doneAt < 0) this.doneAt = performance.now();
    return (this.doneAt - t0) / 1000;
  }

  /**
   * Promise-based backends (the thread-pool fallback) complete one request
   * per libuv callback: publish those that completed in the same event-loop
   * turn together, from the check phase.
   */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flushCompletions();
    });
  }

  /** Run the I/O; resolves with the bytes written into guest memory (excluding the status byte). */
  private async io(req: Extract<BlkRequest, { ok: true }>): Promise<number> {
    switch (req.type) {
      case VIRTIO_BLK_T_IN:
        await this.backend.read(req.data, req.sector * SECTOR_SIZE);
        return req.dataLength;
      case VIRTIO_BLK_T_OUT:
        await this.backend.write(req.data, req.sector * SECTOR_SIZE);
        return 0;
      case VIRTIO_BLK_T_FLUSH:
        await this.backend.flush();
        return 0;
      default:
        throw new Error(`unexpected type ${req.type}`);
    }
  }

  private getId(data: Uint8Array[]): number {
    const id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    id.set(new TextEncoder().encode(this.backend.id).subarray(0, VIRTIO_BLK_ID_BYTES));
    return iovWrite(data, id.subarray(0, Math.min(VIRTIO_BLK_ID_BYTES, iovLength(data))));
  }

  /** Write the status byte and stage the completion; it reaches the guest at the next flushCompletions(). */
  private finish(head: number, statusByte: Uint8Array, status: number, len: number): void {
    statusByte[0] = status;
    if (status === VIRTIO_BLK_S_OK) this.stats.completed++;
    else this.stats.errors++;
    this.stage(head, len, true);
  }
}
