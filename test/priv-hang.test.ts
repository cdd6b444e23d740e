/**
 * The priv-domain is watched like the other components (issue 14): a stopped priv-domain is
 * detected through its heartbeat, killed and restarted with cause `hang`, and the API serves again;
 * and where nothing replaces it (hang detection off), a CLI verb fails with one line once the API
 * has not answered for TSVMM_API_RETRY_MS instead of blocking.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { requireKvm, tsvmm } from './helpers/tsvmm';
import { sleep, startVm, TestVm, runScenario, waitComponents } from './helpers/control-plane';
import { guestErrors } from './helpers/fault-harness';

describe('priv-domain hang', function () {
  this.timeout(120_000);
  before(requireKvm);
  let vm: TestVm | undefined;
  afterEach(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
    vm = undefined;
  });

  it('a stopped priv-domain is detected as hung, killed and restarted; the API serves again; the guest is unaffected', async () => {
    await runScenario(async () => {
      vm = await startVm({ name: `resilience-privhang-${process.pid}` });
      const v = vm;
      const before = await waitComponents(v, 'the components', (c) => c['priv-domain']?.pid > 0);
      const old = before['priv-domain'].pid;
      process.kill(old, 'SIGSTOP');
      const after = await waitComponents(v, 'a new priv-domain', (c) => c['priv-domain']?.pid > 0 && c['priv-domain'].pid !== old, 20_000);
      assert.equal(after['priv-domain'].restarts, 1);
      assert.match(v.err(), /priv-domain hung: no heartbeat for \d+ ms \(.*state T\)/);
      assert.match(v.err(), /recovered priv-domain \(cause: hang\)/);
      const ps = v.cli(['ps', '--name', v.name]);
      assert.equal(ps.status, 0, ps.stderr);
      const p = v.progress();
      for (let i = 0; i < 300 && v.progress() <= p; i++) await sleep(20);
      assert.ok(v.progress() > p, 'guest progress');
      assert.deepEqual(guestErrors(v.out()), []);
      return v;
    });
  });

  it('with hang detection off, `tsvmm ps` against a stopped priv-domain fails with one line instead of blocking', async () => {
    await runScenario(async () => {
      vm = await startVm({ name: `resilience-privstop-${process.pid}`, extra: ['--hang-timeout', '0'] });
      const v = vm;
      const c = await waitComponents(v, 'the components', (x) => x['priv-domain']?.pid > 0);
      const pid = c['priv-domain'].pid;
      process.kill(pid, 'SIGSTOP');
      try {
        const r = tsvmm(['ps', '--name', v.name], { env: { ...v.env, TSVMM_API_RETRY_MS: '1500' }, timeoutMs: 20_000 });
        assert.notEqual(r.status, 0);
        assert.equal(r.error, undefined, 'the verb was killed by the test timeout: it blocked');
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0], /did not answer within 1\.5 s/);
      } finally {
        process.kill(pid, 'SIGCONT');
      }
      return v;
    });
  });
});
