/**
 * Which script starts a component: its esbuild bundle (scripts/bundle.js)
 * when that is at least as new as the component's tsc output, else the tsc
 * output itself. A cold restart spends ~30 ms less loading modules from the
 * bundle; the check keeps a tree rebuilt with plain `tsc` from running a
 * stale bundle (tsc rewrites every output file on each build).
 */
import * as fs from 'fs';
import * as path from 'path';

const DIST = path.resolve(__dirname, '..');

export function componentEntry(component: 'vmm' | 'driver-domain'): string {
  const plain = path.join(DIST, component, 'main.js');
  const bundle = path.join(DIST, component, 'main.bundle.js');
  try {
    if (fs.statSync(bundle).mtimeMs >= fs.statSync(plain).mtimeMs) return bundle;
  } catch { /* no bundle */ }
  return plain;
}
