/**
 * Runs an esbuild bundle (scripts/bundle.js) with V8's code cache (issue 19, start time).
 *
 * Node 20 has no module compile cache: every start parses and compiles the ~0.5-1 MiB bundle
 * again, and compiles each function the module initialisation runs. The bundle is compiled here
 * as a vm.Script with the bytecode V8 serialised from a training run (`<bundle>.cache`, written by
 * scripts/bundle.js: the bundle loaded with TSVMM_CODE_CACHE_WRITE=1, which writes the cache when
 * that process exits, its module initialisation done). A cache older than its bundle is not used
 * (V8 checks a cache only against the source's length), and one V8 rejects (another Node, other
 * flags) only costs the compile it would have saved. Measured with TSVMM_START_DEBUG
 * (docs/benchmarks.md, "Start time").
 *
 *   node dist/contracts/bundle-loader.js BUNDLE     (a component: the supervisor spawns it so)
 *   require('dist/contracts/bundle-loader').runBundle(BUNDLE)   (bin/tsvmm.js: returns its exports)
 *
 * The bundle runs as a CommonJS module of its own file (its __dirname, its require paths), as
 * `node BUNDLE` or require(BUNDLE) would run it.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as vm from 'vm';
import Module = require('module');

/** Where a bundle's code cache lives. */
export function cacheFileOf(bundle: string): string {
  return bundle.replace(/\.js$/, '') + '.cache';
}

/** The cache for `bundle` if it is at least as new as the bundle, else undefined. */
function freshCache(bundle: string): Buffer | undefined {
  try {
    const cache = cacheFileOf(bundle);
    if (fs.statSync(cache).mtimeMs < fs.statSync(bundle).mtimeMs) return undefined;
    return fs.readFileSync(cache);
  } catch { return undefined; }
}

type ModuleInternals = typeof Module & { wrap(src: string): string; _nodeModulePaths(dir: string): string[] };

/** Runs `bundle` (an absolute path) with its code cache; returns its exports. */
export function runBundle(bundle: string): unknown {
  const write = process.env.TSVMM_CODE_CACHE_WRITE === '1';
  const cachedData = write ? undefined : freshCache(bundle);
  const M = Module as ModuleInternals;
  // latin1: scripts/bundle.js makes the bundles ASCII, which V8 then holds as a one-byte string.
  const script = new vm.Script(M.wrap(fs.readFileSync(bundle, 'latin1')), { filename: bundle, cachedData });
  if (cachedData && script.cachedDataRejected && process.env.TSVMM_START_DEBUG === '1') {
    process.stderr.write(`tsvmm: the code cache of ${bundle} was rejected (another Node or other flags than scripts/bundle.js used): compiled from source\n`);
  }
  if (write) {
    // Training (scripts/bundle.js): once the process is done, its compiled functions go to the cache.
    process.once('exit', () => fs.writeFileSync(cacheFileOf(bundle), script.createCachedData()));
  }
  const m = new Module(bundle, module) as Module & { filename: string; paths: string[]; loaded: boolean };
  m.filename = bundle;
  m.paths = M._nodeModulePaths(path.dirname(bundle));
  const fn = script.runInThisContext() as (exports: unknown, require: NodeJS.Require, module: Module, filename: string, dirname: string) => void;
  // Node's own require for a file there (resolve, cache and main included).
  const req = Module.createRequire(bundle);
  fn.call(m.exports, m.exports, req, m, bundle, path.dirname(bundle));
  m.loaded = true;
  return m.exports;
}

if (require.main === module) {
  const bundle = process.argv[2];
  if (!bundle) {
    process.stderr.write('usage: node bundle-loader.js BUNDLE\n');
    process.exit(2);
  }
  // The bundle's own code sees the argv it would have seen run directly.
  process.argv.splice(1, 1);
  runBundle(path.resolve(bundle));
}
