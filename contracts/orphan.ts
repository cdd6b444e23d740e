/**
 * A component whose supervisor died (SIGKILL, a crash) keeps the guest running and gets a new
 * supervisor, instead of becoming an invisible orphan:
 *   - its IPC channel closes ('disconnect'); it takes the adoption lock (<runtime>/<name>/adopt.lock,
 *     an atomic mkdir: the vmm and the driver-domain both notice) and, if it got it, starts a new
 *     supervisor in adopt mode (recovery/adopt-main.ts), detached from the terminal;
 *   - it connects to that supervisor's socket (<runtime>/<name>/supervisor.sock), says who it is
 *     (ComponentMessage.orphan) and from then on sends its messages there, framed (4-byte
 *     little-endian length, then the ComponentMessage), instead of over IPC; messages sent while
 *     no supervisor listened are queued;
 *   - if that supervisor dies too, the same again;
 *   - if no supervisor takes over within ORPHAN_TIMEOUT_MS, the component ends (the vmm first tells
 *     its keeper not to save and removes the stale runtime dir): never an orphan that holds a guest.
 * The new supervisor takes the fds it needs out of the components (pidfd_getfd) and watches them
 * with pidfds (recovery/adopt.ts).
 */
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { spawn } from 'child_process';
import { ComponentMessage, ComponentMessageCodec } from '../proto';
import { native } from '../native/kvm';
import { adoptLockPath, supervisorSocketPath } from './run-record';
import { readSupervisorPid, vmPaths } from './paths';
import { describeExit, NativePidfd } from './pidfd';
import { seccompMode } from './confinement';
import { processLogger } from './log';

/** How long a component whose supervisor died waits for a new one before it ends. */
const ORPHAN_TIMEOUT_MS = Number(process.env.TSVMM_ORPHAN_TIMEOUT_MS ?? 20_000);
const RECONNECT_MS = 25;
/** An adoption lock older than this is left over from an adopter that died: take it. */
const ADOPT_LOCK_STALE_MS = 10_000;

const pidfd = native as unknown as NativePidfd & { pidfdOpen(pid: number): number; keeperStop(): void };

interface Orphanable {
  role: string;
  name: string;
  /** May this process be adopted now (a standby that never took over may not: it just exits)? */
  adoptable: () => boolean;
  /** No supervisor came: end cleanly. */
  giveUp: (why: string) => void;
}

let me: Orphanable | undefined;
let socket: net.Socket | undefined;
let connected = false;
let lostAt = 0n;
let searching = false;
const queue: Buffer[] = [];
/** The current supervisor: its pid and a pidfd taken while it lived (to learn how it died). */
let supervisor: { pid: number; fd: number } | undefined;

function frame(msg: ComponentMessage): Buffer {
  const body = Buffer.from(ComponentMessageCodec.encode(msg));
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  return Buffer.concat([head, body]);
}

/** Sends `msg` to the supervisor: over IPC while we have it, else over the adopter's socket (queued until one listens). */
export function toSupervisor(msg: ComponentMessage): void {
  if (process.connected && process.send) {
    try {
      process.send({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') }, () => undefined);
      return;
    } catch { /* closing: fall through */ }
  }
  if (!me) return;
  const f = frame(msg);
  if (socket && connected) socket.write(f);
  else queue.push(f);
}

function watchSupervisorPid(pid: number): void {
  if (supervisor) { try { fs.closeSync(supervisor.fd); } catch { /* closed */ } }
  const fd = pid > 0 ? pidfd.pidfdOpen(pid) : -1;
  supervisor = fd >= 0 ? { pid, fd } : undefined;
}

/**
 * Installs the orphan handling in a vmm or driver-domain (call once, early). `o.adoptable()` is
 * asked when the supervisor is lost.
 */
export function watchSupervisor(o: Orphanable): void {
  me = o;
  watchSupervisorPid(process.ppid);
  process.on('disconnect', () => supervisorLost());
}

function log(line: string): void {
  processLogger().warn(line, { event: 'orphan' });
}

function supervisorLost(): void {
  if (!me || searching) return;
  connected = false;
  socket = undefined;
  if (!me.adoptable()) { me.giveUp('its supervisor died before it took over'); return; }
  // A confined component (contracts/confinement.ts) can neither start a supervisor (no fork, no
  // exec, no privileges to give it) nor reach one's socket (no socket call): it ends, as before
  // supervisors were recoverable. docs/architecture.md, "Confinement", says what would reconcile both.
  if (seccompMode() !== 'off') { me.giveUp('its supervisor died, and a confined component is not adopted (TSVMM_CONFINE=0 allows it)'); return; }
  searching = true;
  lostAt = process.hrtime.bigint();
  const cause = supervisor ? describeExit(pidfd.pidfdExit(supervisor.fd, supervisor.pid)) : 'unknown';
  const deadline = Date.now() + ORPHAN_TIMEOUT_MS;
  startAdopter(me, cause);
  const tryConnect = () => {
    if (!me) return;
    if (Date.now() > deadline) {
      searching = false;
      // Nobody will manage this VM again: leave no stale runtime dir behind.
      try { if (readSupervisorPid(me.name) === undefined) fs.rmSync(vmPaths(me.name).runDir, { recursive: true, force: true }); } catch { /* not ours */ }
      me.giveUp(`its supervisor died (${cause}) and no new one took over within ${ORPHAN_TIMEOUT_MS / 1000} s`);
      return;
    }
    const s = net.connect(supervisorSocketPath(vmPaths(me.name)));
    let opened = false;
    s.on('connect', () => {
      opened = true;
      socket = s;
      connected = true;
      searching = false;
      watchSupervisorPid(readSupervisorPid(me!.name) ?? 0);
      s.write(frame({ orphan: { component: me!.role, pid: process.pid } }));
      for (const f of queue.splice(0)) s.write(f);
    });
    s.on('error', () => undefined);
    // What the supervisor sends us (SupervisorMessage bytes), delivered as IPC would.
    let inbuf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      inbuf = Buffer.concat([inbuf, d]);
      while (inbuf.length >= 4 && inbuf.length >= 4 + inbuf.readUInt32LE(0)) {
        const n = inbuf.readUInt32LE(0);
        const body = inbuf.subarray(4, 4 + n);
        inbuf = inbuf.subarray(4 + n);
        process.emit('message', { pb: Buffer.from(body).toString('base64') }, undefined);
      }
    });
    s.on('close', () => {
      if (opened) { if (socket === s) supervisorLost(); return; }
      // Nobody listens yet: the adopter is starting (or died before listening: start another).
      if (me && !fs.existsSync(adoptLockPath(vmPaths(me.name)))) startAdopter(me, cause);
      setTimeout(tryConnect, RECONNECT_MS);
    });
  };
  tryConnect();
}

/** Takes the adoption lock and, if we got it, starts a supervisor that adopts this VM. */
function startAdopter(o: Orphanable, cause: string): void {
  const paths = vmPaths(o.name);
  const lock = adoptLockPath(paths);
  try {
    fs.mkdirSync(lock, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') { log(`cannot take the adoption lock ${lock}: ${(e as Error).message}`); return; }
    try {
      if (Date.now() - fs.statSync(lock).mtimeMs < ADOPT_LOCK_STALE_MS) return; // another one is adopting
      fs.rmSync(lock, { recursive: true, force: true });
      fs.mkdirSync(lock, { mode: 0o700 });
    } catch { return; }
  }
  const entry = process.env.TSVMM_ADOPT_ENTRY;
  if (!entry) { log('no adopter entry (TSVMM_ADOPT_ENTRY): cannot start a new supervisor'); fs.rmSync(lock, { recursive: true, force: true }); return; }
  const env: NodeJS.ProcessEnv = { ...process.env, TSVMM_ADOPT_CAUSE: cause, TSVMM_ADOPT_T0: String(lostAt), TSVMM_ADOPT_BY: `${o.role} ${process.pid}` };
  for (const k of ['NODE_CHANNEL_FD', 'NODE_CHANNEL_SERIALIZATION_MODE', 'TSVMM_STANDBY', 'TSVMM_RESTORE', 'TSVMM_STANDBY_FOR', 'TSVMM_VCPUS', 'UV_THREADPOOL_SIZE']) delete env[k];
  try {
    const child = spawn(process.execPath, [entry, o.name], { detached: true, stdio: ['ignore', 'inherit', 'inherit'], env, cwd: path.dirname(entry) });
    child.on('error', (e) => { log(`cannot start a new supervisor: ${e.message}`); fs.rmSync(lock, { recursive: true, force: true }); });
    child.unref();
  } catch (e) {
    log(`cannot start a new supervisor: ${(e as Error).message}`);
    fs.rmSync(lock, { recursive: true, force: true });
  }
}
