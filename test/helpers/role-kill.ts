/**
 * Kills a VM's components by role and pid (as `tsvmm ps` names them) and waits until the VM is
 * whole again: every component running under a new pid for the one killed, `tsvmm ps` and
 * `tsvmm ls` answering, and the guest making progress. Shared by test/recovery-supervisor.test.ts
 * and bench/kill-campaign.ts.
 */
import * as fs from 'fs';
import { TestVm, sleep } from './control-plane';
import { holdersOf } from './kill-harness';

export const ROLES = ['supervisor', 'vmm', 'keeper', 'driver-domain', 'priv-domain'] as const;
export type Role = (typeof ROLES)[number];

interface PsRow { name: string; pid: number; state: string }

/** `tsvmm ps --json` as role -> pid (running components only), or the CLI's error. */
export function ps(vm: TestVm): { pids: Map<string, number>; error?: string } {
  const r = vm.cli(['ps', '--name', vm.name, '--json'], 20_000);
  if (r.status !== 0) return { pids: new Map(), error: (r.stderr || r.stdout).trim() || `exit ${r.status}` };
  const rows = JSON.parse(r.stdout) as PsRow[];
  return { pids: new Map(rows.filter((c) => c.pid && c.state !== 'stopped').map((c) => [c.name, c.pid])) };
}

/** `tsvmm ls --json` lists the VM as running. */
export function listed(vm: TestVm): boolean {
  const r = vm.cli(['ls', '--json'], 20_000);
  if (r.status !== 0) return false;
  return (JSON.parse(r.stdout) as { name: string; state: string }[]).some((v) => v.name === vm.name && v.state !== 'stopped');
}

export interface KillResult { role: Role; pid: number; newPid: number; ms: number }

/**
 * SIGKILLs `role` by pid and waits (up to `timeoutMs`) until ps shows every role in `need`
 * running, `role` under a new pid, ls lists the VM, and the guest made progress since the kill.
 */
export async function killRole(vm: TestVm, role: Role, need: readonly Role[], timeoutMs = 30_000, signal: NodeJS.Signals = 'SIGKILL'): Promise<KillResult> {
  let before = ps(vm);
  for (let i = 0; i < 100 && !before.pids.get(role); i++) { await sleep(100); before = ps(vm); }
  const pid = before.pids.get(role);
  if (!pid) throw new Error(`no ${role} to kill: ${before.error ?? JSON.stringify([...before.pids])}`);
  const progress = vm.progress();
  const t0 = performance.now();
  process.kill(pid, signal);
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (Date.now() > deadline) throw new Error(`VM not whole ${timeoutMs} ms after the ${role} (pid ${pid}) was killed: ${last}`);
    await sleep(100);
    const now = ps(vm);
    if (now.error) { last = `ps: ${now.error}`; continue; }
    const missing = need.filter((r) => !now.pids.get(r));
    if (missing.length) { last = `not running: ${missing.join(', ')}`; continue; }
    const newPid = now.pids.get(role)!;
    if (newPid === pid) { last = `${role} still pid ${pid}`; continue; }
    if (vm.progress() <= progress) { last = 'no guest progress yet'; continue; }
    if (!listed(vm)) { last = 'ls does not list it'; continue; }
    return { role, pid, newPid, ms: performance.now() - t0 };
  }
}

/** `tsvmm stop`, then waits until no process holds the VM's RAM and its runtime dir is gone. */
export async function stopAndCheckClean(vm: TestVm): Promise<{ stop: ReturnType<TestVm['cli']>; leftovers: number[]; runDirLeft: boolean }> {
  const stop = vm.cli(['stop', '--name', vm.name], 30_000);
  const runDir = `${vm.env.TSVMM_RUNTIME_DIR}/${vm.name}`;
  let leftovers: number[] = [];
  for (let i = 0; i < 100; i++) {
    leftovers = holdersOf(`tsvmm-ram-${vm.name}`).filter((p) => {
      try { return !fs.readFileSync(`/proc/${p}/stat`, 'latin1').includes(') Z'); } catch { return false; }
    });
    if (!leftovers.length && !fs.existsSync(runDir)) break;
    await sleep(100);
  }
  return { stop, leftovers, runDirLeft: fs.existsSync(runDir) };
}
