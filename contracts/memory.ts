/**
 * Guest physical memory as seen from a host process.
 *
 * Guest RAM is one memfd held by the supervisor; each component maps it and
 * describes the mapping as a list of regions (guest physical address ->
 * host bytes). Every access from device code goes through `slice`, which
 * bounds-checks against the regions, so a guest-supplied address or length
 * can never reach outside guest RAM.
 */
import { native } from '../native/kvm';

/** One contiguous guest-physical range backed by host memory. */
export interface MemoryRegion {
  /** Guest physical address of the first byte. */
  gpa: number;
  /** Host bytes (a view over the memfd mapping, not a copy). */
  bytes: Uint8Array;
  /** Host address of bytes[0] (for iovecs handed to the kernel). */
  host: number;
}

/** Host address of the first byte of each buffer seen so far (hostRegion records guest RAM's up front). */
const hostBases = new WeakMap<ArrayBufferLike, number>();

/**
 * Host address of `v`'s first byte, for iovecs and SQEs handed to the kernel.
 * Views of guest RAM find their buffer's address recorded by hostRegion; any
 * other buffer is asked of the addon once, then recorded too.
 */
export function hostAddress(v: Uint8Array): number {
  let base = hostBases.get(v.buffer);
  if (base === undefined) {
    base = Number(native.address(v)) - v.byteOffset;
    hostBases.set(v.buffer, base);
  }
  return base + v.byteOffset;
}

/**
 * The region for guest-physical `gpa` backed by `mem` (a mapping, or any
 * buffer), with its host address. Every GuestMemory is built of these, so
 * every region has one object shape (the driver-domain's optimized code sees
 * only that one) and an address for the kernel, and views of it find their
 * address in hostAddress() without a call into the addon.
 */
export function hostRegion(gpa: number, mem: ArrayBuffer | Uint8Array): MemoryRegion {
  const bytes = mem instanceof Uint8Array ? mem : new Uint8Array(mem);
  return { gpa, bytes, host: hostAddress(bytes) };
}

/** Thrown when the guest names memory it does not have. */
export class GuestMemoryError extends Error {
  constructor(readonly gpa: number, readonly length: number) {
    super(`guest address range 0x${gpa.toString(16)}+0x${length.toString(16)} is outside guest RAM`);
    this.name = 'GuestMemoryError';
  }
}

export class GuestMemory {
  readonly regions: readonly MemoryRegion[];

  constructor(regions: MemoryRegion[]) {
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
  }

  /** Total bytes of RAM. */
  get size(): number {
    return this.regions.reduce((n, r) => n + r.bytes.length, 0);
  }

  /** True when [gpa, gpa+length) lies entirely inside one region. */
  contains(gpa: number, length: number): boolean {
    return this.locate(gpa, length) >= 0;
  }

  /**
   * A view (no copy) of [gpa, gpa+length). Throws GuestMemoryError when the
   * range is not entirely inside one region (ranges never straddle regions:
   * the layout leaves a hole between them).
   */
  slice(gpa: number, length: number): Uint8Array {
    const i = this.locate(gpa, length);
    if (i < 0) throw new GuestMemoryError(gpa, length);
    const r = this.regions[i];
    const off = gpa - r.gpa;
    return r.bytes.subarray(off, off + length);
  }

  /** A DataView over [gpa, gpa+length), bounds-checked like `slice`. */
  view(gpa: number, length: number): DataView {
    const s = this.slice(gpa, length);
    return new DataView(s.buffer, s.byteOffset, s.byteLength);
  }

  /** Index of the region that holds all of [gpa, gpa+length), or -1 (the offset in it is gpa - regions[i].gpa). */
  locate(gpa: number, length: number): number {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(length) || gpa < 0 || length < 0) return -1;
    const rs = this.regions;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i];
      if (gpa >= r.gpa && gpa + length <= r.gpa + r.bytes.length) return i;
    }
    return -1;
  }
}
