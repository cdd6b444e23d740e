/**
 * Build the guest's ACPI tables and place them in [ACPI_START, ACPI_END):
 * RSDP (at ACPI_START, where a legacy scan also finds it) -> XSDT -> FADT
 * (hardware-reduced) -> DSDT, and the MADT. Returns the RSDP address, which
 * goes into hvm_start_info.rsdp_paddr or boot_params.acpi_rsdp_addr.
 */
import { GuestMemory } from '../../contracts/memory';
import { ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR, RSDP_ADDR } from '../../contracts/layout';
import { encodeDsdt, VirtioMmioDevice } from './dsdt';
import { encodeFadt, FadtOptions } from './fadt';
import { encodeMadt } from './madt';
import { encodeRsdp, RSDP_SIZE } from './rsdp';
import { encodeXsdt } from './xsdt';

export interface AcpiOptions {
  cpus: number;
  virtio: readonly VirtioMmioDevice[];
  /** Add the MADT IRQ0 -> GSI2 override (only if the PIT is routed to IOAPIC pin 2). */
  irq0ToGsi2?: boolean;
  reset?: FadtOptions['reset'];
  sleep?: FadtOptions['sleep'];
}

export interface AcpiTables {
  rsdp: Buffer;
  xsdt: Buffer;
  fadt: Buffer;
  madt: Buffer;
  dsdt: Buffer;
  /** Guest physical address of each table. */
  addr: { rsdp: number; xsdt: number; fadt: number; madt: number; dsdt: number };
}

const align16 = (n: number): number => Math.ceil(n / 16) * 16;

/** Encode every table at its final address, without touching guest memory. */
export function encodeAcpi(o: AcpiOptions): AcpiTables {
  const dsdt = encodeDsdt({ virtio: o.virtio });
  const madt = encodeMadt({ cpus: o.cpus, lapicAddr: LAPIC_ADDR, ioapicAddr: IOAPIC_ADDR, irq0ToGsi2: o.irq0ToGsi2 });
  const rsdpAddr = RSDP_ADDR;
  const xsdtAddr = align16(rsdpAddr + RSDP_SIZE);
  const xsdtSize = 36 + 8 * 2;
  const fadtAddr = align16(xsdtAddr + xsdtSize);
  const fadt = encodeFadt({ dsdt: 0, reset: o.reset, sleep: o.sleep }); // size only; re-encoded below
  const madtAddr = align16(fadtAddr + fadt.length);
  const dsdtAddr = align16(madtAddr + madt.length);
  if (dsdtAddr + dsdt.length > ACPI_END) {
    throw new Error(`ACPI tables need ${dsdtAddr + dsdt.length - ACPI_START} bytes; only ${ACPI_END - ACPI_START} fit at 0x${ACPI_START.toString(16)}`);
  }
  const xsdt = encodeXsdt([fadtAddr, madtAddr]);
  if (xsdt.length !== xsdtSize) throw new Error('ACPI: XSDT size changed');
  return {
    rsdp: encodeRsdp(xsdtAddr),
    xsdt,
    fadt: encodeFadt({ dsdt: dsdtAddr, reset: o.reset, sleep: o.sleep }),
    madt,
    dsdt,
    addr: { rsdp: rsdpAddr, xsdt: xsdtAddr, fadt: fadtAddr, madt: madtAddr, dsdt: dsdtAddr },
  };
}

/** Write the ACPI tables into guest memory; returns the RSDP address. */
export function buildAcpi(mem: GuestMemory, o: AcpiOptions): number {
  const t = encodeAcpi(o);
  mem.slice(ACPI_START, ACPI_END - ACPI_START).fill(0);
  for (const k of ['rsdp', 'xsdt', 'fadt', 'madt', 'dsdt'] as const) mem.slice(t.addr[k], t[k].length).set(t[k]);
  return t.addr.rsdp;
}
