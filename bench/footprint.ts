/**
 * bench/footprint: what one VM costs the host, against QEMU microvm running the same test guest
 * in the same run.
 *
 * For each N in --vms (default 1,4), N VMs are started together, once per configuration
 * (tsvmm, tsvmm --standby, QEMU microvm; order alternating per round), each with a small raw disk
 * (so tsvmm runs its driver-domain) and the test guest's endless `counter` workload. Measured:
 *   - start: from each VM's spawn to the guest's first serial line (`@boot ...`), median and max
 *     over the N VMs;
 *   - PSS (/proc/PID/smaps_rollup) per component and per VM, once every VM is up (tsvmm: every
 *     component and, with --standby, every standby reported ready) and --settle ms have passed.
 *     Guest RAM is excluded: it is a memfd (tsvmm: `tsvmm-ram-NAME`; QEMU is given a
 *     memory-backend-memfd so its RAM is one named mapping too), and the Pss of the mappings of
 *     that memfd in /proc/PID/smaps is subtracted from the rollup's. The vmm and its keeper share
 *     one mm (clone(CLONE_VM)): their rollups are the same pages and are counted once (processes
 *     whose rollups have the same range line - from the lowest mapping to the ASLR'd stack top - are
 *     one mm). PSS splits pages shared between processes (node's text, the QEMU binary) among them,
 *     so the per-VM figure falls as N grows. USS (Private_Clean + Private_Dirty, guest RAM excluded
 *     the same way) counts only the pages no other process maps: it does not move with N or with
 *     what else runs, and the pages shared with other Node processes are not in it.
 *
 *   npx tsc -p . && node dist/bench/footprint.js [--vms 1,4,16] [--rounds R (1)] [--settle MS (3000)]
 *        [--configs tsvmm,standby,qemu] [--hang-timeout MS (0)] [--kernel FILE] [--qemu BIN] [--base BIN] [--json]
 *
 * --base BIN adds a configuration `base`: tsvmm (no standby) from another tree's bin/tsvmm.js (a
 * checkout of an older commit, built), in the same rounds, for before/after start times.
 *
 * tsvmm runs with --hang-timeout 0 by default: on a loaded machine a component that misses its
 * heartbeats for 250 ms is killed and recovered, and a sample taken mid-recovery measures the wrong
 * processes. A group in which any recovery happened anyway is discarded and started again (3 tries).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawn, ChildProcess } from 'child_process';
import { ROOT, ensureGuest, ensureQemu, machine, median, qemuMicrovmArgs, table } from './lib';

type Config = 'tsvmm' | 'standby' | 'qemu' | 'base';
const CONFIGS: Config[] = ['tsvmm', 'standby', 'qemu'];
const BIN = path.join(ROOT, 'bin', 'tsvmm.js');
const CMDLINE = 'workload=counter n=0 report=500000000';
const MEM_MIB = 256;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Options { base?: string; hangTimeoutMs: number; vms: number[]; rounds: number; settleMs: number; configs: Config[]; kernel: string; qemu: string; json: boolean }

function usage(): never {
  process.stderr.write('usage: node dist/bench/footprint.js [--vms 1,4,16] [--rounds R] [--settle MS] [--configs tsvmm,standby,qemu] [--hang-timeout MS (0)] [--kernel FILE] [--qemu BIN] [--base BIN] [--json]\n');
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { hangTimeoutMs: 0, vms: [1, 4], rounds: 1, settleMs: 3000, configs: CONFIGS, kernel: path.join(ROOT, 'guest', 'out', 'guest.elf'), qemu: 'qemu-system-x86_64', json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { const v = argv[++i]; if (v === undefined) usage(); return v; };
    const int = (s: string) => { const n = Number(s); if (!Number.isInteger(n) || n < 1 || n > 64) usage(); return n; };
    if (a === '--vms') o.vms = val().split(',').map(int);
    else if (a === '--rounds') o.rounds = int(val());
    else if (a === '--settle') { o.settleMs = Number(val()); if (!(o.settleMs >= 0)) usage(); }
    else if (a === '--configs') { o.configs = val().split(',') as Config[]; if (!o.configs.every((c) => CONFIGS.includes(c))) usage(); }
    else if (a === '--hang-timeout') { o.hangTimeoutMs = Number(val()); if (!Number.isInteger(o.hangTimeoutMs) || o.hangTimeoutMs < 0) usage(); }
    else if (a === '--kernel') o.kernel = val();
    else if (a === '--qemu') o.qemu = val();
    else if (a === '--base') o.base = path.resolve(val());
    else if (a === '--json') o.json = true;
    else usage();
  }
  if (o.base && !o.configs.includes('base')) o.configs = [...o.configs, 'base'];
  if (o.configs.includes('base') && !o.base) usage();
  return o;
}

/**
 * One process's PSS and USS (its private pages: Private_Clean + Private_Dirty) in kB: the rollup's,
 * and the part of each that is guest RAM (mappings whose name contains `ramName`); `key` is the
 * rollup's range line (lowest mapping to the top of the ASLR'd stack), the same for two processes
 * only when they share one mm.
 */
function pss(pid: number, ramName: string): { key: string; pss: number; ram: number; uss: number; ramUss: number } | undefined {
  const kb = (text: string, field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  try {
    const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const total = kb(rollup, 'Pss');
    const uss = kb(rollup, 'Private_Clean') + kb(rollup, 'Private_Dirty');
    let ram = 0;
    let ramUss = 0;
    let inRam = false;
    for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
      if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inRam = line.includes(ramName);
      else if (inRam && line.startsWith('Pss:')) ram += Number(/(\d+)/.exec(line)![1]);
      else if (inRam && line.startsWith('Private_')) ramUss += Number(/(\d+)/.exec(line)![1]);
    }
    return { key: rollup.slice(0, rollup.indexOf('\n')), pss: total, ram, uss, ramUss };
  } catch { return undefined; }
}

/** The descendants of `pid` (children of every thread), depth first. */
function descendants(pid: number): number[] {
  const out: number[] = [];
  let tasks: string[] = [];
  try { tasks = fs.readdirSync(`/proc/${pid}/task`); } catch { return out; }
  for (const t of tasks) {
    let kids = '';
    try { kids = fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8'); } catch { continue; }
    for (const k of kids.trim().split(/\s+/).filter(Boolean).map(Number)) out.push(k, ...descendants(k));
  }
  return out;
}

interface Vm {
  config: Config; name: string; child: ChildProcess; t0: number; firstLineMs?: number; err: string;
  ready: Map<number, string>; exited: boolean; disk: string;
}

function startVm(o: Options, config: Config, name: string, dir: string): Vm {
  const disk = path.join(dir, `${name}.img`);
  fs.writeFileSync(disk, '');
  fs.truncateSync(disk, 16 << 20);
  const [cmd, args] = config === 'qemu'
    ? [o.qemu, qemuMicrovmArgs(o.kernel, CMDLINE, ['-drive', `id=d0,file=${disk},format=raw,if=none`, '-device', 'virtio-blk-device,drive=d0'],
      { memMiB: MEM_MIB, memfd: true })]
    : [process.execPath, [config === 'base' ? o.base! : BIN, 'run', '--name', name, '--metrics-addr', 'none', '--kernel', o.kernel, '--mem', `${MEM_MIB}M`,
      '--disk', disk, '--cmdline', CMDLINE, '--hang-timeout', String(o.hangTimeoutMs), ...(config === 'standby' ? ['--standby'] : [])]];
  const t0 = performance.now();
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const vm: Vm = { config, name, child, t0, err: '', ready: new Map(), exited: false, disk };
  let ob = '';
  child.stdout!.on('data', (d: Buffer) => {
    if (vm.firstLineMs !== undefined) return;
    ob += d.toString('latin1');
    if (/@\w+[^\n]*\n/.test(ob)) vm.firstLineMs = performance.now() - t0;
  });
  let eb = '';
  child.stderr!.on('data', (d: Buffer) => {
    vm.err += d.toString();
    eb += d.toString();
    let i;
    while ((i = eb.indexOf('\n')) >= 0) {
      const line = eb.slice(0, i);
      eb = eb.slice(i + 1);
      const m = /tsvmm: (vmm|driver-domain|priv-domain) (standby )?ready \(pid (\d+)\)/.exec(line);
      if (m) vm.ready.set(Number(m[3]), m[1] + (m[2] ? ' standby' : ''));
    }
  });
  child.on('exit', () => { vm.exited = true; });
  return vm;
}

/** Whether `vm` is fully up: its first guest line, and for tsvmm every component (and standby) ready. */
function up(vm: Vm): boolean {
  if (vm.firstLineMs === undefined) return false;
  if (vm.config === 'qemu') return true;
  const names = [...vm.ready.values()];
  const want = ['vmm', 'driver-domain', 'priv-domain', ...(vm.config === 'standby' ? ['vmm standby', 'driver-domain standby'] : [])];
  return want.every((w) => names.includes(w));
}

/** PSS in kB per component of one VM, guest RAM excluded, shared mms counted once; plus the RAM part. */
function measure(vm: Vm): { parts: Record<string, number>; infra: number; ram: number; uss: number } {
  const parts: Record<string, number> = {};
  let ram = 0;
  let uss = 0;
  const seen = new Set<string>();
  const root = vm.child.pid!;
  const pids = [root, ...descendants(root)];
  const ramName = vm.config === 'qemu' ? '/memfd:memory-backend-memfd' : `/memfd:tsvmm-ram-${vm.name} `;
  for (const pid of pids) {
    const p = pss(pid, ramName);
    if (!p || seen.has(p.key)) continue;   // exited, or the same mm as one already counted (the keeper)
    seen.add(p.key);
    let comp: string;
    if (vm.config === 'qemu') comp = 'qemu';
    else if (pid === root) comp = 'supervisor';
    else comp = vm.ready.get(pid) ?? (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('/vmm/') ? 'keeper (own mm)' : 'other');
    if (comp === 'vmm') comp = 'vmm+keeper';
    parts[comp] = (parts[comp] ?? 0) + p.pss - p.ram;
    ram += p.ram;
    uss += p.uss - p.ramUss;
  }
  return { parts, infra: Object.values(parts).reduce((a, b) => a + b, 0), ram, uss };
}

async function stopVm(vm: Vm): Promise<void> {
  if (!vm.exited) {
    vm.child.kill('SIGTERM');
    const deadline = performance.now() + 10_000;
    while (!vm.exited && performance.now() < deadline) await sleep(20);
    if (!vm.exited) vm.child.kill('SIGKILL');
  }
  fs.rmSync(vm.disk, { force: true });
}

class Recovered extends Error {}

interface Sample { config: Config; n: number; round: number; startMs: number[]; parts: Record<string, number>; infraPerVm: number; ramPerVm: number; ussPerVm: number }

async function runGroup(o: Options, config: Config, n: number, round: number, dir: string): Promise<Sample> {
  const vms: Vm[] = [];
  try {
    for (let i = 0; i < n; i++) vms.push(startVm(o, config, `footprint-${process.pid}-${config}-${n}-${round}-${i}`, dir));
    const deadline = performance.now() + 60_000 + 5_000 * n;
    while (!vms.every(up)) {
      const dead = vms.find((v) => v.exited);
      if (dead) throw new Error(`${config} ${dead.name} exited before it was up:\n${dead.err.split('\n').slice(-6).join('\n')}`);
      if (performance.now() > deadline) throw new Error(`${config}: ${vms.filter((v) => !up(v)).length} of ${n} VMs not up after ${((performance.now() - vms[0].t0) / 1000).toFixed(0)} s`);
      await sleep(10);
    }
    await sleep(o.settleMs);
    const ms = vms.map(measure);
    const recovered = vms.find((v) => /recovered|standby failed/.test(v.err));
    if (recovered) throw new Recovered(`${config} ${recovered.name}: a component was recovered during the sample`);
    const parts: Record<string, number> = {};
    for (const m of ms) for (const [k, v] of Object.entries(m.parts)) parts[k] = (parts[k] ?? 0) + v / n;
    return {
      config, n, round, startMs: vms.map((v) => v.firstLineMs!), parts,
      infraPerVm: ms.reduce((a, m) => a + m.infra, 0) / n, ramPerVm: ms.reduce((a, m) => a + m.ram, 0) / n,
      ussPerVm: ms.reduce((a, m) => a + m.uss, 0) / n,
    };
  } finally {
    await Promise.all(vms.map(stopVm));
  }
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const log = (s: string) => { if (!o.json) process.stdout.write(s + '\n'); };
  ensureGuest(o.kernel);
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('tsvmm is not built: run `npx tsc -p .` first');
  const qemuVer = o.configs.includes('qemu') ? ensureQemu(o.qemu, 'bench/footprint') : '';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-footprint-'));
  const t0 = performance.now();
  log(`bench/footprint: ${o.configs.join(', ')} x ${o.vms.join(',')} VMs started together, ${o.rounds} round(s); ${qemuVer}`);
  const samples: Sample[] = [];
  try {
    for (let round = 1; round <= o.rounds; round++) {
      for (const n of o.vms) {
        const order = round % 2 ? o.configs : [...o.configs].reverse();
        for (const config of order) {
          let s: Sample | undefined;
          for (let attempt = 1; !s; attempt++) {
            try { s = await runGroup(o, config, n, round, dir); } catch (e) {
              if (!(e instanceof Recovered) || attempt >= 3) throw e;
              log(`  round ${round} n=${n} ${config}: ${e.message}; again`);
            }
          }
          samples.push(s);
          log(`  round ${round} n=${String(n).padStart(2)} ${config.padEnd(7)} load ${os.loadavg()[0].toFixed(2)} start median ${median(s.startMs).toFixed(0)} ms (max ${Math.max(...s.startMs).toFixed(0)})`
            + `  PSS/VM ${(s.infraPerVm / 1024).toFixed(1)} MiB, USS/VM ${(s.ussPerVm / 1024).toFixed(1)} MiB (guest RAM ${(s.ramPerVm / 1024).toFixed(1)} MiB excluded): `
            + Object.entries(s.parts).map(([k, v]) => `${k} ${(v / 1024).toFixed(1)}`).join(', '));
        }
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const wallS = (performance.now() - t0) / 1000;
  if (o.json) {
    process.stdout.write(JSON.stringify({ machine: machine(), qemu: qemuVer, options: o, samples, wallS }, null, 2) + '\n');
    return 0;
  }
  // Per (config, n): medians over rounds of the median start, max start, and PSS.
  const agg = (config: Config, n: number) => {
    const ss = samples.filter((s) => s.config === config && s.n === n);
    if (!ss.length) return undefined;
    const comps = [...new Set(ss.flatMap((s) => Object.keys(s.parts)))];
    return {
      start: median(ss.map((s) => median(s.startMs))), startMax: median(ss.map((s) => Math.max(...s.startMs))),
      pss: median(ss.map((s) => s.infraPerVm)) / 1024, uss: median(ss.map((s) => s.ussPerVm)) / 1024, ram: median(ss.map((s) => s.ramPerVm)) / 1024,
      parts: Object.fromEntries(comps.map((c) => [c, median(ss.map((s) => s.parts[c] ?? 0)) / 1024])),
    };
  };
  const mib = (x: number) => x.toFixed(1);
  const rows: string[][] = [['N', 'config', 'start p50 ms', 'start max ms', 'start /QEMU', 'PSS/VM MiB', 'PSS /QEMU', 'USS/VM MiB', 'per component (MiB per VM)']];
  for (const n of o.vms) {
    const q = agg('qemu', n);
    for (const c of o.configs) {
      const a = agg(c, n);
      if (!a) continue;
      rows.push([String(n), c === 'standby' ? 'tsvmm --standby' : c === 'qemu' ? 'QEMU microvm' : c === 'base' ? 'tsvmm (--base)' : 'tsvmm', a.start.toFixed(0), a.startMax.toFixed(0),
        q && c !== 'qemu' ? (a.start / q.start).toFixed(2) : '', mib(a.pss), q && c !== 'qemu' ? (a.pss / q.pss).toFixed(2) : '', mib(a.uss),
        Object.entries(a.parts).map(([k, v]) => `${k} ${mib(v)}`).join(', ')]);
    }
  }
  log('');
  log(`guest RAM (${MEM_MIB} MiB memfd) excluded from PSS and USS (USS: the private pages, which do not move with what else runs); medians of ${o.rounds} round(s); settle ${o.settleMs} ms before measuring`);
  log(table(rows));
  log(`machine: ${machine()}; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  log(`total wall time ${wallS.toFixed(1)} s`);
  return 0;
}

main().then((rc) => { process.exitCode = rc; }, (e) => {
  process.stderr.write(`bench/footprint: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
