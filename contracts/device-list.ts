/**
 * The virtio devices of a VM, in the one order every component agrees on:
 * disks first, then NICs. Device i sits in virtio-mmio window i.
 */
import { VmConfig } from '../proto';
import { virtioMmioWindow, VIRTIO_MMIO_SIZE, VIRTIO_QUEUES } from './layout';

export type DeviceKind = 'blk' | 'net';

export interface DeviceEntry {
  index: number;
  kind: DeviceKind;
  queues: number;
  base: number;
  gsi: number;
}

export function deviceList(cfg: VmConfig): DeviceEntry[] {
  const kinds: DeviceKind[] = [...cfg.disks.map(() => 'blk' as const), ...cfg.nets.map(() => 'net' as const)];
  return kinds.map((kind, index) => ({ index, kind, queues: VIRTIO_QUEUES[kind], ...virtioMmioWindow(index) }));
}

/** The Linux command-line announcement of each device: virtio_mmio.device=4K@ADDR:GSI. */
export function virtioCmdline(devices: DeviceEntry[]): string {
  return devices.map((d) => `virtio_mmio.device=${VIRTIO_MMIO_SIZE / 1024}K@0x${d.base.toString(16)}:${d.gsi}`).join(' ');
}
