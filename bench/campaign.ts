/**
 * bench/campaign: the seed's fault-injection methodology (issue 16). Repeats, unattended: inject
 * one fault (cli/inject.ts) into a VM running a self-verifying workload, at a random moment,
 * observe a fixed window, then probe recovery once more (SIGKILL the vmm: a fault that silently
 * broke what recovery trusts shows here), and classify in the seed's terms:
 *   not-manifested  nothing anyone could see: no detector fired, the guest saw nothing, it kept going
 *   recovered       detected (a crash, a hang, a validation or checksum failure, a failed message)
 *                   and recovered: no guest error, no lost acknowledged write, the guest kept
 *                   progressing, the API answered, the image checks out
 *   not-recovered   detected, but the VM was lost or the workload saw an error or stalled
 *   silent          the guest saw wrong data, an error or a stall, and no detector flagged it
 *
 * One VM serves many injections while it stays healthy (--per-vm N, default 25): after each, every
 * vCPU's workload must be progressing with no error, the API answering and the probe recovered. A
 * VM that was lost, saw a symptom, had its disk cut on purpose, or served N injections is stopped
 * and its image checked on the host (a bad block goes on that VM's last record); the next run
 * starts a fresh one. --fresh: a VM per injection (the first campaigns' way, ~4 per minute).
 *
 * Workloads: blk-loop verify=1 on vCPU 0 (every block read back and checked by the guest; the
 * image checked by the host when the VM ends) and, on a 2-vCPU VM, the counter hash chain on
 * vCPU 1 (checked by the guest each step and by the host on every line). --fresh also picks the
 * counter chain on every vCPU for a third of the runs that need no disk.
 *
 * Reproducible: run i of seed S uses the random stream (S, i) for its fault, moment and the
 * injector's choices, and a VM started at run i takes its vCPU count from its own stream. Resumable:
 * results are appended as JSON lines when their VM ended (with its image check); runs already in
 * the file are skipped. The report (docs/fault-injection.md + .json) is regenerated from the file.
 *
 *   npx tsc -p . && nice node dist/bench/campaign.js [--seed S] [--runs N] [--minutes M] [--out FILE]
 *       [--components vmm,driver-domain,...] [--kinds reg,mem,...] [--window MS] [--no-probe]
 *       [--per-vm N | --fresh]
 *   node dist/bench/campaign.js --report [--out FILE] [--md docs/fault-injection.md] [--json docs/fault-injection.json] [--section NAME]
 * (--section: which marked part of the markdown to rewrite, <!-- NAME:begin --> ... <!-- NAME:end -->; default campaign)
 */
import * as fs from 'fs';
import { execFileSync } from 'child_process';
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
const DETECTOR = /died|hung|shrank|is full|uncaught exception|fatal|invalid|corrupt|checksum|mismatch|validat|malformed|bad |refus|restore failed|cannot|gave up|recovery failed|exited unexpectedly|error/i;
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
  const needsDisk = component === 'driver-domain' || ['queue-progress', 'state-page', 'disk-truncate', 'disk-full'].includes(kind);
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

/** One VM the injections run in: its process, API socket, disk image and what its guest runs. */
interface Session {
  vm: RunningVm; socket: string; dir: string; img: string; workload: 'blk-loop' | 'counter'; cpus: number;
  /** Guest lines that count as progress (every vCPU's workload must show some). */
  progress: string[];
  /** Guest symptoms already attributed to an earlier injection. */
  symptomsSeen: number;
  /** The image was cut on purpose (disk-truncate): no host check of it. */
  truncated: boolean;
  /** `dir` is a tmpfs mounted for this VM (unmounted when it ends). */
  tmpfs: boolean;
}

/** The size of a VM's own tmpfs (its 16 MiB sparse image, of which blk-loop writes 4 MiB). */
const SESSION_TMPFS_MB = 32;

/** Starts a VM: blk-loop on vCPU 0 over a fresh image (and the counter chain on vCPU 1: ap_counter), or the counter chain on every vCPU. */
async function startSession(name: string, workload: 'blk-loop' | 'counter', cpus: number): Promise<Session> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-campaign-'));
  // The image on a small tmpfs of its own where we may mount one (root): what disk-full fills.
  let tmpfs = false;
  if (process.getuid?.() === 0) {
    try { execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${SESSION_TMPFS_MB}m,mode=0700`, 'tsvmm-campaign', dir], { stdio: 'ignore' }); tmpfs = true; } catch { /* no mount here: disk-full fails to inject */ }
  }
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 16 << 20);
  const cmdline = workload === 'counter'
    ? `workload=counter n=0 report=${COUNTER_REPORT}`
    : `workload=blk-loop blk_n=1000 qd=16 mode=seq verify=1 blk_report=100 virtio_irq=1 blk_timeout=10${cpus > 1 ? ` ap_counter=1 n=0 report=${COUNTER_REPORT}` : ''}`;
  const progress = workload === 'counter' ? ['@counter'] : cpus > 1 ? ['@blk-progress', '@counter'] : ['@blk-progress'];
  const vm = new RunningVm(['--name', name, '--kernel', GUEST, '--cpus', String(cpus), '--metrics-addr', 'none', ...(workload === 'blk-loop' ? ['--disk', img] : []), '--cmdline', cmdline], { TSVMM_TEST_HOOKS: '0' });
  const sess: Session = { vm, socket: vmPaths(name).socket, dir, img, workload, cpus, progress, symptomsSeen: 0, truncated: false, tmpfs };
  try {
    await vm.waitFor(() => progress.every((p) => vm.count(p) >= 2) && vm.pid.vmm > 0, 60_000, 'the first progress lines');
  } catch (e) {
    await endSession(sess);
    throw e;
  }
  return sess;
}

/** Stops the VM; the host's check of its image (unless cut on purpose): symptoms, [] if clean. */
async function endSession(s: Session): Promise<string[]> {
  await s.vm.stop();
  const out: string[] = [];
  try {
    if (s.workload === 'blk-loop' && !s.truncated) {
      const c = checkImage(s.img, { bs: 4096, maxErrors: 5 });
      if (c.errorCount) out.push(`image check: ${c.errorCount} bad blocks (${c.errors.join('; ')})`);
    }
  } finally {
    s.vm.cleanup();
    if (s.tmpfs) { try { execFileSync('umount', [s.dir], { stdio: 'ignore' }); } catch { /* busy: emptied below */ } }
    try { fs.rmSync(s.dir, { recursive: true, force: true }); } catch { /* still mounted */ }
  }
  return out;
}

/** Components of the session's VM once they are all there (a keeper, the driver-domain if it has a disk). */
async function settled(s: Session): Promise<{ name: string; pid: number }[] | undefined> {
  let comps = await components(s.socket);
  for (let k = 0; k < 80 && !(comps && pidsFrom(comps).keeper && pidsFrom(comps).vmm && (s.workload === 'counter' || pidsFrom(comps)['driver-domain'])); k++) {
    if (s.vm.exit) return undefined;
    await sleep(100);
    comps = await components(s.socket);
  }
  return comps;
}

/**
 * One injection into a running, healthy VM, observed and classified (the record's outcome,
 * detectors, symptoms and probe); the VM is left running unless the fault or the probe ended it.
 */
async function injectAndObserve(s: Session, p: Plan, rec: RunRecord, o: RunOptions): Promise<void> {
  const { vm, socket } = s;
  let comps = await settled(s);
  if (!comps) throw new Error('the API did not answer before the fault');
  await sleep(p.delayMs);
  comps = (await components(socket)) ?? comps;
  const errAt = vm.err.length;
  const recAt = vm.recoveries.length;
  const hangsAt = vm.hangs.length;
  const tInject = performance.now();
  try {
    rec.injected = await inject(p.component, p.kind, pidsFrom(comps), { seed: p.injectSeed, cpus: s.cpus, socket });
  } catch (e) {
    rec.injectError = (e as Error).message;
  }
  if (p.kind === 'disk-truncate') s.truncated = true;
  await sleep(o.windowMs);
  // Data cut from the image shows when the guest reads it back: observe two whole passes after the cut.
  if (p.kind === 'disk-truncate' && rec.injected) await until(() => vm.lines.filter((l) => l.at > tInject && /^@blk-progress .*end=1/.test(l.line)).length >= 2 || !!vm.exit, 30_000);
  const symptoms: string[] = [];
  // The guest must be making progress again, every vCPU's workload: within the window, or soon
  // after it (a recovery on a loaded host can take seconds).
  const progressed = () => s.progress.every((pre) => vm.lines.some((l) => l.at > tInject && l.at > performance.now() - 1500 && l.line.startsWith(pre)));
  if (!vm.exit && !(await until(progressed, 8000))) symptoms.push(`no guest progress in the ${o.windowMs} ms window's last 1.5 s and 8 s after`);
  if (!vm.exit && !(await apiAnswers(socket, 8000))) symptoms.push('the API did not answer for 8 s');
  // A stopped component: the window told whether anyone noticed; now let it go.
  if (p.kind === 'SIGSTOP' && rec.injected) { try { process.kill(rec.injected.pid, 'SIGCONT'); } catch { /* gone */ } }
  const detectors: string[] = [];
  for (const r of vm.recoveries.slice(recAt)) detectors.push(r.line.replace(/^tsvmm: /, ''));
  for (const h of vm.hangs.slice(hangsAt)) detectors.push(`${h.component} hung (${h.stillMs} ms)`);
  for (const l of vm.err.slice(errAt).split('\n')) {
    if (/^tsvmm: recovered (priv-domain|keeper)/.test(l)) detectors.push(l.replace(/^tsvmm: /, ''));
    else if (l && DETECTOR.test(l) && !BENIGN.test(l) && !/^tsvmm: recovered /.test(l)) detectors.push(l.slice(0, 300));
  }
  const errSince = vm.err.slice(errAt);
  const firstRec = vm.recoveries.slice(recAt).find((r) => r.at > tInject);
  if (firstRec) rec.recoveryMs = firstRec.ms;
  else {
    const m = /recovered (?:priv-domain|keeper) \(cause: [^)]*\) in ([\d.]+) ms/.exec(errSince);
    if (m) rec.recoveryMs = Number(m[1]);
  }
  // The probe: recovery must still work after the fault.
  if (o.probe && !vm.exit) {
    const c = await components(socket);
    const vmm = c ? pidsFrom(c).vmm : vm.pid.vmm;
    const before = vm.recoveries.length;
    const errBefore = vm.err.length;
    try { process.kill(vmm, 'SIGKILL'); } catch { /* gone */ }
    const ok = await until(() => vm.recoveries.slice(before).some((r) => r.component === 'vmm') || !!vm.exit, 8000);
    const tRec = performance.now();
    const resumed = ok && !vm.exit && (await until(() => s.progress.every((pre) => vm.lines.some((l) => l.at > tRec && l.line.startsWith(pre))), 5000));
    rec.probe = resumed ? 'recovered' : 'failed';
    if (!resumed) symptoms.push(`recovery probe (SIGKILL of the vmm after the window) failed: ${vm.exit ? `VM exited: ${vm.err.slice(errBefore).trim().split('\n').slice(-1)[0]}` : 'no progress after it'}`);
  } else rec.probe = 'skipped';
  if (vm.exit) symptoms.push(`VM lost: tsvmm exited ${JSON.stringify(vm.exit)}: ${vm.err.trim().split('\n').slice(-1)[0]}`);
  // What the guest saw since the previous injection (its checks, and the host's check of the counter lines).
  const all = guestSymptoms(vm.out, COUNTER_REPORT);
  symptoms.push(...all.slice(s.symptomsSeen, s.symptomsSeen + 20));
  s.symptomsSeen = all.length;
  rec.detectors = detectors;
  rec.detected = detectors.length > 0;
  rec.symptoms = symptoms;
  rec.outcome = classify(rec.detected, symptoms);
}

/** A record for run `i`, not yet observed. */
function newRecord(seed: number, i: number, p: Plan, s?: Session): RunRecord {
  return {
    seed, run: i, at: new Date().toISOString(), component: p.component, kind: p.kind, workload: s?.workload ?? p.workload, cpus: s?.cpus ?? p.cpus,
    delayMs: p.delayMs, outcome: 'not-manifested', detected: false, detectors: [], symptoms: [], wallMs: 0,
  };
}

/** Run `i` in a VM of its own (the first campaigns' way; the sample in npm test). */
export async function runOne(seed: number, i: number, p: Plan, o: RunOptions): Promise<RunRecord> {
  const t0 = performance.now();
  const rec = newRecord(seed, i, p);
  let s: Session | undefined;
  try {
    s = await startSession(`${o.tag}-${seed}-${i}`, p.workload, p.cpus);
    await injectAndObserve(s, p, rec, o);
    const img = await endSession(s);
    s = undefined;
    rec.symptoms.push(...img);
    rec.outcome = classify(rec.detected, rec.symptoms);
  } catch (e) {
    rec.symptoms.push(`harness: ${(e as Error).message.split('\n')[0]}`);
    rec.outcome = 'not-recovered';
    rec.detectors.push('harness could not run the VM');
  } finally {
    if (s) await endSession(s).catch(() => []);
  }
  rec.wallMs = Math.round(performance.now() - t0);
  return rec;
}

/** The workload and vCPUs of the VM that starts at run `i` (its own random stream). */
export function sessionPlan(seed: number, i: number): { workload: 'blk-loop' | 'counter'; cpus: number } {
  const rng = new Rng(BigInt(seed) * 1_000_003n + BigInt(i) + 0x5e55n * 1_000_000_007n);
  return { workload: 'blk-loop', cpus: 1 + rng.int(2) };
}

export interface ReuseOptions extends RunOptions {
  /** At most this many injections per VM before a fresh one (its image checked). */
  perVm: number;
  /** Told of each run as soon as it was observed (its record is emitted when its VM ended). */
  observed?: (r: RunRecord) => void;
}

/**
 * Runs the runs `nextRun` hands out (indices, in order) reusing one VM while it stays healthy: after each injection the
 * guest must be progressing with no error, the API answering and the probe recovered; a VM that
 * is lost, saw a symptom, had its disk cut, or served `perVm` injections is stopped, its image
 * checked on the host (a bad block is put on the last record of that VM), and the next run starts
 * a new one. Each run's record goes to `emit` once its VM ended, so a record is written only with
 * its image check (a campaign killed mid-VM redoes that VM's runs when resumed).
 */
export async function runReusing(seed: number, nextRun: () => number | undefined, m: [InjectComponent, InjectKind][], o: ReuseOptions, emit: (r: RunRecord) => void, more: () => boolean = () => true): Promise<void> {
  let pending = nextRun();
  while (pending !== undefined && more()) {
    const first = pending;
    const sp = sessionPlan(seed, first);
    const batch: RunRecord[] = [];
    let s: Session | undefined;
    const tStart = performance.now();
    try {
      s = await startSession(`${o.tag}-${seed}-${first}`, sp.workload, sp.cpus);
    } catch (e) {
      const p = plan(seed, first, m);
      const rec = newRecord(seed, first, p);
      rec.symptoms.push(`harness: ${(e as Error).message.split('\n')[0]}`);
      rec.outcome = 'not-recovered';
      rec.detectors.push('harness could not run the VM');
      rec.wallMs = Math.round(performance.now() - tStart);
      emit(rec);
      pending = nextRun();
      continue;
    }
    let startMs = performance.now() - tStart;
    while (pending !== undefined && batch.length < o.perVm && more()) {
      const i = pending;
      pending = nextRun();
      const p = plan(seed, i, m);
      const rec = newRecord(seed, i, p, s);
      const t0 = performance.now();
      try {
        await injectAndObserve(s, p, rec, o);
      } catch (e) {
        rec.symptoms.push(`harness: ${(e as Error).message.split('\n')[0]}`);
        rec.outcome = 'not-recovered';
        rec.detectors.push('harness could not inject');
      }
      // The VM's start is paid by its first run.
      rec.wallMs = Math.round(performance.now() - t0 + startMs);
      startMs = 0;
      batch.push(rec);
      o.observed?.(rec);
      if (s.vm.exit || rec.symptoms.length || s.truncated) break;
    }
    const t1 = performance.now();
    const img = await endSession(s);
    const last = batch[batch.length - 1];
    if (img.length && last) {
      last.symptoms.push(...img);
      last.outcome = classify(last.detected, last.symptoms);
    }
    if (last) last.wallMs += Math.round(performance.now() - t1);
    for (const r of batch) emit(r);
  }
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
      'per-vm': { type: 'string' }, fresh: { type: 'boolean' },
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
  const o: ReuseOptions = {
    windowMs: Number(values.window ?? 3000), probe: !values['no-probe'], tag: values.tag ?? 'campaign',
    perVm: values.fresh ? 1 : Number(values['per-vm'] ?? 25),
  };
  const t0 = Date.now();
  let n = 0;
  let seen = 0;
  o.observed = (r: RunRecord) => {
    seen++;
    const rate = seen / ((Date.now() - t0) / 60_000);
    process.stderr.write(`run ${seed}/${r.run}: ${r.component} ${r.kind} (${r.workload}, ${r.cpus} vCPU): ${r.outcome}${r.recoveryMs !== undefined ? ` in ${r.recoveryMs.toFixed(1)} ms` : ''}${r.symptoms.length ? ` [${r.symptoms[0].slice(0, 160)}]` : ''} (${(r.wallMs / 1000).toFixed(1)} s; ${rate.toFixed(1)} injections/min)\n`);
  };
  const emit = (r: RunRecord) => {
    fs.appendFileSync(out, JSON.stringify(r) + '\n');
    n++;
    if (values.fresh) o.observed?.(r);
    else if (r.symptoms.some((x) => x.startsWith('image check'))) process.stderr.write(`run ${seed}/${r.run}: its VM's image check: ${r.symptoms.filter((x) => x.startsWith('image check')).join('; ')}\n`);
  };
  let cursor = 0;
  const nextRun = () => {
    while (cursor < runs && done.has(cursor)) cursor++;
    return cursor < runs ? cursor++ : undefined;
  };
  if (values.fresh) {
    for (let i = nextRun(); i !== undefined && Date.now() < deadline; i = nextRun()) emit(await runOne(seed, i, plan(seed, i, m), o));
  } else {
    await runReusing(seed, nextRun, m, o, emit, () => Date.now() < deadline);
  }
  process.stderr.write(`campaign: ${n} injections in ${((Date.now() - t0) / 60_000).toFixed(1)} min (${(n / ((Date.now() - t0) / 60_000)).toFixed(2)} per minute)\n`);
  writeReport(readRecords(out), md, json, values.section);
}

if (require.main === module) main().catch((e) => { process.stderr.write(`campaign: ${(e as Error).stack}\n`); process.exit(1); });

export { FAIL_STOP_KINDS };
