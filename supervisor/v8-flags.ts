/**
 * V8 flags per component process, applied where the supervisor spawns it (issue 19: memory per VM).
 *
 * Only where nothing is hot. The priv-domain serves the control API, the metrics endpoint and the
 * event store, and watches heartbeats every HEARTBEAT_MS: a few requests a second at most.
 *   --lite-mode                no optimizing compilers, feedback vectors allocated lazily: less
 *                              code and metadata on the heap (interpreted code is fast enough here)
 *   --max-semi-space-size=1    a young generation of 1 MiB semi-spaces instead of growing to 16:
 *                              more frequent, tiny scavenges of a process that allocates little
 *   --no-expose-wasm           lite mode has no WebAssembly; said up front, V8 does not print
 *                              "disabling flag --expose_wasm" on every start
 * The vmm (vCPU loop, exit handling) and the driver-domain (the data path) run with V8's defaults:
 * their JIT and young-generation sizing are measured by bench/exits, bench/blk and bench/net.
 * Measured with bench/footprint (docs/benchmarks.md).
 */
export type SpawnedComponent = 'vmm' | 'driver-domain' | 'priv-domain' | 'guardian';

export const COMPONENT_V8_FLAGS: Readonly<Record<SpawnedComponent, readonly string[]>> = {
  vmm: [],
  'driver-domain': [],
  'priv-domain': ['--lite-mode', '--no-expose-wasm', '--max-semi-space-size=1'],
  // supervisor/guardian-main.ts: waits on a pidfd for the VM's whole life.
  guardian: ['--lite-mode', '--no-expose-wasm', '--max-semi-space-size=1'],
};

/** The node options to spawn `component` with (before its script). */
export function componentExecArgv(component: SpawnedComponent): string[] {
  return [...COMPONENT_V8_FLAGS[component]];
}
