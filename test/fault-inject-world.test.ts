/**
 * `tsvmm inject` faults from outside the components (issue 16): what a malicious guest writes into
 * its own rings (`ring`), the disk answering EIO (`eio`), the TAP vanishing (`tap-vanish`), and the
 * supervisor's own faults. Each test injects into a running VM, reads back that the injector changed
 * what it targets (the device answered the bad ring, the completion became an error, the TAP is
 * gone, a new supervisor adopted the VM), and checks that only the target was affected: the
 * driver-domain was not restarted, the other vCPU's counter chain and the API carried on, the VM
 * is still running.
 */
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { execFileSync, spawn, spawnSync } from 'child_process';
import { inject, pidsFrom, ComponentPids, RingAttack } from '../cli/inject';
import { blkLoopVm, RunningVm } from './helpers/fault-harness';
import { BIN, GUEST, requireKvm, requireTool, skipBecause } from './helpers/tsvmm';
import { request } from '../cli/verbs';
import { vmPaths } from '../contracts/paths';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  for (const deadline = performance.now() + ms; !cond();) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

async function pidsOf(vm: RunningVm, name: string): Promise<ComponentPids> {
  for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
    const p = pidsFrom(JSON.parse((await request(vmPaths(name).socket, 'GET', '/v1/vm/components')).body));
    if (p.keeper && p['driver-domain'] === vm.pid['driver-domain'] && p.vmm === vm.pid.vmm) return p;
    await sleep(100);
  }
  throw new Error(`the VM's components did not settle: ${vm.err.slice(-500)}`);
}

/** The VM carried on after a fault: not exited, the vCPU-1 counter chain moving, the API answering, the driver-domain not restarted. */
async function carriedOn(vm: RunningVm, name: string, since: number, recoveriesBefore: number): Promise<void> {
  await vm.waitFor(() => vm.count('@counter', since) >= 3, 20_000, 'the other vCPU\'s counter chain after the fault');
  const r = await request(vmPaths(name).socket, 'GET', '/v1/vm/components');
  assert.strictEqual(r.status, 200);
  assert.deepStrictEqual(vm.recoveries.slice(recoveriesBefore).map((x) => x.line), [], 'no component was restarted');
  assert.strictEqual(vm.exit, undefined);
  assert.ok(!/^@error what=counter/m.test(vm.out), 'the counter chain checked out');
}

describe('tsvmm inject: faults from outside the components', function () {
  this.timeout(180_000);
  before(requireKvm);

  it('ring: a rejected malformed request (descriptor outside RAM, a chain loop, a huge length) leaves the disk serving; avail idx jumped past the queue: only that device needs a reset, and serves again once the guest reset it', async () => {
    const name = `fi-ring-${process.pid}`;
    const vm = blkLoopVm(['--name', name, '--metrics-addr', 'none', '--cpus', '2'], { TSVMM_TEST_HOOKS: '0' }, { n: 200000, cmdline: 'ap_counter=1 n=0 report=20000000 blk_timeout=30' });
    const imgDir = (vm as unknown as { imgDir: string }).imgDir;
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 2 && vm.pid.vmm > 0, 60_000, 'the first progress lines');
      const rec0 = vm.recoveries.length;
      let seed = 1;
      for (const attack of ['desc-oob', 'desc-loop', 'desc-huge'] as RingAttack[]) {
        const t = performance.now();
        const r = await inject('driver-domain', 'ring', await pidsOf(vm, name), { seed: seed++, ringAttack: attack });
        // Read back: the device completed the bad head (the request rejected), the queue not broken.
        assert.match(r.after!, /completed by the device.*rejected/, JSON.stringify(r));
        await vm.waitFor(() => /rejected \d+ malformed request/.test(vm.err), 10_000, 'the driver-domain logging the rejected request');
        // The disk goes on serving the guest's own requests.
        await vm.waitFor(() => vm.count('@blk-progress', t) >= 2, 20_000, `blk progress after ${attack}`);
        await carriedOn(vm, name, t, rec0);
      }
      assert.match(vm.out, /@blk-error op=reap what=bad_used_id/, 'the guest saw the completion of a head it never made available');
      const t = performance.now();
      const r = await inject('driver-domain', 'ring', await pidsOf(vm, name), { seed: 9, ringAttack: 'avail-jump' });
      assert.match(r.after!, /DEVICE_NEEDS_RESET.*queue broken/, JSON.stringify(r));
      await vm.waitFor(() => /disk 0 needs a reset \(DEVICE_NEEDS_RESET: the guest's ring is malformed: avail idx moved/.test(vm.err), 10_000, 'the driver-domain logging the broken ring');
      // The device interrupts the guest (a configuration change); its driver resets the device, sets
      // it up again and resubmits what was in flight; the driver-domain binds to the new rings.
      await vm.waitFor(() => vm.count('@blk-reset reason=needs_reset', t) === 1, 20_000, 'the guest resetting the device');
      const tReset = vm.lines.find((l) => l.at > t && l.line.startsWith('@blk-reset'))!.at;
      await vm.waitFor(() => vm.count('@blk-progress', tReset) >= 3, 20_000, 'blk progress after the reset');
      await carriedOn(vm, name, t, rec0);
    } finally {
      await vm.stop();
      vm.cleanup();
      fs.rmSync(imgDir, { recursive: true, force: true });
    }
  });

  it('eio: one disk request completes with EIO (its io_uring completion rewritten); the guest gets S_IOERR for it, and the disk goes on', async () => {
    const name = `fi-eio-${process.pid}`;
    const vm = blkLoopVm(['--name', name, '--metrics-addr', 'none', '--cpus', '2'], { TSVMM_TEST_HOOKS: '0' }, { n: 200000, cmdline: 'ap_counter=1 n=0 report=20000000 blk_timeout=30' });
    const imgDir = (vm as unknown as { imgDir: string }).imgDir;
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 2 && vm.pid.vmm > 0, 60_000, 'the first progress lines');
      const rec0 = vm.recoveries.length;
      const t = performance.now();
      const r = await inject('driver-domain', 'eio', await pidsOf(vm, name), { seed: 1 });
      // Read back: the completion's result, a byte count (or 0 for a flush), is now -EIO.
      assert.ok(Number(r.before) >= 0 && Number(r.after) === -5, JSON.stringify(r));
      await vm.waitFor(() => /disk 0 I\/O error: .*errno 5; the guest got S_IOERR/.test(vm.err), 10_000, 'the driver-domain logging the I/O error');
      await vm.waitFor(() => /^@blk-error op=(read|write|flush) .*what=status status=1/m.test(vm.out), 10_000, 'the guest seeing S_IOERR');
      assert.strictEqual(vm.out.split('\n').filter((l) => l.startsWith('@blk-error')).length, 1, 'exactly one request failed');
      await vm.waitFor(() => vm.count('@blk-progress', t) >= 2, 20_000, 'blk progress after the EIO');
      await carriedOn(vm, name, t, rec0);
    } finally {
      await vm.stop();
      vm.cleanup();
      fs.rmSync(imgDir, { recursive: true, force: true });
    }
  });

  it('supervisor SIGSEGV and reg: a supervisor that dies is replaced by its guardian, which adopts the VM; the guest never notices', async () => {
    const name = `fi-sup-${process.pid}`;
    const vm = blkLoopVm(['--name', name, '--metrics-addr', 'none', '--cpus', '2'], { TSVMM_TEST_HOOKS: '0' }, { cmdline: 'ap_counter=1 n=0 report=20000000' });
    const imgDir = (vm as unknown as { imgDir: string }).imgDir;
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 2 && vm.pid.vmm > 0, 60_000, 'the first progress lines');
      const p = await pidsOf(vm, name);
      const t = performance.now();
      const r = await inject('supervisor', 'SIGSEGV', p, { seed: 1 });
      assert.strictEqual(r.pid, p.supervisor);
      // Its `tsvmm run` process is gone (vm.exit is set): the VM runs on under the adopting supervisor.
      await until(() => /recovered supervisor \(cause: signal SIGSEGV\)/.test(vm.err), 20_000, `the adoption: ${vm.err.slice(-400)}`);
      await until(() => vm.count('@blk-progress', t) >= 2 && vm.count('@counter', t) >= 2, 20_000, 'guest progress after the adoption');
      const p2 = pidsFrom(JSON.parse((await request(vmPaths(name).socket, 'GET', '/v1/vm/components')).body));
      assert.ok(p2.supervisor && p2.supervisor !== p.supervisor, 'a new supervisor answers the API');
      assert.strictEqual(p2.vmm, p.vmm, 'the vmm was adopted, not replaced');
      // A register flip into the new supervisor: read back through the injector (the outcome is the campaign's to judge).
      const f = await inject('supervisor', 'reg', p2, { seed: 2, reg: 'r13', bit: 5 });
      assert.strictEqual(BigInt(f.before!) ^ BigInt(f.after!), 1n << 5n);
      assert.ok(!/^@(blk-)?error/m.test(vm.out), 'the guest saw no error');
    } finally {
      spawnSync(process.execPath, [BIN, 'stop', '--name', name], { stdio: 'ignore', timeout: 20_000 });
      await vm.stop();
      vm.cleanup();
      fs.rmSync(imgDir, { recursive: true, force: true });
    }
  });

  describe('with a TAP', function () {
    before(function () {
      if (process.getuid?.() !== 0) skipBecause(this, 'TAP devices and network namespaces need root');
      requireTool(this, 'ip', 'iproute2');
    });

    it('tap-vanish: the TAP deleted under a UDP echo stream; the driver-domain logs it, the NIC carries nothing, the guest and the driver-domain go on; a TAP made again with the name is reattached and echoes again', async () => {
      const ns = `fi-tapns-${process.pid}`;
      const tap = `fit${process.pid % 100000}`;
      const name = `fi-tap-${process.pid}`;
      const img = path.join(fs.mkdtempSync('/tmp/fi-tap-'), 'disk.img');
      fs.writeFileSync(img, '');
      fs.truncateSync(img, 16 << 20);
      spawnSync('ip', ['netns', 'del', ns]);
      execFileSync('ip', ['netns', 'add', ns]);
      const vm = new RunningVm(['--name', name, '--kernel', GUEST, '--cpus', '2', '--metrics-addr', 'none', '--disk', img, '--net', `tap=${tap}`,
        '--cmdline', 'workload=net ip=10.99.0.2 virtio_irq=1 net_report_s=1 ap_counter=1 n=0 report=20000000'], { TSVMM_TEST_HOOKS: '0' });
      const udp = (count: number) => spawn('ip', ['netns', 'exec', ns, process.execPath, path.join(__dirname, 'helpers', 'udp-client.js'), '10.99.0.2', '7', String(count), '2'], { stdio: ['ignore', 'pipe', 'inherit'] });
      const result = (c: ReturnType<typeof udp>) => new Promise<{ received: number; corrupt: number }>((resolve) => { let o = ''; c.stdout!.on('data', (d) => { o += d; }); c.on('exit', () => resolve(JSON.parse(o))); });
      try {
        await vm.waitFor(() => /@net mac=/.test(vm.out) && vm.pid['driver-domain'] > 0, 60_000, 'the guest NIC');
        for (const a of [['link', 'set', tap, 'netns', ns], ['-n', ns, 'addr', 'add', '10.99.0.1/24', 'dev', tap], ['-n', ns, 'link', 'set', tap, 'up'], ['-n', ns, 'link', 'set', 'lo', 'up']]) execFileSync('ip', a);
        const rec0 = vm.recoveries.length;
        const stream = udp(2500);
        const echoed = result(stream);
        await vm.waitFor(() => /@net-progress .* udp=[1-9]/.test(vm.out), 20_000, 'echoes before the fault');
        const dd = vm.pid['driver-domain'];
        const cpu0 = fs.readFileSync(`/proc/${dd}/stat`, 'latin1').split(') ')[1].split(' ');
        const t = performance.now();
        const r = await inject('driver-domain', 'tap-vanish', await pidsOf(vm, name), { seed: 1 });
        assert.strictEqual(r.after, 'deleted');
        assert.match(r.target, new RegExp(`TAP ${tap} .*network namespace ${ns}`));
        assert.notStrictEqual(spawnSync('ip', ['-n', ns, 'link', 'show', tap]).status, 0, 'the TAP is gone');
        await vm.waitFor(() => new RegExp(`net 1: its TAP ${tap} vanished`).test(vm.err), 10_000, 'the driver-domain logging the vanished TAP');
        const got = await echoed;
        assert.ok(got.received > 0 && got.received < 2500 && got.corrupt === 0, `echoes stopped at the fault, none corrupt: ${JSON.stringify(got)}`);
        await carriedOn(vm, name, t, rec0);
        // Not spinning on the detached fd: the driver-domain used well under the wall time since.
        const wall = (performance.now() - t) / 1000;
        const cpu1 = fs.readFileSync(`/proc/${dd}/stat`, 'latin1').split(') ')[1].split(' ');
        const used = (Number(cpu1[11]) + Number(cpu1[12]) - Number(cpu0[11]) - Number(cpu0[12])) / 100;
        assert.ok(used < wall / 2, `the driver-domain used ${used} s of CPU in ${wall.toFixed(1)} s`);
        // The TAP made again, in the host's namespace (the supervisor's): the supervisor reattaches it
        // (a new driver-domain takes over with it); moved into the test's namespace, it echoes again.
        const ddBefore = vm.pid['driver-domain'];
        execFileSync('ip', ['tuntap', 'add', tap, 'mode', 'tap']);
        await vm.waitFor(() => new RegExp(`net 1: TAP ${tap} is back: reattached`).test(vm.err), 20_000, 'the supervisor reattaching the TAP');
        await vm.waitFor(() => vm.pid['driver-domain'] !== ddBefore, 10_000, 'the new driver-domain');
        const attached = fs.readFileSync(`/proc/${vm.pid['driver-domain']}/fdinfo/${r.target.match(/fd (\d+)/)![1]}`, 'latin1');
        assert.match(attached, new RegExp(`^iff:\\s*${tap}$`, 'm'), 'the new driver-domain holds the TAP, attached');
        for (const a of [['link', 'set', tap, 'netns', ns], ['-n', ns, 'addr', 'add', '10.99.0.1/24', 'dev', tap], ['-n', ns, 'link', 'set', tap, 'up']]) execFileSync('ip', a);
        const again = await result(udp(300));
        assert.ok(again.received > 0 && again.corrupt === 0, `echoes after the reattach: ${JSON.stringify(again)}`);
        await carriedOn(vm, name, performance.now(), rec0);
      } finally {
        await vm.stop();
        vm.cleanup();
        spawnSync('ip', ['link', 'del', tap]);
        spawnSync('ip', ['netns', 'del', ns]);
        fs.rmSync(path.dirname(img), { recursive: true, force: true });
      }
    });
  });
});
