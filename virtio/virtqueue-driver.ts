/**
 * The *driver* side of a split virtqueue, over GuestMemory: what a guest's
 * virtio driver does (write descriptors, publish avail entries, read used
 * entries). Used by the device tests and by fault injection to build
 * well-formed and deliberately malformed rings without a guest.
 */

import { GuestMemory } from '../contracts/memory';
import { DeviceSlot } from '../contracts/state-page';
import {
  VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, availRingSize, descTableSize, usedRingSize,
} from '../contracts/virtio-mmio-layout';

export interface BufSpec {
  addr: number;
  len: number;
  /** Device-writable. */
  write?: boolean;
}

export interface RingAddrs {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

/** Lay a ring of `size` entries out from `base` (16-aligned): desc, avail, used (4-aligned). Returns addresses and the end. */
export function layoutRing(base: number, size: number): RingAddrs & { end: number } {
  const desc = base;
  const avail = desc + descTableSize(size);
  const used = Math.ceil((avail + availRingSize(size)) / 4) * 4;
  return { size, desc, avail, used, end: used + usedRingSize(size) };
}

export class SplitRingDriver {
  private nextFree = 0;
  private lastSeenUsed = 0;
  private availIdx = 0;

  constructor(readonly mem: GuestMemory, readonly ring: RingAddrs) {}

  /** Program the ring into the slot's queue registers (what the vmm stores on the guest's MMIO writes). */
  configure(slot: DeviceSlot, q: number): void {
    slot.setQueueConfig(q, { num: this.ring.size, ready: true, desc: this.ring.desc, driver: this.ring.avail, device: this.ring.used });
  }

  /** Raw descriptor write (any values, for malformed chains). */
  writeDesc(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const v = this.mem.view(table + 16 * i, 16);
    v.setUint32(0, addr % 0x1_0000_0000, true);
    v.setUint32(4, Math.floor(addr / 0x1_0000_0000), true);
    v.setUint32(8, len >>> 0, true);
    v.setUint16(12, flags, true);
    v.setUint16(14, next, true);
  }

  /** Allocate `n` consecutive descriptor indexes (round-robin; tests keep chains short). */
  alloc(n: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      out.push(this.nextFree);
      this.nextFree = (this.nextFree + 1) % this.ring.size;
    }
    return out;
  }

  /** Write a direct chain; returns its head (not yet published). */
  addChain(bufs: BufSpec[]): number {
    const ids = this.alloc(bufs.length);
    bufs.forEach((b, i) => {
      const last = i === bufs.length - 1;
      this.writeDesc(this.ring.desc, ids[i], b.addr, b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : ids[i + 1]);
    });
    return ids[0];
  }

  /** Write an indirect table at `table` and a head descriptor pointing at it; returns the head. */
  addIndirectChain(table: number, bufs: BufSpec[]): number {
    bufs.forEach((b, i) => {
      const last = i === bufs.length - 1;
      this.writeDesc(table, i, b.addr, b.len, (b.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : i + 1);
    });
    const [head] = this.alloc(1);
    this.writeDesc(this.ring.desc, head, table, 16 * bufs.length, VIRTQ_DESC_F_INDIRECT, 0);
    return head;
  }

  /** Put `head` in the avail ring and bump avail->idx. */
  publish(head: number): void {
    const a = this.mem.view(this.ring.avail, availRingSize(this.ring.size));
    a.setUint16(4 + 2 * (this.availIdx % this.ring.size), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.setAvailIdx(this.availIdx);
  }

  /** Write avail->idx directly (also for malformed jumps); later publishes continue from `v`. */
  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.mem.view(this.ring.avail, 4).setUint16(2, this.availIdx, true);
  }
  get availIndex(): number {
    return this.availIdx;
  }
  setAvailFlags(v: number): void {
    this.mem.view(this.ring.avail, 2).setUint16(0, v, true);
  }
  /** used_event (EVENT_IDX): interrupt me when used idx passes this. */
  setUsedEvent(v: number): void {
    this.mem.view(this.ring.avail, availRingSize(this.ring.size)).setUint16(4 + 2 * this.ring.size, v, true);
  }
  /** avail_event the device wrote (EVENT_IDX). */
  availEvent(): number {
    return this.mem.view(this.ring.used, usedRingSize(this.ring.size)).getUint16(4 + 8 * this.ring.size, true);
  }
  usedFlags(): number {
    return this.mem.view(this.ring.used, 2).getUint16(0, true);
  }
  usedIdx(): number {
    return this.mem.view(this.ring.used, 4).getUint16(2, true);
  }
  usedElem(i: number): { id: number; len: number } {
    const v = this.mem.view(this.ring.used + 4 + 8 * (i % this.ring.size), 8);
    return { id: v.getUint32(0, true), len: v.getUint32(4, true) };
  }
  /** Used elements published since the last call. */
  takeUsed(): { id: number; len: number }[] {
    const out: { id: number; len: number }[] = [];
    const now = this.usedIdx();
    while (this.lastSeenUsed !== now) {
      out.push(this.usedElem(this.lastSeenUsed));
      this.lastSeenUsed = (this.lastSeenUsed + 1) & 0xffff;
    }
    return out;
  }
}
