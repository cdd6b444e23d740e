/**
 * A supervisor must not die of its terminal: SIGHUP (the terminal closed) does not stop it, and a write to a closed stdout or stderr (EPIPE, EIO: `tsvmm run | head -3`, a
 * hung-up terminal) is dropped instead of crashing it. Returns the log function to use.
 */
import * as fs from 'fs';

export function quietStdio(prefix = 'tsvmm: '): (line: string) => void {
  let detached = false;
  for (const s of [process.stdout, process.stderr]) s.on('error', () => { detached = true; });
  const log = (line: string) => {
    if (detached) return;
    try { fs.writeSync(2, `${prefix}${line}\n`); } catch { detached = true; }
  };
  process.on('SIGHUP', () => {
    log('SIGHUP: not stopping (the VM keeps running; tsvmm stop stops it)');
  });
  return log;
}
