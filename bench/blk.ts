/**
 * bench/blk: virtio-blk throughput of tsvmm against QEMU (-M microvm, virtio-mmio) on the same
 * guest ELF and the same raw image, in one invocation.
 *
 *   npx tsc -p . && node dist/bench/blk.js [--rounds R] [--irq both|0|1] [--rows LIST] [--rand-n N] [--seq-qd Q]
 *                                          [--size MiB] [--image FILE] [--kernel FILE] [--keep] [--json]
 *
 * The image (default bench/out/blk.img, 256 MiB) is written once, on the host, with the guest's
 * self-describing 1 MiB blocks (generation 1; test/helpers/blk-image.ts makeBlock), then read back
 * once with verification by each VMM (untimed). Rows, each one guest boot per VMM per round:
 *
 *   rand4k   `workload=blk bs=4096 qd=32 mode=rand blk_op=read verify=0 blk_n=N`     -> IOPS
 *   seqread  `workload=blk bs=1048576 qd=Q mode=seq blk_op=read verify=0 blk_n=P*SIZE`  -> MB/s
 *   seqwrite `workload=blk bs=1048576 qd=Q mode=seq blk_op=write gen=1 blk_n=P*SIZE`    -> MB/s
 *
 * (P = --seq-passes, 4: the sequential rows sweep the whole image P times in one boot).
 * --rows picks a subset (comma-separated ids: rand4k,seqread,seqwrite; default all).
 *
 * each polled (`virtio_irq=0`: the guest spins on the used ring) and interrupt-driven
 * (`virtio_irq=1`: the guest halts until the interrupt, as an OS does). seqwrite rewrites the
 * prefill's exact bytes (same generation), so the image stays valid; it is checked on the host at
 * the end. Each boot runs its row's phase twice in a row (`blk_repeat=2`): the table's main columns
 * are the second run, the data path once the VMM has served these requests once (as fio's ramp_time
 * would); the first run, a fresh VMM's (for tsvmm: the driver-domain's JIT still warming up on the
 * guest's own requests), has columns of its own. The guest times each phase with rdtsc (`@blk phase=.. cycles=..`); cycles are converted
 * with one TSC frequency for both sides (KVM_GET_TSC_KHZ via bench/out/rawkvm, else
 * /proc/cpuinfo): the guest sees tsc_khz=0 on these hosts. Rounds alternate the VMM order; the
 * table shows medians and the ratio tsvmm/QEMU (higher is better for tsvmm; target >= 1.0).
 *
 * Two QEMU configurations run in the same invocation (issue 19 item 5):
 *   qemu          the baseline the target is judged against: QEMU at its best, the disk on its own
 *                 iothread and aio=io_uring (`-object iothread,id=io0 -device
 *                 virtio-blk-device,drive=d0,iothread=io0`, `-drive ...,aio=io_uring`). If this
 *                 QEMU rejects aio=io_uring (probed once with `-M none`), the bench says so in one
 *                 line and the baseline keeps the iothread with aio=threads.
 *   qemu-default  QEMU's default set-up (no iothread, aio=threads), the second column; dropped
 *                 with --no-qemu-default.
 * Both run with `cache=writeback` (the default): host page cache, guest flushes -> fdatasync,
 * which is what tsvmm does (buffered reads/writes through io_uring, or preadv/pwritev on the libuv
 * pool where io_uring is unavailable or TSVMM_BLK_IO=threads; fdatasync on FLUSH).
 *
 * --cpu measures, instead of the table, the host CPU each side spends per 4 KiB random read: one
 * boot per VMM configuration and completion mode of `--cpu-n` (200000) reads, the guest printing
 * `@blk-progress ... tsc=` every tenth; between the first and the ninth of those lines the bench
 * reads every thread's utime/stime from /proc/PID/task/TID/stat (tsvmm: all its processes, named
 * by role; QEMU with `-name debug-threads=on`, so its iothread is `IO io0`) and prints user and
 * system microseconds per request per thread.
 * --tsvmm BIN runs another tree's bin/tsvmm.js (e.g. a checkout of an older commit, for before/after).
 * --disk-opts OPTS appends ,OPTS to tsvmm's --disk (e.g. io=threads, io=uring, cache=none; README
 * "Disks"); with cache=none QEMU's drive gets cache=none too (O_DIRECT on both sides).
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { checkImage, makeBlock } from '../test/helpers/blk-image';
import { describeLargeTransfers, largeTransferPolicy } from '../virtio/block-backend';
import { buildRawkvm, cpuinfoKhz, ensureGuest, ensureQemu, machine, qemuMicrovmArgs, RAWKVM, ROOT, summarize, table } from './lib';

const TARGET_RATIO = 1.0;
const MiB = 1 << 20;

/** 'qemu' is QEMU at its best (iothread + aio=io_uring), the baseline; 'qemu-default' its default set-up. */
type Vmm = 'tsvmm' | 'qemu' | 'qemu-default';
type RowId = 'rand4k' | 'seqread' | 'seqwrite';

interface Row { id: RowId; label: string; unit: 'IOPS' | 'MB/s'; bs: number; qd: number; mode: 'rand' | 'seq'; op: 'read' | 'write'; n: number }
interface Phase { n: number; bytes: number; cycles: number; errors: number; kicks: number; irqs: number }
/** One boot: `first` is the row's phase as a fresh VMM ran it, `phase` the same requests right after (blk_repeat=2). */
interface RunResult { vmm: Vmm; row: RowId; irq: number; round: number; first: Phase; phase: Phase; wallMs: number }

interface Options {
  rounds: number; irq: number[]; randN: number; seqQd: number; seqPasses: number; sizeMiB: number;
  image: string; kernel: string; keep: boolean; json: boolean; qemu: string; tsvmm: string;
  /** Rows to run (--rows rand4k,seqread,seqwrite; default all). */
  rows: RowId[];
  /** --disk-opts: appended to tsvmm's --disk as ",OPTS" ('' = none). */
  diskOpts: string;
  /** Whether QEMU's default set-up runs as a second baseline (--no-qemu-default turns it off). */
  qemuDefault: boolean;
  /** --cpu: measure host CPU per 4 KiB request per thread instead of the throughput table. */
  cpu: boolean;
  /** --cpu-n: requests per --cpu boot. */
  cpuN: number;
}

/** The baseline's aio mode: io_uring unless this QEMU rejects it (probeQemuIoUring). */
let qemuBestAio: 'io_uring' | 'threads' = 'io_uring';



function usage(msg?: string): never {
  if (msg) process.stderr.write(`bench/blk: ${msg}\n`);
  process.stderr.write('usage: node dist/bench/blk.js [--rounds R (3)] [--irq both|0|1 (both)] [--rand-n N (30000)] [--seq-qd Q (8)] [--seq-passes P (4)]\n' +
    '                          [--rows rand4k,seqread,seqwrite (all)]\n' +
    '                          [--size MiB (256)] [--image FILE (bench/out/blk.img)] [--kernel FILE] [--qemu BIN] [--tsvmm BIN] [--keep] [--json]\n' +
    '                          [--disk-opts OPTS (e.g. io=threads, io=uring, cache=none)] [--no-qemu-default]\n' +
    '                          [--cpu [--cpu-n N (200000)]: host CPU per 4 KiB request per thread instead of the table]\n');
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    rounds: 3, irq: [0, 1], randN: 30000, seqQd: 8, seqPasses: 4, sizeMiB: 256,
    image: path.join(ROOT, 'bench', 'out', 'blk.img'), kernel: path.join(ROOT, 'guest', 'out', 'guest.elf'),
    keep: false, json: false, qemu: 'qemu-system-x86_64', tsvmm: path.join(ROOT, 'bin', 'tsvmm.js'),
    rows: ['rand4k', 'seqread', 'seqwrite'], diskOpts: '', qemuDefault: true, cpu: false, cpuN: 200000,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(`${a} needs a value`); return argv[++i]; };
    const int = (s: string, min: number) => { const v = Number(s); if (!Number.isInteger(v) || v < min) usage(`bad value for ${a}: ${s}`); return v; };
    if (a === '--rounds') o.rounds = int(val(), 1);
    else if (a === '--irq') { const v = val(); o.irq = v === 'both' ? [0, 1] : v === '0' ? [0] : v === '1' ? [1] : usage(`bad --irq ${v}`); }
    else if (a === '--rand-n') o.randN = int(val(), 1);
    else if (a === '--seq-qd') o.seqQd = int(val(), 1);
    else if (a === '--seq-passes') o.seqPasses = int(val(), 1);
    else if (a === '--size') o.sizeMiB = int(val(), 8);
    else if (a === '--image') o.image = path.resolve(val());
    else if (a === '--kernel') o.kernel = path.resolve(val());
    else if (a === '--qemu') o.qemu = val();
    else if (a === '--tsvmm') o.tsvmm = path.resolve(val());
    else if (a === '--disk-opts') o.diskOpts = val();
    else if (a === '--rows') {
      const v = val().split(',') as RowId[];
      if (!v.length || v.some((r) => !['rand4k', 'seqread', 'seqwrite'].includes(r))) usage(`bad --rows ${v.join(',')}`);
      o.rows = v;
    } else if (a === '--keep') o.keep = true;
    else if (a === '--no-qemu-default') o.qemuDefault = false;
    else if (a === '--cpu') o.cpu = true;
    else if (a === '--cpu-n') o.cpuN = int(val(), 1000);
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') usage();
    else usage(`unknown argument ${a}`);
  }
  return o;
}








/** The host TSC frequency: KVM_GET_TSC_KHZ as bench/out/rawkvm reports it, else /proc/cpuinfo. */
function tscKhz(kernel: string): [number, string] {
  try {
    buildRawkvm(true);
    const r = spawnSync(RAWKVM, [kernel, 'workload=exits n=1'], { encoding: 'utf8', timeout: 60000 });
    const m = /^@rawkvm .*\btsc_khz=(\d+)/m.exec(r.stderr ?? '');
    if (m && Number(m[1]) > 0) return [Number(m[1]), 'KVM_GET_TSC_KHZ (bench/out/rawkvm)'];
  } catch { /* fall through */ }
  const k = cpuinfoKhz();
  if (!k) throw new Error('cannot determine the TSC frequency');
  return [k, '/proc/cpuinfo cpu MHz'];
}

/** Writes the image once on the host: every 1 MiB block a valid generation-1 guest block. */
function prefill(image: string, sizeMiB: number): void {
  fs.mkdirSync(path.dirname(image), { recursive: true });
  const fd = fs.openSync(image, 'w');
  try {
    for (let b = 0; b < sizeMiB; b++) fs.writeSync(fd, makeBlock(MiB, b * (MiB / 512), 1), 0, MiB, b * MiB);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** QEMU's -drive value; `best` adds the baseline's aio mode. */
function qemuDrive(o: Options, best: boolean): string {
  const cache = /(^|,)cache=none(,|$)/.test(o.diskOpts) ? 'none' : 'writeback';
  return `id=d0,file=${o.image},format=raw,if=none,cache=${cache}${best ? `,aio=${qemuBestAio}` : ''}`;
}

/** The disk's QEMU arguments: at its best an iothread (+ aio=io_uring), by default neither. */
function qemuDiskArgs(o: Options, best: boolean): string[] {
  return best
    ? ['-object', 'iothread,id=io0', '-drive', qemuDrive(o, true), '-device', 'virtio-blk-device,drive=d0,iothread=io0']
    : ['-drive', qemuDrive(o, false), '-device', 'virtio-blk-device,drive=d0'];
}

function qemuArgs(o: Options, cmdline: string, best: boolean): string[] {
  return qemuMicrovmArgs(o.kernel, cmdline, qemuDiskArgs(o, best), { name: o.cpu ? 'bench-blk' : undefined });
}

/**
 * Whether this QEMU opens the image with aio=io_uring on an iothread: `-M none` with the drive and
 * the monitor on stdin answering `quit` (QEMU sets up the io_uring context when it opens the file,
 * so a build without liburing, or a kernel with io_uring disabled, fails here). Returns null if
 * it works, else QEMU's reason.
 */
function probeQemuIoUring(o: Options): string | null {
  const r = spawnSync(o.qemu, ['-M', 'none', '-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'stdio',
    '-object', 'iothread,id=io0', '-drive', qemuDrive(o, true)], { input: 'quit\n', encoding: 'utf8', timeout: 30000 });
  if (r.status === 0) return null;
  return (r.stderr ?? '').trim().split('\n').pop() || r.error?.message || `exit status ${r.status}`;
}

function tsvmmArgs(o: Options, cmdline: string): string[] {
  return [o.tsvmm, 'run', '--kernel', o.kernel, '--disk', o.diskOpts ? `${o.image},${o.diskOpts}` : o.image, '--cmdline', cmdline];
}

function cmdlineOf(row: Row, irq: number, verify = 0, repeat = 1): string {
  return `workload=blk bs=${row.bs} qd=${row.qd} mode=${row.mode} blk_op=${row.op} blk_n=${row.n} gen=1 verify=${verify} virtio_irq=${irq} blk_repeat=${repeat}`;
}

function command(vmm: Vmm, o: Options, cmdline: string): [string, string[]] {
  return vmm === 'tsvmm' ? [process.execPath, tsvmmArgs(o, cmdline)] : [o.qemu, qemuArgs(o, cmdline, vmm === 'qemu')];
}

/** One guest boot; returns the phases it printed. Throws with the output tail on any failure. */
function boot(vmm: Vmm, o: Options, cmdline: string, what: string): { phases: Phase[]; wallMs: number } {
  const [cmd, args] = command(vmm, o, cmdline);
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 16 << 20, timeout: 5 * 60 * 1000 });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const out = (r.stdout ?? '') + (r.stderr ?? '');
  const fail = (why: string): never => {
    throw new Error(`${vmm} ${what}: ${why}\n--- output ---\n${out.split('\n').slice(-20).join('\n')}`);
  };
  if (r.error) fail(r.error.message);
  // QEMU's isa-debug-exit turns the guest's power-off status 0 into exit status 1.
  const okStatus = vmm === 'tsvmm' ? 0 : 1;
  if (r.status !== okStatus) fail(`exit status ${r.status}${r.signal ? ` (signal ${r.signal})` : ''}`);
  if (!/^@done ok\s*$/m.test(r.stdout)) fail('no "@done ok" line from the guest');
  const phases: Phase[] = [];
  for (const m of r.stdout.matchAll(/^@blk phase=\w+ (.*)$/gm)) {
    const kv = Object.fromEntries([...m[1].matchAll(/(\w+)=(\S+)/g)].map((x) => [x[1], x[2]]));
    phases.push({ n: Number(kv.n), bytes: Number(kv.bytes), cycles: Number(kv.cycles), errors: Number(kv.errors), kicks: Number(kv.kicks), irqs: Number(kv.irqs) });
  }
  if (!phases.length) fail('no @blk phase line');
  for (const p of phases) if (p.errors) fail(`guest reported ${p.errors} errors`);
  return { phases, wallMs };
}




// ---- --cpu: host CPU per 4 KiB request, per thread ----

interface ThreadCpu { key: string; user: number; sys: number }

const CLK_TCK = 100; // USER_HZ: /proc's utime/stime unit on Linux

/** The process tree under `root` (root included). */
function descendants(root: number): number[] {
  const parent = new Map<number, number>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) for (const [pid, pp] of parent) if (pp === out[i]) out.push(pid);
  return out;
}

/** A tsvmm process's role from its command line (QEMU: 'qemu'). */
function roleOf(pid: number): string {
  let cmd = '';
  try { cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' '); } catch { return '?'; }
  for (const r of ['driver-domain', 'priv-domain', 'vmm', 'supervisor']) if (cmd.includes(`/${r}/`)) return r;
  if (cmd.includes('qemu-system')) return 'qemu';
  if (cmd.includes('tsvmm.js')) return 'supervisor';
  return cmd.split(' ')[0].split('/').pop() ?? '?';
}

/** utime and stime (ticks) of every thread of the tree under `root`, keyed role/pid/comm/tid. */
function sampleThreads(root: number, roles: Map<number, string>): Map<string, ThreadCpu> {
  const m = new Map<string, ThreadCpu>();
  for (const pid of descendants(root)) {
    if (!roles.has(pid)) roles.set(pid, roleOf(pid));
    let tids: string[] = [];
    try { tids = fs.readdirSync(`/proc/${pid}/task`); } catch { continue; }
    for (const tid of tids) {
      try {
        const st = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const comm = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')'));
        const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
        const key = `${roles.get(pid)}/${comm}`;
        m.set(`${pid}/${tid}`, { key, user: Number(f[11]), sys: Number(f[12]) });
      } catch { /* gone */ }
    }
  }
  return m;
}

interface CpuResult { vmm: Vmm; irq: number; requests: number; seconds: number; iops: number; threads: { thread: string; userUs: number; sysUs: number }[] }

/** One boot of --cpu-n 4 KiB random reads; per-thread CPU between the first and last progress line. */
function cpuBoot(vmm: Vmm, o: Options, irq: number, khz: number): Promise<CpuResult> {
  const n = o.cpuN, every = Math.floor(n / 10);
  const cmdline = `workload=blk bs=4096 qd=32 mode=rand blk_op=read blk_n=${n} gen=1 verify=0 virtio_irq=${irq} blk_report=${every}`;
  const [cmd, args] = command(vmm, o, cmdline);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const roles = new Map<number, string>();
    let out = '', first: { done: number; tsc: number; t: Map<string, ThreadCpu> } | undefined, last = first;
    const onLine = (line: string) => {
      const m = /^@blk-progress done=(\d+) errors=\d+ tsc=(\d+)/.exec(line);
      // The last line (done = n) is left out: the VMM may be exiting by the time /proc is read.
      if (!m || Number(m[1]) >= n) return;
      const smp = { done: Number(m[1]), tsc: Number(m[2]), t: sampleThreads(child.pid!, roles) };
      if (!first) first = smp; else last = smp;
    };
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d; buf += d;
      for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) onLine(buf.slice(0, i));
    });
    child.stderr!.on('data', (d: Buffer) => { out += d; });
    child.on('exit', (code) => {
      if (code !== (vmm === 'tsvmm' ? 0 : 1) || !first || !last) {
        reject(new Error(`${vmm} --cpu irq=${irq}: exit ${code}, ${first ? 'one' : 'no'} progress sample\n${out.split('\n').slice(-15).join('\n')}`));
        return;
      }
      const reqs = last.done - first.done, secs = (last.tsc - first.tsc) / khz / 1000;
      const agg = new Map<string, { user: number; sys: number }>();
      for (const [id, b] of last.t) {
        const a = first.t.get(id) ?? { user: 0, sys: 0 };
        const g = agg.get(b.key) ?? { user: 0, sys: 0 };
        g.user += b.user - a.user; g.sys += b.sys - a.sys;
        agg.set(b.key, g);
      }
      const us = (ticks: number) => ticks / CLK_TCK * 1e6 / reqs;
      const threads = [...agg].map(([thread, g]) => ({ thread, userUs: us(g.user), sysUs: us(g.sys) }))
        .filter((t) => t.userUs + t.sysUs > 0).sort((x, y) => (y.userUs + y.sysUs) - (x.userUs + x.sysUs));
      resolve({ vmm, irq, requests: reqs, seconds: secs, iops: reqs / secs, threads });
    });
  });
}

async function cpuMode(o: Options, vmms: Vmm[], khz: number, qemuBest: string): Promise<number> {
  const log = (s: string) => { if (!o.json) process.stdout.write(s + '\n'); };
  const res: CpuResult[] = [];
  for (const irq of o.irq) {
    for (const vmm of vmms) {
      const r = await cpuBoot(vmm, o, irq, khz);
      res.push(r);
      const tot = r.threads.reduce((a, t) => a + t.userUs + t.sysUs, 0);
      log(`\n${vmm} ${irq ? 'irq' : 'polled'}: ${r.requests} requests in ${r.seconds.toFixed(2)} s (${r.iops.toFixed(0)} IOPS), host CPU ${tot.toFixed(2)} us per request (${(tot * r.iops / 1e6).toFixed(2)} CPUs)`);
      log(table([['thread (role/comm)', 'user us/req', 'sys us/req', 'total'],
        ...r.threads.filter((t) => t.userUs + t.sysUs >= 0.05).map((t) => [t.thread, t.userUs.toFixed(2), t.sysUs.toFixed(2), (t.userUs + t.sysUs).toFixed(2)])]));
    }
  }
  if (!o.keep) fs.rmSync(o.image, { force: true });
  if (o.json) process.stdout.write(JSON.stringify({ mode: 'cpu', requests: o.cpuN, qemuBaseline: qemuBest, machine: machine(), loadavg: os.loadavg(), results: res }, null, 2) + '\n');
  else log(`\nCLK_TCK ${CLK_TCK} (10 ms ticks); QEMU best: ${qemuBest}; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}; machine: ${machine()}`);
  return 0;
}

function main(): number | Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const tStart = process.hrtime.bigint();
  const log = (s: string) => { if (!o.json) process.stdout.write(s + '\n'); };
  ensureGuest(o.kernel);
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('tsvmm is not built: run `npx tsc -p .` first');
  const qemuVer = ensureQemu(o.qemu, 'bench/blk');
  const [khz, khzSource] = tscKhz(o.kernel);
  const vmms: Vmm[] = o.qemuDefault ? ['tsvmm', 'qemu', 'qemu-default'] : ['tsvmm', 'qemu'];
  // Sequential rows wrap around the image seqPasses times (the guest issues block i % nblocks),
  // so each boot moves seqPasses x size MiB and start-up effects (a fresh driver-domain's JIT) fade.
  const seqN = o.sizeMiB * o.seqPasses;
  const allRows: Row[] = [
    { id: 'rand4k', label: '4 KiB random read, qd 32', unit: 'IOPS', bs: 4096, qd: 32, mode: 'rand', op: 'read', n: o.randN },
    { id: 'seqread', label: `1 MiB sequential read, qd ${o.seqQd}`, unit: 'MB/s', bs: MiB, qd: o.seqQd, mode: 'seq', op: 'read', n: seqN },
    { id: 'seqwrite', label: `1 MiB sequential write, qd ${o.seqQd}`, unit: 'MB/s', bs: MiB, qd: o.seqQd, mode: 'seq', op: 'write', n: seqN },
  ];
  const rows = allRows.filter((r) => o.rows.includes(r.id));

  log(`bench/blk: ${o.sizeMiB} MiB image ${o.image}, ${o.rounds} rounds, tsvmm and ${qemuVer} (${vmms.slice(1).join(', ')}) alternating; irq modes ${o.irq.join(',')}`);
  log(`  prefilling the image on the host (1 MiB guest-format blocks, gen=1) ...`);
  prefill(o.image, o.sizeMiB);
  const uringWhy = probeQemuIoUring(o);
  if (uringWhy) qemuBestAio = 'threads';
  const qemuBest = `iothread, aio=${qemuBestAio}`;
  log(uringWhy
    ? `  QEMU's baseline: aio=io_uring REJECTED by this QEMU (${uringWhy}); falling back to an iothread with aio=threads`
    : `  QEMU's baseline: the disk on an iothread with aio=io_uring (probed: this QEMU accepts it)${o.qemuDefault ? '; second column: QEMU\'s default (no iothread, aio=threads)' : ''}`);
  if (o.cpu) return cpuMode(o, vmms, khz, qemuBest);
  // Untimed: each VMM reads the whole image back with verification (proves both see the same bytes).
  const verifyRow: Row = { ...allRows[1], qd: 4, n: o.sizeMiB };
  for (const vmm of vmms) {
    boot(vmm, o, cmdlineOf(verifyRow, 0, 1), 'verify pass');
    log(`  ${vmm}: guest read back and verified all ${o.sizeMiB} blocks`);
  }

  const rate = (r: RunResult, p: Phase) => p.bytes / ((p.cycles / khz) / 1000) / (rows.find((x) => x.id === r.row)!.unit === 'IOPS' ? p.bytes / p.n : 1e6);
  const measure = (r: RunResult) => rate(r, r.phase);
  const measureFirst = (r: RunResult) => rate(r, r.first);
  const results: RunResult[] = [];
  const failures: { vmm: Vmm; what: string; error: string }[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const order: Vmm[] = round % 2 ? vmms : [...vmms].reverse();
    for (const row of rows) {
      for (const irq of o.irq) {
        for (const vmm of order) {
          const what = `round ${round} ${row.id} irq=${irq}`;
          let res: RunResult | undefined;
          for (let attempt = 1; !res; attempt++) {
            try {
              const b = boot(vmm, o, cmdlineOf(row, irq, 0, 2), what);
              if (b.phases.length !== 2) throw new Error(`${vmm} ${what}: ${b.phases.length} @blk phase lines, expected 2 (blk_repeat=2)`);
              res = { vmm, row: row.id, irq, round, first: b.phases[0], phase: b.phases[1], wallMs: b.wallMs };
            } catch (e) {
              const msg = (e as Error).message;
              failures.push({ vmm, what, error: msg });
              log(`  ${what} ${vmm.padEnd(12)} FAILED (attempt ${attempt}): ${msg.split('\n').filter((l) => /error|FAIL|status|signal/i.test(l)).slice(-2).join(' / ')}`);
              if (attempt >= 3) throw e;
            }
          }
          results.push(res);
          log(`  ${what.padEnd(30)} ${vmm.padEnd(12)} ${measure(res).toFixed(0).padStart(8)} ${row.unit} (first run ${measureFirst(res).toFixed(0).padStart(8)})  kicks ${String(res.phase.kicks).padStart(5)}  irqs ${String(res.phase.irqs).padStart(5)}  wall ${(res.wallMs / 1000).toFixed(2)} s`);
        }
      }
    }
  }

  const check = checkImage(o.image, { bs: MiB, gen: 1, count: o.sizeMiB });
  const imageOk = check.errorCount === 0 && check.valid === o.sizeMiB;
  log(`  host check of the image after the runs: ${check.valid}/${o.sizeMiB} blocks valid, ${check.errorCount} bad${check.errors.length ? ': ' + check.errors.slice(0, 3).join('; ') : ''}`);
  if (!o.keep) fs.rmSync(o.image, { force: true });

  const summary = summarize(rows, o.irq, results, measure, o.qemuDefault ? 'qemu-default' : undefined);
  const summaryFirst = summarize(rows, o.irq, results, measureFirst);
  const worstFirst = Math.min(...summaryFirst.map((s) => s.ratio));
  const totalS = Number(process.hrtime.bigint() - tStart) / 1e9;
  const worst = Math.min(...summary.map((s) => s.ratio));
  if (o.json) {
    process.stdout.write(JSON.stringify({ rounds: o.rounds, sizeMiB: o.sizeMiB, diskOpts: o.diskOpts, qemuBaseline: qemuBest, qemuIoUringRejected: uringWhy, qemuDefault: o.qemuDefault ? 'no iothread, aio=threads' : null, tscKhz: khz, tscKhzSource: khzSource, qemu: qemuVer, machine: machine(), summary, summaryFirst, imageCheck: { valid: check.valid, errors: check.errorCount }, totalS, target: TARGET_RATIO, results, failures }, null, 2) + '\n');
    return imageOk ? 0 : 1;
  }
  const fmt = (x: number) => (x >= 1000 ? x.toFixed(0) : x.toFixed(1));
  const cell = (s: { median: number; min: number; max: number }) => `${fmt(s.median)} (${fmt(s.min)}-${fmt(s.max)})`;
  const tab = [
    ['row', 'completion', 'unit', 'tsvmm', 'QEMU best', 'tsvmm/best', ...(o.qemuDefault ? ['QEMU default', 'tsvmm/default'] : []), 'first run: tsvmm', 'QEMU best', 'tsvmm/best'],
    ...summary.map((s, i) => [s.label, s.irq ? 'irq' : 'polled', s.unit, cell(s.tsvmm), cell(s.qemu), s.ratio.toFixed(3),
      ...(s.qemuDefault ? [cell(s.qemuDefault), s.ratioDefault!.toFixed(3)] : []),
      cell(summaryFirst[i].tsvmm), cell(summaryFirst[i].qemu), summaryFirst[i].ratio.toFixed(3)]),
  ];
  log('');
  log(`median of ${o.rounds} rounds (min-max in brackets); TSC ${khz} kHz from ${khzSource}; MB = 10^6 bytes`);
  log('each boot runs its row twice in a row (blk_repeat=2): the main columns are the second run; "first run" is the first, by a');
  log('fresh VMM (for tsvmm the driver-domain\'s JIT is still warming up on the guest\'s requests: driver-domain/warm-up.ts)');
  log(table(tab));
  log(`machine: ${machine()}; ${qemuVer}; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} at the end`);
  log(`QEMU best: ${qemuBest}${uringWhy ? ` (io_uring rejected: ${uringWhy})` : ''}; QEMU default: ${o.qemuDefault ? 'no iothread, aio=threads' : '(not run)'}`);
  log(`tsvmm's large transfers (virtio/block-backend.ts largeTransferPolicy, 1 vCPU): ${describeLargeTransfers(largeTransferPolicy(1))}`);
  log(`tsvmm --disk options: ${o.diskOpts || '(none: io_uring where it works, page cache)'}`);
  if (failures.length) log(`failed runs (retried): ${failures.map((f) => `${f.vmm} ${f.what}`).join(', ')}`);
  log(`total wall time ${totalS.toFixed(1)} s; worst ratio ${worst.toFixed(3)} (target >= ${TARGET_RATIO} against QEMU at its best: ${worst >= TARGET_RATIO ? 'met' : 'NOT met'})${o.qemuDefault ? `; worst against QEMU's default ${Math.min(...summary.map((s) => s.ratioDefault!)).toFixed(3)}` : ''}; worst first run ${worstFirst.toFixed(3)}`);
  return imageOk ? 0 : 1;
}

const fail = (e: unknown) => {
  process.stderr.write(`bench/blk: ${(e as Error).message}\n`);
  process.exitCode = 1;
};
try {
  Promise.resolve(main()).then((c) => { process.exitCode = c; }, fail);
} catch (e) {
  fail(e);
}
