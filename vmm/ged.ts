/**
 * The ACPI Generic Event Device (vmm/acpi/dsdt.ts gedAml describes it to the guest): one 32-bit
 * event register at ACPI_GED_ADDR and one edge-triggered interrupt on ACPI_GED_GSI.
 *
 * Its state lives in the platform page (contracts/platform-page.ts), not here: the supervisor sets
 * an event there (tsvmm stop: the power button), and a vmm that replaces a dead one finds it.
 *   - GedRegister: the register, emulated on the vCPU threads. Reads give the pending events;
 *     writing 1s clears those (write-1-to-clear, so a read that a dying vmm never completed is
 *     simply read again, and a write is replayed like any other: vmm/restore.ts).
 *   - GedInterrupt: the main thread raises the interrupt when the supervisor asks (the page's raise
 *     counter moves), when this vmm starts running a guest with events pending (it replaces one
 *     that died before the guest took them), and again every GED_REPEAT_MS while an event stays
 *     unacknowledged: an edge the guest missed (its handler was not set up yet) is not lost.
 */
import { ACPI_GED_ADDR, ACPI_GED_GSI, ACPI_GED_SIZE } from '../contracts/layout';
import { PlatformPage } from '../contracts/platform-page';
import type { MmioDevice } from './platform';

/** How often an event the guest has not acknowledged raises the interrupt again. */
export const GED_REPEAT_MS = 500;

export class GedRegister implements MmioDevice {
  readonly base = ACPI_GED_ADDR;
  readonly size = ACPI_GED_SIZE;

  constructor(private readonly page: PlatformPage) {}

  read(offset: number): number {
    return offset === 0 ? this.page.gedEvents() : 0;
  }

  write(offset: number, _len: number, value: number): void {
    if (offset === 0) this.page.gedAck(value);
  }
}

export class GedInterrupt {
  private seen: number;
  private lastRaise = 0;

  /** `pulse` raises the GSI's edge (KVM_IRQ_LINE 1 then 0). */
  constructor(private readonly page: PlatformPage, private readonly pulse: (gsi: number) => void) {
    this.seen = page.gedRaises();
  }

  /** The guest runs on this vmm: events it has not taken yet are raised again. */
  start(): void {
    if (this.page.gedEvents()) this.raise();
  }

  /** Called periodically (the main thread's input poll): raises on a new request, or a pending event. */
  poll(now = performance.now()): void {
    const r = this.page.gedRaises();
    if (r !== this.seen) { this.seen = r; this.raise(now); return; }
    if (this.page.gedEvents() && now - this.lastRaise >= GED_REPEAT_MS) this.raise(now);
  }

  private raise(now = performance.now()): void {
    this.lastRaise = now;
    this.pulse(ACPI_GED_GSI);
  }
}
