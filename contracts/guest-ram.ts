/**
 * Maps the supervisor's guest-RAM memfd into this process, one mapping per
 * RAM slot (the memfd is laid out slot after slot), and describes it as a
 * GuestMemory (with each region's host address, for iovecs). Used by the vmm (which also registers the slots with KVM)
 * and by the driver-domain (which only reads and writes guest memory).
 */
import { native } from '../native/kvm';
import { GuestMemory, hostRegion } from './memory';
import { ramRegions } from './layout';

export interface MappedRam {
  memory: GuestMemory;
  slots: { gpa: number; host: ArrayBuffer }[];
}

/**
 * Every guest-RAM mapping this process made. The addon unmaps a mapping when
 * its ArrayBuffer is garbage-collected; guest RAM must stay mapped for as
 * long as KVM memslots (or device models) point at it, whether or not any JS
 * object still does, or the guest faults on memory that vanished under it.
 */
const pinned: ArrayBuffer[] = [];

export function mapGuestRam(ramFd: number, memBytes: number): MappedRam {
  const size = native.fdSize(ramFd);
  if (size !== memBytes) throw new Error(`guest RAM memfd is ${size} bytes, expected ${memBytes}`);
  let offset = 0;
  const slots = ramRegions(memBytes).map((r) => {
    const host = native.mmap(ramFd, r.size, offset, true);
    pinned.push(host);
    // As QEMU does for its RAM: transparent huge pages where the host allows them for shared
    // memory (shmem_enabled=advise or within_size/always). Fewer TLB misses when the guest or
    // the driver-domain touches guest RAM, and fewer page faults; advice only, never an error.
    native.madviseHugepage?.(host);
    offset += r.size;
    return { gpa: r.gpa, host };
  });
  return { memory: new GuestMemory(slots.map((s) => hostRegion(s.gpa, s.host))), slots };
}
