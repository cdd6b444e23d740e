/**
 * Spawning a component process with the fds the supervisor holds, and the
 * plumbing every lifecycle shares: the protobuf IPC in both directions and
 * the cause of each exit (`hang` when the hang watch killed it).
 */
import { ChildProcess, spawn, StdioOptions } from 'child_process';
import { componentEnv } from './component-env';
import * as fs from 'fs';
import { native } from '../native/kvm';
import { componentExecArgv, SpawnedComponent } from '../contracts/v8-flags';
import { ComponentMessage, ComponentMessageCodec, SupervisorMessage, SupervisorMessageCodec, guardChannel } from '../proto';
import { FD } from '../contracts/fds';
import { deviceStdio, HeldDevice } from './held-devices';
import { Confinement, ConfinedComponent, keepNetns, seccompKilled, spawnConfinement } from '../contracts/confinement';
import type { Logger } from '../contracts/log';
import { startPhase } from '../contracts/start-trace';

/** What the supervisor holds for the VM's whole life and hands every component at spawn. */
export interface HeldFds {
  readonly ramFd: number;
  readonly stateFd: number;
  readonly serialFd: number;
  /** The vmm's snapshot memfd (contracts/snapshot.ts). */
  readonly snapFd: number;
  /** The encoded VmConfig every component reads (FD.CONFIG, contracts/component-config.ts). */
  readonly configFd: number;
  readonly devices: HeldDevice[];
  /** What the vmm may not open itself (contracts/confinement.ts): /dev/kvm, the kernel, the initrd (-1: none). */
  readonly kvmFd: number;
  readonly kernelFd: number;
  readonly initrdFd: number;
  /** The priv-domain's API socket, bound and listening (supervisor/control.ts; -1 until then). */
  apiFd: number;
  /** The VM's log file (contracts/log.ts), opened once the state directory exists (-1 until then). */
  logFd: number;
  /** How every component is confined: the uid it runs as, its seccomp mode. */
  readonly confinement: Confinement;
}

export type ReadyMsg = Extract<ComponentMessage, { ready: unknown }>['ready'];

const exitCauses = new WeakMap<ChildProcess, string>();
const hangKilled = new WeakSet<ChildProcess>();
/** Children killed for a malformed IPC message. */
const badMessage = new WeakSet<ChildProcess>();

/** Why `child` exited, once it has: `hang`, `signal SIGxxx` or `exit code N`. */
export function exitCause(child: ChildProcess): string | undefined { return exitCauses.get(child); }

/** Kills a child the hang watch found hung: its exit is recorded with cause `hang`. */
export function killHung(child: ChildProcess): void {
  hangKilled.add(child);
  child.kill('SIGKILL');
}

/** The cause of `child`'s exit, once it has exited. */
export function whenExited(child: ChildProcess): Promise<string> {
  const seen = exitCauses.get(child);
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve) => child.once('exit', () => resolve(exitCauses.get(child) ?? 'exit')));
}

/** True once the child exited (or its exit is known). */
export function hasExited(child: ChildProcess): boolean {
  return exitCauses.has(child) || child.exitCode !== null || child.signalCode !== null;
}

/** Sends a SupervisorMessage to a component; a dead one is ignored (its exit is handled). */
export function sendTo(child: ChildProcess, msg: SupervisorMessage): void {
  if (!child.connected) return;
  try {
    child.send({ pb: Buffer.from(SupervisorMessageCodec.encode(msg)).toString('base64') }, () => undefined);
  } catch { /* it died */ }
}

export interface SpawnOptions {
  /** Which component: its V8 flags (contracts/v8-flags.ts) go before the script. */
  component: SpawnedComponent;
  /** The script to run with this Node, and its arguments (supervisor/component-entry.ts). */
  script: string[];
  stdio: StdioOptions;
  env: Record<string, string>;
  onMessage: (m: ComponentMessage) => void;
  onExit: (cause: string) => void;
  /** Adopt mode (supervisor/adopt.ts): a running process we did not start, instead of a new one. */
  adopted?: ChildProcess;
  /** Run as its uid/gid, with its seccomp mode (contracts/confinement.ts). */
  confinement: Confinement;
  /** Working directory (entered before the uid drops). */
  cwd?: string;
  /** For the line that says a component was killed by its seccomp filter. */
  name: string;
  logger: Logger;
}

/** Spawns a component process; messages arrive decoded, the exit with its cause. */
export function spawnProcess(o: SpawnOptions): ChildProcess {
  const component = o.component as ConfinedComponent;
  // The vmm and the driver-domain outlive a supervisor that dies: their adoption channel (contracts/orphan.ts).
  const pair = !o.adopted && (o.component === 'vmm' || o.component === 'driver-domain') ? native.socketPair() : undefined;
  let stdio = pair && Array.isArray(o.stdio) ? withAdoptionChannel(o.stdio, pair) : o.stdio;
  const jail = spawnConfinement(o.confinement, component, o.cwd, Array.isArray(stdio) ? stdio.length : 3);
  if (jail.netnsFd !== undefined && Array.isArray(stdio)) stdio = [...stdio, jail.netnsFd];
  let child: ChildProcess;
  try {
    child = o.adopted ?? spawn(jail.file, [...jail.args, ...componentExecArgv(o.component), ...o.script], {
      stdio, env: componentEnv({ ...jail.env, ...o.env }), uid: jail.uid, gid: jail.gid, cwd: o.cwd,
    });
  } finally {
    for (const fd of pair ?? []) fs.closeSync(fd);
  }
  // Its network namespace, once it runs, is the one the next vmm or driver-domain joins.
  if (!o.adopted) child.once('message', () => keepNetns(o.confinement, component, child.pid));
  child.on('error', () => undefined); // a failed spawn also exits
  const role = `${o.component}${o.env.TSVMM_STANDBY === '1' || o.env.TSVMM_STANDBY_FOR ? ' standby' : ''}`;
  if (!o.adopted) startPhase('supervisor', `spawned ${role} (pid ${child.pid})`);
  o.logger.debug(`${o.adopted ? 'adopted' : 'started'} ${o.component}${o.env.TSVMM_STANDBY === '1' || o.env.TSVMM_STANDBY_FOR ? ' standby' : ''} (pid ${child.pid})`,
    { event: 'spawn', target: o.component, targetPid: child.pid });
  child.on('exit', (code, signal) => {
    // An adopted process is not our child: its status may be unknown (supervisor/adopt.ts).
    const cause = hangKilled.has(child) ? 'hang' : badMessage.has(child) ? 'malformed message' : signal ? `signal ${signal}` : code === null ? 'exited, status unknown' : `exit code ${code}`;
    if (signal === 'SIGSYS') o.logger.error(seccompKilled(o.name, child.pid), { event: 'seccomp-kill', target: o.name, targetPid: child.pid });
    exitCauses.set(child, cause);
    o.onExit(cause);
  });
  // A garbled or truncated message means the sender is broken (and the channel may have lost the
  // lines after it): it is killed and recovered like any other failure, cause `malformed message`.
  const bad = (why: string) => {
    if (hasExited(child) || badMessage.has(child)) return;
    o.logger.warn(`${o.component} (pid ${child.pid}) sent a malformed message (${why}): killing it`, { event: 'malformed-message', target: o.component, targetPid: child.pid });
    badMessage.add(child);
    child.kill('SIGKILL');
  };
  guardChannel(child, bad);
  child.on('message', (m: { pb?: string }) => {
    if (typeof m?.pb !== 'string') { bad('not a {pb} envelope'); return; }
    let msg: ComponentMessage;
    try { msg = ComponentMessageCodec.decode(Buffer.from(m.pb, 'base64')); } catch (e) { bad(`undecodable: ${(e as Error).message}`); return; }
    if ('ready' in msg && msg.ready) startPhase('supervisor', `${role} ready received (pid ${child.pid})`);
    o.onMessage(msg);
  });
  return child;
}

/** `stdio` with both ends of a new adoption channel at FD.ADOPT and FD.ADOPT_PEER. */
function withAdoptionChannel(stdio: StdioOptions & unknown[], [a, b]: [number, number]): StdioOptions {
  const out = [...stdio];
  while (out.length <= FD.ADOPT_PEER) out.push('ignore');
  out[FD.ADOPT] = a;
  out[FD.ADOPT_PEER] = b;
  return out as StdioOptions;
}

/**
 * The stdio of a vmm or driver-domain: 3 IPC, 4 RAM, 5 state, 6 serial output, the vmm's snapshot
 * memfd, /dev/kvm, kernel and initrd, then the device fds (contracts/fds.ts). The driver-domain gets the disks and TAPs, and no stdin.
 */
export function componentStdio(held: HeldFds, name: 'vmm' | 'driver-domain'): StdioOptions {
  const stdio: (number | 'ignore' | 'inherit' | 'ipc')[] = ['inherit', 'inherit', 'inherit', 'ipc', held.ramFd, held.stateFd, held.serialFd];
  stdio[FD.SNAPSHOT] = name === 'vmm' ? held.snapFd : 'ignore';
  stdio[FD.CONFIG] = held.configFd;
  if (name === 'vmm') {
    stdio[FD.KVM] = held.kvmFd;
    stdio[FD.KERNEL] = held.kernelFd >= 0 ? held.kernelFd : 'ignore';
    stdio[FD.INITRD] = held.initrdFd >= 0 ? held.initrdFd : 'ignore';
  }
  deviceStdio(held.devices, name === 'driver-domain').forEach((fd, i) => { if (i >= stdio.length) stdio[i] = fd; });
  // (deviceStdio filled every slot below DEVICE_FD_BASE: no hole, which spawn would skip.)
  stdio[FD.LOG] = held.logFd >= 0 ? held.logFd : 'ignore';
  if (name !== 'vmm') stdio[0] = 'ignore';
  return stdio;
}

/**
 * tsvmm update's first step, for any component with a standby: the standby running now (started
 * from the build installed then) goes, and `spawn` starts one of the build installed now, handing
 * it the callback its ready report (undefined) or its failure (why) calls. Resolves with that.
 */
export async function replaceStandby(stale: ChildProcess | undefined, spawn: (settled: (failure: string | undefined) => void) => void): Promise<string | undefined> {
  if (stale) {
    stale.kill('SIGKILL');
    await whenExited(stale);
  }
  return new Promise((resolve) => spawn(resolve));
}
