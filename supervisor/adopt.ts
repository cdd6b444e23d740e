/**
 * Adopting a VM whose supervisor died (started by the VM's guardian, supervisor/guardian-main.ts, as
 * supervisor/adopt-main.ts):
 *   1. finds the running components through <runtime>/<name>/run.pb (pids with start times, so a
 *      recycled pid is never taken for one) and opens a pidfd on each;
 *   2. takes the fds the dead supervisor held out of them with pidfd_getfd(2) (it is root: a
 *      confined component, another uid and not dumpable, is no obstacle to CAP_SYS_PTRACE): guest
 *      RAM, the state and snapshot memfds, the serial output, the configuration and each queue's
 *      kick and call eventfds from the vmm (or, with the vmm gone, from its keeper, which shares its
 *      fd table), the disks and TAPs from the driver-domain (reopened by path/name if it is gone),
 *      and each component's end of its adoption channel (FD.ADOPT_PEER, contracts/orphan.ts);
 *   3. runs a Supervisor in adopt mode over them (supervisor/supervisor.ts): the adopted processes
 *      look like children to it (AdoptedProcess: pid, kill through the pidfd, 'exit' when the pidfd
 *      fires, with the status from PIDFD_GET_INFO or the zombie's /proc entry since they are not
 *      our children; messages over the adoption channel), and it starts a new priv-domain, so
 *      `tsvmm ls/ps/stop/metrics` work again. Its first message to each is `adopted`.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import { EventEmitter } from 'events';
import type { ChildProcess } from 'child_process';
import { native } from '../native/kvm';
import { SupervisorMessageCodec, VmConfig } from '../proto';
import { FD, deviceFds } from '../contracts/fds';
import { deviceList } from '../contracts/device-list';
import { Component, mapDevicePage } from '../contracts/state-page';
import { FileBlockBackend } from '../virtio/block-backend';
import { openTap } from '../virtio/tap';
import { HeldDevice } from './held-devices';
import { readConfigFd } from '../contracts/component-config';
import { SnapState, SnapshotView } from '../contracts/snapshot';
import { describeExit, NativePidfd, signalName, waitExited } from '../contracts/pidfd';
import { readRunRecord } from '../contracts/run-record';
import { readSupervisorPid, startTicks, vmPaths, VmPaths } from '../contracts/paths';
import { RunResult, Supervisor } from './supervisor';
import type { Logger } from '../contracts/log';

const pidfd = native as unknown as NativePidfd & { pidfdOpen(pid: number): number };

export interface AdoptedFds { ramFd: number; stateFd: number; serialFd: number; snapFd: number; configFd: number; devices: HeldDevice[] }

/** What the dead supervisor left running, ready for a Supervisor in adopt mode. */
export interface Adoption {
  fds: AdoptedFds;
  vmm?: ChildProcess;
  /** The vmm runs the guest (its keeper is armed for it), as opposed to still restoring it. */
  vmmRunning: boolean;
  driverDomain?: ChildProcess;
  /** The driver-domain serves (its heartbeat moves). */
  driverDomainServing: boolean;
  keepers: number[];
  /** How the previous supervisor died, and when (CLOCK_MONOTONIC ns) a component saw it. */
  cause: string;
  t0: bigint;
  runId: string;
  /** Supervisors this VM had before this one. */
  supervisors: number;
  startedAt: number;
}

/** A running process we did not start, made to look like a ChildProcess to the Supervisor. */
export class AdoptedProcess extends EventEmitter {
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  /** As ChildProcess.connected: true while it runs (its adoption channel is connected from the start). */
  get connected(): boolean { return this.exitCode === null && this.signalCode === null; }
  private readonly socket?: net.Socket;

  /** `channelFd`: our copy of its FD.ADOPT_PEER (undefined: none, messages to it are dropped). */
  constructor(readonly pid: number, private readonly fd: number, channelFd?: number) {
    super();
    void waitExited(pidfd, fd, pid).then((e) => {
      if ('code' in e) this.exitCode = e.code;
      else if ('signal' in e) this.signalCode = signalName(e.signal) as NodeJS.Signals;
      this.socket?.destroy();
      this.emit('exit', this.exitCode, this.signalCode);
      try { fs.closeSync(fd); } catch { /* closed */ }
    });
    if (channelFd === undefined) return;
    const s = new net.Socket({ fd: channelFd, readable: true, writable: true });
    this.socket = s;
    s.on('error', () => undefined);
    // What it sent while no supervisor listened waits in the socket: read once the Supervisor listens.
    s.pause();
    this.on('newListener', (ev) => { if (ev === 'message') setImmediate(() => s.resume()); });
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 4) {
        const n = buf.readUInt32LE(0);
        // Not a frame of ours: refused as a malformed message is (spawnProcess kills the sender).
        if (n > 1 << 20) { buf = Buffer.alloc(0); this.emit('message', {}); return; }
        if (buf.length < 4 + n) break;
        this.emit('message', { pb: Buffer.from(buf.subarray(4, 4 + n)).toString('base64') });
        buf = buf.subarray(4 + n);
      }
    });
    this.send({ pb: Buffer.from(SupervisorMessageCodec.encode({ adopted: { supervisorPid: process.pid } })).toString('base64') });
  }

  kill(sig: NodeJS.Signals | number = 'SIGTERM'): boolean {
    if (this.exitCode !== null || this.signalCode !== null) return false;
    const n = typeof sig === 'number' ? sig : os.constants.signals[sig];
    return pidfd.pidfdSignal(this.fd, n) === 0;
  }

  /** As ChildProcess.send for the `{ pb }` messages the supervisor sends: framed on its adoption channel. */
  send(m: { pb?: string }, cb?: (e: Error | null) => void): boolean {
    if (typeof m?.pb === 'string' && this.socket && !this.socket.destroyed) {
      const body = Buffer.from(m.pb, 'base64');
      const head = Buffer.alloc(4);
      head.writeUInt32LE(body.length, 0);
      this.socket.write(Buffer.concat([head, body]));
    }
    cb?.(null);
    return true;
  }

  asChild(): ChildProcess { return this as unknown as ChildProcess; }
}

/** A pidfd on `pid` if it is still the process that started at `ticks`. */
function openVerified(pid: number, ticks: number): number | undefined {
  const fd = pidfd.pidfdOpen(pid);
  if (fd < 0) return undefined;
  if (startTicks(pid) !== ticks) { fs.closeSync(fd); return undefined; }
  return fd;
}

export class AdoptError extends Error {}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Steps 1-2: the components, their fds and the configuration. */
async function gather(paths: VmPaths, log: (l: string) => void): Promise<{ cfg: VmConfig; adoption: Adoption }> {
  const rec = readRunRecord(paths);
  if (!rec) throw new AdoptError(`no run record in ${paths.runDir}: nothing to adopt`);
  const found = new Map<string, { pid: number; fd: number }>();
  for (const p of rec.processes) {
    const fd = openVerified(p.pid, p.startTicks);
    if (fd !== undefined) found.set(p.role, { pid: p.pid, fd });
  }
  const vmm = found.get('vmm');
  const dd = found.get('driver-domain');
  const keeperProc = found.get('keeper');
  // The vmm's fd table: the vmm's own, or its keeper's (CLONE_FILES: the same table).
  const vmmSide = vmm ?? keeperProc;
  const take = (from: { pid: number; fd: number } | undefined, n: number, what: string): number => {
    if (!from) throw new AdoptError(`cannot take ${what}: no component that holds it is running`);
    try {
      return pidfd.pidfdGetfd(from.fd, n);
    } catch (e) {
      throw new AdoptError(`cannot take ${what} (fd ${n}) from pid ${from.pid}: ${(e as Error).message}`);
    }
  };
  const any = vmmSide ?? dd;
  if (!vmmSide) throw new AdoptError('the vmm and its keeper are gone: the guest\'s CPU state is lost');
  const ramFd = take(any, FD.RAM, 'guest RAM');
  const stateFd = take(any, FD.STATE, 'the state memfd');
  const serialFd = take(any, FD.SERIAL_OUT, 'the serial output');
  const configFd = take(any, FD.CONFIG, 'the configuration');
  const snapFd = take(vmmSide, FD.SNAPSHOT, 'the snapshot memfd');
  const cfg = readConfigFd(configFd);
  const devices: HeldDevice[] = deviceList(cfg).map((d) => {
    const fds = deviceFds(d.index, d.queues);
    const side = vmmSide ?? dd;
    let backendFd: number;
    if (dd) backendFd = take(dd, fds.backend, `device ${d.index}'s backend`);
    else if (d.kind === 'blk') {
      const disk = cfg.disks[d.index];
      backendFd = FileBlockBackend.open(disk.path, { readOnly: disk.readOnly, id: `tsvmm-disk${d.index}`, cache: disk.cache }).fd;
    } else backendFd = openTap(cfg.nets[d.index - cfg.disks.length].tap);
    return {
      ...d, backendFd,
      kick: fds.kick.map((fd, q) => take(side, fd, `device ${d.index} queue ${q}'s kick eventfd`)),
      call: fds.call.map((fd, q) => take(side, fd, `device ${d.index} queue ${q}'s call eventfd`)),
    };
  });
  // Is the vmm running the guest, or still restoring it (the supervisor died during a recovery)?
  const snap = SnapshotView.map(snapFd, cfg.cpus, true);
  const vmmRunning = vmm !== undefined && snap.state === SnapState.ARMED && snap.vmmPid === vmm.pid;
  // Does the driver-domain serve? Its heartbeat moves every 20 ms.
  const page = mapDevicePage(stateFd);
  let driverDomainServing = false;
  if (dd) {
    const hb = page.heartbeat(Component.DriverDomain);
    for (let i = 0; i < 10 && !driverDomainServing; i++) { await sleep(15); driverDomainServing = page.heartbeat(Component.DriverDomain) !== hb; }
  }
  // Each one's adoption channel (contracts/orphan.ts): the end it holds for us.
  const channel = (p: { pid: number; fd: number } | undefined, what: string) => {
    if (!p) return undefined;
    try { return pidfd.pidfdGetfd(p.fd, FD.ADOPT_PEER); } catch (e) {
      log(`cannot take the ${what}'s adoption channel (fd ${FD.ADOPT_PEER}) from pid ${p.pid}: ${(e as Error).message}; its messages are lost`);
      return undefined;
    }
  };
  const keepers = keeperProc ? [keeperProc.pid] : [];
  // The keeper is watched by pid (recovery/supervisor.ts trackKeeper); its pidfd here is not needed.
  if (keeperProc && keeperProc !== vmmSide) fs.closeSync(keeperProc.fd);
  const t0Env = process.env.TSVMM_ADOPT_T0;
  const adoption: Adoption = {
    fds: { ramFd, stateFd, serialFd, snapFd, configFd, devices },
    vmm: vmm && new AdoptedProcess(vmm.pid, vmm.fd, channel(vmm, 'vmm')).asChild(), vmmRunning,
    driverDomain: dd && new AdoptedProcess(dd.pid, dd.fd, channel(dd, 'driver-domain')).asChild(), driverDomainServing,
    keepers,
    cause: process.env.TSVMM_ADOPT_CAUSE || 'unknown',
    t0: t0Env && /^\d+$/.test(t0Env) ? BigInt(t0Env) : process.hrtime.bigint(),
    runId: rec.runId, supervisors: rec.supervisors, startedAt: rec.startedAt,
  };
  if (keeperProc && keeperProc === vmmSide) fs.closeSync(keeperProc.fd);
  log(`supervisor died (${adoption.cause}); adopting VM ${cfg.name}${vmm ? '' : ' (its vmm is gone)'}`);
  return { cfg, adoption };
}

/** The whole adoption; resolves with the VM's result when it ends. */
export async function adopt(name: string, logger: Logger): Promise<RunResult> {
  const log = (line: string) => logger.info(line);
  const paths = vmPaths(name);
  const live = readSupervisorPid(name);
  if (live !== undefined && live !== process.pid) return { code: 0, reason: `VM ${name} already has a supervisor (pid ${live})` };
  let sup: Supervisor;
  try {
    const { cfg, adoption } = await gather(paths, log);
    const rec = readRunRecord(paths)!;
    sup = new Supervisor(cfg, {
      logger, adopted: adoption, standby: rec.standby, hangTimeoutMs: rec.hangTimeoutMs,
      user: rec.user || undefined, confine: !rec.unconfined,
    });
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => sup.stop(`stopped by ${sig}`));
    sup.start();
    if (rec.stop) sup.finishStop(rec.stop);
  } catch (e) {
    const why = e instanceof AdoptError ? e.message : (e as Error).stack ?? String(e);
    return abandon(name, paths, `could not adopt VM ${name}: ${why}`);
  }
  return sup.done;
}

/**
 * Adoption failed: end what is left of the VM completely (no orphan, no stale runtime dir) and
 * say so. The components in the run record are killed through verified pidfds.
 */
function abandon(name: string, paths: VmPaths, reason: string): RunResult {
  const rec = readRunRecord(paths);
  for (const p of rec?.processes ?? []) {
    const fd = openVerified(p.pid, p.startTicks);
    if (fd !== undefined) { pidfd.pidfdSignal(fd, os.constants.signals.SIGKILL); fs.closeSync(fd); }
  }
  fs.rmSync(paths.runDir, { recursive: true, force: true });
  // Without a record there are no pids to end: the vmm and driver-domain end by themselves once
  // no one has adopted them (contracts/orphan.ts).
  if (!rec) return { code: 1, reason: `${reason}; the VM ${name} ends: its vmm and driver-domain once their orphan timeout (TSVMM_ORPHAN_TIMEOUT_MS) passes` };
  return { code: 1, reason: `${reason}; the VM ${name} was ended (nothing of it is left running)` };
}

export { describeExit };
