/**
 * The priv-domain runs below the guest's path in CPU priority (nice PRIV_DOMAIN_NICE).
 *
 * It is the management plane: the API, the store, metrics, the console log. Nothing the guest
 * runs through goes through it, and the supervisor starts it once the guest runs, so its start
 * (~170 ms of CPU: Node, sqlite, the API, metrics) lands on the guest's first instants. On a
 * small host it took one of the CPUs the vCPU and the driver-domain were using: a 1 MiB
 * sequential read right after boot ran at half speed until the priv-domain was ready
 * (docs/benchmarks.md, "Issue 19, seventh session"). At nice 10 it gets ~10% of a CPU
 * that a guest keeps busy and all of an idle one. The vmm, driver-domain, keeper, supervisor and
 * guardian keep nice 0: each is on the guest's path or on a recovery's.
 *
 * Imported for its effect, first in priv-domain/main.ts, before the modules whose loading is
 * most of the start: every thread that exists then (Node's and V8's) is lowered, and threads
 * made later inherit the priority of the thread that makes them. Raising nice needs no
 * privilege. Env TSVMM_PRIV_NICE (0-19) replaces the value; 0 leaves the priority as it is.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export const PRIV_DOMAIN_NICE = 10;

function niceValue(): number {
  const v = process.env.TSVMM_PRIV_NICE;
  if (v === undefined || v === '') return PRIV_DOMAIN_NICE;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 && n <= 19 ? n : PRIV_DOMAIN_NICE;
}

/** Lowers every thread of this process to `nice` (setpriority on each thread id). */
function lowerAllThreads(nice: number): void {
  let tids: string[];
  try { tids = fs.readdirSync('/proc/self/task'); } catch { return; }
  for (const tid of tids) {
    try { os.setPriority(Number(tid), nice); } catch { /* a thread that ended meanwhile */ }
  }
}

// Only in the priv-domain's own process (a test that reads the constant stays as it is).
if (require.main?.filename === path.join(__dirname, 'main.js')) {
  const nice = niceValue();
  if (nice > 0) lowerAllThreads(nice);
}
