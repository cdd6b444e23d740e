/**
 * Helpers shared by the benchmarks: where the repo is, building the guest,
 * medians, machine description and markdown tables.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync } from 'child_process';

export function repoRoot(): string {
  let d = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(d, 'package.json')) && fs.existsSync(path.join(d, 'bin', 'tsvmm.js'))) return d;
    const up = path.dirname(d);
    if (up === d) throw new Error('cannot find the tsvmm repository root above ' + __dirname);
    d = up;
  }
}

export const ROOT = repoRoot();
export const RAWKVM_SRC = path.join(ROOT, 'bench', 'exits', 'rawkvm.c');
export const RAWKVM = path.join(ROOT, 'bench', 'out', 'rawkvm');

export function mtime(p: string): number {
  try { return fs.statSync(p).mtimeMs; } catch { return -1; }
}

/** Builds the test guest if `kernel` is the default one and missing. */
export function ensureGuest(kernel: string): void {
  if (fs.existsSync(kernel)) return;
  if (kernel !== path.join(ROOT, 'guest', 'out', 'guest.elf')) throw new Error(`${kernel}: no such file`);
  execFileSync('make', ['-s', '-C', path.join(ROOT, 'guest')], { stdio: 'inherit' });
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function machine(): string {
  let model = 'unknown CPU';
  try { model = /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? model; } catch { /* */ }
  const pvm = fs.existsSync('/sys/module/kvm_pvm') ? 'KVM via PVM (software virtualization)' : 'hardware KVM';
  return `${model}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${pvm}, node ${process.version}`;
}

export function table(rows: string[][]): string {
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => '| ' + r.map((x, c) => (c === 0 ? x.padEnd(w[c]) : x.padStart(w[c]))).join(' | ') + ' |';
  const sep = '|' + w.map((n, c) => (c === 0 ? '-'.repeat(n + 1) + '-' : '-'.repeat(n + 1) + ':')).join('|') + '|';
  return [line(rows[0]), sep, ...rows.slice(1).map(line)].join('\n');
}
