/**
 * The kernel command line as bytes in guest memory: UTF-8, NUL-terminated,
 * with a size limit that is checked (and explained) before anything is written.
 */

/** Encode `cmdline` with its NUL; throws when it needs more than `maxWithNul` bytes or holds a NUL. */
export function encodeCmdline(cmdline: string, maxWithNul: number): Buffer {
  if (cmdline.includes('\0')) throw new Error('kernel command line contains a NUL character');
  const bytes = Buffer.from(cmdline + '\0', 'utf8');
  if (bytes.length > maxWithNul) {
    throw new Error(`kernel command line too long: ${bytes.length - 1} bytes, the limit is ${maxWithNul - 1} bytes (plus the terminating NUL)`);
  }
  return bytes;
}
