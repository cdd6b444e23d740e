/**
 * TAP devices: open (and create, when permitted) a TAP interface by name.
 * The supervisor opens it and holds the fd; the driver-domain reads and
 * writes frames on it. Frames carry no packet-info header (IFF_NO_PI) and
 * no virtio-net header (the device adds/strips it).
 */
import * as fs from 'fs';
import { abi, errnoCode, native } from '../native/kvm';

const O_RDWR = 2;
const O_NONBLOCK = 0x800;
const IFNAMSIZ = 16;

export class TapError extends Error {
  constructor(message: string) { super(message); this.name = 'TapError'; }
}

/** Opens TAP `name`, creating it if it does not exist and the caller may. Returns a non-blocking fd. */
export function openTap(name: string): number {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) {
    throw new TapError(`invalid TAP name "${name}": 1-15 characters of letters, digits, '_', '.', '-'`);
  }
  let fd: number;
  try {
    fd = native.open('/dev/net/tun', O_RDWR | O_NONBLOCK);
  } catch (e) {
    const code = errnoCode(e);
    if (code === 'ENOENT') throw new TapError('/dev/net/tun does not exist: load the tun module to use --net');
    if (code === 'EACCES' || code === 'EPERM') throw new TapError('no permission to open /dev/net/tun: --net needs CAP_NET_ADMIN or a TAP owned by your user');
    throw new TapError(`cannot open /dev/net/tun: ${(e as Error).message}`);
  }
  const ifr = Buffer.alloc(40);
  ifr.write(name, 0, IFNAMSIZ - 1, 'latin1');
  ifr.writeUInt16LE(abi('IFF_TAP') | abi('IFF_NO_PI'), IFNAMSIZ);
  try {
    native.ioctl(fd, abi('TUNSETIFF'), ifr);
  } catch (e) {
    native.close(fd);
    const code = errnoCode(e);
    if (code === 'EPERM' || code === 'EACCES') {
      throw new TapError(`cannot create or attach TAP "${name}": permission denied (it needs CAP_NET_ADMIN, or create it first with \`ip tuntap add ${name} mode tap user $USER\`)`);
    }
    if (code === 'EBUSY') throw new TapError(`TAP "${name}" is already in use by another process`);
    if (code === 'EINVAL') throw new TapError(`"${name}" exists but is not a TAP device`);
    throw new TapError(`cannot attach TAP "${name}": ${(e as Error).message}`);
  }
  return fd;
}

/**
 * The name of the TAP that this process's `fd` is attached to: '' once the device was deleted under
 * it (the fd is detached: reads and writes fail with EBADFD), undefined if unknown (not a TAP, no
 * /proc). From /proc/self/fdinfo (`iff:`).
 */
export function tapAttachedName(fd: number): string | undefined {
  try {
    const m = /^iff:\t?(.*)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'));
    return m ? m[1].trim() : undefined;
  } catch {
    return undefined;
  }
}

/** Whether a TAP (or TUN) device named `name` exists in this process's network namespace. */
export function tapExists(name: string): boolean {
  return /^[A-Za-z0-9_.-]{1,15}$/.test(name) && fs.existsSync(`/sys/class/net/${name}/tun_flags`);
}
