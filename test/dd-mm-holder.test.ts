/**
 * The driver-domain's address-space holder (native/kvm/keeper.c tsvmm_mm_holder_start): a CLONE_VM
 * child that lets the driver-domain's death be seen before its address space is torn down. It
 * must hold nothing of the driver-domain's I/O (only a pidfd of its parent), run confined, and
 * never outlive its driver-domain by more than its linger: killed, the driver-domain is taken
 * over and its holder goes; stopped with the VM, nothing is left.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { requireKvm } from './helpers/tsvmm';
import { blkLoopVm, guestErrors } from './helpers/fault-harness';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try { return !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8')); } catch { return false; }
}

/** The holder of driver-domain `pid`: its child that shares its address space. */
function holderOf(pid: number): number {
  const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  const mm = (p: number) => fs.readlinkSync(`/proc/${p}/exe`) + ':' + fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ')[20]; // exe + vsize
  const held = children.filter((c) => { try { return mm(c) === mm(pid); } catch { return false; } });
  assert.equal(held.length, 1, `driver-domain ${pid}: expected one address-space holder among its children ${children.join(' ')}`);
  return held[0];
}

describe('driver-domain address-space holder', function () {
  this.timeout(120_000);
  before(requireKvm);

  it('holds only a pidfd, is confined, goes after a SIGKILL of its driver-domain and with the VM', async () => {
    const vm = blkLoopVm(['--standby'], {}, { n: 100_000, report: 64 });
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 2 && vm.pid['driver-domain'] > 0, 30_000, 'blk progress');
      const dd = vm.pid['driver-domain'];
      const h = holderOf(dd);
      const fds = fs.readdirSync(`/proc/${h}/fd`).map((f) => fs.readlinkSync(`/proc/${h}/fd/${f}`));
      assert.deepEqual(fds, ['anon_inode:[pidfd]'], `holder ${h} holds ${fds.join(', ')}`);
      assert.match(fs.readFileSync(`/proc/${h}/status`, 'utf8'), /^Seccomp:\s+2$/m, 'the holder runs under a seccomp filter');
      await vm.waitFor(() => vm.standbyPid['driver-domain'] !== 0 && vm.standbyPid['driver-domain'] !== dd, 20_000, 'a standby');
      const r = await vm.fail('driver-domain', 'SIGKILL', '@blk-progress');
      assert.ok(r.rec.warm, 'the standby took over');
      for (let i = 0; i < 100 && alive(h); i++) await sleep(20);
      assert.ok(!alive(h), `holder ${h} still there 2 s after its driver-domain died`);
      const h2 = holderOf(vm.pid['driver-domain']);
      await vm.stop();
      for (let i = 0; i < 100 && alive(h2); i++) await sleep(20);
      assert.ok(!alive(h2), `holder ${h2} still there 2 s after the VM stopped`);
      assert.deepEqual(guestErrors(vm.out), []);
    } finally {
      await vm.stop();
      vm.cleanup();
    }
  });
});
