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
 * counter chain on every vCPU for a third of the runs that need no disk. tap-vanish runs get a net
 * VM: the guest's UDP echo behind a TAP in a namespace of its own, a numbered UDP stream checked by
 * bench/echo-probe, and the counter chain on vCPU 1. Faults from outside the components (ring,
 * eio, tap-vanish) have an expected effect on their device (EXPECTED): seen and detected, it is
 * "contained", not a symptom.
 *
 * Reproducible: run i of seed S uses the random stream (S, i) for its fault, moment and the
 * injector's choices, and a VM started at run i takes its vCPU count from its own stream. Resumable:
 * results are appended as JSON lines when their VM ended (with its image check); runs already in
 * the file are skipped. The report (docs/fault-injection.md + .json) is regenerated from the file.
 *
 *   npx tsc -p . && nice node dist/bench/campaign.js [--seed S] [--runs N] [--minutes M] [--out FILE]
 *       [--components vmm,driver-domain,...] [--kinds reg,mem,...] [--window MS] [--no-probe]
 *       [--per-vm N | --fresh] [--delay-spread MS]
 *   node dist/bench/campaign.js --report [--out FILE[,FILE...]] [--md docs/fault-injection.md] [--json docs/fault-injection.json] [--section NAME]
 * (--section: which marked part of the markdown to rewrite, <!-- NAME:begin --> ... <!-- NAME:end -->; default campaign)
 */
import * as fs from 'fs';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { RunningVm, guestErrors } from '../test/helpers/fault-harness';
import { checkImage } from '../test/helpers/blk-image';
import { BIN } from '../test/helpers/tsvmm';
import { percentile } from '../test/helpers/kill-harness';
import { request } from '../cli/verbs';
import { FAIL_STOP_KINDS, inject, InjectComponent, InjectKind, InjectResult, kindsFor, pidsFrom, Rng } from '../cli/inject';
import { vmPaths } from '../contracts/paths';
import { ROOT, machine } from './lib';

const GUEST = path.join(ROOT, 'guest', 'out', 'guest.elf');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export type Outcome = 'not-manifested' | 'recovered' | 'contained' | 'not-recovered' | 'silent';

/** The components a campaign covers and, per component, its fault kinds. */
export const CAMPAIGN_COMPONENTS: InjectComponent[] = ['vmm', 'vmm-vcpu', 'keeper', 'driver-domain', 'priv-domain', 'supervisor'];

/**
 * Faults from outside the components whose effect on one device is what the fault is: a NIC that
 * carries nothing after its TAP vanished, an I/O error the guest got after the disk failed a request,
 * a device that needs a reset (or a rejected request) after the guest wrote garbage into its rings.
 * When the fault's detector fired (the driver-domain's log line naming it), guest symptoms matching
 * `symptom` are that expected effect (kept in the record's `expected`, not counted as symptoms), and
 * the progress that must go on is the rest of the guest's (`progress`: the other vCPU's counter chain).
 * Anything else that went wrong still counts. docs/fault-injection.md, "Expected effects".
 */
export const EXPECTED: Partial<Record<InjectKind, { detector: RegExp; symptom: RegExp; progress?: string[] }>> = {
  ring: {
    detector: /needs a reset \(DEVICE_NEEDS_RESET: the guest's ring is malformed|rejected \d+ malformed request/,
    symptom: /^@blk-error|^@error what=blk|^@blk-progress .*errors=|^@blk-stall/,
    progress: ['@counter'],
  },
  eio: { detector: /disk 0 I\/O error: .*errno 5\b/, symptom: /^@blk-error op=\w+ .*what=status status=1 |^@blk-progress .*errors=1\b/ },
  'tap-vanish': { detector: /its TAP \S+ vanished under the VM/, symptom: /^echo stopped/, progress: ['@counter'] },
  // The data past the cut is gone from the host's file: the guest's reads of blocks that reach past
  // it fail with S_IOERR (what the driver-domain answers), and only those (expectedEffect checks the
  // sector against the cut). A block read back wrong (zeros, another generation) is not this effect.
  'disk-truncate': { detector: /image shrank under the VM from \d+ to \d+ bytes/, symptom: /^@blk-error op=read sector=\d+ .*what=status status=1 |^@blk-progress .*errors=\d+/ },
};

/** blk-loop's block: a read of one that reaches past a disk-truncate's cut fails as a whole. */
const BLK_LOOP_BLOCK = 4096;

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
  /** Guest symptoms that are the fault's own expected effect (EXPECTED), once its detector fired. */
  expected?: string[];
  /** Classified again from its saved symptoms by a later rule (readRecords): what it was and why. */
  reclassified?: string;
  /** Not recovered or silent: the last lines `tsvmm run` and its successors wrote after the fault. */
  log?: string[];
  /** Where the run's time went (ms): VM start (first run of a VM), settle, delay, inject, window, progress, api, probe, VM end (last run). */
  phases?: Record<string, number>;
  /** The host's 1-minute load average at the injection (a loaded host can make hang detectors fire on starved components). */
  load?: number;
  /** Net sessions: the UDP echo stream before and after the fault (@echo lines of bench/echo-probe). */
  echo?: { before: string; after: string };
  /** Linux-service runs (bench/linux-service): when every service answered correctly again after the fault, the longest any went unanswered (ms), the client's counts so far. */
  service?: { restoredMs?: number; gapMs: number; gaps?: Record<string, number>; counts: Record<string, number> };
}

/** Lines on the supervisor's stderr that mean a detector fired (other than a recovery or a hang). */
export const DETECTOR = /died|hung|shrank|vanished|is full|uncaught exception|fatal|invalid|corrupt|checksum|mismatch|validat|malformed|bad |refus|restore failed|cannot|gave up|recovery failed|exited unexpectedly|error/i;
export const BENIGN = /the guest survives its VMM|ready \(pid|standby ready|not a hang yet|disk \d+ I\/O:|net \d+ TX:/;
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

/**
 * The seed's classification from what was seen; `contained`: the fault's expected effect was seen
 * and detected (EXPECTED) and nothing else went wrong.
 */
export function classify(detected: boolean, symptoms: string[], contained = false): Outcome {
  if (!symptoms.length) return contained ? 'contained' : detected ? 'recovered' : 'not-manifested';
  return detected ? 'not-recovered' : 'silent';
}

/** Splits `symptoms` into the fault's expected effect and the rest (EXPECTED; only once its detector fired). */
export function expectedEffect(kind: InjectKind, detectors: string[], symptoms: string[], injected?: InjectResult): { expected: string[]; rest: string[]; contained: boolean } {
  const e = EXPECTED[kind];
  if (!e || !detectors.some((d) => e.detector.test(d))) return { expected: [], rest: symptoms, contained: false };
  // disk-truncate: the cut (the image's length right after it) bounds which reads may fail.
  const cut = kind === 'disk-truncate' ? Number(injected?.after ?? NaN) : NaN;
  if (kind === 'disk-truncate' && !Number.isFinite(cut)) return { expected: [], rest: symptoms, contained: false };
  const pastCut = (x: string) => { const m = /^@blk-error op=read sector=(\d+) /.exec(x); return !m || Number(m[1]) * 512 + BLK_LOOP_BLOCK > cut; };
  // eio changes one completion: one request's error is its effect, a second one is not.
  let statusErrors = 0;
  const expected: string[] = [];
  const rest: string[] = [];
  for (const x of symptoms) {
    const ok = e.symptom.test(x) && !(kind === 'eio' && /what=status/.test(x) && ++statusErrors > 1) && !(kind === 'disk-truncate' && !pastCut(x));
    (ok ? expected : rest).push(x);
  }
  return { expected, rest, contained: true };
}

type Workload = 'blk-loop' | 'counter' | 'net';
interface Plan {
  component: InjectComponent; kind: InjectKind; workload: Workload; cpus: number; delayMs: number; injectSeed: bigint;
  /** The run needs a VM of its own, started for it and ended after it (its fault breaks a device for good). */
  own?: boolean;
}

/** Kinds that need a VM of their own: a TAP under a UDP echo stream (tap-vanish), a disk whose queue the guest will break (ring). */
const OWN_SESSION: InjectKind[] = ['tap-vanish', 'ring'];
/** Kinds after which the VM is ended (its image checked): they leave a device broken or the guest's error count raised. */
const ENDS_SESSION: InjectKind[] = ['disk-truncate', 'eio', 'ring', 'tap-vanish'];

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
  const needsDisk = component === 'driver-domain' || ['queue-progress', 'state-page', 'disk-truncate', 'disk-full', 'eio', 'ring'].includes(kind);
  const workload: Workload = kind === 'tap-vanish' ? 'net' : !needsDisk && rng.int(3) === 0 ? 'counter' : 'blk-loop';
  // Own VMs have the counter chain on a second vCPU: the rest of the guest that must go on.
  const own = OWN_SESSION.includes(kind);
  const cpus = own || workload === 'counter' || component === 'vmm-vcpu' ? 2 : 1 + rng.int(2);
  return { component, kind, workload, cpus, delayMs: 200 + rng.int(DELAY_SPREAD_MS), injectSeed: rng.next(), own };
}

const COUNTER_REPORT = 20_000_000;
/**
 * The random moment: 200 ms + up to this after the previous run was judged (--delay-spread). It
 * was 1500 ms (campaigns 1-3): waiting that observes nothing, ~0.45 s of every run saved; 600 ms
 * still spans several counter reports and much of a blk-loop pass (0.1-2 s here).
 */
let DELAY_SPREAD_MS = 600;

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
  vm: RunningVm; name: string; socket: string; dir: string; img: string; workload: Workload; cpus: number;
  /** Guest lines that count as progress (every vCPU's workload must show some). */
  progress: string[];
  /** Guest symptoms already attributed to an earlier injection. */
  symptomsSeen: number;
  /** The image was cut on purpose (disk-truncate): no host check of it. */
  truncated: boolean;
  /** `dir` is a tmpfs mounted for this VM (unmounted when it ends). */
  tmpfs: boolean;
  /** The `tsvmm run` process died (a supervisor fault) and a new supervisor adopted the VM: it runs on without it. */
  adopted: boolean;
  /** Net sessions: the network namespace the TAP is in, the TAP, and the UDP echo stream's probe (bench/echo-probe). */
  net?: { ns: string; tap: string; probe: ChildProcess; lines: { at: number; line: string }[] };
}

/** The size of a VM's own tmpfs (its 16 MiB sparse image, of which blk-loop writes 4 MiB). */
const SESSION_TMPFS_MB = 32;
const GUEST_IP = '10.99.0.2';
const HOST_IP = '10.99.0.1';
const ECHO_PROBE = path.join(__dirname, 'echo-probe.js');
let netSessions = 0;

/** Whether process `pid` runs (not a zombie). */
function pidAlive(pid: number): boolean {
  try { return !/^\d+ \(.*\) [ZX] /.test(fs.readFileSync(`/proc/${pid}/stat`, 'latin1')); } catch { return false; }
}

/** The VM is gone: its `tsvmm run` exited and no supervisor adopted it. */
const lost = (s: Session) => !!s.vm.exit && !s.adopted;

/**
 * Starts a VM: blk-loop on vCPU 0 over a fresh image (and the counter chain on vCPU 1: ap_counter),
 * the counter chain on every vCPU, or (net) the guest's UDP echo on vCPU 0 behind a TAP in a
 * network namespace of its own, a UDP echo stream from that namespace (bench/echo-probe), and the
 * counter chain on vCPU 1.
 */
async function startSession(name: string, workload: Workload, cpus: number): Promise<Session> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-campaign-'));
  // The image on a small tmpfs of its own where we may mount one (root): what disk-full fills.
  let tmpfs = false;
  if (process.getuid?.() === 0) {
    try { execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${SESSION_TMPFS_MB}m,mode=0700`, 'tsvmm-campaign', dir], { stdio: 'ignore' }); tmpfs = true; } catch { /* no mount here: disk-full fails to inject */ }
  }
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 16 << 20);
  const ap = cpus > 1 ? ` ap_counter=1 n=0 report=${COUNTER_REPORT}` : '';
  const cmdline = workload === 'counter' ? `workload=counter n=0 report=${COUNTER_REPORT}`
    : workload === 'net' ? `workload=net ip=${GUEST_IP} virtio_irq=1 net_report_s=1${ap}`
      : `workload=blk-loop blk_n=1000 qd=16 mode=seq verify=1 blk_report=100 virtio_irq=1 blk_timeout=10${ap}`;
  const progress = workload === 'counter' ? ['@counter'] : workload === 'net' ? ['@counter'] : cpus > 1 ? ['@blk-progress', '@counter'] : ['@blk-progress'];
  let net: Session['net'];
  const extra: string[] = [];
  if (workload === 'net') {
    const n = netSessions++;
    net = { ns: `tsvmm-camp-${process.pid}-${n}`, tap: `tc${process.pid % 100000}x${n % 100}`, probe: undefined as unknown as ChildProcess, lines: [] };
    spawnSync('ip', ['netns', 'del', net.ns]);
    execFileSync('ip', ['netns', 'add', net.ns]);
    extra.push('--net', `tap=${net.tap}`);
  }
  const vm = new RunningVm(['--name', name, '--kernel', GUEST, '--cpus', String(cpus), '--metrics-addr', 'none', ...(workload !== 'counter' ? ['--disk', img] : []), ...extra, '--cmdline', cmdline], { TSVMM_TEST_HOOKS: '0' });
  const sess: Session = { vm, name, socket: vmPaths(name).socket, dir, img, workload, cpus, progress, symptomsSeen: 0, truncated: false, tmpfs, adopted: false, net };
  try {
    if (net) {
      await vm.waitFor(() => /@net mac=/.test(vm.out), 60_000, 'the guest NIC');
      for (const a of [['link', 'set', net.tap, 'netns', net.ns], ['-n', net.ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', net.tap], ['-n', net.ns, 'link', 'set', net.tap, 'up'], ['-n', net.ns, 'link', 'set', 'lo', 'up']]) execFileSync('ip', a);
      const probe = spawn('ip', ['netns', 'exec', net.ns, process.execPath, ECHO_PROBE, GUEST_IP, '7', '5'], { stdio: ['ignore', 'pipe', 'ignore'] });
      net.probe = probe;
      let buf = '';
      probe.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) { net.lines.push({ at: performance.now(), line: buf.slice(0, i) }); buf = buf.slice(i + 1); }
      });
      await vm.waitFor(() => net.lines.some((l) => /got=[1-9]/.test(l.line)), 30_000, 'UDP echoes from the guest');
    }
    await vm.waitFor(() => progress.every((p) => vm.count(p) >= 2) && vm.pid.vmm > 0, 60_000, 'the first progress lines');
  } catch (e) {
    await endSession(sess);
    // What the guest said before it ended (a VM that did not start is kept as a run: say why).
    const said = vm.out.split('\n').filter((l) => /^@(error|blk-error|boot)/.test(l)).slice(-3).join('; ');
    throw new Error(`${(e as Error).message.split('\n')[0]}${said ? ` guest: ${said}` : ''}`);
  }
  return sess;
}

/** Stops the VM; the host's check of its image (unless cut on purpose): symptoms, [] if clean. */
async function endSession(s: Session): Promise<string[]> {
  await s.vm.stop();
  // Its `tsvmm run` is gone but the VM may run on: adopted after a supervisor fault, or adopted
  // after the SIGKILL stop() gives a supervisor that ignored SIGTERM (a register flip can leave it
  // looping). Stopped through the API, as an operator would; a VM left running would load the host.
  const alive = () => pidAlive(s.vm.pid.vmm);
  for (let k = 0; k < 10 && s.vm.pid.vmm > 0 && alive(); k++) {
    spawnSync(process.execPath, [BIN, 'stop', '--name', s.name], { stdio: 'ignore', timeout: 20_000 });
    for (let w = 0; w < 20 && alive(); w++) await sleep(100);
  }
  if (s.vm.pid.vmm > 0 && alive()) process.stderr.write(`campaign: VM ${s.name} (vmm ${s.vm.pid.vmm}) still runs after tsvmm stop\n`);
  const out: string[] = [];
  try {
    if (s.workload === 'blk-loop' && !s.truncated) {
      const c = checkImage(s.img, { bs: 4096, maxErrors: 5 });
      if (c.errorCount) out.push(`image check: ${c.errorCount} bad blocks (${c.errors.join('; ')})`);
    }
  } finally {
    s.vm.cleanup();
    if (s.net) {
      s.net.probe?.kill('SIGKILL');
      spawnSync('ip', ['netns', 'del', s.net.ns]);
    }
    if (s.tmpfs) { try { execFileSync('umount', [s.dir], { stdio: 'ignore' }); } catch { /* busy: emptied below */ } }
    try { fs.rmSync(s.dir, { recursive: true, force: true }); } catch { /* still mounted */ }
  }
  return out;
}

/** Components of the session's VM once they are all there (a keeper, the driver-domain if it has a disk). */
async function settled(s: Session): Promise<{ name: string; pid: number }[] | undefined> {
  let comps = await components(s.socket);
  for (let k = 0; k < 80 && !(comps && pidsFrom(comps).keeper && pidsFrom(comps).vmm && pidsFrom(comps).supervisor && (s.workload === 'counter' || pidsFrom(comps)['driver-domain'])); k++) {
    if (lost(s)) return undefined;
    await sleep(100);
    comps = await components(s.socket);
  }
  return comps;
}

/** The last @echo line of a net session's probe, and whether echoes were still coming back over its last ~2 s. */
function echoState(s: Session): { last: string; flowing: boolean } {
  const ls = s.net?.lines ?? [];
  const last = ls[ls.length - 1];
  const got = (l?: string) => Number(/got=(\d+)/.exec(l ?? '')?.[1] ?? 0);
  const earlier = last && [...ls].reverse().find((l) => l.at <= last.at - 1900);
  return { last: last?.line ?? '', flowing: !!last && !!earlier && got(last.line) > got(earlier.line) };
}

/**
 * One injection into a running, healthy VM, observed and classified (the record's outcome,
 * detectors, symptoms and probe); the VM is left running unless the fault or the probe ended it.
 * rec.phases says where the time went.
 */
async function injectAndObserve(s: Session, p: Plan, rec: RunRecord, o: RunOptions): Promise<void> {
  const { vm, socket } = s;
  const phases: Record<string, number> = (rec.phases ??= {});
  let tPhase = performance.now();
  const phase = (name: string) => { const t = performance.now(); phases[name] = Math.round(t - tPhase); tPhase = t; };
  let comps = await settled(s);
  if (!comps) throw new Error('the API did not answer before the fault');
  phase('settle');
  await sleep(p.delayMs);
  comps = (await components(socket)) ?? comps;
  phase('delay');
  const errAt = vm.err.length;
  const recAt = vm.recoveries.length;
  const hangsAt = vm.hangs.length;
  const tInject = performance.now();
  rec.load = Number(os.loadavg()[0].toFixed(2));
  const echoBefore = s.net ? echoState(s).last : '';
  try {
    rec.injected = await inject(p.component, p.kind, pidsFrom(comps), { seed: p.injectSeed, cpus: s.cpus, socket });
  } catch (e) {
    rec.injectError = (e as Error).message;
  }
  phase('inject');
  if (p.kind === 'disk-truncate') s.truncated = true;
  // (SIGSTOP too: its guardian judges a stopped supervisor hung and replaces it.)
  const supervisorFault = p.component === 'supervisor' && !!rec.injected && ['SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP', 'reg'].includes(p.kind);
  await sleep(o.windowMs);
  // A supervisor that died: its `tsvmm run` is gone; the guardian's new supervisor adopts the VM.
  // Only the supervisor hit decides: after an earlier adoption `tsvmm run` is long gone, and a flip
  // that left the adopted supervisor running changes nothing.
  if (supervisorFault && vm.exit && (!s.adopted || !pidAlive(rec.injected!.pid))) {
    await until(() => /recovered supervisor/.test(vm.err.slice(errAt)), 8000);
    s.adopted = /recovered supervisor/.test(vm.err.slice(errAt));
  }
  // Data cut from the image shows when the guest reads it back: observe two whole passes after the cut.
  if (p.kind === 'disk-truncate' && rec.injected) await until(() => vm.lines.filter((l) => l.at > tInject && /^@blk-progress .*end=1/.test(l.line)).length >= 2 || lost(s), 30_000);
  phase('window');
  const symptoms: string[] = [];
  // The guest must be making progress again, every vCPU's workload (for a fault with an expected
  // effect on a device, the rest of the guest): within the window, or soon after it (a recovery on
  // a loaded host can take seconds).
  const mustProgress = EXPECTED[p.kind]?.progress ?? s.progress;
  const progressed = () => mustProgress.every((pre) => vm.lines.some((l) => l.at > tInject && l.at > performance.now() - 1500 && l.line.startsWith(pre)));
  if (!lost(s) && !(await until(progressed, 8000))) symptoms.push(`no guest progress in the ${o.windowMs} ms window's last 1.5 s and 8 s after`);
  phase('progress');
  if (!lost(s) && !(await apiAnswers(socket, 8000))) symptoms.push('the API did not answer for 8 s');
  phase('api');
  // A stopped component: the window told whether anyone noticed; now let it go.
  if (p.kind === 'SIGSTOP' && rec.injected) { try { process.kill(rec.injected.pid, 'SIGCONT'); } catch { /* gone */ } }
  if (s.net) {
    const e = echoState(s);
    rec.echo = { before: echoBefore, after: e.last };
    if (!e.flowing) symptoms.push(`echo stopped: ${echoBefore} -> ${e.last}`);
    if (/bad=[1-9]/.test(e.last)) symptoms.push(`corrupt echoes: ${e.last}`);
  }
  const detectors: string[] = [];
  for (const r of vm.recoveries.slice(recAt)) detectors.push(r.line.replace(/^tsvmm: /, ''));
  for (const h of vm.hangs.slice(hangsAt)) detectors.push(`${h.component} hung (${h.stillMs} ms)`);
  for (const l of vm.err.slice(errAt).split('\n')) {
    if (/^tsvmm: recovered (priv-domain|keeper|supervisor)/.test(l)) detectors.push(l.replace(/^tsvmm: /, '').slice(0, 300));
    else if (l && DETECTOR.test(l) && !BENIGN.test(l) && !/^tsvmm: recovered /.test(l)) detectors.push(l.slice(0, 300));
  }
  const errSince = vm.err.slice(errAt);
  const firstRec = vm.recoveries.slice(recAt).find((r) => r.at > tInject);
  if (firstRec) rec.recoveryMs = firstRec.ms;
  else {
    const m = /recovered (?:priv-domain|keeper|supervisor) \(cause: [^)]*\) in ([\d.]+) ms/.exec(errSince);
    if (m) rec.recoveryMs = Number(m[1]);
  }
  // The probe: recovery must still work after the fault.
  if (o.probe && !lost(s)) {
    const c = await components(socket);
    const vmm = c ? pidsFrom(c).vmm : vm.pid.vmm;
    const before = vm.recoveries.length;
    const errBefore = vm.err.length;
    try { process.kill(vmm, 'SIGKILL'); } catch { /* gone */ }
    // A supervisor that dies during the probe (a fault that waited for the recovery path to run) is
    // adopted like one that died in the window; its adopter carries the vmm's recovery on.
    const adoptedSince = () => /recovered supervisor/.test(vm.err.slice(errBefore));
    let ok = await until(() => vm.recoveries.slice(before).some((r) => r.component === 'vmm') || adoptedSince() || lost(s), 8000);
    if (lost(s)) { await until(adoptedSince, 8000); s.adopted = adoptedSince(); }
    ok ||= adoptedSince();
    const tRec = performance.now();
    const resumed = ok && !lost(s) && (await until(() => mustProgress.every((pre) => vm.lines.some((l) => l.at > tRec && l.line.startsWith(pre))), 5000));
    rec.probe = resumed ? 'recovered' : 'failed';
    if (!resumed) symptoms.push(`recovery probe (SIGKILL of the vmm after the window) failed: ${lost(s) ? `VM exited: ${vm.err.slice(errBefore).trim().split('\n').slice(-1)[0]}` : 'no progress after it'}`);
  } else rec.probe = 'skipped';
  phase('probe');
  if (lost(s)) symptoms.push(`VM lost: tsvmm exited ${JSON.stringify(vm.exit)}: ${vm.err.trim().split('\n').slice(-1)[0]}`);
  else if (supervisorFault && vm.exit && !s.adopted) symptoms.push('the supervisor died and no new one adopted the VM');
  // What the guest saw since the previous injection (its checks, and the host's check of the counter lines).
  const all = guestSymptoms(vm.out, COUNTER_REPORT);
  symptoms.push(...all.slice(s.symptomsSeen, s.symptomsSeen + 20));
  s.symptomsSeen = all.length;
  rec.detectors = detectors;
  rec.detected = detectors.length > 0;
  const eff = expectedEffect(p.kind, detectors, symptoms, rec.injected);
  if (eff.expected.length) rec.expected = eff.expected;
  rec.symptoms = eff.rest;
  rec.outcome = classify(rec.detected, eff.rest, eff.contained);
  // What the supervisors said since the fault, kept where it went wrong (to diagnose it later).
  if (rec.outcome === 'not-recovered' || rec.outcome === 'silent') rec.log = vm.err.slice(errAt).trim().split('\n').slice(-20).map((l) => l.slice(0, 400));
}

/** A record for run `i`, not yet observed. */
function newRecord(seed: number, i: number, p: Plan, s?: Session): RunRecord {
  return {
    seed, run: i, at: new Date().toISOString(), component: p.component, kind: p.kind, workload: s?.workload ?? p.workload, cpus: s?.cpus ?? p.cpus,
    delayMs: p.delayMs, outcome: 'not-manifested', detected: false, detectors: [], symptoms: [], wallMs: 0,
  };
}

/** Folds the VM's image check into the last record of its batch (a bad block is a symptom of that run). */
function addImageCheck(rec: RunRecord, img: string[]): void {
  if (!img.length) return;
  rec.symptoms.push(...img);
  rec.outcome = classify(rec.detected, rec.symptoms, rec.outcome === 'contained');
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
    addImageCheck(rec, img);
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
export function sessionPlan(seed: number, i: number): { workload: Workload; cpus: number } {
  const rng = new Rng(BigInt(seed) * 1_000_003n + BigInt(i) + 0x5e55n * 1_000_000_007n);
  return { workload: 'blk-loop', cpus: 1 + rng.int(2) };
}

export interface ReuseOptions extends RunOptions {
  /** At most this many injections per VM before a fresh one (its image checked). */
  perVm: number;
  /** Told of each run as soon as it was observed (its record is emitted when its VM ended). */
  observed?: (r: RunRecord) => void;
}

/** VMs that failed to start in a row before the campaign gives up (a broken build or host, not a fault). */
const MAX_START_FAILURES = 5;

/**
 * Runs the runs `nextRun` hands out (indices, in order) reusing one VM while it stays healthy: after each injection the
 * guest must be progressing with no error, the API answering and the probe recovered; a VM that
 * is lost, saw a symptom, had its disk cut, or served `perVm` injections is stopped, its image
 * checked on the host (a bad block is put on the last record of that VM), and the next run starts
 * a new one. A run whose fault needs a VM of its own (OWN_SESSION: a TAP, a ring the guest breaks)
 * gets one, started for it and ended after it. Each run's record goes to `emit` once its VM ended,
 * so a record is written only with its image check (a campaign killed mid-VM redoes that VM's runs
 * when resumed).
 */
export async function runReusing(seed: number, nextRun: () => number | undefined, m: [InjectComponent, InjectKind][], o: ReuseOptions, emit: (r: RunRecord) => void, more: () => boolean = () => true): Promise<void> {
  let pending = nextRun();
  let startFailures = 0;
  while (pending !== undefined && more()) {
    const first = pending;
    const p0 = plan(seed, first, m);
    const sp = p0.own ? { workload: p0.workload, cpus: p0.cpus } : sessionPlan(seed, first);
    const batch: RunRecord[] = [];
    let s: Session | undefined;
    const tStart = performance.now();
    try {
      s = await startSession(`${o.tag}-${seed}-${first}`, sp.workload, sp.cpus);
      startFailures = 0;
    } catch (e) {
      const rec = newRecord(seed, first, p0);
      rec.symptoms.push(`harness: ${(e as Error).message.split('\n')[0]}`);
      rec.outcome = 'not-recovered';
      rec.detectors.push('harness could not run the VM');
      rec.wallMs = Math.round(performance.now() - tStart);
      emit(rec);
      if (++startFailures >= MAX_START_FAILURES) throw new Error(`${startFailures} VMs in a row did not start (the last: ${(e as Error).message.split('\n')[0]}): giving up`);
      pending = nextRun();
      continue;
    }
    let startMs = performance.now() - tStart;
    while (pending !== undefined && batch.length < o.perVm && more()) {
      const i = pending;
      const p = plan(seed, i, m);
      // A run that needs a VM of its own waits for the next VM (this one ends first).
      if (batch.length && p.own) break;
      pending = nextRun();
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
      if (startMs) (rec.phases ??= {}).start = Math.round(startMs);
      startMs = 0;
      batch.push(rec);
      o.observed?.(rec);
      if (lost(s) || rec.symptoms.length || s.truncated || p.own || ENDS_SESSION.includes(p.kind)) break;
    }
    const t1 = performance.now();
    const img = await endSession(s);
    const last = batch[batch.length - 1];
    if (last) {
      addImageCheck(last, img);
      const endMs = Math.round(performance.now() - t1);
      last.wallMs += endMs;
      (last.phases ??= {}).end = endMs;
    }
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
  /** Detected, and only the fault's expected effect on its device (EXPECTED). */
  contained: number;
  notRecovered: number; silent: number; recoveredOfDetected: number; ci: [number, number]; p50Ms: number; p99Ms: number;
}

export function summarize(recs: RunRecord[]): ReportRow[] {
  const key = (r: RunRecord) => `${r.component}\t${r.kind}`;
  const groups = new Map<string, RunRecord[]>();
  for (const r of recs) groups.set(key(r), [...(groups.get(key(r)) ?? []), r]);
  const row = (component: string, kind: string, rs: RunRecord[]): ReportRow => {
    const detected = rs.filter((r) => r.outcome === 'recovered' || r.outcome === 'contained' || r.outcome === 'not-recovered').length;
    // Contained counts with recovered: the VM and everything but the device the fault was aimed at carried on.
    const recovered = rs.filter((r) => r.outcome === 'recovered' || r.outcome === 'contained').length;
    const times = rs.map((r) => r.recoveryMs).filter((x): x is number => x !== undefined && Number.isFinite(x));
    return {
      component, kind, injections: rs.length, injectFailed: rs.filter((r) => r.injectError).length,
      manifested: rs.filter((r) => r.outcome !== 'not-manifested').length, detected, recovered, contained: rs.filter((r) => r.outcome === 'contained').length,
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

export function reportMarkdown(recs: RunRecord[], rows: ReportRow[], wallS: number, where = machine()): string {
  const pct = (x: number) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '-');
  const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(x < 10 ? 2 : 0) : '-');
  const lines = [
    '| component | fault | injections | manifested | detected | recovered (of which contained) | not recovered | silent | recovered of detected (95% Wilson) | recovery p50 / p99 ms | seed |',
    '|---|---|---:|---:|---:|---:|---:|---:|---|---|---|',
  ];
  for (const r of rows) {
    const b = (s: string) => (r.kind === 'all' ? `**${s}**` : s);
    lines.push(`| ${b(r.component)} | ${b(r.kind)} | ${r.injections}${r.injectFailed ? ` (${r.injectFailed} failed to inject)` : ''} | ${r.manifested} | ${r.detected} | ${r.recovered}${r.contained ? ` (${r.contained})` : ''} | ${r.notRecovered} | ${r.silent} | ${pct(r.recoveredOfDetected)} (${pct(r.ci[0])}-${pct(r.ci[1])}) | ${ms(r.p50Ms)} / ${ms(r.p99Ms)} | ${r.kind === 'all' ? SEED_FIGURES[r.component] ?? '' : ''} |`);
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
  const loads = recs.map((r) => r.load).filter((x): x is number => x !== undefined).sort((a, b) => a - b);
  const load = loads.length ? ` Host load average (1 min) at the injections: min ${loads[0]}, median ${loads[Math.floor(loads.length / 2)]}, max ${loads[loads.length - 1]}.` : '';
  const ph = phaseSummary(recs);
  const contained = recs.filter((r) => r.outcome === 'contained');
  const cont = contained.length ? `\n\nContained runs (detected; only the fault's expected effect on its device, EXPECTED): ${[...new Set(contained.map((r) => `${r.component} ${r.kind}`))].map((k) => `${k} ${contained.filter((r) => `${r.component} ${r.kind}` === k).length}`).join(', ')}; e.g. run ${contained[0].seed}/${contained[0].run}: ${contained[0].injected?.after ?? ''}; expected effect: ${(contained[0].expected ?? []).slice(0, 2).join('; ') || '-'}.` : '';
  return `${lines.join('\n')}\n\n${recs.length} injections (seeds ${seeds}), ${(wallS / 3600).toFixed(2)} h of runs, on ${where}.${load}${ph ? ` Mean time per run (ms): ${ph}.` : ''}${cont}\n\n` +
    `Unrecovered and silent runs, by class (every run is in the JSON lines file):\n\n${cls.join('\n') || '- none'}\n`;
}

/** Mean ms per phase over the records that have phases (VM start and end spread over all runs). */
export function phaseSummary(recs: RunRecord[]): string {
  const with_ = recs.filter((r) => r.phases);
  if (!with_.length) return '';
  const names = ['start', 'settle', 'delay', 'inject', 'window', 'progress', 'api', 'probe', 'end'];
  const parts = names.map((n) => `${n} ${(with_.reduce((a, r) => a + (r.phases![n] ?? 0), 0) / with_.length).toFixed(0)}`);
  return `${parts.join(', ')}; wall ${(with_.reduce((a, r) => a + r.wallMs, 0) / with_.length).toFixed(0)}`;
}

/** Rewrites the generated part of docs/fault-injection.md (between the section's markers) and the JSON. */
export function writeReport(recs: RunRecord[], md: string, json: string, section = 'campaign', where?: string): void {
  const BEGIN = `<!-- ${section}:begin -->`;
  const END = `<!-- ${section}:end -->`;
  const rows = summarize(recs);
  const wallS = recs.reduce((s, r) => s + r.wallMs, 0) / 1000;
  const body = reportMarkdown(recs, rows, wallS, where);
  let doc = fs.existsSync(md) ? fs.readFileSync(md, 'utf8') : `# Fault injection\n\n${BEGIN}\n${END}\n`;
  if (!doc.includes(BEGIN)) doc += `\n${BEGIN}\n${END}\n`;
  doc = doc.slice(0, doc.indexOf(BEGIN) + BEGIN.length) + '\n' + body + doc.slice(doc.indexOf(END));
  fs.writeFileSync(md, doc);
  fs.writeFileSync(json, JSON.stringify({ generated: new Date().toISOString(), injections: recs.length, wallSeconds: wallS, rows }, null, 1) + '\n');
}

export function readRecords(file: string): RunRecord[] {
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim()).map((l) => underTodaysRules(JSON.parse(l) as RunRecord));
}

/**
 * A record saved before its kind had an expected effect (EXPECTED: disk-truncate's came after
 * campaign 5), classified by today's rules from what it saved. Marked `reclassified`.
 */
export function underTodaysRules(r: RunRecord): RunRecord {
  if (r.outcome !== 'not-recovered' || !EXPECTED[r.kind]) return r;
  const eff = expectedEffect(r.kind, r.detectors, r.symptoms, r.injected);
  if (!eff.contained || eff.rest.length) return r;
  return { ...r, outcome: 'contained', expected: [...(r.expected ?? []), ...eff.expected], symptoms: [], reclassified: `not-recovered when run; only ${r.kind}'s expected effect (EXPECTED)` };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string' }, runs: { type: 'string' }, minutes: { type: 'string' }, out: { type: 'string' },
      components: { type: 'string' }, kinds: { type: 'string' }, window: { type: 'string' }, 'no-probe': { type: 'boolean' },
      report: { type: 'boolean' }, md: { type: 'string' }, json: { type: 'string' }, tag: { type: 'string' }, section: { type: 'string' },
      'per-vm': { type: 'string' }, fresh: { type: 'boolean' }, 'delay-spread': { type: 'string' },
    },
  });
  const out = values.out ?? path.join(ROOT, 'bench', 'out', 'campaign.jsonl');
  const md = values.md ?? path.join(ROOT, 'docs', 'fault-injection.md');
  const json = values.json ?? path.join(ROOT, 'docs', 'fault-injection.json');
  // --report may combine campaigns: --out a.jsonl,b.jsonl,... (one table over all their runs).
  if (values.report) { writeReport(out.split(',').flatMap(readRecords), md, json, values.section); return; }
  if (out.includes(',')) throw new Error(`--out ${out}: one file for a campaign run (several only with --report)`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const seed = Number(values.seed ?? 1);
  if (values['delay-spread'] !== undefined) DELAY_SPREAD_MS = Number(values['delay-spread']);
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
    process.stderr.write(`run ${seed}/${r.run}: ${r.component} ${r.kind} (${r.workload}, ${r.cpus} vCPU): ${r.outcome}${r.recoveryMs !== undefined ? ` in ${r.recoveryMs.toFixed(1)} ms` : ''}${r.symptoms.length ? ` [${r.symptoms[0].slice(0, 160)}]` : ''}${r.injectError ? ` (not injected: ${r.injectError.slice(0, 120)})` : ''} (${(r.wallMs / 1000).toFixed(1)} s; load ${r.load ?? '-'}; ${rate.toFixed(1)} injections/min)\n`);
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
  process.stderr.write(`campaign: ${n} injections in ${((Date.now() - t0) / 60_000).toFixed(1)} min (${(n / ((Date.now() - t0) / 60_000)).toFixed(2)} per minute); load average now ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
  const ph = phaseSummary(readRecords(out).filter((r) => r.seed === seed && !done.has(r.run)));
  if (ph) process.stderr.write(`campaign: mean ms per run: ${ph}\n`);
  writeReport(readRecords(out), md, json, values.section);
}

if (require.main === module) main().catch((e) => { process.stderr.write(`campaign: ${(e as Error).stack}\n`); process.exit(1); });

export { FAIL_STOP_KINDS };
