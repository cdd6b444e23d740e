/**
 * Synthetic kernels and guest memory for the boot tests: a tiny ELF64 writer
 * (PT_LOAD + PT_NOTE) and a GuestMemory over plain buffers laid out like the VM.
 */
import { GuestMemory, hostRegion } from '../contracts/memory';
import { ramRegions } from '../contracts/layout';

export interface FixtureSegment { paddr: number; data: Buffer; memsz?: number; vaddr?: bigint }
export interface FixtureNote { name: string; type: number; desc: Buffer }

export function noteBytes(notes: FixtureNote[]): Buffer {
  const up = (n: number): number => (n + 3) & ~3;
  const parts = notes.map((n) => {
    const name = Buffer.from(n.name + '\0', 'latin1');
    const b = Buffer.alloc(12 + up(name.length) + up(n.desc.length));
    b.writeUInt32LE(name.length, 0);
    b.writeUInt32LE(n.desc.length, 4);
    b.writeUInt32LE(n.type, 8);
    name.copy(b, 12);
    n.desc.copy(b, 12 + up(name.length));
    return b;
  });
  return Buffer.concat(parts);
}

export function makeElf(opts: { segments: FixtureSegment[]; notes?: FixtureNote[]; entry?: bigint; type?: number; machine?: number }): Buffer {
  const notes = opts.notes && opts.notes.length ? noteBytes(opts.notes) : undefined;
  const phnum = opts.segments.length + (notes ? 1 : 0);
  let off = 64 + 56 * phnum;
  const chunks: Buffer[] = [];
  const ph = Buffer.alloc(56 * phnum);
  let i = 0;
  const put = (type: number, data: Buffer, paddr: number, memsz: number, vaddr: bigint, align: number): void => {
    const o = i++ * 56;
    ph.writeUInt32LE(type, o);
    ph.writeUInt32LE(type === 1 ? 7 : 4, o + 4);
    ph.writeBigUInt64LE(BigInt(off), o + 8);
    ph.writeBigUInt64LE(vaddr, o + 16);
    ph.writeBigUInt64LE(BigInt(paddr), o + 24);
    ph.writeBigUInt64LE(BigInt(data.length), o + 32);
    ph.writeBigUInt64LE(BigInt(memsz), o + 40);
    ph.writeBigUInt64LE(BigInt(align), o + 48);
    chunks.push(data);
    off += data.length;
  };
  if (notes) put(4, notes, 0, notes.length, 0n, 4);
  for (const s of opts.segments) put(1, s.data, s.paddr, s.memsz ?? s.data.length, s.vaddr ?? 0xffffffff80000000n + BigInt(s.paddr), 0x1000);
  const eh = Buffer.alloc(64);
  eh.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  eh.writeUInt16LE(opts.type ?? 2, 16);
  eh.writeUInt16LE(opts.machine ?? 62, 18);
  eh.writeUInt32LE(1, 20);
  eh.writeBigUInt64LE(opts.entry ?? 0xffffffff81000000n, 24);
  eh.writeBigUInt64LE(64n, 32);
  eh.writeUInt16LE(64, 52);
  eh.writeUInt16LE(56, 54);
  eh.writeUInt16LE(phnum, 56);
  return Buffer.concat([eh, ph, ...chunks]);
}

/** An 8-byte PVH entry note (what Linux emits) or a 4-byte one. */
export function pvhNote(entry: number, width: 4 | 8 = 8): FixtureNote {
  const desc = Buffer.alloc(width);
  if (width === 8) desc.writeBigUInt64LE(BigInt(entry)); else desc.writeUInt32LE(entry);
  return { name: 'Xen', type: 18, desc };
}

/** Guest memory of `bytes` RAM laid out like the VM (plain buffers instead of a memfd). */
export function makeMemory(bytes: number): GuestMemory {
  return new GuestMemory(ramRegions(bytes).map((r) => hostRegion(r.gpa, new Uint8Array(r.size))));
}
