/**
 * The emulated hardware-KVM host ("L1"): a Debian cloud kernel booted in
 * `qemu-system-x86_64 -accel tcg -cpu max`, whose emulated AMD-V (SVM with
 * nested paging) lets it load the real kvm-amd module and offer a /dev/kvm
 * driven by the same kvm-amd code a real AMD host runs. Only the CPU under it
 * is emulated (tens of times slower than native): what runs there proves
 * hardware-KVM semantics, not timings.
 *
 * The L1 image is a kernel plus one uncompressed newc initramfs holding
 * busybox-static, the kvm, kvm-amd, irqbypass and tun modules (Debian's
 * linux-image-*-cloud-amd64 .deb, fetched with `apt-get download`, nothing
 * installed into the host), this machine's node with the libraries `ldd`
 * lists, the built tree (dist, build/Release, guest/out, proto, bin, the API schema,
 * package.json, the runtime node_modules) under /opt/tsvmm, and the Linux
 * guest image of `tsvmm image linux` under /opt/linux. It is cached under
 * cacheDir() and rebuilt only when the hash of its inputs changes.
 *
 * runInEmulatedHost() boots it with the command on the kernel command line;
 * L1's /init runs it in /opt/tsvmm, prints the exit status in a marker line
 * and powers off. The console streams out (each line with a prefix), and a
 * run that outlives its timeout is killed with one clear line.
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { buildLinuxImage, BUSYBOX_PACKAGE, downloadDeb, IMAGE_FILES, resolveKernelPackage, resolveModules } from '../cli/image';
import { CpioEntry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, writeCpio } from '../cli/cpio';

export const QEMU = 'qemu-system-x86_64';
export const QEMU_PACKAGE = 'qemu-system-x86';
/**
 * The machine: see docs/emulated-host.md. One emulated CPU (TSVMM_EMULATED_HOST_SMP overrides): with
 * two, QEMU's TCG (7.2 and 10.0 alike) delivered a reschedule IPI to L1 right after a VMRUN returned,
 * before kvm-amd reloaded the host's GS base (the interrupt handler ran on the guest's per-CPU base
 * and L1 panicked: stack guard page, recursive page faults), in 3 of 3 runs on 2026-12-06.
 */
export const L1_CPUS = 1;
export const L1_MEM_MB = 5120;
/** Modules L1 loads, dependencies first (resolved from the package). */
export const L1_MODULES = ['kvm_amd', 'tun'];
/** Where things are inside L1. */
export const L1_TREE = '/opt/tsvmm';
export const L1_LINUX_IMAGE = '/opt/linux';
/** The marker lines L1's init prints around the command. */
export const START_MARK = '@@emulated-host start';
export const EXIT_MARK = '@@emulated-host exit=';

const ROOT = path.resolve(__dirname, '..', '..');

export function cacheDir(): string {
  if (process.env.TSVMM_EMULATED_HOST_CACHE) return path.resolve(process.env.TSVMM_EMULATED_HOST_CACHE);
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(cache, 'tsvmm', 'emulated-host');
}

/** Why the emulated host cannot run here, or undefined when it can. */
export function emulatedHostUnavailable(): string | undefined {
  if (spawnSync('sh', ['-c', `command -v ${QEMU}`]).status !== 0) return `${QEMU} is not installed (Debian package ${QEMU_PACKAGE}; scripts/install-deps.sh installs it)`;
  for (const t of ['apt-get', 'apt-cache', 'dpkg-deb']) {
    if (spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0) return `${t} is not available: the emulated host's kernel and busybox come from Debian packages`;
  }
  if (!fs.existsSync(path.join(ROOT, 'build', 'Release', 'tsvmm_kvm.node'))) return 'the native addon is not built (npm install)';
  if (!fs.existsSync(path.join(ROOT, 'guest', 'out', 'guest.elf'))) return 'the test guest is not built (make -C guest)';
  return undefined;
}

/** L1's /init. The command arrives base64-encoded as tsvmm.cmd= on the kernel command line. */
export function l1Init(modules: readonly string[]): string {
  return `#!/bin/sh
# The emulated host's init (emulated-host/host.ts).
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/lib /var/run
mount -t devpts devpts /dev/pts
for d in /dev/shm /run /tmp /var/lib; do mount -t tmpfs -o mode=1777 tmpfs $d; done
for m in ${modules.join(' ')}; do insmod /lib/modules/$m.ko || echo "emulated-host: insmod $m failed"; done
ip link set lo up
[ -c /dev/kvm ] || echo "emulated-host: no /dev/kvm (kvm-amd did not load: is the CPU model -cpu max?)"
for f in ${L1_LINUX_IMAGE}/*.gz; do [ -f "$f" ] && gunzip "$f"; done
cmd=$(sed -n 's/.*tsvmm\\.cmd=\\([^ ]*\\).*/\\1/p' /proc/cmdline | base64 -d)
cd ${L1_TREE}
echo "${START_MARK} cpus=$(nproc) kvm=$([ -c /dev/kvm ] && echo yes || echo no) kernel=$(uname -r)"
sh -c "$cmd" </dev/null
echo "${EXIT_MARK}$?"
sync
poweroff -f
`;
}

interface Input { dest: string; src?: string; data?: Buffer; mode: number }

/** Every file under `dir` (relative paths), skipping names `skip` matches. */
function files(dir: string, skip: (rel: string) => boolean = () => false, rel = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (skip(r)) continue;
    if (e.isDirectory()) out.push(...files(dir, skip, r));
    else if (e.isFile() || e.isSymbolicLink()) out.push(r);
  }
  return out;
}

/** The libraries `ldd` lists for `bin` (absolute paths, the dynamic loader included). */
export function lddLibs(bin: string): string[] {
  const r = spawnSync('ldd', [bin], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ldd ${bin} failed: ${(r.stderr || r.stdout).trim()}`);
  const libs: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]);
  }
  return libs;
}

/** node_modules the tree needs at run time (all but the compilers and type packages). */
const SKIP_NODE_MODULES = /^(typescript|esbuild|@esbuild|@types|\.bin|\.cache)(\/|$)|^better-sqlite3\/(deps|src|build\/Release\/obj|build\/Release\/\.deps)(\/|$)/;

export interface L1Image { kernel: string; initrd: string; hash: string; kernelPackage: string; built: boolean }

/**
 * Build (or find in the cache) the L1 kernel and initramfs. `extra`: more
 * files for the initramfs ({src, dest} with dest absolute in L1), part of the hash.
 */
export function buildL1Image(opts: { extra?: { src: string; dest: string }[]; tag?: string; log?: (l: string) => void } = {}): L1Image {
  const tag = opts.tag ?? 'base';
  if (!/^[a-z0-9]+$/.test(tag)) throw new Error(`bad image tag "${tag}"`);
  const log = opts.log ?? (() => undefined);
  const cache = cacheDir();
  const debs = path.join(cache, 'debs');
  fs.mkdirSync(debs, { recursive: true, mode: 0o700 });
  const kernelPackage = resolveKernelPackage();
  const kernelDeb = downloadDeb(kernelPackage, debs);
  const busyboxDeb = downloadDeb(BUSYBOX_PACKAGE, debs);
  const unpacked = (deb: string): string => {
    const d = path.join(cache, 'unpacked', path.basename(deb, '.deb'));
    if (!fs.existsSync(path.join(d, '.done'))) {
      fs.rmSync(d, { recursive: true, force: true });
      fs.mkdirSync(d, { recursive: true });
      const r = spawnSync('dpkg-deb', ['-x', deb, d], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`dpkg-deb -x ${deb} failed: ${r.stderr.trim()}`);
      fs.writeFileSync(path.join(d, '.done'), '');
    }
    return d;
  };
  const kroot = unpacked(kernelDeb);
  const broot = unpacked(busyboxDeb);
  const vmlinuzName = fs.readdirSync(path.join(kroot, 'boot')).find((f) => f.startsWith('vmlinuz-'));
  if (!vmlinuzName) throw new Error(`${path.basename(kernelDeb)} has no /boot/vmlinuz-*`);
  const kver = vmlinuzName.slice('vmlinuz-'.length);
  const modDir = [path.join(kroot, 'lib', 'modules', kver), path.join(kroot, 'usr', 'lib', 'modules', kver)].find((p) => fs.existsSync(p));
  if (!modDir) throw new Error(`${path.basename(kernelDeb)} has no modules for ${kver}`);
  const mods = resolveModules(modDir, L1_MODULES).load;
  const busybox = [path.join(broot, 'bin', 'busybox'), path.join(broot, 'usr', 'bin', 'busybox')].find((p) => fs.existsSync(p));
  if (!busybox) throw new Error(`${path.basename(busyboxDeb)} has no busybox binary`);

  // The Linux guest image (tsvmm image linux), built once into the cache from the same .debs.
  const linuxDir = path.join(cache, 'linux', kver);
  if (!Object.values(IMAGE_FILES).every((f) => fs.existsSync(path.join(linuxDir, f)))) {
    log(`building the Linux guest image (${kernelPackage}) in ${linuxDir}`);
    buildLinuxImage(linuxDir, debs);
  }
  const rootfsGz = path.join(linuxDir, `${IMAGE_FILES.rootfs}.gz`);
  if (!fs.existsSync(rootfsGz) || fs.statSync(rootfsGz).mtimeMs < fs.statSync(path.join(linuxDir, IMAGE_FILES.rootfs)).mtimeMs) {
    fs.writeFileSync(rootfsGz, zlib.gzipSync(fs.readFileSync(path.join(linuxDir, IMAGE_FILES.rootfs))));
  }

  const inputs: Input[] = [];
  const add = (src: string, dest: string, mode = fs.statSync(src).mode & 0o777): void => { inputs.push({ src: fs.realpathSync(src), dest, mode }); };
  add(busybox, '/bin/busybox', 0o755);
  for (const m of mods) add(m.file, `/lib/modules/${m.name}.ko`, 0o644);
  const node = fs.realpathSync(process.execPath);
  add(node, '/usr/bin/node', 0o755);
  for (const lib of new Set([node, path.join(ROOT, 'build', 'Release', 'tsvmm_kvm.node')].flatMap(lddLibs))) add(lib, lib, 0o755);
  const tree = (rel: string, skip?: (r: string) => boolean): void => {
    const src = path.join(ROOT, rel);
    if (!fs.existsSync(src)) return;
    if (fs.statSync(src).isFile()) { add(src, `${L1_TREE}/${rel}`); return; }
    for (const f of files(src, skip)) add(path.join(src, f), `${L1_TREE}/${rel}/${f}`);
  };
  // The initramfs has no mtimes (all 0), so supervisor/component-entry.ts cannot tell a stale
  // esbuild bundle from a fresh one there: a bundle older than its tsc output stays out.
  const staleBundle = (r: string): boolean => {
    const m = /^(.*)\.bundle\.js$/.exec(r);
    if (!m) return false;
    const dist = path.join(ROOT, 'dist');
    try { return fs.statSync(path.join(dist, r)).mtimeMs < fs.statSync(path.join(dist, `${m[1]}.js`)).mtimeMs; } catch { return true; }
  };
  tree('dist', (r) => /\.map$/.test(r) || staleBundle(r));
  for (const rel of ['guest/out', 'bench/out', 'proto', 'bin', 'package.json', 'priv-domain/openapi.yaml']) tree(rel, (r) => /\.map$/.test(r));
  for (const f of files(path.join(ROOT, 'build', 'Release'), (r) => !/\.node$/.test(r) && r.includes('.'))) add(path.join(ROOT, 'build', 'Release', f), `${L1_TREE}/build/Release/${f}`);
  tree('node_modules', (r) => SKIP_NODE_MODULES.test(r));
  add(path.join(linuxDir, IMAGE_FILES.kernel), `${L1_LINUX_IMAGE}/${IMAGE_FILES.kernel}`);
  add(path.join(linuxDir, IMAGE_FILES.initrd), `${L1_LINUX_IMAGE}/${IMAGE_FILES.initrd}`);
  add(rootfsGz, `${L1_LINUX_IMAGE}/${IMAGE_FILES.rootfs}.gz`);
  for (const e of opts.extra ?? []) add(e.src, e.dest);
  const init = Buffer.from(l1Init(mods.map((m) => m.name)));
  inputs.push({ dest: '/init', data: init, mode: 0o755 });
  inputs.sort((a, b) => (a.dest < b.dest ? -1 : a.dest > b.dest ? 1 : 0));

  // The key: every input's destination, mode and content digest, and the kernel. A file's digest
  // is reused while its size and mtime stay the same (node alone is ~100 MB).
  const digestFile = path.join(cache, 'digests.json');
  let known: Record<string, string> = {};
  try { known = JSON.parse(fs.readFileSync(digestFile, 'utf8')) as Record<string, string>; } catch { /* first run */ }
  const fresh: Record<string, string> = {};
  const digest = (i: Input): string => {
    if (i.data) return crypto.createHash('sha256').update(i.data).digest('hex');
    const st = fs.statSync(i.src!);
    const key = `${i.src}\0${st.size}\0${st.mtimeMs}`;
    fresh[key] = known[key] ?? crypto.createHash('sha256').update(fs.readFileSync(i.src!)).digest('hex');
    return fresh[key];
  };
  const h = crypto.createHash('sha256');
  h.update(`tsvmm-emulated-host v1\0${kernelPackage}\0${digest({ dest: '', src: path.join(kroot, 'boot', vmlinuzName), mode: 0 })}\0`);
  for (const i of inputs) h.update(`${i.dest}\0${i.mode}\0${digest(i)}\0`);
  // Keep the digests of files still as they were (another tag's inputs), drop the stale ones.
  for (const [key, d] of Object.entries(known)) {
    const [src, size, mtime] = key.split('\0');
    try { const st = fs.statSync(src); if (String(st.size) === size && String(st.mtimeMs) === mtime) fresh[key] ??= d; } catch { /* gone */ }
  }
  fs.writeFileSync(digestFile, JSON.stringify(fresh), { mode: 0o600 });
  const hash = h.digest('hex').slice(0, 16);
  const dir = path.join(cache, 'l1');
  const kernel = path.join(dir, `vmlinuz-${kver}`);
  const initrd = path.join(dir, `l1-${tag}-${hash}.cpio`);
  if (fs.existsSync(initrd) && fs.existsSync(kernel)) return { kernel, initrd, hash, kernelPackage, built: false };

  log(`building the emulated host's initramfs (${inputs.length} files, inputs hash ${hash})`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const mkdirs = (p: string): void => {
    const parent = path.posix.dirname(p);
    if (parent === '/' || dirs.has(parent)) return;
    mkdirs(parent);
    dirs.add(parent);
    entries.push({ name: parent.slice(1), mode: S_IFDIR | 0o755 });
  };
  for (const d of ['/bin/x', '/sbin/x', '/usr/bin/x', '/usr/sbin/x', '/dev/x', '/proc/x', '/sys/x', '/root/x', '/etc/x', '/mnt/x']) mkdirs(d);
  entries.push({ name: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 });
  entries.push({ name: 'dev/null', mode: S_IFCHR | 0o666, rdevMajor: 1, rdevMinor: 3 });
  entries.push({ name: 'etc/passwd', mode: S_IFREG | 0o644, data: Buffer.from('root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n') });
  entries.push({ name: 'etc/group', mode: S_IFREG | 0o644, data: Buffer.from('root:x:0:\nnogroup:x:65534:\n') });
  for (const i of inputs) {
    mkdirs(i.dest);
    entries.push({ name: i.dest.slice(1), mode: S_IFREG | i.mode, data: i.data ?? fs.readFileSync(i.src!) });
  }
  entries.push({ name: 'bin/sh', mode: S_IFLNK | 0o777, data: Buffer.from('busybox') });
  entries.push({ name: 'usr/bin/env', mode: S_IFLNK | 0o777, data: Buffer.from('/bin/busybox') });
  entries.push({ name: 'usr/bin/tsvmm', mode: S_IFLNK | 0o777, data: Buffer.from(`${L1_TREE}/bin/tsvmm.js`) });
  // The loader under its usual name too, and /lib64 for binaries that ask for it there.
  if (!dirs.has('/lib64')) entries.push({ name: 'lib64', mode: S_IFLNK | 0o777, data: Buffer.from('lib/x86_64-linux-gnu') });
  const tmp = `${initrd}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, writeCpio(entries), { mode: 0o600 });
  fs.copyFileSync(path.join(kroot, 'boot', vmlinuzName), kernel);
  // One image per tag: the previous one of this tag is stale now.
  for (const old of fs.readdirSync(dir)) if (old.startsWith(`l1-${tag}-`) && old.endsWith('.cpio')) fs.rmSync(path.join(dir, old), { force: true });
  fs.renameSync(tmp, initrd);
  return { kernel, initrd, hash, kernelPackage, built: true };
}

/**
 * QEMU itself, for running inside L1 with -enable-kvm on L1's kvm-amd (-M microvm: its
 * qboot firmware is all it needs): the reference that tells the emulator's behaviour from tsvmm's.
 */
export function qemuFiles(): { src: string; dest: string }[] {
  const bin = fs.realpathSync(spawnSync('sh', ['-c', `command -v ${QEMU}`], { encoding: 'utf8' }).stdout.trim());
  const out = [{ src: bin, dest: `/usr/bin/${QEMU}` }, ...lddLibs(bin).map((l) => ({ src: l, dest: l }))];
  for (const f of ['bios-microvm.bin', 'qboot.rom', 'linuxboot_dma.bin', 'pvh.bin', 'kvmvapic.bin']) {
    const p = path.join('/usr/share/qemu', f);
    if (fs.existsSync(p)) out.push({ src: p, dest: p });
  }
  return out;
}

export interface RunResult {
  /** The command's exit status inside L1; undefined when it did not finish. */
  status?: number;
  /** Everything L1's console printed. */
  output: string;
  /** The lines between the start and exit markers (the command's own output). */
  commandOutput: string;
  timedOut: boolean;
  /** Why the run failed before the command could report a status. */
  error?: string;
  /** Boot (qemu start to the start marker) and total wall times. */
  bootMs?: number;
  wallMs: number;
}

export interface RunOptions {
  image: L1Image;
  timeoutMs: number;
  /** Called with each console line (without the trailing newline). */
  onLine?: (line: string) => void;
  /** Niceness for qemu (it takes both host CPUs): 10 unless told. */
  nice?: number;
}

/**
 * TCG's RDTSC reads this machine's TSC, so L1's TSC runs at this machine's rate; but L1 calibrates
 * it against an emulated timer during boot, and on a busy machine (qemu starved of CPU) that
 * calibration came out 10x fast: L1's clock, and the kvm-clock of the guests in it, ran ten times
 * faster than the wall clock (timeouts inside L1 expired early, RCU stall and soft-lockup reports).
 * So L1 is told the frequency (tsc_early_khz) and not to distrust its TSC (tsc=reliable: TCG's
 * pauses would otherwise get it marked unstable).
 */
export function tscArgs(): string {
  try {
    const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    return m ? `tsc_early_khz=${Math.round(Number(m[1]) * 1000)} tsc=reliable ` : 'tsc=reliable ';
  } catch { return 'tsc=reliable '; }
}

/**
 * TCG's threading: one host thread per emulated CPU ("multi", the default) or one for both
 * ("single"); TSVMM_EMULATED_HOST_TCG=single|multi. See docs/emulated-host.md, "Known emulator
 * behaviour" (L1 kernel crashes seen with multi).
 */
function tcgThreads(): 'single' | 'multi' {
  return process.env.TSVMM_EMULATED_HOST_TCG === 'single' ? 'single' : 'multi';
}

/** L1's CPU count: TSVMM_EMULATED_HOST_SMP, else L1_CPUS. */
function l1Cpus(): number {
  const n = Number(process.env.TSVMM_EMULATED_HOST_SMP);
  return Number.isInteger(n) && n >= 1 && n <= 8 ? n : L1_CPUS;
}

/** qemu's niceness: TSVMM_EMULATED_HOST_NICE (0 included), else 10. */
function defaultNice(): number {
  const v = process.env.TSVMM_EMULATED_HOST_NICE;
  return v !== undefined && /^-?\d+$/.test(v.trim()) ? Number(v) : 10;
}

/**
 * The qemu that emulates L1: TSVMM_EMULATED_HOST_QEMU (a binary) with TSVMM_EMULATED_HOST_QEMU_DATA
 * (its firmware directory, qemu's -L) where set, else the installed one.
 */
function l1Qemu(): { bin: string; dataArgs: string[]; cpu: string } {
  const bin = process.env.TSVMM_EMULATED_HOST_QEMU || QEMU;
  const data = process.env.TSVMM_EMULATED_HOST_QEMU_DATA;
  return { bin, dataArgs: data ? ['-L', data] : [], cpu: process.env.TSVMM_EMULATED_HOST_CPU || 'max' };
}

/** Boot L1, run `command` (sh -c, in /opt/tsvmm), return its status and output. */
export function runInEmulatedHost(command: string, opts: RunOptions): Promise<RunResult> {
  const enc = Buffer.from(command).toString('base64');
  const append = `console=ttyS0 panic=-1 quiet loglevel=4 ${tscArgs()}tsvmm.cmd=${enc}`;
  if (append.length > 2000) throw new Error(`the command is too long for the kernel command line (${command.length} bytes; keep it under ~1400)`);
  const qemu = l1Qemu();
  const args = [
    '-n', String(opts.nice ?? defaultNice()), qemu.bin, ...qemu.dataArgs, '-M', 'q35', '-accel', `tcg,thread=${tcgThreads()}`, '-cpu', qemu.cpu, '-smp', String(l1Cpus()), '-m', String(L1_MEM_MB),
    '-kernel', opts.image.kernel, '-initrd', opts.image.initrd, '-append', append, '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
  ];
  const t0 = Date.now();
  const child: ChildProcess = spawn('nice', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: false });
  let output = '';
  let pending = '';
  let started: number | undefined;
  let status: number | undefined;
  let timedOut = false;
  const onText = (text: string): void => {
    output += text;
    pending += text;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      // eslint-disable-next-line no-control-regex
      const line = pending.slice(0, nl).replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1bc|\r/g, '');
      pending = pending.slice(nl + 1);
      if (started === undefined && line.startsWith(START_MARK)) started = Date.now();
      const m = line.startsWith(EXIT_MARK) ? /^(\d+)/.exec(line.slice(EXIT_MARK.length)) : null;
      if (m) status = Number(m[1]);
      opts.onLine?.(line);
    }
  };
  child.stdout!.setEncoding('latin1');
  child.stderr!.setEncoding('latin1');
  child.stdout!.on('data', onText);
  let stderr = '';
  child.stderr!.on('data', (d: string) => { stderr += d; });
  // qemu never outlives its caller.
  const reap = (): void => { child.kill('SIGKILL'); };
  process.once('exit', reap);
  return new Promise((resolve) => {
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, opts.timeoutMs);
    let done = false;
    const finish = (error?: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      process.removeListener('exit', reap);
      if (pending) { onText('\n'); }
      const s = output.indexOf(START_MARK);
      const e = output.lastIndexOf(EXIT_MARK);
      const commandOutput = s < 0 ? '' : output.slice(output.indexOf('\n', s) + 1, e > s ? e : undefined);
      if (!error && timedOut) error = `timed out after ${Math.round(opts.timeoutMs / 1000)} s${started === undefined ? ' (L1 never reached its init)' : ' (the command did not finish)'}`;
      // L1's own panic, not one in the command's output (a guest's console is part of that).
      // (Its lines are the unprefixed ones: the guests' consoles come through the command with a prefix.)
      const panic = /^\[[\s\d.]+\] Kernel panic - [^\n]*/m.exec(output.replace(/\r/g, ''));
      if (!error && status === undefined && panic) error = `L1's kernel stopped: ${panic[0].trim()}`;
      const last = stderr.trim() ? stderr.trim().split('\n').pop() : output.trim().split('\n').pop();
      if (!error && status === undefined) error = `qemu exited before the command reported a status${last ? ` (last line: ${last.trim()})` : ''}`;
      resolve({ status, output, commandOutput, timedOut, error, bootMs: started === undefined ? undefined : started - t0, wallMs: Date.now() - t0 });
    };
    child.on('error', (e) => finish(`cannot start ${QEMU}: ${e.message}`));
    child.on('exit', () => finish());
  });
}
