/**
 * The loop every virtio device model shares: drain a virtqueue with
 * notification suppression, and complete a head (publish used, set the
 * interrupt-status bit in the state page, then signal) when the driver wants
 * an interrupt. `Notify` is what the driver-domain maps to writing the
 * queue's irqfd.
 */

import { Virtqueue, PopResult, Chain } from './virtqueue';
import { DeviceSlot } from '../contracts/state-page';
import { Interrupt, Status } from '../contracts/virtio-mmio-layout';

/** Signal the guest for queue `queue` (the driver-domain writes that queue's irqfd). */
export type Notify = (queue: number) => void;

/** True when the driver has set DRIVER_OK and the device does not need a reset. */
export function deviceRunning(slot: DeviceSlot): boolean {
  const s = slot.status;
  return (s & Status.DRIVER_OK) !== 0 && (s & (Status.DEVICE_NEEDS_RESET | Status.FAILED)) === 0;
}

/**
 * Publish `head` as used with `len` bytes written; interrupt the driver if it
 * asked for one. Returns false when the head could not be completed.
 */
export function complete(vq: Virtqueue, head: number, len: number, notify: Notify): boolean {
  if (!vq.push(head, len)) return false;
  signalIfNeeded(vq, notify);
  return true;
}

/** Interrupt for used elements published since the last decision, if the driver wants it. */
export function signalIfNeeded(vq: Virtqueue, notify: Notify): void {
  if (vq.needsNotify()) signal(vq, notify);
}

/** Unconditionally set the VRING interrupt bit and signal (after a recovery, in case one was lost). */
export function signal(vq: Virtqueue, notify: Notify): void {
  vq.slot.raiseInterrupt(Interrupt.VRING);
  notify(vq.index);
}

/**
 * Pop and hand every available chain to `handle` until the ring is empty,
 * with driver kicks suppressed while draining, and re-check after
 * re-enabling them. `handle` returns false to stop early (e.g. no RX frame
 * to deliver); `take` decides whether to pop at all. Returns chains handled.
 */
export function drain(vq: Virtqueue, handle: (r: Exclude<PopResult, { kind: 'empty' }>) => boolean, take: () => boolean = () => true): number {
  let n = 0;
  for (;;) {
    vq.disableNotify();
    while (take()) {
      const r = vq.pop();
      if (r.kind === 'empty') break;
      n++;
      if (!handle(r) || r.kind === 'broken') return n;
    }
    if (!take() || !vq.enableNotify()) return n;
  }
}

export type { Chain };
