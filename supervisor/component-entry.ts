/**
 * How a component starts: its esbuild bundle (scripts/bundle.js), run by
 * contracts/bundle-loader.ts with V8's code cache, when that bundle is at least
 * as new as the component's tsc output; else the tsc output itself. A cold
 * restart spends ~30 ms less loading modules from the bundle, and the code cache
 * saves most of the bundle's compile (docs/benchmarks.md, "Start time"); the
 * check keeps a tree rebuilt with plain `tsc` from running a stale bundle (tsc
 * rewrites every output file on each build).
 */
import * as fs from 'fs';
import * as path from 'path';

const DIST = path.resolve(__dirname, '..');
const LOADER = path.join(DIST, 'contracts', 'bundle-loader.js');

/** The script arguments (after Node's own flags) that start `component`. */
export function componentEntry(component: 'vmm' | 'driver-domain'): string[] {
  const plain = path.join(DIST, component, 'main.js');
  const bundle = path.join(DIST, component, 'main.bundle.js');
  try {
    if (fs.statSync(bundle).mtimeMs >= fs.statSync(plain).mtimeMs) return [LOADER, bundle];
  } catch { /* no bundle */ }
  return [plain];
}
