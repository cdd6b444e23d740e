/**
 * How a component gets the VM's configuration: an fd (vmm/fds.ts FD.CONFIG) on a memfd holding
 * the encoded VmConfig, never the environment (a 100 KB --cmdline would make every spawn fail
 * with E2BIG). The same fd lets a supervisor that adopts running components (recovery/adopt.ts)
 * read the configuration back from any of them.
 */
import * as fs from 'fs';
import { native } from '../native/kvm';
import { VmConfig, VmConfigCodec } from '../proto';
import { FD } from './fds';

const MEMFD_NAME = 'tsvmm-config';

/** A memfd with `cfg` encoded in it, for FD.CONFIG of every component. */
export function configMemfd(cfg: VmConfig): number {
  const bytes = VmConfigCodec.encode(cfg);
  const fd = native.memfdCreate(`${MEMFD_NAME}-${cfg.name}`, bytes.length);
  fs.writeSync(fd, bytes, 0, bytes.length, 0);
  return fd;
}

/** The configuration behind `fd` (a config memfd), read with pread: the file offset is shared. */
export function readConfigFd(fd: number): VmConfig {
  const size = fs.fstatSync(fd).size;
  const buf = Buffer.alloc(size);
  let off = 0;
  while (off < size) {
    const n = fs.readSync(fd, buf, off, size - off, off);
    if (n <= 0) throw new Error('the configuration memfd is truncated');
    off += n;
  }
  return VmConfigCodec.decode(buf);
}

/** This component's configuration (FD.CONFIG), or undefined when it was not started by a supervisor. */
export function componentConfig(): VmConfig | undefined {
  try {
    if (!fs.readlinkSync(`/proc/self/fd/${FD.CONFIG}`).startsWith(`/memfd:${MEMFD_NAME}-`)) return undefined;
  } catch {
    return undefined;
  }
  return readConfigFd(FD.CONFIG);
}
