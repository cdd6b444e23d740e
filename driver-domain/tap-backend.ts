/**
 * A NetBackend over a TAP fd the supervisor holds: frames out with writev,
 * frames in whenever the poller says the fd is readable (drained until
 * EAGAIN, since the poller is edge-triggered for TAPs).
 */
import * as fs from 'fs';
import { NetBackend } from '../devices/virtio-net';
import { native } from '../native/kvm';

/** Non-throwing read/writev from the addon (native/kvm/fdio.cc): -errno instead of an exception per EAGAIN. */
const fdio = native as unknown as { fdRead?: (fd: number, buf: Uint8Array) => number; fdWritev?: (fd: number, bufs: Uint8Array[]) => number };
// Looked up once: a property load from the addon's exports object is a slow, megamorphic load per frame.
const fdRead = fdio.fdRead?.bind(fdio);
const fdWritev = fdio.fdWritev?.bind(fdio);
const EAGAIN = 11;

const MAX_FRAME = 65536;

export class TapBackend implements NetBackend {
  private receiver?: (frame: Uint8Array) => void;
  private readonly buf = Buffer.alloc(MAX_FRAME);
  dropped = 0;

  constructor(readonly fd: number) {}

  write(frame: Uint8Array[]): void {
    if (fdWritev) {
      if (fdWritev(this.fd, frame) < 0) this.dropped++; // EAGAIN (TAP queue full) or the link is down: a NIC drops too
      return;
    }
    try {
      fs.writevSync(this.fd, frame);
    } catch {
      this.dropped++; // EAGAIN (TAP queue full) or the link is down: a NIC drops too
    }
  }

  onFrame(cb: (frame: Uint8Array) => void): void { this.receiver = cb; }

  /** Read every frame waiting on the TAP. */
  drain(): void {
    const read = fdRead;
    if (read) {
      for (;;) {
        const n = read(this.fd, this.buf);
        if (n === -EAGAIN || n === 0) return;
        if (n < 0) throw new Error(`TAP read failed: errno ${-n}`);
        this.receiver?.(this.buf.subarray(0, n));
      }
    }
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(this.fd, this.buf, 0, MAX_FRAME, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return;
        throw e;
      }
      if (n <= 0) return;
      this.receiver?.(this.buf.subarray(0, n));
    }
  }
}
