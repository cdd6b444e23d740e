/**
 * Word-level access to a shared page: plain and Atomics loads/stores of
 * little-endian u32 fields at byte offsets from a base, plus the small
 * integer helpers the page layouts share (u64 split into two u32 halves).
 */

export const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
/** Join two u32 halves (exact up to 2^53). */
export const u64 = (lo: number, hi: number): number => lo + hi * 0x1_0000_0000;
export const lo32 = (v: number): number => v >>> 0;
export const hi32 = (v: number): number => Math.floor(v / 0x1_0000_0000) >>> 0;

/** A slot's 32-bit word accessor over the page. */
export class Words {
  constructor(readonly u32: Uint32Array, readonly base: number) {}
  get(off: number): number {
    return this.u32[(this.base + off) >>> 2];
  }
  set(off: number, v: number): void {
    this.u32[(this.base + off) >>> 2] = v >>> 0;
  }
  load(off: number): number {
    return Atomics.load(this.u32, (this.base + off) >>> 2);
  }
  store(off: number, v: number): void {
    Atomics.store(this.u32, (this.base + off) >>> 2, v >>> 0);
  }
  or(off: number, v: number): number {
    return Atomics.or(this.u32, (this.base + off) >>> 2, v >>> 0);
  }
  and(off: number, v: number): number {
    return Atomics.and(this.u32, (this.base + off) >>> 2, v >>> 0);
  }
  add(off: number, v: number): number {
    return Atomics.add(this.u32, (this.base + off) >>> 2, v >>> 0);
  }
  /** Compare-and-swap; true if the word was `expected` and is now `v`. */
  cas(off: number, expected: number, v: number): boolean {
    return Atomics.compareExchange(this.u32, (this.base + off) >>> 2, expected >>> 0, v >>> 0) === expected >>> 0;
  }
}

