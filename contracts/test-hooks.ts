/**
 * Fault injection for tests (issue 4, "failure kinds"): only active when the
 * component was started with TSVMM_TEST_HOOKS=1 in its environment.
 *
 * Protocol: write the fault's name to `injectFile(pid)` and send the
 * component SIGUSR2. The component reads and removes the file, then:
 *   - `throw`: throws from its event loop (an uncaught exception: Node exits
 *     with status 1, nothing swallows it);
 *   - `loop`:  spins forever in its main thread (a hang: its heartbeat stops).
 * SIGKILL, SIGSEGV, SIGABRT and SIGSTOP need no hook: tests send the real
 * signal. The vmm has one more hook, TSVMM_TEST_DIE_MMIO (vmm/vcpu-thread.ts).
 *
 * Components load this module only when TSVMM_TEST_HOOKS=1 (testHooks() in contracts/process.ts).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export type InjectKind = 'throw' | 'loop';

export function injectFile(pid: number): string {
  return path.join(os.tmpdir(), `tsvmm-inject-${pid}`);
}

/** Test side: inject `kind` into the component `pid`. */
export function inject(pid: number, kind: InjectKind): void {
  fs.writeFileSync(injectFile(pid), kind);
  process.kill(pid, 'SIGUSR2');
}

/** Component side: call once the component runs. */
export function installTestHooks(component: string): void {
  process.on('SIGUSR2', () => {
    const file = injectFile(process.pid);
    let kind = '';
    try { kind = fs.readFileSync(file, 'utf8').trim(); fs.unlinkSync(file); } catch { return; }
    fs.writeSync(2, `tsvmm ${component}: test hook: injecting ${kind}\n`);
    if (kind === 'throw') setImmediate(() => { throw new Error(`${component}: injected uncaught exception (test hook)`); });
    else if (kind === 'loop') { for (;;) { /* an injected hang: the heartbeat stops */ } }
  });
}
