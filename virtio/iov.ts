/**
 * Scatter-gather helpers over lists of Uint8Array views (guest buffers).
 * Slicing returns sub-views, never copies; `copyFrom`/`copyInto` are for the
 * few small headers that must be read or written across segment boundaries.
 */

/** Total bytes of a segment list. */
/** sizeof(struct iovec) on x86-64 (base u64, len u64): the iovec arenas handed to io_uring and writev. */
export const IOVEC_SIZE = 16;

export function iovLength(segs: readonly Uint8Array[]): number {
  let n = 0;
  for (const s of segs) n += s.length;
  return n;
}

/** Views of bytes [start, start+length) of the concatenation of `segs` (no copy). */
export function iovSlice(segs: readonly Uint8Array[], start: number, length = Infinity): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let want = length;
  for (const s of segs) {
    if (want <= 0) break;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    const take = Math.min(s.length - skip, want);
    if (take > 0) out.push(skip === 0 && take === s.length ? s : s.subarray(skip, skip + take)); // a whole segment: no new view
    want -= take;
    skip = 0;
  }
  return out;
}

/** Copy up to `dst.length` bytes from the start of `segs` into `dst`; returns bytes copied. */
export function iovRead(segs: readonly Uint8Array[], dst: Uint8Array): number {
  let off = 0;
  for (const s of segs) {
    if (off >= dst.length) break;
    const n = Math.min(s.length, dst.length - off);
    dst.set(s.subarray(0, n), off);
    off += n;
  }
  return off;
}

/** Copy `src` into the start of `segs`; returns bytes copied (short when `segs` is smaller). */
export function iovWrite(segs: readonly Uint8Array[], src: Uint8Array): number {
  let off = 0;
  for (const s of segs) {
    if (off >= src.length) break;
    const n = Math.min(s.length, src.length - off);
    s.set(src.subarray(off, off + n), 0);
    off += n;
  }
  return off;
}

/** Copy a list of source segments into destination segments; returns bytes copied. */
export function iovCopy(dst: readonly Uint8Array[], src: readonly Uint8Array[]): number {
  let di = 0;
  let doff = 0;
  let total = 0;
  for (const s of src) {
    let soff = 0;
    while (soff < s.length && di < dst.length) {
      const d = dst[di];
      const n = Math.min(s.length - soff, d.length - doff);
      d.set(s.subarray(soff, soff + n), doff);
      soff += n;
      doff += n;
      total += n;
      if (doff === d.length) {
        di++;
        doff = 0;
      }
    }
    if (di >= dst.length) break;
  }
  return total;
}
