/**
 * bench/campaign: the seed's fault-injection methodology (issue 16). Repeats, unattended:
 * start a VM on a self-verifying workload, inject one fault (cli/inject.ts) at a random moment,
 * observe a fixed window, then probe recovery once more (SIGKILL the vmm: a fault that silently
 * broke what recovery trusts shows here), stop, check the disk image on the host, and classify
 * in the seed's terms:
 *   not-manifested  nothing anyone could see: no detector fired, the guest saw nothing, it kept going
 *   recovered       detected (a crash, a hang, a validation or checksum failure, a failed message)
 *                   and recovered: no guest error, no lost acknowledged write, the guest kept
 *                   progressing, the API answered, the image checks out
 *   not-recovered   detected, but the VM was lost or the workload saw an error or stalled
 *   silent          the guest saw wrong data, an error or a stall, and no detector flagged it
 *
 * Workloads (chosen per run from the seed): blk-loop verify=1 (every block read back and checked
 * by the guest; the image checked by the host afterwards), or the counter hash chain on every
 * vCPU (checked by the guest each step and by the host on every line).
 *
 * Reproducible: run i of seed S uses the random stream (S, i) for its workload, fault, moment and
 * the injector's choices. Resumable: results are appended as JSON lines; runs already in the file
 * are skipped. The report (docs/fault-injection.md + .json) is regenerated from the file.
 *
 *   npx tsc -p . && nice node dist/bench/campaign.js [--seed S] [--runs N] [--minutes M] [--out FILE]
 *       [--components vmm,driver-domain,...] [--kinds reg,mem,...] [--window MS] [--no-probe]
 *   node dist/bench/campaign.js --report [--out FILE] [--md docs/fault-injection.md] [--json docs/fault-injection.json] [--section NAME]
 * (--section: which marked part of the markdown to rewrite, <!-- NAME:begin --> ... <!-- NAME:end -->; default campaign)
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { RunningVm, guestErrors } from '../test/helpers/fault-harness';
import { checkImage } from '../test/helpers/blk-image';
import { percentile } from '../test/helpers/kill-harness';
import { request } from '../cli/verbs';
import { FAIL_STOP_KINDS, inject, InjectComponent, InjectKind, InjectResult, kindsFor, pidsFrom, Rng } from '../cli/inject';
import { vmPaths } from '../contracts/paths';
import { ROOT, machine } from './lib';

const GUEST = path.join(ROOT, 'guest', 'out', 'guest.elf');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export type Outcome = 'not-manifested' | 'recovered' | 'not-recovered' | 'silent';

/** The components a campaign covers and, per component, its fault kinds. */
export const CAMPAIGN_COMPONENTS: InjectComponent[] = ['vmm', 'vmm-vcpu', 'keeper', 'driver-domain', 'priv-domain'];

/** One run's record (a JSON line). */
export interface RunRecord {
  seed: number; run: number; at: string;
  component: InjectComponent; kind: InjectKind; workload: string; cpus: number;
  delayMs: number;
  injected?: InjectResult; injectError?: string;
  outcome: Outcome;
  detected: boolean; detectors: string[];
  /** What the guest, the host check or the API saw. */
  symptoms: string[];
  /** The first recovery after the fault (supervisor's measure, ms). */
  recoveryMs?: number;
  probe?: 'recovered' | 'failed' | 'skipped';
  wallMs: number;
}

/** Lines on the supervisor's stderr that mean a detector fired (other than a recovery or a hang). */
const DETECTOR = /died|hung|uncaught exception|fatal|invalid|corrupt|checksum|mismatch|validat|malformed|bad |refus|restore failed|cannot|gave up|recovery failed|exited unexpectedly|error/i;
const BENIGN = /the guest survives its VMM|ready \(pid|standby ready|not a hang yet|disk \d+ I\/O:/;
const COUNTER = /^@counter cpu=(\d+) n=(\d+) hash=([0-9a-f]{16}) tsc=\d+ ok$/;

/** The guest's own checks plus the host's check of the counter lines: each line a symptom. */
export function guestSymptoms(out: string, report: number): string[] {
  const bad = guestErrors(out);
  const last: number[] = [];
  for (const l of out.split('\n')) {
    if (l.startsWith('@error')) { if (!bad.includes(l)) bad.push(l); continue; }
    if (!l.startsWith('@counter')) continue;
    const m = COUNTER.exec(l);
    if (!m) { bad.push(`malformed: ${l}`); continue; }
    const cpu = Number(m[1]);
    const n = Number(m[2]);
    const prev = last[cpu] ?? 0;
    if (n !== prev + report && n !== prev) bad.push(`cpu ${cpu}: ${prev} -> ${n}`);
    last[cpu] = Math.max(prev, n);
  }
  return bad;
}

/** The seed's classification from what was seen. */
export function classify(detected: boolean, symptoms: string[]): Outcome {
  if (!symptoms.length) return detected ? 'recovered' : 'not-manifested';
  return detected ? 'not-recovered' : 'silent';
}

interface Plan { component: InjectComponent; kind: InjectKind; workload: 'blk-loop' | 'counter'; cpus: number; delayMs: number; injectSeed: bigint }

/** The matrix of (component, kind) pairs, filtered. */
export function matrix(components: InjectComponent[], kinds?: InjectKind[]): [InjectComponent, InjectKind][] {
  const m: [InjectComponent, InjectKind][] = [];
  for (const c of components) for (const k of kindsFor(c)) if (!kinds || kinds.includes(k)) m.push([c, k]);
  return m;
}

/** Run `i` of seed `seed`: round-robin over the matrix (balanced), the rest from the run's own stream. */
export function plan(seed: number, i: number, m: [InjectComponent, InjectKind][]): Plan {
  const rng = new Rng(BigInt(seed) * 1_000_003n + BigInt(i));
  const [component, kind] = m[i % m.length];
  // The driver-domain and disk faults need a disk; the rest get the counter chain on every vCPU a third of the time.
  const needsDisk = component === 'driver-domain' || ['queue-progress', 'state-page', 'disk-truncate'].includes(kind);
  const workload = !needsDisk && rng.int(3) === 0 ? 'counter' : 'blk-loop';
  const cpus = workload === 'counter' || component === 'vmm-vcpu' ? 2 : 1 + rng.int(2);
  return { component, kind, workload, cpus, delayMs: 200 + rng.int(1500), injectSeed: rng.next() };
}

const COUNTER_REPORT = 20_000_000;

async function components(socket: string): Promise<{ name: string; pid: number }[] | undefined> {
  try {
    const r = await Promise.race([request(socket, 'GET', '/v1/vm/components'), sleep(3000).then(() => undefined)]);
    return r && r.status === 200 ? JSON.parse(r.body) : undefined;
  } catch { return undefined; }
}

/** Does the API answer within `ms` (retrying while a priv-domain restarts, as the CLI does)? */
async function apiAnswers(socket: string, ms: number): Promise<boolean> {
  const t = performance.now() + ms;
  while (performance.now() < t) {
    if (await components(socket)) return true;
    await sleep(100);
  }
  return false;
}

/** Waits until `cond` or `ms`; true if it held. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const t = performance.now() + ms;
  while (!cond()) { if (performance.now() > t) return false; await sleep(10); }
  return true;
}

export interface RunOptions { windowMs: number; probe: boolean; tag: string }

export async function runOne(seed: number, i: number, p: Plan, o: RunOptions): Promise<RunRecord> {
  const t0 = performance.now();
  const name = `${o.tag}-${seed}-${i}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-campaign-'));
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 16 << 20);
  const cmdline = p.workload === 'counter'
    ? `workload=counter n=0 report=${COUNTER_REPORT}`
    : 'workload=blk-loop blk_n=1000 qd=16 mode=seq verify=1 blk_report=100 virtio_irq=1 blk_timeout=10';
  const progress = p.workload === 'counter' ? '@counter' : '@blk-progress';
  const vm = new RunningVm(['--name', name, '--kernel', GUEST, '--cpus', String(p.cpus), '--metrics-addr', 'none', ...(p.workload === 'blk-loop' ? ['--disk', img] : []), '--cmdline', cmdline], { TSVMM_TEST_HOOKS: '0' });
  const socket = vmPaths(name).socket;
  const rec: RunRecord = {
    seed, run: i, at: new Date().toISOString(), component: p.component, kind: p.kind, workload: p.workload, cpus: p.cpus,
    delayMs: p.delayMs, outcome: 'not-manifested', detected: false, detectors: [], symptoms: [], wallMs: 0,
  };
  let errAt = 0;
  let recAt = 0;
  try {
    await vm.waitFor(() => vm.count(progress) >= 2 && vm.pid.vmm > 0, 60_000, 'the first progress lines');
    let comps = await components(socket);
    for (let k = 0; k < 50 && !(comps && pidsFrom(comps).keeper && (p.workload === 'counter' || pidsFrom(comps)['driver-domain'])); k++) { await sleep(100); comps = await components(socket); }
    if (!comps) throw new Error('the API did not answer before the fault');
    await sleep(p.delayMs);
    comps = (await components(socket)) ?? comps;
    errAt = vm.err.length;
    recAt = vm.recoveries.length;
    const hangsAt = vm.hangs.length;
    const linesAt = vm.lines.length;
    const tInject = performance.now();
    try {
      rec.injected = await inject(p.component, p.kind, pidsFrom(comps), { seed: p.injectSeed, cpus: p.cpus, socket });
    } catch (e) {
      rec.injectError = (e as Error).message;
    }
    const stopped = p.kind === 'SIGSTOP';
    await sleep(o.windowMs);
    const symptoms: string[] = [];
    const progressed = () => vm.lines.slice(linesAt).some((l) => l.at > performance.now() - 1500 && l.line.startsWith(progress));
    // The guest must be making progress again: within the window, or soon after it (a recovery on a loaded host can take seconds).
    if (!vm.exit && !(await until(progressed, 8000))) symptoms.push(`no guest progress in the ${o.windowMs} ms window's last 1.5 s and 8 s after`);
    if (!vm.exit && !(await apiAnswers(socket, 8000))) symptoms.push('the API did not answer for 8 s');
    // A stopped component: the window told whether anyone noticed; now let it go so the run can end cleanly.
    if (stopped && rec.injected) { try { process.kill(rec.injected.pid, 'SIGCONT'); } catch { /* gone */ } }
    // What the window saw.
    const detectors: string[] = [];
    for (const r of vm.recoveries.slice(recAt)) detectors.push(r.line.replace(/^tsvmm: /, ''));
    for (const h of vm.hangs.slice(hangsAt)) detectors.push(`${h.component} hung (${h.stillMs} ms)`);
    for (const l of vm.err.slice(errAt).split('\n')) {
      if (/^tsvmm: recovered priv-domain/.test(l)) detectors.push(l.replace(/^tsvmm: /, ''));
      else if (l && DETECTOR.test(l) && !BENIGN.test(l) && !/^tsvmm: recovered /.test(l)) detectors.push(l.slice(0, 300));
    }
    const privRecovered = /recovered priv-domain/.test(vm.err.slice(errAt));
    const firstRec = vm.recoveries.slice(recAt).find((r) => r.at > tInject);
    if (firstRec) rec.recoveryMs = firstRec.ms;
    else if (privRecovered) rec.recoveryMs = Number(/recovered priv-domain \(cause: [^)]*\) in ([\d.]+) ms/.exec(vm.err.slice(errAt))?.[1] ?? NaN);
    // The probe: recovery must still work after the fault.
    if (o.probe && !vm.exit) {
      const c = await components(socket);
      const vmm = c ? pidsFrom(c).vmm : vm.pid.vmm;
      const before = vm.recoveries.length;
      const errBefore = vm.err.length;
      try { process.kill(vmm, 'SIGKILL'); } catch { /* gone */ }
      const ok = await until(() => vm.recoveries.slice(before).some((r) => r.component === 'vmm') || !!vm.exit, 8000);
      const tRec = performance.now();
      const resumed = ok && !vm.exit && (await until(() => vm.lines.some((l) => l.at > tRec && l.line.startsWith(progress)), 5000));
      rec.probe = resumed ? 'recovered' : 'failed';
      if (!resumed) {
        symptoms.push(`recovery probe (SIGKILL of the vmm after the window) failed: ${vm.exit ? `VM exited: ${vm.err.slice(errBefore).trim().split('\n').slice(-1)[0]}` : 'no progress after it'}`);
      }
    } else rec.probe = 'skipped';
    if (vm.exit) symptoms.push(`VM lost: tsvmm exited ${JSON.stringify(vm.exit)}: ${vm.err.trim().split('\n').slice(-1)[0]}`);
    await vm.stop();
    symptoms.push(...guestSymptoms(vm.out, COUNTER_REPORT).slice(0, 20));
    if (p.workload === 'blk-loop' && p.kind !== 'disk-truncate') {
      const c = checkImage(img, { bs: 4096, maxErrors: 5 });
      if (c.errorCount) symptoms.push(`image check: ${c.errorCount} bad blocks (${c.errors.join('; ')})`);
    }
    // Detectors that fired during the probe count too when the probe failed (the system said why it gave up).
    rec.detectors = detectors;
    rec.detected = detectors.length > 0;
    rec.symptoms = symptoms;
    rec.outcome = classify(rec.detected, symptoms);
  } catch (e) {
    rec.symptoms.push(`harness: ${(e as Error).message.split('\n')[0]}`);
    rec.outcome = 'not-recovered';
    rec.detectors.push('harness could not run the VM');
    await vm.stop();
  } finally {
    vm.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  rec.wallMs = Math.round(performance.now() - t0);
  return rec;
}

// ---- the report ----

/** Wilson score interval (95%) for k successes of n. */
export function wilson(k: number, n: number, z = 1.96): [number, number] {
  if (n === 0) return [0, 1];
  const p = k / n;
  const d = 1 + (z * z) / n;
  const c = p + (z * z) / (2 * n);
  const h = z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n));
  return [Math.max(0, (c - h) / d), Math.min(1, (c + h) / d)];
}

/** The seed's published recovery rates of detected failures. */
export const SEED_FIGURES: Record<string, string> = { vmm: '> 86%', 'vmm-vcpu': '> 86%', keeper: '> 86%', 'driver-domain': '> 96%', 'priv-domain': '> 96%' };

export interface ReportRow {
  component: string; kind: string; injections: number; injectFailed: number; manifested: number; detected: number; recovered: number;
  notRecovered: number; silent: number; recoveredOfDetected: number; ci: [number, number]; p50Ms: number; p99Ms: number;
}

export function summarize(recs: RunRecord[]): ReportRow[] {
  const key = (r: RunRecord) => `${r.component}\t${r.kind}`;
  const groups = new Map<string, RunRecord[]>();
  for (const r of recs) groups.set(key(r), [...(groups.get(key(r)) ?? []), r]);
  const row = (component: string, kind: string, rs: RunRecord[]): ReportRow => {
    const detected = rs.filter((r) => r.outcome === 'recovered' || r.outcome === 'not-recovered').length;
    const recovered = rs.filter((r) => r.outcome === 'recovered').length;
    const times = rs.map((r) => r.recoveryMs).filter((x): x is number => x !== undefined && Number.isFinite(x));
    return {
      component, kind, injections: rs.length, injectFailed: rs.filter((r) => r.injectError).length,
      manifested: rs.filter((r) => r.outcome !== 'not-manifested').length, detected, recovered,
      notRecovered: rs.filter((r) => r.outcome === 'not-recovered').length, silent: rs.filter((r) => r.outcome === 'silent').length,
      recoveredOfDetected: detected ? recovered / detected : NaN, ci: wilson(recovered, detected),
      p50Ms: times.length ? percentile(times, 50) : NaN, p99Ms: times.length ? percentile(times, 99) : NaN,
    };
  };
  const rows: ReportRow[] = [];
  const comps = [...new Set(recs.map((r) => r.component))];
  for (const c of comps) {
    const mine = recs.filter((r) => r.component === c);
    for (const k of [...new Set(mine.map((r) => r.kind))]) rows.push(row(c, k, groups.get(`${c}\t${k}`)!));
    rows.push(row(c, 'all', mine));
  }
  rows.push(row('all', 'all', recs));
  return rows;
}

export function reportMarkdown(recs: RunRecord[], rows: ReportRow[], wallS: number): string {
  const pct = (x: number) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '-');
  const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(x < 10 ? 2 : 0) : '-');
  const lines = [
    '| component | fault | injections | manifested | detected | recovered | not recovered | silent | recovered of detected (95% Wilson) | recovery p50 / p99 ms | seed |',
    '|---|---|---:|---:|---:|---:|---:|---:|---|---|---|',
  ];
  for (const r of rows) {
    const b = (s: string) => (r.kind === 'all' ? `**${s}**` : s);
    lines.push(`| ${b(r.component)} | ${b(r.kind)} | ${r.injections}${r.injectFailed ? ` (${r.injectFailed} failed to inject)` : ''} | ${r.manifested} | ${r.detected} | ${r.recovered} | ${r.notRecovered} | ${r.silent} | ${pct(r.recoveredOfDetected)} (${pct(r.ci[0])}-${pct(r.ci[1])}) | ${ms(r.p50Ms)} / ${ms(r.p99Ms)} | ${r.kind === 'all' ? SEED_FIGURES[r.component] ?? '' : ''} |`);
  }
  const bad = recs.filter((r) => r.outcome === 'silent' || r.outcome === 'not-recovered');
  const classes = new Map<string, RunRecord[]>();
  for (const r of bad) {
    const k = `${r.outcome}: ${r.component} ${r.kind}`;
    classes.set(k, [...(classes.get(k) ?? []), r]);
  }
  const cls: string[] = [];
  for (const [k, rs] of classes) {
    cls.push(`- **${k}** (${rs.length}): e.g. run ${rs[0].seed}/${rs[0].run}: ${rs[0].injected?.target ?? rs[0].injectError ?? ''}; symptoms: ${rs[0].symptoms.slice(0, 2).join('; ') || '-'}; detectors: ${rs[0].detectors.slice(0, 2).join('; ') || 'none'}`);
  }
  const seeds = [...new Set(recs.map((r) => r.seed))].join(', ');
  return `${lines.join('\n')}\n\n${recs.length} injections (seeds ${seeds}), ${(wallS / 3600).toFixed(2)} h of runs, on ${machine()}.\n\n` +
    `Unrecovered and silent runs, by class (every run is in the JSON lines file):\n\n${cls.join('\n') || '- none'}\n`;
}

/** Rewrites the generated part of docs/fault-injection.md (between the section's markers) and the JSON. */
export function writeReport(recs: RunRecord[], md: string, json: string, section = 'campaign'): void {
  const BEGIN = `<!-- ${section}:begin -->`;
  const END = `<!-- ${section}:end -->`;
  const rows = summarize(recs);
  const wallS = recs.reduce((s, r) => s + r.wallMs, 0) / 1000;
  const body = reportMarkdown(recs, rows, wallS);
  let doc = fs.existsSync(md) ? fs.readFileSync(md, 'utf8') : `# Fault injection\n\n${BEGIN}\n${END}\n`;
  if (!doc.includes(BEGIN)) doc += `\n${BEGIN}\n${END}\n`;
  doc = doc.slice(0, doc.indexOf(BEGIN) + BEGIN.length) + '\n' + body + doc.slice(doc.indexOf(END));
  fs.writeFileSync(md, doc);
  fs.writeFileSync(json, JSON.stringify({ generated: new Date().toISOString(), injections: recs.length, wallSeconds: wallS, rows }, null, 1) + '\n');
}

export function readRecords(file: string): RunRecord[] {
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as RunRecord);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string' }, runs: { type: 'string' }, minutes: { type: 'string' }, out: { type: 'string' },
      components: { type: 'string' }, kinds: { type: 'string' }, window: { type: 'string' }, 'no-probe': { type: 'boolean' },
      report: { type: 'boolean' }, md: { type: 'string' }, json: { type: 'string' }, tag: { type: 'string' }, section: { type: 'string' },
    },
  });
  const out = values.out ?? path.join(ROOT, 'bench', 'out', 'campaign.jsonl');
  const md = values.md ?? path.join(ROOT, 'docs', 'fault-injection.md');
  const json = values.json ?? path.join(ROOT, 'docs', 'fault-injection.json');
  if (values.report) { writeReport(readRecords(out), md, json, values.section); return; }
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const seed = Number(values.seed ?? 1);
  const comps = (values.components?.split(',') as InjectComponent[] | undefined) ?? CAMPAIGN_COMPONENTS;
  const m = matrix(comps, values.kinds?.split(',') as InjectKind[] | undefined);
  if (!m.length) throw new Error('no (component, kind) pair left to inject');
  const runs = Number(values.runs ?? 1e9);
  const deadline = values.minutes ? Date.now() + Number(values.minutes) * 60_000 : Infinity;
  const done = new Set(readRecords(out).filter((r) => r.seed === seed).map((r) => r.run));
  const o: RunOptions = { windowMs: Number(values.window ?? 3000), probe: !values['no-probe'], tag: values.tag ?? 'campaign' };
  for (let i = 0; i < runs && Date.now() < deadline; i++) {
    if (done.has(i)) continue;
    const p = plan(seed, i, m);
    const r = await runOne(seed, i, p, o);
    fs.appendFileSync(out, JSON.stringify(r) + '\n');
    process.stderr.write(`run ${seed}/${i}: ${p.component} ${p.kind} (${p.workload}, ${p.cpus} vCPU): ${r.outcome}${r.recoveryMs !== undefined ? ` in ${r.recoveryMs.toFixed(1)} ms` : ''}${r.symptoms.length ? ` [${r.symptoms[0].slice(0, 160)}]` : ''} (${(r.wallMs / 1000).toFixed(1)} s)\n`);
  }
  writeReport(readRecords(out), md, json, values.section);
}

if (require.main === module) main().catch((e) => { process.stderr.write(`campaign: ${(e as Error).stack}\n`); process.exit(1); });

export { FAIL_STOP_KINDS };
