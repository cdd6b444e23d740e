/**
 * Interrupt routes of the virtio devices' irqfds (the driver-domain's call eventfds).
 *
 * Each device's irqfd is registered on a GSI of its own, above the in-kernel
 * IOAPIC's 24 pins (irqfdGsi). That GSI starts routed to the IOAPIC pin the
 * guest was told about (virtio_mmio.device=...:PIN), which is right in every
 * state of the pin; but KVM cannot inject an IOAPIC interrupt from the
 * eventfd's wake-up, so it queues kernel-worker work for each interrupt: a
 * wake-up and a context switch on the driver-domain's CPU before the vCPU is
 * kicked (~15-20 µs here, measured with perf sched). Once the guest has
 * programmed the pin (unmasked, edge-triggered, fixed or lowest-priority
 * delivery), the GSI is routed instead to the MSI the IOAPIC itself would
 * send for it, which KVM injects straight from the eventfd write (as vhost
 * and virtio-pci MSI-X do).
 *
 * The IOAPIC is in the kernel, so its programming is not seen as it happens:
 * the vmm re-reads it every IRQ_ROUTE_SYNC_MS and routes a pin back to the
 * IOAPIC as soon as the guest masks it or changes it to what an MSI cannot
 * stand for. Within that window an interrupt may still arrive by the old
 * route; a guest tolerates that as it tolerates an edge that was already in
 * flight (Linux disables edge interrupts lazily for this reason).
 * TSVMM_IRQ_ROUTES=pin keeps every device on its IOAPIC pin.
 */
import { abi } from '../native/kvm';
import { Vm } from '../kvm/vm';
import { IrqRoute, ioapicRedirectionOffset } from '../kvm/structs';
import { DeviceEntry } from '../contracts/device-list';
import { processLogger } from '../contracts/log';

/** Pins of KVM's in-kernel IOAPIC; GSIs from here on are free for the devices' irqfds. */
const IOAPIC_PINS = 24;
/** How often the vmm re-reads the guest's IOAPIC programming (ms). */
const IRQ_ROUTE_SYNC_MS = 10;

type Msi = { addressLo: number; addressHi: number; data: number };

/** The GSI device `d`'s irqfd is registered on. */
export function irqfdGsi(d: DeviceEntry): number {
  return IOAPIC_PINS + d.index;
}

/** The MSI the IOAPIC sends for redirection entry `e`, or undefined where an MSI cannot stand in for the pin. */
export function msiFor(e: bigint): Msi | undefined {
  const vector = Number(e & 0xffn);
  const delivery = Number((e >> 8n) & 7n); // 0 fixed, 1 lowest priority; SMI/NMI/INIT/ExtINT stay on the pin
  const logical = Number((e >> 11n) & 1n);
  const level = (e >> 15n) & 1n;
  const masked = (e >> 16n) & 1n;
  const dest = Number((e >> 56n) & 0xffn);
  if (masked || level || delivery > 1 || vector < 16) return undefined;
  return { addressLo: (0xfee00000 | (dest << 12) | (logical << 2)) >>> 0, addressHi: 0, data: vector | (delivery << 8) };
}

/** KVM's default routes for `gsi` onto irqchip pin `pin`: the IOAPIC's, and below 16 the PIC's as well. */
function pinRoutes(gsi: number, pin: number): IrqRoute[] {
  const r: IrqRoute[] = [{ gsi, irqchip: abi('KVM_IRQCHIP_IOAPIC'), pin }];
  if (pin < 16) r.push({ gsi, irqchip: abi(pin < 8 ? 'KVM_IRQCHIP_PIC_MASTER' : 'KVM_IRQCHIP_PIC_SLAVE'), pin: pin % 8 });
  return r;
}

export class IrqRoutes {
  /** Per device, the MSI it is routed to (undefined: its IOAPIC pin). */
  private installed: (Msi | undefined)[];
  /** False with TSVMM_IRQ_ROUTES=pin, or once KVM refused a change: every device stays on its pin. */
  private syncing = process.env.TSVMM_IRQ_ROUTES !== 'pin';
  /** Route changes made (for tests and debugging). */
  changes = 0;
  private timer?: NodeJS.Timeout;

  /** Installs the routing table with every device on its IOAPIC pin (before any irqfd is registered). */
  constructor(private readonly vm: Vm, private readonly devices: DeviceEntry[]) {
    this.installed = devices.map(() => undefined);
    this.install();
  }

  /** Syncs now, then every IRQ_ROUTE_SYNC_MS while there is anything to route (devices, syncing on). */
  start(): void {
    this.sync();
    if (this.devices.length && this.syncing) this.timer = setInterval(() => this.sync(), IRQ_ROUTE_SYNC_MS);
  }

  /**
   * Re-reads the IOAPIC and re-routes the devices whose pin programming changed. If KVM refuses
   * (never seen), every device goes back to its pin, which is always right, and syncing stops.
   */
  sync(): void {
    if (!this.devices.length || !this.syncing) return;
    try {
      const chip = this.vm.getIrqchip(abi('KVM_IRQCHIP_IOAPIC'));
      const want = this.devices.map((d) => (d.gsi < IOAPIC_PINS ? msiFor(chip.readBigUInt64LE(ioapicRedirectionOffset(d.gsi))) : undefined));
      const same = (a: Msi | undefined, b: Msi | undefined) => a?.addressLo === b?.addressLo && a?.data === b?.data;
      if (want.every((m, i) => same(m, this.installed[i]))) return;
      this.installed = want;
      this.install();
      this.changes++;
    } catch (e) {
      this.syncing = false;
      clearInterval(this.timer);
      processLogger().warn(`interrupt routes: ${(e as Error).message}; devices stay on their IOAPIC pins`);
      this.installed = this.devices.map(() => undefined);
      try { this.install(); } catch { /* the table from before stays: its MSI routes were valid when set */ }
    }
  }

  private install(): void {
    const routes: IrqRoute[] = [];
    for (let pin = 0; pin < IOAPIC_PINS; pin++) routes.push(...pinRoutes(pin, pin));
    this.devices.forEach((d, i) => {
      const msi = this.installed[i];
      routes.push(...(msi ? [{ gsi: irqfdGsi(d), msi }] : pinRoutes(irqfdGsi(d), d.gsi)));
    });
    this.vm.setGsiRouting(routes);
  }
}
