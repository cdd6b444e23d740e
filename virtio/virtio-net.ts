/**
 * virtio-net device model (virtio 1.2 section 5.1): queue 0 receives, queue 1
 * transmits. With VIRTIO_F_VERSION_1 every buffer starts with a 12-byte
 * virtio_net_hdr_v1 (flags, gso_type, hdr_len, gso_size, csum_start,
 * csum_offset, num_buffers). No offloads are offered, so on TX the header is
 * skipped and the rest of the chain goes to the TAP as one frame (the
 * segment views, no copy); on RX each frame fills one guest buffer chain
 * behind a zeroed header with num_buffers = 1.
 *
 * The TAP is abstracted as `NetBackend`. Frames that arrive while the guest
 * has no receive buffer wait in a bounded backlog (copied, since the
 * backend may reuse its buffer) and are delivered when the guest kicks RX.
 *
 * Recovery: in-flight TX heads are re-sent (a duplicated frame is what a
 * real NIC can produce too); in-flight RX heads had not been filled, so they
 * are reused for the next frames before any newly available buffer.
 *
 * Rate limits (--net ...,bw=; virtio/rate-limiter.ts), one limiter per direction: a TX frame the
 * limiter refuses stays popped but unsent (in flight in the state page) and TX stops until it
 * may go; an RX frame it refuses waits in the backlog (new ones are dropped once that is full,
 * as a NIC drops what it cannot take) until a timer delivers it.
 */

import { GuestMemory } from '../contracts/memory';
import { DeviceSlot, DeviceSpec } from '../contracts/state-page';
import { Virtqueue, Chain, ChainSegments, ActivateResult, VirtqueueOptions, segmentViews } from './virtqueue';
import { Notify, complete, deviceRunning, signal, signalIfNeeded } from './queue-runner';
import { iovCopy } from './iov';
import { RateLimiter, RetryTimer } from './rate-limiter';
import { VIRTIO_QUEUES } from '../contracts/layout';
import {
  DeviceId, TSVMM_VENDOR_ID, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, features,
} from '../contracts/virtio-mmio-layout';

export const NET_HDR_SIZE = 12;
export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
/** Config bytes: mac[6], status u16. */
export const NET_CONFIG_SIZE = 8;
/** Largest Ethernet frame we move without offloads (with VLAN tag). */
export const MAX_FRAME = 1518;
/** The virtio_net_hdr_v1 of every received frame: no offloads, num_buffers = 1 (LE u16 at offset 10). */
const RX_HDR = Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);

/** A TAP-like packet endpoint. */
export interface NetBackend {
  /** Send one frame given as segments (gathered by the backend, e.g. writev). */
  write(frame: Uint8Array[]): void;
  /** Send the bytes of a TX chain after its first `skip` bytes, straight from guest RAM (no views built). */
  writeSegments?(mem: GuestMemory, chain: ChainSegments, skip: number): void;
  /** Register the receiver of incoming frames; the buffer may be reused after the callback returns. */
  onFrame(cb: (frame: Uint8Array) => void): void;
  /** Finish every write() queued so far (a backend that batches its writes); TX heads are published after it. */
  flush?(): void;
}

export interface NetOptions {
  mac: Uint8Array;
  queueNumMax?: number;
  /** Frames kept while the guest has no RX buffer (default 256); older ones are not dropped, new ones are. */
  backlog?: number;
}

export function netFeatures(): bigint {
  return features(VIRTIO_F_VERSION_1, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS);
}

/** virtio_net_config bytes: mac, status (link up). */
export function netConfig(mac: Uint8Array): Uint8Array {
  if (mac.length !== 6) throw new Error('a MAC address is 6 bytes');
  const b = new Uint8Array(NET_CONFIG_SIZE);
  b.set(mac, 0);
  new DataView(b.buffer).setUint16(6, VIRTIO_NET_S_LINK_UP, true);
  return b;
}

/** Parse "52:54:00:12:34:56". Throws on malformed input. */
export function parseMac(s: string): Uint8Array {
  const parts = s.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new Error(`bad MAC address "${s}"`);
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export function netDeviceSpec(opts: NetOptions): DeviceSpec {
  return {
    deviceId: DeviceId.Net,
    vendorId: TSVMM_VENDOR_ID,
    numQueues: VIRTIO_QUEUES.net,
    queueNumMax: opts.queueNumMax ?? 256,
    deviceFeatures: netFeatures(),
    config: netConfig(opts.mac),
  };
}

export interface NetStats {
  txFrames: number;
  rxFrames: number;
  /** Frames dropped: backlog full, or a guest buffer too small. */
  rxDropped: number;
  badChains: number;
}

export class VirtioNet {
  readonly rx: Virtqueue;
  readonly tx: Virtqueue;
  readonly stats: NetStats = { txFrames: 0, rxFrames: 0, rxDropped: 0, badChains: 0 };
  /** Counts each frame moved (metrics; contracts/control-page.ts DeviceCounters). */
  counters?: { frame(dir: 'tx' | 'rx', bytes: number, startMs: number): void };
  lastError?: string;
  private readonly backlog: Uint8Array[] = [];
  /** When each backlogged frame came off the TAP (performance.now(); for the latency histogram). */
  private readonly backlogAt: number[] = [];
  private readonly backlogMax: number;
  /** RX heads recovered in flight: filled before popping new buffers. */
  private rxRecycled: number[] = [];
  /** Inside batch(): completions are staged per queue (heads, lengths) and published together at the end. */
  private batchDepth = 0;
  /** Arrays keep their capacity across batches (no regrowth per batch); `n` entries are live. */
  private readonly staged: { heads: number[]; lens: number[]; n: number }[] = [{ heads: [], lens: [], n: 0 }, { heads: [], lens: [], n: 0 }];
  /** The chain being sent / filled, walked in place (no allocation per frame). */
  private readonly txChain = new ChainSegments();
  private readonly rxChain = new ChainSegments();
  /** Rate limits of guest TX and guest RX (frames and bytes), if any. */
  txLimiter?: RateLimiter;
  rxLimiter?: RateLimiter;
  /** A TX head the limiter refused: sent first when the timer fires. */
  private txParked: number | undefined;
  private readonly txRetry = new RetryTimer(() => this.unparkTx());
  private readonly rxRetry = new RetryTimer(() => this.kickRx());

  constructor(
    readonly mem: GuestMemory,
    readonly slot: DeviceSlot,
    readonly backend: NetBackend,
    readonly notify: Notify,
    opts: { backlog?: number } & VirtqueueOptions = {},
  ) {
    this.rx = new Virtqueue(mem, slot, RX_QUEUE, opts);
    this.tx = new Virtqueue(mem, slot, TX_QUEUE, opts);
    this.backlogMax = opts.backlog ?? 256;
    backend.onFrame((f) => this.receive(f));
  }

  /**
   * Run `fn` (a TX drain, a TAP drain delivering many frames) with used
   * elements staged: each queue's completions are then published with one
   * used->idx update and at most one interrupt per queue (EVENT_IDX rules
   * still decide), instead of one per frame.
   */
  batch<T>(fn: () => T): T {
    this.batchDepth++;
    try {
      return fn();
    } finally {
      if (--this.batchDepth === 0) this.flushCompleted();
    }
  }

  private flushCompleted(): void {
    this.backend.flush?.();
    this.flushQueue(this.rx, this.staged[0]);
    this.flushQueue(this.tx, this.staged[1]);
  }

  private flushQueue(vq: Virtqueue, s: { heads: number[]; lens: number[]; n: number }): void {
    if (s.n === 0) return;
    const n = s.n;
    s.n = 0;
    vq.pushMany(s.heads, s.lens, n);
    signalIfNeeded(vq, this.notify);
  }

  /** Complete `head` now, or stage it inside batch(). */
  private completeOrStage(vq: Virtqueue, head: number, len: number): void {
    if (this.batchDepth === 0) {
      complete(vq, head, len, this.notify);
      return;
    }
    const s = this.staged[vq === this.rx ? 0 : 1];
    s.heads[s.n] = head;
    s.lens[s.n] = len;
    s.n++;
  }

  /** Bind both queues (after DRIVER_OK, or after a restart: TX in flight re-sent, RX in flight reused). */
  activate(): { rx: ActivateResult; tx: ActivateResult } {
    return this.batch(() => this.activateQueues());
  }

  private activateQueues(): { rx: ActivateResult; tx: ActivateResult } {
    const rx = this.rx.activate();
    const tx = this.tx.activate();
    if (rx.ok) {
      this.rxRecycled = rx.resubmit.slice();
      if (rx.recovered) signal(this.rx, this.notify);
    }
    if (tx.ok) {
      const c = this.txChain;
      this.txParked = undefined;
      this.txRetry.cancel();
      for (const head of tx.resubmit) this.transmit(this.tx.segmentsAt(head, c), c);
      if (tx.recovered) signal(this.tx, this.notify);
      this.kickTx();
    }
    if (rx.ok) this.kickRx();
    return { rx, tx };
  }

  /** Guest kicked the TX queue: send every available frame. */
  kickTx(): number {
    if (!this.tx.isActive || !deviceRunning(this.slot) || this.txParked !== undefined) return 0;
    return this.batch(() => this.drainTx());
  }

  /** Whether the TX limiter lets the frame in `c` go now; if not, it is parked and the timer set. */
  private txAllowed(c: ChainSegments): boolean {
    const lim = this.txLimiter;
    const bytes = c.readableLength - NET_HDR_SIZE;
    if (!lim || lim.consume(1, bytes)) return true;
    this.txParked = c.head;
    this.txRetry.in(lim.waitMs(1, bytes));
    return false;
  }

  /** The TX limiter's timer: send the parked frame if it may go now, then the rest of the ring. */
  private unparkTx(): void {
    const head = this.txParked;
    if (head === undefined) return;
    if (!this.tx.isActive || !deviceRunning(this.slot)) {
      this.txParked = undefined; // the driver reset the device
      return;
    }
    const c = this.txChain;
    const kind = this.tx.segmentsAt(head, c);
    const lim = this.txLimiter!;
    const bytes = c.readableLength - NET_HDR_SIZE;
    if (kind === 'chain' && !lim.consume(1, bytes)) {
      this.txRetry.in(lim.waitMs(1, bytes));
      return;
    }
    this.txParked = undefined;
    this.batch(() => {
      this.transmit(kind, c);
      this.drainTx();
    });
  }

  /** queue-runner's drain() for TX, over the reused ChainSegments: kicks suppressed while draining, re-checked after. */
  private drainTx(): number {
    const vq = this.tx;
    const c = this.txChain;
    let n = 0;
    for (;;) {
      vq.disableNotify();
      for (;;) {
        const kind = vq.popSegments(c);
        if (kind === 'empty') break;
        if (kind === 'chain' && this.txLimiter && !this.txAllowed(c)) return n; // parked: kicks stay off until it goes
        n++;
        if (!this.transmit(kind, c)) return n;
      }
      if (!vq.enableNotify()) return n;
    }
  }

  /** Guest kicked the RX queue (new buffers): deliver backlogged frames. */
  kickRx(): number {
    return this.batch(() => {
      let n = 0;
      while (this.backlog.length > 0 && this.deliverLimited(this.backlog[0], this.backlogAt[0])) {
        this.backlog.shift();
        this.backlogAt.shift();
        n++;
      }
      return n;
    });
  }

  /** A frame from the TAP. */
  receive(frame: Uint8Array): void {
    const at = this.counters ? performance.now() : 0;
    if (this.backlog.length === 0 && this.deliverLimited(frame, at)) return;
    if (this.backlog.length >= this.backlogMax) {
      this.stats.rxDropped++;
      return;
    }
    this.backlog.push(frame.slice());
    this.backlogAt.push(at);
  }

  /** Frames waiting for guest RX buffers. */
  get backlogLength(): number {
    return this.backlog.length;
  }

  /** Send the TX chain in `c` (as popSegments/segmentsAt left it). False when the queue is unusable. */
  private transmit(kind: 'chain' | 'bad-chain' | 'broken', c: ChainSegments): boolean {
    const t0 = this.counters ? performance.now() : 0;
    if (kind === 'broken') {
      this.lastError = c.error;
      return false;
    }
    if (kind === 'bad-chain') {
      this.stats.badChains++;
      this.lastError = c.error;
    } else if (c.writableLength !== 0 || c.readableLength < NET_HDR_SIZE || c.readableLength - NET_HDR_SIZE > 65535) {
      this.stats.badChains++;
      this.lastError = `bad TX chain (${c.readableLength} readable, ${c.writableLength} writable)`;
    } else if (c.readableLength > NET_HDR_SIZE) {
      try {
        if (this.backend.writeSegments) this.backend.writeSegments(this.mem, c, NET_HDR_SIZE);
        else this.backend.write(segmentViews(this.mem, c, 0, c.count, NET_HDR_SIZE));
        this.stats.txFrames++;
        this.counters?.frame('tx', c.readableLength - NET_HDR_SIZE, t0);
      } catch (e) {
        this.lastError = `TAP write failed: ${(e as Error).message}`;
      }
    }
    this.completeOrStage(this.tx, c.head, 0);
    return true;
  }

  /** deliver() within the RX rate limit: false (and the timer set) when the limiter refuses the frame now. */
  private deliverLimited(frame: Uint8Array, at: number): boolean {
    const lim = this.rxLimiter;
    if (!lim) return this.deliver(frame, at);
    if (!lim.consume(1, frame.length)) {
      this.rxRetry.in(lim.waitMs(1, frame.length));
      return false;
    }
    if (this.deliver(frame, at)) return true;
    lim.refund(1, frame.length);
    return false;
  }

  /** Put one frame into one guest RX buffer. False when there is no buffer (or the queue is unusable). */
  private deliver(frame: Uint8Array, at: number): boolean {
    if (!this.rx.isActive || !deviceRunning(this.slot)) return false;
    const c = this.rxChain;
    for (;;) {
      const kind = this.nextRxBuffer(c);
      if (kind === undefined) return false;
      if (kind === 'bad-chain') {
        this.stats.badChains++;
        this.lastError = c.error;
        this.completeOrStage(this.rx, c.head, 0);
        continue;
      }
      const need = NET_HDR_SIZE + frame.length;
      if (c.readableLength !== 0 || c.writableLength < need) {
        // The driver must post buffers big enough; this frame cannot go in it.
        this.stats.rxDropped++;
        this.lastError = `RX buffer of ${c.writableLength} bytes for a ${frame.length}-byte frame`;
        this.completeOrStage(this.rx, c.head, 0);
        return true;
      }
      if (c.length[0] >= need) {
        // The usual case, one buffer: header and frame written in place.
        const bytes = this.mem.regions[c.region[0]].bytes;
        const o = c.offset[0];
        bytes.set(RX_HDR, o);
        bytes.set(frame, o + NET_HDR_SIZE);
      } else {
        iovCopy(segmentViews(this.mem, c, 0, c.count), [RX_HDR, frame]);
      }
      this.stats.rxFrames++;
      this.counters?.frame('rx', frame.length, at);
      this.completeOrStage(this.rx, c.head, need);
      return true;
    }
  }

  /** The next RX buffer into `c`: a recovered in-flight head first, then a new one. */
  private nextRxBuffer(c: ChainSegments): 'chain' | 'bad-chain' | undefined {
    while (this.rxRecycled.length > 0) {
      const kind = this.rx.segmentsAt(this.rxRecycled.shift()!, c);
      if (kind !== 'broken') return kind;
    }
    let kind = this.rx.popSegments(c);
    if (kind === 'empty' && this.rx.enableNotify()) kind = this.rx.popSegments(c);
    if (kind === 'chain' || kind === 'bad-chain') return kind;
    if (kind === 'broken') this.lastError = c.error;
    return undefined;
  }
}

export type { Chain };
