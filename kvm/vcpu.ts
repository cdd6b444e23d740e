/**
 * A KVM vCPU: its kvm_run page and one method per state ioctl. Registers
 * decode to typed objects (structs.ts); the larger state blobs (XSAVE,
 * LAPIC, events...) stay raw buffers, which is all recovery needs.
 */
import { abi, ioctl, native } from '../native/kvm';
import {
  CpuidEntry, decodeRegs, decodeSregs, encodeCpuid2, encodeRegs, encodeSregs,
  Regs, Sregs,
} from './structs';

export class Vcpu {
  /** The kvm_run page shared with the kernel. */
  readonly run: DataView;
  readonly runBytes: Uint8Array;

  constructor(readonly fd: number, readonly id: number, mmapSize: number) {
    const ab = native.mmap(fd, mmapSize, 0, true);
    this.run = new DataView(ab);
    this.runBytes = new Uint8Array(ab);
  }

  getRegs(): Regs { return decodeRegs(this.get('KVM_GET_REGS', 'sizeof_kvm_regs')); }
  setRegs(r: Partial<Regs>): void {
    const b = this.get('KVM_GET_REGS', 'sizeof_kvm_regs');
    ioctl(this.fd, 'KVM_SET_REGS', encodeRegs(r, b));
  }
  getSregs(): Sregs { return decodeSregs(this.get('KVM_GET_SREGS', 'sizeof_kvm_sregs')); }
  setSregs(s: Partial<Sregs>): void {
    const b = this.get('KVM_GET_SREGS', 'sizeof_kvm_sregs');
    ioctl(this.fd, 'KVM_SET_SREGS', encodeSregs(b, s));
  }
  setCpuid(entries: CpuidEntry[]): void { ioctl(this.fd, 'KVM_SET_CPUID2', encodeCpuid2(entries)); }
  tscKhz(): number { return ioctl(this.fd, 'KVM_GET_TSC_KHZ', 0); }

  /** Raw state blobs, for save/restore. */
  getBlob(kind: BlobKind): Buffer { return this.get(`KVM_GET_${kind}`, BLOB_SIZE[kind]); }
  setBlob(kind: BlobKind, b: Buffer): void { ioctl(this.fd, `KVM_SET_${kind}`, b); }

  private get(name: string, size: string): Buffer {
    const b = Buffer.alloc(abi(size));
    ioctl(this.fd, name, b);
    return b;
  }
}

export type BlobKind = 'FPU' | 'XSAVE' | 'XCRS' | 'DEBUGREGS' | 'LAPIC' | 'VCPU_EVENTS';
const BLOB_SIZE: Record<BlobKind, string> = {
  FPU: 'sizeof_kvm_fpu', XSAVE: 'sizeof_kvm_xsave', XCRS: 'sizeof_kvm_xcrs', DEBUGREGS: 'sizeof_kvm_debugregs',
  LAPIC: 'sizeof_kvm_lapic_state', VCPU_EVENTS: 'sizeof_kvm_vcpu_events',
};
