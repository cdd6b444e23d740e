/**
 * `--disk PATH,cache=none` and `--disk PATH,io=uring|threads` on a running guest, checked where
 * the kernel shows them: the driver-domain's fd on the image carries O_DIRECT (fdinfo flags
 * 040000) only with cache=none, and the driver-domain holds an io_uring instance (an fd on
 * anon_inode:[io_uring]) with io=uring and none with io=threads. The guest's verifying disk loop
 * must pass meanwhile: with cache=none on buffers that are not 512-byte aligned (buf_off=8), which
 * O_DIRECT refuses unless they are bounced, and with io=uring across a SIGKILL of the driver-domain.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { guestLines, requireKvm } from './helpers/tsvmm';
import { runScenario, sleep, startVm, TestVm, waitComponents } from './helpers/control-plane';
import { killRole } from './helpers/role-kill';

const O_DIRECT = 0o40000;

/** What process `pid`'s fds point at: fd -> readlink target. */
function fdTargets(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try { out.set(Number(fd), fs.readlinkSync(`/proc/${pid}/fd/${fd}`)); } catch { /* closed meanwhile */ }
  }
  return out;
}

/** The open flags (fdinfo, octal) of `pid`'s fd on `file`. */
function flagsOn(pid: number, file: string): number {
  const fd = [...fdTargets(pid)].find(([, t]) => t === file)?.[0];
  assert.ok(fd !== undefined, `process ${pid} has no fd on ${file}: ${JSON.stringify([...fdTargets(pid)])}`);
  const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
  return parseInt(m![1], 8);
}

const hasUring = (pid: number): boolean => [...fdTargets(pid).values()].includes('anon_inode:[io_uring]');

async function driverDomain(vm: TestVm): Promise<number> {
  return (await waitComponents(vm, 'the driver-domain', (c) => (c['driver-domain']?.pid ?? 0) > 0))['driver-domain'].pid;
}

/** Waits until the guest finished `passes` more verified blk-loop passes; asserts none had an error. */
async function passes(vm: TestVm, more: number): Promise<void> {
  const done = () => guestLines(vm.out()).filter((l) => l.word === 'blk-progress' && l.fields.end === '1');
  const want = done().length + more;
  const deadline = Date.now() + 60_000;
  while (done().length < want && Date.now() < deadline && vm.proc.exitCode === null) await sleep(50);
  const bad = vm.out().split('\n').filter((l) => /^@(blk-)?error/.test(l));
  assert.deepEqual(bad.slice(0, 5), [], 'the guest saw disk errors');
  assert.ok(done().length >= want, `the guest finished ${done().length} of ${want} passes`);
  assert.equal(done().pop()!.fields.errors, '0');
}

const LOOP = 'workload=blk-loop blk_n=256 qd=8 mode=both verify=1 blk_report=64 virtio_irq=1';

describe('--disk cache= and io= on a running guest', function () {
  this.timeout(180_000);
  before(requireKvm);

  it('cache=none: the image is open O_DIRECT, and misaligned guest buffers (bounced) verify', () => runScenario(async () => {
    const vm = await startVm({ name: `devopts-dio-${process.pid}`, diskOpts: 'cache=none', cmdline: `${LOOP} buf_off=8` });
    try {
      const dd = await driverDomain(vm);
      assert.ok(flagsOn(dd, vm.img) & O_DIRECT, 'the driver-domain\'s disk fd is not O_DIRECT');
      await passes(vm, 2);
    } catch (e) {
      throw Object.assign(e as Error, { vm });
    } finally {
      await vm.stop();
    }
    return vm;
  }));

  it('io=uring: the driver-domain has an io_uring (the image no O_DIRECT), also after a SIGKILL of it, and the loop verifies throughout', () => runScenario(async () => {
    const vm = await startVm({ name: `devopts-uring-${process.pid}`, diskOpts: 'io=uring', cmdline: LOOP });
    try {
      const dd = await driverDomain(vm);
      assert.ok(hasUring(dd), 'no io_uring fd in the driver-domain');
      assert.equal(flagsOn(dd, vm.img) & O_DIRECT, 0, 'O_DIRECT without cache=none');
      await passes(vm, 1);
      const k = await killRole(vm, 'driver-domain', ['vmm', 'driver-domain']);
      assert.ok(hasUring(k.newPid), 'no io_uring fd in the recovered driver-domain');
      await passes(vm, 2);
    } catch (e) {
      throw Object.assign(e as Error, { vm });
    } finally {
      await vm.stop();
    }
    return vm;
  }));

  // Confined where it can be (root): the pool's threads must be started before the seccomp filter
  // and its calls (pread64/pwrite64/fdatasync) allowed; vm.stop() fails on a seccomp kill.
  it('io=threads: no io_uring in the driver-domain, and the loop verifies (confined, as root)', () => runScenario(async () => {
    const env = process.getuid?.() === 0 ? { TSVMM_CONFINE: '1' } : {};
    const vm = await startVm({ name: `devopts-thr-${process.pid}`, diskOpts: 'io=threads,cache=none', cmdline: LOOP, env });
    try {
      const dd = await driverDomain(vm);
      assert.ok(!hasUring(dd), 'an io_uring fd in the driver-domain with io=threads');
      await passes(vm, 1);
    } catch (e) {
      throw Object.assign(e as Error, { vm });
    } finally {
      await vm.stop();
    }
    return vm;
  }));
});
