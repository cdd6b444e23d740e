/**
 * The common ACPI System Description Table header (ACPI 6.x, 5.2.6) and the
 * byte-sum checksum every table carries: encode a table from its signature,
 * revision and body, with length and checksum filled in.
 *
 *   0 Signature[4]  4 Length u32  8 Revision u8  9 Checksum u8  10 OEMID[6]
 *  16 OEM Table ID[8]  24 OEM Revision u32  28 Creator ID[4]  32 Creator Revision u32   (36 bytes)
 */

export const SDT_HEADER_SIZE = 36;
export const SDT_CHECKSUM_OFFSET = 9;
export const OEM_ID = 'TSVMM';
export const OEM_TABLE_ID = 'TSVMMVM';
export const CREATOR_ID = 'TSVM';

/** The 8-bit value that makes the bytes of `b` sum to zero when stored in a zeroed checksum slot. */
export function checksum(b: Uint8Array): number {
  let sum = 0;
  for (const x of b) sum = (sum + x) & 0xff;
  return (0x100 - sum) & 0xff;
}

/** Write `s` as space-padded ASCII into b[off, off+len). */
export function putAscii(b: Buffer, off: number, len: number, s: string): void {
  if (s.length > len) throw new Error(`ACPI: "${s}" is longer than ${len} characters`);
  b.fill(0x20, off, off + len);
  b.write(s, off, 'ascii');
}

/** A complete table: header + body, length and checksum set. */
export function encodeSdt(signature: string, revision: number, body: Buffer): Buffer {
  if (signature.length !== 4) throw new Error(`ACPI signature "${signature}" must be 4 characters`);
  const t = Buffer.alloc(SDT_HEADER_SIZE + body.length);
  t.write(signature, 0, 'ascii');
  t.writeUInt32LE(t.length, 4);
  t.writeUInt8(revision, 8);
  putAscii(t, 10, 6, OEM_ID);
  putAscii(t, 16, 8, OEM_TABLE_ID);
  t.writeUInt32LE(1, 24);
  putAscii(t, 28, 4, CREATOR_ID);
  t.writeUInt32LE(1, 32);
  body.copy(t, SDT_HEADER_SIZE);
  t[SDT_CHECKSUM_OFFSET] = checksum(t);
  return t;
}
