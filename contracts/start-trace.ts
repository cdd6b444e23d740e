/**
 * TSVMM_START_DEBUG=1 (issue 19, start time): one log line per phase of a VM's start, in every
 * process on the way to the guest's first serial line, each with
 *   - the ms since the `tsvmm run` process started (its performance.timeOrigin, handed to every
 *     component in TSVMM_START_T0; wall clock, so it moves with the host's load), and
 *   - this process's own CPU time so far, user + system, all threads (process.cpuUsage(): the
 *     figure that does not move with the load, as /proc/PID/stat's utime + stime).
 * Every process logs `node started` (its own timeOrigin, where Node's start-up ends and the
 * bundle's loading begins), then its phases. Off (the default), startPhase costs one test.
 */
import { processLogger } from './log';

export const START_DEBUG = process.env.TSVMM_START_DEBUG === '1';

/** The `tsvmm run` process's start (epoch ms): its own timeOrigin there, inherited by the components. */
function t0(): number {
  const inherited = Number(process.env.TSVMM_START_T0);
  if (inherited > 0) return inherited;
  if (START_DEBUG) process.env.TSVMM_START_T0 = String(performance.timeOrigin);
  return performance.timeOrigin;
}

/**
 * The phase `phase` of process `who` (vmm, driver-domain, ...) happened now, or at epoch ms `at`.
 * `cpu: false` once the process is confined: getrusage is not on its seccomp allowlist.
 */
export function startPhase(who: string, phase: string, o: { at?: number; cpu?: boolean } = {}): void {
  if (!START_DEBUG) return;
  const ms = (o.at ?? performance.timeOrigin + performance.now()) - t0();
  let cpuMs: number | undefined;
  if (o.cpu !== false && o.at === undefined) {
    const cpu = process.cpuUsage();
    cpuMs = (cpu.user + cpu.system) / 1000;
  }
  processLogger().info(`start: ${who} ${phase} at ${ms.toFixed(1)} ms${cpuMs === undefined ? '' : ` (its CPU ${cpuMs.toFixed(1)} ms)`}`,
    { event: 'start-phase', who, phase, ms: Math.round(ms * 10) / 10, cpuMs: cpuMs === undefined ? undefined : Math.round(cpuMs * 10) / 10 });
}

/** The `node started` line: this process's timeOrigin (Node's own start-up is before it). */
export function startNode(who: string): void {
  startPhase(who, 'node started (module loading begins)', { at: performance.timeOrigin });
}
