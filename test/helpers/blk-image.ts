/**
 * Host-side checker for disk images written by the test guest's blk workloads
 * (guest/blk.c, guest/blkfmt.c; the format is documented in guest/README.md,
 * "Block format"). Every block the guest wrote is self-describing: a 32-byte
 * header (magic "TSVB", CRC32, sector, generation, block size) followed by a
 * xorshift32 payload seeded from (sector, generation).
 *
 * checkImage() walks the image block by block: an all-zero block counts as
 * blank (never written), anything else must be a valid block for its position
 * (and for one of the expected generations when `gen` is given).
 * makeBlock() builds the exact bytes the guest writes (for pre-filling an image
 * before a read-only benchmark, or for tests of the checker itself).
 */
import * as fs from 'fs';
import { crc32 } from '../../contracts/crc32';

export const BLOCK_MAGIC = 'TSVB';
export const BLOCK_HEADER_SIZE = 32;

export interface CheckOptions {
  /** Block size the guest used (`bs=`, a multiple of 512). */
  bs: number;
  /** Accept only these generations (`gen=`); any generation when absent. */
  gen?: number | readonly number[];
  /** The first `count` blocks must all be valid (blank ones are errors there). */
  count?: number;
  /** Stop listing errors after this many (the count in `errorCount` stays exact). Default 1000. */
  maxErrors?: number;
}

export interface CheckResult {
  /** Whole blocks in the image. */
  blocks: number;
  /** Blocks that passed every check. */
  valid: number;
  /** All-zero blocks (never written), outside the first `count`. */
  blank: number;
  /** Number of bad blocks. */
  errorCount: number;
  /** One line per bad block: "block N (sector S): what". */
  errors: string[];
  /** How many valid blocks carry each generation. */
  generations: Map<number, number>;
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Payload seed for (sector, generation), as guest/blkfmt.c blk_seed(). */
export function blockSeed(sector: number, gen: number): number {
  const lo = (v: number): number => v % 0x100000000 >>> 0;
  const hi = (v: number): number => Math.floor(v / 0x100000000) >>> 0;
  const x = fmix32(lo(sector) ^ fmix32(hi(sector) ^ fmix32(lo(gen) ^ fmix32(hi(gen) ^ 0x9e3779b9))));
  return x === 0 ? 1 : x;
}

/** The exact block the guest writes at `sector` for generation `gen`. */
export function makeBlock(bs: number, sector: number, gen: number): Buffer {
  const b = Buffer.alloc(bs);
  b.write(BLOCK_MAGIC, 0, 'latin1');
  b.writeBigUInt64LE(BigInt(sector), 8);
  b.writeBigUInt64LE(BigInt(gen), 16);
  b.writeUInt32LE(bs, 24);
  let x = blockSeed(sector, gen);
  for (let off = BLOCK_HEADER_SIZE; off + 4 <= bs; off += 4) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    b.writeUInt32LE(x, off);
  }
  b.writeUInt32LE(crc32(b), 4);
  return b;
}

/** What is wrong with block `b` at `sector`, or undefined when it is valid. */
function checkBlock(b: Buffer, bs: number, sector: number, gens: Set<number> | undefined): string | undefined {
  if (b.toString('latin1', 0, 4) !== BLOCK_MAGIC) return 'bad magic';
  const hdrSector = b.readBigUInt64LE(8);
  if (hdrSector !== BigInt(sector)) return `sector mismatch (header says ${hdrSector})`;
  const gen64 = b.readBigUInt64LE(16);
  if (gen64 > BigInt(Number.MAX_SAFE_INTEGER)) return `generation out of range (${gen64})`;
  const gen = Number(gen64);
  if (gens && !gens.has(gen)) return `unexpected generation ${gen}`;
  const hdrBs = b.readUInt32LE(24);
  if (hdrBs !== bs) return `block size mismatch (header says ${hdrBs})`;
  const stored = b.readUInt32LE(4);
  b.writeUInt32LE(0, 4);
  const crc = crc32(b);
  b.writeUInt32LE(stored, 4);
  if (crc !== stored) return `bad crc (stored ${stored.toString(16)}, computed ${crc.toString(16)})`;
  let x = blockSeed(sector, gen);
  for (let off = BLOCK_HEADER_SIZE; off + 4 <= bs; off += 4) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    if (b.readUInt32LE(off) !== x) return `payload mismatch at byte ${off} for generation ${gen}`;
  }
  return undefined;
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** Verifies every block of the image at `path` (see the module comment). */
export function checkImage(path: string, opts: CheckOptions): CheckResult {
  const { bs } = opts;
  if (!Number.isInteger(bs) || bs < 512 || bs % 512 !== 0) throw new Error(`bad block size ${bs}`);
  const gens = opts.gen === undefined ? undefined : new Set<number>(typeof opts.gen === 'number' ? [opts.gen] : opts.gen);
  const maxErrors = opts.maxErrors ?? 1000;
  const result: CheckResult = { blocks: 0, valid: 0, blank: 0, errorCount: 0, errors: [], generations: new Map() };
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    result.blocks = Math.floor(size / bs);
    if (opts.count !== undefined && opts.count > result.blocks) {
      result.errorCount++;
      result.errors.push(`image has ${result.blocks} blocks, ${opts.count} expected`);
    }
    const per = Math.max(1, Math.floor((4 << 20) / bs));
    const chunk = Buffer.alloc(per * bs);
    for (let first = 0; first < result.blocks; first += per) {
      const nb = Math.min(per, result.blocks - first);
      let got = 0;
      while (got < nb * bs) {
        const n = fs.readSync(fd, chunk, got, nb * bs - got, first * bs + got);
        if (n === 0) throw new Error(`short read at ${first * bs + got}`);
        got += n;
      }
      for (let i = 0; i < nb; i++) {
        const block = first + i;
        const sector = (block * bs) / 512;
        const b = chunk.subarray(i * bs, (i + 1) * bs);
        const required = opts.count !== undefined && block < opts.count;
        let what: string | undefined;
        if (isZero(b)) {
          if (!required) {
            result.blank++;
            continue;
          }
          what = 'blank (never written)';
        } else {
          what = checkBlock(b, bs, sector, gens);
        }
        if (what === undefined) {
          result.valid++;
          const g = Number(b.readBigUInt64LE(16));
          result.generations.set(g, (result.generations.get(g) ?? 0) + 1);
        } else {
          result.errorCount++;
          if (result.errors.length < maxErrors) result.errors.push(`block ${block} (sector ${sector}): ${what}`);
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return result;
}
