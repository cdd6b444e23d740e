/**
 * The Differentiated System Description Table: a static AML definition block
 * with, in \_SB, the COM1 UART (PNP0501, I/O 0x3f8-0x3ff, IRQ 4) and one
 * "LNRO0005" device per virtio-mmio window, so that kernels without
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES still find their virtio devices.
 * The virtio interrupts are edge-triggered, active high, exclusive (they come
 * from irqfds), as in Firecracker and Cloud Hypervisor.
 */
import * as aml from './aml';
import { encodeSdt } from './sdt';

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

export function encodeDsdt(o: DsdtOptions): Buffer {
  const devices = o.virtio.map((d, i) => virtioAml(i, d));
  if (o.com1 !== false) devices.unshift(com1Aml());
  return encodeSdt('DSDT', DSDT_REVISION, aml.scope('\\_SB_', ...devices));
}
