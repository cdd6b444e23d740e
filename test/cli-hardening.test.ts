/**
 * Issue 14's smaller items, each as a user would hit it: a stale supervisor.pid naming an
 * unrelated live process does not block a name; a 100 KB --cmdline is one clear line and leaves
 * no runtime dir; the same disk twice and a chmod 444 image opened read-write are refused; an
 * unusable --metrics-addr is an error; `tsvmm rm` removes a stopped VM's state; the API answers an
 * oversized body with 413; recovery logs never show a negative duration.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { spawn } from 'child_process';
import { GUEST, requireKvm, tsvmm } from './helpers/tsvmm';
import { runScenario, sleep, startVm } from './helpers/control-plane';
import { request } from '../cli/verbs';

describe('tsvmm hardening (issue 14, item 8)', function () {
  this.timeout(180_000);
  before(requireKvm);
  let dir = '';
  let env: NodeJS.ProcessEnv = {};
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-hard-'));
    env = { TSVMM_RUNTIME_DIR: path.join(dir, 'run'), TSVMM_STATE_DIR: path.join(dir, 'state') };
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const run = (args: string[]) => tsvmm(['run', '--kernel', GUEST, '--metrics-addr', 'none', ...args], { env, timeoutMs: 60_000 });
  const short = ['--cmdline', 'workload=counter n=1000 report=1000'];
  const img = (name: string, mode = 0o644) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, '');
    fs.truncateSync(f, 1 << 20);
    fs.chmodSync(f, mode);
    return f;
  };

  it('a stale supervisor.pid naming an unrelated live process does not block the name', () => {
    const other = spawn('sleep', ['60']);
    try {
      for (const content of [`${other.pid} 1\n`, `${other.pid}\n`]) {
        fs.mkdirSync(path.join(dir, 'run', 'stale'), { recursive: true });
        fs.writeFileSync(path.join(dir, 'run', 'stale', 'supervisor.pid'), content);
        const ls = tsvmm(['ls', '--json'], { env });
        assert.ok(!(JSON.parse(ls.stdout) as { name: string }[]).some((v) => v.name === 'stale'), ls.stdout);
        const r = run(['--name', 'stale', ...short]);
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stderr, /powered off with status 0/);
      }
    } finally {
      other.kill();
    }
  });

  it('a 100 KB --cmdline is one clear line, and no runtime dir is left', () => {
    const r = run(['--name', 'big', '--cmdline', 'a'.repeat(100_000)]);
    assert.equal(r.status, 2);
    assert.deepEqual(r.stderr.trim().split('\n'), ['tsvmm: error: invalid --cmdline: kernel command line too long: 100000 bytes, the limit is 4095 bytes (plus the terminating NUL)']);
    assert.ok(!fs.existsSync(path.join(dir, 'run', 'big')));
  });

  it('refuses the same disk file twice, under any path', () => {
    const a = img('a.img');
    fs.symlinkSync(a, path.join(dir, 'b.img'));
    for (const second of [a, path.join(dir, 'b.img')]) {
      const r = run(['--name', 'twice', '--disk', a, '--disk', second, ...short]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /^tsvmm: error: disk image .* is given twice/);
      assert.equal(r.stderr.trim().split('\n').length, 1);
    }
  });

  it('refuses a chmod 444 image read-write (root too), and uses it with ,ro', () => {
    const f = img('ro.img', 0o444);
    const r = run(['--name', 'ro', '--disk', f, ...short]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /disk image .* is read-only \(mode 444\): add ,ro/);
    const ok = run(['--name', 'ro', '--disk', `${f},ro`, ...short]);
    assert.equal(ok.status, 0, ok.stderr);
  });

  it('an unusable --metrics-addr is an error, not a warning', async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      for (const addr of [`127.0.0.1:${port}`, '192.0.2.1:9464']) {
        const r = tsvmm(['run', '--kernel', GUEST, '--name', 'm', '--metrics-addr', addr, ...short], { env });
        assert.notEqual(r.status, 0, r.stderr);
        assert.match(r.stderr, new RegExp(`^tsvmm: error: cannot serve metrics on ${addr.replace(/\./g, '\\.')}: `));
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
        assert.ok(!fs.existsSync(path.join(dir, 'run', 'm')));
      }
    } finally {
      busy.close();
    }
  });

  it('tsvmm rm removes a stopped VM\'s state, and refuses a running one', () => runScenario(async () => {
    // A VM whose priv-domain came up (its store exists), then stopped.
    const old = await startVm({ dir, name: 'gone', disk: false, cmdline: 'workload=counter n=0 report=100000000' });
    await old.stop();
    assert.match(tsvmm(['ls', '--all'], { env }).stdout, /gone\s+stopped/);
    const rm = tsvmm(['rm', 'gone'], { env });
    assert.equal(rm.status, 0, rm.stderr);
    assert.ok(!fs.existsSync(path.join(dir, 'state', 'vms', 'gone')));
    assert.doesNotMatch(tsvmm(['ls', '--all'], { env }).stdout, /gone/);
    assert.match(tsvmm(['rm', 'gone'], { env }).stderr, /no VM named "gone" has any state/);
    const vm = await startVm({ dir, name: 'live' });
    try {
      const refused = vm.cli(['rm', 'live']);
      assert.equal(refused.status, 1);
      assert.match(refused.stderr, /VM "live" is running: stop it first/);
      // The API answers an oversized body with 413 (and says why) instead of dropping the connection.
      const res = await request(vm.socket, 'POST', '/v1/vm/annotations', { text: 'x'.repeat(2 << 20) });
      assert.equal(res.status, 413, res.body);
      assert.match(res.body, /request body over/);
    } catch (e) {
      (e as { vm?: unknown }).vm = vm;
      throw e;
    } finally {
      await vm.stop();
    }
    return vm;
  }));

  it('recovery logs never show a negative duration (warm standby faster than the exit notification)', () => runScenario(async () => {
    const vm = await startVm({ dir, name: 'neg', extra: ['--standby'] });
    try {
      for (let t0 = Date.now(); !/vmm ready \(pid/.test(vm.err()) && Date.now() - t0 < 30_000;) await sleep(50);
      for (let k = 0; k < 4; k++) {
        const n = (vm.err().match(/recovered vmm/g) ?? []).length;
        const pid = Number([...vm.err().matchAll(/vmm ready \(pid (\d+)\)/g)].pop()![1]);
        await sleep(600);
        process.kill(pid, 'SIGKILL');
        const t0 = Date.now();
        while ((vm.err().match(/recovered vmm/g) ?? []).length === n && Date.now() - t0 < 20_000) await sleep(50);
      }
      const lines = vm.err().split('\n').filter((l) => /recovered /.test(l));
      assert.ok(lines.length >= 4, vm.err());
      for (const l of lines) assert.doesNotMatch(l, /-\d/, l);
    } catch (e) {
      (e as { vm?: unknown }).vm = vm;
      throw e;
    } finally {
      await vm.stop();
    }
    return vm;
  }));
});
