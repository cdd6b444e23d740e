/**
 * bench/linux-service: the seed's own measure, "applications continue to correctly provide
 * services", on a Linux guest (issue 16). Boots the emulated hardware-KVM host (emulated-host/host.ts)
 * and runs bench/emulated/linux-service.ts there: Debian's kernel under tsvmm serves HTTP from its
 * virtio disk (files, and uploads synced before they are acknowledged, read back later), a TCP echo
 * and a UDP echo; a client in L1 checks every answer while faults go into the vmm, the
 * driver-domain, the priv-domain and the keeper. Each injection is a JSON line (a bench/campaign
 * RunRecord, workload "linux-service") appended to --out as it is reported; a later run with the
 * same seed goes on from the next run number. The report section `linux-service` of
 * docs/fault-injection.md (and --json) is regenerated from the file.
 *
 *   npx tsc -p . && node scripts/bundle.js && node dist/bench/linux-service.js [--seed S] [--minutes M]
 *       [--components vmm,driver-domain,priv-domain,keeper] [--kinds SIGKILL,...] [--window-s W] [--out FILE] [--log FILE]
 *   node dist/bench/linux-service.js --report [--out FILE] [--md FILE] [--json FILE]
 *
 * Only one emulated host should run at a time on a shared 2-CPU machine (it takes both CPUs).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';
import { parseArgs } from 'util';
import { buildL1Image, emulatedHostUnavailable, runInEmulatedHost } from '../emulated-host/host';
import { readRecords, RunRecord, writeReport } from './campaign';
import { machine, mtime, ROOT } from './lib';

/** Where these runs happen (the report's line; the load averages in it are L1's). */
const WHERE = `the emulated AMD-V host (QEMU TCG, one emulated CPU, kvm-amd) on ${machine()}; load averages are L1's`;
const UDPECHO_SRC = path.join(ROOT, 'bench', 'linux-service', 'udpecho.c');
const UDPECHO = path.join(ROOT, 'bench', 'out', 'udpecho');

/** The guest's UDP echo server, static (the guest has no C library of its own); bench/out goes into the L1 image. */
function buildUdpEcho(): void {
  if (mtime(UDPECHO) >= mtime(UDPECHO_SRC)) return;
  fs.mkdirSync(path.dirname(UDPECHO), { recursive: true });
  execFileSync('gcc', ['-static', '-Os', '-s', '-Wall', '-o', UDPECHO, UDPECHO_SRC], { stdio: 'inherit' });
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: {
    seed: { type: 'string' }, minutes: { type: 'string' }, components: { type: 'string' }, kinds: { type: 'string' }, 'window-s': { type: 'string' },
    out: { type: 'string' }, md: { type: 'string' }, json: { type: 'string' }, log: { type: 'string' }, report: { type: 'boolean' },
  } });
  const out = values.out ?? path.join(ROOT, 'bench', 'out', 'linux-service.jsonl');
  const md = values.md ?? path.join(ROOT, 'docs', 'fault-injection.md');
  const json = values.json ?? path.join(ROOT, 'docs', 'fault-injection-linux.json');
  if (values.report) { writeReport(readRecords(out), md, json, 'linux-service', WHERE); return 0; }
  for (const [k, v] of Object.entries({ seed: values.seed, minutes: values.minutes, 'window-s': values['window-s'] })) {
    if (v !== undefined && !/^\d+$/.test(v)) throw new Error(`invalid --${k} "${v}": expected a whole number`);
  }
  const seed = Number(values.seed ?? 1);
  const minutes = Number(values.minutes ?? 20);
  const why = emulatedHostUnavailable();
  if (why) throw new Error(why);
  buildUdpEcho();
  const image = buildL1Image({ log: (l) => process.stderr.write(`linux-service: ${l}\n`) });
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const first = readRecords(out).filter((r) => r.seed === seed).reduce((m, r) => Math.max(m, r.run + 1), 0);
  const logFile = values.log ?? path.join(os.tmpdir(), 'tsvmm-linux-service.log');
  const log = fs.openSync(logFile, 'a', 0o600);
  const t0 = Date.now();
  let n = 0;
  const seen = new Set<number>();
  const args = [`--seed ${seed}`, `--first ${first}`, `--minutes ${minutes}`, `--tag lsv${seed}`,
    ...(values.components ? [`--components ${values.components}`] : []), ...(values.kinds ? [`--kinds ${values.kinds}`] : []),
    ...(values['window-s'] ? [`--window-s ${values['window-s']}`] : [])];
  for (const a of args) if (!/^--[\w-]+ [\w,.-]+$/.test(a)) throw new Error(`invalid argument "${a}"`);
  process.stderr.write(`linux-service: seed ${seed} from run ${first}, ${minutes} min of injections; console in ${logFile}\n`);
  // L1 boots, the guest boots (minutes under TCG), then the injections, then the kernel log and the stop.
  const r = await runInEmulatedHost(`node dist/bench/emulated/linux-service.js ${args.join(' ')}`, {
    image, timeoutMs: (minutes + 25) * 60_000,
    onLine: (l) => {
      fs.writeSync(log, `${((Date.now() - t0) / 1000).toFixed(1).padStart(7)} ${l}\n`);
      const m = /@svc-run (\{.*\})\s*$/.exec(l);
      let rec: RunRecord | undefined;
      try { rec = m ? (JSON.parse(m[1]) as RunRecord) : undefined; } catch { process.stderr.write(`linux-service: a record line was cut (its copy follows): ${l.slice(0, 120)}\n`); }
      if (rec && !seen.has(rec.run)) {
        seen.add(rec.run);
        fs.appendFileSync(out, JSON.stringify(rec) + '\n');
        n++;
        process.stderr.write(`run ${seed}/${rec.run}: ${rec.component} ${rec.kind}: ${rec.outcome}${rec.recoveryMs !== undefined ? ` (recovered in ${rec.recoveryMs.toFixed(0)} ms; ` : ' ('}service back after ${rec.service?.restoredMs ?? '-'} ms, longest gap ${rec.service?.gapMs ?? '-'} ms)${rec.symptoms.length ? ` [${rec.symptoms[0].slice(0, 160)}]` : ''}${rec.injectError ? ` (not injected: ${rec.injectError.slice(0, 100)})` : ''}\n`);
      } else if (!m && /@svc-(note|end)/.test(l)) process.stderr.write(`${l.replace(/^.*?@svc-/, '')}\n`);
    },
  });
  fs.closeSync(log);
  process.stderr.write(`linux-service: ${n} injections in ${((Date.now() - t0) / 60_000).toFixed(1)} min (L1 booted in ${((r.bootMs ?? 0) / 1000).toFixed(0)} s)${r.error ? `; the run failed: ${r.error}` : ''}\n`);
  writeReport(readRecords(out), md, json, 'linux-service', WHERE);
  return r.error || r.status !== 0 ? 1 : 0;
}

main().then((c) => { process.exitCode = c; }, (e: Error) => { process.stderr.write(`linux-service: error: ${e.message}\n`); process.exitCode = 1; });
