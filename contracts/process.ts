/**
 * Process basics that the supervisor and every component run first (import this module before
 * anything else).
 *
 * No debugger. Node opens its inspector (a WebSocket that runs any JavaScript it is sent) on
 * 127.0.0.1:9229 when the process receives SIGUSR1, and on --inspect in NODE_OPTIONS. tsvmm's
 * processes run as root when they serve TAPs and /dev/kvm, and any local user can connect to a
 * loopback port, so either would hand out code execution as root. A JavaScript listener for
 * SIGUSR1 replaces Node's own handler (the inspector never starts); the signal is logged and
 * otherwise ignored. An inspector opened from the command line is closed at once. Components
 * start without NODE_OPTIONS (supervisor/component-env.ts).
 */
import * as fs from 'fs';

function writeStderr(line: string): void {
  try { fs.writeSync(2, line); } catch { /* stderr gone */ }
}

process.on('SIGUSR1', () => writeStderr(`tsvmm (pid ${process.pid}): ignored SIGUSR1 (the Node inspector is disabled)\n`));

if ([...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((a) => /--(inspect|debug)/.test(a))) {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const inspector = require('inspector') as typeof import('inspector');
  if (inspector.url()) {
    inspector.close();
    writeStderr(`tsvmm (pid ${process.pid}): closed the Node inspector that --inspect opened\n`);
  }
}

/**
 * Every component: an uncaught exception prints its stack and exits with status 1 at once
 * (nothing swallows it). Node's default does the same, but its exit path joins worker threads,
 * and a vmm's vCPU thread in KVM_RUN may not return for a long time: the process would hang
 * on its way out instead of dying.
 */
export function exitOnUncaughtException(component: string): void {
  // Loaded here, not at the top: this module is every component's first import and stays cheap.
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { keeper } = require('./snapshot') as typeof import('./snapshot');
  process.on('uncaughtException', (e) => {
    // The component's logger (contracts/log.ts): stderr and the VM's log file.
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    try { (require('./log') as typeof import('./log')).processLogger().error(`uncaught exception: ${(e as Error)?.stack ?? String(e)}`, { event: 'uncaught-exception' }); } catch { /* stderr gone */ }
    keeper.exitNow(1);
  });
}

/**
 * Test hooks (contracts/test-hooks.ts), loaded only when the component was started with
 * TSVMM_TEST_HOOKS=1: production processes never run that code.
 */
export function installTestHooksIfAsked(component: string): void {
  if (process.env.TSVMM_TEST_HOOKS !== '1') return;
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  (require('./test-hooks') as typeof import('./test-hooks')).installTestHooks(component);
}
