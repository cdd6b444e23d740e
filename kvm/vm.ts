/**
 * A KVM VM: memory slots, the in-kernel irqchip and PIT, interrupt lines,
 * irqfds and ioeventfds, and the VM-level state recovery saves/restores.
 * One method per ioctl; no policy.
 */
import { abi, ioctl, native } from '../native/kvm';
import { encodeIoeventfd, encodeIrqfd, encodeIrqLevel, encodeIrqRouting, encodeMemoryRegion, IrqRoute } from './structs';

export class Vm {
  constructor(readonly fd: number) {}

  setUserMemoryRegion(slot: number, gpa: number, host: ArrayBuffer): void {
    ioctl(this.fd, 'KVM_SET_USER_MEMORY_REGION', encodeMemoryRegion(slot, gpa, host.byteLength, native.address(host)));
  }
  setTssAddr(addr: number): void { ioctl(this.fd, 'KVM_SET_TSS_ADDR', addr); }
  setIdentityMapAddr(addr: number): void {
    const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(addr));
    ioctl(this.fd, 'KVM_SET_IDENTITY_MAP_ADDR', b);
  }
  createIrqchip(): void { ioctl(this.fd, 'KVM_CREATE_IRQCHIP', 0); }
  createPit2(): void { ioctl(this.fd, 'KVM_CREATE_PIT2', Buffer.alloc(abi('sizeof_kvm_pit_config'))); }
  createVcpu(id: number): number { return ioctl(this.fd, 'KVM_CREATE_VCPU', id); }
  irqLine(irq: number, level: number): void { ioctl(this.fd, 'KVM_IRQ_LINE', encodeIrqLevel(irq, level)); }

  setGsiRouting(routes: IrqRoute[]): void { ioctl(this.fd, 'KVM_SET_GSI_ROUTING', encodeIrqRouting(routes)); }

  irqfd(fd: number, gsi: number): void { ioctl(this.fd, 'KVM_IRQFD', encodeIrqfd(fd, gsi)); }
  ioeventfd(o: { addr: number; len: number; fd: number; datamatch?: number; pio?: boolean }): void {
    ioctl(this.fd, 'KVM_IOEVENTFD', encodeIoeventfd(o));
  }

  /** VM-level state as raw structs (struct layouts from <linux/kvm.h>). */
  /** chip: KVM_IRQCHIP_PIC_MASTER / _SLAVE / _IOAPIC */
  getIrqchip(chip: number): Buffer {
    const b = Buffer.alloc(abi('sizeof_kvm_irqchip')); b.writeUInt32LE(chip, 0);
    ioctl(this.fd, 'KVM_GET_IRQCHIP', b);
    return b;
  }
  setIrqchip(b: Buffer): void { ioctl(this.fd, 'KVM_SET_IRQCHIP', b); }
}
