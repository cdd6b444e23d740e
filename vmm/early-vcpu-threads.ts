/**
 * The vmm's first act: start its vCPU worker threads, before the main thread
 * loads the rest of the vmm. A Node worker takes ~50 ms to boot and load its
 * modules; started here, that overlaps the main thread's own module loading
 * instead of following the restore, which matters most on a cold vmm
 * restart, where the guest is stopped until a vCPU thread runs it.
 *
 * The supervisor says how many vCPUs to expect (env TSVMM_VCPUS); each thread
 * waits for its VcpuThreadData (vmm/vcpu-thread.ts) in a message. vmm/main.ts
 * imports this module first, so it runs before any heavier import.
 */
import * as fs from 'fs';
import * as path from 'path';
import { MAX_VCPUS } from '../contracts/layout';
import { Worker, WorkerOptions } from 'worker_threads';
import { VCPU_THREAD_LIMITS } from '../contracts/v8-flags';

/**
 * The thread's script: its esbuild bundle (scripts/bundle.js) through contracts/bundle-loader.ts
 * (V8's code cache: ~15 ms less CPU per thread, which on a cold restart the guest waits for)
 * while that bundle is at least as new as vcpu-thread.js, else vcpu-thread.js itself. (In the
 * vmm's bundle __dirname is dist/vmm, as for its tsc output.)
 */
function threadScript(): [string, WorkerOptions] {
  const plain = path.join(__dirname, 'vcpu-thread.js');
  const bundle = path.join(__dirname, 'vcpu-thread.bundle.js');
  try {
    if (fs.statSync(bundle).mtimeMs >= fs.statSync(plain).mtimeMs) return [path.join(__dirname, '..', 'contracts', 'bundle-loader.js'), { argv: [bundle] }];
  } catch { /* no bundle */ }
  return [plain, {}];
}
const [script, pathOpts] = threadScript();
// Each thread's V8 heap limits (contracts/v8-flags.ts).
const scriptOpts: WorkerOptions = { ...pathOpts, resourceLimits: { ...VCPU_THREAD_LIMITS } };

const expected = Number(process.env.TSVMM_VCPUS);
const early: Worker[] = Number.isInteger(expected) && expected > 0 && expected <= MAX_VCPUS
  ? Array.from({ length: expected }, () => new Worker(script, scriptOpts))
  : [];

/** An early thread waiting for its vCPU, or a new one (started with `data`) if there is none left. */
export function vcpuThread(data: object): Worker {
  const w = early.shift();
  if (!w) return new Worker(script, { ...scriptOpts, workerData: data });
  w.postMessage(data);
  return w;
}

/** Ends early threads that were not needed (the config asked for fewer vCPUs). */
export function releaseUnusedVcpuThreads(): void {
  for (const w of early.splice(0)) void w.terminate();
}
