/**
 * The `tsvmm` command line. `tsvmm run` validates its input (every bad
 * input is one clear line and a non-zero exit), then becomes the
 * supervisor of a new VM.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { VmConfig } from '../proto';
import { parseSize } from '../vmm/boot/layout';
import { parseElf } from '../vmm/boot/elf';
import { pvhEntry } from '../vmm/boot/pvh';
import { Kvm } from '../vmm/kvm/system';
import { Supervisor } from '../recovery/supervisor';

export const DEFAULT_GUEST = path.resolve(__dirname, '..', '..', 'guest', 'out', 'guest.elf');
export const DEFAULT_DEMO_CMDLINE = 'workload=counter n=200000000 report=20000000';
/** A VMM limit (xAPIC ids are 8 bits, one is the IOAPIC's). */
export const MAX_CPUS = 254;

/** A user-facing error: printed as one line, exit status `status`. */
export class UsageError extends Error {
  constructor(message: string, readonly status = 2) { super(message); }
}

const HELP = `usage: tsvmm <command> [options]

commands:
  run        boot a guest under a new supervisor

tsvmm run [--kernel FILE] [--cmdline STR] [--mem SIZE] [--cpus N] [--serial FILE] [--name NAME]
  --kernel FILE   a PVH ELF kernel (default: the built-in test guest, on a demo workload)
  --cmdline STR   the guest command line (default for the test guest: "${DEFAULT_DEMO_CMDLINE}")
  --mem SIZE      guest RAM, e.g. 256M or 2G (default 256M)
  --cpus N        number of vCPUs (default 1)
  --serial FILE   append guest serial output to FILE instead of the terminal
  --name NAME     a name for this VM (default: tsvmm-<pid>)
  -h, --help      show this help
`;

function readKernel(file: string): Buffer {
  let buf: Buffer;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new UsageError(`kernel ${file} is not a regular file`);
    buf = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UsageError(`kernel ${file} does not exist`);
    if (code === 'EACCES') throw new UsageError(`kernel ${file} is not readable (permission denied)`);
    throw new UsageError(`cannot read kernel ${file}: ${(e as Error).message}`);
  }
  try {
    pvhEntry(parseElf(buf));
  } catch (e) {
    throw new UsageError(`kernel ${file}: ${(e as Error).message}`);
  }
  return buf;
}

export function parseRun(argv: string[]): VmConfig {
  const { values } = parseArgs({
    args: argv,
    options: {
      kernel: { type: 'string' }, cmdline: { type: 'string' }, mem: { type: 'string' }, cpus: { type: 'string' },
      serial: { type: 'string' }, name: { type: 'string' }, help: { type: 'boolean', short: 'h' },
    },
    strict: true, allowPositionals: false,
  });
  if (values.help) { process.stdout.write(HELP); process.exit(0); }

  const kernel = values.kernel ?? DEFAULT_GUEST;
  if (!values.kernel && !fs.existsSync(DEFAULT_GUEST)) {
    throw new UsageError(`the built-in test guest ${DEFAULT_GUEST} is missing: run \`npm install\` (it builds guest/)`, 1);
  }
  readKernel(kernel);
  const cmdline = values.cmdline ?? (values.kernel ? '' : DEFAULT_DEMO_CMDLINE);

  let memBytes: number;
  try {
    memBytes = parseSize(values.mem ?? '256M');
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (memBytes > os.totalmem()) {
    throw new UsageError(`memory size ${values.mem} is more than this host has (${Math.floor(os.totalmem() / 2 ** 20)} MiB)`);
  }

  const cpusText = values.cpus ?? '1';
  if (!/^\d+$/.test(cpusText)) throw new UsageError(`invalid --cpus "${cpusText}": expected a whole number`);
  const cpus = Number(cpusText);
  if (cpus < 1) throw new UsageError('--cpus must be at least 1');

  // Opening /dev/kvm here turns a missing or forbidden device into one clear line.
  let kvm: Kvm;
  try {
    kvm = Kvm.open();
  } catch (e) {
    throw new UsageError((e as Error).message, 1);
  }
  const max = Math.min(kvm.maxVcpus(), MAX_CPUS);
  kvm.close();
  if (cpus > max) throw new UsageError(`--cpus ${cpus} is too many: at most ${max} here`);

  if (values.serial !== undefined) {
    try { fs.closeSync(fs.openSync(values.serial, 'a')); } catch (e) {
      throw new UsageError(`cannot open serial output ${values.serial}: ${(e as Error).message}`);
    }
  }
  return {
    name: values.name ?? `tsvmm-${process.pid}`,
    kernel: path.resolve(kernel), cmdline, memBytes, cpus,
    serialPath: values.serial ? path.resolve(values.serial) : '', disks: [], nets: [],
  };
}

async function run(argv: string[]): Promise<number> {
  const cfg = parseRun(argv);
  const log = (line: string) => process.stderr.write(`tsvmm: ${line}\n`);
  const sup = new Supervisor(cfg, { log });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => sup.stop(`stopped by ${sig}`));
  sup.start();
  const r = await sup.done;
  log(r.code === 0 ? r.reason : `error: ${r.reason}`);
  return r.code;
}

export async function main(argv: string[]): Promise<number> {
  try {
    const [cmd, ...rest] = argv;
    if (!cmd || cmd === '-h' || cmd === '--help' || cmd === 'help') { process.stdout.write(HELP); return cmd ? 0 : 2; }
    if (cmd === 'run') return await run(rest);
    throw new UsageError(`unknown command "${cmd}" (try tsvmm --help)`);
  } catch (e) {
    const err = e as Error & { code?: string; status?: number };
    if (e instanceof UsageError) { process.stderr.write(`tsvmm: error: ${e.message}\n`); return e.status; }
    if (err.code?.startsWith('ERR_PARSE_ARGS')) { process.stderr.write(`tsvmm: error: ${err.message}\n`); return 2; }
    process.stderr.write(`tsvmm: error: ${err.message}\n`);
    return 1;
  }
}
