/**
 * A build of the previous commit of this checkout (HEAD~1), for the test that updates a running VM
 * from it to the current build (test/update-previous.test.ts, issue 17). Built once per commit into
 * a cache directory ($TSVMM_BUILD_CACHE, else ~/.cache/tsvmm/builds/<commit>): `git archive` of the
 * commit, node_modules linked to this checkout's, tsc, the component bundles, and the addon
 * (node-gyp; copied from this build instead when native/ and binding.gyp are the same in both).
 *
 * An "installation" (install()) is a directory laid out as the package is (bin/, dist/,
 * build/Release/, package.json, node_modules): `tsvmm run` from it spawns every component from its
 * dist/, so replacing dist/ and build/ there (installOver(), by rename: the running processes keep
 * the files they loaded) is installing a new build under a running VM.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ROOT } from './tsvmm';

const ADDON = path.join('build', 'Release', 'tsvmm_kvm.node');

function git(args: string[]): { ok: boolean; out: string; err: string } {
  const r = spawnSync('git', ['-C', ROOT, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { ok: r.status === 0, out: (r.stdout ?? '').trim(), err: (r.stderr ?? '').trim() || (r.error?.message ?? '') };
}

function run(cmd: string, args: string[], cwd: string, what: string): void {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`building the previous commit: ${what} failed (${r.error?.message ?? `status ${r.status}`}):\n${(r.stdout ?? '').slice(-2000)}${(r.stderr ?? '').slice(-2000)}`);
}

/** node-gyp as npm ships it (npx cannot be used offline), and the headers of the running Node. */
function nodeGyp(): { script: string; nodedir?: string } {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  const candidates = [
    path.join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/local/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
  ];
  const script = candidates.find((c) => fs.existsSync(c));
  if (!script) throw new Error(`building the previous commit: node-gyp not found (looked in ${candidates.join(', ')})`);
  const nodedir = fs.existsSync(path.join(prefix, 'include', 'node', 'node.h')) ? prefix : undefined;
  return { script, nodedir };
}

/** Why there is no previous commit to build here (not a git checkout, or a clone without HEAD~1). */
export function noPreviousCommit(): string | undefined {
  if (!git(['rev-parse', '--is-inside-work-tree']).ok) return `${ROOT} is not a git checkout: there is no previous commit to build and update from`;
  if (!git(['rev-parse', '--verify', '--quiet', 'HEAD~1^{commit}']).ok) return `HEAD has no parent in this clone (a shallow clone?): there is no previous commit to build and update from`;
  return undefined;
}

/**
 * The cache directory holding a complete build of HEAD~1 (built now if it is not there yet), or of
 * the commit TSVMM_UPDATE_FROM names (to try an update from an older release by hand).
 */
export function previousBuild(log: (line: string) => void = () => undefined): { dir: string; commit: string } {
  const from = process.env.TSVMM_UPDATE_FROM || 'HEAD~1';
  const commit = git(['rev-parse', '--verify', `${from}^{commit}`]).out;
  if (!commit) throw new Error(`TSVMM_UPDATE_FROM=${from} is not a commit of this checkout`);
  const cache = process.env.TSVMM_BUILD_CACHE ?? path.join(os.homedir(), '.cache', 'tsvmm', 'builds');
  const dir = path.join(cache, commit);
  if (fs.existsSync(path.join(dir, '.complete'))) return { dir, commit };
  fs.mkdirSync(cache, { recursive: true, mode: 0o700 });
  const tmp = fs.mkdtempSync(path.join(cache, `.${commit.slice(0, 12)}-`));
  try {
    const t0 = Date.now();
    const tar = path.join(tmp, '.src.tar');
    const a = git(['archive', '--format=tar', '-o', tar, commit]);
    if (!a.ok) throw new Error(`git archive ${commit}: ${a.err}`);
    run('tar', ['-xf', tar], tmp, 'tar');
    fs.rmSync(tar);
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(tmp, 'node_modules'));
    // The addon: the same sources build the same addon, so this checkout's is reused when they match.
    const sameNative = git(['diff', '--quiet', commit, '--', 'native', 'binding.gyp']).ok && fs.existsSync(path.join(ROOT, ADDON));
    if (sameNative) {
      fs.mkdirSync(path.dirname(path.join(tmp, ADDON)), { recursive: true });
      fs.copyFileSync(path.join(ROOT, ADDON), path.join(tmp, ADDON));
    } else {
      const gyp = nodeGyp();
      run(process.execPath, [gyp.script, 'rebuild', ...(gyp.nodedir ? [`--nodedir=${gyp.nodedir}`] : [])], tmp, 'node-gyp rebuild');
    }
    run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], tmp, 'tsc');
    run(process.execPath, ['scripts/bundle.js'], tmp, 'the component bundles');
    fs.writeFileSync(path.join(tmp, '.complete'), `${commit}\n`);
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      // Another run built it meanwhile: use theirs.
      if (!fs.existsSync(path.join(dir, '.complete'))) throw e;
      fs.rmSync(tmp, { recursive: true, force: true });
    }
    log(`built the previous commit ${commit.slice(0, 12)} in ${((Date.now() - t0) / 1000).toFixed(0)} s (${sameNative ? 'addon reused: native/ unchanged' : 'addon rebuilt'}) into ${dir}`);
    prune(cache, commit);
    return { dir, commit };
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Keeps the newest few builds (other worktrees may be testing other commits), drops the rest. */
function prune(cache: string, keep: string): void {
  const builds = fs.readdirSync(cache).filter((f) => /^[0-9a-f]{40}$/.test(f) && f !== keep)
    .map((f) => ({ f, t: fs.statSync(path.join(cache, f)).mtimeMs })).sort((a, b) => b.t - a.t);
  for (const { f } of builds.slice(4)) fs.rmSync(path.join(cache, f), { recursive: true, force: true });
}

/**
 * What an installation holds of a build: what the package holds (bin/, dist/, proto/, guest/out,
 * priv-domain/openapi.yaml, ... and the sources), not node_modules (linked), dot files or build
 * intermediates.
 */
function parts(from: string): string[] {
  return fs.readdirSync(from).filter((f) => !f.startsWith('.') && f !== 'node_modules');
}

/** An installation of the build in `from` at `to`. */
export function install(from: string, to: string): void {
  fs.mkdirSync(to, { recursive: true });
  for (const p of parts(from)) copyPart(from, to, p, p);
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(to, 'node_modules'));
}

function copyPart(from: string, to: string, part: string, as: string): void {
  const src = path.join(from, part);
  if (part === 'build') {
    // Only the addon: node-gyp's intermediate files are not part of an installation.
    fs.mkdirSync(path.join(to, as, 'Release'), { recursive: true });
    fs.copyFileSync(path.join(from, ADDON), path.join(to, as, 'Release', 'tsvmm_kvm.node'));
  } else {
    fs.cpSync(src, path.join(to, as), { recursive: true, preserveTimestamps: true });
  }
}

/**
 * Installs the build in `from` over the installation `to` while its processes run: each part is
 * copied beside the old one and renamed into place (the old one is renamed away, not overwritten:
 * a loaded addon or script keeps its file). `edit` may change the new dist/ before it goes live.
 */
export function installOver(from: string, to: string, edit?: (dist: string) => void): void {
  const stamp = `${Date.now()}`;
  const all = parts(from);
  for (const p of all) copyPart(from, to, p, `.${p}.new`);
  edit?.(path.join(to, '.dist.new'));
  for (const p of all) {
    if (fs.existsSync(path.join(to, p))) fs.renameSync(path.join(to, p), path.join(to, `.${p}.old-${stamp}`));
    fs.renameSync(path.join(to, `.${p}.new`), path.join(to, p));
  }
}

/**
 * The versions of every layout a build's processes share (state page, platform page, control page,
 * the keeper's snapshot memfd, the snapshot directory), read by that build's own code in a child
 * process (each build loads its own addon).
 */
export function layoutVersions(build: string): Record<string, number> {
  const script = `const d = process.argv[1] + '/dist/contracts/';
    process.stdout.write(JSON.stringify({
      'state page': require(d + 'state-page.js').STATE_PAGE_VERSION,
      'platform page': require(d + 'platform-page.js').PLATFORM_VERSION,
      'control page': require(d + 'control-page.js').CONTROL_VERSION,
      'snapshot layout': require(d + 'snapshot.js').SNAP.VERSION,
      'snapshot format': require(d + 'snapshot-dir.js').SNAPSHOT_FORMAT_VERSION,
    }));`;
  const r = spawnSync(process.execPath, ['-e', script, build], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`reading the layout versions of ${build}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, number>;
}
