/**
 * bench/net: virtio-net UDP round trips/s and throughput of tsvmm against QEMU (-M microvm,
 * virtio-mmio) with the same guest ELF (`workload=net`: UDP echo on port 7), in one invocation.
 *
 *   npx tsc -p . && node dist/bench/net.js [--rounds R] [--irq both|0|1] [--seconds S] [--rr-size B]
 *                                          [--stream-size B] [--window W] [--kernel FILE] [--tsvmm BIN] [--json]
 *
 * --tsvmm runs another tree's bin/tsvmm.js (e.g. a checkout of an older commit, for before/after).
 *
 * Per round, VMM (order alternating) and completion mode, one guest boot: the VMM gets a TAP
 * (tsvmm `--net tap=NAME`, QEMU `-netdev tap,ifname=NAME,script=no,downscript=no -device
 * virtio-net-device,netdev=n0`); once the guest's NIC is up the TAP is moved into a network
 * namespace made for the bench (10.0.2.1/24 on the host side, the guest is 10.0.2.15), so all
 * traffic stays inside this machine's namespace; the namespace is deleted afterwards. In that
 * namespace bench/out/udpbench (bench/net/udpbench.c, built with gcc) runs, after a short warm-up:
 *
 *   rr      one datagram of --rr-size bytes (64) in flight: send, wait for the echo -> round trips/s
 *   stream  up to --window (64) datagrams of --stream-size bytes (1400) in flight -> MB/s of echoed
 *           payload (each byte crosses the virtio-net device twice: host->guest and guest->host)
 *
 * each bounded by --seconds (3) and a datagram count, with the guest polling (`virtio_irq=0`: it
 * spins on the used rings) and interrupt-driven (`virtio_irq=1`: it halts until the interrupt).
 * Echoes are checked byte for byte (lost, duplicated and corrupted datagrams are reported; a
 * corrupted one fails the bench).
 * The table shows medians over rounds and the ratio tsvmm/QEMU (higher is better; target >= 1.0).
 *
 * QEMU's baseline is QEMU at its best (issue 19 item 5): where /dev/vhost-net exists and opens,
 * the TAP backend gets `vhost=on` (the kernel's vhost-net moves the frames, no QEMU thread on the
 * data path); where it does not (these development machines have no vhost-net), the bench says so
 * in one line and QEMU moves the frames itself (its default, as before). --no-vhost forces the
 * latter. The JSON output's `qemuBaseline` says which one ran.
 */
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ensureGuest, ensureQemu, machine, mtime, qemuMicrovmArgs, ROOT, summarize, table } from './lib';

const TARGET_RATIO = 1.0;
const GUEST_IP = '10.0.2.15';
const HOST_IP = '10.0.2.1';
const UDPBENCH_SRC = path.join(ROOT, 'bench', 'net', 'udpbench.c');
const UDPBENCH = path.join(ROOT, 'bench', 'out', 'udpbench');

type Vmm = 'tsvmm' | 'qemu';
type RowId = 'rr' | 'stream';
interface Options { rounds: number; irq: number[]; seconds: number; rrSize: number; streamSize: number; window: number; kernel: string; json: boolean; qemu: string; tsvmm: string; vhost: boolean }

/** Why QEMU cannot use vhost-net here (null: it can): /dev/vhost-net must exist and open read-write. */
function vhostUnavailable(): string | null {
  try {
    fs.closeSync(fs.openSync('/dev/vhost-net', 'r+'));
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? '/dev/vhost-net does not exist on this host' : `/dev/vhost-net: ${(e as Error).message}`;
  }
}
interface Client { mode: string; size: number; window: number; sent: number; received: number; lost: number; dup: number; corrupt: number; seconds: number; rate: number }
interface RunResult { vmm: Vmm; row: RowId; irq: number; round: number; client: Client }

function usage(msg?: string): never {
  if (msg) process.stderr.write(`bench/net: ${msg}\n`);
  process.stderr.write('usage: node dist/bench/net.js [--rounds R (3)] [--irq both|0|1 (both)] [--seconds S (3)] [--rr-size B (64)]\n' +
    '                          [--stream-size B (1400)] [--window W (64)] [--kernel FILE] [--qemu BIN] [--tsvmm bin/tsvmm.js of another tree] [--no-vhost] [--json]\n');
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { rounds: 3, irq: [1, 0], seconds: 3, rrSize: 64, streamSize: 1400, window: 64, kernel: path.join(ROOT, 'guest', 'out', 'guest.elf'), json: false, qemu: 'qemu-system-x86_64', tsvmm: path.join(ROOT, 'bin', 'tsvmm.js'), vhost: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(`${a} needs a value`); return argv[++i]; };
    const num = (s: string, min: number, max = Infinity) => { const v = Number(s); if (!Number.isFinite(v) || v < min || v > max) usage(`bad value for ${a}: ${s}`); return v; };
    if (a === '--rounds') o.rounds = num(val(), 1, 50);
    else if (a === '--irq') { const v = val(); o.irq = v === 'both' ? [1, 0] : v === '0' ? [0] : v === '1' ? [1] : usage(`bad --irq ${v}`); }
    else if (a === '--seconds') o.seconds = num(val(), 0.2, 60);
    else if (a === '--rr-size') o.rrSize = num(val(), 8, 1472);
    else if (a === '--stream-size') o.streamSize = num(val(), 8, 1472);
    else if (a === '--window') o.window = num(val(), 1, 256);
    else if (a === '--kernel') o.kernel = path.resolve(val());
    else if (a === '--qemu') o.qemu = val();
    else if (a === '--tsvmm') o.tsvmm = path.resolve(val());
    else if (a === '--json') o.json = true;
    else if (a === '--no-vhost') o.vhost = false;
    else if (a === '--help' || a === '-h') usage();
    else usage(`unknown argument ${a}`);
  }
  return o;
}



function ensureUdpbench(): void {
  if (mtime(UDPBENCH) >= mtime(UDPBENCH_SRC)) return;
  fs.mkdirSync(path.dirname(UDPBENCH), { recursive: true });
  execFileSync('gcc', ['-O2', '-Wall', '-std=gnu11', '-o', UDPBENCH, UDPBENCH_SRC], { stdio: 'inherit' });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function vmArgs(vmm: Vmm, o: Options, tap: string, irq: number): [string, string[]] {
  const cmdline = `workload=net ip=${GUEST_IP} virtio_irq=${irq} net_report_s=3600`;
  if (vmm === 'tsvmm') return [process.execPath, [o.tsvmm, 'run', '--kernel', o.kernel, '--net', `tap=${tap}`, '--cmdline', cmdline]];
  return [o.qemu, qemuMicrovmArgs(o.kernel, cmdline,
    ['-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no${o.vhost ? ',vhost=on' : ''}`, '-device', 'virtio-net-device,netdev=n0'])];
}

function client(ns: string, args: string[]): Client {
  const r = spawnSync('ip', ['netns', 'exec', ns, UDPBENCH, ...args], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`udpbench ${args.join(' ')}: status ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Client;
}

/** One boot: bring the guest NIC up behind a TAP in a fresh namespace, run rr and stream, tear down. */
async function boot(vmm: Vmm, o: Options, irq: number): Promise<{ rr: Client; stream: Client }> {
  const ns = `tsvmm-bnet-${process.pid}`;
  const tap = `tsvb${process.pid % 100000}`;
  spawnSync('ip', ['netns', 'del', ns]);
  spawnSync('ip', ['link', 'del', tap]);
  ip('netns', 'add', ns);
  const [cmd, args] = vmArgs(vmm, o, tap, irq);
  let out = '';
  const vm: ChildProcess = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  vm.stdout!.on('data', (d) => { out += d; });
  vm.stderr!.on('data', (d) => { out += d; });
  const exited = new Promise<void>((r) => vm.once('exit', () => r()));
  try {
    const t0 = Date.now();
    while (!/@net mac=/.test(out) && Date.now() - t0 < 30_000 && vm.exitCode === null) await sleep(20);
    if (!/@net mac=/.test(out)) throw new Error(`${vmm}: guest NIC did not come up:\n${out.split('\n').slice(-10).join('\n')}`);
    ip('link', 'set', tap, 'netns', ns);
    ip('-n', ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', tap);
    ip('-n', ns, 'link', 'set', tap, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    const s = String(o.seconds);
    client(ns, ['rr', GUEST_IP, '7', String(o.rrSize), '0.5', '100000']); // warm-up (ARP, JIT)
    const rr = client(ns, ['rr', GUEST_IP, '7', String(o.rrSize), s, '2000000']);
    const stream = client(ns, ['stream', GUEST_IP, '7', String(o.streamSize), s, '5000000', String(o.window)]);
    if (/@error/.test(out)) throw new Error(`${vmm}: guest error:\n${out.split('\n').filter((l) => /@error/.test(l)).join('\n')}`);
    if (vm.exitCode !== null) throw new Error(`${vmm}: exited early (${vm.exitCode}):\n${out.split('\n').slice(-10).join('\n')}`);
    return { rr, stream };
  } finally {
    if (vm.exitCode === null && vm.signalCode === null) vm.kill(vmm === 'qemu' ? 'SIGKILL' : 'SIGTERM');
    await Promise.race([exited, sleep(10_000)]);
    spawnSync('ip', ['netns', 'del', ns]);
    spawnSync('ip', ['link', 'del', tap], { stdio: 'ignore' });
  }
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const tStart = process.hrtime.bigint();
  const log = (s: string) => { if (!o.json) process.stdout.write(s + '\n'); };
  if (process.getuid?.() !== 0) throw new Error('TAP devices and network namespaces need root');
  ensureGuest(o.kernel);
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('tsvmm is not built: run `npx tsc -p .` first');
  const qemuVer = ensureQemu(o.qemu, 'bench/net');
  ensureUdpbench();
  log(`bench/net: ${o.rounds} rounds, tsvmm and ${qemuVer} alternating; irq modes ${o.irq.join(',')}; ${o.seconds} s per row`);
  const noVhost = o.vhost ? vhostUnavailable() : '--no-vhost';
  if (noVhost) o.vhost = false;
  const qemuBaseline = o.vhost ? 'vhost-net (vhost=on)' : `QEMU's own TAP backend, no vhost-net (${noVhost})`;
  log(`  QEMU's baseline: ${o.vhost ? 'vhost-net (-netdev tap,...,vhost=on), QEMU at its best' : `no vhost-net: ${noVhost}; QEMU moves the frames itself (its default set-up)`}`);

  const results: RunResult[] = [];
  const failures: string[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const order: Vmm[] = round % 2 ? ['tsvmm', 'qemu'] : ['qemu', 'tsvmm'];
    for (const irq of o.irq) {
      for (const vmm of order) {
        let r: { rr: Client; stream: Client } | undefined;
        for (let attempt = 1; !r; attempt++) {
          try {
            r = await boot(vmm, o, irq);
          } catch (e) {
            failures.push(`${vmm} round ${round} irq=${irq}: ${(e as Error).message.split('\n')[0]}`);
            log(`  round ${round} irq=${irq} ${vmm} FAILED (attempt ${attempt}): ${(e as Error).message.split('\n').slice(0, 3).join(' / ')}`);
            if (attempt >= 3) throw e;
          }
        }
        for (const c of [r.rr, r.stream]) if (c.corrupt) throw new Error(`${vmm}: ${c.corrupt} corrupted echoes`);
        results.push({ vmm, row: 'rr', irq, round, client: r.rr }, { vmm, row: 'stream', irq, round, client: r.stream });
        log(`  round ${round} irq=${irq} ${vmm.padEnd(5)} rr ${r.rr.rate.toFixed(0).padStart(7)}/s (lost ${r.rr.lost})  stream ${(r.stream.rate / 1e6).toFixed(2).padStart(7)} MB/s (lost ${r.stream.lost} of ${r.stream.sent})`);
      }
    }
  }

  const rows: { id: RowId; label: string; unit: string; scale: number }[] = [
    { id: 'rr', label: `UDP round trips, ${o.rrSize} B`, unit: 'RT/s', scale: 1 },
    { id: 'stream', label: `UDP echo stream, ${o.streamSize} B, window ${o.window}`, unit: 'MB/s', scale: 1e6 },
  ];
  const summary = summarize(rows, o.irq, results, (r) => r.client.rate / rows.find((x) => x.id === r.row)!.scale);
  const totalS = Number(process.hrtime.bigint() - tStart) / 1e9;
  const worst = Math.min(...summary.map((s) => s.ratio));
  if (o.json) {
    process.stdout.write(JSON.stringify({ rounds: o.rounds, seconds: o.seconds, qemu: qemuVer, qemuBaseline, machine: machine(), summary, totalS, target: TARGET_RATIO, results, failures }, null, 2) + '\n');
    return 0;
  }
  const fmt = (x: number) => (x >= 1000 ? x.toFixed(0) : x.toFixed(1));
  const cell = (s: { median: number; min: number; max: number }) => `${fmt(s.median)} (${fmt(s.min)}-${fmt(s.max)})`;
  log('');
  log(`median of ${o.rounds} rounds (min-max in brackets); MB = 10^6 bytes of echoed payload`);
  log(table([
    ['row', 'completion', 'unit', 'tsvmm', 'QEMU', 'tsvmm/QEMU'],
    ...summary.map((s) => [s.label, s.irq ? 'irq' : 'polled', s.unit, cell(s.tsvmm), cell(s.qemu), s.ratio.toFixed(3)]),
  ]));
  const lost = results.reduce((n, r) => n + r.client.lost, 0);
  log(`datagrams lost over all runs: ${lost} (stream rows count what was in flight when the time ran out as lost)`);
  log(`machine: ${machine()}; ${qemuVer}; QEMU baseline: ${qemuBaseline}; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} at the end`);
  if (failures.length) log(`failed runs (retried): ${failures.join('; ')}`);
  log(`total wall time ${totalS.toFixed(1)} s; worst ratio ${worst.toFixed(3)} (target >= ${TARGET_RATIO}: ${worst >= TARGET_RATIO ? 'met' : 'NOT met'})`);
  return 0;
}

main().then((c) => { process.exitCode = c; }, (e) => {
  process.stderr.write(`bench/net: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
