/**
 * The `tsvmm` command line. `tsvmm run` validates its input (every bad
 * input is one clear line and a non-zero exit), then becomes the
 * supervisor of a new VM.
 */
import '../contracts/process'; // first: no debugger (the supervisor runs as root)
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { DiskConfig, NetConfig, RateLimit, VmConfig } from '../proto';
import { CMDLINE_MAX, MAX_VCPUS, parseSize } from '../contracts/layout';
import { encodeCmdline } from '../boot/cmdline';
import { checkKernel, isLinuxKernel } from '../boot/kernel';
import { Kvm } from '../kvm/system';
import { detectSoftwareKvm, softwareKvmRefusal } from '../kvm/pvm';
import { defaultImageDir, IMAGE_FILES, imageCommand, LINUX_CMDLINE } from './image';
import { Supervisor, SupervisorOptions } from '../supervisor/supervisor';
import { readSnapshotManifest } from '../contracts/snapshot-dir';
import { SnapshotError } from '../contracts/snapshot';
import { quietStdio } from '../supervisor/quiet-stdio';
import { DEFAULT_GEOMETRY } from '../contracts/state-page';
import { confinementFor } from '../contracts/confinement';
import { checkVmConfigJson } from '../contracts/vm-config-schema';
import { openDiskFd, uringUnavailable } from '../virtio/block-backend';
import { HelpRequest, verb, VerbError, VERBS, VERBS_HELP } from './verbs';
import { versionInfo } from '../contracts/version';
import { TSVMM_EXIT } from '../contracts/exit-codes';
import { badName, DEFAULT_METRICS_ADDR, readSupervisorPid } from '../contracts/paths';
import { DEFAULT_LOG_LEVEL, isLogFormat, isLogLevel, LOG_FORMATS, LOG_LEVELS, LogFormat, Logger, LogLevel } from '../contracts/log';
import { isatty } from 'tty';
import { startNode, startPhase } from '../contracts/start-trace';
import { supervisorRuntimeFlags, v8FlagsError } from '../contracts/v8-flags';
import { setFlagsFromString } from 'v8';

export const DEFAULT_GUEST = path.resolve(__dirname, '..', '..', 'guest', 'out', 'guest.elf');
export const DEFAULT_DEMO_CMDLINE = 'workload=counter n=15000000000 report=500000000';
/** Device slots in the shared state page. */
export const MAX_DEVICES = DEFAULT_GEOMETRY.maxDevices;

/** A user-facing error: printed as one line, exit status `status`. */
export class UsageError extends Error {
  constructor(message: string, readonly status = 2) { super(message); }
}

const HELP = `usage: tsvmm <command> [options]        (tsvmm <command> --help: that command's options)

commands:
  run        boot a guest under a new supervisor
  image      build a guest image (tsvmm image linux [--out DIR] [--cache DIR])
  version    print the version (also --version)
${VERBS_HELP}
exit status: 0 done (the guest powered off with status 0, or stopped on request: tsvmm stop,
             SIGTERM); 1 tsvmm failed; 2 usage error; 3 the guest failed (powered off with a
             non-zero status); 130 interrupted (Ctrl-C)
`;

const RUN_HELP = `usage: tsvmm run [options]
Boots a guest under a new supervisor; prints the VM's API socket, metrics URL and how to stop it.
tsvmm run [--kernel FILE] [--initrd FILE] [--cmdline STR] [--mem SIZE] [--cpus N] [--serial FILE] [--name NAME]
          [--disk FILE[,OPTS]]... [--net tap=NAME[,mac=MAC][,bw=BYTES]]... [--linux [--image-dir DIR]] [--force]
          [--standby] [--hang-timeout MS] [--user USER | --no-confine] [--log-level LEVEL] [--log-format json|text]
tsvmm run --config FILE [options]
tsvmm run --restore DIR [--disk FILE[,OPTS]]... [--net tap=NAME[,...]]... [--name NAME] [--serial FILE] [--standby] ...
  --restore DIR   resume the VM \`tsvmm snapshot --out DIR\` saved, where it was: its vCPUs, devices and RAM.
                  Its disks and TAPs unless --disk / --net name others (as many as it had, in the same order)
  --config FILE   the VM's configuration as JSON: the fields of the API's VM config (priv-domain/openapi.yaml
                  VmConfig: name, kernel, cmdline, memBytes, cpus, serialPath, initrd, metricsAddr, disks
                  [{path, readOnly, cache, io, rateLimit}], nets [{tap, mac, rateLimit}]), checked against that
                  schema. Flags override: a flag given wins over the file's field, and --disk / --net given
                  replace all of the file's disks / nets. Not with --restore
  --kernel FILE   a PVH ELF kernel or a Linux bzImage (default: the built-in test guest, on a demo workload)
  --initrd FILE   an initial ramdisk for the kernel
  --linux         boot the Linux guest \`tsvmm image linux\` built (its vmlinuz, initrd.img and rootfs.img
                  as the first disk), or, with --kernel, treat that kernel as Linux
  --image-dir DIR where that image is (default ${defaultImageDir()})
  --force         boot a Linux kernel even on a software-virtualized KVM (PVM), where it cannot work
  --standby       keep a warm standby vmm and driver-domain that take over the moment the primary dies
  --hang-timeout MS  kill and recover a component whose heartbeat stopped for MS ms (default 250; 0 = off)
  --user USER     (as root) the unprivileged user the components run as: a name, UID or UID:GID
                  (default 65534:65534, nobody); see "Confinement" in docs/architecture.md
  --no-confine    (development) run the components unconfined: as tsvmm's own user, no seccomp filter
  --cmdline STR   the guest command line (default for the test guest: "${DEFAULT_DEMO_CMDLINE}")
  --mem SIZE      guest RAM, e.g. 256M or 2G (default 256M)
  --cpus N        number of vCPUs (default 1)
  --serial FILE   append guest serial output to FILE instead of the terminal
  --name NAME     a name for this VM (default: tsvmm-<pid>); the other verbs find it by this name
  --log-level LEVEL   error, warn, info (default) or debug: what the supervisor and every component log,
                      to stderr and to <state dir>/vms/NAME/tsvmm.log (JSON lines, rotated at 8 MiB)
  --log-format FMT    stderr's format: json (the default when stderr is not a terminal) or text
  --metrics-addr HOST:PORT  where to serve Prometheus metrics (default ${DEFAULT_METRICS_ADDR}; port 0: any free port; none: off)
  --disk FILE[,ro][,cache=writeback|none][,io=uring|threads][,iops=N][,bw=BYTES]
                  a virtio-blk disk on a raw image (repeatable). ro: read-only. cache=none: O_DIRECT,
                  no host page cache (default writeback). io=: the I/O engine (default io_uring where
                  it works, else threads). iops= / bw=: a rate limit, requests / bytes per second
                  (K, M, G suffixes), a token bucket of one second's worth
  --net tap=NAME[,mac=MAC][,bw=BYTES]
                  a virtio-net NIC on a TAP device, created if absent (repeatable); bw=: bytes per
                  second each way (guest TX and RX)
  -h, --help      show this help
exit status: 0 the guest powered off with status 0 or a stop on request; 1 tsvmm failed; 2 usage error; 3 the guest failed; 130 Ctrl-C
`;

function readKernel(file: string): Buffer {
  let buf: Buffer;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new UsageError(`kernel ${file} is not a regular file`);
    buf = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UsageError(`kernel ${file} does not exist`);
    if (code === 'EACCES') throw new UsageError(`kernel ${file} is not readable (permission denied)`);
    throw new UsageError(`cannot read kernel ${file}: ${(e as Error).message}`);
  }
  try {
    checkKernel(buf);
  } catch (e) {
    throw new UsageError(`kernel ${file}: ${(e as Error).message}`);
  }
  return buf;
}

/** --initrd FILE: a readable, non-empty regular file. */
function checkInitrd(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
    fs.closeSync(fs.openSync(file, 'r'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UsageError(`initrd ${file} does not exist`);
    if (code === 'EACCES') throw new UsageError(`initrd ${file} is not readable (permission denied)`);
    throw new UsageError(`cannot read initrd ${file}: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new UsageError(`initrd ${file} is not a regular file`);
  if (st.size === 0) throw new UsageError(`initrd ${file} is empty`);
}

const DISK_SYNTAX = 'FILE[,ro][,cache=writeback|none][,io=uring|threads][,iops=N][,bw=BYTES]';
const NET_SYNTAX = 'tap=NAME[,mac=MAC][,bw=BYTES]';

/** A rate for iops= / bw=: a whole number, bw with an optional K, M or G (binary) suffix; per second. */
function parseRate(what: string, text: string, spec: string, sizes: boolean): number {
  const m = (sizes ? /^(\d+)([kmg]?)(?:i?b)?$/i : /^(\d+)$/).exec(text);
  const mult: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
  const n = m ? Number(m[1]) * mult[(m[2] ?? '').toLowerCase()] : NaN;
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new UsageError(`invalid ${what}=${text} in "${spec}": expected a whole number ${sizes ? 'of bytes per second (K, M, G suffixes)' : 'of requests per second'}, at least 1`);
  }
  return n;
}

/** iops=N / bw=BYTES as the schema's RateLimit: buckets of one second's worth, refilled every second. */
function rateLimit(iops: number | undefined, bw: number | undefined): RateLimit | null {
  if (iops === undefined && bw === undefined) return null;
  const bucket = (n: number | undefined) => (n === undefined ? null : { size: n, refillTimeMs: 1000, oneTimeBurst: 0 });
  return { ops: bucket(iops), bandwidth: bucket(bw) };
}

/** --disk FILE[,ro][,cache=..][,io=..][,iops=N][,bw=BYTES] */
export function parseDisk(spec: string): DiskConfig {
  const parts = spec.split(',');
  const file = parts[0];
  if (!file) throw new UsageError(`invalid --disk "${spec}": expected ${DISK_SYNTAX}`);
  const disk: DiskConfig = { path: file, readOnly: false, cache: 'writeback', io: 'auto', rateLimit: null };
  let iops: number | undefined;
  let bw: number | undefined;
  for (const o of parts.slice(1)) {
    const i = o.indexOf('=');
    const [k, v] = i < 0 ? [o, undefined] : [o.slice(0, i), o.slice(i + 1)];
    if (k === 'ro' && v === undefined) disk.readOnly = true;
    else if (k === 'cache' && (v === 'writeback' || v === 'none')) disk.cache = v;
    else if (k === 'io' && (v === 'uring' || v === 'threads')) disk.io = v;
    else if (k === 'iops' && v !== undefined) iops = parseRate('iops', v, spec, false);
    else if (k === 'bw' && v !== undefined) bw = parseRate('bw', v, spec, true);
    else if (k === 'cache' || k === 'io') throw new UsageError(`invalid --disk option "${o}" in "${spec}": ${k === 'cache' ? 'cache=writeback or cache=none' : 'io=uring or io=threads'}`);
    else throw new UsageError(`invalid --disk option "${o}" in "${spec}": expected ${DISK_SYNTAX}`);
  }
  disk.rateLimit = rateLimit(iops, bw);
  return checkDisk(disk);
}

/**
 * A disk (from --disk or a --config file) usable as asked: the image exists, is a multiple of 512
 * bytes and opens as asked; cache=none opens with O_DIRECT here; io=uring has io_uring here.
 * Returns it with an absolute path.
 */
export function checkDisk(disk: DiskConfig): DiskConfig {
  const file = disk.path;
  const readOnly = disk.readOnly;
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(code === 'ENOENT' ? `disk image ${file} does not exist` : `cannot use disk image ${file}: ${(e as Error).message}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`disk image ${file} is not a regular file or block device`);
  if (st.size < 512 || st.size % 512 !== 0) throw new UsageError(`disk image ${file} is ${st.size} bytes: it must be a non-zero multiple of 512`);
  // Root opens anything for writing: a file its owner made read-only (chmod 444) is refused unless ,ro.
  if (!readOnly && st.isFile() && (st.mode & 0o222) === 0) {
    throw new UsageError(`disk image ${file} is read-only (mode ${(st.mode & 0o777).toString(8)}): add ,ro to use it read-only`);
  }
  try {
    fs.closeSync(fs.openSync(file, readOnly ? 'r' : 'r+'));
  } catch (e) {
    throw new UsageError(`cannot open disk image ${file} ${readOnly ? 'for reading' : 'for writing (add ,ro for a read-only disk)'}: ${(e as NodeJS.ErrnoException).code}`);
  }
  if (disk.cache === 'none') {
    try {
      fs.closeSync(openDiskFd(file, readOnly, 'none'));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new UsageError(`disk image ${file}: cache=none needs O_DIRECT, which ${code === 'EINVAL' ? 'its file system refuses (use cache=writeback there)' : `failed: ${code}`}`);
    }
  }
  if (disk.io === 'uring') {
    const why = uringUnavailable();
    if (why) throw new UsageError(`disk image ${file}: io=uring, but io_uring is unavailable here (${why}): use io=threads`);
  }
  return { ...disk, path: path.resolve(file) };
}

/** The same file (by device and inode, whatever the path) given twice would be two disks writing one image. */
function distinctDisks(disks: DiskConfig[]): DiskConfig[] {
  const seen = new Map<string, string>();
  for (const d of disks) {
    const st = fs.statSync(d.path);
    const key = st.isBlockDevice() ? `b${st.rdev}` : `${st.dev}:${st.ino}`;
    const first = seen.get(key);
    if (first !== undefined) throw new UsageError(`disk image ${d.path} is given twice${first !== d.path ? ` (also as ${first})` : ''}: each --disk needs its own image`);
    seen.set(key, d.path);
  }
  return disks;
}

/** --net tap=NAME[,mac=MAC][,bw=BYTES] */
export function parseNet(spec: string): NetConfig {
  const kv = new Map<string, string>();
  for (const part of spec.split(',')) {
    const i = part.indexOf('=');
    if (i <= 0) throw new UsageError(`invalid --net "${spec}": expected ${NET_SYNTAX}`);
    kv.set(part.slice(0, i), part.slice(i + 1));
  }
  for (const k of kv.keys()) if (k !== 'tap' && k !== 'mac' && k !== 'bw') throw new UsageError(`invalid --net option "${k}" in "${spec}": expected ${NET_SYNTAX}`);
  const bw = kv.get('bw');
  return checkNet({ tap: kv.get('tap') ?? '', mac: kv.get('mac') ?? '', rateLimit: rateLimit(undefined, bw === undefined ? undefined : parseRate('bw', bw, spec, true)) }, `--net "${spec}"`);
}

/** A NIC (from --net or a --config file) with a valid TAP name and MAC. */
export function checkNet(nic: NetConfig, what: string): NetConfig {
  const { tap, mac } = nic;
  if (!tap || !/^[A-Za-z0-9_.-]{1,15}$/.test(tap)) throw new UsageError(`invalid ${what}: tap=NAME needs a 1-15 character interface name`);
  if (mac) {
    if (!/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(mac)) throw new UsageError(`invalid MAC "${mac}": expected six hex bytes like 52:54:00:12:34:56`);
    if (parseInt(mac.slice(0, 2), 16) & 1) throw new UsageError(`invalid MAC "${mac}": a multicast address cannot be a NIC's address`);
  }
  return nic;
}

/** --name: a valid name that no running VM has. */
function checkName(name: string): string {
  const why = badName(name);
  if (why) throw new UsageError(why);
  let pid: number | undefined;
  try { pid = readSupervisorPid(name); } catch { pid = undefined; /* someone else's: the runtime dir says so later */ }
  if (pid && pid !== process.pid) throw new UsageError(`a VM named "${name}" is already running (supervisor pid ${pid})`);
  return name;
}

/** --metrics-addr HOST:PORT | none */
function checkMetricsAddr(addr: string): string {
  if (addr === 'none') return addr;
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(addr);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`invalid --metrics-addr "${addr}": expected HOST:PORT (port 0: any free port) or none`);
  return addr;
}

export function parseRun(argv: string[]): VmConfig {
  return parseRunOptions(argv).cfg;
}

const RUN_OPTIONS = {
  kernel: { type: 'string' }, cmdline: { type: 'string' }, mem: { type: 'string' }, cpus: { type: 'string' },
  serial: { type: 'string' }, name: { type: 'string' }, help: { type: 'boolean', short: 'h' },
  disk: { type: 'string', multiple: true }, net: { type: 'string', multiple: true },
  initrd: { type: 'string' }, linux: { type: 'boolean' }, 'image-dir': { type: 'string' }, force: { type: 'boolean' },
  'metrics-addr': { type: 'string' }, 'log-level': { type: 'string' }, 'log-format': { type: 'string' },
  standby: { type: 'boolean' }, 'hang-timeout': { type: 'string' }, restore: { type: 'string' }, user: { type: 'string' },
  config: { type: 'string' },
  'no-confine': { type: 'boolean' },
} as const;

/** `tsvmm run` options: the VM's configuration, and the snapshot it resumes with --restore. */
export function parseRunOptions(argv: string[]): { cfg: VmConfig; restore?: SupervisorOptions['restore'] } {
  const { values } = parseArgs({ args: argv, options: RUN_OPTIONS, strict: true, allowPositionals: false });
  if (values.help) throw new HelpRequest(RUN_HELP);
  if (values.restore !== undefined) return parseRestore(values.restore, values);
  return { cfg: parseBoot(argv) };
}

/** --restore DIR: the configuration comes from the snapshot's manifest; disks and TAPs may be swapped. */
function parseRestore(dirArg: string, values: { disk?: string[]; net?: string[]; name?: string; serial?: string; 'metrics-addr'?: string } & Record<string, unknown>): { cfg: VmConfig; restore: SupervisorOptions['restore'] } {
  for (const k of ['kernel', 'initrd', 'cmdline', 'mem', 'cpus', 'linux', 'image-dir', 'force', 'config']) {
    if (values[k] !== undefined) throw new UsageError(`--${k} cannot be combined with --restore: the snapshot has the VM's configuration`);
  }
  const dir = path.resolve(dirArg);
  let manifest;
  try { manifest = readSnapshotManifest(dir); } catch (e) {
    if (e instanceof SnapshotError) throw new UsageError(e.message, 1);
    throw e;
  }
  const saved = manifest.config;
  const swap = <T>(given: string[] | undefined, had: T[], what: string, parse: (s: string) => T, keep: (t: T) => T): T[] => {
    if (given === undefined) return had.map(keep);
    if (given.length !== had.length) throw new UsageError(`the snapshot has ${had.length} ${what}; --restore takes as many --${what === 'disks' ? 'disk' : 'net'} (${given.length} given)`);
    return given.map(parse);
  };
  const disks = swap(values.disk, saved.disks, 'disks', parseDisk, checkDisk);
  const nets = swap(values.net, saved.nets, 'nets', parseNet, (n) => n);
  let kvm: Kvm;
  try { kvm = Kvm.open(); } catch (e) { throw new UsageError((e as Error).message, 1); }
  const max = Math.min(kvm.maxVcpus(), MAX_VCPUS);
  kvm.close();
  if (saved.cpus > max) throw new UsageError(`the snapshot has ${saved.cpus} vCPUs: at most ${max} here`, 1);
  if (saved.memBytes > os.totalmem()) throw new UsageError(`the snapshot has ${saved.memBytes} bytes of RAM, more than this host has`, 1);
  if (values.serial !== undefined) {
    try { fs.closeSync(fs.openSync(values.serial, 'a')); } catch (e) {
      throw new UsageError(`cannot open serial output ${values.serial}: ${(e as Error).message}`);
    }
  }
  const cfg: VmConfig = {
    ...saved, name: checkName(values.name ?? saved.name), metricsAddr: checkMetricsAddr(values['metrics-addr'] ?? DEFAULT_METRICS_ADDR),
    serialPath: values.serial ? path.resolve(values.serial) : '', disks, nets,
  };
  return { cfg, restore: { dir, manifest } };
}

/**
 * --config FILE: a VmConfig as JSON (the API's schema, contracts/vm-config-schema.ts), as the
 * option values it stands for (flags given override them) and its disks and NICs (--disk / --net
 * given replace them).
 */
function readConfigFile(file: string): { values: Record<string, string>; disks?: DiskConfig[]; nets?: NetConfig[] } {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read --config ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`invalid --config ${file}: not JSON (${(e as Error).message})`);
  }
  let cfg: Partial<VmConfig>;
  try {
    cfg = checkVmConfigJson(json);
  } catch (e) {
    throw new UsageError(`invalid --config ${file}: ${(e as Error).message}`);
  }
  const values: Record<string, string> = {};
  const put = (opt: string, v: string | number | undefined) => { if (v !== undefined && v !== '') values[opt] = String(v); };
  put('name', cfg.name);
  put('kernel', cfg.kernel);
  put('cmdline', cfg.cmdline);
  put('mem', cfg.memBytes);
  put('cpus', cfg.cpus);
  put('serial', cfg.serialPath);
  put('initrd', cfg.initrd);
  put('metrics-addr', cfg.metricsAddr);
  if (cfg.cmdline === '') values.cmdline = '';
  // The schema makes only path / tap required: the rest takes the flags' defaults.
  const disks = cfg.disks?.map((d: Partial<DiskConfig>): DiskConfig => ({ path: '', readOnly: false, cache: 'writeback', io: 'auto', rateLimit: null, ...d }));
  const nets = cfg.nets?.map((n: Partial<NetConfig>, i): NetConfig => checkNet({ tap: '', mac: '', rateLimit: null, ...n }, `/nets/${i} in --config ${file}`));
  return { values, disks, nets };
}

function parseBoot(argv: string[]): VmConfig {
  const parsed = parseArgs({ args: argv, options: RUN_OPTIONS, strict: true, allowPositionals: false }).values;
  if (parsed.help) throw new HelpRequest(RUN_HELP);
  const file = parsed.config !== undefined ? readConfigFile(parsed.config) : undefined;
  // Flags override the file's fields.
  const values = { ...file?.values, ...parsed } as typeof parsed;

  // --linux without --kernel: the image `tsvmm image linux` built.
  const imageDir = values.linux && !values.kernel ? path.resolve(values['image-dir'] ?? defaultImageDir()) : undefined;
  if (imageDir) {
    const missing = Object.values(IMAGE_FILES).filter((f) => !fs.existsSync(path.join(imageDir, f)));
    if (missing.length) throw new UsageError(`no Linux image in ${imageDir} (missing ${missing.join(', ')}): run \`tsvmm image linux --out ${imageDir}\` first`);
  }
  const kernel = imageDir ? path.join(imageDir, IMAGE_FILES.kernel) : values.kernel ?? DEFAULT_GUEST;
  if (!values.kernel && !imageDir && !fs.existsSync(DEFAULT_GUEST)) {
    throw new UsageError(`the built-in test guest ${DEFAULT_GUEST} is missing: run \`npm install\` (it builds guest/)`, 1);
  }
  const kernelBytes = readKernel(kernel);
  const linux = values.linux === true || isLinuxKernel(kernelBytes);
  const initrd = values.initrd ?? (imageDir ? path.join(imageDir, IMAGE_FILES.initrd) : undefined);
  if (initrd !== undefined) checkInitrd(initrd);
  // --disk / --net replace the file's disks / NICs; with neither, --linux adds its image's rootfs.
  const disks: DiskConfig[] = values.disk ? values.disk.map(parseDisk)
    : file?.disks ? file.disks.map(checkDisk)
      : imageDir ? [parseDisk(path.join(imageDir, IMAGE_FILES.rootfs))] : [];
  const nets: NetConfig[] = values.net ? values.net.map(parseNet) : file?.nets ?? [];
  const cmdline = values.cmdline ?? (linux ? LINUX_CMDLINE : values.kernel ? '' : DEFAULT_DEMO_CMDLINE);
  try {
    encodeCmdline(cmdline, CMDLINE_MAX);
  } catch (e) {
    throw new UsageError(`invalid --cmdline: ${(e as Error).message}`);
  }

  let memBytes: number;
  try {
    memBytes = parseSize(values.mem ?? '256M');
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (memBytes > os.totalmem()) {
    throw new UsageError(`memory size ${values.mem} is more than this host has (${Math.floor(os.totalmem() / 2 ** 20)} MiB)`);
  }

  const cpusText = values.cpus ?? '1';
  if (!/^\d+$/.test(cpusText)) throw new UsageError(`invalid --cpus "${cpusText}": expected a whole number`);
  const cpus = Number(cpusText);
  if (cpus < 1) throw new UsageError('--cpus must be at least 1');

  // Opening /dev/kvm here turns a missing or forbidden device into one clear line.
  let kvm: Kvm;
  try {
    kvm = Kvm.open();
  } catch (e) {
    throw new UsageError((e as Error).message, 1);
  }
  const max = Math.min(kvm.maxVcpus(), MAX_VCPUS);
  kvm.close();
  if (cpus > max) throw new UsageError(`--cpus ${cpus} is too many: at most ${max} here`);
  const softKvm = linux && !values.force ? detectSoftwareKvm() : undefined;
  if (softKvm) throw new UsageError(softwareKvmRefusal(softKvm), 1);

  if (values.serial !== undefined) {
    try { fs.closeSync(fs.openSync(values.serial, 'a')); } catch (e) {
      throw new UsageError(`cannot open serial output ${values.serial}: ${(e as Error).message}`);
    }
  }
  const deviceCount = disks.length + nets.length;
  if (deviceCount > MAX_DEVICES) throw new UsageError(`${deviceCount} virtio devices requested: at most ${MAX_DEVICES} (--disk and --net together)`);
  return {
    name: checkName(values.name ?? `tsvmm-${process.pid}`), metricsAddr: checkMetricsAddr(values['metrics-addr'] ?? DEFAULT_METRICS_ADDR),
    kernel: path.resolve(kernel), cmdline, memBytes, cpus,
    serialPath: values.serial ? path.resolve(values.serial) : '',
    disks: distinctDisks(disks), nets,
    initrd: initrd ? path.resolve(initrd) : '',
  };
}

/** --standby, --hang-timeout MS (supervisor/supervisor.ts), --user and --no-confine (contracts/confinement.ts). */
export function parseRecoveryOptions(argv: string[]): { standby: boolean; hangTimeoutMs?: number; user?: string; confine: boolean } {
  const { values } = parseArgs({
    args: argv, options: { standby: { type: 'boolean' }, 'hang-timeout': { type: 'string' }, user: { type: 'string' }, 'no-confine': { type: 'boolean' } },
    strict: false, allowPositionals: true,
  });
  const t = values['hang-timeout'];
  if (t !== undefined && (typeof t !== 'string' || !/^\d+$/.test(t))) throw new UsageError(`invalid --hang-timeout "${t}": expected a whole number of milliseconds (0 = off)`);
  const user = typeof values.user === 'string' ? values.user : undefined;
  const confine = values['no-confine'] !== true;
  try {
    confinementFor(user, confine);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return { standby: values.standby === true, hangTimeoutMs: t === undefined ? undefined : Number(t), user, confine };
}

/**
 * --log-level, --log-format (contracts/log.ts); else TSVMM_LOG_LEVEL / TSVMM_LOG_FORMAT; else info,
 * and json unless stderr is a terminal. The result is put in the environment: every component
 * (and a supervisor that adopts the VM) inherits it.
 */
export function parseLogOptions(argv: string[]): { level: LogLevel; format: LogFormat } {
  const { values } = parseArgs({ args: argv, options: { 'log-level': { type: 'string' }, 'log-format': { type: 'string' } }, strict: false, allowPositionals: true });
  const level = values['log-level'] ?? (process.env.TSVMM_LOG_LEVEL || DEFAULT_LOG_LEVEL);
  if (typeof level !== 'string' || !isLogLevel(level)) throw new UsageError(`invalid --log-level "${level}": expected ${LOG_LEVELS.join(', ')}`);
  const given = values['log-format'] ?? (process.env.TSVMM_LOG_FORMAT || undefined);
  if (given !== undefined && (typeof given !== 'string' || !isLogFormat(given))) throw new UsageError(`invalid --log-format "${given}": expected ${LOG_FORMATS.join(' or ')}`);
  return { level, format: given ?? (isatty(2) ? 'text' : 'json') };
}

/**
 * A --metrics-addr the user gave must be one we can listen on: a busy or foreign address is an
 * error now, not a warning later. (The default address, busy because another VM has it, only
 * warns: `tsvmm metrics` still serves them.)
 */
function probeMetricsAddr(addr: string): Promise<void> {
  if (addr === 'none' || addr === '') return Promise.resolve();
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(addr)!;
  const host = m[1].replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'EADDRINUSE' ? 'the address is in use (another VM? pick another port, port 0 for any free one, or none)'
        : e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN' ? 'no such local address' : e.code ?? e.message;
      reject(new UsageError(`cannot serve metrics on ${addr}: ${why}`));
    });
    srv.listen(Number(m[2]), host, () => srv.close(() => resolve()));
  });
}

async function run(argv: string[]): Promise<number> {
  const tRun = performance.timeOrigin + performance.now();
  // This process is the supervisor: its V8 flags first (contracts/v8-flags.ts), before its heap grows.
  const flagsError = v8FlagsError();
  if (flagsError) throw new UsageError(flagsError);
  for (const f of supervisorRuntimeFlags()) setFlagsFromString(f);
  const { cfg, restore } = parseRunOptions(argv);
  const logOpts = parseLogOptions(argv);
  await probeMetricsAddr(cfg.metricsAddr ?? '');
  process.env.TSVMM_LOG_LEVEL = logOpts.level;
  process.env.TSVMM_LOG_FORMAT = logOpts.format;
  const logger = quietStdio(new Logger({ component: 'supervisor', ...logOpts }));
  const log = (line: string) => logger.info(line);
  startNode('supervisor');
  startPhase('supervisor', 'cli modules loaded, run() entered', { at: tRun });
  startPhase('supervisor', 'options checked');
  let sup: Supervisor;
  try {
    sup = new Supervisor(cfg, { logger, restore, ...parseRecoveryOptions(argv) });
  } catch (e) {
    if (e instanceof SnapshotError) throw new UsageError(e.message, 1);
    throw e;
  }
  startPhase('supervisor', 'constructed (memfds, devices, /dev/kvm)');
  process.on('SIGTERM', () => sup.stop('stopped by SIGTERM'));
  process.on('SIGINT', () => sup.stop('stopped by SIGINT', TSVMM_EXIT.interrupted));
  try {
    sup.start();
    startPhase('supervisor', 'start() returned (components spawned)');
  } catch (e) {
    if (e instanceof SnapshotError) throw new UsageError(e.message, 1);
    throw e;
  }
  log(`the guest survives its VMM: run \`kill -9 ${sup.vmmPid}\` (the vmm${sup.driverDomainPid ? `; ${sup.driverDomainPid} is the driver-domain` : ''}) in another terminal and watch it carry on`);
  const r = await sup.done;
  if (r.code === 0 || r.requested) logger.info(r.reason, { event: 'exit', code: r.code });
  else logger.error(`error: ${r.reason}`, { event: 'exit', code: r.code });
  return r.code;
}

export async function main(argv: string[]): Promise<number> {
  try {
    const [cmd, ...rest] = argv;
    if (!cmd || cmd === '-h' || cmd === '--help' || cmd === 'help') { process.stdout.write(HELP); return cmd ? TSVMM_EXIT.ok : TSVMM_EXIT.usage; }
    if (cmd === '--version' || cmd === '-V' || cmd === 'version') {
      const v = versionInfo();
      process.stdout.write(`tsvmm ${v.version}${v.commit ? ` (commit ${v.commit})` : ''} node ${v.node}\n`);
      return TSVMM_EXIT.ok;
    }
    if (cmd === 'run') return await run(rest);
    if (cmd === 'image') return imageCommand(rest);
    if (VERBS.includes(cmd)) return await verb(cmd, rest);
    throw new UsageError(`unknown command "${cmd}" (try tsvmm --help)`);
  } catch (e) {
    const err = e as Error & { code?: string; status?: number };
    if (e instanceof HelpRequest) { process.stdout.write(e.text); return TSVMM_EXIT.ok; }
    if (e instanceof UsageError || e instanceof VerbError) { process.stderr.write(`tsvmm: error: ${e.message}\n`); return e.status; }
    if (err.code?.startsWith('ERR_PARSE_ARGS')) { process.stderr.write(`tsvmm: error: ${err.message}\n`); return 2; }
    process.stderr.write(`tsvmm: error: ${err.message}\n`);
    return 1;
  }
}
