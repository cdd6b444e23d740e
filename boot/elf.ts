/**
 * A strict ELF64 parser for x86-64 executables (an uncompressed vmlinux or the
 * test guest). It validates the header and program headers and returns the
 * PT_LOAD segments and the PT_NOTE notes. Any malformed input gives an
 * ElfError with a one-line message saying what is wrong; nothing else is
 * ever thrown for untrusted bytes.
 */

export class ElfError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ElfError';
  }
}

export const PT_LOAD = 1;
export const PT_NOTE = 4;
export const ET_EXEC = 2;
export const EM_X86_64 = 62;

const EHDR_SIZE = 64;
const PHDR_SIZE = 56;

/** One PT_LOAD segment. Addresses the loader uses are numbers; vaddr can be a kernel-half address, so it stays a bigint. */
export interface ElfSegment {
  index: number;
  offset: number;
  vaddr: bigint;
  paddr: number;
  filesz: number;
  memsz: number;
  flags: number;
  align: number;
}

export interface ElfNote {
  /** Name without its NUL, e.g. "Xen" or "GNU". */
  name: string;
  type: number;
  desc: Buffer;
}

export interface ElfImage {
  entry: bigint;
  segments: ElfSegment[];
  notes: ElfNote[];
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

function u64(buf: Buffer, off: number, what: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError(`ELF ${what} ${hex(v)} is too large`);
  return Number(v);
}

/** Parse and validate an ELF64 x86-64 executable. */
export function parseElf(buf: Buffer): ElfImage {
  if (!Buffer.isBuffer(buf)) throw new ElfError('not an ELF file: input is not a Buffer');
  if (buf.length < 4 || buf[0] !== 0x7f || buf[1] !== 0x45 || buf[2] !== 0x4c || buf[3] !== 0x46) {
    throw new ElfError('not an ELF file (bad magic)');
  }
  if (buf.length < EHDR_SIZE) throw new ElfError(`ELF truncated: ${buf.length} bytes, the ELF64 header needs ${EHDR_SIZE}`);
  if (buf[4] !== 2) throw new ElfError(`unsupported ELF class ${buf[4]}: only ELF64 is supported`);
  if (buf[5] !== 1) throw new ElfError(`unsupported ELF data encoding ${buf[5]}: only little-endian is supported`);
  if (buf[6] !== 1) throw new ElfError(`unsupported ELF version ${buf[6]}`);
  const type = buf.readUInt16LE(16);
  if (type !== ET_EXEC) throw new ElfError(`unsupported ELF type ${type}: only ET_EXEC (2) executables can be loaded`);
  const machine = buf.readUInt16LE(18);
  if (machine !== EM_X86_64) throw new ElfError(`unsupported ELF machine ${machine}: only EM_X86_64 (62) is supported`);
  const entry = buf.readBigUInt64LE(24);
  const phoff = u64(buf, 32, 'program header offset');
  const phentsize = buf.readUInt16LE(54);
  const phnum = buf.readUInt16LE(56);
  if (phnum === 0) throw new ElfError('ELF has no program headers');
  if (phentsize < PHDR_SIZE) throw new ElfError(`ELF program header size ${phentsize} is smaller than ${PHDR_SIZE}`);

  for (let i = 0; i < phnum; i++) {
    if (phoff + i * phentsize + PHDR_SIZE > buf.length) throw new ElfError(`ELF truncated: program header ${i} outside file`);
  }

  const segments: ElfSegment[] = [];
  const notes: ElfNote[] = [];
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    const ptype = buf.readUInt32LE(ph);
    if (ptype !== PT_LOAD && ptype !== PT_NOTE) continue;
    const offset = u64(buf, ph + 8, `program header ${i} offset`);
    const filesz = u64(buf, ph + 32, `program header ${i} file size`);
    if (offset + filesz > buf.length) {
      throw new ElfError(`ELF truncated: program header ${i} data (${hex(offset)}+${hex(filesz)}) outside file of ${hex(buf.length)} bytes`);
    }
    if (ptype === PT_LOAD) {
      const memsz = u64(buf, ph + 40, `program header ${i} memory size`);
      const paddr = u64(buf, ph + 24, `program header ${i} physical address`);
      if (filesz > memsz) throw new ElfError(`ELF program header ${i}: file size ${hex(filesz)} exceeds memory size ${hex(memsz)}`);
      if (paddr + memsz > Number.MAX_SAFE_INTEGER) throw new ElfError(`ELF program header ${i}: segment end is too large`);
      segments.push({
        index: i, offset, vaddr: buf.readBigUInt64LE(ph + 16), paddr, filesz, memsz,
        flags: buf.readUInt32LE(ph + 4), align: Number(buf.readBigUInt64LE(ph + 48) & 0xffffffffn),
      });
    } else {
      const align = buf.readBigUInt64LE(ph + 48) === 8n ? 8 : 4;
      notes.push(...parseNotes(buf.subarray(offset, offset + filesz), align, i));
    }
  }
  return { entry, segments, notes };
}

function parseNotes(data: Buffer, align: number, ph: number): ElfNote[] {
  const notes: ElfNote[] = [];
  const up = (n: number): number => Math.ceil(n / align) * align;
  let off = 0;
  while (off < data.length) {
    if (off + 12 > data.length) throw new ElfError(`ELF note in program header ${ph} truncated at offset ${hex(off)}`);
    const namesz = data.readUInt32LE(off);
    const descsz = data.readUInt32LE(off + 4);
    const type = data.readUInt32LE(off + 8);
    const nameOff = off + 12;
    const descOff = nameOff + up(namesz);
    if (descOff > data.length || descOff + descsz > data.length) {
      throw new ElfError(`ELF note in program header ${ph} at offset ${hex(off)} runs past the end of its segment`);
    }
    let name = data.subarray(nameOff, nameOff + namesz);
    if (name.length > 0 && name[name.length - 1] === 0) name = name.subarray(0, name.length - 1);
    notes.push({ name: name.toString('latin1'), type, desc: Buffer.from(data.subarray(descOff, descOff + descsz)) });
    off = descOff + up(descsz);
  }
  return notes;
}
