/**
 * The Extended System Description Table (ACPI 6.x, 5.2.8): the header followed
 * by the 64-bit physical addresses of every other table except the DSDT
 * (which the FADT points at).
 */
import { encodeSdt } from './sdt';

export function encodeXsdt(tables: readonly number[]): Buffer {
  const body = Buffer.alloc(8 * tables.length);
  tables.forEach((a, i) => body.writeBigUInt64LE(BigInt(a), 8 * i));
  return encodeSdt('XSDT', 1, body);
}
