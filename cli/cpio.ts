/**
 * The "newc" cpio format (SVR4, no CRC) that the Linux kernel unpacks as an
 * initramfs (Documentation/driver-api/early-userspace/buffer-format.rst):
 * a 110-byte ASCII header ("070701" + 13 eight-digit hex fields), the
 * NUL-terminated name padded to 4 bytes, the data padded to 4 bytes, and a
 * final "TRAILER!!!" entry. A writer for `tsvmm image linux` and a reader
 * for tests.
 */

export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

export interface CpioEntry {
  /** Path without a leading "/", e.g. "bin/busybox". */
  name: string;
  /** Type and permission bits, e.g. S_IFREG | 0o755. */
  mode: number;
  data?: Buffer;
  /** Device numbers of a character/block node. */
  rdevMajor?: number;
  rdevMinor?: number;
}

const MAGIC = '070701';
const HEADER_SIZE = 110;
const pad4 = (n: number): number => (4 - (n % 4)) % 4;

function header(fields: number[]): string {
  return MAGIC + fields.map((f) => (f >>> 0).toString(16).padStart(8, '0')).join('');
}

/** Encode `entries` (in order) as a newc archive with its trailer. */
export function writeCpio(entries: readonly CpioEntry[], mtime = 0): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (e: CpioEntry): void => {
    const name = Buffer.from(e.name.replace(/^\/+/, '') + '\0', 'utf8');
    const data = e.data ?? Buffer.alloc(0);
    const isDir = (e.mode & 0o170000) === S_IFDIR;
    const h = header([ino++, e.mode, 0, 0, isDir ? 2 : 1, mtime, data.length, 0, 0, e.rdevMajor ?? 0, e.rdevMinor ?? 0, name.length, 0]);
    parts.push(Buffer.from(h, 'latin1'), name, Buffer.alloc(pad4(HEADER_SIZE + name.length)), data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) push(e);
  push({ name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}

/** Decode a newc archive (up to its trailer). Throws a one-line error on malformed input. */
export function readCpio(buf: Buffer): CpioEntry[] {
  const out: CpioEntry[] = [];
  let off = 0;
  for (;;) {
    if (off + HEADER_SIZE > buf.length) throw new Error(`cpio truncated at offset ${off}: no trailer`);
    if (buf.toString('latin1', off, off + 6) !== MAGIC) throw new Error(`not a newc cpio archive: bad magic at offset ${off}`);
    const f = (i: number): number => parseInt(buf.toString('latin1', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = f(1);
    const size = f(6);
    const namesize = f(11);
    const nameAt = off + HEADER_SIZE;
    const name = buf.toString('utf8', nameAt, nameAt + namesize - 1);
    const dataAt = nameAt + namesize + pad4(HEADER_SIZE + namesize);
    if (dataAt + size > buf.length) throw new Error(`cpio truncated: entry "${name}" needs ${size} bytes at offset ${dataAt}`);
    if (name === 'TRAILER!!!') return out;
    out.push({ name, mode, data: buf.subarray(dataAt, dataAt + size), rdevMajor: f(9), rdevMinor: f(10) });
    off = dataAt + size + pad4(size);
  }
}
