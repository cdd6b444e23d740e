/**
 * Per-device rate limits as token buckets, with Firecracker's RateLimiter semantics (its
 * TokenBucket: size, refill_time, one_time_burst; see proto/tsvmm.proto RateLimit):
 *
 * - a bucket holds at most `size` tokens and starts full; it refills continuously at `size`
 *   tokens per `refillTimeMs`;
 * - `oneTimeBurst` extra tokens are spent first and never come back;
 * - a request takes its tokens at once, or waits (the device stops taking requests from that
 *   queue) until the bucket has them; a request larger than the whole bucket goes through once the
 *   bucket is not in debt, and leaves it in debt for the rest (Firecracker: OverConsumption, the
 *   limiter blocked for the time the excess takes to refill), so the long-run rate holds for any
 *   request size;
 * - a RateLimiter has an ops bucket and a bandwidth (bytes) bucket; a request needs both, and
 *   when the second refuses, what the first gave is put back.
 *
 * The limit comes from the device's configuration (VmConfig, read by every driver-domain that
 * starts), so it holds across a driver-domain recovery; the buckets' state does not (a new
 * driver-domain starts with full buckets). Time is performance.now() (ms, monotonic).
 */

/** A bucket's settings: proto TokenBucket's fields (virtio does not depend on proto; the shapes match). */
export interface BucketConfig { size: number; refillTimeMs: number; oneTimeBurst?: number }
/** A device's limit: proto RateLimit's fields; an absent (null) bucket is no limit. */
export interface RateLimit { ops?: BucketConfig | null; bandwidth?: BucketConfig | null }

export class TokenBucket {
  private budget: number;
  private burst: number;
  private last: number;
  /** Tokens per ms. */
  private readonly rate: number;

  constructor(readonly size: number, readonly refillTimeMs: number, oneTimeBurst = 0, now = performance.now()) {
    if (!(size > 0) || !(refillTimeMs > 0)) throw new Error(`a token bucket needs a size and a refill time above 0 (got ${size}, ${refillTimeMs} ms)`);
    this.budget = size;
    this.burst = oneTimeBurst;
    this.last = now;
    this.rate = size / refillTimeMs;
  }

  private refill(now: number): void {
    if (now > this.last) {
      this.budget = Math.min(this.size, this.budget + (now - this.last) * this.rate);
      this.last = now;
    }
  }

  /** Take `n` tokens if the bucket has them (or `n` is more than it can ever hold: then it goes into debt). */
  take(n: number, now = performance.now()): boolean {
    if (n <= 0) return true;
    if (this.burst > 0) {
      const b = Math.min(this.burst, n);
      if (b === n) { this.burst -= n; return true; }
      // Only part of it from the burst: the rest from the budget, or nothing taken at all.
      if (!this.takeBudget(n - b, now)) return false;
      this.burst -= b;
      return true;
    }
    return this.takeBudget(n, now);
  }

  private takeBudget(n: number, now: number): boolean {
    this.refill(now);
    // More than the bucket ever holds: it goes once the bucket is out of debt, and leaves it in debt.
    if (n <= this.budget || (n > this.size && this.budget >= 0)) {
      this.budget -= n;
      return true;
    }
    return false;
  }

  /** Put back tokens taken for a request that did not go after all. */
  give(n: number): void {
    this.budget = Math.min(this.size, this.budget + n);
  }

  /** How long (ms) until `n` tokens could be taken; 0 when now. */
  waitMs(n: number, now = performance.now()): number {
    this.refill(now);
    const want = n - this.burst;
    const need = (want > this.size ? 0 : want) - this.budget;
    return need <= 0 ? 0 : need / this.rate;
  }
}

function bucket(c: BucketConfig | null | undefined): TokenBucket | undefined {
  return c && c.size > 0 && c.refillTimeMs > 0 ? new TokenBucket(c.size, c.refillTimeMs, c.oneTimeBurst ?? 0) : undefined;
}

export class RateLimiter {
  /** Requests that had to wait (metrics, tests). */
  throttled = 0;

  constructor(readonly ops: TokenBucket | undefined, readonly bytes: TokenBucket | undefined) {}

  /** The limiter for a device's configured RateLimit, or undefined when it has no bucket. */
  static from(cfg: RateLimit | null | undefined): RateLimiter | undefined {
    const ops = bucket(cfg?.ops);
    const bytes = bucket(cfg?.bandwidth);
    return ops || bytes ? new RateLimiter(ops, bytes) : undefined;
  }

  /** Take one request of `ops` operations and `bytes` bytes, or nothing (false: it must wait waitMs()). */
  consume(ops: number, bytes: number, now = performance.now()): boolean {
    if (this.ops && !this.ops.take(ops, now)) { this.throttled++; return false; }
    if (this.bytes && !this.bytes.take(bytes, now)) {
      this.ops?.give(ops);
      this.throttled++;
      return false;
    }
    return true;
  }

  /** Put back a consumed request that did not go after all. */
  refund(ops: number, bytes: number): void {
    this.ops?.give(ops);
    this.bytes?.give(bytes);
  }

  /** How long (ms, at least 1) until a request of `ops` and `bytes` could go. */
  waitMs(ops: number, bytes: number, now = performance.now()): number {
    return Math.max(1, this.ops?.waitMs(ops, now) ?? 0, this.bytes?.waitMs(bytes, now) ?? 0);
  }
}

/** A one-shot timer for a throttled queue: at most one pending, rescheduled only earlier. */
export class RetryTimer {
  private timer: NodeJS.Timeout | undefined;
  private at = Infinity;

  constructor(private readonly fn: () => void) {}

  /** Run fn in `ms` (or keep the sooner one already set). */
  in(ms: number): void {
    const at = performance.now() + ms;
    if (this.timer && at >= this.at) return;
    this.cancel();
    this.at = at;
    this.timer = setTimeout(() => { this.timer = undefined; this.at = Infinity; this.fn(); }, Math.ceil(ms));
  }

  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.at = Infinity;
  }
}

/** A RateLimit in words, for logs: "100 ops/s (burst 100), 1048576 B/s (burst 1048576)". */
export function describeRateLimit(cfg: RateLimit | null | undefined): string {
  const one = (b: BucketConfig | null | undefined, unit: string) => (b && b.size > 0 && b.refillTimeMs > 0
    ? `${Math.round(b.size * 1000 / b.refillTimeMs)} ${unit}/s (burst ${b.size + (b.oneTimeBurst ?? 0)})` : undefined);
  return [one(cfg?.ops, 'ops'), one(cfg?.bandwidth, 'B')].filter(Boolean).join(', ') || 'none';
}
