/**
 * A minimal io_uring over raw syscalls (native/kvm/uring.cc: setup, enter,
 * register, and the mmap of the rings). SQEs are written and CQEs read here,
 * straight in the mapped rings, with the struct offsets the addon exports
 * from <linux/io_uring.h>. No liburing.
 *
 * Protocol (io_uring(7)): the SQ array is the identity (slot i -> SQE i), so
 * an SQE is written at `tail & mask` and the tail published with a release
 * store; io_uring_enter(to_submit) hands the whole batch to the kernel in one
 * syscall. Completions are read from the CQ between our head and the
 * kernel's tail (acquire load), advancing the head as they are consumed.
 * Atomics.load/store on x86-64 give the acquire/release (stores are
 * sequentially consistent, i.e. a full fence).
 */

import { native, UringSetup } from '../native/kvm';

/** The addon's io_uring constants (opcodes, flags, SQE/CQE field offsets). */
export function uringConstants(): Record<string, number> {
  return native.uringConstants;
}

const U32 = 0x1_0000_0000;

/** Store struct iovec number `i` (u64 base, u64 length) into an arena of u32 words (for READV/WRITEV SQEs). */
export function putIovec(iov: Uint32Array, i: number, addr: number, len: number): void {
  const w = i * 4;
  iov[w] = addr % U32;
  iov[w + 1] = Math.floor(addr / U32);
  iov[w + 2] = len;
  iov[w + 3] = 0;
}

export class IoUring {
  readonly fd: number;
  readonly entries: number;
  readonly features: number;
  private readonly k: Record<string, number>;
  private readonly sq: Uint32Array;
  private readonly cq: Uint32Array;
  private readonly cqi: Int32Array;
  private readonly sqe: Uint32Array;
  private readonly sqeBytes: Uint8Array;
  private readonly sqHead: number;
  private readonly sqTail: number;
  private readonly sqMask: number;
  private readonly cqHead: number;
  private readonly cqTail: number;
  private readonly cqMask: number;
  private readonly cqes: number;
  private readonly cqFlags: number;
  private readonly sqeWords: number;
  private readonly cqeWords: number;
  /** Our SQ tail (next free slot) and the part of it already handed to the kernel. */
  private tail: number;
  private submittedTail: number;
  private closed = false;
  private readonly keep: UringSetup;
  /**
   * SQE field offsets (opcode, flags in bytes; the rest in u32 words), copied out of the
   * constants record once: that record comes from the addon in dictionary mode, and each
   * property load from it per SQE went through the slow generic load path.
   */
  private readonly sqeOff: { opcode: number; flags: number; fd: number; off: number; addr: number; len: number; rwFlags: number; userData: number };
  private readonly cqeUserData: number;
  private readonly cqeRes: number;

  /** Sets up a ring with `entries` SQEs (a power of two). Throws (with `code`) when io_uring is unusable. */
  static create(entries = 256): IoUring {
    const k = uringConstants();
    let s: UringSetup;
    const all = k.IORING_SETUP_SUBMIT_ALL ?? 0;
    try {
      s = native.uringSetup(entries, all);
    } catch (e) {
      // Kernels before 5.18 reject IORING_SETUP_SUBMIT_ALL with EINVAL.
      if (all === 0 || (e as { code?: string }).code !== 'EINVAL') throw e;
      s = native.uringSetup(entries, 0);
    }
    return new IoUring(s, k);
  }

  private constructor(s: UringSetup, k: Record<string, number>) {
    this.keep = s;
    this.k = k;
    this.fd = s.fd;
    this.entries = s.sqEntries;
    this.features = s.features;
    this.sq = new Uint32Array(s.sq);
    this.cq = new Uint32Array(s.cq);
    this.cqi = new Int32Array(s.cq);
    this.sqe = new Uint32Array(s.sqes);
    this.sqeBytes = new Uint8Array(s.sqes);
    this.sqHead = s.sqOff.head / 4;
    this.sqTail = s.sqOff.tail / 4;
    this.sqMask = this.sq[s.sqOff.ringMask / 4];
    this.cqHead = s.cqOff.head / 4;
    this.cqTail = s.cqOff.tail / 4;
    this.cqMask = this.cq[s.cqOff.ringMask / 4];
    this.cqes = s.cqOff.cqes / 4;
    this.cqFlags = s.cqOff.flags / 4;
    this.sqeWords = k.SQE_SIZE / 4;
    this.cqeWords = k.CQE_SIZE / 4;
    this.sqeOff = {
      opcode: k.SQE_OPCODE, flags: k.SQE_FLAGS, fd: k.SQE_FD / 4, off: k.SQE_OFF / 4, addr: k.SQE_ADDR / 4,
      len: k.SQE_LEN / 4, rwFlags: k.SQE_RW_FLAGS / 4, userData: k.SQE_USER_DATA / 4,
    };
    this.cqeUserData = k.CQE_USER_DATA / 4;
    this.cqeRes = k.CQE_RES / 4;
    const array = s.sqOff.array / 4;
    for (let i = 0; i < this.entries; i++) this.sq[array + i] = i;
    this.tail = this.submittedTail = Atomics.load(this.sq, this.sqTail);
  }

  /** Free SQ slots. */
  get sqSpace(): number {
    return this.entries - ((this.tail - Atomics.load(this.sq, this.sqHead)) >>> 0);
  }

  /** SQEs written but not yet handed to the kernel. */
  get unsubmitted(): number {
    return (this.tail - this.submittedTail) >>> 0;
  }

  /**
   * Write one SQE (caller checked sqSpace > 0). `addr` is a host address (a
   * buffer, or an iovec array for READV/WRITEV), `offset` a file offset; both
   * below 2^53. `userData` is a u32; `sqeFlags` the IOSQE_* byte.
   */
  prep(opcode: number, fd: number, addr: number, len: number, offset: number, opFlags: number, userData: number, sqeFlags = 0): void {
    const o = this.sqeOff;
    const sqe = this.sqe;
    const w = ((this.tail & this.sqMask) * this.sqeWords) | 0;
    for (let i = w, end = w + this.sqeWords; i < end; i++) sqe[i] = 0; // a loop: fill() on a few words is a C++ builtin call
    const b = w * 4;
    this.sqeBytes[b + o.opcode] = opcode;
    this.sqeBytes[b + o.flags] = sqeFlags;
    sqe[w + o.fd] = fd;
    sqe[w + o.off] = offset % U32;
    sqe[w + o.off + 1] = Math.floor(offset / U32);
    sqe[w + o.addr] = addr % U32;
    sqe[w + o.addr + 1] = Math.floor(addr / U32);
    sqe[w + o.len] = len;
    sqe[w + o.rwFlags] = opFlags;
    sqe[w + o.userData] = userData;
    this.tail = (this.tail + 1) >>> 0;
  }

  /**
   * Publish the written SQEs and hand them to the kernel with one
   * io_uring_enter. Returns how many the kernel took, or -errno (then the
   * SQEs stay queued and a later call retries them).
   */
  submit(minComplete = 0): number {
    const n = this.unsubmitted;
    if (n === 0 && minComplete === 0) return 0;
    Atomics.store(this.sq, this.sqTail, this.tail);
    const r = native.uringEnter(this.fd, n, minComplete, minComplete > 0 ? this.k.IORING_ENTER_GETEVENTS : 0);
    if (r >= 0) this.submittedTail = (this.submittedTail + Math.min(r, n)) >>> 0;
    return r;
  }

  /**
   * Take back SQEs written but not handed to the kernel (after submit failed
   * hard): returns their user data, oldest first.
   */
  unqueue(): number[] {
    const out: number[] = [];
    const k = this.k;
    for (let t = this.submittedTail; t !== this.tail; t = (t + 1) >>> 0) {
      out.push(this.sqe[((t & this.sqMask) * this.sqeWords) + k.SQE_USER_DATA / 4]);
    }
    this.tail = this.submittedTail;
    Atomics.store(this.sq, this.sqTail, this.tail);
    return out;
  }

  /** CQEs waiting. */
  get cqReady(): number {
    return (Atomics.load(this.cq, this.cqTail) - this.cq[this.cqHead]) >>> 0;
  }

  /** Calls `fn(userData, res)` for every CQE there now (advancing the CQ head past each first). Returns the count. */
  reap(fn: (userData: number, res: number) => void): number {
    let head = this.cq[this.cqHead];
    const tail = Atomics.load(this.cq, this.cqTail);
    if (head === tail) return 0;
    let n = 0;
    while (head !== tail) {
      const w = this.cqes + (head & this.cqMask) * this.cqeWords;
      const ud = this.cq[w + this.cqeUserData];
      const res = this.cqi[w + this.cqeRes];
      head = (head + 1) >>> 0;
      n++;
      // Publish before the callback so a callback that reaps again cannot see this CQE twice.
      Atomics.store(this.cq, this.cqHead, head);
      fn(ud, res);
    }
    return n;
  }

  /** Route completions to `eventfd` (IORING_REGISTER_EVENTFD). Throws on failure. */
  registerEventfd(eventfd: number): void {
    const r = native.uringRegisterEventfd(this.fd, eventfd, false);
    if (r < 0) throw Object.assign(new Error(`io_uring_register(EVENTFD): errno ${-r}`), { errno: -r });
  }

  /** At most `bounded` io_uring workers for regular-file I/O (IORING_REGISTER_IOWQ_MAX_WORKERS). Throws on failure. */
  setMaxWorkers(bounded: number): void {
    const r = native.uringRegisterIowqMaxWorkers(this.fd, bounded, 0);
    if (r < 0) throw Object.assign(new Error(`io_uring_register(IOWQ_MAX_WORKERS): errno ${-r}`), { errno: -r });
  }

  /**
   * IORING_CQ_EVENTFD_DISABLED: while disabled, posting a CQE does not
   * signal the registered eventfd (we are about to reap anyway). After
   * re-enabling, the caller must reap once more: a CQE posted while disabled
   * raised no signal.
   */
  setEventfdEnabled(on: boolean): void {
    const f = this.cq[this.cqFlags];
    const bit = this.k.IORING_CQ_EVENTFD_DISABLED;
    Atomics.store(this.cq, this.cqFlags, on ? f & ~bit : f | bit);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.close(this.fd);
    void this.keep;
  }
}
