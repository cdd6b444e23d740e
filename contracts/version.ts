/**
 * What build this is: `tsvmm --version`, GET /v1/version and the tsvmm_build_info metric all say
 * the same thing, from here.
 */
import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';

const ROOT = path.resolve(__dirname, '..', '..');

export interface VersionInfo { version: string; node: string; commit?: string }

let cached: VersionInfo | undefined;

export function versionInfo(): VersionInfo {
  if (cached) return cached;
  let version = 'unknown';
  try { version = String((JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown'); } catch { /* keep */ }
  // The commit of a git checkout (an installed package has none).
  const git = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8', timeout: 2000, stdio: ['ignore', 'pipe', 'ignore'] });
  const commit = git.status === 0 && /^[0-9a-f]{7,40}$/.test(git.stdout.trim()) ? git.stdout.trim() : undefined;
  cached = { version, node: process.version, ...(commit ? { commit } : {}) };
  return cached;
}
