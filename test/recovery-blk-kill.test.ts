/**
 * Recovery under disk I/O: SIGKILL the vmm (vCPUs, virtio-mmio registers;
 * recovered from the keeper's snapshot, no guest reboot), and separately the
 * driver-domain (the process serving the disk), at random moments, many
 * times, while the guest writes and verifies its own data. The guest must see
 * zero verification errors, its progress must continue after every kill, and
 * the image must be intact afterwards.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { assertNoSeccompKill, GUEST, guestLines, requireKvm, tsvmmAsync } from './helpers/tsvmm';
import { checkImage } from './helpers/blk-image';

const KILLS = Number(process.env.TSVMM_KILLS ?? 50);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('recovery under a verifying blk workload', function () {
  this.timeout(300_000);
  before(requireKvm);

  for (const component of ['driver-domain', 'vmm'] as const) it(`survives ${KILLS} SIGKILLs of the ${component} with zero guest-visible errors`, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tsvmm-kill-${component}-`));
    const img = path.join(dir, 'disk.img');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 32 << 20);
    const n = 2000;
    const vm = tsvmmAsync(['run', '--kernel', GUEST, '--disk', img, '--cmdline', `workload=blk-loop blk_n=${n} qd=16 mode=seq verify=1 blk_report=200 virtio_irq=1`]);
    let out = '';
    let err = '';
    vm.stdout.on('data', (d) => { out += d; });
    vm.stderr.on('data', (d) => { err += d; });
    const exited = new Promise<number | null>((r) => vm.on('exit', (code) => r(code)));
    const ready = new RegExp(`(?:^|: )${component} ready \\(pid (\\d+)\\)`, 'gm');
    const pidOf = () => {
      const m = [...err.matchAll(ready)];
      return m.length ? Number(m[m.length - 1][1]) : undefined;
    };
    const progress = () => guestLines(out).filter((l) => l.word === 'blk-progress').length;
    try {
      const deadline = Date.now() + 20_000;
      while ((pidOf() === undefined || progress() < 2) && Date.now() < deadline) await sleep(50);
      assert.ok(progress() >= 2, `guest made no progress:\n${out}\n${err}`);
      let lastPid = 0;
      for (let k = 0; k < KILLS; k++) {
        // Wait for the current component to be up, then kill it at a random moment.
        const t0 = Date.now();
        while ((pidOf() ?? 0) === lastPid && Date.now() - t0 < 10_000) await sleep(5);
        const pid = pidOf()!;
        assert.notEqual(pid, lastPid, `${component} not restarted after kill ${k}:\n${err}`);
        await sleep(20 + Math.random() * 150);
        process.kill(pid, 'SIGKILL');
        lastPid = pid;
      }
      // The guest must keep going after the last kill.
      const before = progress();
      const t1 = Date.now();
      while (progress() < before + 3 && Date.now() - t1 < 30_000) await sleep(50);
      assert.ok(progress() >= before + 3, 'guest stalled after the last kill');
      // The guest's lines and the supervisor's "recovered" line come by two ways (the vmm's serial
      // output, the new component's ready message): the first can be quicker.
      const recoveredLines = () => err.split('\n').filter((l) => l.includes(`recovered ${component} `)).length;
      for (const t2 = Date.now(); recoveredLines() < KILLS && Date.now() - t2 < 10_000;) await sleep(50);
      assertNoSeccompKill(err);
    } finally {
      vm.kill('SIGTERM');
      await exited;
    }
    const lines = guestLines(out);
    assert.ok(!lines.some((l) => l.word === 'error' || l.word === 'blk-error'), out.split('\n').filter((l) => /@(blk-)?error/.test(l)).slice(0, 5).join('\n'));
    const last = lines.filter((l) => l.word === 'blk-progress').pop()!;
    assert.equal(last.fields.errors, '0');
    assert.equal(err.split('\n').filter((l) => l.includes(`recovered ${component} `)).length, KILLS, err);
    // Host-side: every block of the region is intact (some generation of this run).
    const check = checkImage(img, { bs: 4096, count: n });
    assert.equal(check.errorCount, 0, check.errors.slice(0, 5).join('\n'));
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
