/**
 * KVM's coalesced PIO for the UART's transmit register (as QEMU coalesces
 * write-only registers): a guest `out` to COM1's THR no longer exits to the
 * vmm; KVM appends it to the VM's coalesced ring (one page, mapped from a vCPU
 * fd at KVM_COALESCED_MMIO_PAGE_OFFSET) and the vCPU thread replays the ring
 * through the UART model before it handles any other exit, so the device sees
 * the guest's writes in order. A polling guest (LSR, then THR per byte) takes
 * one exit per byte instead of two.
 *
 * When it is on: one vCPU (the ring is the VM's and does not say which vCPU
 * wrote an entry, while tsvmm assembles serial lines per vCPU), KVM has
 * KVM_CAP_COALESCED_PIO, and the guest has the THR-empty interrupt off (a
 * guest that waits for that interrupt after each THR write would wait for an
 * exit that never comes): the zone follows IER.THRE (`sync`).
 *
 * Exactly once across a vmm crash: each drained entry is committed with the
 * serial line in the journal's one commit word (its ring tag, vmm/restore.ts
 * SerialLineJournal.commitRing) before the ring's `first` moves; the keeper
 * copies the ring page into the snapshot (native/kvm/keeper.c), and the next
 * vmm replays the entries from the committed tag on (`replaySaved`). Bytes the
 * guest wrote but no exit drained yet are drained by a kick from the vmm's
 * main thread (`RingWatch`), so a line's end never waits for the next exit.
 */
import { abi, ioctl, native } from '../native/kvm';
import { SNAP } from '../contracts/snapshot';
import type { Platform } from './platform';

const O = {
  first: abi('offsetof_kvm_coalesced_mmio_ring_first'),
  last: abi('offsetof_kvm_coalesced_mmio_ring_last'),
  entries: abi('offsetof_kvm_coalesced_mmio_ring_entries'),
  addr: abi('offsetof_kvm_coalesced_mmio_phys_addr'),
  len: abi('offsetof_kvm_coalesced_mmio_len'),
  pio: abi('offsetof_kvm_coalesced_mmio_pio'),
  data: abi('offsetof_kvm_coalesced_mmio_data'),
  zoneAddr: abi('offsetof_kvm_coalesced_mmio_zone_addr'),
  zoneSize: abi('offsetof_kvm_coalesced_mmio_zone_size'),
  zonePio: abi('offsetof_kvm_coalesced_mmio_zone_pio'),
};
const ENTRY = abi('sizeof_kvm_coalesced_mmio');
/** Entries in the ring: KVM_COALESCED_MMIO_MAX for a page of SNAP.RING_SIZE bytes. */
export const RING_MAX = Math.floor((SNAP.RING_SIZE - O.entries) / ENTRY);

/** Whether this VM can coalesce port writes (KVM_CAP_COALESCED_PIO). */
export function coalescedPioSupported(vmFd: number): boolean {
  try {
    return ioctl(vmFd, 'KVM_CHECK_EXTENSION', abi('KVM_CAP_COALESCED_PIO')) > 0;
  } catch { return false; }
}

/** KVM_(UN)REGISTER_COALESCED_MMIO of the port range [port, port + size). */
export function coalescePorts(vmFd: number, port: number, size: number, on: boolean): void {
  const z = new DataView(new ArrayBuffer(abi('sizeof_kvm_coalesced_mmio_zone')));
  z.setBigUint64(O.zoneAddr, BigInt(port), true);
  z.setUint32(O.zoneSize, size, true);
  z.setUint32(O.zonePio, 1, true);
  ioctl(vmFd, on ? 'KVM_REGISTER_COALESCED_MMIO' : 'KVM_UNREGISTER_COALESCED_MMIO', z);
}

/** A view of a coalesced ring: the VM's (mapped) or the copy a keeper saved. */
export class CoalescedRing {
  private readonly u32: Uint32Array;
  private readonly dv: DataView;

  constructor(readonly buffer: ArrayBufferLike, offset = 0) {
    this.u32 = new Uint32Array(buffer, offset, SNAP.RING_SIZE / 4);
    this.dv = new DataView(buffer, offset, SNAP.RING_SIZE);
  }

  /** The VM's ring, through vCPU fd `vcpuFd` (every vCPU fd maps the same page). */
  static map(vcpuFd: number): CoalescedRing {
    return new CoalescedRing(native.mmap(vcpuFd, SNAP.RING_SIZE, abi('KVM_COALESCED_MMIO_PAGE_OFFSET') * SNAP.RING_SIZE, true));
  }

  /** The next entry userspace consumes. */
  get first(): number { return Atomics.load(this.u32, O.first >> 2); }
  /** The next entry KVM fills. */
  get last(): number { return Atomics.load(this.u32, O.last >> 2); }
  pending(): boolean { return this.first !== this.last; }

  /**
   * Applies the entries [from, last) to the platform, in order, calling `consumed(next)` after each
   * (the caller commits it with the line); returns the index after the last one.
   */
  replay(from: number, platform: Platform, consumed: (next: number) => void): number {
    const last = this.last;
    let i = from;
    while (i !== last) {
      const at = O.entries + i * ENTRY;
      const len = this.dv.getUint32(at + O.len, true);
      const addr = this.dv.getUint32(at + O.addr, true); // ports and the zones tsvmm registers are < 4 GiB
      const v = len === 1 ? this.dv.getUint8(at + O.data) : len === 2 ? this.dv.getUint16(at + O.data, true) : this.dv.getUint32(at + O.data, true);
      if (this.dv.getUint32(at + O.pio, true)) platform.pioWrite(addr, len, v); else platform.mmioWrite(addr, len, v);
      i = (i + 1) % RING_MAX;
      consumed(i);
    }
    return i;
  }

  /** Hands entries before `index` back to KVM. */
  consume(index: number): void { Atomics.store(this.u32, O.first >> 2, index); }
}

/**
 * The vmm main thread's side: every POLL_MS, if the ring holds entries no exit drained (the guest
 * wrote its line's last bytes and went quiet), kick vCPU 0 out of KVM_RUN; its thread drains the
 * ring on the way back in. Likewise, once, when vCPU 0's journal has held the same part line for a
 * whole poll with the ring empty (a prompt, then the guest only polls for input): on that kick the
 * thread finds nothing new and writes the part line out (vmm/restore.ts SerialLineJournal.settle).
 */
export class RingWatch {
  static readonly POLL_MS = 20;
  private tid = 0;
  private timer?: NodeJS.Timeout;
  private lastCommit = 0;
  private kickedFor = 0;

  constructor(private readonly ring: CoalescedRing, private readonly run: DataView, private readonly immediateExitOffset: number,
    /** vCPU 0's journal commit word (contracts/snapshot.ts Journal.commit). */
    private readonly commit?: Int32Array) {}

  started(tid: number): void {
    this.tid = tid;
    this.timer ??= setInterval(() => this.poll(), RingWatch.POLL_MS);
    this.timer.unref();
  }

  private poll(): void {
    if (!this.tid) return;
    let kick = this.ring.pending();
    if (!kick && this.commit) {
      const word = Atomics.load(this.commit, 0) & ~SNAP.HANDLED;
      kick = (word & SNAP.LEN_MASK) !== 0 && word === this.lastCommit && word !== this.kickedFor;
      this.lastCommit = word;
      if (kick) this.kickedFor = word;
    }
    if (!kick) return;
    this.run.setUint8(this.immediateExitOffset, 1);
    try { native.kick(this.tid); } catch { this.tid = 0; /* the vCPU thread is gone */ }
  }
}
