/**
 * Helpers shared by the benchmarks: where the repo is, building the guest,
 * medians, machine description and markdown tables.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync, spawnSync } from 'child_process';

// tsvmm's log lines on a pipe are JSON by default (contracts/log.ts); these read the text ones.
process.env.TSVMM_LOG_FORMAT ??= 'text';

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

/** Median, min and max of one VMM's measurements in one row. */
export interface Stat { median: number; min: number; max: number }

/**
 * Per row and completion mode, tsvmm's and QEMU's median (min, max) of `measure` over the rounds,
 * and their ratio: the summary both bench/blk and bench/net print. `qemu` is the baseline the
 * target is judged against; where `second` names another configuration of it (bench/blk: QEMU's
 * default set-up, 'qemu-default'), its medians and tsvmm's ratio against it come as
 * `qemuDefault` / `ratioDefault`.
 */
export function summarize<R extends { vmm: string; row: string; irq: number }>(
  rows: { id: string; label: string; unit: string }[], irqs: number[], results: R[], measure: (r: R) => number, second?: string,
): { row: string; label: string; unit: string; irq: number; tsvmm: Stat; qemu: Stat; ratio: number; qemuDefault?: Stat; ratioDefault?: number }[] {
  return rows.flatMap((row) => irqs.map((irq) => {
    const s = (vmm: string): Stat => {
      const xs = results.filter((r) => r.vmm === vmm && r.row === row.id && r.irq === irq).map(measure);
      return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
    };
    const ts = s('tsvmm'), q = s('qemu');
    const base = { row: row.id, label: row.label, unit: row.unit, irq, tsvmm: ts, qemu: q, ratio: ts.median / q.median };
    if (!second) return base;
    const d = s(second);
    return { ...base, qemuDefault: d, ratioDefault: ts.median / d.median };
  }));
}

/**
 * QEMU microvm running the test guest the way every bench compares tsvmm with it: one vCPU,
 * `memMiB` of RAM (a named memfd with `memfd`, so its pages can be told apart in smaps), modern
 * virtio-mmio, the serial port on stdio, the guest's power-off port (isa-debug-exit: status 0 ->
 * exit 1); `devices` adds the disk or NIC, `name` a thread-naming -name.
 */
export function qemuMicrovmArgs(kernel: string, cmdline: string, devices: string[], opts: { memMiB?: number; memfd?: boolean; name?: string } = {}): string[] {
  const mem = opts.memMiB ?? 256;
  return [
    '-M', `microvm,x-option-roms=off,rtc=off,acpi=off${opts.memfd ? ',memory-backend=ram0' : ''}`,
    ...(opts.memfd ? ['-object', `memory-backend-memfd,id=ram0,size=${mem}M`] : []),
    '-enable-kvm', '-cpu', 'host,-arch-capabilities', '-m', String(mem), '-smp', '1', '-nodefaults', '-no-user-config',
    '-nographic', '-serial', 'stdio', '-device', 'isa-debug-exit,iobase=0xf4,iosize=4', '-global', 'virtio-mmio.force-legacy=false',
    ...(opts.name ? ['-name', `${opts.name},debug-threads=on`] : []),
    ...devices, '-kernel', kernel, '-append', cmdline,
  ];
}

export function machine(): string {
  let model = 'unknown CPU';
  try { model = /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? model; } catch { /* */ }
  const pvm = fs.existsSync('/sys/module/kvm_pvm') ? 'KVM via PVM (software virtualization)' : 'hardware KVM';
  // Whether guest RAM (a shared memfd, madvised MADV_HUGEPAGE) can get transparent huge pages;
  // QEMU's anonymous RAM gets them under the usual THP setting 'madvise'.
  let shmemThp = 'unknown';
  try { shmemThp = /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/shmem_enabled', 'utf8'))?.[1] ?? shmemThp; } catch { /* */ }
  return `${model}, ${os.cpus().length} CPUs, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${pvm}, shmem THP ${shmemThp}, node ${process.version}`;
}

export function table(rows: string[][]): string {
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => '| ' + r.map((x, c) => (c === 0 ? x.padEnd(w[c]) : x.padStart(w[c]))).join(' | ') + ' |';
  const sep = '|' + w.map((n, c) => (c === 0 ? '-'.repeat(n + 1) + '-' : '-'.repeat(n + 1) + ':')).join('|') + '|';
  return [line(rows[0]), sep, ...rows.slice(1).map(line)].join('\n');
}

/** Runs a command in the repo root; throws with its status on failure. */
export function sh(cmd: string, args: string[], quiet = false): void {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: ['ignore', quiet ? 'ignore' : 'inherit', 'inherit'] });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed with status ${r.status}`);
}

export function which(cmd: string): boolean {
  if (cmd.includes('/')) return fs.existsSync(cmd);
  return (process.env.PATH ?? '').split(':').some((d) => d && fs.existsSync(path.join(d, cmd)));
}

/** Installs Debian's qemu-system-x86 when `bin` is the default and missing; returns QEMU's version line. */
export function ensureQemu(bin: string, who: string): string {
  if (!which(bin)) {
    if (bin !== 'qemu-system-x86_64') throw new Error(`${bin}: not found`);
    process.stderr.write(`${who}: qemu-system-x86_64 not found: installing qemu-system-x86 (apt-get)\n`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    const install = () => spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'qemu-system-x86'], { stdio: 'inherit', env });
    let r = install();
    if (r.status !== 0) {
      spawnSync('apt-get', ['update'], { stdio: 'inherit', env });
      r = install();
    }
    if (r.status !== 0 || !which(bin)) throw new Error('could not install qemu-system-x86 (apt-get install -y qemu-system-x86)');
  }
  return (spawnSync(bin, ['--version'], { encoding: 'utf8' }).stdout ?? '').split('\n')[0].trim();
}

/** Builds bench/out/rawkvm when missing or older than its source (make, else gcc directly). */
export function buildRawkvm(quiet = false): void {
  if (mtime(RAWKVM) >= mtime(RAWKVM_SRC)) return;
  try {
    sh('make', ['-s', '-C', path.join(ROOT, 'bench', 'exits')], quiet);
  } catch {
    fs.mkdirSync(path.dirname(RAWKVM), { recursive: true });
    sh('gcc', ['-O2', '-Wall', '-std=gnu11', '-o', RAWKVM, RAWKVM_SRC], quiet);
  }
}

/** The CPU clock from /proc/cpuinfo in kHz (0 if unknown): the fallback TSC frequency. */
export function cpuinfoKhz(): number {
  try {
    const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    return m ? Math.round(Number(m[1]) * 1000) : 0;
  } catch { return 0; }
}
