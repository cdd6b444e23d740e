import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { PROTO_DIR, schemaJson } from '../proto/generate';
import { VmConfigCodec } from '../proto';

describe('proto', () => {
  it('proto/tsvmm.json is proto/tsvmm.proto, parsed (npm run proto regenerates it)', () => {
    assert.strictEqual(fs.readFileSync(path.join(PROTO_DIR, 'tsvmm.json'), 'utf8'), schemaJson(),
      'proto/tsvmm.json is stale: run `npm run proto` and commit it');
  });

  it('round-trips a VmConfig through the schema it loads', () => {
    const cfg = {
      name: 'vm', kernel: '/k', cmdline: 'a=b', memBytes: 256 << 20, cpus: 2, serialPath: '', initrd: '', metricsAddr: '',
      disks: [{ path: '/d.img', readOnly: true }], nets: [{ tap: 'tap0', mac: '52:54:00:00:00:01' }],
    };
    assert.deepStrictEqual(VmConfigCodec.decode(VmConfigCodec.encode(cfg)), cfg);
  });
});
