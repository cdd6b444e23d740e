/**
 * bench/exits: the guest's exit round trip (PIO and MMIO) through tsvmm against a raw KVM loop in C
 * (bench/exits/rawkvm.c) on the same guest and workload, in one invocation.
 *
 *   npx tsc -p . && node dist/bench/exits.js [--rounds R] [--n N] [--kernel FILE] [--json]
 *
 * Each round runs rawkvm and `tsvmm run` once each (the order alternates between rounds so slow
 * drift of the host hits both sides alike). The guest (`workload=exits n=N`) times N `outb` to
 * port 0x510, N 32-bit writes to unbacked GPA 0xC0000000 (an exit tsvmm hands to JavaScript) and
 * N 32-bit reads of the InterruptStatus register of virtio-mmio window 0 (`exits_isr=`; tsvmm runs
 * with a disk there, whose InterruptStatus its native exit loop answers; rawkvm answers any read with
 * 0) with rdtsc and prints `@exits kind=pio|mmio|isr n=.. cycles=..`. Cycles are converted to ns with one TSC frequency for both
 * sides: KVM_GET_TSC_KHZ as rawkvm reports it (else the guest's tsc_khz, else /proc/cpuinfo).
 * The table shows the median over the rounds and the ratio tsvmm/raw (target <= 1.15).
 *
 * CPU per exit: the guest prints `@exits begin` before its PIO loop; at that line and at each
 * `@exits kind=..` line the bench reads every thread's CPU time of the VMM's processes
 * (/proc/PID/task/TID/stat utime, stime and guest_time, in clock ticks; schedstat's on-CPU ns), so
 * each loop is bracketed by two samples (the guest idles 0.2 s after its last loop, so the VMM is
 * still there for the last). "on-CPU" (schedstat) is exact; "user" is utime less guest_time (the guest's own code),
 * per exit of the loop; the vCPU thread is the thread with the most guest time over the loops; "all"
 * adds every thread of every process of the VMM (tsvmm: supervisor, vmm, keeper, driver-domain,
 * priv-domain). On PVM the kernel's (and PVM's) part of an exit is the same for both VMMs, so the
 * vCPU thread's on-CPU µs/exit less rawkvm's is what tsvmm's own code costs per exit, user space
 * and any extra system calls (target: <= 0.3 µs). The kernel splits a thread's time into user,
 * system and guest by sampling at its tick (and reports 10 ms units), so that split is statistical:
 * use n >= 100000 (several seconds per loop) for it.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { buildRawkvm, cpuinfoKhz, ensureGuest, machine, median, RAWKVM, ROOT, table } from './lib';
import { virtioMmioWindow } from '../contracts/layout';
import { MmioReg } from '../contracts/virtio-mmio-layout';

const TARGET_RATIO = 1.15;
/** tsvmm's vCPU thread's user CPU per exit may exceed rawkvm's by this much (issue 19). */
const USER_TARGET_US = 0.3;
/** In the guest's order: its CPU samples bracket each loop in turn. */
const KINDS = ['pio', 'mmio', 'isr', 'serial'] as const;
type Kind = (typeof KINDS)[number];
/**
 * tsvmm-nc (with --ab): tsvmm with TSVMM_NO_COALESCED=1 TSVMM_NO_FASTEXIT=1, the exit path before
 * issue 19 (every UART byte exits, every exit enters JavaScript): the before/after pair in one run.
 */
type Vmm = 'rawkvm' | 'tsvmm' | 'tsvmm-nc';

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
  /** CPU used in the window of each loop (absent if a sample failed). */
  cpu: Partial<Record<Kind, LoopCpu>>;
}

/** Seconds of CPU in one loop's window: the vCPU thread's and all the VMM's threads'. */
interface CpuSplit { user: number; sys: number; guest: number; onCpu: number }
interface LoopCpu { vcpu: CpuSplit; all: CpuSplit }

const CLK_TCK = 100; // USER_HZ: the unit of /proc/PID/stat's times on Linux

interface TaskCpu { utime: number; stime: number; gtime: number; runNs: number }

/** Every process in the tree rooted at `root` (root included), from /proc's ppid fields. */
function processTree(root: number): number[] {
  const parent = new Map<number, number>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const st = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      parent.set(Number(e), Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) for (const [pid, pp] of parent) if (pp === tree[i]) tree.push(pid);
  return tree;
}

/** Per-thread CPU of the given processes, keyed "pid/tid". */
function sampleCpu(pids: number[]): Map<string, TaskCpu> {
  const out = new Map<string, TaskCpu>();
  for (const pid of pids) {
    let tids: string[];
    try { tids = fs.readdirSync(`/proc/${pid}/task`); } catch { continue; }
    for (const tid of tids) {
      try {
        const st = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const f = st.slice(st.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
        const runNs = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
        out.set(`${pid}/${tid}`, { utime: Number(f[11]), stime: Number(f[12]), gtime: Number(f[40]), runNs });
      } catch { /* gone */ }
    }
  }
  return out;
}

/**
 * The vCPU thread: the one that ran the guest (most guest time) over all the loops, on-CPU time
 * breaking ties. Not simply the busiest thread of each window: the driver-domain's JIT warm-up at
 * start (tsvmm runs with a disk for the isr loop) can outrun the vCPU thread in the first window.
 */
function vcpuThread(first: Map<string, TaskCpu>, last: Map<string, TaskCpu>): string | undefined {
  let best: string | undefined, bestG = -1, bestRun = -1;
  for (const [k, y] of last) {
    const x = first.get(k) ?? { utime: 0, stime: 0, gtime: 0, runNs: 0 };
    const g = y.gtime - x.gtime, run = y.runNs - x.runNs;
    if (g > bestG || (g === bestG && run > bestRun)) { best = k; bestG = g; bestRun = run; }
  }
  return best;
}

function cpuBetween(a: Map<string, TaskCpu>, b: Map<string, TaskCpu>, vcpuKey: string | undefined): LoopCpu {
  const all: CpuSplit = { user: 0, sys: 0, guest: 0, onCpu: 0 };
  let vcpu: CpuSplit = { ...all };
  for (const [k, y] of b) {
    const x = a.get(k) ?? { utime: 0, stime: 0, gtime: 0, runNs: 0 };
    const d: CpuSplit = {
      user: (y.utime - x.utime - (y.gtime - x.gtime)) / CLK_TCK, sys: (y.stime - x.stime) / CLK_TCK,
      guest: (y.gtime - x.gtime) / CLK_TCK, onCpu: (y.runNs - x.runNs) / 1e9,
    };
    all.user += d.user; all.sys += d.sys; all.guest += d.guest; all.onCpu += d.onCpu;
    if (k === vcpuKey) vcpu = d;
  }
  return { vcpu, all };
}

interface Options { rounds: number; n: number; kernel: string; json: boolean; ab: boolean }



function usage(msg?: string): never {
  if (msg) process.stderr.write(`bench/exits: ${msg}\n`);
  process.stderr.write('usage: node dist/bench/exits.js [--rounds R (default 5)] [--n N (default 100000)] [--kernel FILE] [--json] [--ab: also tsvmm with TSVMM_NO_COALESCED=1 TSVMM_NO_FASTEXIT=1]\n');
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { rounds: 5, n: 100000, kernel: path.join(ROOT, 'guest', 'out', 'guest.elf'), json: false, ab: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(`${a} needs a value`); return argv[++i]; };
    const int = (s: string, min: number) => { const v = Number(s); if (!Number.isInteger(v) || v < min) usage(`bad value for ${a}: ${s}`); return v; };
    if (a === '--rounds') o.rounds = int(val(), 1);
    else if (a === '--n') o.n = int(val(), 1);
    else if (a === '--kernel') o.kernel = path.resolve(val());
    else if (a === '--json') o.json = true;
    else if (a === '--ab') o.ab = true;
    else if (a === '--help' || a === '-h') usage();
    else usage(`unknown argument ${a}`);
  }
  return o;
}





/** The disk tsvmm's runs get (removed at the end). */
const DISK = path.join(os.tmpdir(), `tsvmm-bench-exits-${process.pid}.img`);
/** The guest's wait before its loops (exits_settle_ms). */
const SETTLE_MS = 1500;

async function runOnce(vmm: Vmm, round: number, o: Options): Promise<RunResult> {
  // 1.5 s without exits before the loops, in every VMM: tsvmm's start work once its guest runs
  // (the driver-domain's JIT warm-up, ~250 ms of CPU; the priv-domain's start) otherwise shares the
  // 2 CPUs with the first loop and is counted as the exit path's (PIO 1.23 where it is 1.03).
  const cmdline = `workload=exits n=${o.n} exits_settle_ms=${SETTLE_MS} exits_isr=0x${(virtioMmioWindow(0).base + MmioReg.InterruptStatus).toString(16)}`;
  // tsvmm gets a disk (virtio-mmio window 0) for the isr loop; the guest never drives it.
  const disk = DISK;
  if (vmm !== 'rawkvm' && !fs.existsSync(disk)) { fs.writeFileSync(disk, '', { mode: 0o600 }); fs.truncateSync(disk, 1 << 20); }
  const [cmd, args] = vmm === 'rawkvm'
    ? [RAWKVM, [o.kernel, cmdline]]
    : [process.execPath, [path.join(ROOT, 'bin', 'tsvmm.js'), 'run', '--kernel', o.kernel, '--disk', disk, '--cmdline', cmdline]];
  const env = vmm === 'tsvmm-nc' ? { ...process.env, TSVMM_NO_COALESCED: '1', TSVMM_NO_FASTEXIT: '1' } : process.env;
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '', pending = '';
  // CPU samples at `@exits begin` and each `@exits kind=` line: the loops' windows.
  let tree: number[] | undefined;
  const samples: Map<string, TaskCpu>[] = [];
  child.stdout.setEncoding('utf8').on('data', (c: string) => {
    stdout += c;
    pending += c;
    for (let nl; (nl = pending.indexOf('\n')) >= 0; pending = pending.slice(nl + 1)) {
      const line = pending.slice(0, nl);
      if (!line.startsWith('@exits ') || !child.pid) continue;
      tree ??= processTree(child.pid);
      samples.push(sampleCpu(tree));
    }
  });
  child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 30 * 60 * 1000);
  const [status, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, sig) => resolve([code, sig]));
  }).finally(() => clearTimeout(timer));
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const out = stdout + stderr;
  const fail = (why: string): never => {
    throw new Error(`${vmm} round ${round}: ${why}\n--- output ---\n${out.split('\n').slice(-20).join('\n')}`);
  };
  if (status !== 0) fail(`exit status ${status}${signal ? ` (signal ${signal})` : ''}`);
  if (!/^@done ok\s*$/m.test(stdout)) fail('no "@done ok" line from the guest');
  const guestError = /^@error.*$/m.exec(stdout);
  if (guestError) fail(`the guest reported ${guestError[0]}`);

  const res: RunResult = { vmm, round, cycles: { pio: NaN, mmio: NaN, isr: NaN, serial: NaN }, n: { pio: NaN, mmio: NaN, isr: NaN, serial: NaN }, guestNs: {}, guestTscKhz: 0, wallMs, cpu: {} };
  const boot = /^@boot .*\btsc_khz=(\d+)/m.exec(stdout);
  if (boot) res.guestTscKhz = Number(boot[1]);
  for (const m of stdout.matchAll(/^@exits kind=(\w+) (.*)$/gm)) {
    const kind = m[1] as Kind;
    if (!KINDS.includes(kind)) continue;
    const kv = Object.fromEntries([...m[2].matchAll(/(\w+)=(\S+)/g)].map((x) => [x[1], x[2]]));
    res.n[kind] = Number(kv.n);
    res.cycles[kind] = Number(kv.cycles);
    if (kv.ns_per_exit !== undefined) res.guestNs[kind] = Number(kv.ns_per_exit);
  }
  for (const k of KINDS) if (!(res.n[k] > 0) || !Number.isFinite(res.cycles[k])) fail(`no @exits kind=${k} line`);
  if (samples.length === KINDS.length + 1) {
    const vcpuKey = vcpuThread(samples[0], samples[samples.length - 1]);
    KINDS.forEach((k, i) => { res.cpu[k] = cpuBetween(samples[i], samples[i + 1], vcpuKey); });
  }
  if (vmm === 'rawkvm') {
    const s = /^@rawkvm .*\btsc_khz=(\d+)/m.exec(stderr);
    if (s) res.hostTscKhz = Number(s[1]);
  }
  return res;
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const tStart = process.hrtime.bigint();
  ensureGuest(o.kernel);
  buildRawkvm();
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('tsvmm is not built: run `npx tsc -p .` first');

  const log = (s: string) => { if (!o.json) process.stdout.write(s + '\n'); };
  const vmms: Vmm[] = o.ab ? ['rawkvm', 'tsvmm', 'tsvmm-nc'] : ['rawkvm', 'tsvmm'];
  log(`bench/exits: guest "workload=exits n=${o.n}", ${o.rounds} rounds, ${vmms.join(', ')} in turn; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const results: RunResult[] = [];
  const failures: { vmm: Vmm; round: number; error: string }[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const k = (round - 1) % vmms.length;
    const order = [...vmms.slice(k), ...vmms.slice(0, k)];
    for (const vmm of order) {
      let r: RunResult | undefined;
      for (let attempt = 1; !r; attempt++) {
        try {
          r = await runOnce(vmm, round, o);
        } catch (e) {
          // A failed run is reported and counted, never silently dropped; retried up to twice.
          const msg = (e as Error).message;
          failures.push({ vmm, round, error: msg });
          log(`  round ${round} ${vmm.padEnd(6)}  FAILED (attempt ${attempt}): ${msg.split('\n').filter((l) => /error|FAIL|status|signal/i.test(l)).slice(-2).join(' / ')}`);
          if (attempt >= 3) throw e;
        }
      }
      results.push(r);
      log(`  round ${round} ${vmm.padEnd(8)}  ${KINDS.map((k) => `${k} ${(r!.cycles[k] / r!.n[k]).toFixed(0).padStart(7)}`).join('  ')} cycles/exit (serial: /byte)  wall ${(r.wallMs / 1000).toFixed(2)} s`);
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
  const others = vmms.filter((v) => v !== 'rawkvm');
  const summary = Object.fromEntries(KINDS.map((k) => {
    const raw = stats('rawkvm', k);
    return [k, { rawkvm: raw, ...Object.fromEntries(others.map((v) => { const t = stats(v, k); return [v, { ...t, ratio: t.median / raw.median }]; })) }];
  })) as Record<Kind, Record<Vmm, { median: number; min: number; max: number; ratio?: number }>>;
  // CPU per exit of each loop: median over the rounds, µs.
  const CPU_ROWS = [['vcpu', 'onCpu'], ['vcpu', 'user'], ['vcpu', 'sys'], ['vcpu', 'guest'], ['all', 'onCpu'], ['all', 'user']] as const;
  const cpuPerExit = (vmm: Vmm, k: Kind, who: 'vcpu' | 'all', part: keyof CpuSplit) => {
    const xs = of(vmm).filter((r) => r.cpu[k]).map((r) => (r.cpu[k]![who][part] / r.n[k]) * 1e6);
    return xs.length ? median(xs) : NaN;
  };
  const cpu = Object.fromEntries(KINDS.map((k) => [k, Object.fromEntries(CPU_ROWS.map(([who, part]) => {
    const raw = cpuPerExit('rawkvm', k, who, part);
    return [`${who}_${part}`, { rawkvm: raw, ...Object.fromEntries(others.map((v) => { const t = cpuPerExit(v, k, who, part); return [v, { us: t, diff: t - raw, ratio: t / raw }]; })) }];
  }))])) as Record<Kind, Record<string, { rawkvm: number } & Partial<Record<Vmm, { us: number; diff: number; ratio: number }>>>>;
  const wall = Object.fromEntries(vmms.map((v) => [v, median(of(v).map((r) => r.wallMs))])) as Record<Vmm, number>;
  const totalS = Number(process.hrtime.bigint() - tStart) / 1e9;
  const worst = Math.max(...KINDS.filter((k) => k !== 'serial').map((k) => summary[k].tsvmm.ratio!));
  const load = os.loadavg();

  if (o.json) {
    process.stdout.write(JSON.stringify({ n: o.n, rounds: o.rounds, tscKhz: khz, tscKhzSource: khzSource, machine: machine(), summary, cpuPerExitUs: cpu, loadavg: load, wallMs: wall, totalS, target: TARGET_RATIO, results, failures }, null, 2) + '\n');
    return 0;
  }
  const us = (x: number) => (x / 1000).toFixed(2);
  const cell = (s: { median: number; min: number; max: number }) => `${us(s.median)} (${us(s.min)}-${us(s.max)})`;
  const label = (k: Kind) => k === 'serial' ? 'SERIAL (per byte)' : k === 'isr' ? 'ISR (virtio InterruptStatus read)' : k === 'mmio' ? 'MMIO (unbacked: JavaScript)' : k.toUpperCase();
  const rows = [
    ['exit', 'rawkvm µs/exit', ...others.flatMap((v) => [`${v} µs/exit`, `${v}/raw`])],
    ...KINDS.map((k) => [label(k), cell(summary[k].rawkvm), ...others.flatMap((v) => [cell(summary[k][v]), summary[k][v].ratio!.toFixed(3)])]),
    ['wall per run (s)', (wall.rawkvm / 1000).toFixed(2), ...others.flatMap((v) => [(wall[v] / 1000).toFixed(2), (wall[v] / wall.rawkvm).toFixed(3)])],
  ];
  log('');
  log(`median of ${o.rounds} rounds (min-max in brackets); TSC ${khz} kHz from ${khzSource}; n=${o.n} exits per kind (serial: n bytes, 2 exits each without coalescing)`);
  log(table(rows));
  const f2 = (x: number) => Number.isFinite(x) ? x.toFixed(2) : '-';
  const cpuRows = [
    ['CPU µs/exit', 'rawkvm', ...others.flatMap((v) => [v, `${v}-raw`])],
    ...KINDS.flatMap((k) => CPU_ROWS.map(([who, part]) => {
      const c = cpu[k][`${who}_${part}`];
      return [`${label(k)} ${part === 'onCpu' ? 'on-CPU' : part} (${who === 'vcpu' ? 'vCPU thread' : 'all threads'})`, f2(c.rawkvm), ...others.flatMap((v) => [f2(c[v]!.us), f2(c[v]!.diff)])];
    })),
  ];
  log('');
  log(`CPU time per exit in each loop's window, median of ${o.rounds} rounds. on-CPU: schedstat (exact); user (less guest time), sys, guest:`);
  log(`/proc/PID/task/TID/stat (the kernel's tick-sampled split, 10 ms units: statistical; use a large --n)`);
  log(table(cpuRows));
  const ownDiff = Math.max(...KINDS.filter((k) => k !== 'serial').map((k) => cpu[k].vcpu_onCpu.tsvmm!.diff));
  log(`tsvmm's own CPU per exit (vCPU thread on-CPU, tsvmm - rawkvm, PIO/MMIO; the kernel's part is the same on PVM): worst ${f2(ownDiff)} µs (target <= ${USER_TARGET_US}: ${ownDiff <= USER_TARGET_US ? 'met' : 'NOT met'})`);
  log(`machine: ${machine()}; load average ${load.map((x) => x.toFixed(2)).join(' ')}`);
  if (failures.length) log(`failed runs (retried): ${failures.map((f) => `${f.vmm} round ${f.round}`).join(', ')}`);
  log(`total wall time ${totalS.toFixed(1)} s; worst ratio (PIO/MMIO) ${worst.toFixed(3)} (target <= ${TARGET_RATIO}: ${worst <= TARGET_RATIO ? 'met' : 'NOT met'})`);
  return 0;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  process.stderr.write(`bench/exits: ${(e as Error).message}\n`);
  process.exitCode = 1;
}).finally(() => fs.rmSync(DISK, { force: true }));
