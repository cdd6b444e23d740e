/**
 * A component whose supervisor died (SIGKILL, a crash) keeps the guest running and is adopted by a
 * new supervisor, which the VM's guardian starts (supervisor/guardian-main.ts). The component itself
 * starts nothing and opens nothing, so it can run confined (contracts/confinement.ts: no fork, no
 * exec, no socket call, an unprivileged uid):
 *   - at spawn the supervisor gives it both ends of a socketpair, its adoption channel (FD.ADOPT,
 *     its own end, and FD.ADOPT_PEER, which it only holds for whoever adopts it: the adopting
 *     supervisor, root, takes a copy with pidfd_getfd(2), supervisor/adopt.ts);
 *   - its IPC channel closes ('disconnect'): from then on it sends its messages on FD.ADOPT, framed
 *     (4-byte little-endian length, then the ComponentMessage); the kernel keeps them until a
 *     supervisor reads them;
 *   - the adopter's first message on that channel is SupervisorMessage.adopted{supervisorPid}; the
 *     ones after it are delivered as IPC messages would be. The component watches that supervisor
 *     (a pidfd, polled) to learn when it is orphaned again;
 *   - if no supervisor adopts it within ORPHAN_TIMEOUT_MS (the guardian died too), it ends (the vmm
 *     first tells its keeper not to save): never an orphan that holds a guest.
 */
import * as fs from 'fs';
import * as net from 'net';
import { ComponentMessage, ComponentMessageCodec, SupervisorMessageCodec } from '../proto';
import { native } from '../native/kvm';
import { readSupervisorPid, vmPaths } from './paths';
import { FD } from './fds';
import { seccompMode } from './confinement';
import { processLogger } from './log';

/** How long a component whose supervisor died waits for a new one before it ends. */
const ORPHAN_TIMEOUT_MS = Number(process.env.TSVMM_ORPHAN_TIMEOUT_MS ?? 20_000);
/** How often an adopted component checks that its supervisor (not its parent: no 'disconnect') lives. */
const WATCH_MS = 100;

const pidfd = native as unknown as { pidfdOpen(pid: number): number; pollIn(fd: number, timeoutMs: number): number };

interface Orphanable {
  role: string;
  name: string;
  /** May this process be adopted now (a standby that never took over may not: it just exits)? */
  adoptable: () => boolean;
  /** No supervisor came: end cleanly. */
  giveUp: (why: string) => void;
}

let me: Orphanable | undefined;
/** FD.ADOPT, once the supervisor that spawned us is gone. */
let channel: net.Socket | undefined;
let orphaned = false;
let giveUpTimer: NodeJS.Timeout | undefined;
/** The adopting supervisor we watch: its pidfd and the timer that polls it. */
let watched: { fd: number; timer: NodeJS.Timeout } | undefined;

function frame(msg: ComponentMessage): Buffer {
  const body = Buffer.from(ComponentMessageCodec.encode(msg));
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  return Buffer.concat([head, body]);
}

/** Sends `msg` to the supervisor: over IPC while we have it, else on the adoption channel. */
export function toSupervisor(msg: ComponentMessage): void {
  if (process.connected && process.send) {
    try {
      process.send({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') }, () => undefined);
      return;
    } catch { /* closing: fall through */ }
  }
  if (me && channel && orphaned) channel.write(frame(msg));
}

/**
 * Installs the orphan handling in a vmm or driver-domain (call once, early: before the component
 * confines itself, since wrapping the channel's fd makes calls the allowlists need not hold).
 * `o.adoptable()` is asked when the supervisor is lost.
 */
export function watchSupervisor(o: Orphanable): void {
  me = o;
  try {
    channel = new net.Socket({ fd: FD.ADOPT, readable: true, writable: true });
  } catch {
    channel = undefined; // spawned without one: it cannot be adopted
  }
  if (channel) {
    channel.unref();
    channel.on('error', () => undefined);
    let inbuf = Buffer.alloc(0);
    channel.on('data', (d: Buffer) => {
      inbuf = Buffer.concat([inbuf, d]);
      while (inbuf.length >= 4 && inbuf.length >= 4 + inbuf.readUInt32LE(0)) {
        const body = inbuf.subarray(4, 4 + inbuf.readUInt32LE(0));
        inbuf = inbuf.subarray(4 + body.length);
        let adopter = 0;
        try {
          const m = SupervisorMessageCodec.decode(body);
          if ('adopted' in m && m.adopted) adopter = m.adopted.supervisorPid;
        } catch { /* delivered, and refused, as IPC would be */ }
        if (adopter) adoptedBy(adopter);
        else process.emit('message', { pb: Buffer.from(body).toString('base64') }, undefined);
      }
    });
  }
  process.on('disconnect', () => supervisorLost());
}

function log(line: string): void {
  processLogger().warn(line, { event: 'orphan' });
}

function unwatch(): void {
  if (!watched) return;
  clearInterval(watched.timer);
  try { fs.closeSync(watched.fd); } catch { /* closed */ }
  watched = undefined;
}

function supervisorLost(): void {
  if (!me || giveUpTimer) return;
  orphaned = true;
  unwatch();
  if (!me.adoptable()) { me.giveUp('its supervisor died before it took over'); return; }
  if (!channel) { me.giveUp('its supervisor died, and it has no adoption channel'); return; }
  giveUpTimer = setTimeout(() => {
    giveUpTimer = undefined;
    if (!me) return;
    // Nobody will manage this VM again: leave no stale runtime dir behind (a confined component
    // can neither reach it nor make the calls: the guardian's adopter removes it when it gives up).
    if (seccompMode() === 'off') {
      try { if (readSupervisorPid(me.name) === undefined) fs.rmSync(vmPaths(me.name).runDir, { recursive: true, force: true }); } catch { /* not ours */ }
    }
    me.giveUp(`its supervisor died and no new one took over within ${ORPHAN_TIMEOUT_MS / 1000} s`);
  }, ORPHAN_TIMEOUT_MS);
}

/** A supervisor adopted us: stop counting down, and watch it in turn. */
function adoptedBy(pid: number): void {
  if (giveUpTimer) { clearTimeout(giveUpTimer); giveUpTimer = undefined; }
  unwatch();
  const fd = pidfd.pidfdOpen(pid);
  if (fd < 0) { log(`the supervisor that adopted it (pid ${pid}) is gone already`); supervisorLost(); return; }
  const timer = setInterval(() => {
    if (pidfd.pollIn(fd, 0) === 0) return;
    unwatch();
    supervisorLost();
  }, WATCH_MS);
  timer.unref();
  watched = { fd, timer };
}
