/**
 * bench/recovery: cold vmm recovery latency. Boots the `counter` guest, SIGKILLs
 * the vmm K times at random moments and prints p50/p99/max of:
 *   - kill -> next guest progress line (what the guest's user sees; includes up
 *     to one line interval of counting, so keep `--report` small),
 *   - kill -> the supervisor's "recovered vmm" line,
 *   - the supervisor's own measure (vmm death seen -> new vmm resumed the guest),
 *   - the keeper's save.
 *
 *   npx tsc -p . && node dist/bench/recovery.js [--kills K] [--cpus N] [--report STEPS] [--json]
 */
import { parseArgs } from 'util';
import { killRun, percentile } from '../test/helpers/kill-harness';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { kills: { type: 'string' }, cpus: { type: 'string' }, report: { type: 'string' }, json: { type: 'boolean' } },
  });
  const kills = Number(values.kills ?? 30);
  const cpus = Number(values.cpus ?? 1);
  const report = Number(values.report ?? 2_000_000);
  const r = await killRun({ cpus, kills, report, minDelayMs: 50, maxDelayMs: 250 });
  const bad = r.errors.length + r.malformed.length + r.backwards.length;
  const rows: [string, number[]][] = [
    ['kill -> next progress line', r.samples.map((s) => s.progressMs)],
    ['kill -> "recovered vmm" logged', r.samples.map((s) => s.logMs)],
    ['supervisor: death -> resumed', r.samples.map((s) => s.supervisorMs)],
    ['keeper save', r.samples.map((s) => s.saveMs)],
  ];
  if (values.json) {
    process.stdout.write(JSON.stringify({ kills, cpus, report, guestErrors: bad, rows: Object.fromEntries(rows.map(([k, xs]) => [k, { p50: percentile(xs, 50), p99: percentile(xs, 99), max: Math.max(...xs) }])) }) + '\n');
    return;
  }
  const f = (x: number) => x.toFixed(x < 10 ? 2 : 1).padStart(8);
  console.log(`vmm cold recovery, ${r.samples.length} SIGKILLs, ${cpus} vCPU(s), counter report=${report}; guest-visible errors: ${bad}`);
  console.log(`${'measure (ms)'.padEnd(32)}${'p50'.padStart(8)}${'p99'.padStart(8)}${'max'.padStart(8)}`);
  for (const [name, xs] of rows) console.log(`${name.padEnd(32)}${f(percentile(xs, 50))}${f(percentile(xs, 99))}${f(Math.max(...xs))}`);
  if (bad) process.exitCode = 1;
}

main().catch((e) => { console.error(`bench/recovery: ${(e as Error).message}`); process.exit(1); });
