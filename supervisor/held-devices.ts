/**
 * The supervisor's side of the virtio devices: it opens and holds every
 * disk file and TAP, creates each queue's kick and call eventfds, and
 * formats the device state page. Components get these as fds at spawn
 * (contracts/fds.ts says where), so a restarted component finds them all again.
 */
import * as crypto from 'crypto';
import { native } from '../native/kvm';
import { VmConfig } from '../proto';
import { StatePage } from '../contracts/state-page';
import { blkDeviceSpec, SECTOR_SIZE } from '../virtio/virtio-blk';
import { netDeviceSpec, parseMac } from '../virtio/virtio-net';
import { FileBlockBackend } from '../virtio/block-backend';
import { openTap } from '../virtio/tap';
import { deviceList, DeviceEntry } from '../contracts/device-list';
import { DEVICE_FD_BASE, DEVICE_FD_STRIDE, deviceFds } from '../contracts/fds';

export interface HeldDevice extends DeviceEntry {
  backendFd: number;
  kick: number[];
  call: number[];
}

/** A locally administered, unicast MAC derived from the VM name and NIC index. */
function defaultMac(name: string, i: number): string {
  const h = crypto.createHash('sha256').update(`${name}/${i}`).digest();
  return ['52', '54', h[0], h[1], h[2], i].map((b) => (typeof b === 'string' ? b : b.toString(16).padStart(2, '0'))).join(':');
}

export function openDevices(cfg: VmConfig, page: StatePage): HeldDevice[] {
  const held: HeldDevice[] = [];
  for (const d of deviceList(cfg)) {
    let backendFd: number;
    if (d.kind === 'blk') {
      const disk = cfg.disks[d.index];
      const b = FileBlockBackend.open(disk.path, { readOnly: disk.readOnly, id: `tsvmm-disk${d.index}`, cache: disk.cache });
      backendFd = b.fd;
      // O_DIRECT on a disk with 4 KiB sectors: the guest is told, so it sends 4 KiB-aligned requests.
      page.addDevice(blkDeviceSpec(b, { blkSize: Math.max(SECTOR_SIZE, b.direct?.offset ?? 0) }));
    } else {
      const net = cfg.nets[d.index - cfg.disks.length];
      backendFd = openTap(net.tap);
      page.addDevice(netDeviceSpec({ mac: parseMac(net.mac || defaultMac(cfg.name, d.index)) }));
    }
    held.push({
      ...d, backendFd,
      kick: Array.from({ length: d.queues }, () => native.eventfd(0, true)),
      call: Array.from({ length: d.queues }, () => native.eventfd(0, false)),
    });
  }
  page.sealStatic();
  return held;
}

/**
 * The stdio slots (index = fd number in the child) for the device fds.
 * `withBackends`: the driver-domain gets the disks and TAPs; the vmm only
 * the eventfds it registers with KVM.
 */
export function deviceStdio(devices: HeldDevice[], withBackends: boolean): (number | 'ignore')[] {
  const slots: (number | 'ignore')[] = [];
  const end = DEVICE_FD_BASE + devices.length * DEVICE_FD_STRIDE;
  for (let fd = 0; fd < end; fd++) slots.push('ignore');
  for (const d of devices) {
    const fds = deviceFds(d.index, d.queues);
    if (withBackends) slots[fds.backend] = d.backendFd;
    fds.kick.forEach((fd, q) => { slots[fd] = d.kick[q]; });
    fds.call.forEach((fd, q) => { slots[fd] = d.call[q]; });
  }
  return slots;
}

