/**
 * A device test bench without KVM: guest RAM over a plain ArrayBuffer, a
 * state page over a SharedArrayBuffer, one device slot with features
 * negotiated and DRIVER_OK set, and split-ring drivers for its queues.
 * Used by the devices-* tests; also handy for fuzzing the device models.
 */

import { GuestMemory, hostRegion } from '../contracts/memory';
import { StatePage, DeviceSlot, DeviceSpec, StatePageGeometry, DEFAULT_GEOMETRY } from '../contracts/state-page';
import { SplitRingDriver, layoutRing } from './virtqueue-driver';
import { Status } from '../contracts/virtio-mmio-layout';

export interface TestBed {
  ram: Uint8Array;
  mem: GuestMemory;
  pageBytes: Uint8Array;
  page: StatePage;
  slot: DeviceSlot;
  /** One driver per queue, rings laid out from RING_BASE. */
  drivers: SplitRingDriver[];
  /** First guest address free for data buffers. */
  dataBase: number;
}

export const RAM_BASE = 0;
export const RING_BASE = 0x1000;

/** Build the bench. `acked` defaults to everything the device offers. */
export function makeTestBed(spec: DeviceSpec, opts: { ramSize?: number; queueSize?: number; acked?: bigint; geometry?: StatePageGeometry } = {}): TestBed {
  const ramSize = opts.ramSize ?? 4 * 1024 * 1024;
  const ram = new Uint8Array(new ArrayBuffer(ramSize));
  const mem = new GuestMemory([hostRegion(RAM_BASE, ram)]);
  const g = opts.geometry ?? DEFAULT_GEOMETRY;
  const pageBytes = new Uint8Array(new SharedArrayBuffer(StatePage.layoutSize(g)));
  const page = StatePage.format(pageBytes, g);
  const slot = page.device(page.addDevice(spec));
  slot.driverFeatures = opts.acked ?? spec.deviceFeatures;
  slot.status = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK;
  const size = opts.queueSize ?? 16;
  const drivers: SplitRingDriver[] = [];
  let base = RING_BASE;
  for (let q = 0; q < spec.numQueues; q++) {
    const r = layoutRing(base, size);
    const d = new SplitRingDriver(mem, r);
    d.configure(slot, q);
    drivers.push(d);
    base = Math.ceil(r.end / 4096) * 4096;
  }
  return { ram, mem, pageBytes, page, slot, drivers, dataBase: Math.ceil(base / 65536) * 65536 + 65536 };
}
