/**
 * Test helpers: run the real `tsvmm` CLI as a user would, and skip tests
 * that need /dev/kvm (with the reason) where the host has none.
 */
import { spawn, spawnSync, SpawnSyncReturns } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

// tsvmm's log lines on a pipe are JSON by default (contracts/log.ts); these read the text ones.
process.env.TSVMM_LOG_FORMAT ??= 'text';

export const ROOT = path.resolve(__dirname, '..', '..', '..');
export const BIN = path.join(ROOT, 'bin', 'tsvmm.js');
export const GUEST = path.join(ROOT, 'guest', 'out', 'guest.elf');

/** Why KVM tests cannot run here, or undefined when they can. */
export function kvmUnavailable(): string | undefined {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  } catch (e) {
    return `/dev/kvm is not usable here (${(e as NodeJS.ErrnoException).code}): these tests boot a real guest under KVM`;
  }
  if (!fs.existsSync(GUEST)) return `the test guest ${GUEST} is not built (make -C guest)`;
  return undefined;
}

/** Skips the current test or suite, saying why in the test report. */
export function skipBecause(ctx: Mocha.Context, why: string): never {
  // eslint-disable-next-line no-console
  console.log(`      skipped: ${why}`);
  ctx.skip();
  throw new Error('unreachable');
}

/** True when `cmd` is on the PATH. */
export function haveTool(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

/**
 * A host tool that scripts/install-deps.sh installs (`cmd`, from Debian package `pkg`). Missing, it
 * skips with the reason, except where the install ran (.ci/run sets TSVMM_DEPS_INSTALLED=1): there
 * a missing tool is a broken install, and the test fails instead of hiding it.
 */
export function requireTool(ctx: Mocha.Context, cmd: string, pkg: string): void {
  if (haveTool(cmd)) return;
  const why = `${cmd} is not installed (Debian package ${pkg}; scripts/install-deps.sh installs it)`;
  if (process.env.TSVMM_DEPS_INSTALLED === '1') throw new Error(`${why}, yet scripts/install-deps.sh ran`);
  skipBecause(ctx, why);
}

/** Use as `before(requireKvm)` inside a describe(): skips the suite with the reason. */
export function requireKvm(this: Mocha.Context): void {
  const why = kvmUnavailable();
  if (why) skipBecause(this, why);
}

export function tsvmm(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000, env: { ...process.env, ...opts.env }, input: opts.input ?? '',
  });
}

/** Asynchronous run, for tests that interact with a running VM. */
export function tsvmmAsync(args: string[], env?: NodeJS.ProcessEnv) {
  return spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
}

/** The guest's machine-readable lines: `@word k=v ...` -> {word, fields}. */
export interface GuestLine { word: string; fields: Record<string, string> }
export function guestLines(out: string): GuestLine[] {
  // (A bare "@" is the start of a line the guest is still writing, which the vmm sends once the
  // guest's output is idle: read while the rest is not there yet, it is no line; seen in
  // test/recovery-supervisor.test.ts as a TypeError here.)
  return out.split('\n').filter((l) => l.startsWith('@')).map((l) => /^@(\S+)\s*(.*)$/.exec(l.trim())).filter((m): m is RegExpExecArray => m !== null).map((m) => {
    const fields: Record<string, string> = {};
    for (const kv of m[2].matchAll(/([\w.-]+)(?:=("[^"]*"|\S*))?/g)) {
      fields[kv[1]] = (kv[2] ?? '').replace(/^"(.*)"$/, '$1');
    }
    const word = m[1];
    return { word, fields };
  });
}

/**
 * Fails if a component was killed by its seccomp filter (contracts/confinement.ts): it made a system
 * call outside its allowlist. Recovery hides that from the guest; a test must not.
 */
export function assertNoSeccompKill(stderr: string): void {
  const m = /^.*was killed by its seccomp filter.*$/m.exec(stderr);
  if (m) throw new Error(`${m[0]}\n(regenerate the lists with scripts/record-syscalls.sh if the call is legitimate)`);
}
