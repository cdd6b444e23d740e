/**
 * bench/recovery: what recovery costs, in one invocation.
 *
 * 1. Recovery latency, per component, cold (a new process) and warm
 *    (`--standby`: a pre-started spare takes over). The vmm is SIGKILLed at
 *    random moments under the `counter` workload, the driver-domain under the
 *    verifying `blk-loop` workload. Per row, p50/p99/max of:
 *      - kill -> the guest's next progress line (what the guest's user sees;
 *        includes up to one line interval, so the lines are frequent),
 *      - the supervisor's measure: death (the keeper's or the standby's pidfd,
 *        or the supervisor's SIGCHLD, whichever saw it first) -> guest resumed
 *        (vmm: vCPUs released) / driver-domain serving again,
 *      - vmm rows: kill -> the new vmm's vCPU 0 entering KVM_RUN again (its
 *        CLOCK_MONOTONIC stamp, TSVMM_RESTORE_DEBUG), and the guest's own
 *        measure of how long it was stopped (its progress lines carry its
 *        TSC; see guestStalls).
 * 2. Overhead of the recovery machinery in normal operation: the same
 *    workloads with it on and off (TSVMM_NO_RECOVERY=1: no keeper, no exit
 *    journal, no heartbeats, no hang watch), alternating, in one run:
 *    PIO/MMIO exit cost (`exits`), and 4 KiB random-read IOPS (`blk`), both
 *    timed by the guest in TSC cycles (so on/off compare without a clock
 *    conversion).
 *
 *   npx tsc -p . && node dist/bench/recovery.js [--kills K] [--cpus N] [--rounds R] [--skip latency|overhead]
 *        [--blk-io uring|threads] [--rows vmm-cold,vmm-warm,dd-cold,dd-warm] [--json]
 * (--blk-io sets TSVMM_BLK_IO for the driver-domain rows; default: the driver-domain's choice.)
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { spawnSync } from 'child_process';
import { blkLoopVm, ComponentName, guestErrors, RunningVm } from '../test/helpers/fault-harness';
import { percentile } from '../test/helpers/kill-harness';
import { ROOT, median, machine, table } from './lib';
import { Kvm } from '../kvm/system';
import { Vm } from '../kvm/vm';
import { Vcpu } from '../kvm/vcpu';
import { native } from '../native/kvm';
import { Journal, SNAP } from '../contracts/snapshot';
import { SerialLineJournal } from '../vmm/restore';
import { QueueProgress, queueProgressSize } from '../contracts/queue-progress';

const GUEST = path.join(ROOT, 'guest', 'out', 'guest.elf');
const BIN = path.join(ROOT, 'bin', 'tsvmm.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface LatencyRow {
  name: string; progress: number[]; running: number[]; supervisor: number[]; stall: number[]; errors: number; warmCount: number;
  /** Warm rows: each step of the takeover, per kill (ms), from the components' TSVMM_RESTORE_DEBUG stamps. */
  steps?: Record<string, number[]>;
}

/**
 * A warm vmm takeover, step by step, per kill (CLOCK_MONOTONIC stamps, like the kill's): the kernel
 * ends the vmm's threads until the keeper's pidfd fires (kill -> death seen), the keeper saves, the
 * standby's vCPU 0 thread wakes and claims, restores and releases, and enters KVM_RUN.
 */
function vmmWarmSteps(err: string, kills: bigint[]): Record<string, number[]> {
  const tl = [...err.matchAll(/died (\d+) resumed (\d+)\]; keeper saw the death -> saved ([\d.]+) ms -> standby claimed ([\d.]+) ms -> vCPUs released ([\d.]+) ms/g)]
    .map((m) => ({ died: BigInt(m[1]), resumed: BigInt(m[2]), saved: Number(m[3]), claimed: Number(m[4]), released: Number(m[5]) }));
  const entered = [...err.matchAll(/vCPU 0 running at .*\(monotonic (\d+) ns\)/g)].map((m) => BigInt(m[1]));
  const steps: Record<string, number[]> = { 'kill → keeper sees the death': [], 'keeper saves': [], 'standby wakes, claims': [], 'restore, keeper armed, release': [], 'release → KVM_RUN': [] };
  for (const k of kills) {
    const t = tl.find((x) => x.died > k);
    if (!t) continue;
    steps['kill → keeper sees the death'].push(Number(t.died - k) / 1e6);
    steps['keeper saves'].push(t.saved);
    steps['standby wakes, claims'].push(t.claimed);
    steps['restore, keeper armed, release'].push(t.released);
    const e = entered.find((x) => x >= t.resumed);
    if (e !== undefined) steps['release → KVM_RUN'].push(Number(e - t.resumed) / 1e6);
  }
  return steps;
}

/** A warm driver-domain takeover, step by step, per kill (the standby's TSVMM_RESTORE_DEBUG line). */
function ddWarmSteps(err: string, kills: bigint[]): Record<string, number[]> {
  const tl = [...err.matchAll(/standby took over: death seen -> activate ([\d.]+) ms, page check ([\d.]+) ms, poller \+ fds ([\d.]+) ms, re-attach ([\d.]+) ms \(monotonic death seen (\d+) ns\)/g)]
    .map((m) => ({ activate: Number(m[1]), check: Number(m[2]), fds: Number(m[3]), attach: Number(m[4]), seen: BigInt(m[5]) }));
  const steps: Record<string, number[]> = { 'kill → standby sees the death': [], 'death seen → activate': [], 'page check': [], 'poller + fds': [], 're-attach': [] };
  for (const k of kills) {
    const t = tl.find((x) => x.seen > k);
    if (!t) continue;
    steps['kill → standby sees the death'].push(Number(t.seen - k) / 1e6);
    steps['death seen → activate'].push(t.activate);
    steps['page check'].push(t.check);
    steps['poller + fds'].push(t.fds);
    steps['re-attach'].push(t.attach);
  }
  return steps;
}

/**
 * Kill -> the new vmm's vCPU 0 about to enter KVM_RUN again, per kill, from
 * the vmm's TSVMM_RESTORE_DEBUG stamps (CLOCK_MONOTONIC, like the kill's).
 */
function killToRunning(err: string, kills: bigint[]): number[] {
  const stamps = [...err.matchAll(/vCPU 0 running at .*\(monotonic (\d+) ns\)/g)].map((m) => BigInt(m[1]));
  return kills.map((k) => {
    const t = stamps.find((s) => s > k);
    return t === undefined ? NaN : Number(t - k) / 1e6;
  });
}

/** KVM_GET_TSC_KHZ of a scratch vCPU: the guest's TSC rate (the guest itself sees tsc_khz=0 on PVM). */
function tscKhz(): number {
  const kvm = Kvm.open();
  const vm = new Vm(kvm.createVm());
  const vcpu = new Vcpu(vm.createVcpu(0), 0, kvm.vcpuMmapSize());
  const khz = vcpu.tscKhz();
  native.close(vcpu.fd); native.close(vm.fd); native.close(kvm.fd);
  return khz;
}

/**
 * How long the guest itself was stopped by each kill, by its own clock: each
 * `@counter` line carries the guest TSC when its chunk of work ended, so the
 * gap between consecutive lines around a kill, less the usual gap (median),
 * is the time the guest lost. Independent of when lines reach the host.
 */
function guestStalls(lines: { at: number; line: string }[], kills: number[], khz: number): number[] {
  const ticks = lines.map((l) => ({ at: l.at, m: /^@counter cpu=0 .*tsc=(\d+) ok$/.exec(l.line) })).filter((x) => x.m).map((x) => ({ at: x.at, tsc: Number(x.m![1]) }));
  const gaps = ticks.slice(1).map((t, i) => (t.tsc - ticks[i].tsc) / khz);
  const usual = median(gaps);
  return kills.map((t0) => {
    const i = ticks.findIndex((t) => t.at > t0);
    // The line in flight at the kill may carry a TSC from before it: take the larger of its two gaps.
    const around = [gaps[i - 1], gaps[i]].filter((g) => g !== undefined);
    return around.length ? Math.max(0, Math.max(...around) - usual) : NaN;
  });
}

async function latency(component: ComponentName, warm: boolean, kills: number, cpus: number, blkIo: string): Promise<LatencyRow> {
  const extra = warm ? ['--standby'] : [];
  const vm = component === 'vmm'
    ? new RunningVm([...extra, '--cpus', String(cpus), '--cmdline', `workload=counter n=0 report=${cpus === 1 ? 2_000_000 : 4_000_000}`],
      { TSVMM_RESTORE_DEBUG: '1' })
    : blkLoopVm(extra, { TSVMM_RESTORE_DEBUG: '1', ...(blkIo ? { TSVMM_BLK_IO: blkIo } : {}) }, { n: 1000, report: 16 });
  const prefix = component === 'vmm' ? '@counter' : '@blk-progress';
  const row: LatencyRow = { name: `${component}, ${warm ? 'warm (--standby)' : 'cold'}${component === 'vmm' ? `, ${cpus} vCPU${cpus > 1 ? 's' : ''}` : ''}`, progress: [], running: [], supervisor: [], stall: [], errors: 0, warmCount: 0 };
  const killedAt: number[] = [];
  const killedNs: bigint[] = [];
  try {
    await vm.waitFor(() => vm.count(prefix) >= 2 && vm.pid[component] > 0, 30_000, 'the first progress lines');
    for (let k = 0; k < kills; k++) {
      if (warm) await vm.waitFor(() => vm.standbyPid[component] !== 0 && vm.standbyPid[component] !== vm.pid[component], 20_000, 'a standby');
      await sleep(50 + Math.random() * 200);
      const r = await vm.fail(component, 'SIGKILL', prefix);
      killedAt.push(r.t0);
      killedNs.push(r.killedNs);
      row.progress.push(r.progressMs);
      row.supervisor.push(r.rec.ms);
      if (r.rec.warm) row.warmCount++;
    }
  } finally {
    await vm.stop();
    vm.cleanup();
  }
  row.errors = guestErrors(vm.out).length;
  if (warm) row.steps = component === 'vmm' ? vmmWarmSteps(vm.err, killedNs) : ddWarmSteps(vm.err, killedNs);
  if (component === 'vmm') {
    row.stall = guestStalls(vm.lines, killedAt, tscKhz());
    // A kill whose restarted vmm never stamped "vCPU 0 running" (e.g. the run ended first) has no sample.
    const running = killToRunning(vm.err, killedNs);
    row.running = running.filter(Number.isFinite);
    if (row.running.length < running.length) process.stderr.write(`  ${row.name}: ${running.length - row.running.length} kill(s) without a vCPU-running stamp\n`);
  }
  return row;
}

/** One boot of the test guest; returns its `@` lines' key=values for lines starting with `word`. */
function boot(cmdline: string, args: string[], recovery: boolean): Record<string, string>[] {
  const r = spawnSync(process.execPath, [BIN, 'run', '--kernel', GUEST, ...args, '--cmdline', cmdline], {
    encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...(recovery ? {} : { TSVMM_NO_RECOVERY: '1' }) },
  });
  if (r.status !== 0) throw new Error(`tsvmm run ${cmdline} (recovery ${recovery ? 'on' : 'off'}) failed: ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  return [...r.stdout.matchAll(/^@(exits|blk) (.*)$/gm)].map((m) => Object.fromEntries([['word', m[1]], ...[...m[2].matchAll(/(\w+)=(\S+)/g)].map((x) => [x[1], x[2]])]));
}

interface OverheadRow { name: string; unit: string; on: number[]; off: number[]; higherIsBetter: boolean }

function overhead(rounds: number): OverheadRow[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-bench-rec-'));
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 64 << 20);
  const rows: OverheadRow[] = [
    { name: 'PIO exit (guest cycles/exit)', unit: 'cycles', on: [], off: [], higherIsBetter: false },
    { name: 'MMIO exit (guest cycles/exit)', unit: 'cycles', on: [], off: [], higherIsBetter: false },
    { name: '4 KiB random read, qd 32 (IOPS, per Mcycle)', unit: 'req/Mcycle', on: [], off: [], higherIsBetter: true },
  ];
  try {
    for (let round = 0; round < rounds; round++) {
      for (const recovery of round % 2 ? [false, true] : [true, false]) {
        const ex = boot('workload=exits n=50000', [], recovery);
        for (const [i, kind] of ['pio', 'mmio'].entries()) {
          const l = ex.find((x) => x.kind === kind)!;
          (recovery ? rows[i].on : rows[i].off).push(Number(l.cycles) / Number(l.n));
        }
        const b = boot('workload=blk bs=4096 qd=32 mode=rand blk_op=read verify=0 blk_n=20000 virtio_irq=1', ['--disk', img], recovery);
        const l = b.find((x) => x.phase === 'read' || x.phase !== undefined)!;
        (recovery ? rows[2].on : rows[2].off).push(Number(l.n) / (Number(l.cycles) / 1e6));
        process.stderr.write(`  overhead round ${round + 1}/${rounds} recovery ${recovery ? 'on ' : 'off'}: pio ${(Number(ex[0].cycles) / Number(ex[0].n)).toFixed(0)} mmio ${(Number(ex[1].cycles) / Number(ex[1].n)).toFixed(0)} cycles/exit, blk ${(Number(l.n) / (Number(l.cycles) / 1e6)).toFixed(3)} req/Mcycle\n`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

/** 95% bootstrap interval of the median of `xs`. */
function bootstrapMedianCi(xs: number[], resamples = 4000): [number, number] {
  const meds = Array.from({ length: resamples }, () => median(xs.map(() => xs[Math.floor(Math.random() * xs.length)])));
  meds.sort((a, b) => a - b);
  return [meds[Math.floor(resamples * 0.025)], meds[Math.floor(resamples * 0.975)]];
}

interface PerOp { name: string; ns: number; share: number }

/** ns per call of `fn`, best of 5 runs of `n` calls (after a warm-up). */
function nsPer(n: number, fn: (i: number) => void): number {
  for (let i = 0; i < n; i++) fn(i);
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(i);
    best = Math.min(best, Number(process.hrtime.bigint() - t) / n);
  }
  return best;
}

/**
 * What the recovery machinery itself adds to each operation, timed in
 * isolation (the end-to-end on/off difference is smaller than this machine's
 * run-to-run noise): the vCPU thread's exit journal (vmm/restore.ts
 * SerialLineJournal: two stores around each KVM_RUN), and the driver-domain's
 * per-request in-flight record (contracts/queue-progress.ts: mark on pop,
 * clear and publish on completion). The keeper and the heartbeat cost nothing
 * per operation (a sleeping process; one store per 20 ms).
 */
function perOperation(rows: OverheadRow[], khz: number): PerOp[] {
  const snap = new ArrayBuffer(SNAP.JOURNAL_SIZE + 4096);
  const journal = new SerialLineJournal(new Journal(snap, 0), -1);
  const run = new DataView(new ArrayBuffer(4096));
  const exitNs = nsPer(1_000_000, () => { journal.beforeRun(run); journal.handled(); });
  const q = new QueueProgress(new Uint32Array(queueProgressSize(256) / 4), 0, 256);
  q.reset(256);
  const reqNs = nsPer(1_000_000, (i) => {
    const head = i & 255;
    q.markInflight(head);
    q.lastAvailIdx = i;
    q.lastBatchHead = head;
    q.clearInflight(head);
    q.usedIdx = i;
  });
  const onNs = (r: OverheadRow) => median(r.on) / khz * 1e6; // cycles per exit -> ns
  const iops = (r: OverheadRow) => median(r.on) * khz / 1e3; // requests per Mcycle -> per second
  return [
    { name: 'exit journal, per PIO exit', ns: exitNs, share: exitNs / onNs(rows[0]) },
    { name: 'exit journal, per MMIO exit', ns: exitNs, share: exitNs / onNs(rows[1]) },
    { name: 'in-flight record, per blk request (share of one CPU at the measured IOPS)', ns: reqNs, share: reqNs * iops(rows[2]) / 1e9 },
  ];
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      kills: { type: 'string' }, cpus: { type: 'string' }, rounds: { type: 'string' }, skip: { type: 'string' }, json: { type: 'boolean' },
      'blk-io': { type: 'string' }, rows: { type: 'string' },
    },
  });
  const kills = Number(values.kills ?? 20);
  const cpus = Number(values.cpus ?? 1);
  const rounds = Number(values.rounds ?? 10);
  const t0 = Date.now();
  const load0 = os.loadavg()[0].toFixed(1);
  const out: { latency?: LatencyRow[]; overhead?: OverheadRow[]; perOp?: PerOp[] } = {};
  if (values.skip !== 'latency') {
    out.latency = [];
    const wanted = values.rows?.split(',');
    for (const component of ['vmm', 'driver-domain'] as ComponentName[]) {
      for (const warm of [false, true]) {
        if (wanted && !wanted.includes(`${component === 'vmm' ? 'vmm' : 'dd'}-${warm ? 'warm' : 'cold'}`)) continue;
        process.stderr.write(`  latency: ${component} ${warm ? 'warm' : 'cold'}, ${kills} kills\n`);
        try {
          out.latency.push(await latency(component, warm, kills, cpus, values['blk-io'] ?? ''));
        } catch (e) {
          // Keep the other rows: report this one as failed.
          process.stderr.write(`  latency row ${component} ${warm ? 'warm' : 'cold'} FAILED: ${(e as Error).message.split('\n')[0]}\n`);
          out.latency.push({ name: `${component}, ${warm ? 'warm (--standby)' : 'cold'} (FAILED, see log)`, progress: [NaN], running: [], supervisor: [NaN], stall: [], errors: 0, warmCount: 0 });
          process.exitCode = 1;
        }
      }
    }
  }
  if (values.skip !== 'overhead') {
    out.overhead = overhead(rounds);
    out.perOp = perOperation(out.overhead, tscKhz());
  }
  if (values.json) { process.stdout.write(JSON.stringify(out) + '\n'); return; }
  const f = (x: number) => x.toFixed(x < 10 ? 2 : x < 100 ? 1 : 0);
  console.log(`bench/recovery on ${machine()}; total ${((Date.now() - t0) / 1000).toFixed(0)} s; load average ${load0} at the start, ${os.loadavg()[0].toFixed(1)} at the end`);
  if (out.latency) {
    console.log(`\nRecovery latency (ms), ${kills} SIGKILLs per row:\n`);
    const rows = [['component, path', 'kill → next progress p50', 'p99', 'max', 'kill → vCPU running p50', 'p99', 'max',
      'death → resumed p50', 'p99', 'max', 'guest stall p50', 'p99', 'max', 'warm', 'guest errors']];
    const stat = (xs: number[]) => xs.length ? [f(percentile(xs, 50)), f(percentile(xs, 99)), f(Math.max(...xs))] : ['-', '-', '-'];
    for (const r of out.latency) {
      rows.push([r.name, ...stat(r.progress), ...stat(r.running), ...stat(r.supervisor), ...stat(r.stall), `${r.warmCount}/${r.progress.length}`, String(r.errors)]);
    }
    console.log(table(rows));
    const warmRows = out.latency.filter((r) => r.steps && Object.values(r.steps).some((xs) => xs.length));
    if (warmRows.length) {
      // min: the step's own cost when nothing else wanted the CPU (it moves little with the host's load).
      console.log(`\nWarm takeovers step by step (ms; min is what a step costs when it is not kept waiting for a CPU):\n`);
      const steps = [['component: step', 'p50', 'p99', 'max', 'min', 'n']];
      for (const r of warmRows) {
        for (const [name, xs] of Object.entries(r.steps!)) {
          steps.push([`${r.name.split(',')[0]}: ${name}`, ...(xs.length ? [f(percentile(xs, 50)), f(percentile(xs, 99)), f(Math.max(...xs)), f(Math.min(...xs))] : ['-', '-', '-', '-']), String(xs.length)]);
        }
      }
      console.log(table(steps));
    }
  }
  if (out.overhead) {
    console.log(`\nOverhead of the recovery machinery (${rounds} rounds, on and off back to back in each, order alternating; ` +
      `median (min-max); cost: median of the rounds' paired on/off costs, with a bootstrap 95% interval):\n`);
    const rows = [['workload', 'recovery on', 'recovery off', 'cost', '95% interval']];
    const mm = (xs: number[]) => `${f(median(xs))} (${f(Math.min(...xs))}-${f(Math.max(...xs))})`;
    const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
    for (const r of out.overhead) {
      const costs = r.on.map((on, i) => (r.higherIsBetter ? 1 - on / r.off[i] : on / r.off[i] - 1));
      const [lo, hi] = bootstrapMedianCi(costs);
      rows.push([r.name, mm(r.on), mm(r.off), pct(median(costs)), `${pct(lo)} .. ${pct(hi)}`]);
    }
    console.log(table(rows));
  }
  if (out.perOp) {
    console.log(`\nThe machinery's own work per operation (a microbenchmark of the code the hot paths run; share of the measured on-cost):\n`);
    console.log(table([['operation', 'ns', 'share'], ...out.perOp.map((o) => [o.name, o.ns.toFixed(1), `${(o.share * 100).toFixed(3)}%`])]));
  }
  if (out.latency?.some((r) => r.errors)) process.exitCode = 1;
}

main().catch((e) => { console.error(`bench/recovery: ${(e as Error).message}`); process.exit(1); });
