/**
 * Guest RAM stays mapped after every JS reference to it is gone: the KVM
 * memslots still point at it. (A collected mapping once vanished under a
 * running guest, which then died of a triple fault.)
 */
import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import * as path from 'path';

describe('guest RAM mapping lifetime', () => {
  it('survives a full GC after the caller drops it', () => {
    const script = `
      const { native } = require(${JSON.stringify(path.resolve(__dirname, '..', 'native', 'kvm'))});
      const { mapGuestRam } = require(${JSON.stringify(path.resolve(__dirname, '..', 'vmm', 'guest-ram'))});
      const fs = require('fs');
      const size = 16 * 1024 * 1024;
      const fd = native.memfdCreate('tsvmm-ram-gc-test', size);
      (() => { mapGuestRam(fd, size); })();
      // Finalizers of external buffers may run on a later turn of the event loop.
      let rounds = 0;
      const check = () => {
        global.gc();
        if (++rounds < 10) { setTimeout(check, 10); return; }
        const maps = fs.readFileSync('/proc/self/maps', 'utf8');
        process.stdout.write(maps.includes('tsvmm-ram-gc-test') ? 'mapped' : 'unmapped');
      };
      check();
    `;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'mapped');
  });
});
