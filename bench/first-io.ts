/**
 * bench/first-io: how soon a fresh VM's guest gets its disk. From each VMM's spawn to the guest's
 * first serial line, and to its first answered disk request (the test guest's GET_ID, which it
 * sends right after it boots and reports with `@blk-dev`), tsvmm against QEMU microvm with the same
 * guest ELF and the same raw image, in one invocation, boots alternating.
 *
 *   npx tsc -p . && node dist/bench/first-io.js [--boots N (10)] [--tsvmm BIN] [--kernel FILE] [--qemu BIN] [--json]
 *
 * --tsvmm runs another tree's bin/tsvmm.js (a checkout of an older commit, for before/after).
 * tsvmm's driver-domain starts its JIT warm-up when the guest starts and ends it at the guest's
 * first kick (driver-domain/warm-up.ts); what is left between the two figures is the guest's own
 * boot and the first request's trip through a fresh data path.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { ensureGuest, ensureQemu, machine, median, qemuMicrovmArgs, ROOT, table } from './lib';

const CMDLINE = 'workload=blk bs=4096 qd=1 mode=rand blk_op=read blk_n=16 gen=1 verify=0 virtio_irq=1';
type Vmm = 'tsvmm' | 'qemu';
interface Boot { vmm: Vmm; firstLineMs: number; firstIoMs: number }

function boot(vmm: Vmm, o: { kernel: string; qemu: string; tsvmm: string }, image: string): Promise<Boot> {
  const [cmd, args] = vmm === 'qemu' ? [o.qemu, qemuMicrovmArgs(o.kernel, CMDLINE, ['-drive', `id=d0,file=${image},format=raw,if=none`, '-device', 'virtio-blk-device,drive=d0'])]
    : [process.execPath, [o.tsvmm, 'run', '--kernel', o.kernel, '--disk', image, '--cmdline', CMDLINE]];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let firstLineMs: number | undefined;
    let firstIoMs: number | undefined;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      if (firstLineMs === undefined && /^@\w+/m.test(out)) firstLineMs = performance.now() - t0;
      if (firstIoMs === undefined && /^@blk-dev /m.test(out)) firstIoMs = performance.now() - t0;
    });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', () => {
      clearTimeout(timer);
      if (firstLineMs === undefined || firstIoMs === undefined || !/^@done ok/m.test(out)) {
        reject(new Error(`${vmm}: no first line, first I/O or "@done ok":\n${(out + err).split('\n').slice(-8).join('\n')}`));
      } else resolve({ vmm, firstLineMs, firstIoMs });
    });
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { boots: { type: 'string' }, tsvmm: { type: 'string' }, kernel: { type: 'string' }, qemu: { type: 'string' }, json: { type: 'boolean' } } });
  const boots = Number(values.boots ?? 10);
  if (!Number.isInteger(boots) || boots < 1) throw new Error(`bad --boots ${values.boots}`);
  const o = {
    kernel: path.resolve(values.kernel ?? path.join(ROOT, 'guest', 'out', 'guest.elf')),
    qemu: values.qemu ?? 'qemu-system-x86_64',
    tsvmm: path.resolve(values.tsvmm ?? path.join(ROOT, 'bin', 'tsvmm.js')),
  };
  ensureGuest(o.kernel);
  const qemuVer = ensureQemu(o.qemu, 'bench/first-io');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-first-io-'));
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 16 << 20);
  const results: Boot[] = [];
  try {
    for (let i = 0; i < boots; i++) {
      for (const vmm of (i % 2 ? ['qemu', 'tsvmm'] : ['tsvmm', 'qemu']) as Vmm[]) results.push(await boot(vmm, o, image));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const of = (vmm: Vmm, f: (b: Boot) => number) => median(results.filter((b) => b.vmm === vmm).map(f));
  const rows = [
    ['measure (p50 of ' + boots + ' boots)', 'tsvmm ms', 'QEMU ms', 'tsvmm/QEMU'],
    ...([['spawn → first guest line', (b: Boot) => b.firstLineMs], ['spawn → first disk request answered', (b: Boot) => b.firstIoMs],
      ['first line → first disk request answered', (b: Boot) => b.firstIoMs - b.firstLineMs]] as [string, (b: Boot) => number][])
      .map(([label, f]) => [label, of('tsvmm', f).toFixed(0), of('qemu', f).toFixed(0), (of('tsvmm', f) / of('qemu', f)).toFixed(2)]),
  ];
  if (values.json) {
    process.stdout.write(JSON.stringify({ machine: machine(), qemu: qemuVer, tsvmm: o.tsvmm, boots, results }, null, 2) + '\n');
    return 0;
  }
  process.stdout.write(`bench/first-io: ${boots} boots each of tsvmm (${o.tsvmm}) and ${qemuVer} (-M microvm), alternating\n\n`);
  process.stdout.write(table(rows) + '\n');
  process.stdout.write(`machine: ${machine()}; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
  return 0;
}

main().then((rc) => { process.exitCode = rc; }, (e) => {
  process.stderr.write(`bench/first-io: ${(e as Error).message.split('\n')[0]}\n`);
  process.exitCode = 1;
});
