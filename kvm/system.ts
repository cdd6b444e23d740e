/**
 * /dev/kvm: opening it with clear errors, the API version and capability
 * checks, and the system-wide queries (supported CPUID, vCPU mmap size).
 */
import { abi, errnoCode, ioctl, native } from '../native/kvm';
import { CpuidEntry, cpuid2Buffer, decodeCpuid2 } from './structs';

export const KVM_API_VERSION = 12;

/** Capabilities tsvmm cannot run without. */
const REQUIRED_CAPS = [
  'KVM_CAP_IRQCHIP', 'KVM_CAP_USER_MEMORY', 'KVM_CAP_SET_TSS_ADDR', 'KVM_CAP_EXT_CPUID', 'KVM_CAP_PIT2',
  'KVM_CAP_IOEVENTFD', 'KVM_CAP_IRQFD', 'KVM_CAP_IMMEDIATE_EXIT', 'KVM_CAP_MP_STATE',
];

export class KvmError extends Error {
  constructor(message: string) { super(message); this.name = 'KvmError'; }
}

export class Kvm {
  private constructor(readonly fd: number, readonly path: string) {}

  /** Opens /dev/kvm and checks the API version and required capabilities. */
  static open(path = process.env.TSVMM_KVM_DEVICE ?? '/dev/kvm'): Kvm {
    let fd: number;
    try {
      fd = native.open(path, 2 /* O_RDWR */);
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'ENOENT') throw new KvmError(`${path} does not exist: this host has no KVM (load kvm_intel/kvm_amd, or enable nested virtualization)`);
      if (code === 'EACCES' || code === 'EPERM') throw new KvmError(`no permission to open ${path}: add your user to the 'kvm' group or run as root`);
      throw new KvmError(`cannot open ${path}: ${(e as Error).message}`);
    }
    return Kvm.fromFd(fd, path);
  }

  /**
   * A /dev/kvm fd opened by someone else (the supervisor passes one to the vmm, which runs without
   * the permission to open the device itself: contracts/confinement.ts); same checks as open().
   */
  static fromFd(fd: number, path = '/dev/kvm'): Kvm {
    const kvm = new Kvm(fd, path);
    const version = ioctl(fd, 'KVM_GET_API_VERSION');
    if (version !== KVM_API_VERSION) throw new KvmError(`${path} reports KVM API version ${version}, tsvmm needs ${KVM_API_VERSION}`);
    for (const cap of REQUIRED_CAPS) {
      if (kvm.checkExtension(cap) <= 0) throw new KvmError(`${path} lacks ${cap}, which tsvmm requires`);
    }
    return kvm;
  }

  checkExtension(cap: string): number {
    return ioctl(this.fd, 'KVM_CHECK_EXTENSION', abi(cap));
  }

  /** The most vCPUs one VM may have here. */
  maxVcpus(): number {
    return this.checkExtension('KVM_CAP_MAX_VCPUS') || this.checkExtension('KVM_CAP_NR_VCPUS') || 4;
  }

  vcpuMmapSize(): number {
    return ioctl(this.fd, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  supportedCpuid(): CpuidEntry[] {
    for (let n = 64; n <= 4096; n *= 2) {
      const b = cpuid2Buffer(n);
      try {
        ioctl(this.fd, 'KVM_GET_SUPPORTED_CPUID', b);
        return decodeCpuid2(b);
      } catch (e) {
        if (errnoCode(e) !== 'E2BIG') throw e;
      }
    }
    throw new KvmError('KVM_GET_SUPPORTED_CPUID returned too many entries');
  }

  /** KVM_CREATE_VM; returns the VM fd. */
  createVm(): number {
    return ioctl(this.fd, 'KVM_CREATE_VM', 0);
  }

  close(): void { native.close(this.fd); }
}
