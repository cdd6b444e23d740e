/**
 * The typed face of the native addon (native/kvm/addon.cc). Nothing here
 * adds behaviour: it names the functions and the ABI constants the addon
 * exports from <linux/kvm.h>.
 */
import * as path from 'path';

export interface NativeKvm {
  open(path: string, flags: number): number;
  close(fd: number): void;
  /** ioctl with an integer argument or a pointer to the bytes of a view. */
  ioctl(fd: number, request: number, arg?: number | bigint | ArrayBufferView | ArrayBuffer): number;
  /** KVM_RUN: 0 on an exit, -errno on failure or a kick (-EINTR). */
  run(vcpuFd: number): number;
  /** The calling thread's runFast configuration (native/kvm/fastexit.cc): its kvm_run, journal, counters, port rules. */
  fastExitInit(cfg: FastExitConfig): void;
  /** KVM_RUN until an exit the port and MMIO rules do not answer: 0 (that exit is in kvm_run) or -errno (a kick: -EINTR). */
  runFast(vcpuFd: number): number;
  mmap(fd: number, length: number, offset: number, writable?: boolean): ArrayBuffer;
  address(view: ArrayBufferView | ArrayBuffer): bigint;
  /** madvise(MADV_HUGEPAGE) over a mapping: 0, or -errno (advice only; callers may ignore it). */
  madviseHugepage(buffer: ArrayBuffer): number;
  /** madvise(MADV_POPULATE_READ, or _WRITE) over the whole pages of a view: 0, or -errno. */
  madvisePopulate(view: ArrayBufferView, write: boolean): number;
  /** Private anonymous memory (mmap), unmapped when the buffer is collected. */
  mmapAnon(length: number): ArrayBuffer;
  /** malloc_trim(0): 1 if free malloc memory went back to the kernel, else 0. (Absent from an addon built before it.) */
  mallocTrim?(): number;
  memfdCreate(name: string, size: number): number;
  eventfd(initval: number, nonblock?: boolean): number;
  fdSize(fd: number): number;
  /** lseek SEEK_DATA (hole: SEEK_HOLE): the next populated (unpopulated) offset at or after `offset`; -1: no more data. */
  seekData(fd: number, offset: number, hole: boolean): number;
  /** CRC-32C of the bytes (hardware crc32 where the CPU has it); `prev` continues an earlier one. */
  crc32c(view: ArrayBufferView, prev?: number): number;
  gettid(): number;
  installKick(): number;
  kick(tid: number): void;
  /** Every x86-64 system call: name -> number (from <asm/unistd_64.h>, native/kvm/seccomp.c). */
  syscallTable(): Record<string, number>;
  /**
   * no_new_privs, then a seccomp allowlist on every thread (TSYNC); mode 1: kill the process, 2: log.
   * A rule: a call's number (allowed), [nr, 1, errno] (fails with errno), [nr, 2, arg, mask]
   * (allowed when argument `arg` has every bit of `mask`), [nr, 3, arg, value] (allowed when
   * argument `arg` is `value`).
   */
  seccompInstall(rules: (number | number[])[], mode: 1 | 2): void;
  /** <sched.h>'s, for the clone rule. */
  CLONE_THREAD: number;
  /** prctl(PR_SET_DUMPABLE). */
  setDumpable(on: boolean): void;
  /** socket(AF_UNIX) bound to `path` (mode 0600) and listening: the fd. */
  unixListen(path: string, backlog: number): number;
  /** A connected AF_UNIX stream pair, close-on-exec. */
  socketPair(): [number, number];
  constants: Record<string, number>;
  /** read(2) that returns -errno instead of throwing (native/kvm/fdio.cc): no exception per EAGAIN. */
  fdRead(fd: number, buf: Uint8Array): number;
  /** writev(2) that returns -errno instead of throwing (native/kvm/fdio.cc). */
  fdWritev(fd: number, bufs: Uint8Array[]): number;
  /** [memory, file offset] alignment O_DIRECT needs on `fd` (statx STATX_DIOALIGN; [0, 0]: not known), or -errno (native/kvm/fdio.cc). */
  dioAlign(fd: number): [number, number] | number;
  // Fault injection (native/kvm/ptrace.cc; used by `tsvmm inject`, cli/inject.ts).
  ptraceSeize(tid: number): void;
  ptraceInterrupt(tid: number): void;
  /** waitpid(tid, __WALL): the raw wait status. */
  ptraceWait(tid: number): number;
  /** PTRACE_GETREGS: the bytes of struct user_regs_struct. */
  ptraceGetRegs(tid: number): Buffer;
  ptraceSetRegs(tid: number, regs: Buffer): void;
  ptraceDetach(tid: number): void;
  /** Byte offsets of the general registers, RIP, RSP and EFLAGS in struct user_regs_struct. */
  ptraceRegOffsets: Record<string, number>;
  ptraceRegsSize: number;
}

/**
 * A port whose exits need no policy (native/kvm/fastexit.cc): `write`: an OUT of `size` bytes has no
 * effect; else an IN answers `value`, OR `flag` if the u32 words at addresses `a` and `b` differ.
 */
export interface PortRule { port: number; size: number; write: boolean; value?: number; flag?: number; a?: bigint; b?: bigint }

/**
 * A 4-byte MMIO register the native loop answers on an atomic u32 word (`word`, an address):
 * a read (`write` false) returns the word & `mask`; a write (an ACK) clears the written bits of the
 * word's low half and adds `one` to it, in one compare-and-swap (contracts/state-page.ts ISR_WORD).
 */
export interface MmioRule { gpa: number; write: boolean; word: bigint; mask: number; one?: number }

export interface FastExitConfig {
  run: bigint;
  /** The exit journal's commit word (contracts/snapshot.ts Journal.commit); absent: no journal. */
  commit?: bigint;
  /** The journal's ack-intent word and its flag (Journal.ackIntent, SNAP.ACK_INTENT), with commit. */
  ackIntent?: bigint;
  ackFlag?: number;
  ackShift?: number;
  /** Exit counters by reason, Float64 slots. */
  counters?: bigint;
  ncounters?: number;
  /** Counter slots for the exits the loop itself answered (contracts/control-page.ts NATIVE_EXIT_SLOT). */
  nativeIoSlot?: number;
  nativeMmioSlot?: number;
  rules: PortRule[];
  mmio?: MmioRule[];
  /** Test hook (TSVMM_TEST_HOOKS only): SIGKILL the vmm in the n-th MMIO write rule answered, before or after it applied. */
  dieAtWrite?: { n: number; after: boolean };
}

/** What io_uring_setup returns, with the rings already mapped (native/kvm/uring.cc). */
export interface UringSetup {
  fd: number; features: number; flags: number; sqEntries: number; cqEntries: number;
  sq: ArrayBuffer; cq: ArrayBuffer; sqes: ArrayBuffer; sqOff: Record<string, number>; cqOff: Record<string, number>;
}

/** io_uring over raw syscalls (native/kvm/uring.cc); used by virtio/io-uring.ts. */
export interface NativeUring {
  uringSetup(entries: number, flags: number): UringSetup;
  uringEnter(fd: number, toSubmit: number, minComplete: number, flags: number): number;
  uringRegisterEventfd(fd: number, eventfd: number, asyncOnly: boolean): number;
  uringRegisterIowqMaxWorkers(fd: number, bounded: number, unbounded: number): number;
  /** Opcodes, flags and SQE/CQE field offsets from <linux/io_uring.h>. */
  uringConstants: Record<string, number>;
}

/** The fd poller (native/kvm/poller.cc): uv_poll watches on the JS thread's event loop. */
export interface NativePoller {
  pollerStart(cb: (tag: number, count: number) => void): void;
  pollerAdd(fd: number, tag: number, isEventfd: boolean): void;
  pollerRemove(fd: number): void;
}

/** Everything the addon exports but the keeper's and the restore's functions (contracts/snapshot.ts). */
export type NativeAddon = NativeKvm & NativeUring & NativePoller;

function load(): NativeAddon {
  // The repo root is the first directory above this file with build/Release in it: dist/native/kvm
  // (tsc output), dist/<component> (an esbuild bundle, scripts/bundle.js) or native/kvm (sources).
  for (let dir = __dirname, up = 0; up < 4; dir = path.dirname(dir), up++) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      return require(path.join(dir, 'build', 'Release', 'tsvmm_kvm.node')) as NativeAddon;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  throw new Error('the native addon build/Release/tsvmm_kvm.node is missing: run `npm install`');
}

export const native: NativeAddon = load();

/** An ABI constant from <linux/kvm.h>; throws if the addon does not export it. */
export function abi(name: string): number {
  const v = native.constants[name];
  if (v === undefined) throw new Error(`native addon does not export ${name}`);
  return v;
}

/** True for errors thrown by the addon, with their errno name. */
export function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : undefined;
}

/** ioctl by ABI name; a failure names the ioctl (e.g. "KVM_SET_SREGS: Invalid argument") and keeps `code`. */
export function ioctl(fd: number, name: string, arg?: number | bigint | ArrayBufferView | ArrayBuffer): number {
  try {
    return native.ioctl(fd, abi(name), arg);
  } catch (e) {
    const err = e as Error & { code?: string };
    const wrapped = new Error(`${name}: ${err.message.replace(/^ioctl: /, '')}`) as Error & { code?: string };
    wrapped.code = err.code;
    throw wrapped;
  }
}

/** The poller's functions, by their own name at call sites. */
export const poller: NativePoller = native;
