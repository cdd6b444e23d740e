/**
 * `tsvmm inject COMPONENT KIND [--name NAME] [--seed N]`: one fault into a running VM, the way the
 * seed measured recovery (issue 16). Every fault is real: a register of a live thread changed
 * through ptrace, a bit of a live process's memory or text changed through /proc/PID/mem, a bit of
 * a shared structure changed through the supervisor's own memfd, a garbled message written into a
 * component's IPC channel, the disk image cut short under the driver-domain, a signal.
 *
 * Policy lives here; the addon only wraps the syscalls Node lacks (native/kvm/ptrace.cc). Every
 * injection returns what it changed, read back after the write (`before`, `after`), so a caller can
 * tell that the fault really landed (test/fault-inject.test.ts) and a campaign can log it
 * (bench/campaign.ts). The random choices come from `--seed` (xorshift), so one seed and one
 * process layout give one fault.
 */
import * as fs from 'fs';
import * as net from 'net';
import { execFileSync } from 'child_process';
import { native } from '../native/kvm';
import type { NativePidfd } from '../contracts/pidfd';
import { CONTROL_OFFSET, CONTROL_SIZE, DEVICE_FD_BASE, DEVICE_FD_STRIDE, DEVICE_PAGE_OFFSET, deviceFds, FD } from '../contracts/fds';
import { StatePage } from '../contracts/state-page';
import { snapshotSize, SNAP, SnapshotView } from '../contracts/snapshot';
import { ramRegions } from '../contracts/layout';
import { availRingSize, descTableSize, usedRingSize, Status, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE } from '../contracts/virtio-mmio-layout';

/** Components a fault can go into. vmm-main / vmm-vcpu narrow the vmm's threads for register flips. */
export const INJECT_COMPONENTS = ['vmm', 'vmm-main', 'vmm-vcpu', 'keeper', 'driver-domain', 'priv-domain', 'supervisor'] as const;
export type InjectComponent = (typeof INJECT_COMPONENTS)[number];

/**
 * Fault kinds:
 *   reg             one random bit of a random GPR, RIP, RSP or EFLAGS of a random thread (ptrace)
 *   mem             one random bit of a random word of a random writable mapping (guest RAM excluded: that is the guest's)
 *   code-addon      one random bit of the addon's text (tsvmm_kvm.node, r-x mapping)
 *   code-node       one random bit of node's own text
 *   state-page      one random bit of the virtio state page's header, static and register blocks
 *   queue-progress  one random bit of a live queue's progress record (the in-flight table the restart trusts)
 *   control-page    one random bit of the control page's counters and flags (console ring excluded)
 *   snapshot        the vmm is killed, and one random bit of what its keeper saved is flipped before the restore
 *   message         a garbled or truncated message into the component's IPC channel (priv-domain: its HTTP API)
 *   disk-truncate   the driver-domain's disk image cut to a random shorter length under it
 *   disk-full       the file system under the disk image filled (ENOSPC) for a while, then freed
 *                   (only a small dedicated one: a tmpfs of at most 1 GiB, never the host's)
 *   ring            what a malicious guest writes into its own rings (guest RAM, through the
 *                   supervisor's RAM memfd): avail idx jumped past the queue size, an avail head out
 *                   of range, a descriptor outside guest RAM, a descriptor loop, a huge length
 *   eio             one disk request completes with EIO (its io_uring completion rewritten while the
 *                   driver-domain is stopped): the host's disk failing that read or write
 *   tap-vanish      the TAP a net device is attached to deleted (ip link del) under the driver-domain
 *   SIGKILL SIGSEGV SIGABRT SIGSTOP   the fail-stop baseline
 */
export const INJECT_KINDS = [
  'reg', 'mem', 'code-addon', 'code-node', 'state-page', 'queue-progress', 'control-page', 'snapshot', 'message', 'disk-truncate',
  'disk-full', 'ring', 'eio', 'tap-vanish', 'SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP',
] as const;
export type InjectKind = (typeof INJECT_KINDS)[number];

export const FAIL_STOP_KINDS: readonly InjectKind[] = ['SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP'];

/** Which kinds make sense for which component (the campaign's matrix; the CLI refuses the rest). */
export function kindsFor(c: InjectComponent): InjectKind[] {
  const proc: InjectKind[] = ['reg', 'mem', 'code-addon', 'code-node', 'SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP'];
  switch (c) {
    case 'vmm': return [...proc, 'state-page', 'control-page', 'message'];
    case 'vmm-main': case 'vmm-vcpu': return ['reg'];
    // The keeper shares the vmm's address space (CLONE_VM): its memory is the vmm's; it blocks every signal.
    case 'keeper': return ['reg', 'snapshot', 'SIGKILL'];
    case 'driver-domain': return [...proc, 'queue-progress', 'state-page', 'message', 'disk-truncate', 'disk-full', 'ring', 'eio', 'tap-vanish'];
    case 'priv-domain': return ['reg', 'mem', 'code-node', 'control-page', 'message', 'SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP'];
    // A supervisor that dies is replaced by its guardian, which adopts the running components
    // (supervisor/guardian-main.ts); a stopped one is not watched by anyone (the VM runs on without it).
    case 'supervisor': return ['reg', 'SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP'];
  }
}

export class InjectError extends Error {}

/** What one injection did. */
export interface InjectResult {
  component: InjectComponent;
  kind: InjectKind;
  pid: number;
  tid?: number;
  /** What was hit, in words: "rip", "mapping 7f..-7f.. [heap]", "state page +0x1a4", ... */
  target: string;
  /** Address or offset of the changed word (hex), when there is one. */
  address?: string;
  bit?: number;
  /** The word before and after, read back after the write (hex). */
  before?: string;
  after?: string;
}

/** xorshift64*: reproducible choices from --seed. */
export class Rng {
  private s: bigint;
  constructor(seed: number | bigint) { this.s = (BigInt(seed) ^ 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn || 1n; }
  next(): bigint {
    let x = this.s;
    x ^= x >> 12n; x ^= (x << 25n) & 0xffffffffffffffffn; x ^= x >> 27n;
    this.s = x;
    return (x * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
  }
  /** An integer in [0, n). */
  int(n: number): number { return Number(this.next() % BigInt(Math.max(1, Math.floor(n)))); }
  /** A float in [0, 1). */
  float(): number { return Number(this.next() >> 11n) / 2 ** 53; }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]; }
}

/** The pids of a VM's components, from the API (`tsvmm ps --json`). */
export interface ComponentPids { supervisor: number; vmm: number; keeper: number; 'driver-domain': number; 'priv-domain': number }

const hex = (v: bigint | number) => `0x${v.toString(16)}`;

// ---- threads and registers ----

/** Thread ids of `pid`, without the kernel workers KVM attaches to it (kvm-nx-lpage-recovery, ...). */
export function threadsOf(pid: number): number[] {
  const out: number[] = [];
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      if (fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'latin1').startsWith('kvm')) continue;
    } catch { continue; }
    out.push(Number(t));
  }
  return out;
}

/**
 * Runs `f` with every thread of the vmm `pid` stopped (SIGSTOP, until each thread shows state T in
 * /proc, at most 200 ms; then SIGCONT): the guest's vCPUs stand still for a few milliseconds, well
 * under the hang threshold, as if the host had preempted them.
 */
async function withVcpusStopped(pid: number, f: () => void): Promise<void> {
  const stopped = () => threadsOf(pid).every((t) => {
    try { return / T /.test(fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'latin1').replace(/^.*\)/, ')')); } catch { return true; }
  });
  process.kill(pid, 'SIGSTOP');
  try {
    const t0 = Date.now();
    while (!stopped() && Date.now() - t0 < 200) await sleep(0);
    f();
  } finally {
    process.kill(pid, 'SIGCONT');
  }
}

/** The vmm's vCPU threads: in KVM_RUN (ioctl 0xae80) or running guest code, not the main thread. */
export function vcpuThreadsOf(pid: number): number[] {
  const seen = new Set<number>();
  for (let round = 0; round < 20 && seen.size === 0; round++) {
    for (const tid of threadsOf(pid)) {
      if (tid === pid) continue;
      let sc = '';
      try { sc = fs.readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'latin1'); } catch { continue; }
      const f = sc.trim().split(' ');
      if (f[0] === 'running' || (f[0] === '16' && f[2] === '0xae80')) seen.add(tid);
    }
  }
  return [...seen];
}

/** Registers a flip may hit: the general registers, RIP, RSP and EFLAGS. */
export const FLIP_REGS = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'eflags'] as const;

/**
 * Stops thread `tid` (ptrace), flips `bit` of `reg`, reads it back, detaches. Returns [before, after].
 * `onlyIf`: flips only a value it accepts (a test aiming at one state of the thread); else [before, before].
 */
export function flipRegister(tid: number, reg: string, bit: number, onlyIf?: (value: bigint) => boolean): [bigint, bigint] {
  const off = native.ptraceRegOffsets[reg];
  if (off === undefined) throw new InjectError(`unknown register "${reg}" (${FLIP_REGS.join(', ')})`);
  native.ptraceSeize(tid);
  try {
    native.ptraceInterrupt(tid);
    const status = native.ptraceWait(tid);
    if ((status & 0xff) !== 0x7f) throw new InjectError(`thread ${tid} did not stop (wait status 0x${status.toString(16)}): it exited`);
    const regs = native.ptraceGetRegs(tid);
    const before = regs.readBigUInt64LE(off);
    if (onlyIf && !onlyIf(before)) return [before, before];
    regs.writeBigUInt64LE(before ^ (1n << BigInt(bit)), off);
    native.ptraceSetRegs(tid, regs);
    const after = native.ptraceGetRegs(tid).readBigUInt64LE(off);
    return [before, after];
  } finally {
    try { native.ptraceDetach(tid); } catch { /* it died under us */ }
  }
}

// ---- memory ----

export interface Mapping { start: bigint; end: bigint; perms: string; path: string }

export function mappingsOf(pid: number): Mapping[] {
  return fs.readFileSync(`/proc/${pid}/maps`, 'latin1').trim().split('\n').map((l) => {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(l)!;
    return { start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), perms: m[3], path: m[4] };
  });
}

/** Flips `bit` of the byte at `addr` in `pid`'s memory (through /proc/PID/mem: text too). Returns the 8-byte words around it, before and after. */
export function flipMemory(pid: number, addr: bigint, bit: number): [bigint, bigint] {
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r+');
  try {
    const word = addr & ~7n;
    const buf = Buffer.alloc(8);
    if (fs.readSync(fd, buf, 0, 8, Number(word)) !== 8) throw new InjectError(`cannot read ${hex(word)} of pid ${pid}`);
    const before = buf.readBigUInt64LE(0);
    const byte = Number(addr - word);
    const one = Buffer.from([buf[byte] ^ (1 << bit)]);
    if (fs.writeSync(fd, one, 0, 1, Number(addr)) !== 1) throw new InjectError(`cannot write ${hex(addr)} of pid ${pid}`);
    if (fs.readSync(fd, buf, 0, 8, Number(word)) !== 8) throw new InjectError(`cannot read back ${hex(word)} of pid ${pid}`);
    return [before, buf.readBigUInt64LE(0)];
  } finally {
    fs.closeSync(fd);
  }
}

/** A random readable byte of a random mapping chosen by `want`, flipped. */
function flipInMappings(pid: number, rng: Rng, want: (m: Mapping) => boolean, what: string): Omit<InjectResult, 'component' | 'kind' | 'pid'> {
  const maps = mappingsOf(pid).filter(want);
  if (!maps.length) throw new InjectError(`pid ${pid} has no ${what} mapping`);
  for (let attempt = 0; attempt < 20; attempt++) {
    const m = rng.pick(maps);
    const addr = m.start + BigInt(rng.int(Number(m.end - m.start)));
    const bit = rng.int(8);
    try {
      const [before, after] = flipMemory(pid, addr, bit);
      return { target: `${what} mapping ${m.start.toString(16)}-${m.end.toString(16)} ${m.perms} ${m.path || '[anon]'}`, address: hex(addr), bit: Number(addr & 7n) * 8 + bit, before: hex(before), after: hex(after) };
    } catch (e) {
      if (e instanceof InjectError || ['EIO', 'EFAULT'].includes((e as NodeJS.ErrnoException).code ?? '')) continue; // a guard page, or it went away
      throw e;
    }
  }
  throw new InjectError(`no ${what} byte of pid ${pid} could be written`);
}

// ---- shared structures, through the supervisor's memfds ----

/** /proc/SUP/fd/N of the supervisor's memfd named `tsvmm-<what>-<name>`. */
export function supervisorMemfd(supervisor: number, what: 'state' | 'snap' | 'ram'): string {
  for (const fd of fs.readdirSync(`/proc/${supervisor}/fd`)) {
    let link = '';
    try { link = fs.readlinkSync(`/proc/${supervisor}/fd/${fd}`); } catch { continue; }
    if (link.startsWith(`/memfd:tsvmm-${what}-`)) return `/proc/${supervisor}/fd/${fd}`;
  }
  throw new InjectError(`the supervisor (pid ${supervisor}) holds no ${what} memfd`);
}

/** Flips `bit` of the byte at `off` of file `file`; returns the aligned 4-byte words before and after. */
export function flipFile(file: string, off: number, bit: number): [number, number] {
  const fd = fs.openSync(file, 'r+');
  try {
    const word = off & ~3;
    const buf = Buffer.alloc(4);
    fs.readSync(fd, buf, 0, 4, word);
    const before = buf.readUInt32LE(0);
    const b = Buffer.from([buf[off - word] ^ (1 << bit)]);
    fs.writeSync(fd, b, 0, 1, off);
    fs.readSync(fd, buf, 0, 4, word);
    return [before, buf.readUInt32LE(0)];
  } finally {
    fs.closeSync(fd);
  }
}

/** Byte ranges [offset, length) of the state memfd that a kind aims at. */
export function stateRanges(stateFile: string, kind: 'state-page' | 'queue-progress' | 'control-page'): { off: number; len: number; what: string }[] {
  if (kind === 'control-page') {
    // The counters and flags before the console ring (vmm/control-page.ts).
    const fd = fs.openSync(stateFile, 'r');
    fs.closeSync(fd);
    return [{ off: CONTROL_OFFSET, len: Math.min(CONTROL_SIZE, 256 * 1024), what: 'control page' }];
  }
  const fd = fs.openSync(stateFile, 'r');
  const bytes = new Uint8Array(new ArrayBuffer(StatePage.layoutSize()));
  fs.readSync(fd, bytes, 0, bytes.length, DEVICE_PAGE_OFFSET);
  fs.closeSync(fd);
  const page = StatePage.attach(bytes);
  const out: { off: number; len: number; what: string }[] = [];
  for (let i = 0; i < page.numDevices; i++) {
    const d = page.device(i);
    const r = d.layout();
    if (kind === 'state-page') {
      out.push({ off: DEVICE_PAGE_OFFSET + r.staticOffset, len: r.staticLength, what: `device ${i} static block` });
      out.push({ off: DEVICE_PAGE_OFFSET + r.regsOffset, len: r.regsLength, what: `device ${i} registers` });
    } else {
      for (let q = 0; q < d.numQueues; q++) {
        out.push({ off: DEVICE_PAGE_OFFSET + r.progressOffset(q), len: r.progressLength, what: `device ${i} queue ${q} progress` });
      }
    }
  }
  if (kind === 'state-page') out.push({ off: DEVICE_PAGE_OFFSET, len: 64, what: 'header' });
  if (!out.length) throw new InjectError(`the VM has no virtio device: no ${kind} to corrupt`);
  return out;
}

function flipState(supervisor: number, kind: 'state-page' | 'queue-progress' | 'control-page', rng: Rng): Omit<InjectResult, 'component' | 'kind' | 'pid'> {
  const file = supervisorMemfd(supervisor, 'state');
  const ranges = stateRanges(file, kind);
  const r = rng.pick(ranges);
  const off = r.off + rng.int(r.len);
  const bit = rng.int(8);
  const [before, after] = flipFile(file, off, bit);
  return { target: `${r.what} (state memfd +${hex(off)})`, address: hex(off), bit: (off & 3) * 8 + bit, before: hex(before), after: hex(after) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Kills the vmm, waits for its keeper to save, and flips one bit of the saved snapshot (header
 * fields the restore reads, vCPU and VM records) before a new vmm claims it.
 */
async function flipSnapshot(p: ComponentPids, ncpus: number, rng: Rng): Promise<Omit<InjectResult, 'component' | 'kind' | 'pid'>> {
  const file = supervisorMemfd(p.supervisor, 'snap');
  const fd = fs.openSync(file, 'r+');
  const view = SnapshotView.map(fd, ncpus, true);
  fs.closeSync(fd);
  const gen = view.generation;
  process.kill(p.vmm, 'SIGKILL');
  const t0 = Date.now();
  while (!(view.generation !== gen && view.stateName === 'saved')) {
    if (Date.now() - t0 > 2000) throw new InjectError(`the keeper did not save within 2 s (state ${view.stateName})`);
    await sleep(0);
  }
  // Everything after the journals (the vCPU and VM records the keeper just wrote), or the header.
  const total = snapshotSize(ncpus);
  const body = view.journalOffset + ncpus * SNAP.JOURNAL_SIZE;
  const inHeader = rng.int(4) === 0;
  const off = inHeader ? rng.int(SNAP.HEADER_SIZE) : body + rng.int(total - body);
  const bit = rng.int(8);
  const [before, after] = flipFile(file, off, bit);
  return { target: `snapshot ${inHeader ? 'header' : 'saved records'} +${hex(off)} (vmm ${p.vmm} killed; generation ${view.generation})`, address: hex(off), bit: (off & 3) * 8 + bit, before: hex(before), after: hex(after) };
}

// ---- a malicious guest's rings (guest RAM, through the supervisor's RAM memfd) ----

/** What a malicious guest can write into its own split virtqueue (`ring`). */
export const RING_ATTACKS = ['avail-jump', 'avail-head', 'desc-oob', 'desc-loop', 'desc-huge'] as const;
export type RingAttack = (typeof RING_ATTACKS)[number];

/** Guest RAM as the file the supervisor's RAM memfd is (slot after slot, contracts/guest-ram.ts): read and write by guest-physical address. */
class GuestRamFile {
  private readonly regions: { gpa: number; size: number; off: number }[] = [];
  readonly bytes: number;
  constructor(readonly fd: number) {
    this.bytes = fs.fstatSync(fd).size;
    let off = 0;
    for (const r of ramRegions(this.bytes)) { this.regions.push({ ...r, off }); off += r.size; }
  }
  private at(gpa: number, len: number): number {
    const r = this.regions.find((x) => gpa >= x.gpa && gpa + len <= x.gpa + x.size);
    if (!r) throw new InjectError(`guest address 0x${gpa.toString(16)}+${len} is not RAM`);
    return r.off + gpa - r.gpa;
  }
  read(gpa: number, len: number): Buffer { const b = Buffer.alloc(len); fs.readSync(this.fd, b, 0, len, this.at(gpa, len)); return b; }
  write(gpa: number, b: Buffer): void { fs.writeSync(this.fd, b, 0, b.length, this.at(gpa, b.length)); }
  u16(gpa: number): number { return this.read(gpa, 2).readUInt16LE(0); }
  setU16(gpa: number, v: number): void { const b = Buffer.alloc(2); b.writeUInt16LE(v & 0xffff); this.write(gpa, b); }
  /** The end of guest RAM (the first address above every region). */
  get end(): number { return Math.max(...this.regions.map((r) => r.gpa + r.size)); }
}

/** The device page of the state memfd, read afresh (a copy: the devices' live state at this moment). */
function readStatePage(stateFile: string): StatePage {
  const fd = fs.openSync(stateFile, 'r');
  try {
    const bytes = new Uint8Array(new ArrayBuffer(StatePage.layoutSize()));
    fs.readSync(fd, bytes, 0, bytes.length, DEVICE_PAGE_OFFSET);
    return StatePage.attach(bytes);
  } finally {
    fs.closeSync(fd);
  }
}

function descriptor(addr: bigint, len: number, flags: number, next: number): Buffer {
  const b = Buffer.alloc(VIRTQ_DESC_SIZE);
  b.writeBigUInt64LE(addr & 0xffffffffffffffffn, 0);
  b.writeUInt32LE(len >>> 0, 8);
  b.writeUInt16LE(flags, 12);
  b.writeUInt16LE(next, 14);
  return b;
}

/**
 * Writes into a live queue of one of the driver-domain's devices what a malicious guest could
 * (`attack`, or one chosen by `rng`), the real guest's driver still running beside it:
 *   avail-jump  avail->idx set more than the queue size past the device's last_avail_idx
 *   avail-head  a new avail entry naming a head >= the queue size
 *   desc-oob    a new avail entry whose descriptor points outside guest RAM
 *   desc-loop   a new avail entry whose two descriptors chain to each other (NEXT) forever
 *   desc-huge   a new avail entry whose descriptors add up to far more than any request (4 GiB each)
 * A new entry goes at the guest's current avail->idx, with a head the guest's driver does not use (the
 * upper half of the table, not in flight), and avail->idx one past it. The guest's driver owns the
 * same ring and may overwrite it before the device looks: the write is repeated (up to `ms`) until
 * the device answered it, which is read back from the state page and the used ring: the device
 * went DEVICE_NEEDS_RESET (its queue broken), or it completed the bad head (a rejected request).
 * Each write is followed by a kick of the queue's notify eventfd, as the guest would kick. The guest's
 * own driver does not know of the entry: the request it puts in that avail slot next is not seen by
 * the device (its idx lands where the device already is), so one of its requests on that queue is lost,
 * as a guest that corrupts its own ring loses it; the used element for the bad head is one its driver
 * never made available (the guest's blk driver reports it and skips it).
 */
async function ringAttack(p: ComponentPids, rng: Rng, attack: RingAttack | undefined, ms: number): Promise<Omit<InjectResult, 'component' | 'kind' | 'pid'>> {
  const stateFile = supervisorMemfd(p.supervisor, 'state');
  const page0 = readStatePage(stateFile);
  const live: { dev: number; q: number }[] = [];
  for (let i = 0; i < page0.numDevices; i++) {
    const d = page0.device(i);
    if (!(d.status & Status.DRIVER_OK) || d.needsReset) continue;
    for (let q = 0; q < d.numQueues; q++) {
      const c = d.queueConfig(q);
      if (c?.ready && c.num >= 4 && d.progress(q).queueSize === c.num) live.push({ dev: i, q });
    }
  }
  if (!live.length) throw new InjectError('no live queue: the guest has not started a device (DRIVER_OK) or every one needs a reset');
  const { dev, q } = rng.pick(live);
  const a: RingAttack = attack ?? rng.pick(RING_ATTACKS);
  const cfg = page0.device(dev).queueConfig(q)!;
  const num = cfg.num;
  const ramFd = fs.openSync(supervisorMemfd(p.supervisor, 'ram'), 'r+');
  try {
    const ram = new GuestRamFile(ramFd);
    if (cfg.desc + descTableSize(num) > ram.end || cfg.driver + availRingSize(num) > ram.end || cfg.device + usedRingSize(num) > ram.end) {
      throw new InjectError(`device ${dev} queue ${q}'s rings are not in guest RAM`);
    }
    const availIdxAt = cfg.driver + 2;
    const usedIdxAt = cfg.device + 2;
    const inflight = (h: number) => readStatePage(stateFile).device(dev).progress(q).isInflight(h);
    // Heads the guest's driver does not use (it fills the table from 0): the upper half, not in flight.
    let head = num / 2 + rng.int(num / 2 - 1);
    for (let k = 0; k < num / 2 && inflight(head); k++) head = num / 2 + ((head + 1 - num / 2) % (num / 2 - 1));
    const other = head + 1 < num ? head + 1 : num / 2;
    let what = '';
    if (a === 'desc-oob') {
      const addr = BigInt(ram.end) + BigInt(rng.int(1 << 20)) * 4096n + (rng.int(2) ? 0n : 0xfff0000000000000n);
      ram.write(cfg.desc + head * VIRTQ_DESC_SIZE, descriptor(addr, 512, VIRTQ_DESC_F_WRITE, 0));
      what = `descriptor ${head}: 0x${addr.toString(16)}+512, outside guest RAM (it ends at 0x${ram.end.toString(16)})`;
    } else if (a === 'desc-loop') {
      ram.write(cfg.desc + head * VIRTQ_DESC_SIZE, descriptor(BigInt(cfg.desc), 16, VIRTQ_DESC_F_NEXT, other));
      ram.write(cfg.desc + other * VIRTQ_DESC_SIZE, descriptor(BigInt(cfg.desc), 16, VIRTQ_DESC_F_NEXT, head));
      what = `descriptors ${head} -> ${other} -> ${head} ... (NEXT forever)`;
    } else if (a === 'desc-huge') {
      ram.write(cfg.desc + head * VIRTQ_DESC_SIZE, descriptor(BigInt(cfg.desc), 0xfffff000, VIRTQ_DESC_F_NEXT, other));
      ram.write(cfg.desc + other * VIRTQ_DESC_SIZE, descriptor(BigInt(cfg.desc), 0xfffff000, VIRTQ_DESC_F_WRITE, 0));
      what = `descriptors ${head} -> ${other}, 0xfffff000 bytes each`;
    }
    // The guest's QueueNotify (a KVM ioeventfd the driver-domain waits on), as the guest would kick
    // after adding a buffer: the device looks even while the guest's own driver is quiet.
    const kick = () => {
      const pfd = pidfdOf.pidfdOpen(p['driver-domain']);
      if (pfd < 0) return;
      let fd = -1;
      try {
        fd = pidfdOf.pidfdGetfd(pfd, deviceFds(dev, page0.device(dev).numQueues).kick[q]);
        fs.writeSync(fd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
      } catch { /* the driver-domain is restarting: the next round kicks again */ } finally {
        if (fd >= 0) fs.closeSync(fd);
        native.close(pfd);
      }
    };
    const t0 = Date.now();
    let writes = 0;
    let before = '';
    for (;;) {
      const page = readStatePage(stateFile);
      const slot = page.device(dev);
      const prog = slot.progress(q);
      if (slot.needsReset) {
        return { target: `device ${dev} queue ${q} (size ${num}): ${a}${what ? `: ${what}` : ''} (${writes} writes)`, before, after: `DEVICE_NEEDS_RESET (status 0x${slot.status.toString(16)}, queue ${(prog.flags & 1) ? 'broken' : 'not broken'})` };
      }
      if (writes && a !== 'avail-jump' && a !== 'avail-head') {
        // The bad head completed: look for it in the used ring since the device's used idx.
        const used = ram.u16(usedIdxAt);
        for (let k = 1; k <= num && k <= ((used - 0) & 0xffff); k++) {
          const e = cfg.device + 4 + 8 * ((used - k + 0x10000) % num);
          const id = ram.read(e, 8);
          if (id.readUInt32LE(0) === head && !inflight(head)) {
            return { target: `device ${dev} queue ${q} (size ${num}): ${a}: ${what} (${writes} writes)`, before, after: `head ${head} completed by the device, used len ${id.readUInt32LE(4)} (the request rejected)` };
          }
          if (k >= 32) break;
        }
      }
      if (Date.now() - t0 > ms) throw new InjectError(`device ${dev} queue ${q}: ${a} not answered by the device within ${ms} ms (${writes} writes; the guest's driver overwrote them or the device did not look)`);
      const last = prog.lastAvailIdx;
      const avail = ram.u16(availIdxAt);
      if (!before) before = `avail idx ${avail}, device last_avail ${last}, used idx ${ram.u16(usedIdxAt)}`;
      if (a === 'avail-jump') {
        ram.setU16(availIdxAt, (last + num + 1 + rng.int(0x10000 - 2 * num - 2)) & 0xffff);
      } else if (writes === 0 || Date.now() - t0 > 100 * writes) {
        // A new entry at the guest's avail idx (as its next request would be), then the idx past it,
        // with the guest's vCPUs stopped: a guest writes its ring from its vCPUs, and an idx its own
        // driver moved between the read and the write would go backwards (the queue broken by the
        // injector, not by the request it injects).
        const bad = a === 'avail-head' ? num + rng.int(0x10000 - num) : head;
        await withVcpusStopped(p.vmm, () => {
          const at = ram.u16(availIdxAt);
          ram.setU16(cfg.driver + 4 + 2 * (at % num), bad);
          ram.setU16(availIdxAt, (at + 1) & 0xffff);
          if (a === 'avail-head') what = `avail entry ${at} names head ${bad} (queue size ${num})`;
        });
      } else { await sleep(1); continue; }
      writes++;
      kick();
      await sleep(1);
    }
  } finally {
    fs.closeSync(ramFd);
  }
}

// ---- messages ----

/** A garbled or truncated message, as bytes a broken sender might put on a Node IPC channel. */
function garbledIpc(rng: Rng): { what: string; bytes: Buffer } {
  const junk = Buffer.from(Array.from({ length: 1 + rng.int(64) }, () => rng.int(256)));
  switch (rng.int(4)) {
    case 0: return { what: 'random bytes and a newline', bytes: Buffer.concat([junk.filter((b) => b !== 10), Buffer.from('\n')]) };
    case 1: return { what: 'a well-formed envelope around random protobuf bytes', bytes: Buffer.from(`${JSON.stringify({ pb: junk.toString('base64') })}\n`) };
    case 2: {
      // A ready message cut short: field 1 (ready), length prefix larger than what follows.
      const pb = Buffer.from([0x0a, 0x20, 0x08, 0x01, 0x10]);
      return { what: 'a truncated protobuf message', bytes: Buffer.from(`${JSON.stringify({ pb: pb.toString('base64') })}\n`) };
    }
    default: return { what: 'an envelope of the wrong shape', bytes: Buffer.from(`${JSON.stringify({ pb: rng.int(1000), cmd: 'NODE_x' })}\n`) };
  }
}

function garbledHttp(rng: Rng): { what: string; bytes: Buffer } {
  switch (rng.int(3)) {
    case 0: return { what: 'random bytes', bytes: Buffer.from(Array.from({ length: 1 + rng.int(256) }, () => rng.int(256))) };
    case 1: return { what: 'a truncated request', bytes: Buffer.from('POST /v1/vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"a"') };
    default: return { what: 'a request with a garbled JSON body', bytes: Buffer.from('PUT /v1/vm/labels/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nIdempotency-Key: k\r\nContent-Length: 9\r\n\r\n{"value":') };
  }
}

async function sendMessage(component: InjectComponent, pid: number, socket: string, rng: Rng): Promise<Omit<InjectResult, 'component' | 'kind' | 'pid'>> {
  if (component === 'priv-domain' && rng.int(2) === 0) {
    const m = garbledHttp(rng);
    await new Promise<void>((resolve) => {
      const s = net.connect(socket, () => { s.end(m.bytes); });
      s.on('error', () => resolve());
      s.on('close', () => resolve());
      s.setTimeout(1000, () => s.destroy());
    });
    return { target: `the priv-domain's API socket: ${m.what}`, before: m.bytes.subarray(0, 32).toString('hex') };
  }
  // The component's end of its IPC channel (fd 3): what we write there reaches the supervisor as if the component sent it.
  const m = garbledIpc(rng);
  const pidfd = pidfdOf.pidfdOpen(pid);
  if (pidfd < 0) throw new InjectError(`pidfd_open(${pid}): errno ${-pidfd}`);
  let fd = -1;
  try {
    fd = pidfdOf.pidfdGetfd(pidfd, FD.IPC);
    fs.writeSync(fd, m.bytes);
  } finally {
    if (fd >= 0) fs.closeSync(fd);
    native.close(pidfd);
  }
  return { target: `${component} -> supervisor IPC channel: ${m.what}`, before: m.bytes.subarray(0, 32).toString('hex') };
}

// ---- the disk ----

/** Cuts the driver-domain's first disk image to a random length below its size (a multiple of 4 KiB). */
function truncateDisk(dd: number, rng: Rng): Omit<InjectResult, 'component' | 'kind' | 'pid'> {
  const link = fs.readlinkSync(`/proc/${dd}/fd/${DEVICE_FD_BASE}`);
  const st = fs.statSync(`/proc/${dd}/fd/${DEVICE_FD_BASE}`);
  if (!st.isFile()) throw new InjectError(`the driver-domain's disk ${link} is not a regular file`);
  const len = Math.floor(rng.float() * st.size / 4096) * 4096;
  fs.truncateSync(`/proc/${dd}/fd/${DEVICE_FD_BASE}`, len);
  return { target: `disk image ${link}`, before: hex(st.size), after: hex(fs.statSync(`/proc/${dd}/fd/${DEVICE_FD_BASE}`).size) };
}

/** statfs f_type of tmpfs: the only file system disk-full fills. */
const TMPFS_MAGIC = 0x01021994;
/** The largest file system disk-full fills (bytes): a dedicated one, never the host's. */
const DISK_FULL_MAX_FS = 1 << 30;

/**
 * Fills the file system under the driver-domain's first disk image with a filler file next to it
 * (writes until ENOSPC), holds it full for `holdMs`, then removes the filler. Refuses a file system
 * that is not a tmpfs of at most 1 GiB: the host's own disks are never filled.
 */
async function fillDisk(dd: number, holdMs: number): Promise<Omit<InjectResult, 'component' | 'kind' | 'pid'>> {
  const link = fs.readlinkSync(`/proc/${dd}/fd/${DEVICE_FD_BASE}`);
  const dir = link.slice(0, link.lastIndexOf('/')) || '/';
  const st = fs.statfsSync(dir);
  const size = st.blocks * st.bsize;
  if (st.type !== TMPFS_MAGIC || size > DISK_FULL_MAX_FS) {
    throw new InjectError(`the disk image ${link} is not on a small dedicated tmpfs (type 0x${st.type.toString(16)}, ${size} bytes): disk-full fills only such a file system`);
  }
  const filler = `${dir}/.tsvmm-inject-fill-${process.pid}`;
  const fd = fs.openSync(filler, 'wx', 0o600);
  const chunk = Buffer.alloc(1 << 20);
  let filled = 0;
  const fill = (len: number) => {
    for (;;) {
      try {
        const n = fs.writeSync(fd, chunk, 0, len);
        if (n <= 0) return;
        filled += n;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') return;
        throw e;
      }
    }
  };
  try {
    fill(chunk.length);
    fill(4096); // the last partial megabyte, page by page
    const free = fs.statfsSync(dir).bavail * st.bsize;
    await sleep(holdMs);
    return { target: `tmpfs under ${link}: ${filled} bytes filled (${free} left) for ${holdMs} ms`, before: hex(size), after: hex(free) };
  } finally {
    fs.closeSync(fd);
    fs.rmSync(filler, { force: true });
  }
}

// ---- the disk answering EIO (the driver-domain's io_uring completion) ----

const IORING_OFF_CQ_RING = 0x8000000;
const IORING_OFF_SQES = 0x10000000;
const EIO = 5;

/**
 * The driver-domain's io_uring for disk `disk`, mapped into this process (shared: the same rings):
 * the one of its io_uring fds whose SQEs name the disk's backend fd (a TAP's TX ring names the TAP's).
 */
function diskRing(dd: number, disk: number): { cq: ArrayBuffer; head: number; tail: number; mask: number; cqes: number; ringFd: number } {
  const k = native.uringConstants;
  // This kernel's ring offsets: from a ring of our own of the same size (the layout is the kernel's).
  const probe = native.uringSetup(256, 0);
  native.close(probe.fd);
  const backend = DEVICE_FD_BASE + disk * DEVICE_FD_STRIDE;
  const pfd = pidfdOf.pidfdOpen(dd);
  if (pfd < 0) throw new InjectError(`pidfd_open(${dd}): errno ${-pfd}`);
  try {
    for (const f of fs.readdirSync(`/proc/${dd}/fd`)) {
      let link = '';
      try { link = fs.readlinkSync(`/proc/${dd}/fd/${f}`); } catch { continue; }
      if (link !== 'anon_inode:[io_uring]') continue;
      const fd = pidfdOf.pidfdGetfd(pfd, Number(f));
      try {
        const info = fs.readFileSync(`/proc/${dd}/fdinfo/${f}`, 'latin1');
        const sqEntries = Number(/SqMask:\s*(0x[0-9a-f]+)/.exec(info)?.[1] ?? 0) + 1;
        const cqEntries = Number(/CqMask:\s*(0x[0-9a-f]+)/.exec(info)?.[1] ?? 0) + 1;
        const sqes = new DataView(native.mmap(fd, sqEntries * k.SQE_SIZE, IORING_OFF_SQES, false));
        let mine = false;
        for (let i = 0; i < sqEntries && !mine; i++) mine = sqes.getInt32(i * k.SQE_SIZE + k.SQE_FD, true) === backend;
        if (!mine) continue;
        const cq = native.mmap(fd, probe.cqOff.cqes + cqEntries * k.CQE_SIZE, IORING_OFF_CQ_RING, true);
        return { cq, head: probe.cqOff.head, tail: probe.cqOff.tail, mask: cqEntries - 1, cqes: probe.cqOff.cqes, ringFd: Number(f) };
      } finally {
        native.close(fd);
      }
    }
  } finally {
    native.close(pfd);
  }
  throw new InjectError(`the driver-domain (pid ${dd}) has no io_uring for disk ${disk} (io=threads, or no disk)`);
}

/**
 * The disk answers one request with EIO: the driver-domain's threads are stopped (ptrace), and a
 * completion the kernel posted in the disk's io_uring CQ that the driver-domain has not reaped yet
 * gets res = -EIO; then they go on. To the driver-domain this is the host's disk failing that one
 * read or write (the error a bad sector or a failing device-mapper target returns): it completes the
 * guest's request with VIRTIO_BLK_S_IOERR. Simulated: the data really was transferred (a write
 * reached the file, a read filled the buffer), only the result is an error. Retried (stop, look,
 * go on) until a completion was there to change, up to `ms`.
 */
async function diskEio(dd: number, ms: number): Promise<Omit<InjectResult, 'component' | 'kind' | 'pid'>> {
  const r = diskRing(dd, 0);
  const cq = new Uint32Array(r.cq);
  const cqi = new Int32Array(r.cq);
  const k = native.uringConstants;
  const t0 = Date.now();
  let tries = 0;
  for (;;) {
    tries++;
    const stopped: number[] = [];
    try {
      for (const tid of threadsOf(dd)) {
        try {
          native.ptraceSeize(tid);
        } catch { continue; } // an io_uring worker: not traceable
        stopped.push(tid);
        native.ptraceInterrupt(tid);
      }
      for (const tid of stopped) native.ptraceWait(tid);
      const head = Atomics.load(cq, r.head / 4);
      const tail = Atomics.load(cq, r.tail / 4);
      if (tail !== head) {
        // The newest unreaped completion (the least likely to be half-read by a reaper stopped mid-batch).
        const e = r.cqes + ((tail - 1) & r.mask) * k.CQE_SIZE;
        const res = cqi[(e + k.CQE_RES) / 4];
        if (res >= 0) {
          const ud = BigInt(cq[(e + k.CQE_USER_DATA) / 4]) | (BigInt(cq[(e + k.CQE_USER_DATA) / 4 + 1]) << 32n);
          cqi[(e + k.CQE_RES) / 4] = -EIO;
          const after = cqi[(e + k.CQE_RES) / 4];
          return { target: `disk 0 io_uring (fd ${r.ringFd}) CQE ${(tail - 1) >>> 0} (user_data ${hex(ud)}; ${(tail - head) >>> 0} unreaped; try ${tries})`, address: hex(e), before: String(res), after: String(after) };
        }
      }
    } finally {
      for (const tid of stopped) { try { native.ptraceDetach(tid); } catch { /* gone */ } }
    }
    if (Date.now() - t0 > ms) throw new InjectError(`no unreaped disk completion seen in ${tries} stops over ${ms} ms (the disk idle?)`);
    await sleep(2 + (tries % 5));
  }
}

// ---- the TAP vanishing ----

/**
 * Deletes the TAP device a net device of the driver-domain is attached to (`ip link del`), in the
 * network namespace it is in (the host's, or one under /run/netns), as an administrator or a
 * crashed network manager would, while the driver-domain keeps its fd. Read back: the device is
 * gone from that namespace.
 */
function tapVanish(dd: number, rng: Rng): Omit<InjectResult, 'component' | 'kind' | 'pid'> {
  const taps: { fd: number; name: string }[] = [];
  for (const f of fs.readdirSync(`/proc/${dd}/fd`)) {
    const fd = Number(f);
    if (fd < DEVICE_FD_BASE || (fd - DEVICE_FD_BASE) % DEVICE_FD_STRIDE !== 0) continue;
    let info = '';
    try { info = fs.readFileSync(`/proc/${dd}/fdinfo/${f}`, 'latin1'); } catch { continue; }
    const m = /^iff:\s*(\S+)/m.exec(info);
    if (m) taps.push({ fd, name: m[1] });
  }
  if (!taps.length) throw new InjectError(`the driver-domain (pid ${dd}) has no TAP (the VM has no --net tap=...)`);
  const t = rng.pick(taps);
  const namespaces = [undefined, ...(fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : [])];
  for (const ns of namespaces) {
    const ip = (args: string[]) => execFileSync('ip', [...(ns ? ['-n', ns] : []), ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 }).toString();
    let shown = '';
    try { shown = ip(['-o', 'link', 'show', 'dev', t.name]); } catch { continue; }
    ip(['link', 'del', 'dev', t.name]);
    let gone = false;
    try { ip(['-o', 'link', 'show', 'dev', t.name]); } catch { gone = true; }
    if (!gone) throw new InjectError(`TAP ${t.name} is still there after ip link del`);
    return { target: `TAP ${t.name} (driver-domain fd ${t.fd}${ns ? `, network namespace ${ns}` : ''})`, before: shown.trim().split(/\s+/).slice(0, 3).join(' '), after: 'deleted' };
  }
  throw new InjectError(`TAP ${t.name} is in no network namespace this host names (the host's, /run/netns)`);
}

// ---- one injection ----

export interface InjectOptions {
  seed: number | bigint;
  /** The VM's vCPU count (snapshot layout). */
  cpus?: number;
  /** Its API socket (message into the priv-domain). */
  socket?: string;
  /** disk-full: how long the file system stays full (ms; default 2000). */
  holdMs?: number;
  /** ring: this attack instead of a random one. ring, eio: how long to keep trying until the fault landed (ms, default 3000). */
  ringAttack?: RingAttack;
  waitMs?: number;
  /** Tests: a fixed register / bit instead of a random one. */
  reg?: string;
  bit?: number;
}

const ADDON_RE = /tsvmm_kvm\.node$/;
const pidfdOf = native as unknown as NativePidfd & { pidfdOpen(pid: number): number };

export async function inject(component: InjectComponent, kind: InjectKind, p: ComponentPids, o: InjectOptions): Promise<InjectResult> {
  if (!kindsFor(component).includes(kind)) throw new InjectError(`fault kind ${kind} does not apply to the ${component} (it takes: ${kindsFor(component).join(', ')})`);
  const rng = new Rng(o.seed);
  const pid = component.startsWith('vmm') ? p.vmm : p[component as keyof ComponentPids];
  if (!pid) throw new InjectError(`the ${component} is not running`);
  const base = { component, kind, pid };
  switch (kind) {
    case 'SIGKILL': case 'SIGSEGV': case 'SIGABRT': case 'SIGSTOP':
      process.kill(pid, kind);
      return { ...base, target: `pid ${pid}` };
    case 'reg': {
      const tids = component === 'vmm-vcpu' ? vcpuThreadsOf(pid) : component === 'vmm-main' ? [pid] : threadsOf(pid);
      if (!tids.length) throw new InjectError(`no ${component === 'vmm-vcpu' ? 'vCPU ' : ''}thread of pid ${pid} found`);
      const tid = rng.pick(tids);
      const reg = o.reg ?? rng.pick(FLIP_REGS);
      const bit = o.bit ?? (reg === 'eflags' ? rng.pick([0, 2, 4, 6, 7, 8, 10, 11]) : rng.int(64));
      const [before, after] = flipRegister(tid, reg, bit);
      return { ...base, tid, target: reg, bit, before: hex(before), after: hex(after) };
    }
    case 'mem':
      return { ...base, ...flipInMappings(pid, rng, (m) => m.perms.startsWith('rw') && !m.path.includes('tsvmm-ram-') && !/^\[(vvar|vsyscall|vdso)/.test(m.path), 'writable') };
    case 'code-addon':
      return { ...base, ...flipInMappings(pid, rng, (m) => m.perms.includes('x') && ADDON_RE.test(m.path), 'addon text') };
    case 'code-node':
      return { ...base, ...flipInMappings(pid, rng, (m) => m.perms.includes('x') && /\/node$/.test(m.path), 'node text') };
    case 'state-page': case 'queue-progress': case 'control-page':
      return { ...base, ...flipState(p.supervisor, kind, rng) };
    case 'snapshot':
      return { ...base, ...(await flipSnapshot(p, o.cpus ?? 1, rng)) };
    case 'message':
      return { ...base, ...(await sendMessage(component, pid, o.socket ?? '', rng)) };
    case 'disk-truncate':
      return { ...base, ...truncateDisk(pid, rng) };
    case 'disk-full':
      return { ...base, ...(await fillDisk(pid, o.holdMs ?? 2000)) };
    case 'ring':
      return { ...base, ...(await ringAttack(p, rng, o.ringAttack, o.waitMs ?? 3000)) };
    case 'tap-vanish':
      return { ...base, ...tapVanish(pid, rng) };
    case 'eio':
      return { ...base, ...(await diskEio(pid, o.waitMs ?? 3000)) };
  }
}

/** Component pids from the API's component list (`GET /v1/vm/components`). */
export function pidsFrom(comps: { name: string; pid: number }[]): ComponentPids {
  const get = (n: string) => comps.find((c) => c.name === n)?.pid ?? 0;
  return { supervisor: get('supervisor'), vmm: get('vmm'), keeper: get('keeper'), 'driver-domain': get('driver-domain'), 'priv-domain': get('priv-domain') };
}
