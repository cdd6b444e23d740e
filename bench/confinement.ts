/**
 * bench/confinement: what confinement (contracts/confinement.ts: the unprivileged uid, the seccomp
 * filters) costs on the hot paths. Runs bench/exits, bench/blk and bench/net, short, each once
 * confined (the default) and once with TSVMM_CONFINE=0, alternating the order every round, in one
 * invocation, and prints tsvmm's median for each metric both ways and the ratio.
 *
 *   npx tsc -p . && node dist/bench/confinement.js [--rounds R (3)] [--only exits,blk,net] [--json]
 *
 * (Each bench also runs its reference, rawkvm or QEMU, which this ignores.) Target: within noise.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { machine, median, ROOT, table } from './lib';

type Bench = 'exits' | 'blk' | 'net';
type Mode = 'confined' | 'unconfined';
const ARGS: Record<Bench, string[]> = {
  exits: ['--rounds', '1', '--n', '50000'],
  blk: ['--rounds', '1', '--rows', 'rand4k,seqread', '--irq', '1', '--size', '64', '--rand-n', '10000', '--seq-passes', '2'],
  net: ['--rounds', '1', '--seconds', '1', '--irq', '1'],
};

interface Metric { bench: Bench; metric: string; unit: string; higherIsBetter: boolean; value: number }

function usage(msg?: string): never {
  if (msg) process.stderr.write(`bench/confinement: ${msg}\n`);
  process.stderr.write('usage: node dist/bench/confinement.js [--rounds R (3)] [--only exits,blk,net] [--json]\n');
  process.exit(2);
}

/** tsvmm's numbers from one bench run's --json output. */
function metrics(bench: Bench, json: string): Omit<Metric, 'bench'>[] {
  const j = JSON.parse(json) as { summary: unknown };
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
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'bench', `${bench}.js`), ...ARGS[bench], '--json'], {
    cwd: ROOT, env, encoding: 'utf8', maxBuffer: 64 << 20, timeout: 20 * 60 * 1000,
  });
  if (r.status !== 0) throw new Error(`bench/${bench} (${mode}) failed: exit ${r.status}${r.signal ? ` (${r.signal})` : ''}\n${(r.stderr ?? '').split('\n').slice(-15).join('\n')}`);
  return metrics(bench, r.stdout);
}

function main(): void {
  let rounds = 3;
  let only: Bench[] = ['exits', 'blk', 'net'];
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

try {
  main();
} catch (e) {
  process.stderr.write(`bench/confinement: ${(e as Error).message}\n`);
  process.exit(1);
}
