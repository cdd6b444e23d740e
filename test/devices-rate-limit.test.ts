/**
 * Per-device rate limits (--disk ...,iops=N,bw=BYTES and --net ...,bw=BYTES; token buckets in the
 * driver-domain, virtio/rate-limiter.ts), measured on a running guest. The disk: the guest times
 * its own phases (`@blk phase=... iops= kb_s=`); a phase that starts with the bucket already
 * drained must come out at most 1.5x the limit, the same workload without a limit well above it,
 * and the limit must hold again after a SIGKILL of the driver-domain (the limit is configuration:
 * the new driver-domain applies it). The NIC: a UDP echo client floods the guest; what comes back
 * within the run must be at most 1.5x what the buckets allow (burst + rate x time), and without a
 * limit clearly more. The bounds are generous: the test asserts the limit is enforced, not its
 * precision.
 */
import { strict as assert } from 'assert';
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { GUEST, GuestLine, guestLines, requireKvm, requireTool, skipBecause, tsvmm, tsvmmAsync } from './helpers/tsvmm';
import { runScenario, sleep, startVm } from './helpers/control-plane';
import { killRole } from './helpers/role-kill';

/** 32 requests of 64 KiB per phase, 8 in flight: written, then read back and verified. */
const WORK = 'workload=blk bs=65536 qd=8 blk_n=32 mode=seq verify=1';

function phases(out: string): GuestLine[] {
  return guestLines(out).filter((l) => l.word === 'blk' && l.fields.phase);
}

describe('rate limits on a running guest', function () {
  this.timeout(180_000);
  before(requireKvm);
  let dir: string;
  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-rate-')); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const runBlk = (opts: string): { read: GuestLine; write: GuestLine } => {
    const img = path.join(dir, `d${Math.random().toString(36).slice(2)}.img`);
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 8 << 20);
    const r = tsvmm(['run', '--name', `devopts-rate-${process.pid}`, '--metrics-addr', 'none', '--kernel', GUEST, '--disk', `${img}${opts}`, '--cmdline', WORK], { timeoutMs: 60_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const p = phases(r.stdout);
    const read = p.find((l) => l.fields.phase === 'read')!;
    const write = p.find((l) => l.fields.phase === 'write')!;
    assert.ok(read?.fields.iops && write, `no timed phases (the guest needs its TSC frequency):\n${r.stdout}`);
    assert.equal(read.fields.errors, '0');
    assert.equal(write.fields.errors, '0');
    return { read, write };
  };

  /** The same workload without a limit, run once for both rows. */
  let unlimited: GuestLine | undefined;
  const freeRead = () => (unlimited ??= runBlk('').read);

  // The read phase starts with the bucket the write phase drained: it runs at the limit.
  it('--disk iops=16: the guest gets at most 1.5x 16 requests/s; without the limit, more', () => {
    const limited = Number(runBlk(',iops=16').read.fields.iops);
    const free = Number(freeRead().fields.iops);
    assert.ok(limited <= 24, `limited to 16 IOPS, the guest measured ${limited}`);
    assert.ok(free > 24, `without a limit the guest measured ${free} IOPS`);
  });

  it('--disk bw=1M: the guest gets at most 1.5x 1 MiB/s; without the limit, more', () => {
    const limited = Number(runBlk(',bw=1M').read.fields.kb_s);
    const free = Number(freeRead().fields.kb_s);
    assert.ok(limited <= 1536, `limited to 1024 KiB/s, the guest measured ${limited} KiB/s`);
    assert.ok(free > 1536, `without a limit the guest measured ${free} KiB/s`);
  });

  it('--disk iops=50 holds across a SIGKILL of the driver-domain', () => runScenario(async () => {
    const vm = await startVm({ name: `devopts-rk-${process.pid}`, diskOpts: 'iops=50', cmdline: 'workload=blk-loop blk_n=200 qd=8 mode=seq verify=1 blk_report=25 virtio_irq=1' });
    try {
      await killRole(vm, 'driver-domain', ['vmm', 'driver-domain']);
      // The new driver-domain starts with a full bucket (50): the phase under way, or at worst the next
      // one, gets it. A phase is 200 requests, so even that one is held to 200 / (150 / 50) = 67 IOPS.
      const seen = phases(vm.out()).length;
      const deadline = Date.now() + 30_000;
      while (phases(vm.out()).length < seen + 2 && Date.now() < deadline) await sleep(100);
      const p = phases(vm.out());
      assert.ok(p.length >= seen + 2, `only ${p.length - seen} phases after the kill`);
      const after = p[seen + 1];
      assert.equal(after.fields.errors, '0');
      assert.ok(Number(after.fields.iops) <= 75, `limited to 50 IOPS, after the recovery the guest measured ${after.fields.iops}`);
    } catch (e) {
      throw Object.assign(e as Error, { vm });
    } finally {
      await vm.stop();
    }
    return vm;
  }));

  describe('--net bw= through a TAP', () => {
    const ns = `tsvmm-rate-${process.pid}`;
    const tap = `tsvr${process.pid % 100000}`;
    before(function () {
      if (process.getuid?.() !== 0) skipBecause(this, 'TAP devices and network namespaces need root');
      requireTool(this, 'ip', 'iproute2');
    });

    /** Boots the net guest on a TAP with `opts`, floods it with `count` UDP datagrams, returns the client's counts. */
    const echo = async (opts: string, count: number) => {
      spawnSync('ip', ['netns', 'del', ns]);
      execFileSync('ip', ['netns', 'add', ns]);
      const vm = tsvmmAsync(['run', '--name', `devopts-net-${process.pid}`, '--metrics-addr', 'none', '--kernel', GUEST, '--net', `tap=${tap}${opts}`, '--cmdline', 'workload=net ip=10.0.2.15 virtio_irq=1']);
      let out = '';
      let err = '';
      vm.stdout.on('data', (d) => { out += d; });
      vm.stderr.on('data', (d) => { err += d; });
      const exited = new Promise((r) => vm.once('exit', r));
      try {
        const t0 = Date.now();
        while (!/@net mac=/.test(out) && Date.now() - t0 < 20_000) await sleep(50);
        assert.match(out, /@net mac=/, `guest NIC did not come up:\n${out}\n${err}`);
        execFileSync('ip', ['link', 'set', tap, 'netns', ns]);
        execFileSync('ip', ['-n', ns, 'addr', 'add', '10.0.2.1/24', 'dev', tap]);
        execFileSync('ip', ['-n', ns, 'link', 'set', tap, 'up']);
        const t1 = performance.now();
        const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, path.join(__dirname, 'helpers', 'udp-client.js'), '10.0.2.15', '7', String(count), '0'], { encoding: 'utf8', timeout: 60_000 });
        const seconds = (performance.now() - t1) / 1000;
        assert.equal(r.status, 0, r.stderr);
        return { ...(JSON.parse(r.stdout) as { sent: number; received: number; corrupt: number }), seconds };
      } finally {
        vm.kill('SIGTERM');
        await exited;
        spawnSync('ip', ['netns', 'del', ns]);
      }
    };

    it('bw=4K: the echoes that come back are at most 1.5x what 4 KiB/s each way allows; without the limit, far more', async () => {
      const count = 400;
      const limited = await echo(',bw=4K', count);
      // udp-client's datagrams carry 16 + seq % 200 bytes; a frame adds 42 (Ethernet, IPv4, UDP).
      const frameBytes = (16 + 199 / 2) + 42;
      const allowed = (4096 + 4096 * limited.seconds) / frameBytes; // burst + rate x time, in average frames
      assert.equal(limited.corrupt, 0);
      assert.ok(limited.received <= 1.5 * allowed, `bw=4K allows ~${allowed.toFixed(0)} frames in ${limited.seconds.toFixed(2)} s; ${limited.received} echoes came back`);
      const free = await echo('', count);
      assert.ok(free.received > 1.5 * allowed, `without a limit only ${free.received} of ${count} echoes came back`);
    });
  });
});
