/**
 * bench/exits: the guest's exit round trip (PIO and MMIO) through tsvmm against a raw KVM loop in C
 * (bench/exits/rawkvm.c) on the same guest and workload, in one invocation.
 *
 *   npx tsc -p . && node dist/bench/exits.js [--rounds R] [--n N] [--kernel FILE] [--json]
 *
 * Each round runs rawkvm and `tsvmm run` once each (the order alternates between rounds so slow
 * drift of the host hits both sides alike). The guest (`workload=exits n=N`) times N `outb` to
 * port 0x510 and N 32-bit writes to unbacked GPA 0xC0000000 with rdtsc and prints
 * `@exits kind=pio|mmio n=.. cycles=..`. Cycles are converted to ns with one TSC frequency for both
 * sides: KVM_GET_TSC_KHZ as rawkvm reports it (else the guest's tsc_khz, else /proc/cpuinfo).
 * The table shows the median over the rounds and the ratio tsvmm/raw (target <= 1.15).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { buildRawkvm, cpuinfoKhz, ensureGuest, machine, median, RAWKVM, ROOT, table } from './lib';

const TARGET_RATIO = 1.15;
const KINDS = ['pio', 'mmio'] as const;
type Kind = (typeof KINDS)[number];
type Vmm = 'rawkvm' | 'tsvmm';

interface RunResult {
  vmm: Vmm;
  round: number;
  cycles: Record<Kind, number>;
  n: Record<Kind, number>;
  /** ns_per_exit as the guest printed it (only when the guest knew its TSC frequency). */
  guestNs: Partial<Record<Kind, number>>;
  guestTscKhz: number;
  /** KVM_GET_TSC_KHZ (rawkvm only). */
  hostTscKhz?: number;
  wallMs: number;
}

interface Options { rounds: number; n: number; kernel: string; json: boolean }



function usage(msg?: string): never {
  if (msg) process.stderr.write(`bench/exits: ${msg}\n`);
  process.stderr.write('usage: node dist/bench/exits.js [--rounds R (default 5)] [--n N (default 100000)] [--kernel FILE] [--json]\n');
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { rounds: 5, n: 100000, kernel: path.join(ROOT, 'guest', 'out', 'guest.elf'), json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(`${a} needs a value`); return argv[++i]; };
    const int = (s: string, min: number) => { const v = Number(s); if (!Number.isInteger(v) || v < min) usage(`bad value for ${a}: ${s}`); return v; };
    if (a === '--rounds') o.rounds = int(val(), 1);
    else if (a === '--n') o.n = int(val(), 1);
    else if (a === '--kernel') o.kernel = path.resolve(val());
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') usage();
    else usage(`unknown argument ${a}`);
  }
  return o;
}





function runOnce(vmm: Vmm, round: number, o: Options): RunResult {
  const cmdline = `workload=exits n=${o.n}`;
  const [cmd, args] = vmm === 'rawkvm'
    ? [RAWKVM, [o.kernel, cmdline]]
    : [process.execPath, [path.join(ROOT, 'bin', 'tsvmm.js'), 'run', '--kernel', o.kernel, '--cmdline', cmdline]];
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 16 << 20, timeout: 30 * 60 * 1000 });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const out = (r.stdout ?? '') + (r.stderr ?? '');
  const fail = (why: string): never => {
    throw new Error(`${vmm} round ${round}: ${why}\n--- output ---\n${out.split('\n').slice(-20).join('\n')}`);
  };
  if (r.error) fail(r.error.message);
  if (r.status !== 0) fail(`exit status ${r.status}${r.signal ? ` (signal ${r.signal})` : ''}`);
  if (!/^@done ok\s*$/m.test(r.stdout)) fail('no "@done ok" line from the guest');

  const res: RunResult = { vmm, round, cycles: { pio: NaN, mmio: NaN }, n: { pio: NaN, mmio: NaN }, guestNs: {}, guestTscKhz: 0, wallMs };
  const boot = /^@boot .*\btsc_khz=(\d+)/m.exec(r.stdout);
  if (boot) res.guestTscKhz = Number(boot[1]);
  for (const m of r.stdout.matchAll(/^@exits kind=(\w+) (.*)$/gm)) {
    const kind = m[1] as Kind;
    if (!KINDS.includes(kind)) continue;
    const kv = Object.fromEntries([...m[2].matchAll(/(\w+)=(\S+)/g)].map((x) => [x[1], x[2]]));
    res.n[kind] = Number(kv.n);
    res.cycles[kind] = Number(kv.cycles);
    if (kv.ns_per_exit !== undefined) res.guestNs[kind] = Number(kv.ns_per_exit);
  }
  for (const k of KINDS) if (!(res.n[k] > 0) || !Number.isFinite(res.cycles[k])) fail(`no @exits kind=${k} line`);
  if (vmm === 'rawkvm') {
    const s = /^@rawkvm .*\btsc_khz=(\d+)/m.exec(r.stderr);
    if (s) res.hostTscKhz = Number(s[1]);
  }
  return res;
}





function main(): number {
  const o = parseArgs(process.argv.slice(2));
  const tStart = process.hrtime.bigint();
  ensureGuest(o.kernel);
  buildRawkvm();
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('tsvmm is not built: run `npx tsc -p .` first');

  const log = (s: string) => { if (!o.json) process.stdout.write(s + '\n'); };
  log(`bench/exits: guest "workload=exits n=${o.n}", ${o.rounds} rounds, rawkvm and tsvmm alternating`);
  const results: RunResult[] = [];
  const failures: { vmm: Vmm; round: number; error: string }[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const order: Vmm[] = round % 2 ? ['rawkvm', 'tsvmm'] : ['tsvmm', 'rawkvm'];
    for (const vmm of order) {
      let r: RunResult | undefined;
      for (let attempt = 1; !r; attempt++) {
        try {
          r = runOnce(vmm, round, o);
        } catch (e) {
          // A failed run is reported and counted, never silently dropped; retried up to twice.
          const msg = (e as Error).message;
          failures.push({ vmm, round, error: msg });
          log(`  round ${round} ${vmm.padEnd(6)}  FAILED (attempt ${attempt}): ${msg.split('\n').filter((l) => /error|FAIL|status|signal/i.test(l)).slice(-2).join(' / ')}`);
          if (attempt >= 3) throw e;
        }
      }
      results.push(r);
      log(`  round ${round} ${vmm.padEnd(6)}  pio ${(r.cycles.pio / r.n.pio).toFixed(0).padStart(7)} cycles/exit  mmio ${(r.cycles.mmio / r.n.mmio).toFixed(0).padStart(7)} cycles/exit  wall ${(r.wallMs / 1000).toFixed(2)} s`);
    }
  }

  // One TSC frequency for both sides.
  const hostKhz = results.find((r) => r.hostTscKhz)?.hostTscKhz ?? 0;
  const guestKhz = results.find((r) => r.guestTscKhz)?.guestTscKhz ?? 0;
  const [khz, khzSource] = hostKhz ? [hostKhz, 'KVM_GET_TSC_KHZ'] : guestKhz ? [guestKhz, 'guest cpuid 0x40000010'] : [cpuinfoKhz(), '/proc/cpuinfo cpu MHz'];
  if (!khz) throw new Error('cannot determine the TSC frequency');
  const nsPerExit = (r: RunResult, k: Kind) => (r.cycles[k] / r.n[k]) * 1e6 / khz;

  const of = (vmm: Vmm) => results.filter((r) => r.vmm === vmm);
  const stats = (vmm: Vmm, k: Kind) => {
    const xs = of(vmm).map((r) => nsPerExit(r, k));
    return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
  };
  const summary = Object.fromEntries(KINDS.map((k) => {
    const raw = stats('rawkvm', k), ts = stats('tsvmm', k);
    return [k, { rawkvm: raw, tsvmm: ts, ratio: ts.median / raw.median }];
  })) as Record<Kind, { rawkvm: ReturnType<typeof stats>; tsvmm: ReturnType<typeof stats>; ratio: number }>;
  const wall = { rawkvm: median(of('rawkvm').map((r) => r.wallMs)), tsvmm: median(of('tsvmm').map((r) => r.wallMs)) };
  const totalS = Number(process.hrtime.bigint() - tStart) / 1e9;
  const worst = Math.max(...KINDS.map((k) => summary[k].ratio));

  if (o.json) {
    process.stdout.write(JSON.stringify({ n: o.n, rounds: o.rounds, tscKhz: khz, tscKhzSource: khzSource, machine: machine(), summary, wallMs: wall, totalS, target: TARGET_RATIO, results, failures }, null, 2) + '\n');
    return 0;
  }
  const us = (x: number) => (x / 1000).toFixed(2);
  const cell = (s: { median: number; min: number; max: number }) => `${us(s.median)} (${us(s.min)}-${us(s.max)})`;
  const rows = [
    ['exit', 'rawkvm µs/exit', 'tsvmm µs/exit', 'tsvmm/raw'],
    ...KINDS.map((k) => [k.toUpperCase(), cell(summary[k].rawkvm), cell(summary[k].tsvmm), summary[k].ratio.toFixed(3)]),
    ['wall per run (s)', (wall.rawkvm / 1000).toFixed(2), (wall.tsvmm / 1000).toFixed(2), (wall.tsvmm / wall.rawkvm).toFixed(3)],
  ];
  log('');
  log(`median of ${o.rounds} rounds (min-max in brackets); TSC ${khz} kHz from ${khzSource}; n=${o.n} exits per kind`);
  log(table(rows));
  log(`machine: ${machine()}`);
  if (failures.length) log(`failed runs (retried): ${failures.map((f) => `${f.vmm} round ${f.round}`).join(', ')}`);
  log(`total wall time ${totalS.toFixed(1)} s; worst ratio ${worst.toFixed(3)} (target <= ${TARGET_RATIO}: ${worst <= TARGET_RATIO ? 'met' : 'NOT met'})`);
  return 0;
}

try {
  process.exitCode = main();
} catch (e) {
  process.stderr.write(`bench/exits: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
