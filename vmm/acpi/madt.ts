/**
 * The Multiple APIC Description Table (ACPI 6.x, 5.2.12): the local APIC
 * address, then one Processor Local APIC entry per vCPU (APIC ids 0..N-1,
 * enabled), one I/O APIC (id N, GSI base 0), a Local APIC NMI on LINT1 for all
 * processors, and optionally the ISA IRQ0 -> GSI2 override.
 *
 * IRQ0 -> GSI2 is only right when the VMM routes the PIT (GSI 0) to IOAPIC
 * pin 2, as QEMU does with KVM_SET_GSI_ROUTING. KVM's default routing sends
 * GSI n to IOAPIC pin n, so with default routing the override must be absent
 * (Firecracker ships none); hence it is opt-in.
 */
import { encodeSdt } from './sdt';
import { MAX_VCPUS } from '../../contracts/layout';

export const MADT_REVISION = 5;
export const MADT_LOCAL_APIC = 0;
export const MADT_IO_APIC = 1;
export const MADT_INT_SRC_OVERRIDE = 2;
export const MADT_LOCAL_APIC_NMI = 4;
export const MADT_PCAT_COMPAT = 1;

export interface MadtOptions {
  cpus: number;
  lapicAddr: number;
  ioapicAddr: number;
  /** Add the ISA IRQ0 -> GSI2 interrupt source override (see the file comment). */
  irq0ToGsi2?: boolean;
}

export function encodeMadt(o: MadtOptions): Buffer {
  if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > MAX_VCPUS) {
    throw new Error(`ACPI MADT: ${o.cpus} vCPUs is out of range (1..${MAX_VCPUS})`);
  }
  const parts: Buffer[] = [];
  const head = Buffer.alloc(8);
  head.writeUInt32LE(o.lapicAddr, 0);
  head.writeUInt32LE(MADT_PCAT_COMPAT, 4); // KVM's in-kernel irqchip includes the dual 8259
  parts.push(head);
  for (let i = 0; i < o.cpus; i++) {
    const e = Buffer.alloc(8);
    e.writeUInt8(MADT_LOCAL_APIC, 0);
    e.writeUInt8(8, 1);
    e.writeUInt8(i, 2);         // ACPI processor UID
    e.writeUInt8(i, 3);         // APIC id
    e.writeUInt32LE(1, 4);      // enabled
    parts.push(e);
  }
  const io = Buffer.alloc(12);
  io.writeUInt8(MADT_IO_APIC, 0);
  io.writeUInt8(12, 1);
  io.writeUInt8(o.cpus, 2);     // IOAPIC id follows the CPUs'
  io.writeUInt32LE(o.ioapicAddr, 4);
  io.writeUInt32LE(0, 8);       // GSI base
  parts.push(io);
  if (o.irq0ToGsi2) {
    const iso = Buffer.alloc(10);
    iso.writeUInt8(MADT_INT_SRC_OVERRIDE, 0);
    iso.writeUInt8(10, 1);
    iso.writeUInt8(0, 2);       // bus: ISA
    iso.writeUInt8(0, 3);       // source: IRQ0
    iso.writeUInt32LE(2, 4);    // GSI 2
    iso.writeUInt16LE(0, 8);    // conforms to bus (edge, active high)
    parts.push(iso);
  }
  const nmi = Buffer.alloc(6);
  nmi.writeUInt8(MADT_LOCAL_APIC_NMI, 0);
  nmi.writeUInt8(6, 1);
  nmi.writeUInt8(0xff, 2);      // all processors
  nmi.writeUInt16LE(0, 3);      // conforms to bus
  nmi.writeUInt8(1, 5);         // LINT1
  parts.push(nmi);
  return encodeSdt('APIC', MADT_REVISION, Buffer.concat(parts));
}
