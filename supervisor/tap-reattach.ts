/**
 * A TAP deleted under the VM (ip link del, a network manager) leaves the fd the supervisor holds,
 * and the driver-domain's copy, detached: the NIC carries nothing (the driver-domain logs it). When
 * a TAP of that name exists again in the supervisor's network namespace (an administrator made it
 * again, `ip tuntap add NAME mode tap`), the supervisor opens it in place of the detached fd and
 * has a new driver-domain take over with it, the way `tsvmm update driver-domain` does (a standby
 * started with the held fds, then the old one told to go; what it had in flight is resubmitted):
 * the NIC carries traffic again, the disks pause for the handover only. Checked once a second; a
 * TAP that cannot be attached (busy, not a TAP) is retried, logged once per reason.
 */
import { native } from '../native/kvm';
import { VmConfig } from '../proto';
import { Logger } from '../contracts/log';
import { openTap, tapAttachedName, tapExists } from '../virtio/tap';
import { HeldDevice } from './held-devices';

const TAP_REATTACH_MS = 1000;

export interface TapReattachHost {
  readonly cfg: VmConfig;
  readonly logger: Logger;
  readonly finished: boolean;
  readonly devices: HeldDevice[];
  /** A new driver-domain, started with the held fds, takes over (DriverDomainLifecycle.update). */
  replaceDriverDomain(): Promise<{ ms: number }>;
}

export function watchTaps(host: TapReattachHost): NodeJS.Timeout | undefined {
  const nets = host.devices.filter((d) => d.kind === 'net');
  if (!nets.length) return undefined;
  let busy = false;
  const told = new Map<number, string>();
  const timer = setInterval(() => {
    if (busy || host.finished) return;
    for (const d of nets) {
      const name = host.cfg.nets[d.index - host.cfg.disks.length]?.tap;
      if (!name || tapAttachedName(d.backendFd) !== '' || !tapExists(name)) continue;
      let fd: number;
      try {
        fd = openTap(name);
      } catch (e) {
        const why = (e as Error).message;
        if (told.get(d.index) !== why) host.logger.warn(`net ${d.index}: TAP ${name} is back but cannot be attached (${why}); retrying`);
        told.set(d.index, why);
        continue;
      }
      told.delete(d.index);
      const old = d.backendFd;
      d.backendFd = fd;
      try { native.close(old); } catch { /* closed */ }
      busy = true;
      host.replaceDriverDomain().then(
        ({ ms }) => host.logger.info(`net ${d.index}: TAP ${name} is back: reattached (a new driver-domain took over with it in ${ms.toFixed(1)} ms)`, { event: 'tap-reattached', device: d.index, tap: name }),
        (e) => host.logger.warn(`net ${d.index}: TAP ${name} is back and held again, but no new driver-domain took over yet (${(e as Error).message}): the next driver-domain start uses it`),
      ).finally(() => { busy = false; });
      return;
    }
  }, TAP_REATTACH_MS);
  timer.unref();
  return timer;
}
