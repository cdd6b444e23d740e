/**
 * bench/update: what planned operations cost the guest, with QEMU's restore of the same guest
 * measured in the same run (issue 17).
 *
 *   - snapshot: `tsvmm snapshot --out DIR` of a 256 MiB test guest with 64 MiB of its RAM touched
 *     (written from outside, through the supervisor's RAM memfd, above what the guest uses): the
 *     vCPUs' pause (parked -> running again) and the whole command;
 *   - restore: `tsvmm run --restore DIR` from process spawn to vCPU 0 entering KVM_RUN (its
 *     CLOCK_MONOTONIC stamp, TSVMM_RESTORE_DEBUG); QEMU: `-incoming "exec:cat FILE"` of the same
 *     guest, same RAM touched, from process spawn to `cont` answered (status running);
 *   - live update: `tsvmm update vmm`: the guest's pause (the keeper seeing the old vmm exit ->
 *     the new build's vCPUs released).
 *
 *   npx tsc -p . && node dist/bench/update.js [--rounds N] [--json] [--qemu BIN ('none': no QEMU row)]
 *
 * Each snapshot round prints where the pause went (the vmm's TSVMM_SNAPSHOT_DEBUG timeline).
 */
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { ChildProcess, spawn, spawnSync } from 'child_process';
import { machine, median, ROOT, table, which } from './lib';
import { percentile } from '../test/helpers/kill-harness';

const GUEST = path.join(ROOT, 'guest', 'out', 'guest.elf');
const BIN = path.join(ROOT, 'bin', 'tsvmm.js');
const MEM = 256 << 20;
const TOUCH_AT = 128 << 20;
const TOUCH = 64 << 20;
const CMDLINE = 'workload=counter n=0 report=20000000';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Writes TOUCH bytes of non-zero data at TOUCH_AT of the memfd `pid` holds whose link contains `tag`. */
function touchRam(pid: number, tag: string): void {
  const dir = `/proc/${pid}/fd`;
  const fd = fs.readdirSync(dir).find((f) => { try { return fs.readlinkSync(`${dir}/${f}`).includes(tag); } catch { return false; } });
  if (!fd) throw new Error(`no ${tag} memfd in pid ${pid}`);
  const h = fs.openSync(`${dir}/${fd}`, 'r+');
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < chunk.length; i += 8) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let off = 0; off < TOUCH; off += chunk.length) fs.writeSync(h, chunk, 0, chunk.length, TOUCH_AT + off);
  fs.closeSync(h);
}

function tsvmm(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });
}

async function startVm(name: string, extra: string[] = [], env: Record<string, string> = {}): Promise<{ child: ChildProcess; err: () => string; out: () => string }> {
  const child = spawn(process.execPath, [BIN, 'run', '--name', name, '--metrics-addr', 'none', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let err = '';
  let out = '';
  child.stderr!.on('data', (d) => { err += d; });
  child.stdout!.on('data', (d) => { out += d; });
  return { child, err: () => err, out: () => out };
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const t = Date.now();
  while (!cond()) { if (Date.now() - t > ms) throw new Error(`timed out waiting for ${what}`); await sleep(5); }
}

async function stopVm(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await Promise.race([gone, sleep(5000)]);
  child.kill('SIGKILL');
}

interface Results { snapshotPause: number[]; snapshotTotal: number[]; restore: number[]; update: number[]; qemuRestore: number[]; qemuSave: number[]; qemu?: string }

async function tsvmmRows(rounds: number, dir: string, r: Results): Promise<void> {
  const name = `bench-update-${process.pid}`;
  const vm = await startVm(name, ['--kernel', GUEST, '--mem', '256M', '--cmdline', CMDLINE], { TSVMM_SNAPSHOT_DEBUG: '1' });
  try {
    await until(() => vm.out().includes('@counter'), 30_000, 'the guest');
    touchRam(vm.child.pid!, `tsvmm-ram-${name}`);
    for (let i = 0; i < rounds; i++) {
      const out = path.join(dir, `snap-${i}`);
      const t0 = performance.now();
      const s = tsvmm(['snapshot', '--name', name, '--out', out, '--json']);
      if (s.status !== 0) throw new Error(`snapshot: ${s.stderr}`);
      r.snapshotTotal.push(performance.now() - t0);
      r.snapshotPause.push((JSON.parse(s.stdout) as { pauseMs: number }).pauseMs);
      if (i < rounds - 1) fs.rmSync(out, { recursive: true, force: true });
      await until(() => (vm.err().match(/snapshot timeline/g)?.length ?? 0) > i, 5000, 'the vmm\'s snapshot timeline');
      const phases = [...vm.err().matchAll(/snapshot timeline \(ms\): (.*)/g)][i][1];
      process.stderr.write(`  snapshot ${i + 1}/${rounds}: paused ${r.snapshotPause.at(-1)!.toFixed(1)} ms (${phases})\n`);
    }
    for (let i = 0; i < rounds; i++) {
      const u = tsvmm(['update', 'vmm', '--name', name, '--json']);
      if (u.status !== 0) throw new Error(`update: ${u.stderr}`);
      r.update.push((JSON.parse(u.stdout) as { vmmPauseMs: number }).vmmPauseMs);
      process.stderr.write(`  update ${i + 1}/${rounds}: paused ${r.update.at(-1)!.toFixed(2)} ms\n`);
      await sleep(400);
    }
  } finally {
    await stopVm(vm.child);
  }
  const snap = path.join(dir, `snap-${rounds - 1}`);
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    const vm2 = await startVm(`${name}-r${i}`, ['--restore', snap], { TSVMM_RESTORE_DEBUG: '1' });
    try {
      await until(() => /vCPU 0 running at .*\(monotonic (\d+) ns\)/.test(vm2.err()), 30_000, 'the restored guest');
      const ns = BigInt(/vCPU 0 running at .*\(monotonic (\d+) ns\)/.exec(vm2.err())![1]);
      r.restore.push(Number(ns - t0) / 1e6);
      // Where it went: the supervisor's and the vmm's stamps (ms since each process started).
      const ram = /guest RAM read in ([\d.]+) ms .*published at ([\d.]+) ms/.exec(vm2.err());
      const vmm = /restore timeline \(ms since process start\): (.*?) \[/.exec(vm2.err());
      process.stderr.write(`  restore ${i + 1}/${rounds}: first guest instruction after ${r.restore.at(-1)!.toFixed(0)} ms` +
        `${ram ? ` (supervisor: RAM read in ${ram[1]} ms, published at ${ram[2]}` : ''}${vmm ? `; vmm: ${vmm[1]})` : ram ? ')' : ''}\n`);
    } finally {
      await stopVm(vm2.child);
    }
  }
}

/** A QMP client: one command at a time. */
async function qmp(sock: string): Promise<{ cmd: (c: string, a?: object) => Promise<Record<string, unknown>>; close: () => void }> {
  let s!: net.Socket;
  for (let i = 0; ; i++) {
    try {
      s = await new Promise<net.Socket>((res, rej) => { const c = net.connect(sock, () => res(c)); c.once('error', rej); });
      break;
    } catch (e) { if (i > 2000) throw e; await sleep(1); }
  }
  let buf = '';
  const waiters: ((o: Record<string, unknown>) => void)[] = [];
  s.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const o = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
      buf = buf.slice(i + 1);
      if ('return' in o || 'error' in o || 'QMP' in o) waiters.shift()?.(o);
    }
  });
  const next = () => new Promise<Record<string, unknown>>((res) => waiters.push(res));
  await next(); // greeting
  const cmd = async (c: string, a?: object) => { const p = next(); s.write(JSON.stringify({ execute: c, ...(a ? { arguments: a } : {}) }) + '\n'); return p; };
  await cmd('qmp_capabilities');
  return { cmd, close: () => s.destroy() };
}

async function qemuRows(bin: string, rounds: number, dir: string, r: Results): Promise<void> {
  r.qemu = (spawnSync(bin, ['--version'], { encoding: 'utf8' }).stdout ?? '').split('\n')[0].trim();
  const mig = path.join(dir, 'qemu.mig');
  const args = (sock: string) => ['-M', 'microvm,x-option-roms=off,rtc=off,memory-backend=mem', '-accel', 'kvm', '-cpu', 'host,-arch-capabilities',
    '-object', `memory-backend-memfd,id=mem,size=${MEM},share=on`, '-m', String(MEM >> 20), '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
    '-serial', `file:${path.join(dir, 'qemu.serial')}`, '-device', 'isa-debug-exit,iobase=0xf4,iosize=4', '-kernel', GUEST, '-append', CMDLINE, '-qmp', `unix:${sock},server=on,wait=off`];
  const sock1 = path.join(dir, 'q1.sock');
  const q = spawn(bin, args(sock1), { stdio: 'ignore' });
  try {
    const c = await qmp(sock1);
    await sleep(1500);
    touchRam(q.pid!, 'memfd:mem');
    const t0 = performance.now();
    await c.cmd('stop');
    await c.cmd('migrate', { uri: `exec:cat > ${mig}` });
    for (;;) {
      const st = ((await c.cmd('query-migrate')).return as { status?: string }).status;
      if (st === 'completed') break;
      if (st === 'failed') throw new Error('QEMU migrate to file failed');
      await sleep(1);
    }
    r.qemuSave.push(performance.now() - t0);
    await c.cmd('quit');
    c.close();
  } finally { q.kill('SIGKILL'); }
  for (let i = 0; i < rounds; i++) {
    const sock = path.join(dir, `q2-${i}.sock`);
    const t0 = performance.now();
    const p = spawn(bin, [...args(sock), '-incoming', `exec:cat ${mig}`], { stdio: 'ignore' });
    try {
      const c = await qmp(sock);
      for (;;) {
        const st = ((await c.cmd('query-status')).return as { status: string }).status;
        if (st !== 'inmigrate') break;
        await sleep(0.5);
      }
      await c.cmd('cont');
      r.qemuRestore.push(performance.now() - t0);
      process.stderr.write(`  qemu -incoming ${i + 1}/${rounds}: running after ${r.qemuRestore.at(-1)!.toFixed(0)} ms\n`);
      c.close();
    } finally { p.kill('SIGKILL'); }
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: 'string' }, json: { type: 'boolean' }, qemu: { type: 'string' } } });
  const rounds = Number(values.rounds ?? 10);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-bench-update-'));
  // The confined vmm (uid 65534 by default) writes the snapshots below it: it must pass through.
  fs.chmodSync(dir, 0o711);
  const r: Results = { snapshotPause: [], snapshotTotal: [], restore: [], update: [], qemuRestore: [], qemuSave: [] };
  const t0 = Date.now();
  try {
    await tsvmmRows(rounds, dir, r);
    const qemu = values.qemu ?? 'qemu-system-x86_64';
    if (which(qemu)) await qemuRows(qemu, rounds, dir, r);
    else process.stderr.write(`  ${qemu} not installed: no QEMU row (scripts/install-deps.sh installs it)\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (values.json) { process.stdout.write(JSON.stringify(r, null, 1) + '\n'); return; }
  const row = (what: string, xs: number[], digits = 1) => [what, xs.length ? median(xs).toFixed(digits) : '-', xs.length ? percentile(xs, 99).toFixed(digits) : '-', String(xs.length)];
  process.stdout.write(`bench/update on ${machine()}; ${r.qemu ?? 'no QEMU'}; total ${((Date.now() - t0) / 1000).toFixed(0)} s\n\n` +
    `256 MiB test guest (counter workload), 64 MiB of its RAM touched; ms:\n\n` + table([
    ['operation', 'p50', 'p99', 'n'],
    row('tsvmm snapshot: guest paused', r.snapshotPause),
    row('tsvmm snapshot: whole command (CLI, API, files, CRCs, manifest)', r.snapshotTotal, 0),
    row('tsvmm run --restore: spawn -> first guest instruction', r.restore, 0),
    row('QEMU -incoming (same guest, same RAM): spawn -> running', r.qemuRestore, 0),
    row('QEMU migrate to file (stop -> completed)', r.qemuSave, 0),
    row('tsvmm update vmm: guest paused', r.update, 2),
    ['Cloud Hypervisor local live upgrade (published, v21.0, 4 GiB guest)', '~50', '-', '-'],
  ]));
}

main().catch((e) => { process.stderr.write(`bench/update: ${(e as Error).message}\n`); process.exit(1); });
