/**
 * Guest RAM stays mapped after every JS reference to it is gone: the KVM
 * memslots still point at it. (A collected mapping once vanished under a
 * running guest, which then died of a triple fault.)
 */
import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../native/kvm';
import { mapGuestRam } from '../contracts/guest-ram';

describe('guest RAM mapping lifetime', () => {
  it('survives a full GC after the caller drops it', () => {
    const script = `
      const { native } = require(${JSON.stringify(path.resolve(__dirname, '..', 'native', 'kvm'))});
      const { mapGuestRam } = require(${JSON.stringify(path.resolve(__dirname, '..', 'contracts', 'guest-ram'))});
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

  it('is advised for transparent huge pages, and each region carries its host address', () => {
    const size = 16 * 1024 * 1024;
    const fd = native.memfdCreate('tsvmm-ram-thp-test', size);
    try {
      const ram = mapGuestRam(fd, size);
      const r = ram.memory.regions[0];
      assert.equal(r.host, Number(native.address(ram.slots[0].host)));
      const start = r.host.toString(16);
      // /proc/self/smaps: the mapping's VmFlags carry "hg" (VM_HUGEPAGE) after madvise(MADV_HUGEPAGE).
      const smaps = fs.readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/);
      const entry = smaps.find((e) => e.startsWith(`${start}-`));
      assert.ok(entry, `mapping at ${start} in /proc/self/smaps`);
      const flags = /VmFlags:(.*)/.exec(entry!)?.[1].trim().split(/\s+/) ?? [];
      assert.ok(flags.includes('hg'), `VmFlags ${flags.join(' ')}`);
    } finally {
      native.close(fd);
    }
  });
});
