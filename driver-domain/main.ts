/**
 * The driver-domain process: serves the VM's virtio devices. It maps guest
 * RAM and the device state page, waits on each queue's kick eventfd (KVM
 * signals them straight from the guest's QueueNotify write), does the I/O
 * on the disk files and TAPs the supervisor holds, and interrupts the guest
 * through each queue's irqfd. It never opens /dev/kvm and is never on a
 * vCPU's path.
 *
 * On start it re-attaches to whatever the state page says: queues that were
 * live are re-activated, which resubmits in-flight requests in order and
 * signals every queue once (driver-domain recovery).
 */
import * as fs from 'fs';
import { native, poller } from '../native/kvm';
import { ComponentMessage, ComponentMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { Component, StatePage } from '../devices/state-page';
import { Status } from '../devices/virtio-mmio-layout';
import { VirtioBlk } from '../devices/virtio-blk';
import { VirtioNet } from '../devices/virtio-net';
import { FileBlockBackend } from '../devices/block-backend';
import { mapGuestRam } from '../vmm/guest-ram';
import { deviceList } from '../vmm/devices';
import { DEVICE_PAGE_OFFSET, deviceFds, FD, STATE_MEMFD_SIZE } from '../vmm/fds';
import { TapBackend } from './tap-backend';

const HEARTBEAT_MS = 20;
const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

function send(msg: ComponentMessage): void {
  process.send?.({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') });
}

interface Served {
  activate(): void;
  kick(queue: number): void;
  running(): boolean;
  deactivate(): void;
}

function serve(cfg: VmConfig): void {
  const ram = mapGuestRam(FD.RAM, cfg.memBytes);
  const page = StatePage.attach(new Uint8Array(native.mmap(FD.STATE, STATE_MEMFD_SIZE - DEVICE_PAGE_OFFSET, DEVICE_PAGE_OFFSET, true)));
  const report = page.validate();
  if (!report.ok && report.tornDevices.length === 0) throw new Error(`device state page is corrupt: ${report.errors.join('; ')}`);

  const served: Served[] = [];
  const active: boolean[] = [];
  const ensure = (i: number): boolean => {
    const s = served[i];
    if (!s.running()) {
      if (active[i]) { s.deactivate(); active[i] = false; }
      return false;
    }
    if (!active[i]) { s.activate(); active[i] = true; }
    return true;
  };
  poller.pollerStart((tag) => {
    const i = tag >> 4;
    const q = tag & 15;
    if (i >= served.length) return;
    const live = ensure(i);
    // A TAP is edge-triggered: always drain it (the device drops what it cannot deliver).
    if (q === 15) tapOf.get(i)?.tap.drain();
    else if (live) served[i].kick(q);
  });
  for (const d of deviceList(cfg)) {
    const slot = page.device(d.index);
    const fds = deviceFds(d.index, d.queues);
    const notify = (q: number) => { fs.writeSync(fds.call[q], ONE); };
    const running = () => (slot.status & Status.DRIVER_OK) !== 0 && !slot.needsReset;
    if (d.kind === 'blk') {
      const disk = cfg.disks[d.index];
      const size = fs.fstatSync(fds.backend).size;
      const blk = new VirtioBlk(ram.memory, slot, new FileBlockBackend(fds.backend, size, disk.readOnly, `tsvmm-disk${d.index}`), notify);
      served.push({
        activate: () => { blk.activate(); }, kick: () => { blk.kick(); }, running, deactivate: () => blk.vq.deactivate(),
      });
    } else {
      const tap = new TapBackend(fds.backend);
      const net = new VirtioNet(ram.memory, slot, tap, notify);
      served.push({
        activate: () => { net.activate(); },
        kick: (q) => { if (q === 0) net.kickRx(); else net.kickTx(); },
        running,
        deactivate: () => { net.rx.deactivate(); net.tx.deactivate(); },
      });
      // Tag space: device index * 16 + queue for kicks, + 15 for the TAP.
      poller.pollerAdd(fds.backend, d.index * 16 + 15, false);
      tapOf.set(d.index, { tap, net });
    }
    fds.kick.forEach((fd, q) => poller.pollerAdd(fd, d.index * 16 + q, true));
  }

  // Re-attach: anything live when a previous driver-domain died is recovered now.
  served.forEach((_, i) => ensure(i));

  setInterval(() => page.beat(Component.DriverDomain), HEARTBEAT_MS);
  page.beat(Component.DriverDomain);
  send({ ready: { component: 'driver-domain', pid: process.pid } });
}

const tapOf = new Map<number, { tap: TapBackend; net: VirtioNet }>();

function main(): void {
  const b64 = process.env.TSVMM_CONFIG;
  if (!b64) {
    process.stderr.write('tsvmm driver-domain: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  try {
    serve(VmConfigCodec.decode(Buffer.from(b64, 'base64')));
  } catch (e) {
    send({ fatal: { message: `driver-domain: ${(e as Error).message}` } });
    setTimeout(() => process.exit(1), 20);
  }
}

main();
