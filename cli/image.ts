/**
 * `tsvmm image linux [--out DIR] [--cache DIR]`: assemble a Linux guest from
 * Debian's linux-image-cloud-amd64 and busybox-static packages. The packages
 * are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a
 * temporary directory; nothing is installed into the host. Output:
 *
 *   DIR/vmlinuz     the Debian cloud kernel (a bzImage)
 *   DIR/initrd.img  a gzipped newc initramfs: busybox, the virtio-mmio,
 *                   virtio-blk and virtio-net modules (with their dependencies)
 *                   and an /init that loads them, mounts /dev/vda on /mnt,
 *                   prints a banner and runs a shell on the console (ttyS0)
 *   DIR/rootfs.img  a 64 MiB ext4 image (mke2fs -d), or a blank raw disk
 *                   when e2fsprogs is missing
 *
 * `tsvmm run --linux [--image-dir DIR]` boots it.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import * as zlib from 'zlib';
import { parseBzImage } from '../boot/bzimage';
import { CpioEntry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, writeCpio } from './cpio';

export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';
export const BUSYBOX_PACKAGE = 'busybox-static';
/** Modules the guest needs (ones the kernel has built in are skipped). */
export const WANTED_MODULES = ['virtio_mmio', 'virtio_blk', 'virtio_net', 'ext4'];
export const ROOTFS_BYTES = 64 * 1024 * 1024;
export const LINUX_CMDLINE = 'console=ttyS0 root=/dev/vda rw panic=-1';

/** Where `tsvmm image linux` writes and `tsvmm run --linux` reads by default. */
export function defaultImageDir(): string {
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(cache, 'tsvmm', 'linux');
}

export const IMAGE_FILES = { kernel: 'vmlinuz', initrd: 'initrd.img', rootfs: 'rootfs.img' } as const;

const IMAGE_HELP = `usage: tsvmm image linux [--out DIR] [--cache DIR]
  Build a Linux guest from Debian's ${KERNEL_META_PACKAGE} and ${BUSYBOX_PACKAGE} (apt-get download;
  nothing is installed into the host): DIR/vmlinuz, DIR/initrd.img, DIR/rootfs.img.
  --out DIR     where to write the image (default ${defaultImageDir()})
  --cache DIR   keep the downloaded .deb files here and reuse them next time
`;

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `${cmd} is not available on this host (tsvmm image linux needs apt-get, apt-cache and dpkg-deb)` : `${cmd} failed: ${r.error.message}`);
  }
  if (r.status !== 0) {
    const why = (r.stderr || r.stdout || '').trim().split('\n').filter((l) => !/^W: /.test(l)).pop() ?? `exit status ${r.status}`;
    throw new Error(`${cmd} ${args.join(' ')} failed: ${why}`);
  }
  return r.stdout;
}

/** The versioned kernel package linux-image-cloud-amd64 depends on, e.g. linux-image-6.1.0-56-cloud-amd64. */
export function resolveKernelPackage(): string {
  const fromDepends = /^\s*Depends:\s*(linux-image-[^\s<>]+)\s*$/m.exec(sh('apt-cache', ['depends', KERNEL_META_PACKAGE]));
  if (fromDepends) return fromDepends[1];
  const show = /^Depends:\s*(.*)$/m.exec(sh('apt-cache', ['show', KERNEL_META_PACKAGE]));
  const dep = show?.[1].split(/,\s*/).map((d) => d.split(/\s/)[0]).find((d) => /^linux-image-\d/.test(d));
  if (!dep) throw new Error(`cannot tell which kernel ${KERNEL_META_PACKAGE} depends on (apt-cache depends/show gave none)`);
  return dep;
}

/** `apt-get download pkg` into `dir`, unless a pkg_*.deb is already there. Returns the .deb path. */
export function downloadDeb(pkg: string, dir: string): string {
  const find = (): string | undefined => fs.readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  let deb = find();
  if (!deb) {
    const sandbox = process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : [];
    sh('apt-get', [...sandbox, '-q', 'download', pkg], { cwd: dir });
    deb = find();
    if (!deb) throw new Error(`apt-get download ${pkg} left no ${pkg}_*.deb in ${dir}`);
  }
  return path.join(dir, deb);
}

function firstExisting(paths: string[]): string | undefined {
  return paths.find((p) => fs.existsSync(p));
}

/** The NUL-separated key=value strings of a kernel module's .modinfo section. */
export function modinfo(ko: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  if (ko.length < 64 || ko.readUInt32BE(0) !== 0x7f454c46 || ko[4] !== 2) throw new Error('not an ELF64 kernel module');
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const shstrndx = ko.readUInt16LE(0x3e);
  const sh = (i: number) => {
    const o = shoff + i * shentsize;
    return { name: ko.readUInt32LE(o), offset: Number(ko.readBigUInt64LE(o + 24)), size: Number(ko.readBigUInt64LE(o + 32)) };
  };
  const strtab = sh(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = sh(i);
    const nameEnd = ko.indexOf(0, strtab.offset + s.name);
    if (ko.toString('latin1', strtab.offset + s.name, nameEnd) !== '.modinfo') continue;
    for (const kv of ko.toString('latin1', s.offset, s.offset + s.size).split('\0')) {
      const eq = kv.indexOf('=');
      if (eq > 0 && !out.has(kv.slice(0, eq))) out.set(kv.slice(0, eq), kv.slice(eq + 1));
    }
  }
  return out;
}

const modName = (file: string): string => path.basename(file).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_');

function walk(dir: string, out: string[] = []): string[] {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out); else if (/\.ko$/.test(e.name)) out.push(p);
  }
  return out;
}

export interface ModuleSet {
  /** Modules to insmod, dependencies first: name -> file. */
  load: { name: string; file: string }[];
  /** Wanted modules the kernel has built in. */
  builtin: string[];
}

/**
 * Resolve `wanted` against an unpacked /lib/modules/<version> directory: its
 * modules.dep when the package ships one, else each module's .modinfo
 * "depends=" (Debian's package leaves modules.dep to depmod at install time).
 */
export function resolveModules(modDir: string, wanted: readonly string[]): ModuleSet {
  const builtinFile = path.join(modDir, 'modules.builtin');
  const builtinSet = new Set(fs.existsSync(builtinFile) ? fs.readFileSync(builtinFile, 'utf8').split('\n').filter(Boolean).map(modName) : []);
  const files = new Map(walk(path.join(modDir, 'kernel')).map((f) => [modName(f), f]));
  const depFile = path.join(modDir, 'modules.dep');
  const depsFromFile = new Map<string, string[]>();
  if (fs.existsSync(depFile)) {
    for (const line of fs.readFileSync(depFile, 'utf8').split('\n')) {
      const m = /^([^:]+):\s*(.*)$/.exec(line);
      if (m) depsFromFile.set(modName(m[1]), m[2].split(/\s+/).filter(Boolean).map(modName));
    }
  }
  const deps = (name: string): string[] => depsFromFile.get(name)
    ?? (modinfo(fs.readFileSync(files.get(name)!)).get('depends') ?? '').split(',').filter(Boolean).map((d) => d.replace(/-/g, '_'));
  const load: { name: string; file: string }[] = [];
  const seen = new Set<string>();
  const builtin: string[] = [];
  const visit = (name: string, chain: string[]): void => {
    if (seen.has(name)) return;
    seen.add(name);
    if (builtinSet.has(name)) { if (chain.length === 0) builtin.push(name); return; }
    if (!files.has(name)) throw new Error(`kernel module ${name}${chain.length ? ` (needed by ${chain[chain.length - 1]})` : ''} is neither in ${modDir} nor built in`);
    for (const d of deps(name)) visit(d, [...chain, name]);
    load.push({ name, file: files.get(name)! });
  };
  for (const w of wanted) visit(w, []);
  return { load, builtin };
}

export function initScript(modules: readonly string[]): string {
  return `#!/bin/sh
# tsvmm Linux guest init, generated by \`tsvmm image linux\`.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
# virtio-mmio devices come from ACPI (LNRO0005); the drivers are modules in Debian's cloud kernel.
for m in ${modules.join(' ')}; do
  insmod /lib/modules/$m.ko || echo "tsvmm-init: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
if [ -b /dev/vda ]; then
  if mount -t ext4 /dev/vda /mnt 2>/dev/null || mount -t ext2 /dev/vda /mnt 2>/dev/null; then
    echo "tsvmm-init: /dev/vda mounted on /mnt"
  else
    echo "tsvmm-init: /dev/vda is present but has no ext2/ext4 file system"
  fi
else
  echo "tsvmm-init: no /dev/vda"
fi
echo "=== tsvmm Linux guest: kernel $(uname -r), $(nproc) CPU(s), $(sed -n 's/MemTotal: *//p' /proc/meminfo) RAM ==="
[ -f /mnt/etc/motd ] && cat /mnt/etc/motd
echo "a busybox shell on the console follows; 'poweroff -f' stops the VM"
exec setsid cttyhack sh
`;
}

/** The initramfs: busybox, the modules (in load order) and /init. */
export function buildInitramfs(busybox: Buffer, modules: readonly { name: string; data: Buffer }[]): Buffer {
  const dir = (name: string): CpioEntry => ({ name, mode: S_IFDIR | 0o755 });
  const entries: CpioEntry[] = [
    ...['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'mnt', 'tmp', 'root', 'etc', 'lib', 'lib/modules'].map(dir),
    { name: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 },
    { name: 'dev/null', mode: S_IFCHR | 0o666, rdevMajor: 1, rdevMinor: 3 },
    { name: 'dev/ttyS0', mode: S_IFCHR | 0o660, rdevMajor: 4, rdevMinor: 64 },
    { name: 'bin/busybox', mode: S_IFREG | 0o755, data: busybox },
    { name: 'bin/sh', mode: S_IFLNK | 0o777, data: Buffer.from('busybox') },
    ...modules.map((m) => ({ name: `lib/modules/${m.name}.ko`, mode: S_IFREG | 0o644, data: m.data })),
    { name: 'init', mode: S_IFREG | 0o755, data: Buffer.from(initScript(modules.map((m) => m.name))) },
  ];
  return zlib.gzipSync(writeCpio(entries), { level: 9 });
}

/** The root file system image: ext4 through mke2fs -d when e2fsprogs is there, else a blank raw disk. */
export function buildRootfs(file: string, work: string, kernelVersion: string): string {
  const staging = path.join(work, 'rootfs');
  fs.mkdirSync(path.join(staging, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(staging, 'etc', 'motd'), `tsvmm rootfs (ext4 on /dev/vda), built for kernel ${kernelVersion}\n`);
  fs.writeFileSync(path.join(staging, 'README'), 'The default root file system of `tsvmm image linux`. The initramfs mounts it on /mnt.\n');
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, '');
  fs.truncateSync(file, ROOTFS_BYTES);
  const r = spawnSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'tsvmm-root', '-d', staging, file], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return `a blank ${ROOTFS_BYTES >> 20} MiB raw disk (mke2fs -d unavailable: ${r.error ? 'not installed' : r.stderr.trim().split('\n').pop()})`;
  return `ext4, ${ROOTFS_BYTES >> 20} MiB`;
}

export interface ImageResult { dir: string; kernelPackage: string; kernelVersion: string; modules: string[]; builtin: string[]; rootfs: string }

/** Build the Linux guest image into `out`. `cache`: keep/reuse the .deb files there. */
export function buildLinuxImage(out: string, cache?: string, log: (l: string) => void = () => undefined): ImageResult {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-image-'));
  try {
    const debDir = cache ?? path.join(work, 'debs');
    fs.mkdirSync(debDir, { recursive: true });
    const kernelPackage = resolveKernelPackage();
    log(`kernel package: ${kernelPackage}`);
    const kernelDeb = downloadDeb(kernelPackage, debDir);
    const busyboxDeb = downloadDeb(BUSYBOX_PACKAGE, debDir);
    const kroot = path.join(work, 'kernel');
    const broot = path.join(work, 'busybox');
    sh('dpkg-deb', ['-x', kernelDeb, kroot]);
    sh('dpkg-deb', ['-x', busyboxDeb, broot]);

    const vmlinuzName = fs.readdirSync(path.join(kroot, 'boot')).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuzName) throw new Error(`${path.basename(kernelDeb)} has no /boot/vmlinuz-*`);
    const kernelVersion = vmlinuzName.slice('vmlinuz-'.length);
    const vmlinuz = fs.readFileSync(path.join(kroot, 'boot', vmlinuzName));
    parseBzImage(vmlinuz);
    const modDir = firstExisting([path.join(kroot, 'lib', 'modules', kernelVersion), path.join(kroot, 'usr', 'lib', 'modules', kernelVersion)]);
    if (!modDir) throw new Error(`${path.basename(kernelDeb)} has no modules directory for ${kernelVersion}`);
    const busyboxPath = firstExisting([path.join(broot, 'bin', 'busybox'), path.join(broot, 'usr', 'bin', 'busybox')]);
    if (!busyboxPath) throw new Error(`${path.basename(busyboxDeb)} has no busybox binary`);

    const mods = resolveModules(modDir, WANTED_MODULES);
    const initrd = buildInitramfs(fs.readFileSync(busyboxPath), mods.load.map((m) => ({ name: m.name, data: fs.readFileSync(m.file) })));

    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, IMAGE_FILES.kernel), vmlinuz);
    fs.writeFileSync(path.join(out, IMAGE_FILES.initrd), initrd);
    const rootfs = buildRootfs(path.join(out, IMAGE_FILES.rootfs), work, kernelVersion);
    return { dir: out, kernelPackage, kernelVersion, modules: mods.load.map((m) => m.name), builtin: mods.builtin, rootfs };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** `tsvmm image ...` */
export function imageCommand(argv: string[]): number {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { out: { type: 'string' }, cache: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true, allowPositionals: true,
  });
  if (values.help) { process.stdout.write(IMAGE_HELP); return 0; }
  if (positionals.length !== 1 || positionals[0] !== 'linux') {
    throw new Error(`expected \`tsvmm image linux [--out DIR] [--cache DIR]\`, got "tsvmm image ${positionals.join(' ')}"`);
  }
  const out = path.resolve(values.out ?? defaultImageDir());
  const r = buildLinuxImage(out, values.cache ? path.resolve(values.cache) : undefined, (l) => process.stderr.write(`tsvmm: ${l}\n`));
  process.stdout.write(
    `${path.join(out, IMAGE_FILES.kernel)}: ${r.kernelPackage} (${r.kernelVersion})\n`
    + `${path.join(out, IMAGE_FILES.initrd)}: busybox, modules ${r.modules.join(' ')}${r.builtin.length ? ` (built in: ${r.builtin.join(' ')})` : ''}\n`
    + `${path.join(out, IMAGE_FILES.rootfs)}: ${r.rootfs}\n`
    + `boot it with: tsvmm run --linux --image-dir ${out}\n`,
  );
  return 0;
}
