import * as assert from 'assert';
import { parseElf, ElfError } from '../boot/elf';
import { makeElf, pvhNote } from './boot-fixtures';

describe('boot/elf', () => {
  const good = (): Buffer => makeElf({
    segments: [
      { paddr: 0x100000, data: Buffer.from('hello kernel'), memsz: 0x2000 },
      { paddr: 0x200000, data: Buffer.alloc(16, 0xaa) },
    ],
    notes: [{ name: 'GNU', type: 3, desc: Buffer.from([1, 2, 3, 4, 5]) }, pvhNote(0x100004, 4)],
    entry: 0xffffffff81000123n,
  });

  it('returns PT_LOAD segments and PT_NOTE notes', () => {
    const img = parseElf(good());
    assert.strictEqual(img.entry, 0xffffffff81000123n);
    assert.strictEqual(img.segments.length, 2);
    assert.deepStrictEqual(
      img.segments.map((s) => [s.paddr, s.filesz, s.memsz]),
      [[0x100000, 12, 0x2000], [0x200000, 16, 16]],
    );
    assert.strictEqual(img.segments[0].vaddr, 0xffffffff80100000n);
    const data = good().subarray(img.segments[0].offset, img.segments[0].offset + 12).toString();
    assert.strictEqual(data, 'hello kernel');
    assert.deepStrictEqual(img.notes.map((n) => [n.name, n.type, [...n.desc]]), [
      ['GNU', 3, [1, 2, 3, 4, 5]],
      ['Xen', 18, [4, 0, 0x10, 0]],
    ]);
  });

  const bad: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['empty', () => Buffer.alloc(0), /^not an ELF file/],
    ['wrong magic', (b) => { b[1] = 0x46; return b; }, /^not an ELF file/],
    ['truncated header', (b) => b.subarray(0, 40), /^ELF truncated: 40 bytes/],
    ['32-bit', (b) => { b[4] = 1; return b; }, /class 1: only ELF64/],
    ['big-endian', (b) => { b[5] = 2; return b; }, /only little-endian/],
    ['shared object', (b) => { b.writeUInt16LE(3, 16); return b; }, /ELF type 3: only ET_EXEC/],
    ['aarch64', (b) => { b.writeUInt16LE(183, 18); return b; }, /machine 183: only EM_X86_64/],
    ['no program headers', (b) => { b.writeUInt16LE(0, 56); return b; }, /no program headers/],
    ['phdr table past end', (b) => { b.writeUInt16LE(200, 56); return b; }, new RegExp(`^ELF truncated: program header ${Math.floor((good().length - 64) / 56)} outside file$`)],
    ['phoff past end', (b) => { b.writeBigUInt64LE(BigInt(b.length - 8), 32); return b; }, /^ELF truncated: program header 0 outside file$/],
    ['phentsize too small', (b) => { b.writeUInt16LE(32, 54); return b; }, /program header size 32/],
    ['segment data past end', (b) => b.subarray(0, b.length - 4), /^ELF truncated: program header 2 data/],
    ['filesz > memsz', (b) => { b.writeBigUInt64LE(1n, 64 + 56 + 40); return b; }, /program header 1: file size 0xc exceeds memory size 0x1/],
    ['huge offset', (b) => { b.writeBigUInt64LE(0xffffffffffffff00n, 64 + 56 + 8); return b; }, /program header 1 offset 0xffffffffffffff00 is too large/],
    ['note runs past segment', (b) => { b.writeUInt32LE(1000, 64 + 56 * 3 + 4); return b; }, /note in program header 0 at offset 0x0 runs past/],
  ];
  for (const [what, mutate, re] of bad) {
    it(`rejects ${what} with a clear ElfError`, () => {
      assert.throws(() => parseElf(mutate(good())), (e: unknown) => e instanceof ElfError && re.test((e as Error).message) && !(e as Error).message.includes('\n'));
    });
  }

  it('throws only ElfError on random and truncated input (fuzz)', () => {
    let seed = 12345;
    const rnd = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
    const base = good();
    let parsed = 0;
    for (let iter = 0; iter < 5000; iter++) {
      let b: Buffer;
      const mode = iter % 3;
      if (mode === 0) b = base.subarray(0, rnd() % (base.length + 1));
      else if (mode === 1) {
        b = Buffer.from(base);
        for (let k = 0; k < 1 + (rnd() % 6); k++) b[rnd() % b.length] = rnd() & 0xff;
      } else {
        b = Buffer.alloc(rnd() % 300);
        for (let k = 0; k < b.length; k++) b[k] = rnd() & 0xff;
        if (b.length >= 4 && rnd() % 2) b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
      }
      try {
        parseElf(b);
        parsed++;
      } catch (e) {
        if (!(e instanceof ElfError)) throw new Error(`iteration ${iter}: non-ElfError thrown: ${String(e)}`);
        assert.ok(!e.message.includes('\n'));
      }
    }
    assert.ok(parsed > 0, 'some single-byte mutations should still parse');
  });
});
