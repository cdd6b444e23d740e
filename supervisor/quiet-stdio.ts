/**
 * A supervisor must not die of its terminal: SIGHUP (the terminal closed) does not stop it, and a write to a closed stdout or stderr (EPIPE, EIO: `tsvmm run | head -3`, a
 * hung-up terminal) is dropped instead of crashing it: `logger` then writes only its file.
 */
import type { Logger } from '../contracts/log';

export function quietStdio(logger: Logger): Logger {
  for (const s of [process.stdout, process.stderr]) s.on('error', () => logger.detachStderr());
  process.on('SIGHUP', () => {
    logger.warn('SIGHUP: not stopping (the VM keeps running; tsvmm stop stops it)', { event: 'sighup' });
  });
  return logger;
}
