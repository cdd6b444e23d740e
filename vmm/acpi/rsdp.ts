/**
 * The Root System Description Pointer, revision 2 (ACPI 6.x, 5.2.5.3): points
 * at the XSDT. Two checksums: the first 20 bytes (ACPI 1.0 part) and all 36.
 *
 *   0 "RSD PTR "  8 Checksum u8  9 OEMID[6]  15 Revision u8 (2)  16 RsdtAddress u32
 *  20 Length u32 (36)  24 XsdtAddress u64  32 Extended Checksum u8  33 Reserved[3]
 */
import { checksum, putAscii, OEM_ID } from './sdt';

export const RSDP_SIZE = 36;

export function encodeRsdp(xsdtAddr: number): Buffer {
  const b = Buffer.alloc(RSDP_SIZE);
  b.write('RSD PTR ', 0, 'ascii');
  putAscii(b, 9, 6, OEM_ID);
  b.writeUInt8(2, 15);
  b.writeUInt32LE(0, 16);
  b.writeUInt32LE(RSDP_SIZE, 20);
  b.writeBigUInt64LE(BigInt(xsdtAddr), 24);
  b[8] = checksum(b.subarray(0, 20));
  b[32] = checksum(b);
  return b;
}
