/**
 * What a supervisor leaves in the VM's runtime dir so that a new one can adopt the VM's running
 * components when it dies (supervisor/guardian-main.ts starts it, supervisor/adopt.ts adopts):
 *   <runtime>/<name>/run.pb   RunRecord (proto/tsvmm.proto): the vmm, driver-domain and keeper pids
 *                             with their start times, the supervisor's options (standby, hang
 *                             timeout, --user / --no-confine), and the VM's end once it is asked
 *                             for or begun. Its absence tells the guardian the VM ended with its
 *                             supervisor.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ProcessRef, RunRecord, RunRecordCodec, StopRecord } from '../proto';
import { runRecordPath, startTicks, VmPaths } from './paths';
import { processLogger } from './log';

export { runRecordPath };

/** Replaces the record atomically (write, then rename). */
export function writeRunRecord(p: VmPaths, rec: RunRecord): void {
  const file = runRecordPath(p);
  const tmp = `${file}.${process.pid}`;
  fs.writeFileSync(tmp, RunRecordCodec.encode(rec), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

export function readRunRecord(p: VmPaths): RunRecord | undefined {
  try {
    return RunRecordCodec.decode(fs.readFileSync(runRecordPath(p)));
  } catch {
    return undefined;
  }
}

/**
 * The supervisor's side: rewrites run.pb whenever the set of component pids changed, and once the
 * VM's end is asked for or begun (stopping), before anything of that end can be lost with it.
 */
export class RunRecordWriter {
  private last = '';
  private processes: ProcessRef[] = [];
  private stop?: StopRecord;
  private failed = false;

  constructor(private readonly paths: VmPaths, private readonly base: Omit<RunRecord, 'processes' | 'stop'>) {}

  update(procs: [role: string, pid: number | undefined][]): void {
    const processes: ProcessRef[] = [];
    for (const [role, pid] of procs) {
      if (!pid) continue;
      const t = startTicks(pid);
      if (t !== undefined) processes.push({ role, pid, startTicks: t });
    }
    const key = JSON.stringify(processes);
    if (key === this.last) return;
    this.processes = processes;
    if (this.write()) this.last = key;
  }

  /** The VM's end, as a supervisor that adopts the VM must finish it (proto StopRecord). */
  stopping(stop: StopRecord): void {
    this.stop = stop;
    this.write();
  }

  private write(): boolean {
    try {
      writeRunRecord(this.paths, { ...this.base, processes: this.processes, ...(this.stop ? { stop: this.stop } : {}) });
      return true;
    } catch (e) {
      // No runtime dir (the control plane said why): this VM cannot be adopted, say it once.
      if (!this.failed) processLogger().warn(`cannot write ${runRecordPath(this.paths)}: ${(e as Error).message}; the VM cannot be adopted if this supervisor dies`);
      this.failed = true;
      return false;
    }
  }
}
