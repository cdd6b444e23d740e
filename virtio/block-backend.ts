/**
 * Block storage behind virtio-blk: an async, scatter-gather interface so
 * several requests can be in flight at once, with two implementations that
 * read and write straight into the guest-memory views they are given (no
 * bounce buffer) and flush with fdatasync:
 *
 * - UringBlockBackend (the fast path): io_uring over raw syscalls
 *   (virtio/io-uring.ts). A drained batch of requests is queued as SQEs and
 *   handed to the kernel with one io_uring_enter; reads served from the page
 *   cache complete inside that syscall and are reaped right after it; the
 *   rest complete later and the ring's eventfd (watched by the
 *   driver-domain's poller) wakes one reap of the whole batch. The device is
 *   told once per reaped batch (`sink`) so it publishes used and signals
 *   once per batch. No thread hand-off and no Promise per request; only
 *   where the host has CPUs to spare, large transfers go to io_uring's
 *   workers, which copy several at once (largeTransferPolicy).
 * - FileBlockBackend (the fallback when io_uring is unavailable):
 *   fs.readv/fs.writev on the libuv thread pool (UV_THREADPOOL_SIZE threads,
 *   4 by default), one Promise per request.
 *
 * `openBlockBackend` picks one at runtime (the disk's io=, else env TSVMM_BLK_IO=auto|uring|threads).
 *
 * A disk opened with O_DIRECT (--disk ...,cache=none: `openDiskFd`) bypasses the host page cache;
 * the kernel then needs every buffer's address and length aligned (statx STATX_DIOALIGN,
 * `dioAlignment`). Both backends take such a disk's alignment (`direct`) and move a request whose
 * guest buffers are not aligned through an aligned bounce buffer (one copy); aligned requests
 * (a Linux guest's page-cache pages) go straight to the guest's memory as without O_DIRECT.
 */

import * as fs from 'fs';
import * as os from 'os';
import { native } from '../native/kvm';
import { IoUring, putIovec, uringConstants } from './io-uring';
import { IOVEC_SIZE, iovLength, iovRead, iovSlice, iovWrite } from './iov';
import { hostAddress } from '../contracts/memory';

const { EAGAIN, EBUSY, EINTR, EINVAL } = os.constants.errno;

export interface BlockBackend {
  /** Size in bytes (the device exposes floor(size / 512) sectors). */
  readonly size: number;
  readonly readOnly: boolean;
  /** Serial number for VIRTIO_BLK_T_GET_ID (at most 20 bytes are used). */
  readonly id: string;
  /** Fill `buffers` from byte `offset`; resolves with the bytes read (all of them, or rejects). */
  read(buffers: Uint8Array[], offset: number): Promise<number>;
  /** Write `buffers` at byte `offset`; resolves with the bytes written (all of them, or rejects). */
  write(buffers: Uint8Array[], offset: number): Promise<number>;
  /** Make completed writes durable. */
  flush(): Promise<void>;
}

/** What a batched backend tells after each batch of completions (VirtioBlk). */
export interface BatchSink { flushCompletions(): void }

/** Completion of a queued operation: null when every byte was transferred (or the flush is done). */
export type IoDone = (err: Error | null) => void;

/**
 * A backend with batched submission and completion (io_uring). Operations are
 * queued (nothing reaches the kernel yet), `submit()` hands all of them over
 * at once; completions are delivered by `submit()` (those that finished
 * inside the syscall) or by `reap()` (the rest), and after each delivered
 * batch `sink` is told once. A `done` callback never runs inside a queue*
 * call.
 */
export interface BatchedBlockBackend extends BlockBackend {
  readonly batched: true;
  queueRead(buffers: Uint8Array[], offset: number, done: IoDone): void;
  queueWrite(buffers: Uint8Array[], offset: number, done: IoDone): void;
  queueFlush(done: IoDone): void;
  /** Submit everything queued with one syscall and deliver the completions already there. */
  submit(): void;
  /** Deliver the completions that have arrived (the completion eventfd fired); returns how many. */
  reap(): number;
  /**
   * Told once after each batch of delivered completions (VirtioBlk publishes them then). An
   * object, not a callback: every device is one call target for the optimized code, the JIT
   * warm-up's private one included, where a closure per device made another target.
   */
  sink: BatchSink | undefined;
  /** An eventfd that becomes readable when completions arrive (for an external poller), or -1. */
  readonly completionFd: number;
  /** Operations queued or in the kernel. */
  readonly pending: number;
  close(): void;
}

export function isBatched(b: BlockBackend): b is BatchedBlockBackend {
  return (b as Partial<BatchedBlockBackend>).batched === true;
}

/** What O_DIRECT needs aligned on a disk: buffer addresses (`mem`) and file offsets and lengths (`offset`), in bytes. */
export interface Alignment { mem: number; offset: number }

/** Where the kernel does not say (before Linux 6.1, or a file system that does not report it): a page and a sector. */
const DEFAULT_DIO_ALIGN: Alignment = { mem: 4096, offset: 512 };

/** Open a disk image: read-write or read-only, through the page cache or (cache 'none') with O_DIRECT. Throws as fs.openSync does. */
export function openDiskFd(path: string, readOnly: boolean, cache: 'writeback' | 'none' = 'writeback'): number {
  const { O_RDONLY, O_RDWR, O_DIRECT } = fs.constants;
  return fs.openSync(path, (readOnly ? O_RDONLY : O_RDWR) | (cache === 'none' ? O_DIRECT : 0));
}

/** The alignment O_DIRECT needs on `fd` (statx STATX_DIOALIGN), or a page and a sector where the kernel does not say. */
export function dioAlignment(fd: number): Alignment {
  const r = native.dioAlign(fd);
  if (typeof r === 'number' || r[0] === 0 || r[1] === 0) return { ...DEFAULT_DIO_ALIGN };
  return { mem: r[0], offset: r[1] };
}

/** Why io_uring cannot be used here (the errno's code), or undefined when it can. */
export function uringUnavailable(): string | undefined {
  try {
    IoUring.create(2).close();
    return undefined;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return err.code ?? err.message;
  }
}

/** Whether an O_DIRECT transfer straight into `buffers` would break the kernel's alignment rules (then it is bounced). */
export function misaligned(buffers: readonly Uint8Array[], a: Alignment): boolean {
  for (let i = 0; i < buffers.length; i++) {
    const b = buffers[i];
    if (b.length % a.offset !== 0 || hostAddress(b) % a.mem !== 0) return true;
  }
  return false;
}

/** A zeroed buffer of `len` bytes whose host address is a multiple of `align`. */
export function alignedBuffer(len: number, align: number): Uint8Array {
  const ab = new ArrayBuffer(len + align);
  const addr = Number(native.address(ab));
  return new Uint8Array(ab, (align - (addr % align)) % align, len);
}

/**
 * For a misaligned O_DIRECT transfer: the aligned buffer to hand the kernel instead of `buffers`
 * (a write's data already copied in), and what to do once a read of it succeeded (copy out).
 */
function bounce(buffers: Uint8Array[], total: number, a: Alignment, write: boolean): { buffers: Uint8Array[]; after: () => void } {
  const b = alignedBuffer(total, a.mem);
  if (write) iovRead(buffers, b);
  return { buffers: [b], after: write ? () => undefined : () => { iovWrite(buffers, b); } };
}

type VecOp = (fd: number, bufs: Uint8Array[], pos: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void;

/** A raw image file behind an open fd. The fd is not closed by this class unless `close()` is called. */
export class FileBlockBackend implements BlockBackend {
  /** Bounced transfers (misaligned guest buffers on an O_DIRECT disk). */
  bounced = 0;

  /** `direct`: the fd is O_DIRECT, with this alignment (dioAlignment). */
  constructor(readonly fd: number, readonly size: number, readonly readOnly: boolean, readonly id: string, readonly direct?: Alignment) {}

  /** Open `path` (O_RDWR, or O_RDONLY when `readOnly`; O_DIRECT with cache 'none') and take its size. */
  static open(path: string, opts: { readOnly?: boolean; id?: string; cache?: 'writeback' | 'none' } = {}): FileBlockBackend {
    const ro = opts.readOnly ?? false;
    const fd = openDiskFd(path, ro, opts.cache);
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${path} is not a regular file or block device`);
      return new FileBlockBackend(fd, st.size, ro, opts.id ?? `tsvmm-${st.ino}`, opts.cache === 'none' ? dioAlignment(fd) : undefined);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  read(buffers: Uint8Array[], offset: number): Promise<number> {
    if (this.direct && misaligned(buffers, this.direct)) {
      this.bounced++;
      const total = iovLength(buffers);
      const b = bounce(buffers, total, this.direct, false);
      return this.vec(fs.readv as unknown as VecOp, b.buffers, offset).then((n) => { b.after(); return n; });
    }
    return this.vec(fs.readv as unknown as VecOp, buffers, offset);
  }

  write(buffers: Uint8Array[], offset: number): Promise<number> {
    if (this.readOnly) return Promise.reject(new Error('read-only disk'));
    if (this.direct && misaligned(buffers, this.direct)) {
      this.bounced++;
      return this.vec(fs.writev as unknown as VecOp, bounce(buffers, iovLength(buffers), this.direct, true).buffers, offset);
    }
    return this.vec(fs.writev as unknown as VecOp, buffers, offset);
  }

  flush(): Promise<void> {
    if (this.readOnly) return Promise.resolve();
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** Run a vectored op until every byte is transferred (short transfers continue; 0 bytes is EOF: an error). */
  private vec(op: VecOp, buffers: Uint8Array[], offset: number): Promise<number> {
    const total = iovLength(buffers);
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        if (done === total) return resolve(total);
        const rest = done === 0 ? buffers.filter((b) => b.length > 0) : iovSlice(buffers, done);
        op(this.fd, rest, offset + done, (err, n) => {
          if (err) return reject(err);
          if (n === 0) return reject(new Error(`unexpected end of disk at byte ${offset + done}`));
          done += n;
          step();
        });
      };
      step();
    });
  }
}

const OP_READ = 0;
const OP_WRITE = 1;
const OP_FLUSH = 2;
/** Linux UIO_MAXIOV: the most segments one readv/writev takes. */
const UIO_MAXIOV = 1024;
/** Transfers from this size on leave the submitting thread where the host has CPUs to spare (largeTransferPolicy). */
const LARGE_TRANSFER = 256 * 1024;

interface UringOp {
  kind: number;
  buffers: Uint8Array[];
  offset: number;
  total: number;
  /** Bytes transferred so far (short transfers are continued). */
  moved: number;
  done: IoDone;
}

export interface UringBackendOptions {
  /** SQ entries (power of two; default 256, the largest queue the device offers). */
  entries?: number;
  /**
   * 'eventfd': register an eventfd for completions; the owner watches
   * `completionFd` (the driver-domain's poller) and calls reap(). A slow
   * timer (10 ms, only while I/O is pending) reaps too, in case a wake-up was
   * ever lost. 'poll' (no poller, e.g. unit tests): a 1 ms timer reaps while
   * I/O is pending.
   */
  completions?: 'eventfd' | 'poll';
  /**
   * Reads and writes of at least this many bytes are not tried inline in
   * the submitting io_uring_enter but go to threads: io_uring's own workers
   * (IOSQE_ASYNC; 'wq', the default) or the libuv pool (fs.readv/writev;
   * 'pool'). Default: none, every request is tried inline. See
   * largeTransferPolicy for when the driver-domain sets them.
   */
  largeFrom?: number;
  large?: 'pool' | 'wq';
  /** With 'wq': at most this many io_uring workers at once (IORING_REGISTER_IOWQ_MAX_WORKERS). */
  workers?: number;
  /** The fd is O_DIRECT, with this alignment (dioAlignment): misaligned transfers are bounced. */
  direct?: Alignment;
}

/**
 * Where a disk's large transfers go, given the guest's vCPU count and this host's CPUs.
 *
 * A page-cache copy is cheapest on the submitting thread (no hand-off, no wake-up), and one
 * thread copies one request at a time. Where the host has CPUs to spare besides the vCPUs and
 * this thread, transfers of 256 KiB or more go to io_uring's workers, which copy several requests
 * at once, at most one worker per spare CPU. Measured with bench/blk, 1 MiB reads at queue
 * depth 8, tsvmm/QEMU: on a 16-CPU host (1 vCPU) 7.4 -> 42 GB/s polled and 6.6 -> 30 GB/s with
 * interrupts, where QEMU made 9-13 and 6.4-6.7 (its thread pool also copies in parallel); the
 * libuv pool instead made 32 and 23. On a 2-CPU host (no spare CPU) the workers only compete with
 * the vCPU and this thread: 1 GiB reads took 30-60% longer, so there every request stays inline.
 * Env TSVMM_BLK_LARGE_FROM (bytes; Infinity: never) and TSVMM_BLK_LARGE=wq|pool override this.
 */
export function largeTransferPolicy(vcpus: number, hostCpus = os.availableParallelism()): Pick<UringBackendOptions, 'largeFrom' | 'large' | 'workers'> {
  const spare = hostCpus - vcpus - 1;
  const envFrom = Number(process.env.TSVMM_BLK_LARGE_FROM);
  const envLarge = process.env.TSVMM_BLK_LARGE === 'pool' ? 'pool' : 'wq';
  if (envFrom === Infinity) return {};
  if (envFrom > 0) return { largeFrom: envFrom, large: envLarge, workers: spare > 0 ? spare : undefined };
  return spare >= 2 ? { largeFrom: LARGE_TRANSFER, large: envLarge, workers: spare } : {};
}

/** largeTransferPolicy's choice in words, for logs: 'inline' or where transfers from which size go. */
export function describeLargeTransfers(p: Pick<UringBackendOptions, 'largeFrom' | 'large' | 'workers'>): string {
  if (p.largeFrom === undefined || p.largeFrom === Infinity) return 'inline';
  const where = p.large === 'pool' ? 'the libuv pool' : `io_uring workers${p.workers ? ` (at most ${p.workers})` : ''}`;
  return `from ${p.largeFrom / 1024} KiB on ${where}`;
}

function errnoError(errno: number, what: string): Error {
  const e = new Error(`${what}: errno ${errno}`) as NodeJS.ErrnoException;
  e.errno = errno;
  return e;
}

/**
 * A raw image behind an open fd, served through io_uring. The fd is not
 * closed by this class; `close()` closes the ring and its eventfd.
 */
export class UringBlockBackend implements BatchedBlockBackend {
  readonly batched = true as const;
  sink: BatchSink | undefined;
  readonly completionFd: number;
  private readonly ring: IoUring;
  private readonly k: Record<string, number>;
  private readonly ops: (UringOp | undefined)[] = [];
  private readonly freeSlots: number[] = [];
  private inKernelOrQueued = 0;
  /** iovec arena for READV/WRITEV SQEs: the kernel copies iovecs at submit (IORING_FEAT_SUBMIT_STABLE), so it is reused after each full submit. */
  private readonly iov: Uint32Array;
  private readonly iovAddr: number;
  private iovNext = 0;
  /** Completions failed before reaching the kernel, delivered with the next batch. */
  private early: { slot: number; err: Error | null }[] = [];
  private delivered = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly period: number;
  private readonly refTimer: boolean;
  private readonly largeFrom: number;
  private readonly largeViaPool: boolean;
  private readonly direct: Alignment | undefined;
  /** Bounced transfers (misaligned guest buffers on an O_DIRECT disk). */
  bounced = 0;
  private closed = false;

  constructor(readonly fd: number, readonly size: number, readonly readOnly: boolean, readonly id: string, opts: UringBackendOptions = {}) {
    this.k = uringConstants();
    this.largeFrom = opts.largeFrom ?? Infinity;
    this.largeViaPool = opts.large === 'pool';
    this.direct = opts.direct;
    this.ring = IoUring.create(opts.entries ?? 256);
    try {
      if ((this.ring.features & this.k.IORING_FEAT_SUBMIT_STABLE) === 0) throw new Error('kernel lacks IORING_FEAT_SUBMIT_STABLE');
      if (opts.workers && this.largeFrom < Infinity && !this.largeViaPool) {
        try { this.ring.setMaxWorkers(opts.workers); } catch { /* a kernel before 5.15: no cap, still correct */ }
      }
      if (opts.completions === 'poll') {
        this.completionFd = -1;
        this.period = 1;
        this.refTimer = true;
      } else {
        this.completionFd = native.eventfd(0, true);
        this.period = 10;
        this.refTimer = false;
        this.ring.registerEventfd(this.completionFd);
      }
    } catch (e) {
      this.ring.close();
      throw e;
    }
    const arena = new ArrayBuffer(IOVEC_SIZE * 4 * UIO_MAXIOV);
    this.iov = new Uint32Array(arena);
    this.iovAddr = Number(native.address(arena));
  }

  get pending(): number {
    return this.inKernelOrQueued;
  }

  queueRead(buffers: Uint8Array[], offset: number, done: IoDone): void {
    this.queue(OP_READ, buffers, offset, done);
  }

  queueWrite(buffers: Uint8Array[], offset: number, done: IoDone): void {
    if (this.readOnly) {
      this.queueFailure(this.alloc(OP_WRITE, buffers, offset, done), new Error('read-only disk'));
      return;
    }
    this.queue(OP_WRITE, buffers, offset, done);
  }

  queueFlush(done: IoDone): void {
    const slot = this.alloc(OP_FLUSH, [], 0, done);
    if (this.readOnly) {
      this.queueFailure(slot, null);
      return;
    }
    this.prepSlot(slot);
  }

  submit(): void {
    if (this.closed) return;
    const evfd = this.completionFd >= 0;
    if (evfd) this.ring.setEventfdEnabled(false);
    this.pump();
    if (evfd) {
      this.ring.setEventfdEnabled(true);
      this.collect();
    }
    this.endBatch();
  }

  reap(): number {
    if (this.closed || this.inKernelOrQueued === 0) return 0;
    this.pump();
    const n = this.delivered;
    this.endBatch();
    return n;
  }

  read(buffers: Uint8Array[], offset: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.queueRead(buffers, offset, (err) => (err ? reject(err) : resolve(iovLength(buffers))));
      this.submit();
    });
  }

  write(buffers: Uint8Array[], offset: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.queueWrite(buffers, offset, (err) => (err ? reject(err) : resolve(iovLength(buffers))));
      this.submit();
    });
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queueFlush((err) => (err ? reject(err) : resolve()));
      this.submit();
    });
  }

  /** Closes the ring and the eventfd (not the image fd). Pending operations are abandoned. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.ring.close();
    if (this.completionFd >= 0) native.close(this.completionFd);
  }

  private alloc(kind: number, buffers: Uint8Array[], offset: number, done: IoDone): number {
    const op: UringOp = { kind, buffers, offset, total: iovLength(buffers), moved: 0, done };
    const slot = this.freeSlots.length ? this.freeSlots.pop()! : this.ops.length;
    this.ops[slot] = op;
    this.inKernelOrQueued++;
    if (!this.timer && !this.closed) {
      this.timer = setInterval(() => this.tick(), this.period);
      if (!this.refTimer) this.timer.unref();
    }
    return slot;
  }

  private queue(kind: number, buffers: Uint8Array[], offset: number, done: IoDone): void {
    if (this.direct && misaligned(buffers, this.direct)) {
      this.bounced++;
      const b = bounce(buffers, iovLength(buffers), this.direct, kind === OP_WRITE);
      const inner = done;
      buffers = b.buffers;
      done = (err) => { if (!err) b.after(); inner(err); };
    }
    const slot = this.alloc(kind, buffers, offset, done);
    const total = this.ops[slot]!.total;
    if (total === 0) this.queueFailure(slot, null);
    else if (total >= this.largeFrom && this.largeViaPool) this.poolStep(slot);
    else this.prepSlot(slot);
  }

  /** A large transfer on the libuv pool; short transfers continue; completes as a batch of its own. */
  private poolStep(slot: number): void {
    const op = this.ops[slot]!;
    const segs = (op.moved === 0 ? op.buffers : iovSlice(op.buffers, op.moved)).filter((b) => b.length > 0);
    const cb = (err: NodeJS.ErrnoException | null, n: number) => {
      if (this.closed || this.ops[slot] !== op) return;
      if (!err && n > 0 && op.moved + n < op.total) {
        op.moved += n;
        this.poolStep(slot);
        return;
      }
      this.complete(slot, err ?? (n > 0 ? null : new Error(`unexpected end of disk at byte ${op.offset + op.moved}`)));
      this.endBatch();
    };
    const pos = op.offset + op.moved;
    if (op.kind === OP_READ) fs.readv(this.fd, segs, pos, cb);
    else fs.writev(this.fd, segs, pos, cb);
  }

  private queueFailure(slot: number, err: Error | null): void {
    this.early.push({ slot, err });
  }

  /** Write the SQE for what remains of op `slot`. */
  private prepSlot(slot: number): void {
    const op = this.ops[slot]!;
    const k = this.k;
    if (this.ring.sqSpace === 0) this.flushSq();
    if (this.ring.sqSpace === 0) {
      this.queueFailure(slot, errnoError(EAGAIN, 'io_uring submission queue full'));
      return;
    }
    if (op.kind === OP_FLUSH) {
      this.ring.prep(k.IORING_OP_FSYNC, this.fd, 0, 0, 0, k.IORING_FSYNC_DATASYNC, slot);
      return;
    }
    let segs = op.moved === 0 ? op.buffers : iovSlice(op.buffers, op.moved);
    if (segs.length > 1 && segs.some((b) => b.length === 0)) segs = segs.filter((b) => b.length > 0);
    const pos = op.offset + op.moved;
    const flags = op.total - op.moved >= this.largeFrom ? k.IOSQE_ASYNC : 0;
    if (segs.length === 1) {
      const b = segs[0];
      this.ring.prep(op.kind === OP_READ ? k.IORING_OP_READ : k.IORING_OP_WRITE, this.fd, hostAddress(b), b.length, pos, 0, slot, flags);
      return;
    }
    if (segs.length > UIO_MAXIOV) {
      this.queueFailure(slot, errnoError(EINVAL, `${segs.length} segments (more than ${UIO_MAXIOV})`));
      return;
    }
    if (this.iovNext + segs.length > UIO_MAXIOV * 4) this.flushSq();
    if (this.iovNext + segs.length > UIO_MAXIOV * 4) {
      // The kernel did not take the queued SQEs (submit failed): cannot reuse the arena yet.
      this.queueFailure(slot, errnoError(11, 'io_uring submission queue stuck'));
      return;
    }
    const first = this.iovNext;
    for (let i = 0; i < segs.length; i++) putIovec(this.iov, first + i, hostAddress(segs[i]), segs[i].length);
    this.iovNext += segs.length;
    this.ring.prep(op.kind === OP_READ ? k.IORING_OP_READV : k.IORING_OP_WRITEV, this.fd, this.iovAddr + first * IOVEC_SIZE, segs.length, pos, 0, slot, flags);
  }

  /** Hand the queued SQEs to the kernel; once all were taken the iovec arena is free again. */
  private flushSq(): void {
    const n = this.ring.unsubmitted;
    if (n === 0) return;
    const r = this.ring.submit();
    if (r < 0 && r !== -EINTR && r !== -EAGAIN && r !== -EBUSY) {
      // A hard failure (e.g. EBADF): fail what did not reach the kernel.
      for (const slot of this.ring.unqueue()) this.queueFailure(slot, errnoError(-r, 'io_uring_enter'));
    }
    if (this.ring.unsubmitted === 0) this.iovNext = 0;
  }

  /** Submit, then reap until nothing more completes now (short transfers are continued and resubmitted). */
  private pump(): void {
    for (let i = 0; i < 64; i++) {
      this.flushSq();
      if (this.collect() === 0 && this.ring.unsubmitted === 0) return;
    }
  }

  /** Deliver early failures and every CQE there now; returns how many. */
  private collect(): number {
    let n = 0;
    while (this.early.length) {
      const e = this.early;
      this.early = [];
      for (const { slot, err } of e) {
        this.complete(slot, err);
        n++;
      }
    }
    n += this.ring.reap((slot, res) => this.onCqe(slot, res));
    return n;
  }

  private onCqe(slot: number, res: number): void {
    const op = this.ops[slot];
    if (!op) return;
    if (res < 0) return this.complete(slot, errnoError(-res, op.kind === OP_READ ? 'read' : op.kind === OP_WRITE ? 'write' : 'fdatasync'));
    if (op.kind === OP_FLUSH) return this.complete(slot, null);
    if (res === 0) return this.complete(slot, new Error(`unexpected end of disk at byte ${op.offset + op.moved}`));
    op.moved += res;
    if (op.moved >= op.total) return this.complete(slot, null);
    this.prepSlot(slot); // short transfer: continue with the rest
  }

  private complete(slot: number, err: Error | null): void {
    const op = this.ops[slot]!;
    this.ops[slot] = undefined;
    this.freeSlots.push(slot);
    this.inKernelOrQueued--;
    this.delivered++;
    op.done(err);
  }

  private endBatch(): void {
    if (this.delivered === 0) return;
    this.delivered = 0;
    this.sink?.flushCompletions();
  }

  /**
   * The safety timer's work: reap, or stop the timer once nothing is in flight (the next request
   * starts it again). Public for the driver-domain's JIT warm-up, which runs both branches.
   */
  tick(): void {
    if (this.inKernelOrQueued === 0 || this.closed) {
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    this.reap();
  }
}

export type BlockIoKind = 'uring' | 'threads';

/**
 * Open the best backend for an image fd: io_uring when it works here (and
 * TSVMM_BLK_IO / `io` is not 'threads'), else the thread-pool fallback.
 * `io: 'uring'` makes an io_uring failure an error instead of a fallback.
 */
export function openBlockBackend(fd: number, size: number, readOnly: boolean, id: string,
  opts: UringBackendOptions & { io?: 'auto' | BlockIoKind } = {}): { backend: BlockBackend; kind: BlockIoKind; why?: string } {
  const env = process.env.TSVMM_BLK_IO as 'auto' | BlockIoKind | undefined;
  const want = opts.io && opts.io !== 'auto' ? opts.io : env ?? 'auto';
  if (want !== 'threads') {
    try {
      return { backend: new UringBlockBackend(fd, size, readOnly, id, opts), kind: 'uring' };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (want === 'uring') throw new Error(`io=uring, but io_uring is unavailable here (${err.message}): use io=threads`);
      return { backend: new FileBlockBackend(fd, size, readOnly, id, opts.direct), kind: 'threads', why: `io_uring unavailable: ${err.code ?? ''} ${err.message}`.trim() };
    }
  }
  return { backend: new FileBlockBackend(fd, size, readOnly, id, opts.direct), kind: 'threads', why: opts.io === 'threads' ? 'io=threads' : 'TSVMM_BLK_IO=threads' };
}
