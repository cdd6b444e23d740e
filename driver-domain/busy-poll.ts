/**
 * Adaptive busy polling of a virtqueue after the driver-domain served it.
 *
 * A guest usually answers a completion with new work: a polling block driver
 * resubmits as soon as it sees its requests done, a network stack echoes a
 * received frame. If that work arrives while the driver-domain still looks
 * (kicks suppressed with Virtqueue.disableNotify), the guest makes no
 * QueueNotify exit, which costs tens of microseconds on a software-KVM host,
 * and the driver-domain no eventfd wake-up. When it does not arrive within
 * the window, the poller backs off: after each miss it skips the next 1, 2,
 * 4 ... 256 chances, so a guest that waits for interrupts (slower to answer)
 * costs almost no spinning; a hit resets the back-off. (vhost-net's
 * busyloop_timeout and QEMU's adaptive aio polling do the same.)
 */
import { performance } from 'perf_hooks';
import { Virtqueue } from '../virtio/virtqueue';

/**
 * Default polling window in microseconds (env TSVMM_DD_POLL_US; 0 turns polling off). Long
 * enough for an interrupt-driven guest on PVM (interrupt, InterruptStatus read and ACK: two MMIO
 * exits of ~40 us) to answer: 50 us caught only polling guests (UDP round trips with interrupts:
 * ~3.5-4k/s at 50 us, ~5.6-6k/s at 200 us).
 */
export const POLL_US = Number(process.env.TSVMM_DD_POLL_US ?? 200);
/** Longest a chain of poll-and-serve rounds keeps the event loop (ms): timers and other fds get their turn. */
export const POLL_BUDGET_MS = 2;
const MAX_BACKOFF = 256;
/** How often (ms) a poll also runs its `side` work, e.g. a non-blocking TAP drain (one syscall). */
const SIDE_MS = 0.005;

export class BusyPoll {
  hits = 0;
  misses = 0;
  private skip = 0;
  private backoff = 0;

  constructor(readonly windowUs = POLL_US) {}

  /**
   * Serve `vq` again when the guest adds buffers within the window: `serve`
   * drains it (it must leave kicks enabled, as queue-runner's drain does).
   * With `repeat`, keep polling after each serve (a block driver answering
   * every completion); without it, once (a network echo: afterwards the
   * other side needs the CPU). `side`, when given, runs every few
   * microseconds of the wait (other work of the same device that would
   * otherwise wake this process: a TAP's incoming frames); any work it
   * reports extends the window. Returns with kicks enabled; nothing the guest
   * added can be missed (enableNotify re-checks).
   */
  follow(vq: Virtqueue, serve: () => number, repeat: boolean, side?: () => number): void {
    if (this.windowUs <= 0) return;
    const until = performance.now() + POLL_BUDGET_MS;
    for (let first = true; first || (repeat && performance.now() < until); first = false) {
      vq.disableNotify();
      if (!this.wait(vq, side)) {
        if (vq.enableNotify() && serve() > 0) continue;
        return;
      }
      if (serve() === 0) {
        vq.enableNotify();
        return;
      }
    }
  }

  /** Spin until `vq` has buffers (true) or the window passed (false; then back off). */
  private wait(vq: Virtqueue, side?: () => number): boolean {
    if (this.skip > 0) {
      this.skip--;
      return false;
    }
    let t = performance.now();
    let end = t + this.windowUs / 1000;
    let nextSide = t + SIDE_MS;
    do {
      if (vq.hasAvailable()) {
        this.backoff = 0;
        this.hits++;
        return true;
      }
      t = performance.now();
      if (side && t >= nextSide) {
        nextSide = t + SIDE_MS;
        if (side() > 0) end = t + this.windowUs / 1000;
      }
    } while (t < end);
    this.misses++;
    this.backoff = this.backoff ? Math.min(this.backoff * 2, MAX_BACKOFF) : 1;
    this.skip = this.backoff;
    return false;
  }
}
