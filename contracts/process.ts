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

export {};
