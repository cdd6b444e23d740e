#!/usr/bin/env node
// Bundles the entry points of the components whose start is on a recovery's
// critical path (a cold vmm restart, a cold driver-domain restart), and the CLI, into one
// file each: Node then loads one script instead of ~100 modules, ~30 ms less
// per start on the development machine. Run after `tsc -p .` (npm run build,
// npm test and the install do). supervisor/component-entry.ts uses a bundle
// only while it is at least as new as its entry's tsc output, so a tree
// rebuilt with plain `tsc` runs the fresh unbundled code.
const path = require('path');
const esbuild = require('esbuild');

const dist = path.join(__dirname, '..', 'dist');
// The CLI too (bin/tsvmm.js, the same freshness rule): `tsvmm run` is the supervisor, and on a
// `run --restore` its module load is on the way to the guest's first instruction (~40% of the
// supervisor's start on a loaded host). better-sqlite3 is a native module: it stays a require.
for (const component of ['vmm', 'driver-domain', 'cli']) {
  esbuild.buildSync({
    entryPoints: [path.join(dist, component, 'main.js')],
    outfile: path.join(dist, component, 'main.bundle.js'),
    bundle: true,
    platform: 'node',
    target: 'node20',
    external: ['better-sqlite3'],
    logLevel: 'warning',
  });
}
