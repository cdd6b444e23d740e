/**
 * The file descriptors the supervisor hands a component at spawn, by
 * position in its stdio array. Shared by the supervisor (which builds the
 * array) and the components (which read them).
 */
export const FD = {
  /** Node's IPC channel to the supervisor. */
  IPC: 3,
  /** Guest RAM memfd. */
  RAM: 4,
  /** Shared state memfd (platform page, then device pages). */
  STATE: 5,
  /** Where guest serial output is written. */
  SERIAL_OUT: 6,
  /** The vmm's snapshot memfd: exit journals + what its keeper saves when it dies (contracts/snapshot.ts). */
  SNAPSHOT: 7,
  /** The VM's configuration: a memfd holding the encoded VmConfig (recovery/component-config.ts). */
  CONFIG: 8,
  /** vmm: /dev/kvm, opened by the supervisor (the vmm may not open it: contracts/confinement.ts). */
  KVM: 9,
  /** vmm: the kernel and the initrd (absent: none), opened by the supervisor for the same reason. */
  KERNEL: 10,
  INITRD: 11,
  /** priv-domain: its API socket, bound and listening (the supervisor owns the socket file). */
  API_LISTEN: 12,
  /** Every component: the VM's log file, <state dir>/tsvmm.log, opened for appending by the supervisor (contracts/log.ts). */
  LOG: 13,
  /**
   * vmm and driver-domain: the two ends of the component's adoption channel, a socketpair the
   * supervisor makes at spawn (contracts/orphan.ts). The component reads and writes ADOPT once its
   * supervisor has died; ADOPT_PEER it only holds, for the supervisor that adopts it, which takes it
   * with pidfd_getfd(2) (supervisor/adopt.ts). A confined component could not make a socket itself.
   */
  ADOPT: 14,
  ADOPT_PEER: 15,
} as const;

/**
 * The state memfd: the platform page at 0, the virtio state page (contracts/state-page.ts) at
 * DEVICE_PAGE_OFFSET, the control page (contracts/control-page.ts: console ring, exit and device
 * counters, pause flag) at CONTROL_OFFSET.
 */
export const DEVICE_PAGE_OFFSET = 4096;
export const DEVICE_PAGE_SIZE = 256 * 1024;
export const CONTROL_OFFSET = DEVICE_PAGE_OFFSET + DEVICE_PAGE_SIZE;
export const CONTROL_SIZE = 1024 * 1024;
export const STATE_MEMFD_SIZE = CONTROL_OFFSET + CONTROL_SIZE;

/**
 * Virtio devices: device i (disks first, then NICs, in command-line order)
 * gets a block of fds starting at DEVICE_FD_BASE + i * DEVICE_FD_STRIDE:
 * its backend (disk file or TAP; driver-domain only), then one kick eventfd
 * per queue (a KVM ioeventfd on QueueNotify), then one call eventfd per
 * queue (a KVM irqfd).
 */
export const DEVICE_FD_BASE = 16;
export const MAX_DEVICE_QUEUES = 2;
export const DEVICE_FD_STRIDE = 1 + 2 * MAX_DEVICE_QUEUES;

export interface DeviceFds { backend: number; kick: number[]; call: number[] }

export function deviceFds(i: number, queues: number): DeviceFds {
  const base = DEVICE_FD_BASE + i * DEVICE_FD_STRIDE;
  const q = Array.from({ length: queues }, (_, n) => n);
  return { backend: base, kick: q.map((n) => base + 1 + n), call: q.map((n) => base + 1 + MAX_DEVICE_QUEUES + n) };
}
