/**
 * Outside failures cost the least (issue 14): a state directory on a full file system (a tmpfs
 * filled to the last byte) degrades the priv-domain's store and console log with a warning instead
 * of a crash loop: the API answers, the priv-domain is not restarted, the guest runs, and
 * `tsvmm stop` ends the VM with status 0.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { requireKvm, skipBecause } from './helpers/tsvmm';
import { sleep, startVm, TestVm, runScenario, waitComponents } from './helpers/control-plane';

describe('a full state directory', function () {
  this.timeout(90_000);
  let dir = '';
  let mounted = false;
  let vm: TestVm | undefined;
  before(function () {
    requireKvm.call(this);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-full-'));
    fs.mkdirSync(path.join(dir, 'state'));
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', path.join(dir, 'state')], { encoding: 'utf8' });
    if (m.status !== 0) skipBecause(this, `cannot mount a small tmpfs to fill (${m.stderr.trim() || 'not root'})`);
    mounted = true;
    // Fill it to the last byte.
    const fd = fs.openSync(path.join(dir, 'state', 'filler'), 'w');
    const chunk = Buffer.alloc(4096, 1);
    try { for (;;) fs.writeSync(fd, chunk); } catch { /* ENOSPC: full */ }
    try { for (;;) fs.writeSync(fd, chunk, 0, 1); } catch { /* the last bytes */ }
    fs.closeSync(fd);
  });
  after(async () => {
    await vm?.stop();
    if (mounted) spawnSync('umount', [path.join(dir, 'state')]);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the priv-domain serves with its store in memory and says so; no restarts; the guest runs; stop exits 0', async () => {
    await runScenario(async () => {
      vm = await startVm({ name: `resilience-full-${process.pid}`, dir });
      const v = vm;
      assert.match(v.err(), /the store .* is unusable \(.*\): running on a store in memory/);
      const p = v.progress();
      for (let i = 0; i < 300 && v.progress() < p + 2; i++) await sleep(20);
      assert.ok(v.progress() >= p + 2, 'guest progress');
      const c = await waitComponents(v, 'the components', (x) => x['priv-domain']?.pid > 0);
      assert.equal(c['priv-domain'].restarts, 0, v.err());
      const s = v.cli(['stop', '--name', v.name]);
      assert.equal(s.status, 0, s.stderr);
      assert.equal(await v.exited, 0, v.err());
      return v;
    });
  });
});
