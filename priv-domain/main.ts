/**
 * The priv-domain process: the VM's management plane (like Xen's Dom0 toolstack).
 *   - the management API (priv-domain/api.ts, schema priv-domain/openapi.yaml) on
 *     <runtime>/<name>/api.sock, mode 0600 in a 0700 directory;
 *   - the durable store (contracts/store.ts): configuration, lifecycle events, labels,
 *     annotations, idempotency records;
 *   - the console: copies the shared console ring (contracts/control-page.ts) to the console log and
 *     serves `tsvmm console`;
 *   - Prometheus metrics (priv-domain/metrics.ts) on --metrics-addr and at GET /metrics.
 * The supervisor spawns it (supervisor/control.ts) and restarts it when it dies. Nothing the guest
 * needs goes through it: when it is down the guest and its I/O keep running. A new one reloads
 * the store, re-attaches to the shared pages, resumes the console log from the shared offset
 * and gets the full component status from the supervisor.
 */
import { installTestHooksIfAsked } from '../contracts/process'; // first: no debugger, before anything else runs
import './lower-priority'; // second: below the guest's path in CPU priority before its start's heavy part
import * as fs from 'fs';
import * as path from 'path';
import * as http from 'http';
import * as net from 'net';
import { URL } from 'url';
import {
  ComponentMessage, ComponentMessageCodec, ComponentStatus, ControlReply, HangKillRecord, RecoveryRecord, StandbyStatus, SupervisorMessage,
  SupervisorMessageCodec, VmConfig, VmConfigCodec,
} from '../proto';
import { FD } from '../contracts/fds';
import { ControlPage } from '../contracts/control-page';
import { Component, HEARTBEAT_MS, mapDevicePage, StatePage } from '../contracts/state-page';
import { deviceList } from '../contracts/device-list';
import { DEFAULT_METRICS_ADDR, METRICS_PREVIOUS_ENV, portOf, vmPaths } from '../contracts/paths';
import { confineSelf } from '../contracts/confinement';
import { native } from '../native/kvm';
import { PlatformPage, PLATFORM_PAGE_SIZE } from '../contracts/platform-page';
import { Store } from '../contracts/store';
import { Metrics, HEARTBEAT_COMPONENTS } from './metrics';
import { ApiError, CommandArgs, createApiHandler } from './api';
import { componentConfig } from '../contracts/component-config';
import { componentLogger, processLogger } from '../contracts/log';
import { startNode, startPhase } from '../contracts/start-trace';
import { trimMallocOnceSettled } from '../contracts/malloc-trim';

const CONSOLE_POLL_MS = 50;
const COMMAND_TIMEOUT_MS = 5000;
const SNAPSHOT_TIMEOUT_MS = 120_000;
/** When the VM ends: how long answers still on their way out (not a console's follow) may take. */
const FINISH_DRAIN_MS = 500;
/** A console writer idle this long gives up the console's input to the next one. */
const CONSOLE_WRITER_IDLE_MS = 10_000;
/** console.log is rotated past this size (env TSVMM_CONSOLE_LOG_MAX, bytes); this many old ones are kept. */
const consoleLogMax = Number(process.env.TSVMM_CONSOLE_LOG_MAX) > 0 ? Number(process.env.TSVMM_CONSOLE_LOG_MAX) : 16 * 1024 * 1024;
const CONSOLE_LOG_KEEP = 3;

function send(msg: ComponentMessage): void {
  // The supervisor may be gone (killed): a closed channel is not this process's failure, so no throw and no EPIPE event.
  if (process.connected) process.send?.({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') }, undefined, {}, () => undefined);
}

/** HOST:PORT -> [host, port]; "none" -> undefined. */
export function parseMetricsAddr(addr: string): { host: string; port: number } | undefined {
  if (addr === 'none') return undefined;
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:]+):(\d{1,5})$/.exec(addr);
  if (!m || Number(m[2]) > 65535) throw new Error(`invalid metrics address "${addr}": expected HOST:PORT (port 0: any free port) or none`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

function main(): void {
  const cfg = componentConfig();
  if (!cfg) {
    process.stderr.write('tsvmm priv-domain: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  const log = componentLogger('priv-domain');
  startNode('priv-domain');
  startPhase('priv-domain', 'modules loaded (main)');
  const runId = process.env.TSVMM_RUN_ID ?? `${process.ppid}`;
  const startedAt = Date.now() / 1000;
  const paths = vmPaths(cfg.name);
  process.umask(0o077);
  // The supervisor starts us in the VM's state directory (recovery/control.ts), owned by the uid we
  // run as; the roots above it may not be ours to list.
  const here = (file: string) => path.basename(file);

  // Durable store first: nothing is acknowledged before it is open. A state directory that cannot
  // hold it (a full disk, say) degrades the store to memory, with a warning, instead of a crash loop:
  // the API and the guest go on; what is set through the API is then lost with this process.
  let store: Store;
  let newRun = false;
  try {
    store = Store.open(here(paths.db));
    newRun = store.recordRun(cfg.name, cfg, runId);
  } catch (e) {
    log.error(`the store ${paths.db} is unusable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): ` +
      'running on a store in memory; labels, annotations and events of this run are not kept');
    store = Store.open(':memory:');
    newRun = store.recordRun(cfg.name, cfg, runId);
  }

  // Shared pages (the state memfd is our fd 5).
  const control = ControlPage.tryMap(FD.STATE);
  // The UART's receive ring (console input), in the platform page.
  let platform: PlatformPage | undefined;
  try {
    platform = new PlatformPage(native.mmap(FD.STATE, PLATFORM_PAGE_SIZE, 0, true));
    platform.check();
  } catch { platform = undefined; }
  let writer: { session: string; last: number } | undefined;
  const consoleInput = (data: Buffer, session: string, release: boolean): number => {
    if (!platform) throw new ApiError(503, 'this VM has no serial input ring');
    const now = Date.now();
    if (writer && writer.session !== session && now - writer.last < CONSOLE_WRITER_IDLE_MS) {
      throw new ApiError(409, `another console session is typing (${((now - writer.last) / 1000).toFixed(1)} s ago): one writer at a time; it is released after ${CONSOLE_WRITER_IDLE_MS / 1000} s idle`);
    }
    writer = release ? undefined : { session, last: now };
    return data.length ? platform.rxPush(data) : 0;
  };
  let statePage: StatePage | undefined;
  try {
    statePage = mapDevicePage(FD.STATE);
  } catch { statePage = undefined; }
  const devices = deviceList(cfg);

  // Supervisor status and commands.
  let components: ComponentStatus[] | undefined;
  const recoveries: RecoveryRecord[] = [];
  const hangKills: HangKillRecord[] = [];
  let standbys: StandbyStatus[] = [];
  let guestState = '';
  let nextId = 1;
  const pending = new Map<number, { resolve: (r: ControlReply) => void; timer: NodeJS.Timeout }>();
  /** API requests whose answer has not left yet, and what to do once there are none. */
  let inFlight = 0;
  let drained: (() => void) | undefined;
  process.on('message', (m: { pb?: string }) => {
    if (typeof m?.pb !== 'string') return;
    let msg: SupervisorMessage;
    try { msg = SupervisorMessageCodec.decode(Buffer.from(m.pb, 'base64')); } catch { return; }
    if ('status' in msg && msg.status) {
      const st = msg.status;
      components = st.components;
      standbys = st.standbys ?? [];
      guestState = st.guestState ?? '';
      if (st.full) { recoveries.length = 0; hangKills.length = 0; }
      recoveries.push(...st.recoveries);
      hangKills.push(...st.hangKills ?? []);
      // Every recovery, hang kill (with its evidence) and standby takeover becomes a durable event.
      try {
        for (const h of st.hangKills ?? []) store.addHangKill(runId, h);
        for (const t of st.takeovers ?? []) store.addTakeover(runId, t);
        for (const rec of st.recoveries) store.addRecovery(runId, rec);
      } catch { /* a store in trouble: the metrics still have them */ }
    } else if ('reply' in msg && msg.reply) {
      const p = pending.get(msg.reply.id);
      if (p) { pending.delete(msg.reply.id); clearTimeout(p.timer); p.resolve(msg.reply); }
    } else if ('finished' in msg && msg.finished) {
      // The VM has ended: this is its last record.
      const { code, reason } = msg.finished;
      store.tx(() => store.addEvent(runId, 'exited', { code, reason }));
      store.close();
      // Answers still on their way out go first (a `snapshot --stop`'s: the VM ends right after
      // it), for at most FINISH_DRAIN_MS.
      if (inFlight === 0) process.exit(0);
      drained = () => process.exit(0);
      setTimeout(() => process.exit(0), FINISH_DRAIN_MS);
    }
  });
  // The supervisor gone means the VM is gone: so are we.
  process.on('disconnect', () => process.exit(0));
  const command = (cmd: string, args: CommandArgs = {}): Promise<ControlReply> => new Promise((resolve, reject) => {
    const id = nextId++;
    // A snapshot writes guest RAM: give it longer.
    const ms = cmd === 'snapshot' || cmd === 'update' ? SNAPSHOT_TIMEOUT_MS : COMMAND_TIMEOUT_MS;
    const timer = setTimeout(() => { pending.delete(id); reject(new ApiError(504, `the supervisor did not answer "${cmd}" within ${ms} ms`)); }, ms);
    pending.set(id, {
      timer,
      resolve: (r) => (r.ok ? resolve(r) : reject(new ApiError(/unknown|not running|not killed|not empty|not an absolute|in progress|try again|refused/.test(r.error ?? '') ? 409 : 500, r.error || `${cmd} failed`))),
    });
    send({ controlRequest: { id, command: cmd, component: args.component ?? '', signal: args.signal ?? '', dir: args.dir ?? '', stop: args.stop ?? false, force: args.force ?? false, timeoutMs: args.timeoutMs ?? 0 } });
  });

  // Heartbeats: ours, and the age of everyone's.
  const beats = new Map<string, { value: number; changed: number }>();
  const sampleBeats = () => {
    if (!statePage) return;
    const now = performance.now();
    for (const [c, name] of HEARTBEAT_COMPONENTS) {
      const v = statePage.heartbeat(c);
      const b = beats.get(name);
      if (!b || b.value !== v) beats.set(name, { value: v, changed: b ? now : now });
    }
  };
  setInterval(() => { statePage?.beat(Component.PrivDomain); sampleBeats(); }, HEARTBEAT_MS);
  statePage?.beat(Component.PrivDomain);

  // Console: ring -> log file, resuming from the shared offset a previous priv-domain reached.
  // The log is capped: past CONSOLE_LOG_MAX bytes it is rotated (console.log.1 .. .N, oldest
  // dropped); each run starts with a marker line, so runs that reuse a name stay apart.
  let consoleFd: number | undefined;
  let consoleSize = 0;
  const consoleLog = here(paths.consoleLog);
  const openConsole = () => {
    try {
      consoleFd = fs.openSync(consoleLog, 'a', 0o600);
      consoleSize = fs.fstatSync(consoleFd).size;
    } catch { consoleFd = undefined; }
  };
  const rotateConsole = () => {
    if (consoleFd !== undefined) fs.closeSync(consoleFd);
    for (let i = CONSOLE_LOG_KEEP - 1; i >= 1; i--) {
      try { fs.renameSync(`${consoleLog}.${i}`, `${consoleLog}.${i + 1}`); } catch { /* none */ }
    }
    try { fs.renameSync(consoleLog, `${consoleLog}.1`); } catch { /* none */ }
    openConsole();
  };
  const writeConsole = (text: string | Uint8Array) => {
    const data = typeof text === 'string' ? Buffer.from(text) : text;
    if (consoleFd === undefined) return;
    if (consoleSize > 0 && consoleSize + data.length > consoleLogMax) rotateConsole();
    if (consoleFd === undefined) return;
    consoleSize += fs.writeSync(consoleFd, data);
  };
  openConsole();
  if (consoleFd === undefined) log.warn(`cannot open the console log ${paths.consoleLog}: \`tsvmm console\` still serves the ring`);
  let consoleFailed = false;
  try {
    if (newRun) writeConsole(`${consoleSize > 0 ? '\n' : ''}[tsvmm: run ${runId} of VM ${cfg.name} started ${new Date().toISOString()}]\n`);
  } catch { /* a full disk: reported by the pump */ }
  const pumpConsole = () => {
    if (!control || consoleFd === undefined) return;
    const { data, next, lost } = control.consoleRead(control.consoleLogged);
    try {
      if (lost) writeConsole(`\n[tsvmm: ${lost} bytes of console output were lost]\n`);
      if (data.length) writeConsole(data);
      consoleFailed = false;
    } catch (e) {
      // A full disk: the log misses these bytes (the ring still has them for `tsvmm console`).
      if (!consoleFailed) log.warn(`writing the console log failed (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): it misses output until the disk has room`);
      consoleFailed = true;
    }
    control.consoleLogged = next;
  };
  setInterval(pumpConsole, CONSOLE_POLL_MS);

  let metricsAddr = 'none';
  const metrics = new Metrics({
    cfg, devices, control, statePage,
    status: () => components && { components, recoveries: [], full: false, paused: control?.pauseRequested ?? false },
    recoveries: () => recoveries,
    heartbeatAges: () => {
      const now = performance.now();
      const out = new Map<string, number>();
      for (const [name, b] of beats) if (b.value !== 0) out.set(name, (now - b.changed) / 1000);
      return out;
    },
    consoleBytes: () => control?.consoleHead ?? 0,
    serialDropped: () => control?.serialDropped ?? 0,
    hangKills: () => hangKills,
    standbys: () => standbys,
    guestState: () => guestState,
  });

  const consoleHandler = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    if (!control) throw new ApiError(503, 'this VM has no console ring');
    const follow = ['1', 'true', 'yes'].includes(url.searchParams.get('follow') ?? '');
    const sinceText = url.searchParams.get('since');
    let pos: number;
    if (sinceText === null) pos = control.consoleTail();
    else if (/^\d+$/.test(sinceText) && Number(sinceText) <= 0xffffffff) pos = Number(sinceText);
    else throw new ApiError(400, 'since must be a console position (0 to 2^32-1)');
    const first = control.consoleRead(pos);
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'X-Console-Start': String((first.next - first.data.length) >>> 0), 'X-Console-Lost': String(first.lost) });
    res.write(first.data);
    pos = first.next;
    if (!follow) { res.end(); return; }
    const t = setInterval(() => {
      const r = control.consoleRead(pos);
      if (r.data.length) res.write(r.data);
      pos = r.next;
    }, CONSOLE_POLL_MS);
    const done = () => clearInterval(t);
    res.on('close', done);
    req.on('close', done);
  };

  const handler = createApiHandler({
    cfg, runId, store, control, startedAt,
    metricsAddr: () => metricsAddr,
    components: () => components,
    command,
    metrics: async () => ({ text: await metrics.text(), contentType: metrics.contentType }),
    onRequest: (method, code) => metrics.apiRequests.inc({ method, code: String(code) }),
    consoleInput,
  }, consoleHandler);

  // The API socket: the supervisor bound it (mode 0600 in a 0700 directory, both the VM owner's:
  // node cannot read SO_PEERCRED, so the file permissions are what keeps other users out) and
  // passes it listening; we may run as another uid and could not create it there.
  const server = http.createServer((req, res) => {
    inFlight++;
    res.once('close', () => { if (--inFlight === 0) drained?.(); });
    return handler(req, res);
  });
  server.keepAliveTimeout = 1000;
  server.on('clientError', (_e, sock: net.Socket) => {
    if (sock.writable) sock.end('HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"error": "malformed HTTP request"}\n');
  });
  // From here on it serves clients: nothing but its allowlist (contracts/confinement.ts).
  startPhase('priv-domain', 'store open, API and metrics set up');
  confineSelf('priv-domain');
  server.listen({ fd: FD.API_LISTEN }, () => startMetrics());
  installTestHooksIfAsked('priv-domain');

  const startMetrics = () => {
    let target: { host: string; port: number } | undefined;
    try {
      target = parseMetricsAddr(cfg.metricsAddr || DEFAULT_METRICS_ADDR);
    } catch (e) {
      log.error((e as Error).message);
    }
    const ready = () => {
      startPhase('priv-domain', 'ready', { cpu: false });
      log.debug(`serving the API on ${paths.socket}, metrics on ${metricsAddr}`, { metricsAddr });
      send({ ready: { component: 'priv-domain', pid: process.pid, metricsAddr } });
      trimMallocOnceSettled();
    };
    if (!target) { ready(); return; }
    const ms = http.createServer((req, res) => {
      const p = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' || (p !== '/metrics' && p !== '/')) {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('tsvmm: metrics are at GET /metrics\n');
        return;
      }
      metrics.text().then((text) => { res.writeHead(200, { 'Content-Type': metrics.contentType }); res.end(text); },
        (e: Error) => { res.writeHead(500); res.end(`${e.message}\n`); });
    });
    // Port 0 ("any free port", the default): a restarted priv-domain first tries the port the
    // last one had (the supervisor passes it), so scrapers keep their target across recoveries.
    const previous = target.port === 0 ? portOf(process.env[METRICS_PREVIOUS_ENV]) : undefined;
    let port = previous ?? target.port;
    ms.on('error', (e) => {
      if (port !== target!.port) { port = target!.port; ms.listen(port, target!.host); return; }
      // A fixed port another process holds, say: the API's GET /metrics still serves them.
      log.warn(`metrics endpoint ${target!.host}:${target!.port} unavailable (${(e as NodeJS.ErrnoException).code ?? e.message}); \`tsvmm metrics\` still works`);
      metricsAddr = 'none';
      ready();
    });
    ms.on('listening', () => {
      const a = ms.address() as net.AddressInfo;
      metricsAddr = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
      ready();
    });
    ms.listen(port, target.host);
  };
}

try {
  main();
} catch (e) {
  send({ fatal: { message: `priv-domain: ${(e as Error).message}` } });
  setTimeout(() => process.exit(1), 20);
}
