/**
 * When `tsvmm run` itself (the supervisor) is SIGKILLed, its components go with it: the
 * vmm, the driver-domain and the priv-domain exit on their own (IPC channel closed), none
 * runs on as an orphan, and none prints a stack trace.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { requireKvm, tsvmmAsync } from './helpers/tsvmm';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const alive = (pid: number): boolean => { try { process.kill(pid, 0); return true; } catch { return false; } };

describe('the supervisor killed', function () {
  this.timeout(60_000);
  before(requireKvm);

  it('takes its vmm, driver-domain and priv-domain with it, without stack traces', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-supdeath-'));
    const img = path.join(dir, 'disk.img');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 8 << 20);
    const vm = tsvmmAsync(['run', '--name', `supdeath-${process.pid}`, '--metrics-addr', 'none', '--disk', img, '--cmdline', 'workload=counter n=0 report=50000000']);
    let err = '';
    vm.stderr.on('data', (d) => { err += d; });
    vm.stdout.resume();
    const pids: Record<string, number> = {};
    const t0 = Date.now();
    while (Object.keys(pids).length < 3 && Date.now() - t0 < 30_000) {
      for (const m of err.matchAll(/(vmm|driver-domain|priv-domain) ready \(pid (\d+)\)/g)) pids[m[1]] = Number(m[2]);
      await sleep(50);
    }
    try {
      assert.deepEqual(Object.keys(pids).sort(), ['driver-domain', 'priv-domain', 'vmm'], err);
      vm.kill('SIGKILL');
      const t1 = Date.now();
      while (Object.values(pids).some(alive) && Date.now() - t1 < 10_000) await sleep(50);
      const left = Object.entries(pids).filter(([, p]) => alive(p));
      assert.deepEqual(left, [], `still running after the supervisor died: ${JSON.stringify(left)}`);
      assert.doesNotMatch(err, /^\s+at /m, `a stack trace:\n${err}`);
    } finally {
      for (const p of Object.values(pids)) if (alive(p)) process.kill(p, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
