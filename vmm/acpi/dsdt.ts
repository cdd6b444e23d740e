/**
 * The Differentiated System Description Table: a static AML definition block
 * with, in \_SB, the COM1 UART (PNP0501, I/O 0x3f8-0x3ff, IRQ 4), the
 * Generic Event Device and the power button it notifies (gedAml), and one
 * "LNRO0005" device per virtio-mmio window, so that kernels without
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES still find their virtio devices.
 * The virtio interrupts are edge-triggered, active high, exclusive (they come
 * from irqfds), as in Firecracker and Cloud Hypervisor. At the root, \_S5:
 * the soft-off sleep type, which (with the FADT's hardware-reduced sleep
 * registers) lets an ACPI OS power the machine off.
 */
import * as aml from './aml';
import { encodeSdt } from './sdt';
import { ACPI_GED_ADDR, ACPI_GED_GSI, ACPI_GED_POWER_BUTTON, ACPI_GED_REG_SIZE } from '../../contracts/layout';
import { S5_SLEEP_TYPE } from '../platform';

/** DSDT revision 2: integers are 64-bit. */
export const DSDT_REVISION = 2;

export interface VirtioMmioDevice {
  base: number;
  /** Window size; 0x1000 unless told. */
  size?: number;
  gsi: number;
}

export interface DsdtOptions {
  virtio: readonly VirtioMmioDevice[];
  /** Describe COM1 (default true). */
  com1?: boolean;
  /** The Generic Event Device and the power button (default: at ACPI_GED_ADDR, GSI ACPI_GED_GSI); false: none. */
  ged?: GedOptions | false;
  /** Declare \_S5 (default true): the OS writes SLP_TYP S5_SLEEP_TYPE to the FADT's sleep control register. */
  s5?: boolean;
}

export interface GedOptions {
  /** Guest physical address of its 32-bit event register. */
  addr: number;
  gsi: number;
}

/** Device name for virtio window i: V000, V001, ... (hex). */
export function virtioDeviceName(i: number): string {
  if (i < 0 || i > 0xfff) throw new Error(`virtio-mmio device index ${i} out of range`);
  return 'V' + i.toString(16).toUpperCase().padStart(3, '0');
}

export function com1Aml(): Buffer {
  return aml.device('COM1',
    aml.nameObj('_HID', aml.eisaId('PNP0501')),
    aml.nameObj('_UID', aml.integer(0)),
    aml.nameObj('_DDN', aml.string('COM1')),
    aml.nameObj('_CRS', aml.resourceTemplate(aml.io16(0x3f8, 0x3f8, 0, 8), aml.irqNoFlags([4]))));
}

export function virtioAml(i: number, d: VirtioMmioDevice): Buffer {
  return aml.device(virtioDeviceName(i),
    aml.nameObj('_HID', aml.string('LNRO0005')),
    aml.nameObj('_UID', aml.integer(i)),
    aml.nameObj('_CRS', aml.resourceTemplate(
      aml.memory32Fixed(d.base, d.size ?? 0x1000),
      aml.interrupt([d.gsi], { edge: true }))));
}

/**
 * The hardware-reduced platform's event source (ACPI 6.x 5.6.9, Generic Event Device): GED_
 * (ACPI0013) has one edge-triggered interrupt and nothing else in its _CRS (Linux's
 * drivers/acpi/evged.c takes every _CRS entry for an interrupt and fails the probe on any other).
 * The vmm raises that interrupt with the pending events in a 32-bit register (vmm/ged.ts): reading
 * it gives them, writing 1s clears them. _EVT (the OS runs it from the interrupt) reads the
 * register, acknowledges what it read, and for the power-button bit notifies PWRB (PNP0C0C, a
 * control-method power button) with 0x80, which the OS's button driver takes as a press (Linux:
 * KEY_POWER and the button/power event, on which systemd-logind or acpid powers off).
 *
 *   Device (GED_) { Name (_HID, "ACPI0013")  Name (_UID, 0)
 *     Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } })
 *     OperationRegion (GDRG, SystemMemory, addr, 4)
 *     Field (GDRG, DWordAcc, NoLock, WriteAsZeros) { GDEV, 32 }
 *     Method (_EVT, 1, Serialized) { Local0 = GDEV  GDEV = Local0  If (Local0 & 1) { Notify (\_SB.PWRB, 0x80) } } }
 *   Device (PWRB) { Name (_HID, EisaId ("PNP0C0C"))  Name (_UID, 0) }
 */
export function gedAml(g: GedOptions): Buffer[] {
  const ged = aml.device('GED_',
    aml.nameObj('_HID', aml.string('ACPI0013')),
    aml.nameObj('_UID', aml.integer(0)),
    aml.nameObj('_CRS', aml.resourceTemplate(aml.interrupt([g.gsi], { edge: true }))),
    aml.opRegion('GDRG', aml.REGION_SYSTEM_MEMORY, g.addr, ACPI_GED_REG_SIZE),
    aml.field('GDRG', aml.FIELD_DWORD_ACC | aml.FIELD_WRITE_AS_ZEROS, [['GDEV', 8 * ACPI_GED_REG_SIZE]]),
    aml.method('_EVT', 1, true,
      aml.store(aml.ref('GDEV'), aml.LOCAL0),
      aml.store(aml.LOCAL0, aml.ref('GDEV')),
      aml.ifThen(aml.and(aml.LOCAL0, aml.integer(ACPI_GED_POWER_BUTTON)), aml.notify('\\_SB_.PWRB', 0x80))));
  const button = aml.device('PWRB',
    aml.nameObj('_HID', aml.eisaId('PNP0C0C')),
    aml.nameObj('_UID', aml.integer(0)));
  return [ged, button];
}

export function encodeDsdt(o: DsdtOptions): Buffer {
  const devices = o.virtio.map((d, i) => virtioAml(i, d));
  if (o.ged !== false) devices.unshift(...gedAml(o.ged ?? { addr: ACPI_GED_ADDR, gsi: ACPI_GED_GSI }));
  if (o.com1 !== false) devices.unshift(com1Aml());
  const s5 = o.s5 === false ? [] : [aml.nameObj('\\_S5_', aml.packageOf([S5_SLEEP_TYPE, S5_SLEEP_TYPE, 0, 0]))];
  return encodeSdt('DSDT', DSDT_REVISION, Buffer.concat([...s5, aml.scope('\\_SB_', ...devices)]));
}
