/**
 * `npm run emulated-host -- COMMAND...`: boot the emulated hardware-KVM host
 * (emulated-host/host.ts) and run COMMAND inside it (sh -c, in /opt/tsvmm,
 * where the built tree is; `tsvmm` is on the PATH and the Linux guest image
 * is in /opt/linux). The console streams out with the prefix "L1| "; the exit
 * status is the command's. Example:
 *
 *   npm run emulated-host -- tsvmm run --linux --image-dir /opt/linux --cpus 2
 */
import { buildL1Image, cacheDir, emulatedHostUnavailable, qemuFiles, runInEmulatedHost } from './host';

const HELP = `usage: npm run emulated-host -- [--timeout SECONDS] [--with-qemu] COMMAND...
  Boot the emulated hardware-KVM host (QEMU TCG, -cpu max, Debian's kernel with kvm-amd) and run
  COMMAND there with sh -c, in /opt/tsvmm (the built tree; tsvmm is on the PATH). The Linux guest of
  \`tsvmm image linux\` is in /opt/linux. Its exit status is this command's. Default timeout 600 s.
  --with-qemu: also carry this machine's ${'qemu-system-x86_64'} into L1 (for a reference run with -enable-kvm there).
  The image is cached in ${cacheDir()} (TSVMM_EMULATED_HOST_CACHE overrides) and rebuilt when its inputs change.
`;

async function main(argv: string[]): Promise<number> {
  let timeoutS = 600;
  let withQemu = false;
  while (argv[0]?.startsWith('-')) {
    const a = argv.shift()!;
    if (a === '-h' || a === '--help') { process.stdout.write(HELP); return 0; }
    if (a === '--timeout') {
      const v = argv.shift();
      if (!v || !/^\d+$/.test(v) || Number(v) < 1) throw new Error(`invalid --timeout "${v ?? ''}": expected a whole number of seconds`);
      timeoutS = Number(v);
    } else if (a === '--with-qemu') withQemu = true;
    else if (a === '--') break;
    else throw new Error(`unknown option "${a}" (try --help)`);
  }
  if (argv.length === 0) throw new Error('no command given (try --help)');
  const why = emulatedHostUnavailable();
  if (why) throw new Error(why);
  const image = buildL1Image({ ...(withQemu ? { extra: qemuFiles(), tag: 'qemu' } : {}), log: (l) => process.stderr.write(`emulated-host: ${l}\n`) });
  const r = await runInEmulatedHost(argv.join(' '), {
    image, timeoutMs: timeoutS * 1000, onLine: (l) => process.stdout.write(`L1| ${l}\n`),
  });
  if (r.error) throw new Error(r.error);
  process.stderr.write(`emulated-host: exit status ${r.status}; L1 booted in ${((r.bootMs ?? 0) / 1000).toFixed(1)} s, ${(r.wallMs / 1000).toFixed(1)} s in all\n`);
  return r.status ?? 1;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: Error) => {
  process.stderr.write(`emulated-host: error: ${e.message}\n`);
  process.exitCode = 1;
});
