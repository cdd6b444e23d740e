#!/usr/bin/env node
// Bundles the entry points of the components whose start is on a recovery's
// critical path (a cold vmm restart, a cold driver-domain restart), and the CLI, into one
// file each: Node then loads one script instead of ~100 modules, ~30 ms less
// per start on the development machine. Run after `tsc -p .` (npm run build,
// npm test and the install do). supervisor/component-entry.ts uses a bundle
// only while it is at least as new as its entry's tsc output, so a tree
// rebuilt with plain `tsc` runs the fresh unbundled code.
const path = require('path');
const fs = require('fs');
const { spawnSync } = require('child_process');
const esbuild = require('esbuild');

const dist = path.join(__dirname, '..', 'dist');
// The CLI too (bin/tsvmm.js, the same freshness rule): `tsvmm run` is the supervisor, and on a
// `run --restore` its module load is on the way to the guest's first instruction (~40% of the
// supervisor's start on a loaded host). better-sqlite3 is a native module: it stays a require.
// And the vmm's vCPU thread (vmm/early-vcpu-threads.ts): a worker loads it on the way to a cold
// restart's first KVM_RUN.
const entries = [['vmm', 'main'], ['driver-domain', 'main'], ['cli', 'main'], ['vmm', 'vcpu-thread']];
for (const [component, entry] of entries) {
  esbuild.buildSync({
    entryPoints: [path.join(dist, component, `${entry}.js`)],
    outfile: path.join(dist, component, `${entry}.bundle.js`),
    bundle: true,
    platform: 'node',
    target: 'node20',
    external: ['better-sqlite3'],
    logLevel: 'warning',
  });
  // ASCII only: esbuild escapes every non-ASCII character in code (its default charset), but not in
  // the comments it keeps (js-yaml's); V8 then holds the ~1 MB source as a two-byte string, twice
  // the memory, in every process that loads it. Comments are all that can change here.
  const out = path.join(dist, component, `${entry}.bundle.js`);
  const text = fs.readFileSync(out, 'utf8');
  if (/[^\x00-\x7f]/.test(text)) fs.writeFileSync(out, text.replace(/[^\x00-\x7f]/g, '?'));
}

// V8 code caches of the bundles (contracts/bundle-loader.ts): each bundle is loaded once with
// TSVMM_CODE_CACHE_WRITE=1 and writes <bundle>.cache when it exits, its module initialisation
// compiled (a component without its supervisor exits at once; the CLI prints its version). Node's
// flags as the supervisor starts the components (contracts/v8-flags.ts: the vCPU threads run under
// the vmm's; the CLI under none, as a user starts it) and the environment a component gets
// (supervisor/component-env.ts): V8 rejects a cache made with other flags.
const loader = path.join(dist, 'contracts', 'bundle-loader.js');
const { componentExecArgv } = require(path.join(dist, 'contracts', 'v8-flags.js'));
const env = { ...process.env, TSVMM_CODE_CACHE_WRITE: '1' };
delete env.NODE_OPTIONS;
delete env.NODE_EXTRA_CA_CERTS;
// (The vCPU thread's bundle, loaded outside a worker, throws at its last line, its modules loaded:
// the cache is written on that exit too.)
for (const [component, entry, args] of [['vmm', 'main', []], ['driver-domain', 'main', []], ['cli', 'main', ['--version']], ['vmm', 'vcpu-thread', []]]) {
  const bundle = path.join(dist, component, `${entry}.bundle.js`);
  const argv = component === 'cli' ? [path.join(__dirname, '..', 'bin', 'tsvmm.js'), ...args] : [...componentExecArgv(component, env), loader, bundle, ...args];
  spawnSync(process.execPath, argv, { env, stdio: 'ignore', timeout: 30_000 });
  const cache = bundle.replace(/\.js$/, '.cache');
  let ok = false;
  try { ok = fs.statSync(cache).mtimeMs >= fs.statSync(bundle).mtimeMs; } catch { /* none */ }
  if (!ok) process.stderr.write(`bundle.js: no code cache for ${path.relative(dist, bundle)} (it still runs, compiled at each start)\n`);
}
