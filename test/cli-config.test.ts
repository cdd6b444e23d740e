/**
 * `tsvmm run --config FILE`: a VM's configuration as JSON, with the fields of the API's VM config
 * (priv-domain/openapi.yaml VmConfig, checked with ajv: contracts/vm-config-schema.ts). The happy
 * path: a file's disk options (cache=none, a rate limit) reach the driver-domain, a flag given
 * overrides the file's field, and the VM config the API then answers is itself a valid file. Bad
 * files: one line naming the bad field, exit 2, nothing started.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GUEST, requireKvm, tsvmm } from './helpers/tsvmm';
import { runScenario, startVm, waitComponents } from './helpers/control-plane';
import { checkVmConfigJson } from '../contracts/vm-config-schema';

const MiB = 1 << 20;

describe('tsvmm run --config FILE', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-config-')); fs.chmodSync(dir, 0o711); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const write = (name: string, o: unknown): string => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, typeof o === 'string' ? o : JSON.stringify(o));
    return f;
  };
  const expectError = (args: string[], pattern: RegExp): void => {
    const r = tsvmm(['run', ...args], { timeoutMs: 30_000 });
    assert.equal(r.status, 2, r.stdout + r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
  };

  it('boots from the file; a flag overrides its field; the disk options reach the driver-domain; the API answers a config that is a valid file', function () {
    requireKvm.call(this);
    return runScenario(async () => {
      const img = path.join(dir, 'disk.img');
      fs.writeFileSync(img, '');
      fs.truncateSync(img, 16 * MiB);
      const file = write('vm.json', {
        memBytes: 64 * MiB, cpus: 1,
        disks: [{ path: img, cache: 'none', rateLimit: { ops: { size: 5000, refillTimeMs: 1000 } } }],
      });
      const vm = await startVm({ name: `devopts-cfg-${process.pid}`, disk: false, extra: ['--config', file, '--mem', '96M'] });
      try {
        await waitComponents(vm, 'the driver-domain', (c) => (c['driver-domain']?.pid ?? 0) > 0);
        const r = await vm.api('GET', '/v1/vm');
        assert.equal(r.status, 200, r.body);
        const cfg = (JSON.parse(r.body) as { config: Record<string, unknown> }).config;
        assert.equal(cfg.memBytes, 96 * MiB, '--mem did not override memBytes');
        assert.deepEqual(cfg.disks, [{ path: img, readOnly: false, cache: 'none', io: 'auto', rateLimit: { ops: { size: 5000, refillTimeMs: 1000, oneTimeBurst: 0 }, bandwidth: null } }]);
        checkVmConfigJson(cfg);
        assert.match(vm.err(), /disk 0 I\/O: .*O_DIRECT/);
        assert.match(vm.err(), /disk 0 rate limit: 5000 ops\/s/);
      } catch (e) {
        throw Object.assign(e as Error, { vm });
      } finally {
        await vm.stop();
      }
      return vm;
    });
  });

  it('a bad field is one line naming it', () => {
    expectError(['--config', write('enum.json', { disks: [{ path: '/x.img', cache: 'sometimes' }] })], /^tsvmm: error: invalid --config .*enum\.json: \/disks\/0\/cache must be one of writeback, none$/);
    expectError(['--config', write('type.json', { memBytes: '256M' })], /invalid --config .*: \/memBytes must be integer$/);
    expectError(['--config', write('unknown.json', { name: 'x', memByte: 1 })], /invalid --config .*: unknown field \/memByte$/);
    expectError(['--config', write('missing.json', { nets: [{ mac: '52:54:00:00:00:01' }] })], /invalid --config .*: \/nets\/0\/tap is missing$/);
    expectError(['--config', write('bucket.json', { disks: [{ path: '/x.img', rateLimit: { bandwidth: { size: 0, refillTimeMs: 1000 } } }] })], /\/disks\/0\/rateLimit\/bandwidth\/size must be >= 1$/);
    expectError(['--config', write('text.json', '{"name": ')], /invalid --config .*text\.json: not JSON/);
    expectError(['--config', path.join(dir, 'absent.json')], /cannot read --config .*absent\.json: ENOENT$/);
  });

  it('its values are checked as the flags are, and --restore does not combine with it', () => {
    expectError(['--config', write('mem.json', { memBytes: 1000 })], /memory size .* too small|not a multiple of 4K/);
    expectError(['--config', write('disk.json', { disks: [{ path: path.join(dir, 'nope.img') }] })], /disk image .*nope\.img does not exist/);
    expectError(['--config', write('ok.json', {}), '--restore', dir], /--config cannot be combined with --restore/);
    expectError(['--config', write('ok.json', {}), '--kernel', GUEST, '--cpus', 'x'], /invalid --cpus "x"/);
  });
});
