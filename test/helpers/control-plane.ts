/**
 * Test helpers for the control plane: a VM started under private runtime and state directories,
 * `tsvmm` verbs against it, and raw API requests on its socket.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ChildProcessWithoutNullStreams } from 'child_process';
import { assertNoSeccompKill, GUEST, guestLines, tsvmm, tsvmmAsync } from './tsvmm';
import { request, ApiResponse } from '../../cli/verbs';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface TestVm {
  name: string;
  env: NodeJS.ProcessEnv;
  dir: string;
  socket: string;
  proc: ChildProcessWithoutNullStreams;
  out(): string;
  err(): string;
  exited: Promise<number | null>;
  /** `@blk-progress` lines so far. */
  progress(): number;
  /** The disk image (when it has one): <dir>/<name>.img. */
  img: string;
  /** Runs a tsvmm verb against this VM's directories. */
  cli(args: string[], timeoutMs?: number): ReturnType<typeof tsvmm>;
  api(method: string, p: string, body?: unknown, headers?: Record<string, string>): Promise<ApiResponse>;
  stop(): Promise<void>;
}

export async function startVm(opts: { name?: string; disk?: boolean; diskOpts?: string; cmdline?: string; extra?: string[]; dir?: string; env?: NodeJS.ProcessEnv; seccompKillsExpected?: boolean; quiet?: boolean } = {}): Promise<TestVm> {
  const dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-cp-'));
  // The priv-domain runs as an unprivileged uid (contracts/confinement.ts): it passes through this
  // directory to its state directory.
  fs.chmodSync(dir, 0o711);
  const name = opts.name ?? `t${process.pid}-${Math.floor(Math.random() * 1e6)}`;
  const env = { ...opts.env, TSVMM_RUNTIME_DIR: path.join(dir, 'run'), TSVMM_STATE_DIR: path.join(dir, 'state') };
  const args = ['run', '--name', name, '--kernel', GUEST, '--metrics-addr', '127.0.0.1:0'];
  if (opts.disk !== false) {
    const img = path.join(dir, `${name}.img`);
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 32 << 20);
    args.push('--disk', opts.diskOpts ? `${img},${opts.diskOpts}` : img);
  }
  args.push('--cmdline', opts.cmdline ?? 'workload=blk-loop blk_n=2000 qd=16 mode=seq verify=1 blk_report=200 virtio_irq=1', ...(opts.extra ?? []));
  const proc = tsvmmAsync(args, env);
  let out = '';
  let err = '';
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { err += d; });
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  const socket = path.join(env.TSVMM_RUNTIME_DIR, name, 'api.sock');
  const vm: TestVm = {
    name, env, dir, socket, proc, exited, img: path.join(dir, `${name}.img`),
    out: () => out, err: () => err,
    progress: () => guestLines(out).filter((l) => l.word === 'blk-progress').length,
    cli: (a, timeoutMs) => tsvmm(a, { env, timeoutMs }),
    api: (method, p, body, headers) => request(socket, method, p, body, headers),
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
      if (!opts.seccompKillsExpected) assertNoSeccompKill(err);
    },
  };
  // `quiet` (--log-level warn or error: no "ready" line): the API answering instead.
  const up = () => (opts.quiet ? fs.existsSync(socket) && tsvmm(['ls'], { env, timeoutMs: 5000 }).stdout.includes(name) : /priv-domain ready/.test(err));
  const deadline = Date.now() + 20_000;
  while (!up() && Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`tsvmm run exited early:\n${err}`);
    await sleep(opts.quiet ? 300 : 50);
  }
  if (!up()) throw new Error(`priv-domain never became ready:\n${err}`);
  return vm;
}

/**
 * Runs a VM scenario; on failure the VM's stderr (attached to the error as `vm`) is added to the
 * message so the cause is visible in the test report.
 */
export async function runScenario(scenario: () => Promise<TestVm | undefined>): Promise<void> {
  try {
    await scenario();
  } catch (e) {
    const err = (e as { vm?: TestVm }).vm?.err();
    if (err && e instanceof Error) e.message += `\n--- tsvmm stderr ---\n${err}`;
    throw e;
  }
}

/** One row of GET /v1/vm/components. */
export interface ComponentRow { name: string; pid: number; state: string; restarts: number }

/** The components by name (empty while the API does not answer). */
export async function components(vm: TestVm): Promise<Record<string, ComponentRow>> {
  const r = await vm.api('GET', '/v1/vm/components');
  if (r.status !== 200) return {};
  return Object.fromEntries((JSON.parse(r.body) as ComponentRow[]).map((c) => [c.name, c]));
}

/** Polls the components until `cond` holds. */
export async function waitComponents(vm: TestVm, what: string, cond: (c: Record<string, ComponentRow>) => boolean, ms = 15_000): Promise<Record<string, ComponentRow>> {
  const deadline = Date.now() + ms;
  for (;;) {
    let c: Record<string, ComponentRow> = {};
    try { c = await components(vm); } catch { /* the priv-domain is restarting */ }
    if (Object.keys(c).length && cond(c)) return c;
    if (vm.proc.exitCode !== null) throw Object.assign(new Error(`tsvmm exited while waiting for ${what}`), { vm });
    if (Date.now() > deadline) throw Object.assign(new Error(`timed out waiting for ${what}: ${JSON.stringify(c)}`), { vm });
    await sleep(20);
  }
}

/** Prometheus text: the sum of a family's samples whose labels match `match`. */
export function metricValue(text: string, name: string, match: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    const labels = /\{([^}]*)\}/.exec(line)?.[1] ?? '';
    if (Object.entries(match).every(([k, v]) => labels.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}
