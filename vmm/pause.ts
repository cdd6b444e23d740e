/**
 * Pause and resume of the vCPUs (`tsvmm pause` / `tsvmm resume`).
 *
 * The request lives in the control page (contracts/control-page.ts), written by the supervisor, so it
 * outlives the vmm: a vmm restarted while the VM is paused parks its vCPUs as soon as they start.
 * The vmm's main thread polls it; to pause it sets a flag the vCPU threads share, sets
 * kvm_run.immediate_exit on every vCPU and kicks each vCPU thread (a signal, so a KVM_RUN in
 * progress returns EINTR and the next one returns at once). On EINTR a vCPU thread parks with
 * Atomics.wait until the flag clears. The number of parked vCPUs is published back to the
 * control page, which is how the supervisor knows the pause took effect.
 */
import { native } from '../native/kvm';
import { ControlPage } from '../contracts/control-page';
import { RUN } from '../kvm/run';
import type { Vcpu } from '../kvm/vcpu';

const POLL_MS = 20;
/** Flag slots in the shared buffer the vCPU threads get. */
const PAUSED = 0;
const PARKED = 1;

export class PauseControl {
  readonly sab = new SharedArrayBuffer(8);
  private readonly flag = new Int32Array(this.sab);
  private readonly tids: number[] = [];
  private paused = false;
  /** A snapshot holds the vCPUs parked whatever the control page says (hold / release). */
  private held = false;
  private timer?: NodeJS.Timeout;

  constructor(private readonly page: ControlPage | undefined, private readonly vcpus: Vcpu[]) {}

  /** This vmm runs the guest now (not a parked standby): follow the control page's request. */
  activate(): void {
    if (!this.page || this.timer) return;
    if (this.page.pauseRequested) this.apply(true);
    this.timer = setInterval(() => this.poll(), POLL_MS);
    this.timer.unref();
  }

  /** A vCPU thread reported its tid (its 'started' message). */
  started(id: number, tid: number): void {
    this.tids[id] = tid;
    if (this.paused) this.stopOne(id);
  }

  /**
   * Parks every vCPU now and waits (blocking: this thread has nothing else to do meanwhile) until
   * all are parked, kicking any that has not yet every 0.1 ms. Throws after timeoutMs. Returns the
   * ms it took.
   */
  hold(timeoutMs: number): number {
    const t0 = performance.now();
    this.held = true;
    this.apply(true);
    const nap = new Int32Array(new SharedArrayBuffer(4));
    while (Atomics.load(this.flag, PARKED) < this.vcpus.length) {
      if (performance.now() - t0 > timeoutMs) {
        const parked = Atomics.load(this.flag, PARKED);
        this.release();
        throw new Error(`only ${parked} of ${this.vcpus.length} vCPUs parked within ${timeoutMs} ms`);
      }
      Atomics.wait(nap, 0, 0, 0.1);
      for (let id = 0; id < this.vcpus.length; id++) if (this.tids[id]) this.stopOne(id);
    }
    return performance.now() - t0;
  }

  /** Ends a hold: the vCPUs run again unless the control page asks for a pause. */
  release(): void {
    this.held = false;
    if (!this.page?.pauseRequested) this.apply(false);
  }

  private poll(): void {
    const want = this.page!.pauseRequested || this.held;
    if (want !== this.paused) this.apply(want);
    else if (want) for (let id = 0; id < this.vcpus.length; id++) if (this.tids[id]) this.stopOne(id);
    const parked = Atomics.load(this.flag, PARKED);
    if (this.page!.parkedVcpus !== parked) this.page!.parkedVcpus = parked;
  }

  private apply(pause: boolean): void {
    this.paused = pause;
    if (pause) {
      Atomics.store(this.flag, PAUSED, 1);
      for (let id = 0; id < this.vcpus.length; id++) if (this.tids[id]) this.stopOne(id);
    } else {
      Atomics.store(this.flag, PAUSED, 0);
      Atomics.notify(this.flag, PAUSED);
    }
  }

  /** Makes vCPU `id` leave KVM_RUN (or not enter it), unless it is already parked. */
  private stopOne(id: number): void {
    if (Atomics.load(this.flag, PARKED) >= this.vcpus.length) return;
    this.vcpus[id].run.setUint8(RUN.immediateExit, 1);
    try { native.kick(this.tids[id]); } catch { this.tids[id] = 0; /* that vCPU thread is gone */ }
  }
}

/** vCPU thread side: called when KVM_RUN returned EINTR; parks while the VM is paused. */
export function parkIfPaused(sab: SharedArrayBuffer | undefined): void {
  if (!sab) return;
  const flag = new Int32Array(sab);
  if (Atomics.load(flag, PAUSED) === 0) return;
  Atomics.add(flag, PARKED, 1);
  while (Atomics.load(flag, PAUSED) !== 0) Atomics.wait(flag, PAUSED, 1, 200);
  Atomics.sub(flag, PARKED, 1);
}
