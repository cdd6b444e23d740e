import * as assert from 'assert';
import {
  ramRegions, e820, parseSize, checkMemSize, lowRamEnd, virtioMmioWindow, MiB, GiB,
  E820_RAM, E820_RESERVED, PVH_START_INFO_ADDR, CMDLINE_ADDR, ACPI_START, ACPI_END, RSDP_ADDR,
  ZERO_PAGE_ADDR, BOOT_GDT_ADDR, BOOT_IDT_ADDR, EBDA_START, MMIO_HOLE_START, IOAPIC_ADDR, LAPIC_ADDR,
} from '../contracts/layout';

describe('boot/layout', () => {
  it('puts small RAM in one slot at 0', () => {
    assert.deepStrictEqual(ramRegions(256 * MiB), [{ gpa: 0, size: 256 * MiB }]);
  });

  it('puts exactly 3 GiB in one slot', () => {
    assert.deepStrictEqual(ramRegions(3 * GiB), [{ gpa: 0, size: 3 * GiB }]);
  });

  it('splits RAM above 3 GiB to continue at 4 GiB', () => {
    assert.deepStrictEqual(ramRegions(8 * GiB), [{ gpa: 0, size: 3 * GiB }, { gpa: 4 * GiB, size: 5 * GiB }]);
    assert.strictEqual(lowRamEnd(8 * GiB), 3 * GiB);
  });

  it('builds the e820 map with the legacy hole reserved', () => {
    assert.deepStrictEqual(e820(512 * MiB), [
      { addr: 0, size: 0x9fc00, type: E820_RAM },
      { addr: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820_RESERVED },
      { addr: 0x100000, size: 512 * MiB - 0x100000, type: E820_RAM },
    ]);
    const big = e820(6 * GiB);
    assert.strictEqual(big.length, 4);
    assert.deepStrictEqual(big[2], { addr: 0x100000, size: 3 * GiB - 0x100000, type: E820_RAM });
    assert.deepStrictEqual(big[3], { addr: 4 * GiB, size: 3 * GiB, type: E820_RAM });
    // Total RAM reported equals memory minus the reserved legacy area.
    const ram = big.filter((e) => e.type === E820_RAM).reduce((n, e) => n + e.size, 0);
    assert.strictEqual(ram, 6 * GiB - (0x100000 - 0x9fc00));
  });

  it('parses sizes with suffixes', () => {
    assert.strictEqual(parseSize('256M'), 256 * MiB);
    assert.strictEqual(parseSize('1G'), GiB);
    assert.strictEqual(parseSize('1g'), GiB);
    assert.strictEqual(parseSize('2GiB'), 2 * GiB);
    assert.strictEqual(parseSize('1.5G'), 1.5 * GiB);
    assert.strictEqual(parseSize('16384K'), 16 * MiB);
    assert.strictEqual(parseSize(String(32 * MiB)), 32 * MiB);
    assert.strictEqual(parseSize(64 * MiB), 64 * MiB);
  });

  it('rejects bad sizes with clear errors', () => {
    assert.throws(() => parseSize('lots'), /invalid memory size "lots".*256M/);
    assert.throws(() => parseSize('1X'), /invalid memory size/);
    assert.throws(() => parseSize('8M'), /too small.*16M/);
    assert.throws(() => parseSize('2T'), /too large.*1T/);
    assert.throws(() => parseSize(16 * MiB + 100), /not a multiple of 4K/);
    assert.throws(() => parseSize(NaN), /not a whole number/);
    assert.throws(() => checkMemSize(-4096), /too small/);
    assert.throws(() => ramRegions(1000), /too small/);
  });

  it('keeps the fixed boot structures apart and in the right places', () => {
    assert.strictEqual(PVH_START_INFO_ADDR, 0x6000);
    assert.strictEqual(CMDLINE_ADDR, 0x7000);
    assert.strictEqual(RSDP_ADDR, 0xe0000);
    assert.ok(BOOT_GDT_ADDR + 40 <= BOOT_IDT_ADDR);
    assert.ok(BOOT_IDT_ADDR + 8 <= ZERO_PAGE_ADDR);
    assert.ok(ZERO_PAGE_ADDR + 4096 <= PVH_START_INFO_ADDR);
    assert.ok(CMDLINE_ADDR + 4096 <= EBDA_START);
    assert.ok(ACPI_START >= EBDA_START && ACPI_END === 0x100000);
    assert.ok(IOAPIC_ADDR > MMIO_HOLE_START && LAPIC_ADDR > IOAPIC_ADDR);
  });

  it('numbers virtio-mmio windows and GSIs', () => {
    assert.deepStrictEqual(virtioMmioWindow(0), { base: 0xd0000000, gsi: 5 });
    assert.deepStrictEqual(virtioMmioWindow(3), { base: 0xd0003000, gsi: 8 });
    assert.throws(() => virtioMmioWindow(-1), /out of range/);
    assert.throws(() => virtioMmioWindow(19), /out of range/);
  });
});
