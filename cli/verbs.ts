/**
 * The `tsvmm` verbs that talk to a running VM through its priv-domain's API
 * (priv-domain/openapi.yaml): ls, ps, kill, pause, resume, stop, console, metrics, events,
 * label, annotate. Each finds its VM by --name under the runtime directory
 * (contracts/paths.ts); with exactly one VM running, --name may be left out.
 */
import type { Privileges } from '../proto';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { parseArgs } from 'util';
import { DEFAULT_STOP_TIMEOUT_MS } from '../contracts/exit-codes';
import { badName, listRuntimeNames, listStateNames, readSupervisorPid, runRecordPath, vmPaths } from '../contracts/paths';
import { inject, INJECT_COMPONENTS, INJECT_KINDS, InjectComponent, InjectKind, InjectResult, kindsFor, pidsFrom } from './inject';

export class VerbError extends Error {
  constructor(message: string, readonly status = 1) { super(message); }
}

/** --help: print `text` on stdout, exit 0. */
export class HelpRequest extends Error {
  constructor(readonly text: string) { super('help'); }
}

export const VERBS = ['ls', 'ps', 'kill', 'inject', 'pause', 'resume', 'stop', 'snapshot', 'update', 'console', 'metrics', 'events', 'label', 'annotate', 'rm'];

export const VERBS_HELP = `
  ls         list VMs (--all: also those that are not running)
  ps         the VM's components: pid, state, uptime, restarts, last recovery
  kill       tsvmm kill COMPONENT [--signal SIG]: signal vmm, driver-domain, priv-domain or keeper
  inject     tsvmm inject COMPONENT KIND [--seed N]: inject one fault (a bit flip in a register, memory, code or a
             shared structure, a garbled message, a cut disk, a signal) and print what it changed (docs/fault-injection.md)
  pause      stop the VM's vCPUs;  resume: start them again
  stop       press the guest's power button, wait for it to power off (--timeout, default ${DEFAULT_STOP_TIMEOUT_MS / 1000} s), then stop
             it hard (--force: at once)
  snapshot   tsvmm snapshot --out DIR [--stop]: save the running VM into the new directory DIR (its
             vCPUs, devices and touched RAM); it resumes, or stops with --stop. tsvmm run --restore DIR
             resumes it
  update     tsvmm update [vmm|driver-domain|priv-domain|all]: replace the running components with the
             build installed now, without a guest reboot (a standby of the new build takes over)
  console    attach to the guest's serial console: history, then follow; typing goes to the guest,
             Ctrl-] detaches (--no-follow: history only; --read-only: no input)
  metrics    print the VM's Prometheus metrics
  events     the VM's lifecycle events from the durable store
  label      tsvmm label KEY [VALUE]: show or set a label;  annotate TEXT: add an annotation
  rm         tsvmm rm NAME: remove a stopped VM's state (its store and console log)
  These take --name NAME (optional when one VM is running) and --json (ls, ps, events).
`;

const COMMON = `  --name NAME   the VM (optional when exactly one is running)
  -h, --help    this help
`;

/** `tsvmm VERB --help`. */
export const VERB_USAGE: Record<string, string> = {
  ls: `usage: tsvmm ls [--all] [--json]\nList the VMs running on this host (--all: also those recorded in the state directory but stopped).\n  --json        machine-readable\n  -h, --help    this help\n`,
  ps: `usage: tsvmm ps [--name NAME] [--json]\nThe VM's components: pid, state, uptime, restarts, last recovery.\n  --json        machine-readable\n${COMMON}`,
  kill: `usage: tsvmm kill COMPONENT [--signal SIG] [--name NAME]\nSignal a component (vmm, driver-domain, priv-domain, keeper; default SIGKILL); the supervisor recovers it.\nThe keeper takes SIGKILL, SIGSTOP and SIGCONT only.\n  -s, --signal SIG  e.g. SIGTERM, TERM or 15\n${COMMON}`,
  inject: `usage: tsvmm inject COMPONENT KIND [--seed N] [--name NAME] [--json]\nInject one fault into a running VM and print what it changed (docs/fault-injection.md).\nCOMPONENT: vmm, vmm-main, vmm-vcpu, keeper, driver-domain, priv-domain, supervisor.\nKIND: reg, mem, code-addon, code-node, state-page, queue-progress, control-page, snapshot, message,\ndisk-truncate, disk-full, ring, eio, tap-vanish, SIGKILL, SIGSEGV, SIGABRT, SIGSTOP.\n  --seed N      the random choices (thread, register, mapping, offset, bit)\n  --json        machine-readable\n${COMMON}`,
  pause: `usage: tsvmm pause [--name NAME]\nPark every vCPU (the guest stops; its devices stay up).\n${COMMON}`,
  resume: `usage: tsvmm resume [--name NAME]\nRelease the vCPUs of a paused VM.\n${COMMON}`,
  stop: `usage: tsvmm stop [--force | --timeout SECONDS] [--name NAME]\nStop the VM, and wait until it has: tsvmm presses the guest's ACPI power button and gives it\n${DEFAULT_STOP_TIMEOUT_MS / 1000} s to power off, then stops it hard. Either way \`tsvmm run\` exits 0 (a requested stop);\nthis prints how it ended. A paused VM is stopped hard at once.\n  --force           stop hard at once, without the power button\n  --timeout SECONDS how long the guest gets to power off (default ${DEFAULT_STOP_TIMEOUT_MS / 1000}; 0: as --force)\n${COMMON}`,
  console: `usage: tsvmm console [--name NAME] [--no-follow | --read-only]\nAttach to the guest's serial console: the history, then new output as it comes; what you type\ngoes to the guest's serial port (raw mode on a terminal; stdin otherwise). Ctrl-] detaches.\nSeveral consoles may watch; one at a time types (another gets an error until it has been idle 10 s).\nIt stays attached across priv-domain and vmm recoveries.\n  --no-follow   the history only, then exit\n  --read-only   watch without sending input\n${COMMON}`,
  metrics: `usage: tsvmm metrics [--name NAME]\nThe VM's Prometheus metrics (the same text its metrics endpoint serves).\n${COMMON}`,
  events: `usage: tsvmm events [--name NAME] [--json]\nThe VM's lifecycle events from its durable store (started, kill, recovery, exited, ...); with --name,\nalso of a VM that has stopped.\n  --json        machine-readable\n${COMMON}`,
  label: `usage: tsvmm label [KEY [VALUE]] [--name NAME]\nAll labels; one label; or set one.\n${COMMON}`,
  snapshot: `usage: tsvmm snapshot --out DIR [--stop] [--name NAME] [--json]\nSave the running VM into DIR (new or empty); \`tsvmm run --restore DIR\` resumes it (docs/snapshots.md).\n  --out DIR     where to write it\n  --stop        stop the VM once it is saved\n  --json        machine-readable\n${COMMON}`,
  update: `usage: tsvmm update [vmm|driver-domain|priv-domain|all] [--name NAME]\nReplace components with the build installed now, through their warm standbys, the guest running.\n${COMMON}`,
  rm: `usage: tsvmm rm NAME\nForget a stopped VM: its durable store and console logs (tsvmm ls --all lists them).\n  -h, --help    this help\n`,
  annotate: `usage: tsvmm annotate TEXT [--name NAME]\nAppend a free-text annotation to the VM's record.\n${COMMON}`,
};

/** How long a verb keeps retrying while the priv-domain restarts. */
const RETRY_MS = Number(process.env.TSVMM_API_RETRY_MS ?? 5000);

export interface ApiResponse { status: number; headers: http.IncomingHttpHeaders; body: string }

/**
 * One HTTP request on a unix socket. An API that accepts the connection but does not answer within
 * `timeoutMs` (a stopped priv-domain: the kernel accepts for it) fails with code ETIMEDOUT.
 */
export function request(socket: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}, timeoutMs = RETRY_MS): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({
      socketPath: socket, method, path,
      headers: { ...(data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {}), ...headers },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    if (data) req.write(data);
    req.end();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TRANSIENT = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE']);

/** Is the VM's supervisor alive (the priv-domain may be restarting)? */
/** How long `tsvmm stop` waits for a VM whose API went away mid-request to be gone. */
const STOP_WAIT_MS = 30_000;

function supervisorAlive(name: string): boolean {
  try {
    return readSupervisorPid(name) !== undefined;
  } catch (e) {
    // Someone else's VM: let the connection attempt say so.
    return (e as NodeJS.ErrnoException).code === 'EACCES';
  }
}

/** Can we connect to the VM's API right now? */
function probe(socket: string): Promise<string | undefined> {
  return request(socket, 'GET', '/v1/health').then(() => undefined, (e: NodeJS.ErrnoException) => e.code ?? 'ERROR');
}

/** The names of running VMs (supervisor alive). */
export function runningNames(): string[] {
  return listRuntimeNames().filter(supervisorAlive);
}

/** --name, or the only running VM. */
export function resolveName(name: string | undefined): string {
  if (name !== undefined) {
    const why = badName(name);
    if (why) throw new VerbError(why, 2);
    try {
      fs.accessSync(vmPaths(name).runDir, fs.constants.X_OK);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EACCES') {
        throw new VerbError(`cannot reach VM "${name}": permission denied on its runtime directory; only the user who started the VM may manage it`);
      }
    }
    if (!supervisorAlive(name)) {
      const running = runningNames();
      throw new VerbError(`no VM named "${name}" is running (${running.length ? `running: ${running.join(', ')}` : 'none is running'})`);
    }
    return name;
  }
  const running = runningNames();
  if (running.length === 1) return running[0];
  if (running.length === 0) throw new VerbError('no VM is running (start one with `tsvmm run --name NAME`)');
  throw new VerbError(`${running.length} VMs are running (${running.join(', ')}): pick one with --name NAME`, 2);
}

/**
 * A request to VM `name`'s API, retried while its priv-domain restarts (with the same
 * Idempotency-Key, for a change). Throws VerbError with the API's one-line error.
 */
/** How long snapshot and update wait for their answer (the priv-domain gives the supervisor 120 s). */
const LONG_COMMAND_MS = 125_000;

export async function api(name: string, method: string, path: string, body?: unknown, opts: { key?: string; raw?: boolean; answerMs?: number } = {}): Promise<ApiResponse> {
  const socket = vmPaths(name).socket;
  // A snapshot or an update takes as long as it takes (the priv-domain bounds it): wait for it.
  const waitMs = opts.answerMs ?? RETRY_MS;
  const deadline = Date.now() + waitMs;
  const headers: Record<string, string> = opts.key ? { 'Idempotency-Key': opts.key } : {};
  for (;;) {
    try {
      const r = await request(socket, method, path, body, headers, Math.max(100, deadline - Date.now()));
      // 503: a priv-domain that just started and has not heard from the supervisor yet.
      if (r.status === 503 && Date.now() < deadline) { await sleep(50); continue; }
      if (r.status >= 400 && !opts.raw) {
        let msg = r.body.trim();
        try { msg = (JSON.parse(r.body) as { error?: string }).error ?? msg; } catch { /* not JSON */ }
        throw new VerbError(msg || `HTTP ${r.status}`);
      }
      return r;
    } catch (e) {
      if (e instanceof VerbError) throw e;
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (code === 'EACCES') {
        let owner = '';
        try { owner = ` (it belongs to uid ${fs.statSync(socket).uid})`; } catch { /* hidden from us too */ }
        throw new VerbError(`cannot reach VM "${name}": permission denied on its API socket${owner}; only the user who started the VM may manage it`);
      }
      if (code === 'ETIMEDOUT') {
        throw new VerbError(`VM "${name}" did not answer within ${(waitMs / 1000).toFixed(1)} s: its management API (the priv-domain) is stopped or hung` +
          `${supervisorAlive(name) ? ' and the supervisor has not replaced it yet' : ''}`);
      }
      const transient = TRANSIENT.has(code) && supervisorAlive(name);
      if (!transient || Date.now() > deadline) {
        if (!supervisorAlive(name)) throw new VerbError(`VM "${name}" is not running (it stopped)`);
        throw new VerbError(`cannot reach VM "${name}" at ${socket}: ${(e as Error).message}`);
      }
      await sleep(50);
    }
  }
}

/** How VM `name` ended, from the `exited` event in its durable store (undefined if unreadable). */
function exitReason(name: string): string | undefined {
  try {
    const { Store } = require('../contracts/store') as typeof import('../contracts/store');
    const store = Store.open(vmPaths(name).db);
    try {
      const evs = store.events(0, 1_000_000);
      const last = evs.reverse().find((e) => e.kind === 'exited');
      return (last?.detail as { reason?: string } | undefined)?.reason;
    } finally { store.close(); }
  } catch { return undefined; }
}

function fmtDuration(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s)) return '-';
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h}h${String(m % 60).padStart(2, '0')}m` : `${Math.floor(h / 24)}d${h % 24}h`;
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]))).join('  ')).join('\n') + '\n';
}

interface Component {
  name: string; pid: number; state: string; startedAt: number; uptimeSeconds: number | null; restarts: number;
  lastRecovery: { component: string; cause: string; seconds: number; at: number } | null;
  privileges: Privileges | null;
}

function parse(cmd: string, argv: string[], extra: Record<string, { type: 'string' | 'boolean'; short?: string }> = {}, positionals = 0) {
  let r;
  try {
    r = parseArgs({ args: argv, options: { name: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' }, ...extra }, strict: true, allowPositionals: true });
  } catch (e) {
    throw new VerbError((e as Error).message, 2);
  }
  if (r.values.help) throw new HelpRequest(VERB_USAGE[cmd] ?? VERBS_HELP);
  if (r.positionals.length > positionals) throw new VerbError(`unexpected argument "${r.positionals[positionals]}" (tsvmm ${cmd} --help)`, 2);
  return r as unknown as { values: { name?: string; json?: boolean; all?: boolean; signal?: string; seed?: string; 'no-follow'?: boolean; out?: string; stop?: boolean; force?: boolean; timeout?: string }; positionals: string[] };
}

const out = (s: string) => { process.stdout.write(s); };

export async function verb(cmd: string, argv: string[]): Promise<number> {
  switch (cmd) {
    case 'ls': {
      const { values } = parse(cmd, argv, { all: { type: 'boolean' } });
      const rows: { name: string; state: string; pid: number; socket: string }[] = [];
      const running = runningNames();
      for (const name of running) {
        const p = vmPaths(name);
        let state = 'running';
        const err = await probe(p.socket);
        if (err === 'EACCES') state = 'running (not yours)';
        else if (err) state = 'running (api restarting)';
        else {
          try { state = (JSON.parse((await request(p.socket, 'GET', '/v1/vm')).body) as { state: string }).state; } catch { /* keep */ }
        }
        rows.push({ name, state, pid: readSupervisorPid(name) ?? 0, socket: p.socket });
      }
      if (values.all) for (const name of listStateNames()) if (!running.includes(name)) rows.push({ name, state: 'stopped', pid: 0, socket: '' });
      if (values.json) { out(JSON.stringify(rows, null, 1) + '\n'); return 0; }
      if (!rows.length) { out('no VM is running\n'); return 0; }
      out(table([['NAME', 'STATE', 'PID', 'API SOCKET'], ...rows.map((r) => [r.name, r.state, r.pid ? String(r.pid) : '-', r.socket || '-'])]));
      return 0;
    }
    case 'ps': {
      const { values } = parse(cmd, argv);
      const name = resolveName(values.name);
      const comps = JSON.parse((await api(name, 'GET', '/v1/vm/components')).body) as Component[];
      if (values.json) { out(JSON.stringify(comps, null, 1) + '\n'); return 0; }
      const now = Date.now() / 1000;
      const caps = (hex?: string) => (hex === undefined ? '-' : /^0*$/.test(hex) ? 'none' : hex === '000001ffffffffff' ? 'all' : hex);
      out(table([['COMPONENT', 'PID', 'STATE', 'UPTIME', 'RESTARTS', 'UID', 'CAPS', 'SECCOMP', 'LAST RECOVERY'], ...comps.map((c) => [
        c.name, c.pid ? String(c.pid) : '-', c.state, fmtDuration(c.uptimeSeconds), String(c.restarts),
        c.privileges ? String(c.privileges.uid) : '-', caps(c.privileges?.capEff), c.privileges?.seccomp ?? '-',
        c.lastRecovery ? `${c.lastRecovery.cause} in ${(c.lastRecovery.seconds * 1000).toFixed(1)} ms, ${fmtDuration(now - c.lastRecovery.at)} ago` : '-',
      ])]));
      return 0;
    }
    case 'kill': {
      const { values, positionals } = parse(cmd, argv, { signal: { type: 'string', short: 's' } }, 1);
      if (!positionals[0]) throw new VerbError('usage: tsvmm kill COMPONENT [--signal SIG] [--name NAME] (COMPONENT: vmm, driver-domain, priv-domain, keeper)', 2);
      const name = resolveName(values.name);
      const r = JSON.parse((await api(name, 'POST', `/v1/vm/components/${encodeURIComponent(positionals[0])}/kill`, { signal: values.signal ?? 'SIGKILL' })).body) as { pid: number; signal: string };
      out(`sent ${r.signal} to ${positionals[0]} (pid ${r.pid}) of VM ${name}\n`);
      return 0;
    }
    case 'inject': {
      const { values, positionals } = parse(cmd, argv, { seed: { type: 'string' } }, 2);
      const usage = `usage: tsvmm inject COMPONENT KIND [--seed N] [--name NAME] [--json] (COMPONENT: ${INJECT_COMPONENTS.join(', ')}; KIND: ${INJECT_KINDS.join(', ')})`;
      const [component, kind] = positionals as [InjectComponent, InjectKind];
      if (!component || !kind) throw new VerbError(usage, 2);
      if (!INJECT_COMPONENTS.includes(component)) throw new VerbError(`unknown component "${component}" (${INJECT_COMPONENTS.join(', ')})`, 2);
      if (!INJECT_KINDS.includes(kind)) throw new VerbError(`unknown fault kind "${kind}" (${INJECT_KINDS.join(', ')})`, 2);
      if (!kindsFor(component).includes(kind)) throw new VerbError(`fault kind ${kind} does not apply to the ${component} (it takes: ${kindsFor(component).join(', ')})`, 2);
      if (values.seed !== undefined && !/^\d+$/.test(values.seed)) throw new VerbError(`invalid --seed "${values.seed}": expected a whole number`, 2);
      const name = resolveName(values.name);
      const comps = JSON.parse((await api(name, 'GET', '/v1/vm/components')).body) as Component[];
      const vm = JSON.parse((await api(name, 'GET', '/v1/vm')).body) as { config?: { cpus?: number } };
      let r: InjectResult;
      try {
        r = await inject(component, kind, pidsFrom(comps), { seed: BigInt(values.seed ?? Date.now()), cpus: vm.config?.cpus ?? 1, socket: vmPaths(name).socket });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw new VerbError(`cannot inject ${kind} into the ${component}: ${(e as Error).message}${code === 'EPERM' || code === 'EACCES' ? ' (injecting needs the right to ptrace the VM\'s processes: run as their owner, with CAP_SYS_PTRACE where ptrace is restricted)' : ''}`);
      }
      if (values.json) { out(JSON.stringify(r) + '\n'); return 0; }
      out(`injected ${kind} into the ${component} (pid ${r.pid}${r.tid ? `, thread ${r.tid}` : ''}): ${r.target}${r.address ? ` at ${r.address}` : ''}${r.bit !== undefined ? `, bit ${r.bit}` : ''}${r.before ? `: ${r.before}${r.after ? ` -> ${r.after}` : ''}` : ''}\n`);
      return 0;
    }
    case 'pause':
    case 'resume': {
      const { values } = parse(cmd, argv);
      const name = resolveName(values.name);
      const r = JSON.parse((await api(name, 'POST', `/v1/vm/${cmd}`, {}, { key: `${cmd}-${process.pid}-${Date.now()}` })).body) as { state: string };
      out(`VM ${name}: ${r.state}\n`);
      return 0;
    }
    case 'stop': {
      const { values } = parse(cmd, argv, { force: { type: 'boolean' }, timeout: { type: 'string' } });
      let timeoutSeconds: number | undefined;
      if (values.timeout !== undefined) {
        timeoutSeconds = Number(values.timeout);
        if (!/^\d+(\.\d+)?$/.test(values.timeout) || timeoutSeconds > 3600) throw new VerbError(`invalid --timeout "${values.timeout}": expected seconds, 0 to 3600 (e.g. 10 or 0.5)`, 2);
      }
      const name = resolveName(values.name);
      const body = { ...(values.force ? { force: true } : {}), ...(timeoutSeconds !== undefined ? { timeoutSeconds } : {}) };
      const wasRunning = supervisorAlive(name);
      let failed: VerbError | undefined;
      try {
        await api(name, 'POST', '/v1/vm/stop', body, { key: `stop-${process.pid}-${Date.now()}` });
      } catch (e) {
        // A stop can take the API down before its answer gets out (a guest that powers off at once,
        // a hard stop, a slow machine that has not flushed the answer yet): the request got
        // through if the VM then goes away.
        if (!(e instanceof VerbError) || !wasRunning) throw e;
        failed = e;
      }
      // Then wait for the end: the guest's own power-off, or the hard stop after the timeout.
      const graceMs = failed || values.force ? 0 : (timeoutSeconds ?? DEFAULT_STOP_TIMEOUT_MS / 1000) * 1000;
      // A supervisor that died meanwhile leaves run.pb to the one that adopts the VM and finishes the stop.
      const runs = () => supervisorAlive(name) || fs.existsSync(runRecordPath(vmPaths(name)));
      const until = Date.now() + graceMs + STOP_WAIT_MS;
      while (runs() && Date.now() < until) await sleep(50);
      if (runs()) throw failed ?? new VerbError(`VM "${name}" was asked to stop but still runs ${((graceMs + STOP_WAIT_MS) / 1000).toFixed(0)} s later`);
      out(`VM ${name}: ${exitReason(name) ?? 'stopped'}\n`);
      return 0;
    }
    case 'snapshot': {
      const { values } = parse(cmd, argv, { out: { type: 'string' }, stop: { type: 'boolean' } });
      if (!values.out) throw new VerbError('usage: tsvmm snapshot --out DIR [--stop] [--name NAME]', 2);
      const name = resolveName(values.name);
      const dir = path.resolve(values.out);
      const r = JSON.parse((await api(name, 'POST', '/v1/vm/snapshot', { dir, stop: values.stop === true }, { key: `snapshot-${process.pid}-${Date.now()}`, answerMs: LONG_COMMAND_MS })).body) as
        { pauseMs: number; ramDataBytes: number; state: string };
      if (values.json) { out(JSON.stringify(r, null, 1) + '\n'); return 0; }
      out(`VM ${name}: snapshot in ${dir} (guest paused ${r.pauseMs.toFixed(1)} ms, ${(r.ramDataBytes / 2 ** 20).toFixed(1)} MiB of RAM); ${r.state}\n`);
      return 0;
    }
    case 'update': {
      const { values, positionals } = parse(cmd, argv, {}, 1);
      const component = positionals[0] ?? 'all';
      if (!['vmm', 'driver-domain', 'priv-domain', 'all'].includes(component)) throw new VerbError(`usage: tsvmm update [vmm|driver-domain|priv-domain|all] [--name NAME] ("${component}" is not one)`, 2);
      const name = resolveName(values.name);
      const r = JSON.parse((await api(name, 'POST', '/v1/vm/update', { component }, { key: `update-${process.pid}-${Date.now()}`, answerMs: LONG_COMMAND_MS })).body) as
        { vmmPauseMs: number; driverDomainHandoverMs: number };
      if (values.json) { out(JSON.stringify(r, null, 1) + '\n'); return 0; }
      const parts = [];
      if (component === 'vmm' || component === 'all') parts.push(`vmm replaced (guest paused ${r.vmmPauseMs.toFixed(2)} ms)`);
      if ((component === 'driver-domain' || component === 'all') && r.driverDomainHandoverMs) parts.push(`driver-domain replaced (handover ${r.driverDomainHandoverMs.toFixed(1)} ms)`);
      if (component === 'priv-domain' || component === 'all') parts.push('priv-domain restarting');
      out(`VM ${name}: ${parts.join('; ')}\n`);
      return 0;
    }
    case 'metrics': {
      const { values } = parse(cmd, argv);
      out((await api(resolveName(values.name), 'GET', '/metrics')).body);
      return 0;
    }
    case 'events': {
      const { values } = parse(cmd, argv);
      let evs: { id: number; at: number; kind: string; detail: unknown }[];
      const stopped = values.name !== undefined && !badName(values.name) && !supervisorAlive(values.name) ? vmPaths(values.name).db : undefined;
      if (stopped && fs.existsSync(stopped)) {
        // A stopped VM: its durable store, read directly.
        const { Store } = require('../contracts/store') as typeof import('../contracts/store');
        const store = Store.open(stopped);
        try { evs = store.events(0, 1_000_000); } finally { store.close(); }
      } else {
        evs = JSON.parse((await api(resolveName(values.name), 'GET', '/v1/vm/events')).body) as typeof evs;
      }
      if (values.json) { out(JSON.stringify(evs, null, 1) + '\n'); return 0; }
      for (const e of evs) out(`${e.id}\t${new Date(e.at * 1000).toISOString()}\t${e.kind}\t${e.kind === 'started' ? '' : JSON.stringify(e.detail)}\n`);
      return 0;
    }
    case 'label': {
      const { values, positionals } = parse(cmd, argv, {}, 2);
      const name = resolveName(values.name);
      if (!positionals[0]) { out(JSON.stringify(JSON.parse((await api(name, 'GET', '/v1/vm/labels')).body), null, 1) + '\n'); return 0; }
      const path = `/v1/vm/labels/${encodeURIComponent(positionals[0])}`;
      const r = positionals.length === 2
        ? await api(name, 'PUT', path, { value: positionals[1] }, { key: `label-${process.pid}-${Date.now()}` })
        : await api(name, 'GET', path);
      const l = JSON.parse(r.body) as { key: string; value: string };
      out(`${l.key}=${l.value}\n`);
      return 0;
    }
    case 'annotate': {
      const { values, positionals } = parse(cmd, argv, {}, 1);
      if (!positionals[0]) throw new VerbError('usage: tsvmm annotate TEXT [--name NAME]', 2);
      const r = JSON.parse((await api(resolveName(values.name), 'POST', '/v1/vm/annotations', { text: positionals[0] }, { key: `annotate-${process.pid}-${Date.now()}` })).body) as { id: number };
      out(`annotation ${r.id}\n`);
      return 0;
    }
    case 'console':
      return consoleVerb(argv);
    case 'rm': {
      const { values, positionals } = parse(cmd, argv, {}, 1);
      const name = positionals[0] ?? values.name;
      if (!name) throw new VerbError('usage: tsvmm rm NAME (a stopped VM; tsvmm ls --all lists them)', 2);
      const why = badName(name);
      if (why) throw new VerbError(why, 2);
      if (supervisorAlive(name)) throw new VerbError(`VM "${name}" is running: stop it first (tsvmm stop --name ${name})`);
      const p = vmPaths(name);
      if (!fs.existsSync(p.stateDir)) throw new VerbError(`no VM named "${name}" has any state here (tsvmm ls --all lists them)`);
      fs.rmSync(p.stateDir, { recursive: true, force: true });
      fs.rmSync(p.runDir, { recursive: true, force: true }); // a stale one, left by a VM that did not end cleanly
      out(`removed VM ${name} (${p.stateDir})\n`);
      return 0;
    }
    default:
      throw new VerbError(`unknown command "${cmd}"`, 2);
  }
}

/** Ctrl-]: detaches `tsvmm console` (as telnet's escape). */
export const CONSOLE_ESCAPE = 0x1d;

/**
 * History, then follow; across priv-domain restarts it reconnects from the last byte it got.
 * Following, it is also the console's writer: stdin (raw mode on a terminal) goes to the guest's
 * UART through the API, until Ctrl-] detaches (--read-only: output only).
 */
async function consoleVerb(argv: string[]): Promise<number> {
  const { values } = parse('console', argv, { 'no-follow': { type: 'boolean' }, 'read-only': { type: 'boolean' } }) as
    { values: { name?: string; 'no-follow'?: boolean; 'read-only'?: boolean } };
  const name = resolveName(values.name);
  const follow = !values['no-follow'];
  const socket = vmPaths(name).socket;
  let pos: number | undefined;
  let detached = false;
  let current: http.ClientRequest | undefined;
  let wake: () => void = () => undefined;
  const detach = () => { detached = true; current?.destroy(); wake(); };
  if (follow && !values['read-only']) attachInput(name, detach);
  for (;;) {
    const path = `/v1/vm/console?follow=${follow ? 1 : 0}${pos !== undefined ? `&since=${pos}` : ''}`;
    const ended = await new Promise<'end' | 'error'>((resolve) => {
      wake = () => resolve('end');
      const req = http.request({ socketPath: socket, method: 'GET', path }, (res) => {
        if ((res.statusCode ?? 0) >= 400) {
          let b = '';
          res.on('data', (c) => { b += c; });
          res.on('end', () => { process.stderr.write(`tsvmm: error: ${b.trim()}\n`); resolve('end'); });
          return;
        }
        if (pos === undefined) pos = Number(res.headers['x-console-start'] ?? 0);
        res.on('data', (c: Buffer) => {
          pos = ((pos ?? 0) + c.length) >>> 0;
          // Back-pressure: a slow reader (a pipe) holds the stream rather than memory.
          if (!process.stdout.write(c)) { res.pause(); process.stdout.once('drain', () => res.resume()); }
        });
        res.on('end', () => resolve('end'));
        res.on('error', () => resolve('error'));
        res.on('aborted', () => resolve('error'));
      });
      current = req;
      req.on('error', () => resolve('error'));
      req.end();
    });
    if (detached) return 0;
    if (!follow && ended === 'end') return 0;
    if (!supervisorAlive(name)) return 0;
    await sleep(100);
  }
}

/** stdin -> POST /v1/vm/console/input, in order, retried across priv-domain restarts; Ctrl-] calls `detach`. */
function attachInput(name: string, detach: () => void): void {
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  const session = `${process.pid}-${Date.now()}`;
  const queue: Buffer[] = [];
  let sending = false;
  let closed = false;
  const restore = () => { if (tty) { try { stdin.setRawMode(false); } catch { /* gone */ } } stdin.pause(); };
  const pump = async () => {
    if (sending) return;
    sending = true;
    try {
      while (queue.length) {
        const chunk = queue[0];
        let r: { accepted: number; bytes: number };
        try {
          r = JSON.parse((await api(name, 'POST', '/v1/vm/console/input', { data: chunk.toString('utf8'), session })).body) as { accepted: number; bytes: number };
        } catch (e) {
          process.stderr.write(`\r\ntsvmm: console input: ${(e as Error).message}\r\n`);
          queue.length = 0;
          break;
        }
        if (r.accepted >= r.bytes) queue.shift();
        else { queue[0] = chunk.subarray(r.accepted); await sleep(20); }
      }
    } finally {
      sending = false;
      if (closed && !queue.length) restore();
    }
  };
  if (tty) {
    stdin.setRawMode(true);
    process.stderr.write(`tsvmm: attached to the console of VM ${name}: typing goes to the guest; Ctrl-] detaches\r\n`);
  }
  stdin.on('data', (c: Buffer) => {
    if (closed) return;
    const esc = c.indexOf(CONSOLE_ESCAPE);
    if (esc >= 0) {
      if (esc > 0) queue.push(c.subarray(0, esc));
      closed = true;
      void pump().then(async () => {
        restore();
        // Give up the input at once, so another console can type.
        await api(name, 'POST', '/v1/vm/console/input', { data: '', session, release: true }).catch(() => undefined);
        if (tty) process.stderr.write('\r\ntsvmm: detached\r\n');
        detach();
      });
      return;
    }
    queue.push(c);
    void pump();
  });
  stdin.on('end', () => { closed = true; if (!sending) restore(); });
  stdin.on('error', () => { closed = true; });
}
