import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { PROTO_DIR, schemaJson } from '../proto/generate';
import { VmConfig, VmConfigCodec } from '../proto';

describe('proto', () => {
  it('proto/tsvmm.json is proto/tsvmm.proto, parsed (npm run proto regenerates it)', () => {
    assert.strictEqual(fs.readFileSync(path.join(PROTO_DIR, 'tsvmm.json'), 'utf8'), schemaJson(),
      'proto/tsvmm.json is stale: run `npm run proto` and commit it');
  });

  it('round-trips a VmConfig through the schema it loads', () => {
    const cfg = {
      name: 'vm', kernel: '/k', cmdline: 'a=b', memBytes: 256 << 20, cpus: 2, serialPath: '', initrd: '', metricsAddr: '',
      disks: [
        { path: '/d.img', readOnly: true, cache: 'writeback', io: 'auto', rateLimit: null },
        { path: '/e.img', readOnly: false, cache: 'none', io: 'uring', rateLimit: { ops: { size: 100, refillTimeMs: 1000, oneTimeBurst: 0 }, bandwidth: null } },
      ],
      nets: [{ tap: 'tap0', mac: '52:54:00:00:00:01', rateLimit: { ops: null, bandwidth: { size: 1 << 20, refillTimeMs: 1000, oneTimeBurst: 0 } } }],
    };
    assert.deepStrictEqual(VmConfigCodec.decode(VmConfigCodec.encode(cfg as VmConfig)), cfg);
  });

  it('gives the disk enums by name, and refuses a name the schema does not have', () => {
    const base: VmConfig = { name: 'vm', kernel: '/k', cmdline: '', memBytes: 1 << 20, cpus: 1, serialPath: '', disks: [], nets: [] };
    const d = VmConfigCodec.decode(VmConfigCodec.encode({ ...base, disks: [{ path: '/d', readOnly: false, io: 'threads' }] })).disks[0];
    assert.equal(d.io, 'threads');
    assert.equal(d.cache, 'writeback');
    assert.throws(() => VmConfigCodec.encode({ ...base, disks: [{ path: '/d', readOnly: false, cache: 'sometimes' as 'none' }] }), /cache: enum value expected/);
  });
});
