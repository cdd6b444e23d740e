/**
 * Gives the memory a process's start freed back to the kernel (issue 19, memory per VM).
 *
 * Parsing and compiling the modules, reading the configuration and building the VM or the devices
 * allocate with malloc (V8's zones, Node's buffers, the addon) and free again; glibc keeps what was
 * freed, in the main heap and in each thread's arena, for the process's whole life. One
 * malloc_trim(0) once the process has settled returns those pages: measured per component (USS,
 * one VM): supervisor -1.2 MiB, vmm -2.3, driver-domain -1.1, priv-domain -2.1
 * (docs/benchmarks.md, "Memory per component"). Nothing is slower afterwards: later allocations
 * fault fresh pages in, as at start.
 *
 * Called where a component reports itself ready (and a standby where it reports itself waiting);
 * the trim runs a moment later, off that path, and only once per process.
 */
import { native } from '../native/kvm';

/** After the component's ready report: lets what that report's own code freed go too. */
const SETTLE_MS = 1000;

let scheduled = false;

/** Schedules this process's one malloc_trim(0), SETTLE_MS from now (later calls do nothing). */
export function trimMallocOnceSettled(): void {
  if (scheduled) return;
  scheduled = true;
  // An addon built before mallocTrim existed (a stale build) has no such function: then nothing.
  setTimeout(() => native.mallocTrim?.(), SETTLE_MS).unref();
}
