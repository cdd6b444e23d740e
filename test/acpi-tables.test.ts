/*
 * ACPI table tests. The disassembly checks need Debian's acpica-tools:
 *   apt-get install -y acpica-tools
 * Without `iasl` on PATH those checks are skipped (the byte-level checks still run).
 */
import * as assert from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { buildAcpi, encodeAcpi, AcpiTables } from '../vmm/acpi';
import * as aml from '../vmm/acpi/aml';
import { checksum } from '../vmm/acpi/sdt';
import { MiB, virtioMmioWindow, ACPI_START, ACPI_END, ACPI_GED_ADDR, ACPI_GED_GSI, ACPI_GED_SIZE, IOAPIC_ADDR, LAPIC_ADDR, UNBACKED_TEST_ADDR, VIRTIO_MMIO_MAX, VIRTIO_MMIO_SIZE } from '../contracts/layout';
import { makeMemory } from './boot-fixtures';
import { Platform, PlatformEvent, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_CONTROL_SLP_EN, SLEEP_CONTROL_SLP_TYP_SHIFT, SLEEP_STATUS_PORT } from '../vmm/platform';
import { Serial } from '../vmm/serial';
import { PLATFORM_PAGE_SIZE, PlatformPage } from '../contracts/platform-page';
import { requireTool } from './helpers/tsvmm';

const sum8 = (b: Uint8Array): number => b.reduce((s, x) => (s + x) & 0xff, 0);

/** Disassemble one table with `iasl -d`; returns the .dsl text and iasl's output. */
function disassemble(name: string, table: Buffer): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-acpi-'));
  try {
    const f = path.join(dir, `${name}.dat`);
    fs.writeFileSync(f, table);
    execFileSync('iasl', ['-d', f], { cwd: dir, stdio: 'pipe' });
    return fs.readFileSync(path.join(dir, `${name}.dsl`), 'utf8');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('acpi/tables', () => {
  const virtio = [0, 1, 2].map(virtioMmioWindow);
  const tables: AcpiTables = encodeAcpi({ cpus: 4, virtio });

  it('encodes AML primitives as the spec says', () => {
    assert.deepStrictEqual([...aml.pkgLength(0x3e)], [0x3f]);
    assert.deepStrictEqual([...aml.pkgLength(0x3f)], [0x41, 0x04]); // 0x41 total: 2-byte form
    assert.deepStrictEqual([...aml.pkgLength(0x1000)], [0x83, 0x00, 0x01]); // 0x1003 total needs 3 bytes
    assert.deepStrictEqual([...aml.eisaId('PNP0501')], [0x0c, 0x41, 0xd0, 0x05, 0x01]);
    assert.deepStrictEqual([...aml.integer(0)], [0]);
    assert.deepStrictEqual([...aml.integer(1)], [1]);
    assert.deepStrictEqual([...aml.integer(0x1234)], [0x0b, 0x34, 0x12]);
    assert.deepStrictEqual([...aml.integer(0xd0000000)], [0x0c, 0, 0, 0, 0xd0]);
    assert.deepStrictEqual([...aml.nameString('\\_SB_.COM1')], [0x5c, 0x2e, ...Buffer.from('_SB_COM1')]);
    assert.deepStrictEqual([...aml.nameString('\\_SB')], [0x5c, ...Buffer.from('_SB_')]);
    assert.throws(() => aml.eisaId('pnp0501'), /invalid EISA id/);
    assert.deepStrictEqual([...aml.packageOf([5, 5, 0, 0])], [0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);
  });

  it('lets the OS power off: \\_S5 in the DSDT, the sleep control register powers off on SLP_EN with its type', () => {
    const events: PlatformEvent[] = [];
    const platform = new Platform(new Serial(new PlatformPage(new ArrayBuffer(PLATFORM_PAGE_SIZE)), () => undefined, () => undefined), (e) => events.push(e));
    const slp = (typ: number, en: boolean): number => (typ << SLEEP_CONTROL_SLP_TYP_SHIFT) | (en ? SLEEP_CONTROL_SLP_EN : 0);
    platform.pioWrite(SLEEP_STATUS_PORT, 1, 0x80); // Linux clears WAK_STS first
    platform.pioWrite(SLEEP_CONTROL_PORT, 1, slp(S5_SLEEP_TYPE, false));
    platform.pioWrite(SLEEP_CONTROL_PORT, 1, slp(3, true)); // S3 is not declared: nothing happens
    assert.deepStrictEqual(events, []);
    assert.strictEqual(platform.pioRead(SLEEP_STATUS_PORT, 1), 0);
    platform.pioWrite(SLEEP_CONTROL_PORT, 1, slp(S5_SLEEP_TYPE, true));
    assert.deepStrictEqual(events, [{ kind: 'poweroff', code: 0 }]);
    assert.ok(tables.dsdt.includes(Buffer.concat([Buffer.from([0x08, 0x5c]), Buffer.from('_S5_'), aml.packageOf([S5_SLEEP_TYPE, S5_SLEEP_TYPE, 0, 0])])));
  });

  it('encodes the terms of a method (OperationRegion, Field, Method, Store, And, If, Notify)', () => {
    assert.deepStrictEqual([...aml.opRegion('GDRG', aml.REGION_SYSTEM_MEMORY, 0xd1000000, 4)], [0x5b, 0x80, ...Buffer.from('GDRG'), 0, 0x0c, 0, 0, 0, 0xd1, 0x0a, 4]);
    // FieldFlags 0x43: DWordAcc, NoLock, WriteAsZeros; the field's bit count is a PkgLength value (32 -> 0x20).
    assert.deepStrictEqual([...aml.field('GDRG', aml.FIELD_DWORD_ACC | aml.FIELD_WRITE_AS_ZEROS, [['GDEV', 32]])], [0x5b, 0x81, 0x0b, ...Buffer.from('GDRG'), 0x43, ...Buffer.from('GDEV'), 0x20]);
    assert.deepStrictEqual([...aml.method('_EVT', 1, true)], [0x14, 0x06, ...Buffer.from('_EVT'), 0x09]);
    assert.deepStrictEqual([...aml.store(aml.ref('GDEV'), aml.LOCAL0)], [0x70, ...Buffer.from('GDEV'), 0x60]);
    assert.deepStrictEqual([...aml.ifThen(aml.and(aml.LOCAL0, aml.integer(1)), aml.notify('PWRB', 0x80))], [0xa0, 0x0c, 0x7b, 0x60, 0x01, 0x00, 0x86, ...Buffer.from('PWRB'), 0x0a, 0x80]);
    assert.throws(() => aml.method('M', 8, false), /8 arguments/);
  });

  it('places the GED clear of every other MMIO device', () => {
    const used: [string, number, number][] = [
      ['test address', UNBACKED_TEST_ADDR, 0x1000],
      ['virtio-mmio', virtioMmioWindow(0).base, VIRTIO_MMIO_MAX * VIRTIO_MMIO_SIZE],
      ['IOAPIC', IOAPIC_ADDR, 0x1000], ['LAPIC', LAPIC_ADDR, 0x1000],
    ];
    for (const [what, base, size] of used) assert.ok(ACPI_GED_ADDR + ACPI_GED_SIZE <= base || ACPI_GED_ADDR >= base + size, `the GED overlaps the ${what}`);
    // Its GSI: an IOAPIC pin no virtio window, COM1 (4) or the PIT (0, 2) uses.
    assert.ok(![0, 2, 4].includes(ACPI_GED_GSI) && ACPI_GED_GSI < virtioMmioWindow(0).gsi);
  });

  it('gets every checksum right', () => {
    for (const k of ['xsdt', 'fadt', 'madt', 'dsdt'] as const) {
      assert.strictEqual(sum8(tables[k]), 0, `${k} checksum`);
      assert.strictEqual(tables[k].readUInt32LE(4), tables[k].length, `${k} length`);
    }
    assert.strictEqual(sum8(tables.rsdp.subarray(0, 20)), 0, 'RSDP v1 checksum');
    assert.strictEqual(sum8(tables.rsdp), 0, 'RSDP extended checksum');
    assert.strictEqual(checksum(Buffer.from([1, 2, 3])), 0xfa);
  });

  it('links RSDP -> XSDT -> FADT, MADT and FADT -> DSDT', () => {
    const r = tables.rsdp;
    assert.strictEqual(r.toString('ascii', 0, 8), 'RSD PTR ');
    assert.strictEqual(r[15], 2, 'revision 2');
    assert.strictEqual(r.readUInt32LE(20), 36, 'length');
    assert.strictEqual(Number(r.readBigUInt64LE(24)), tables.addr.xsdt);
    const x = tables.xsdt;
    assert.deepStrictEqual([Number(x.readBigUInt64LE(36)), Number(x.readBigUInt64LE(44))], [tables.addr.fadt, tables.addr.madt]);
    assert.strictEqual(tables.fadt.toString('ascii', 0, 4), 'FACP');
    assert.strictEqual(Number(tables.fadt.readBigUInt64LE(140)), tables.addr.dsdt);
    assert.strictEqual(tables.fadt.readUInt32LE(112) & (1 << 20), 1 << 20, 'HW_REDUCED_ACPI');
    assert.strictEqual(tables.addr.rsdp, 0xe0000);
  });

  it('writes the tables into guest memory at their addresses', () => {
    const mem = makeMemory(32 * MiB);
    mem.slice(ACPI_START, ACPI_END - ACPI_START).fill(0xcc);
    const rsdp = buildAcpi(mem, { cpus: 2, virtio });
    assert.strictEqual(rsdp, 0xe0000);
    const t = encodeAcpi({ cpus: 2, virtio });
    for (const k of ['rsdp', 'xsdt', 'fadt', 'madt', 'dsdt'] as const) {
      assert.deepStrictEqual(Buffer.from(mem.slice(t.addr[k], t[k].length)), t[k], k);
    }
    // The guest finds the MADT the way guest/acpi.c does: RSDP -> XSDT -> "APIC".
    const xsdt = Number(mem.view(rsdp + 24, 8).getBigUint64(0, true));
    const n = (mem.view(xsdt + 4, 4).getUint32(0, true) - 36) / 8;
    const sigs = [...Array(n).keys()].map((i) => Buffer.from(mem.slice(Number(mem.view(xsdt + 36 + 8 * i, 8).getBigUint64(0, true)), 4)).toString());
    assert.deepStrictEqual(sigs, ['FACP', 'APIC']);
    assert.strictEqual(mem.slice(ACPI_END - 1, 1)[0], 0, 'stale bytes cleared');
  });

  it('rejects impossible configurations', () => {
    assert.throws(() => encodeAcpi({ cpus: 0, virtio: [] }), /0 vCPUs is out of range/);
    assert.throws(() => encodeAcpi({ cpus: 255, virtio: [] }), /255 vCPUs is out of range \(1\.\.254\)/);
    const many = [...Array(3000).keys()].map((i) => ({ base: 0xd0000000 + i * 0x1000, gsi: 5 }));
    assert.throws(() => encodeAcpi({ cpus: 1, virtio: many }), /ACPI tables need \d+ bytes; only 131072 fit/);
  });

  describe('iasl -d', function () {
    before(function () {
      requireTool(this, 'iasl', 'acpica-tools');
    });

    it('disassembles the DSDT with COM1 and one LNRO0005 per virtio window', () => {
      const dsl = disassemble('dsdt', tables.dsdt);
      assert.ok(!/Incorrect checksum/.test(dsl), 'checksum');
      assert.match(dsl, /DefinitionBlock \("", "DSDT", 2, "TSVMM ",/);
      assert.match(dsl, /Scope \(\\_SB\)/);
      assert.match(dsl, /Device \(COM1\)\s*\{\s*Name \(_HID, EisaId \("PNP0501"\)/);
      assert.match(dsl, /IO \(Decode16,\s*0x03F8,\s*\/\/ Range Minimum\s*0x03F8,\s*\/\/ Range Maximum\s*0x00,\s*\/\/ Alignment\s*0x08,/);
      assert.match(dsl, /IRQNoFlags \(\)\s*\{4\}/);
      assert.match(dsl, /Name \(\\_S5, Package \(0x04\)[^{]*\{\s*0x05,\s*0x05,\s*Zero,\s*Zero\s*\}\)/);
      const devs = [...dsl.matchAll(/Device \((V\d{3})\)\s*\{\s*Name \(_HID, "LNRO0005"\)[^]*?Name \(_UID, (\w+)\)[^]*?Memory32Fixed \(ReadWrite,\s*0x([0-9A-F]+),\s*\/\/ Address Base\s*0x([0-9A-F]+),[^]*?Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x([0-9A-F]+),/g)];
      assert.deepStrictEqual(devs.map((m) => [m[1], m[2], parseInt(m[3], 16), parseInt(m[4], 16), parseInt(m[5], 16)]), [
        ['V000', 'Zero', 0xd0000000, 0x1000, 5],
        ['V001', 'One', 0xd0001000, 0x1000, 6],
        ['V002', '0x02', 0xd0002000, 0x1000, 7],
      ]);
    });

    it('disassembles the Generic Event Device and the power button it notifies, and iasl compiles that back cleanly', () => {
      const dsl = disassemble('dsdt', tables.dsdt);
      const ged = /Device \(GED\)\s*\{([^]*?)\n {8}\}/.exec(dsl)?.[1] ?? '';
      assert.match(ged, /Name \(_HID, "ACPI0013" \/\* Generic Event Device \*\/\)/);
      // Linux's evged.c takes every _CRS entry for an interrupt (and fails on anything else).
      const crs = /Name \(_CRS, ResourceTemplate \(\)[^{]*\{([^]*?)\n {12}\}\)/.exec(ged)?.[1] ?? '';
      assert.match(crs, /^\s*Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000003,\s*\}\s*$/);
      assert.equal(ACPI_GED_GSI, 3);
      assert.match(ged, /OperationRegion \(GDRG, SystemMemory, 0xD1000000, 0x04\)/);
      assert.match(ged, /Field \(GDRG, DWordAcc, NoLock, WriteAsZeros\)\s*\{\s*GDEV,\s*32\s*\}/);
      assert.match(ged, /Method \(_EVT, 1, Serialized\)[^{]*\{\s*Local0 = GDEV [^\n]*\s*GDEV = Local0\s*If \(\(Local0 & One\)\)\s*\{\s*Notify \(\\_SB\.PWRB, 0x80\)/);
      assert.match(dsl, /Device \(PWRB\)\s*\{\s*Name \(_HID, EisaId \("PNP0C0C"\) \/\* Power Button Device \*\/\)/);
      // The disassembly compiles again with no error, warning or remark: the AML is well-formed.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-acpi-'));
      try {
        fs.writeFileSync(path.join(dir, 'dsdt.dsl'), dsl);
        const out = execFileSync('iasl', ['dsdt.dsl'], { cwd: dir, stdio: 'pipe', encoding: 'utf8' });
        assert.match(out, /Compilation successful\. 0 Errors, 0 Warnings, 0 Remarks/, out);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('disassembles a DSDT with every virtio window (multi-byte package lengths)', () => {
      const all = [...Array(VIRTIO_MMIO_MAX).keys()].map(virtioMmioWindow);
      const t = encodeAcpi({ cpus: 1, virtio: all });
      assert.ok(t.dsdt.length > 0x100, "the _SB scope needs a 2-byte PkgLength");
      const dsl = disassemble('dsdt', t.dsdt);
      assert.ok(!/Incorrect checksum/.test(dsl), 'checksum');
      const names = [...dsl.matchAll(/Device \((V[0-9A-F]{3})\)/g)].map((m) => m[1]);
      assert.strictEqual(names.length, VIRTIO_MMIO_MAX);
      assert.strictEqual(names[VIRTIO_MMIO_MAX - 1], 'V012');
      assert.match(dsl, /0xD0012000,\s*\/\/ Address Base/);
      assert.match(dsl, /\{\s*0x00000017,\s*\}/, 'last GSI 23');
    });

    it('disassembles the MADT with one enabled local APIC per vCPU and the IOAPIC', () => {
      const dsl = disassemble('madt', tables.madt);
      assert.ok(!/Incorrect checksum/.test(dsl), 'checksum');
      assert.match(dsl, /Local Apic Address : FEE00000/);
      const lapics = [...dsl.matchAll(/\[Processor Local APIC\][^[]*\[[^\]]*\]\s*Length : 08[^[]*\[[^\]]*\]\s*Processor ID : (\w+)[^[]*\[[^\]]*\]\s*Local Apic ID : (\w+)[^[]*\[[^\]]*\]\s*Flags \(decoded below\) : 00000001\s*Processor Enabled : 1/g)];
      assert.deepStrictEqual(lapics.map((m) => [m[1], m[2]]), [['00', '00'], ['01', '01'], ['02', '02'], ['03', '03']]);
      assert.match(dsl, /\[I\/O APIC\][^]*?I\/O Apic ID : 04[^]*?Address : FEC00000[^]*?Interrupt : 00000000/);
      assert.ok(!/Interrupt Source Override/.test(dsl), 'no IRQ0 override unless asked');
      const withIso = disassemble('madt', encodeAcpi({ cpus: 1, virtio, irq0ToGsi2: true }).madt);
      assert.match(withIso, /\[Interrupt Source Override\][^]*?Source : 00[^]*?Interrupt : 00000002/);
    });

    it('disassembles a hardware-reduced FADT that points at the DSDT', () => {
      const dsl = disassemble('fadt', tables.fadt);
      assert.ok(!/Incorrect checksum/.test(dsl), 'checksum');
      assert.match(dsl, /Revision : 06/);
      assert.match(dsl, /Hardware Reduced \(V5\) : 1/);
      const dsdtHex = tables.addr.dsdt.toString(16).toUpperCase();
      assert.match(dsl, new RegExp(`\\[028h 0040   4\\]\\s+DSDT Address : 000${dsdtHex}`));
      assert.match(dsl, new RegExp(`\\[08Ch 0140   8\\]\\s+DSDT Address : 00000000000${dsdtHex}`));
      assert.match(dsl, /VGA Not Present \(V4\) : 1/);
      const withReset = disassemble('fadt', encodeAcpi({ cpus: 1, virtio, reset: { port: 0x604, value: 1 } }).fadt);
      assert.match(withReset, /Reset Register Supported \(V2\) : 1/);
      assert.match(withReset, /Reset Register : [^]*?Space ID : 01 \[SystemIO\][^]*?Address : 0000000000000604/);
      const withSleep = disassemble('fadt', encodeAcpi({ cpus: 1, virtio, sleep: { controlPort: SLEEP_CONTROL_PORT, statusPort: SLEEP_STATUS_PORT } }).fadt);
      assert.match(withSleep, /Sleep Control Register : [^]*?Space ID : 01 \[SystemIO\][^]*?Address : 0000000000000504/);
      assert.match(withSleep, /Sleep Status Register : [^]*?Space ID : 01 \[SystemIO\][^]*?Address : 0000000000000505/);
    });

    it('disassembles the XSDT listing FADT and MADT', () => {
      const dsl = disassemble('xsdt', tables.xsdt);
      assert.ok(!/Incorrect checksum/.test(dsl), 'checksum');
      const hex = (n: number): string => n.toString(16).toUpperCase().padStart(16, '0');
      assert.match(dsl, new RegExp(`ACPI Table Address   0 : ${hex(tables.addr.fadt)}`));
      assert.match(dsl, new RegExp(`ACPI Table Address   1 : ${hex(tables.addr.madt)}`));
    });
  });
});
