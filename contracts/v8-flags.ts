/**
 * Node and V8 flags per tsvmm process (issue 19: memory per VM), defined here once. The supervisor
 * passes a component's flags when it spawns it (supervisor/spawn.ts, supervisor/guardian.ts);
 * scripts/bundle.js trains each bundle's code cache with the same flags (V8 rejects a cache made
 * under other flags); `tsvmm run` applies its own at run time (applyRuntimeFlags: it is not
 * spawned by tsvmm); the vmm gives its vCPU worker threads VCPU_THREAD_LIMITS.
 *
 * Each choice below says what it saved, measured with bench/footprint and per-component smaps
 * (docs/benchmarks.md, "Footprint"). The hot paths keep V8's optimizing compiler: the vmm (its
 * vCPU threads' exit handling) and the driver-domain (the whole data path) are never --lite-mode
 * or --jitless (bench/exits, bench/blk, bench/net measure them).
 *
 * For debugging, TSVMM_V8_FLAGS_<PROCESS> (PROCESS: SUPERVISOR, VMM, DRIVER_DOMAIN, PRIV_DOMAIN,
 * GUARDIAN) replaces a process's flags: space-separated, '' for V8's defaults. Only V8 tuning
 * flags are taken (nothing that loads code or opens a debugger: see OVERRIDABLE); anything else
 * is refused with one line (v8FlagsError).
 */
export type SpawnedComponent = 'vmm' | 'driver-domain' | 'priv-domain' | 'guardian' | 'supervisor';

/** The flags each process runs with; `supervisor` is the adopting supervisor the guardian starts. */
export const COMPONENT_V8_FLAGS: Readonly<Record<SpawnedComponent, readonly string[]>> = {
  vmm: [],
  'driver-domain': [],
  // The priv-domain serves the control API, the metrics endpoint and the event store, and watches
  // heartbeats every HEARTBEAT_MS: a few requests a second at most.
  //   --lite-mode              no optimizing compilers, feedback vectors allocated lazily: less
  //                            code and metadata on the heap (interpreted code is fast enough here)
  //   --max-semi-space-size=1  a young generation of 1 MiB semi-spaces instead of growing to 16:
  //                            more frequent, tiny scavenges of a process that allocates little
  //   --no-expose-wasm         lite mode has no WebAssembly; said up front, V8 does not print
  //                            "disabling flag --expose_wasm" on every start
  // Not taken: --single-threaded (no V8 worker threads: GC and compiles on the main thread) saved
  // 0.8 MiB USS (13.3 -> 12.5) but its first API request took 152 ms p50 against 136 (6 starts
  // each, noisy): the API's latency is worth more; --jitless instead of --lite-mode: no better
  // (13.0-13.9 MiB); --v8-pool-size=1: no change.
  'priv-domain': ['--lite-mode', '--no-expose-wasm', '--max-semi-space-size=1'],
  // supervisor/guardian-main.ts: waits on a pidfd for the VM's whole life. (Its ~9 MiB USS are
  // Node's own ~6 and the modules it loads; --single-threaded or --v8-pool-size=1: no change.)
  guardian: ['--lite-mode', '--no-expose-wasm', '--max-semi-space-size=1'],
  // The supervisor a guardian starts when the first one died (supervisor/adopt-main.ts): as
  // SUPERVISOR_RUNTIME_V8_FLAGS, given at its start.
  supervisor: ['--no-opt', '--max-semi-space-size=1'],
};

/**
 * What `tsvmm run` (the first supervisor: the user starts it, with Node's default flags) sets on
 * itself with v8.setFlagsFromString before it starts the VM. Only flags V8 reads at run time work
 * there (--max-semi-space-size is read once, when the heap is set up, and would do nothing).
 */
//   --no-opt                       no TurboFan: nothing in the supervisor is hot (heartbeat
//                                  checks, IPC, a restart now and then), and optimized code
//                                  and the compiler's zones (malloc'd on V8's worker threads,
//                                  kept by their arenas) cost memory
//   --semi-space-growth-factor=1   the young generation stays at the size it has now (1 MiB
//                                  semi-spaces, V8's initial) instead of doubling up to 16
// Together: supervisor USS 21.5 -> 17.1 MiB (3 runs each; --no-opt alone 20.2, the growth factor
// alone 21.8: it matters once nothing optimizes).
export const SUPERVISOR_RUNTIME_V8_FLAGS: readonly string[] = ['--no-opt', '--semi-space-growth-factor=1'];

/**
 * The V8 resource limits of each of the vmm's vCPU worker threads (worker_threads ResourceLimits):
 * V8's defaults. The exit path runs there (bench/exits); a heap limit it reached would end the
 * thread, and the vmm with it.
 */
export const VCPU_THREAD_LIMITS: Readonly<{ maxYoungGenerationSizeMb?: number; maxOldGenerationSizeMb?: number }> = {};

/** The flags an override may carry: V8's memory, GC and compiler tuning, Node's V8 pool size. */
const OVERRIDABLE = /^--(no-)?(max|min|initial|semi-space|lite-mode|jitless|single-threaded|v8-pool-size|stack-size|opt|turbo|turbofan|sparkplug|maglev|trace-gc|expose-gc|gc-interval|optimize-for-size|lazy|concurrent|parallel|memory-reducer|huge-max-old|expose-wasm|always-|interrupt-budget|invocation-count)[a-z0-9_-]*(=[A-Za-z0-9._-]+)?$/;

function overrideVar(component: SpawnedComponent): string {
  return `TSVMM_V8_FLAGS_${component.toUpperCase().replace(/-/g, '_')}`;
}

/** The override of `component`'s flags in `env`, if any: its flags, or why they are refused. */
function override(component: SpawnedComponent, env: NodeJS.ProcessEnv): { flags: string[] } | { error: string } | undefined {
  const name = overrideVar(component);
  const raw = env[name];
  if (raw === undefined) return undefined;
  const flags = raw.split(/\s+/).filter(Boolean);
  const bad = flags.find((f) => !OVERRIDABLE.test(f));
  if (bad !== undefined) return { error: `${name}: '${bad}' is not a V8 tuning flag this override takes (memory, GC, compiler, --v8-pool-size)` };
  return { flags };
}

/** One line saying why an override in `env` is refused, or undefined (checked when `tsvmm run` starts). */
export function v8FlagsError(env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const c of Object.keys(COMPONENT_V8_FLAGS) as SpawnedComponent[]) {
    const o = override(c, env);
    if (o && 'error' in o) return o.error;
  }
  return undefined;
}

/** The node options to spawn `component` with (before its script): the table's, or the override. */
export function componentExecArgv(component: SpawnedComponent, env: NodeJS.ProcessEnv = process.env): string[] {
  const o = override(component, env);
  return o && 'flags' in o ? o.flags : [...COMPONENT_V8_FLAGS[component]];
}

/** The flags `tsvmm run` sets on itself (SUPERVISOR_RUNTIME_V8_FLAGS, or the supervisor's override). */
export function supervisorRuntimeFlags(env: NodeJS.ProcessEnv = process.env): string[] {
  const o = override('supervisor', env);
  return o && 'flags' in o ? o.flags : [...SUPERVISOR_RUNTIME_V8_FLAGS];
}
