/**
 * A minimal AML (ACPI Machine Language, ACPI 6.x chapter 20) encoder: just
 * the terms a static DSDT needs (Scope, Device, Name, integers, strings,
 * EISAID, buffers, packages of integers), the few a Generic Event Device's _EVT method needs
 * (OperationRegion, Field, Method, Store, And, If, Notify, Local0, Arg0), plus
 * the resource descriptors (chapter 6.4) used in _CRS.
 * Every function returns the encoded bytes; compose them by nesting.
 */

const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const METHOD_OP = 0x14;
const EXT_OP_PREFIX = 0x5b;
const OP_REGION_OP = 0x80; // after EXT_OP_PREFIX
const FIELD_OP = 0x81; // after EXT_OP_PREFIX
const DEVICE_OP = 0x82; // after EXT_OP_PREFIX
const LOCAL0_OP = 0x60;
const ARG0_OP = 0x68;
const STORE_OP = 0x70;
const AND_OP = 0x7b;
const NOTIFY_OP = 0x86;
const IF_OP = 0xa0;
const ROOT_CHAR = 0x5c;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;

/** PkgLength (20.2.4): encodes `bodyLen` plus the PkgLength bytes themselves. */
export function pkgLength(bodyLen: number): Buffer {
  if (bodyLen + 1 < 0x40) return Buffer.from([bodyLen + 1]);
  for (let n = 2; n <= 4; n++) {
    const total = bodyLen + n;
    if (total < 2 ** (4 + 8 * (n - 1))) return lengthBytes(total, n);
  }
  throw new Error(`AML package of ${bodyLen} bytes is too large`);
}

/** `value` in the PkgLength format as is (a NamedField's bit count is encoded so). */
function pkgLengthValue(value: number): Buffer {
  if (value < 0x40) return Buffer.from([value]);
  for (let n = 2; n <= 4; n++) if (value < 2 ** (4 + 8 * (n - 1))) return lengthBytes(value, n);
  throw new Error(`AML length ${value} is too large`);
}

function lengthBytes(total: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  b[0] = ((n - 1) << 6) | (total & 0xf);
  for (let i = 1; i < n; i++) b[i] = (total >>> (4 + 8 * (i - 1))) & 0xff;
  return b;
}

function nameSeg(seg: string): Buffer {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new Error(`invalid AML name segment "${seg}"`);
  return Buffer.from(seg.padEnd(4, '_'), 'ascii');
}

/** NameString: "\\_SB_.COM1", "COM1", "_HID". */
export function nameString(path: string): Buffer {
  const root = path.startsWith('\\');
  const segs = (root ? path.slice(1) : path).split('.').filter((s) => s.length > 0);
  const parts: Buffer[] = root ? [Buffer.from([ROOT_CHAR])] : [];
  if (segs.length === 0) parts.push(Buffer.from([0])); // NullName
  else if (segs.length === 2) parts.push(Buffer.from([DUAL_NAME_PREFIX]));
  else if (segs.length > 2) parts.push(Buffer.from([MULTI_NAME_PREFIX, segs.length]));
  parts.push(...segs.map(nameSeg));
  return Buffer.concat(parts);
}

export function integer(n: number | bigint): Buffer {
  const v = BigInt(n);
  if (v < 0n || v > 0xffffffffffffffffn) throw new Error(`AML integer ${v} out of range`);
  if (v === 0n) return Buffer.from([ZERO_OP]);
  if (v === 1n) return Buffer.from([ONE_OP]);
  if (v <= 0xffn) return Buffer.from([BYTE_PREFIX, Number(v)]);
  const b = Buffer.alloc(9);
  if (v <= 0xffffn) { b[0] = WORD_PREFIX; b.writeUInt16LE(Number(v), 1); return b.subarray(0, 3); }
  if (v <= 0xffffffffn) { b[0] = DWORD_PREFIX; b.writeUInt32LE(Number(v), 1); return b.subarray(0, 5); }
  b[0] = QWORD_PREFIX; b.writeBigUInt64LE(v, 1); return b;
}

export function string(s: string): Buffer {
  if (!/^[\x01-\x7f]*$/.test(s)) throw new Error(`AML string "${s}" must be ASCII without NUL`);
  return Buffer.concat([Buffer.from([STRING_PREFIX]), Buffer.from(s, 'ascii'), Buffer.from([0])]);
}

/** EISAID("PNP0501"): the compressed 32-bit EISA id, as an integer. */
export function eisaId(id: string): Buffer {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new Error(`invalid EISA id "${id}"`);
  const c = (i: number): number => id.charCodeAt(i) - 0x40;
  const b = Buffer.alloc(4);
  b.writeUInt16BE((c(0) << 10) | (c(1) << 5) | c(2), 0);
  b.writeUInt16BE(parseInt(id.slice(3), 16), 2);
  return Buffer.concat([Buffer.from([DWORD_PREFIX]), b]);
}

export function nameObj(name: string, value: Buffer): Buffer {
  return Buffer.concat([Buffer.from([NAME_OP]), nameString(name), value]);
}

function pkg(op: number[], body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(op), pkgLength(body.length), body]);
}

export function scope(name: string, ...terms: Buffer[]): Buffer {
  return pkg([SCOPE_OP], Buffer.concat([nameString(name), ...terms]));
}

export function device(name: string, ...terms: Buffer[]): Buffer {
  return pkg([EXT_OP_PREFIX, DEVICE_OP], Buffer.concat([nameString(name), ...terms]));
}

export function buffer(bytes: Buffer): Buffer {
  return pkg([BUFFER_OP], Buffer.concat([integer(bytes.length), bytes]));
}

/** Package(){...} of integers (DefPackage: NumElements is one byte). */
export function packageOf(values: readonly number[]): Buffer {
  if (values.length > 255) throw new Error(`AML package of ${values.length} elements is too long`);
  return pkg([PACKAGE_OP], Buffer.concat([Buffer.from([values.length]), ...values.map((v) => integer(v))]));
}

/* ---- what a method needs (19.6 / 20.2.5) ---- */

export const LOCAL0 = Buffer.from([LOCAL0_OP]);
export const ARG0 = Buffer.from([ARG0_OP]);

/** Method(name, args, Serialized|NotSerialized){terms}: sync level 0. */
export function method(name: string, args: number, serialized: boolean, ...terms: Buffer[]): Buffer {
  if (!Number.isInteger(args) || args < 0 || args > 7) throw new Error(`AML method ${name}: ${args} arguments (0..7)`);
  return pkg([METHOD_OP], Buffer.concat([nameString(name), Buffer.from([args | (serialized ? 0x08 : 0)]), ...terms]));
}

/** Region spaces (19.6.100). */
export const REGION_SYSTEM_MEMORY = 0x00;

/** OperationRegion(name, space, offset, length). */
export function opRegion(name: string, space: number, offset: number, length: number): Buffer {
  return Buffer.concat([Buffer.from([EXT_OP_PREFIX, OP_REGION_OP]), nameString(name), Buffer.from([space]), integer(offset), integer(length)]);
}

/** Field access types and update rules (19.6.48). */
export const FIELD_DWORD_ACC = 0x03;
export const FIELD_WRITE_AS_ZEROS = 0x02 << 5;

/** Field(region, access, NoLock, update){name, bits; ...}: named fields only, packed from bit 0. */
export function field(region: string, flags: number, fields: readonly [string, number][]): Buffer {
  const list = fields.map(([n, bits]) => Buffer.concat([nameSeg(n), pkgLengthValue(bits)]));
  return pkg([EXT_OP_PREFIX, FIELD_OP], Buffer.concat([nameString(region), Buffer.from([flags]), ...list]));
}

/** A reference to a named object, as a term (a field, a device). */
export const ref = nameString;

/** Store(source, destination). */
export function store(source: Buffer, destination: Buffer): Buffer {
  return Buffer.concat([Buffer.from([STORE_OP]), source, destination]);
}

/** And(a, b): the result only, stored nowhere (a NullName target). */
export function and(a: Buffer, b: Buffer): Buffer {
  return Buffer.concat([Buffer.from([AND_OP]), a, b, Buffer.from([0])]);
}

/** If(predicate){terms}: taken when the predicate is a non-zero integer. */
export function ifThen(predicate: Buffer, ...terms: Buffer[]): Buffer {
  return pkg([IF_OP], Buffer.concat([predicate, ...terms]));
}

/** Notify(object, value). */
export function notify(object: string, value: number): Buffer {
  return Buffer.concat([Buffer.from([NOTIFY_OP]), nameString(object), integer(value)]);
}

/* ---- resource descriptors (6.4) ---- */

/** ResourceTemplate(){...}: the descriptors followed by an End Tag, as a Buffer. */
export function resourceTemplate(...descriptors: Buffer[]): Buffer {
  return buffer(Buffer.concat([...descriptors, Buffer.from([0x79, 0x00])]));
}

/** IO(Decode16, min, max, align, length). */
export function io16(min: number, max: number, align: number, length: number): Buffer {
  const b = Buffer.alloc(8);
  b[0] = 0x47;
  b[1] = 0x01; // 16-bit decode
  b.writeUInt16LE(min, 2);
  b.writeUInt16LE(max, 4);
  b[6] = align;
  b[7] = length;
  return b;
}

/** IRQNoFlags(){irqs}: ISA IRQs, edge triggered, active high. */
export function irqNoFlags(irqs: number[]): Buffer {
  let mask = 0;
  for (const i of irqs) {
    if (!Number.isInteger(i) || i < 0 || i > 15) throw new Error(`ISA IRQ ${i} out of range`);
    mask |= 1 << i;
  }
  const b = Buffer.alloc(3);
  b[0] = 0x22;
  b.writeUInt16LE(mask, 1);
  return b;
}

/** Memory32Fixed(ReadWrite|ReadOnly, base, length). */
export function memory32Fixed(base: number, length: number, readWrite = true): Buffer {
  const b = Buffer.alloc(12);
  b[0] = 0x86;
  b.writeUInt16LE(9, 1);
  b[3] = readWrite ? 1 : 0;
  b.writeUInt32LE(base, 4);
  b.writeUInt32LE(length, 8);
  return b;
}

/** Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared){gsis}: an Extended Interrupt descriptor. */
export function interrupt(gsis: number[], o: { edge: boolean; activeLow?: boolean; shared?: boolean }): Buffer {
  if (gsis.length < 1 || gsis.length > 255) throw new Error('AML Interrupt needs 1..255 GSIs');
  const b = Buffer.alloc(5 + 4 * gsis.length);
  b[0] = 0x89;
  b.writeUInt16LE(2 + 4 * gsis.length, 1);
  b[3] = 0x01 | (o.edge ? 0x02 : 0) | (o.activeLow ? 0x04 : 0) | (o.shared ? 0x08 : 0);
  b[4] = gsis.length;
  gsis.forEach((g, i) => b.writeUInt32LE(g, 5 + 4 * i));
  return b;
}
