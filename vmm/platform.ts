/**
 * The vmm's platform devices and the port/MMIO dispatch a vCPU exit goes
 * through: COM1, the power-off port, the ACPI sleep registers, the test port,
 * and the i8042 reset line. Virtio-mmio registers are dispatched here too once attached.
 */
import { COM1_BASE, Serial } from './serial';
import type { MmioRule, PortRule } from '../native/kvm';

/** `out` of a 32-bit status here powers the guest off with that exit status (same port as QEMU's isa-debug-exit). */
export const POWER_PORT = 0xf4;
/**
 * The FADT's hardware-reduced sleep control and status registers (one byte each, vmm/acpi/fadt.ts):
 * an ACPI OS powers off by writing SLP_EN with \_S5's sleep type to the control register (Linux's
 * `poweroff`). Without them Linux has no way to power off and halts with interrupts disabled, which
 * KVM's in-kernel LAPIC keeps in the kernel: the VM would never end.
 */
export const SLEEP_CONTROL_PORT = 0x504;
export const SLEEP_STATUS_PORT = 0x505;
/**
 * The SLP_TYP value of \_S5 (soft off, vmm/acpi/dsdt.ts). A hardware-reduced OS writes
 * (SLP_TYP << 2) | SLP_EN to the sleep control register (ACPI 6.x, 4.8.3.7).
 */
export const S5_SLEEP_TYPE = 5;
export const SLEEP_CONTROL_SLP_EN = 1 << 5;
export const SLEEP_CONTROL_SLP_TYP_SHIFT = 2;
export const SLEEP_CONTROL_SLP_TYP_MASK = 7 << SLEEP_CONTROL_SLP_TYP_SHIFT;
/** Writes here are counted and ignored: the guest's exit-latency workload uses it. */
export const TEST_PORT = 0x510;
/** i8042 command port: 0xfe is a CPU reset request. */
export const I8042_PORT = 0x64;

export type PlatformEvent = { kind: 'poweroff'; code: number } | { kind: 'reset' };

export interface MmioDevice {
  base: number;
  size: number;
  read(offset: number, len: number): number;
  write(offset: number, len: number, value: number): void;
  /** Its registers the native exit loop answers (virtio/virtio-mmio.ts fixedRegisters). */
  fixedRegisters?(address: (word: Uint32Array) => bigint): MmioRule[];
  /** Whether an unhandled write a killed vmm left (journal ack intent `intent`) was applied already. */
  writeApplied?(offset: number, intent: number): boolean;
}

export class Platform {
  readonly mmio: MmioDevice[] = [];
  unhandledPio = 0;
  unhandledMmio = 0;

  constructor(private readonly serial: Serial, private readonly onEvent: (e: PlatformEvent) => void) {}

  /**
   * The ports whose exits need no policy, for the native exit loop (native/kvm/fastexit.cc): the test
   * port's writes, the i8042 status read, the UART's LSR. Every other port, and every MMIO exit but
   * fixedMmio's, comes to pioRead/pioWrite/mmioRead/mmioWrite here.
   */
  fixedPorts(pageAddress: bigint): PortRule[] {
    return [
      { port: TEST_PORT, size: 1, write: true }, { port: TEST_PORT, size: 2, write: true }, { port: TEST_PORT, size: 4, write: true },
      { port: I8042_PORT, size: 1, write: false, value: 0 },
      this.serial.lsrRule(pageAddress),
    ];
  }

  /** The MMIO registers whose exits need no policy (every virtio device's InterruptStatus and InterruptACK). */
  fixedMmio(address: (word: Uint32Array) => bigint): MmioRule[] {
    return this.mmio.flatMap((d) => d.fixedRegisters?.(address) ?? []);
  }

  /** Whether the write a killed vmm left unhandled at `addr` was applied already (MmioDevice.writeApplied). */
  mmioWriteApplied(addr: number, intent: number): boolean {
    const d = this.find(addr);
    return d?.writeApplied?.(addr - d.base, intent) ?? false;
  }

  pioRead(port: number, size: number): number {
    if (port >= COM1_BASE && port < COM1_BASE + 8) return this.serial.read(port - COM1_BASE);
    if (port === I8042_PORT) return 0; // status: output buffer empty, input buffer empty
    if (port === SLEEP_CONTROL_PORT || port === SLEEP_STATUS_PORT) return 0; // awake, no wake event
    this.unhandledPio++;
    return size === 1 ? 0xff : size === 2 ? 0xffff : 0xffffffff;
  }

  pioWrite(port: number, size: number, value: number): void {
    if (port >= COM1_BASE && port < COM1_BASE + 8) { this.serial.write(port - COM1_BASE, value); return; }
    if (port === POWER_PORT) { this.onEvent({ kind: 'poweroff', code: value | 0 }); return; }
    if (port === SLEEP_CONTROL_PORT) {
      // Only soft-off is declared (\_S5); a write without SLP_EN, or of another type, changes nothing.
      if (value & SLEEP_CONTROL_SLP_EN && ((value & SLEEP_CONTROL_SLP_TYP_MASK) >> SLEEP_CONTROL_SLP_TYP_SHIFT) === S5_SLEEP_TYPE) this.onEvent({ kind: 'poweroff', code: 0 });
      return;
    }
    if (port === SLEEP_STATUS_PORT) return; // the OS clears WAK_STS before sleeping
    if (port === TEST_PORT) return;
    if (port === I8042_PORT && (value & 0xff) === 0xfe) { this.onEvent({ kind: 'reset' }); return; }
    this.unhandledPio++;
    void size;
  }

  mmioRead(addr: number, len: number): number {
    const d = this.find(addr);
    if (d) return d.read(addr - d.base, len);
    this.unhandledMmio++;
    return 0xffffffff;
  }

  mmioWrite(addr: number, len: number, value: number): void {
    const d = this.find(addr);
    if (d) { d.write(addr - d.base, len, value); return; }
    this.unhandledMmio++;
  }

  private find(addr: number): MmioDevice | undefined {
    for (const d of this.mmio) if (addr >= d.base && addr < d.base + d.size) return d;
    return undefined;
  }
}
