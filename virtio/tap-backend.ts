/**
 * A NetBackend over a TAP fd the supervisor holds: frames in whenever the
 * poller says the fd is readable (drained until EAGAIN, since the poller is
 * edge-triggered for TAPs); frames out in batches.
 *
 * Transmit batching: writeSegments() only queues a frame (an IORING_OP_WRITEV
 * SQE over the guest's own buffers, no copy) and flush(), which VirtioNet calls
 * before it publishes the TX heads, hands the whole batch to the kernel with
 * one io_uring_enter and waits for every completion (TAP writes complete
 * inline). One syscall per batch matters less than where the writer gets
 * preempted: each TAP write delivers the frame to its receiver and wakes it,
 * and with one writev per frame the woken receiver preempted the
 * driver-domain at nearly every syscall return (thousands of involuntary
 * context switches a second in the UDP stream benchmark); with one
 * io_uring_enter it can do so once per batch. Where io_uring is unavailable
 * (kernel.io_uring_disabled, old kernels) or TSVMM_TAP_IO=writev, and for
 * frames given as views (write()), each frame is written with writev at once.
 */
import * as os from 'os';
import { NetBackend } from './virtio-net';
import { GuestMemory } from '../contracts/memory';
import { ChainSegments, segmentViews } from './virtqueue';
import { native } from '../native/kvm';
import { IoUring, putIovec, uringConstants } from './io-uring';
import { IOVEC_SIZE } from './iov';

const { EAGAIN, EBUSY, EINTR } = os.constants.errno;

// Looked up once: a property load from the addon's exports object is a slow, megamorphic load per frame.
const fdRead = native.fdRead.bind(native);
const fdWritev = native.fdWritev.bind(native);

/** The TAP read buffer: the largest frame a TAP hands out (64 KiB, IP's limit), whatever the guest's MTU. */
const TAP_READ_BYTES = 65536;
/** Frames queued before a batch is handed to the kernel anyway (the SQ size). */
const RING_ENTRIES = 256;
/** iovecs in the arena (IOVEC_SIZE bytes each); a frame of more segments than fit is written directly. */
const IOV_ARENA = 4 * RING_ENTRIES;

/** io_uring state of a batching TapBackend. */
interface TxRing {
  ring: IoUring;
  opWritev: number;
  /** struct iovec[IOV_ARENA] (u64 base, u64 len, as u32 words), reused after each flush (the kernel copies iovecs at submit). */
  iov: Uint32Array;
  iovAddr: number;
  iovUsed: number;
  /** SQEs queued in this batch. */
  queued: number;
}

export class TapBackend implements NetBackend {
  private receiver?: (frame: Uint8Array) => void;
  private readonly buf = Buffer.alloc(TAP_READ_BYTES);
  private readonly tx?: TxRing;
  /** Frames the TAP refused (queue full, link down): a NIC drops too. */
  dropped = 0;
  /** flush()'s completion callback, made once (not a closure per batch). */
  private readonly onTxCqe = (_ud: number, res: number): void => { if (res < 0) this.dropped++; };

  constructor(readonly fd: number, io: 'uring' | 'writev' = process.env.TSVMM_TAP_IO === 'writev' ? 'writev' : 'uring') {
    if (io === 'uring') this.tx = openTxRing();
  }

  /** 'io_uring' when transmits are batched, else 'writev'. */
  get txMode(): string {
    return this.tx ? 'io_uring' : 'writev';
  }

  /** Send a frame given as views, now (after the frames already queued, so they stay in order). */
  write(frame: Uint8Array[]): void {
    this.flush();
    if (fdWritev(this.fd, frame) < 0) this.dropped++;
  }

  /**
   * Queue the bytes of a TX chain after its first `skip` bytes: one WRITEV
   * SQE whose iovecs are the guest buffers' host addresses. Written at once
   * (write()) without io_uring, or for a chain of more segments than the
   * iovec arena holds.
   */
  writeSegments(mem: GuestMemory, c: ChainSegments, skip: number): void {
    const t = this.tx;
    const regions = mem.regions;
    if (!t || c.count > IOV_ARENA) {
      this.write(segmentViews(mem, c, 0, c.count, skip));
      return;
    }
    if (t.ring.sqSpace === 0 || t.iovUsed + c.count > IOV_ARENA) this.flush();
    const first = t.iovUsed;
    for (let i = 0; i < c.count; i++) {
      const len = c.length[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      putIovec(t.iov, t.iovUsed++, regions[c.region[i]].host + c.offset[i] + skip, len - skip);
      skip = 0;
    }
    t.ring.prep(t.opWritev, this.fd, t.iovAddr + first * IOVEC_SIZE, t.iovUsed - first, 0, 0, t.queued++);
  }

  /**
   * Send every queued frame: one io_uring_enter for the batch, then wait
   * until all completed (the caller hands the buffers back to the guest
   * next). Frames the kernel would not take count as dropped.
   */
  flush(): void {
    const t = this.tx;
    if (!t || t.queued === 0) return;
    const ring = t.ring;
    let r = ring.submit();
    for (let i = 0; i < 3 && (r === -EINTR || r === -EAGAIN || r === -EBUSY); i++) r = ring.submit();
    const taken = r < 0 ? 0 : r;
    if (ring.unsubmitted > 0) this.dropped += ring.unqueue().length;
    let done = ring.reap(this.onTxCqe);
    while (done < taken) {
      // Not completed inline (a TAP write handed to an io_uring worker): wait for it.
      const e = ring.submit(taken - done);
      done += ring.reap(this.onTxCqe);
      if (e < 0 && e !== -4 /* EINTR */) break;
    }
    t.queued = 0;
    t.iovUsed = 0;
  }

  onFrame(cb: (frame: Uint8Array) => void): void { this.receiver = cb; }

  /** Read every frame waiting on the TAP. */
  drain(): void {
    for (;;) {
      const n = fdRead(this.fd, this.buf);
      if (n === -EAGAIN || n === 0) return;
      if (n < 0) throw new Error(`TAP read failed: errno ${-n}`);
      this.receiver?.(this.buf.subarray(0, n));
    }
  }
}

/** A ring for batched TAP writes, or undefined where io_uring cannot be used (then frames go out with writev). */
function openTxRing(): TxRing | undefined {
  try {
    const ring = IoUring.create(RING_ENTRIES);
    const arena = new ArrayBuffer(IOVEC_SIZE * IOV_ARENA);
    return {
      ring, opWritev: uringConstants().IORING_OP_WRITEV, iov: new Uint32Array(arena), iovAddr: Number(native.address(arena)),
      iovUsed: 0, queued: 0,
    };
  } catch {
    return undefined;
  }
}
