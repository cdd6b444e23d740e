/**
 * One vCPU: a worker thread that creates its vCPU, sets it up, and runs the
 * hot loop KVM_RUN -> handle exit -> KVM_RUN. Exits that end the VM (power
 * off, triple fault, internal error) are reported to the vmm main thread.
 */
import * as fs from 'fs';
import { parentPort, workerData } from 'worker_threads';
import { native } from '../native/kvm';
import { Vcpu } from '../kvm/vcpu';
import { Vm } from '../kvm/vm';
import { EXIT, EXIT_NAME, INTERNAL_SUBERROR, RUN, SYSTEM_EVENT } from '../kvm/run';
import { CpuidEntry, Regs, Sregs } from '../kvm/structs';
import { PLATFORM_PAGE_SIZE, PlatformPage } from '../contracts/platform-page';
import { COM1_BASE, COM1_IRQ, Serial } from './serial';
import { Platform, PlatformEvent } from './platform';
import { GedRegister } from './ged';
import { describeVcpu } from './vcpu-report';
import { vcpuCpuid } from './cpuid';
import { DeviceEntry } from '../contracts/device-list';
import { ISR_WORD, mapDevicePage } from '../contracts/state-page';
import { VirtioMmioTransport } from '../virtio/virtio-mmio';
import { MmioReg } from '../contracts/virtio-mmio-layout';
import { Journal, keeper, RestoreConfig, restoreFailure, SNAP, SnapshotView } from '../contracts/snapshot';
import { replayPendingWrite, SerialLineJournal } from './restore';
import { ControlPage, NATIVE_EXIT_SLOT } from '../contracts/control-page';
import { parkIfPaused } from './pause';
import { componentLogger } from '../contracts/log';
import { START_DEBUG, startPhase } from '../contracts/start-trace';
import { CoalescedRing, coalescePorts, RING_MAX } from './coalesced';

export interface VcpuThreadData {
  vmFd: number;
  /** Created by the vmm main thread before any vCPU runs, so no INIT/SIPI can target a missing vCPU. */
  vcpuFd: number;
  id: number;
  mmapSize: number;
  supportedCpuid: CpuidEntry[];
  cpus: number;
  /** The BSP's entry state; APs wait for INIT/SIPI. */
  boot?: { regs: Partial<Regs>; sregs: Partial<Sregs> };
  stateFd: number;
  outFd: number;
  /** Virtio devices whose transport registers this vCPU emulates. */
  devices: DeviceEntry[];
  /** Shared exit counters: [reason] += 1 (Float64 slots). */
  counters: SharedArrayBuffer;
  /** The snapshot memfd: this vCPU's exit journal and serial line live there (contracts/snapshot.ts). */
  snapFd: number;
  /** CPUID and the initial (or restored) state were set by the main thread before the keeper was armed. */
  prepared?: boolean;
  /** Pause flag shared with the main thread (vmm/pause.ts). */
  pause?: SharedArrayBuffer;
  /**
   * Park (after setting up) until go[0] != 0: the vCPUs are released once the keeper is armed, by the
   * main thread or by a warm standby's native takeover (a FUTEX_WAKE, so the wait is a futex too).
   */
  go?: SharedArrayBuffer;
  /** This vmm resumed a snapshot: before its first KVM_RUN, the vCPU replays its pending write, once. */
  restored?: boolean;
  /** A warm standby's thread: it has time to spare before parking. */
  standby?: boolean;
  /**
   * A warm standby's vCPU 0: instead of parking, it waits in the native takeover (keeper.takeover,
   * native/kvm/restore.c), which restores the dead vmm's snapshot into this VM, arms the keeper and
   * releases every vCPU; this thread then runs the guest with no other thread to wake first.
   */
  takeover?: Omit<RestoreConfig, 'snap'> & { notifyFd: number };
  /**
   * Test hook (TSVMM_TEST_HOOKS=1, TSVMM_TEST_DIE_MMIO="OFFSET:N[:before|after]", first vmm only):
   * SIGKILL this vmm in the middle of handling the Nth guest MMIO write to virtio register OFFSET
   * (of any virtio device): after the device model applied it (default) or before, and before the
   * exit is marked handled, so the next vmm must replay it.
   */
  dieAtMmio?: string;
  /** COM1's THR is coalesced (vmm/coalesced.ts): this vCPU drains the VM's ring (one vCPU only). */
  coalesced?: boolean;
}

export type VcpuThreadMessage =
  | { kind: 'started'; id: number; tid: number; ns: bigint }
  | { kind: 'parked'; id: number }
  | { kind: 'exit'; code: number; reason: string }
  | { kind: 'fatal'; message: string }
  /** This vmm's own state is corrupt (the guest's is not): it dies, and the keeper's save of the guest is restored. */
  | { kind: 'corrupt'; message: string };

/** Whether `errno` is one the kernel returns: 1-133, and its restart codes (512-530), seen under ptrace. */
const kernelErrno = (errno: number) => (errno >= 1 && errno <= 133) || (errno >= 512 && errno <= 530);

/**
 * A u64 field of kvm_run as a number, without allocating a BigInt: the hot
 * loop should not feed the GC.
 */
function u64(v: DataView, at: number): number {
  return v.getUint32(at, true) + v.getUint32(at + 4, true) * 0x1_0000_0000;
}

const EINTR = 4;
const EAGAIN = 11;

function main(d: VcpuThreadData): void {
  const post = (m: VcpuThreadMessage) => parentPort!.postMessage(m);
  const vm = new Vm(d.vmFd);
  const vcpu = new Vcpu(d.vcpuFd, d.id, d.mmapSize);
  if (!d.prepared) {
    vcpu.setCpuid(vcpuCpuid(d.supportedCpuid, d.id, d.cpus, vcpu.tscKhz()));
    if (d.boot) {
      vcpu.setSregs(d.boot.sregs);
      vcpu.setRegs(d.boot.regs);
    }
  }
  native.installKick();

  const page = new PlatformPage(native.mmap(d.stateFd, PLATFORM_PAGE_SIZE, 0, true));
  const snap = SnapshotView.map(d.snapFd, d.cpus);
  // Everything the loop needs is built before parking; the journal is read after (it belongs to
  // the vmm this one replaces until the go).
  let journal!: SerialLineJournal;
  // COM1's THR writes that KVM coalesced (vmm/coalesced.ts): replayed through the UART before any
  // other exit is handled, and before the line is flushed, each committed with the line.
  const ring = d.coalesced ? CoalescedRing.map(d.vcpuFd) : undefined;
  let zoneOn = false;
  /** Coalesce THR exactly while the guest has the THR-empty interrupt off. */
  const syncZone = () => {
    const want = !serial.txInterruptEnabled();
    if (!ring || want === zoneOn) return;
    coalescePorts(d.vmFd, COM1_BASE, 1, want);
    zoneOn = want;
  };
  const drain = () => {
    const first = ring!.first;
    if (first !== ring!.last) ring!.consume(ring!.replay(first, platform, (next) => journal.commitRing(next)));
  };
  const flush = () => { if (ring) drain(); journal.flush(); };
  // Control page (contracts/control-page.ts): serial bytes also go to the console ring; exit counters live there.
  const control = ControlPage.tryMap(d.stateFd);
  const serial = new Serial(page, (b) => { journal.push(b); control?.consolePush(b); }, () => { vm.irqLine(COM1_IRQ, 1); vm.irqLine(COM1_IRQ, 0); }, syncZone);

  let stop: PlatformEvent | undefined;
  const platform = new Platform(serial, (e) => { stop = e; });
  const transports: VirtioMmioTransport[] = [];
  if (d.devices.length) {
    const devPage = mapDevicePage(d.stateFd);
    for (const dev of d.devices) transports.push(new VirtioMmioTransport(dev.base, devPage.device(dev.index)));
    platform.mmio.push(...transports);
  }
  platform.mmio.push(new GedRegister(page)); // after the virtio windows: they are the hot path
  const counters = control ? control.exitCounters(d.id) : new Float64Array(d.counters);
  const run = vcpu.run;
  const bytes = vcpu.runBytes;
  installDieHook(platform, d);
  // bench/recovery's overhead row only: TSVMM_NO_RECOVERY=1 runs without the exit journal.
  const journaling = process.env.TSVMM_NO_RECOVERY !== '1';
  // Exits that need no policy (Platform.fixedPorts) are answered in the native loop without entering
  // JavaScript (native/kvm/fastexit.cc); TSVMM_NO_FASTEXIT=1 turns that off (bench/exits --ab).
  const fast = process.env.TSVMM_NO_FASTEXIT !== '1';

  const journalViews = snap.journal(d.id); // read only after the go: until then it is the dead vmm's
  // An InterruptACK records the device's ACK count in the journal before it applies (exactly once
  // across a vmm killed mid-exit: vmm/restore.ts replayPendingWrite).
  if (journaling) for (const t of transports) t.ackIntent = { word: journalViews.ackIntent, flag: SNAP.ACK_INTENT };
  // TSVMM_START_DEBUG: this thread's logger made now, before the vmm confines itself (it fstats FD.LOG).
  const traceFirstLine = START_DEBUG && d.id === 0 && !d.restored && componentLogger('vmm') !== undefined;
  if (fast) {
    native.fastExitInit({
      run: native.address(bytes), commit: journaling ? native.address(journalViews.commit) : undefined,
      ackIntent: journaling ? native.address(journalViews.ackIntent) : undefined, ackFlag: SNAP.ACK_INTENT >>> 0, ackShift: ISR_WORD.ACK_SHIFT,
      // Counted in shared memory only where the counters live in the control page's mapping.
      counters: control ? native.address(counters) : undefined, ncounters: counters.length,
      nativeIoSlot: NATIVE_EXIT_SLOT.IO, nativeMmioSlot: NATIVE_EXIT_SLOT.MMIO,
      rules: platform.fixedPorts(native.address(page.u32)),
      mmio: platform.fixedMmio((w) => native.address(w)),
      dieAtWrite: nativeDieHook(d),
    });
  }
  if (d.restored) {
    // First calls compile lazily (~0.1 ms each on a slow host): make the ones that run between a
    // restore and this vCPU's first KVM_RUN now, off that path.
    new SerialLineJournal(new Journal(new ArrayBuffer(SNAP.JOURNAL_SIZE), 0), -1);
    snap.pendingWrite(d.id); // reads only
    replayPendingWrite(platform, { pending: 0 }); // nothing to replay: returns at once
    if (d.standby) warmExitPath(); // not for a cold restore: there this thread is on the critical path
  }
  /** A KVM_RUN the takeover already made for this vCPU: its result, for the loop's first turn. */
  let firstExit: number | undefined;
  let enteredNs: bigint | undefined;
  if (d.go) {
    const go = new Int32Array(d.go);
    post({ kind: 'parked', id: d.id });
    while (d.takeover && Atomics.load(go, 0) === 0) {
      const r = keeper.takeover({ ...d.takeover, snap: snap.buf, runVcpu: { id: d.id, run: native.address(vcpu.runBytes) } }, go, 1000);
      if (r.status < 0) { post({ kind: 'fatal', message: restoreFailure(r) }); return; }
      if (r.status === 1 && r.ran) { firstExit = r.runRc; enteredNs = r.enteredNs; }
    }
    while (Atomics.load(go, 0) === 0) keeper.futexWait(go, 0, 0, 1000);
  }
  // The serial line being assembled and the exit journal live in shared memory, so a vmm that
  // dies mid-line or mid-exit loses nothing (vmm/restore.ts, SerialLineJournal).
  let warned = false;
  journal = new SerialLineJournal(journalViews, d.outFd, (n, e) => {
    control?.countSerialDropped(n);
    if (warned) return;
    warned = true;
    // (This worker's own logger: module state is per thread.)
    componentLogger('vmm').warn(`vCPU ${d.id}: the serial output failed (${(e as NodeJS.ErrnoException).code ?? e.message}); dropping guest serial output ` +
      '(counted in tsvmm_serial_dropped_bytes_total; `tsvmm console` still has it)', { vcpu: d.id });
  });
  if (traceFirstLine) journal.firstWrite = () => startPhase('vmm', 'first serial line written (vCPU 0)', { cpu: false });
  /** The guest powered off or asked for a reset (a port write): report it. */
  const stopped = (): boolean => {
    if (!stop) return false;
    flush();
    if (stop.kind === 'poweroff') post({ kind: 'exit', code: stop.code, reason: `guest powered off with status ${stop.code}` });
    else post({ kind: 'exit', code: 0, reason: 'guest requested a reset (tsvmm does not reboot guests)' });
    return true;
  };
  // (A vCPU the takeover already ran replays at its first exit, below.)
  if (d.restored && firstExit === undefined) replayPendingWriteOnce(snap, journalViews, d.id, platform, journal, ring);
  else if (ring && journal.ringIndex() === undefined) journal.commitRing(ring.first);
  if (stopped()) return;
  syncZone();
  post({ kind: 'started', id: d.id, tid: native.gettid(), ns: enteredNs ?? process.hrtime.bigint() });

  // How settle() commits a part line before writing it: on a kick, or at the end of an exit.
  const commitLine = () => journal.commitLine();
  const commitHandled = () => journal.handled();
  const multiVcpu = d.cpus > 1;
  for (;;) {
    let r: number;
    if (firstExit === undefined) {
      if (fast) r = native.runFast(vcpu.fd); // keeps the journal itself
      else {
        if (journaling) journal.beforeRun(run);
        r = native.run(vcpu.fd);
      }
    } else {
      r = firstExit;
      firstExit = undefined;
      if (d.restored) replayPendingWriteOnce(snap, journalViews, d.id, platform, journal, ring, true);
    }
    // THR writes KVM coalesced come before this exit: the UART sees them first.
    if (ring) drain();
    if (r < 0) {
      if (-r === EINTR || -r === EAGAIN) {
        run.setUint8(RUN.immediateExit, 0);
        // A kick: the main thread's (vmm/coalesced.ts RingWatch) when coalesced bytes waited with no
        // exit, or when a part line stood a whole poll: with nothing new since, the burst is over.
        journal.settle(false, commitLine);
        parkIfPaused(d.pause);
        continue;
      }
      flush();
      // A value no kernel returns (a flipped register: fault campaign 6, run 63/776, where -EINTR
      // became -1028) says this thread is broken, not the guest: recovered like a crash.
      if (!kernelErrno(-r)) { post({ kind: 'corrupt', message: `vCPU ${d.id}: KVM_RUN returned ${r}, which no kernel returns` }); return; }
      post({ kind: 'fatal', message: `vCPU ${d.id}: KVM_RUN failed with errno ${-r}` });
      return;
    }
    const reason = run.getUint32(RUN.exitReason, true);
    if (reason < counters.length) counters[reason]++;
    switch (reason) {
      case EXIT.IO: {
        const port = run.getUint16(RUN.ioPort, true);
        const size = run.getUint8(RUN.ioSize);
        const count = run.getUint32(RUN.ioCount, true);
        let off = u64(run, RUN.ioDataOffset);
        const isIn = run.getUint8(RUN.ioDirection) === RUN.IO_IN;
        for (let i = 0; i < count; i++, off += size) {
          if (isIn) {
            const v = platform.pioRead(port, size);
            if (size === 1) bytes[off] = v; else if (size === 2) run.setUint16(off, v, true); else run.setUint32(off, v >>> 0, true);
          } else {
            const v = size === 1 ? bytes[off] : size === 2 ? run.getUint16(off, true) : run.getUint32(off, true);
            platform.pioWrite(port, size, v);
          }
        }
        break;
      }
      case EXIT.MMIO: {
        const addr = u64(run, RUN.mmioPhysAddr);
        const len = run.getUint32(RUN.mmioLen, true);
        if (run.getUint8(RUN.mmioIsWrite)) {
          const v = len >= 4 ? run.getUint32(RUN.mmioData, true) : len === 2 ? run.getUint16(RUN.mmioData, true) : run.getUint8(RUN.mmioData);
          platform.mmioWrite(addr, len, v);
        } else {
          const v = platform.mmioRead(addr, len);
          for (let i = 0; i < 8; i++) bytes[RUN.mmioData + i] = i < len && i < 4 ? (v >>> (8 * i)) & 0xff : 0;
        }
        break;
      }
      case EXIT.HLT:
        flush();
        post({ kind: 'exit', code: 0, reason: `vCPU ${d.id} halted` });
        return;
      case EXIT.SHUTDOWN:
        flush();
        post({ kind: 'fatal', message: `vCPU ${d.id}: guest triple fault (KVM_EXIT_SHUTDOWN); ${describeVcpu(vcpu)}` });
        return;
      case EXIT.INTERNAL_ERROR: {
        flush();
        const sub = run.getUint32(RUN.internalSuberror, true);
        const n = Math.min(run.getUint32(RUN.internalNdata, true), 16);
        const data = Array.from({ length: n }, (_, i) => '0x' + run.getBigUint64(RUN.internalData + 8 * i, true).toString(16));
        post({ kind: 'fatal', message: `vCPU ${d.id}: KVM internal error, suberror ${sub} (${INTERNAL_SUBERROR[sub] ?? 'unknown'}), data [${data.join(' ')}]; ${describeVcpu(vcpu)}` });
        return;
      }
      case EXIT.FAIL_ENTRY: {
        flush();
        const hw = run.getBigUint64(RUN.failEntryReason, true);
        post({ kind: 'fatal', message: `vCPU ${d.id}: KVM entry failed, hardware entry failure reason 0x${hw.toString(16)}; ${describeVcpu(vcpu)}` });
        return;
      }
      case EXIT.SYSTEM_EVENT: {
        flush();
        const t = run.getUint32(RUN.systemEventType, true);
        if (t === SYSTEM_EVENT.SHUTDOWN) post({ kind: 'exit', code: 0, reason: 'guest shut down' });
        else if (t === SYSTEM_EVENT.RESET) post({ kind: 'exit', code: 0, reason: 'guest requested a reset (tsvmm does not reboot guests)' });
        else post({ kind: 'fatal', message: `vCPU ${d.id}: guest crashed (system event ${t})` });
        return;
      }
      case EXIT.INTR:
        break;
      default:
        flush();
        post({ kind: 'fatal', message: `vCPU ${d.id}: unexpected KVM exit ${EXIT_NAME[reason] ?? reason}; ${describeVcpu(vcpu)}` });
        return;
    }
    // Part lines go out once the guest's burst of output is over (a shell's prompt ends no line),
    // and after every exit where several vCPUs drive the UART by its THR-empty interrupt: Linux's
    // 8250 driver sends from whichever CPU takes the interrupt, and a part line one vCPU held would
    // come out after what another wrote next.
    journal.settle(multiVcpu && serial.txInterruptEnabled(), commitHandled);
    if (journaling) journal.handled();
    if (stopped()) return;
  }
}

/**
 * A restoring vmm's vCPU threads are new isolates: the device code a guest
 * exit runs through (UART, platform dispatch) would run interpreted for its
 * first few hundred exits, right after the takeover, adding milliseconds to
 * the guest's first lines. Run it on scratch devices (a private platform
 * page, output dropped) until V8 has optimized it; the real devices share
 * the same classes, so they share the optimized code.
 */
function warmExitPath(): void {
  const page = new PlatformPage(new ArrayBuffer(PLATFORM_PAGE_SIZE));
  page.init();
  const platform = new Platform(new Serial(page, () => undefined, () => undefined), () => undefined);
  for (let i = 0; i < 20_000; i++) {
    platform.pioWrite(COM1_BASE, 1, 0x41 + (i & 15));
    platform.pioRead(COM1_BASE + 5, 1);
    platform.mmioRead(0, 4);
  }
}

/**
 * The guest write (PIO out, MMIO write) the old vmm had not finished handling
 * when it died: the keeper completed it in the kernel, so the guest will not
 * repeat it; this vCPU replays it to the same device models over the same
 * shared pages. Exactly once per snapshot generation: the journal records
 * which generation was replayed.
 *
 * Normally before the vCPU runs again, so the guest's next instruction sees
 * its effect. A warm takeover enters the guest first when the write is a PIO
 * one (native/kvm/restore.c; the platform ports have no effect another
 * vCPU or the driver-domain could see in between); it is then replayed at
 * this vCPU's next exit, before that exit is handled (`midExit`): the replayed
 * serial byte is committed to the line without marking the exit in kvm_run
 * handled, so a death right after still replays that exit.
 */
function replayPendingWriteOnce(snap: SnapshotView, j: Journal, id: number, platform: Platform, journal: SerialLineJournal, ring: CoalescedRing | undefined, midExit = false): void {
  const generation = snap.generation | 0;
  if (Atomics.load(j.replayedGeneration, 0) === generation) return;
  // The old VM's coalesced THR writes this vCPU had not consumed came before its pending write.
  const saved = snap.savedRing();
  if (saved) {
    const old = new CoalescedRing(saved.buffer, saved.byteOffset);
    const from = journal.ringIndex() ?? old.first;
    const to = old.replay(from, platform, () => undefined);
    const log = componentLogger('vmm');
    if (log.enabled('debug')) log.debug(`vCPU ${id} replayed ${(to - from + RING_MAX) % RING_MAX} coalesced UART writes (snapshot generation ${generation})`);
  }
  // From here the tag counts in this VM's ring (committed with the line below).
  journal.commitRing(ring ? ring.first : -1);
  const replayed = replayPendingWrite(platform, snap.pendingWrite(id), Atomics.load(j.ackIntent, 0));
  if (replayed) { const log = componentLogger('vmm'); if (log.enabled('debug')) log.debug(`vCPU ${id} replayed ${replayed} (snapshot generation ${generation})`); }
  if (midExit) journal.commitLine(); else journal.handled();
  Atomics.store(j.replayedGeneration, 0, generation);
}

/**
 * Test hook (TSVMM_TEST_DIE_MMIO=OFFSET:N[:before|after], recovery tests only): the vmm SIGKILLs
 * itself in the middle of its Nth MMIO write to virtio register OFFSET, before the exit is marked
 * handled. Installed by wrapping the platform's MMIO write, so the hot loop carries no test code.
 */
function installDieHook(platform: Platform, d: VcpuThreadData): void {
  if (!d.dieAtMmio) return;
  const [off, nText, when] = d.dieAtMmio.split(':');
  const offset = Number(off);
  const n = Number(nText ?? 1);
  const after = when !== 'before';
  const write = platform.mmioWrite.bind(platform);
  let count = 0;
  platform.mmioWrite = (addr, len, v) => {
    if (!d.devices.some((dev) => addr - dev.base === offset) || ++count !== n) { write(addr, len, v); return; }
    if (after) write(addr, len, v);
    fs.writeSync(2, `tsvmm vmm: test hook: dying in the middle of MMIO write #${n} to 0x${addr.toString(16)} = 0x${v.toString(16)} (${after ? 'after' : 'before'} the device model applied it)\n`);
    process.kill(process.pid, 'SIGKILL');
    for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
  };
}

/** The test hook's half in the native exit loop: an InterruptACK write is answered there (fastexit.cc). */
function nativeDieHook(d: VcpuThreadData): { n: number; after: boolean } | undefined {
  if (!d.dieAtMmio) return undefined;
  const [off, nText, when] = d.dieAtMmio.split(':');
  return Number(off) === MmioReg.InterruptACK ? { n: Number(nText ?? 1), after: when !== 'before' } : undefined;
}

// A thread the vmm started early (vmm/early-vcpu-threads.ts) gets its data in a message.
if (workerData) main(workerData as VcpuThreadData);
else parentPort!.once('message', (d: VcpuThreadData) => main(d));
