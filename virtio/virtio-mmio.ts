/**
 * The virtio-mmio (version 2) transport registers, as the vmm emulates them
 * on guest MMIO exits. There is no state here: every register is a field of
 * the device's slot in the shared state page, so a restarted vmm (or the
 * driver-domain) sees exactly what the guest wrote.
 *
 * QueueNotify never reaches this code in normal operation: it is a KVM
 * ioeventfd that goes straight to the driver-domain.
 */
import { DeviceSlot, ISR_WORD } from '../contracts/state-page';
import type { MmioRule } from '../native/kvm';
import { MmioReg, Status, VIRTIO_MMIO_MAGIC, VIRTIO_MMIO_VERSION } from '../contracts/virtio-mmio-layout';
import { VIRTIO_MMIO_SIZE } from '../contracts/layout';

type QueueField = 'num' | 'ready' | 'descLo' | 'descHi' | 'driverLo' | 'driverHi' | 'deviceLo' | 'deviceHi';
const QUEUE_REG: Record<number, QueueField> = {
  [MmioReg.QueueNum]: 'num', [MmioReg.QueueReady]: 'ready',
  [MmioReg.QueueDescLow]: 'descLo', [MmioReg.QueueDescHigh]: 'descHi',
  [MmioReg.QueueDriverLow]: 'driverLo', [MmioReg.QueueDriverHigh]: 'driverHi',
  [MmioReg.QueueDeviceLow]: 'deviceLo', [MmioReg.QueueDeviceHigh]: 'deviceHi',
};

export class VirtioMmioTransport {
  readonly size = VIRTIO_MMIO_SIZE;
  /**
   * The vCPU's exit-journal word for InterruptACK writes and the flag that marks it set
   * (contracts/snapshot.ts Journal.ackIntent, SNAP.ACK_INTENT); unset: ACKs are not journaled.
   */
  ackIntent?: { word: Int32Array; flag: number };

  constructor(readonly base: number, readonly slot: DeviceSlot, private readonly onReset: () => void = () => undefined) {}

  read(offset: number, len: number): number {
    const s = this.slot;
    if (offset >= MmioReg.Config) {
      const at = offset - MmioReg.Config;
      const cfg = s.config;
      let v = 0;
      for (let i = 0; i < len && i < 4; i++) v |= (at + i < cfg.length ? cfg[at + i] : 0) << (8 * i);
      return v >>> 0;
    }
    if (len !== 4) return 0; // the spec requires 32-bit register access
    const q = s.queueSel;
    const qValid = q < s.numQueues;
    switch (offset) {
      case MmioReg.MagicValue: return VIRTIO_MMIO_MAGIC;
      case MmioReg.Version: return VIRTIO_MMIO_VERSION;
      case MmioReg.DeviceID: return s.deviceId;
      case MmioReg.VendorID: return s.vendorId;
      case MmioReg.DeviceFeatures: return s.deviceFeaturesWord(s.deviceFeaturesSel);
      case MmioReg.QueueNumMax: return qValid ? s.queueNumMax : 0;
      case MmioReg.QueueReady: return qValid ? s.getQueueReg(q, 'ready') : 0;
      case MmioReg.InterruptStatus: return s.interruptStatus;
      case MmioReg.Status: return s.status;
      case MmioReg.ConfigGeneration: return s.configGeneration;
      default: {
        const f = QUEUE_REG[offset];
        return f && qValid ? s.getQueueReg(q, f) : 0;
      }
    }
  }

  write(offset: number, len: number, value: number): void {
    const s = this.slot;
    if (offset >= MmioReg.Config || len !== 4) return; // config space is read-only for blk and net
    value >>>= 0;
    switch (offset) {
      case MmioReg.DeviceFeaturesSel: s.deviceFeaturesSel = value; return;
      case MmioReg.DriverFeaturesSel: s.driverFeaturesSel = value; return;
      case MmioReg.DriverFeatures:
        // Features may only change before FEATURES_OK.
        if (!(s.status & Status.FEATURES_OK)) s.setDriverFeaturesWord(s.driverFeaturesSel, value);
        return;
      case MmioReg.QueueSel: s.queueSel = value; return;
      case MmioReg.InterruptACK: s.ackInterrupt(value, this.ackIntent?.word, this.ackIntent?.flag); return;
      case MmioReg.Status: this.writeStatus(value); return;
      case MmioReg.QueueNotify: return; // only reached for an invalid queue index (the ioeventfd matches valid ones)
      default: {
        const f = QUEUE_REG[offset];
        const q = s.queueSel;
        if (!f || q >= s.numQueues) return;
        if (f === 'num' && (value === 0 || value > s.queueNumMax || (value & (value - 1)) !== 0)) return;
        // Queue registers are frozen while the queue is live.
        if (f !== 'ready' && s.getQueueReg(q, 'ready')) return;
        s.setQueueReg(q, f, f === 'ready' ? value & 1 : value);
      }
    }
  }

  /**
   * The registers that need no policy, for the native exit loop (native/kvm/fastexit.cc): a 4-byte
   * InterruptStatus read (the isr word's low half) and InterruptACK write (clear those bits, count
   * the ACK), on the isr word at `address(slot.isrWord)`. Anything else comes to read/write here.
   */
  fixedRegisters(address: (word: Uint32Array) => bigint): MmioRule[] {
    const word = address(this.slot.isrWord);
    return [
      { gpa: this.base + MmioReg.InterruptStatus, write: false, word, mask: ISR_WORD.BITS },
      { gpa: this.base + MmioReg.InterruptACK, write: true, word, mask: ISR_WORD.BITS, one: ISR_WORD.ACK_ONE },
    ];
  }

  /**
   * Whether a guest write at `offset` that a killed vmm left unhandled was applied already, by the
   * journal's ack intent (`intent`: flag | the ACK count seen before it; 0: none recorded): only an
   * InterruptACK whose count has moved since. Anything else is replayed.
   */
  writeApplied(offset: number, intent: number): boolean {
    if (offset !== MmioReg.InterruptACK || !this.ackIntent || !(intent & this.ackIntent.flag)) return false;
    return ((intent & ~this.ackIntent.flag) >>> 0) !== this.slot.ackCount;
  }

  private writeStatus(value: number): void {
    const s = this.slot;
    if (value === 0) {
      s.resetRegisters();
      this.onReset();
      return;
    }
    let v = value & 0xff;
    // FEATURES_OK sticks only if the driver accepted a subset of what we offer, including VERSION_1.
    if (v & Status.FEATURES_OK && !(s.status & Status.FEATURES_OK)) {
      const offered = s.deviceFeatures;
      const acked = s.driverFeatures;
      if ((acked & ~offered) !== 0n || !(acked & (1n << 32n))) v &= ~Status.FEATURES_OK;
    }
    // The driver may not clear bits except by reset; NEEDS_RESET is the device's.
    s.status = (s.status & Status.DEVICE_NEEDS_RESET) | (s.status | v);
  }
}
