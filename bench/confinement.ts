/**
 * bench/confinement: what confinement (contracts/confinement.ts: the unprivileged uid, the seccomp
 * filters, tsvmm-jail's namespaces) costs on the hot paths and on start and restart. Runs bench/exits,
 * bench/blk and bench/net, short, and `start` (a VM from `tsvmm run` to every component ready, then
 * a cold restart of the driver-domain and one of the vmm, as the supervisor logs them), each once
 * confined (the default) and once with TSVMM_CONFINE=0, alternating the order every round, in one
 * invocation, and prints tsvmm's median for each metric both ways and the ratio.
 *
 *   npx tsc -p . && node dist/bench/confinement.js [--rounds R (3)] [--only exits,blk,net,start] [--json]
 *
 * (Each bench also runs its reference, rawkvm or QEMU, which this ignores.) Target: within noise.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { machine, median, ROOT, table } from './lib';

type Bench = 'exits' | 'blk' | 'net' | 'start';
type Mode = 'confined' | 'unconfined';
const ARGS: Record<Bench, string[]> = {
  exits: ['--rounds', '1', '--n', '50000'],
  blk: ['--rounds', '1', '--rows', 'rand4k,seqread', '--irq', '1', '--size', '64', '--rand-n', '10000', '--seq-passes', '2'],
  net: ['--rounds', '1', '--seconds', '1', '--irq', '1'],
  start: [],
};

interface Metric { bench: Bench; metric: string; unit: string; higherIsBetter: boolean; value: number }

function usage(msg?: string): never {
  if (msg) process.stderr.write(`bench/confinement: ${msg}\n`);
  process.stderr.write('usage: node dist/bench/confinement.js [--rounds R (3)] [--only exits,blk,net,start] [--json]\n');
  process.exit(2);
}

/** tsvmm's numbers from one bench run's --json output. */
function metrics(bench: Bench, json: string): Omit<Metric, 'bench'>[] {
  const j = JSON.parse(json) as { summary: unknown };
  if (bench === 'start') return (JSON.parse(json) as { summary: Omit<Metric, 'bench'>[] }).summary;
  if (bench === 'exits') {
    const s = j.summary as Record<string, { tsvmm: { median: number } }>;
    return Object.entries(s).map(([k, v]) => ({ metric: `${k} exit`, unit: 'ns/exit', higherIsBetter: false, value: v.tsvmm.median }));
  }
  const rows = j.summary as { label: string; unit: string; irq: number; tsvmm: { median: number } }[];
  return rows.map((r) => ({ metric: `${r.label} (irq=${r.irq})`, unit: r.unit, higherIsBetter: true, value: r.tsvmm.median }));
}

function run(bench: Bench, mode: Mode): Omit<Metric, 'bench'>[] {
  const env = { ...process.env };
  env.TSVMM_CONFINE = mode === 'unconfined' ? '0' : '1';
  const script = bench === 'start' ? [path.join(ROOT, 'dist', 'bench', 'confinement.js'), '--start-once'] : [path.join(ROOT, 'dist', 'bench', `${bench}.js`), ...ARGS[bench], '--json'];
  const r = spawnSync(process.execPath, script, {
    cwd: ROOT, env, encoding: 'utf8', maxBuffer: 64 << 20, timeout: 20 * 60 * 1000,
  });
  if (r.status !== 0) throw new Error(`bench/${bench} (${mode}) failed: exit ${r.status}${r.signal ? ` (${r.signal})` : ''}\n${(r.stderr ?? '').split('\n').slice(-15).join('\n')}`);
  return metrics(bench, r.stdout);
}

/**
 * One `start` sample (this script with --start-once, in the mode its environment says): a VM with a
 * disk, from `tsvmm run` until the vmm, the driver-domain and the priv-domain are ready; then the
 * driver-domain and then the vmm SIGKILLed, each time the recovery the supervisor logs (kill to
 * serving again, cold: no standby). Prints the metrics as JSON.
 */
async function startOnce(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-bench-confine-'));
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 8 << 20);
  const t0 = performance.now();
  const vm = spawn(process.execPath, [path.join(ROOT, 'bin', 'tsvmm.js'), 'run', '--name', `bench-confine-${process.pid}`, '--metrics-addr', 'none',
    '--disk', img, '--cmdline', 'workload=counter n=0 report=50000000'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  vm.stderr.on('data', (d) => { err += d; });
  const until = async (re: RegExp, what: string): Promise<RegExpExecArray> => {
    for (const t = Date.now(); Date.now() - t < 60_000; await new Promise((r) => setTimeout(r, 5))) {
      const m = re.exec(err);
      if (m) return m;
    }
    throw new Error(`no ${what} within 60 s:\n${err}`);
  };
  try {
    const vmm = Number((await until(/vmm ready \(pid (\d+)\)/, 'vmm'))[1]);
    const dd = Number((await until(/driver-domain ready \(pid (\d+)\)/, 'driver-domain'))[1]);
    await until(/priv-domain ready/, 'priv-domain');
    const startMs = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 500));
    process.kill(dd, 'SIGKILL');
    const ddMs = Number((await until(/recovered driver-domain \(cause: signal SIGKILL\) in ([\d.]+) ms/, 'driver-domain recovery'))[1]);
    await new Promise((r) => setTimeout(r, 500));
    process.kill(vmm, 'SIGKILL');
    const vmmMs = Number((await until(/recovered vmm \(cause: signal SIGKILL\) in ([\d.]+) ms/, 'vmm recovery'))[1]);
    const summary = [
      { metric: 'run to all ready', unit: 'ms', higherIsBetter: false, value: startMs },
      { metric: 'driver-domain cold restart', unit: 'ms', higherIsBetter: false, value: ddMs },
      { metric: 'vmm cold restart', unit: 'ms', higherIsBetter: false, value: vmmMs },
    ];
    process.stdout.write(JSON.stringify({ summary }) + '\n');
  } finally {
    vm.kill('SIGTERM');
    await new Promise((r) => vm.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function main(): void {
  let rounds = 3;
  let only: Bench[] = ['exits', 'blk', 'net', 'start'];
  let json = false;
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--rounds') { rounds = Number(argv[++i]); if (!Number.isInteger(rounds) || rounds < 1) usage(`bad --rounds ${argv[i]}`); }
    else if (a === '--only') { only = (argv[++i] ?? '').split(',') as Bench[]; if (!only.length || only.some((b) => !(b in ARGS))) usage(`bad --only ${argv[i]}`); }
    else if (a === '--json') json = true;
    else if (a === '--help' || a === '-h') usage();
    else usage(`unknown argument ${a}`);
  }
  const log = (s: string) => { if (!json) process.stdout.write(s + '\n'); };
  const t0 = Date.now();
  const samples: (Metric & { mode: Mode; round: number })[] = [];
  for (let round = 1; round <= rounds; round++) {
    for (const bench of only) {
      const order: Mode[] = round % 2 ? ['confined', 'unconfined'] : ['unconfined', 'confined'];
      for (const mode of order) {
        const ms = run(bench, mode);
        for (const m of ms) samples.push({ ...m, bench, mode, round });
        log(`  round ${round} ${bench.padEnd(5)} ${mode.padEnd(10)} ${ms.map((m) => `${m.metric} ${m.value.toFixed(m.unit === 'ns/exit' ? 0 : 1)} ${m.unit}`).join(', ')}`);
      }
    }
  }
  const keys = [...new Map(samples.map((s) => [`${s.bench}/${s.metric}`, s])).values()];
  const summary = keys.map((k) => {
    const of = (mode: Mode) => median(samples.filter((s) => s.bench === k.bench && s.metric === k.metric && s.mode === mode).map((s) => s.value));
    const c = of('confined'), u = of('unconfined');
    // Cost: > 1 means confinement is slower.
    const cost = k.higherIsBetter ? u / c : c / u;
    return { bench: k.bench, metric: k.metric, unit: k.unit, confined: c, unconfined: u, cost };
  });
  if (json) {
    process.stdout.write(JSON.stringify({ rounds, machine: machine(), summary, samples, totalS: (Date.now() - t0) / 1000 }, null, 2) + '\n');
    return;
  }
  log(`\nbench/confinement: ${rounds} rounds, medians; ${machine()}`);
  log(table([['bench', 'metric', 'confined', 'TSVMM_CONFINE=0', 'cost (confined/unconfined time)'],
    ...summary.map((s) => [s.bench, `${s.metric} (${s.unit})`, s.confined.toFixed(1), s.unconfined.toFixed(1), s.cost.toFixed(3)])]));
  log(`total ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}

if (process.argv[2] === '--start-once') {
  startOnce().then(() => process.exit(0), (e: Error) => { process.stderr.write(`bench/confinement: ${e.message}\n`); process.exit(1); });
} else try {
  main();
} catch (e) {
  process.stderr.write(`bench/confinement: ${(e as Error).message}\n`);
  process.exit(1);
}
